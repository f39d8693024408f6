//! Runs the provisioner in-process, on its own thread and runtime, so a test can stop it
//! gracefully (like SIGTERM) or kill it at any instant (the runtime is dropped with every task
//! in it, like SIGKILL).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use nfs_provisioner::app::{self, Instrumentation, Observers};
use nfs_provisioner::config::Cli;
use tokio_util::sync::CancellationToken;

/// Options of one provisioner instance.
#[derive(Clone)]
pub struct ProvisionerOptions {
    pub name: String,
    pub nfs_server: String,
    pub nfs_path: String,
    pub root: PathBuf,
    pub leader_election: bool,
    pub lease_namespace: String,
    pub pod_name: String,
    /// Short lease timings keep fail-over tests quick.
    pub lease: (Duration, Duration, Duration),
    pub extra_args: Vec<String>,
}

impl ProvisionerOptions {
    pub fn new(name: &str, root: &Path) -> Self {
        Self {
            name: name.to_string(),
            nfs_server: "nfs.example.test".to_string(),
            nfs_path: "/exports/k8s".to_string(),
            root: root.to_path_buf(),
            leader_election: false,
            lease_namespace: "nfs-provisioner".to_string(),
            pod_name: "provisioner-0".to_string(),
            lease: (
                Duration::from_secs(3),
                Duration::from_secs(2),
                Duration::from_millis(300),
            ),
            extra_args: Vec::new(),
        }
    }

    fn args(&self) -> Vec<String> {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut args: Vec<String> = [
            "nfs-provisioner",
            "--provisioner-name",
            &self.name,
            "--nfs-server",
            &self.nfs_server,
            "--nfs-path",
            &self.nfs_path,
            "--mount-path",
            &self.root.display().to_string(),
            "--enable-leader-election",
            if self.leader_election {
                "true"
            } else {
                "false"
            },
            "--pod-namespace",
            &self.lease_namespace,
            "--pod-name",
            &self.pod_name,
            "--lease-duration",
            &ms(self.lease.0),
            "--renew-deadline",
            &ms(self.lease.1),
            "--retry-period",
            &ms(self.lease.2),
            "--admin-address",
            "127.0.0.1:0",
            "--retry-base-delay",
            "200ms",
            "--retry-max-delay",
            "2s",
            "--fs-timeout",
            "5s",
            "--shutdown-grace",
            "5s",
            // Above the defaults: scenarios are not about the client limit (options can lower it).
            "--kube-api-qps",
            "1000",
            "--kube-api-burst",
            "2000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

#[allow(dead_code)] // observers and their accessors are for scenarios that need them
pub struct RunningProvisioner {
    thread: Option<JoinHandle<()>>,
    shutdown: CancellationToken,
    kill: Option<mpsc::Sender<()>>,
    pub observers: Observers,
}

impl RunningProvisioner {
    /// Starts an instance talking to the API server described by `config`.
    pub fn start(options: &ProvisionerOptions, config: kube::Config) -> Self {
        Self::start_instrumented(options, config, Instrumentation::default())
    }

    /// Starts an instance with test seams (e.g. a hung NFS root).
    pub fn start_instrumented(
        options: &ProvisionerOptions,
        config: kube::Config,
        instrumentation: Instrumentation,
    ) -> Self {
        let settings = Cli::try_parse_from_args(options.args())
            .validate()
            .expect("test settings are valid");
        let (qps, burst) = (settings.kube_api_qps, settings.kube_api_burst);
        let shutdown = CancellationToken::new();
        let (kill_tx, kill_rx) = mpsc::channel::<()>();
        let (obs_tx, obs_rx) = mpsc::channel::<Observers>();
        let stop = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let (killed_tx, killed) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                if kill_rx.recv().is_ok() {
                    let _ = killed_tx.send(());
                }
            });
            runtime.block_on(async move {
                let clients = nfs_provisioner::kube_client::build_clients(config, qps, burst)
                    .expect("clients");
                tokio::select! {
                    r = app::run_observed(settings, clients, stop, instrumentation, move |o| { let _ = obs_tx.send(o); }) => {
                        r.expect("provisioner runs");
                    }
                    _ = killed => {}
                }
            });
            // Killing: every task of the instance is dropped where it stands.
            runtime.shutdown_background();
        });
        let observers = obs_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("provisioner started");
        Self {
            thread: Some(thread),
            shutdown,
            kill: Some(kill_tx),
            observers,
        }
    }

    /// Graceful stop, as on SIGTERM: in-flight work finishes, the Lease is released.
    pub fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            t.join().expect("provisioner thread");
        }
    }

    /// Stops at once without any cleanup, as on SIGKILL or a node crash.
    pub fn kill(mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("provisioner thread");
        }
    }

    /// The instance still runs: it neither returned nor panicked.
    #[allow(dead_code)]
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    #[allow(dead_code)]
    pub fn is_leading(&self) -> bool {
        *self.observers.leading.borrow()
    }

    #[allow(dead_code)]
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.observers.admin_address, path)
    }
}

impl Drop for RunningProvisioner {
    fn drop(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

trait ParseArgs {
    fn try_parse_from_args(args: Vec<String>) -> Cli;
}

impl ParseArgs for Cli {
    fn try_parse_from_args(args: Vec<String>) -> Cli {
        <Cli as clap::Parser>::try_parse_from(args).expect("test arguments parse")
    }
}
