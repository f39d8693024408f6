//! `try-it`: the provisioner against a fake control plane on loopback, no cluster needed.
//! Prints a kubeconfig; `kubectl apply -f deploy/examples/test-claim.yaml` with it gives a
//! bound claim whose directory appears under the printed NFS root. Ctrl-C stops both.
//! `scripts/try-it` builds the binaries and runs this.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fake_apiserver::local_cluster::{LocalCluster, LocalClusterOptions, ProvisionerLog};

#[derive(Parser, Debug)]
#[command(
    name = "try-it",
    about = "Runs the provisioner against a fake Kubernetes API server on loopback"
)]
struct Args {
    /// The nfs-provisioner binary (default: next to this one).
    #[arg(long)]
    provisioner: Option<PathBuf>,
    /// Where the kubeconfig and the NFS root go (default: a new directory under $TMPDIR).
    /// Kept afterwards: nothing in it is deleted.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Address of the API server.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let rendered = e.to_string();
            eprintln!("{}", rendered.lines().next().unwrap_or("invalid arguments"));
            return ExitCode::from(2);
        }
    };
    let provisioner = match args.provisioner.clone().or_else(sibling_provisioner) {
        Some(p) if p.is_file() => p,
        Some(p) => {
            eprintln!(
                "error: {} does not exist: build it (`cargo build --bin nfs-provisioner`) or pass --provisioner",
                p.display()
            );
            return ExitCode::from(2);
        }
        None => {
            eprintln!("error: cannot locate nfs-provisioner: pass --provisioner");
            return ExitCode::from(2);
        }
    };
    let dir = match args.dir.clone().map(Ok).unwrap_or_else(new_work_dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot create a work directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(LocalClusterOptions {
        addr: args.listen,
        dir,
        provisioner,
        provisioner_log: ProvisionerLog::Inherit,
    }))
}

fn sibling_provisioner() -> Option<PathBuf> {
    Some(
        std::env::current_exe()
            .ok()?
            .with_file_name("nfs-provisioner"),
    )
}

/// A fresh directory per run: the fake keeps its objects in memory only, so directories of
/// an earlier run would have no PVs.
fn new_work_dir() -> std::io::Result<PathBuf> {
    let base = std::env::temp_dir();
    for n in 0..1000u32 {
        let dir = base.join(format!("nfs-provisioner-try-it.{}.{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free directory name"))
}

async fn run(opts: LocalClusterOptions) -> ExitCode {
    let mut cluster = match LocalCluster::start(opts).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let kubeconfig = cluster.kubeconfig().display().to_string();
    println!(
        "\nFake Kubernetes API server (v1.33) at {url}, provisioner attached.\n\
         NFS root (each claim's directory appears here): {root}\n\n\
         In another terminal, from this repository:\n\n  \
         export KUBECONFIG={kubeconfig}\n  \
         kubectl apply -f deploy/examples/test-claim.yaml\n  \
         kubectl get pvc,pv\n  \
         ls {root}\n  \
         kubectl delete pvc test-claim      # its directory is archived (class nfs-client)\n\n\
         Ctrl-C stops the provisioner and the API server (the NFS root is kept).\n",
        url = cluster.fake().url(),
        root = cluster.nfs_root().display(),
    );
    let mut interrupt =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot handle Ctrl-C: {e}");
                return ExitCode::FAILURE;
            }
        };
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot handle SIGTERM: {e}");
                return ExitCode::FAILURE;
            }
        };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
        status = cluster.provisioner_exited() => {
            eprintln!("try-it: the provisioner exited ({}); stopping", describe(status));
            return ExitCode::FAILURE;
        }
    }
    eprintln!("try-it: stopping the provisioner, then the API server");
    match cluster.stop(Duration::from_secs(10)).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: stopping the provisioner: {e}");
            ExitCode::FAILURE
        }
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    }
}
