use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use nfs_provisioner::config::{Cli, Command, LogFormat, Settings};
use nfs_provisioner::{app, hand_back, kube_client};

/// Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad settings, 130 second signal.
fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help / --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's first paragraph, on one line (a missing argument is named on the next).
            let rendered = e.to_string();
            let paragraph: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let line = if paragraph.is_empty() {
                "invalid arguments".to_string()
            } else {
                paragraph.join(" ")
            };
            eprintln!("{line}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::HandBack(args)) = cli.command.clone() {
        return hand_back(args);
    }
    let settings = match cli.validate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&settings) {
        eprintln!("error: invalid setting LOG_LEVEL (--log-level): {e}");
        return ExitCode::from(2);
    }
    nfs_provisioner::memory::tune_allocator();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(settings))
}

/// `nfs-provisioner hand-back`: 0 done (or nothing to do), 1 refused or failed, 2 bad flags.
fn hand_back(args: hand_back::HandBackArgs) -> ExitCode {
    if let Err(e) = args.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let client = match kube_client::load_config(args.kubeconfig.as_deref())
            .await
            .and_then(kube::Client::try_from)
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: cannot load the Kubernetes client configuration: {e}");
                return ExitCode::FAILURE;
            }
        };
        match hand_back::run(client, &args, &mut std::io::stdout()).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn init_logging(settings: &Settings) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(&settings.log_level),
    }
    .map_err(|e| e.to_string())?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match settings.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
    Ok(())
}

async fn run(settings: Settings) -> ExitCode {
    info!(
        provisioner = %settings.provisioner_name,
        version = env!("CARGO_PKG_VERSION"),
        "starting"
    );
    for export in &settings.exports {
        info!(
            export = %export.name,
            nfs_server = %export.server,
            nfs_path = %export.path.as_str(),
            mount_path = %export.mount_path.display(),
            "serving NFS export"
        );
    }
    let config = match kube_client::load_config(settings.kubeconfig.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot load Kubernetes client configuration (KUBECONFIG or in-cluster)");
            return ExitCode::FAILURE;
        }
    };
    let clients =
        match kube_client::build_clients(config, settings.kube_api_qps, settings.kube_api_burst) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "cannot build the Kubernetes client");
                return ExitCode::FAILURE;
            }
        };

    let shutdown = CancellationToken::new();
    tokio::spawn(handle_signals(shutdown.clone()));
    match app::run(settings, clients, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "cannot run");
            ExitCode::FAILURE
        }
    }
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit at once.
async fn handle_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    info!("signal received: shutting down (a second signal exits at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    error!("second signal: exiting at once");
    std::process::exit(130);
}
