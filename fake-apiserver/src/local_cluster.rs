//! A control plane on loopback with the provisioner attached, for trying the project without
//! a cluster (`scripts/try-it`) and for tests that drive it with kubectl: the fake API server
//! (v1.33, with its PV binder), a kubeconfig for it, the StorageClass `nfs-client` of
//! `deploy/base/storageclass-archive.yaml`, and the provisioner binary as a child process whose NFS
//! root is a local directory.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::json;
use tokio::process::{Child, Command};

use crate::{FakeApiServer, Options};

/// The provisioner name of the shipped StorageClasses (`deploy/`), the Go provisioner's.
pub const PROVISIONER_NAME: &str = "k8s-sigs.io/nfs-subdir-external-provisioner";

/// How to start a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct LocalClusterOptions {
    /// Where the API server listens (`127.0.0.1:0`: any free port).
    pub addr: SocketAddr,
    /// Holds `kubeconfig` and `nfs-root/`; created if missing.
    pub dir: PathBuf,
    /// The `nfs-provisioner` binary to run.
    pub provisioner: PathBuf,
    /// Where the provisioner's log goes.
    pub provisioner_log: ProvisionerLog,
}

/// Where the provisioner's log goes.
#[derive(Debug, Clone)]
pub enum ProvisionerLog {
    /// This process's stdout/stderr (a terminal).
    Inherit,
    /// A file (created or truncated).
    File(PathBuf),
}

impl ProvisionerLog {
    fn stdio(&self) -> io::Result<(Stdio, Stdio)> {
        Ok(match self {
            ProvisionerLog::Inherit => (Stdio::inherit(), Stdio::inherit()),
            ProvisionerLog::File(path) => {
                let file = std::fs::File::create(path)?;
                (file.try_clone()?.into(), file.into())
            }
        })
    }
}

/// The class `kubectl apply -k deploy/` installs (`deploy/base/storageclass-archive.yaml`; a test
/// of the main crate keeps the two equal).
pub fn nfs_client_class() -> serde_json::Value {
    json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "nfs-client", "labels": {"app.kubernetes.io/name": "nfs-provisioner"}},
        "provisioner": PROVISIONER_NAME,
        "parameters": {"archiveOnDelete": "true"},
        "reclaimPolicy": "Delete",
        "allowVolumeExpansion": true,
        "volumeBindingMode": "Immediate",
    })
}

/// A running fake control plane with the provisioner attached. Dropping it kills the
/// provisioner and stops the API server; [`LocalCluster::stop`] ends both gracefully.
pub struct LocalCluster {
    fake: FakeApiServer,
    kubeconfig: PathBuf,
    nfs_root: PathBuf,
    child: Option<Child>,
}

impl LocalCluster {
    /// Starts the API server, writes the kubeconfig, creates the StorageClass and starts the
    /// provisioner against it.
    pub async fn start(opts: LocalClusterOptions) -> io::Result<LocalCluster> {
        let nfs_root = opts.dir.join("nfs-root");
        std::fs::create_dir_all(&nfs_root)?;
        let fake = FakeApiServer::start(Options {
            addr: opts.addr,
            ..Options::default()
        })
        .await?;
        let kubeconfig = opts.dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(&fake.url(), &fake.token_for("admin")),
        )?;
        // The namespaces every cluster starts with (the fake does not require them, kubectl
        // users look for them).
        for ns in ["default", "kube-node-lease", "kube-public", "kube-system"] {
            fake.put_object(json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }))
            .map_err(io::Error::other)?;
        }
        fake.put_object(nfs_client_class())
            .map_err(io::Error::other)?;
        // The PVs' NFS path is the local root itself, so `kubectl get pv -o yaml` shows where
        // each directory is on this machine.
        let root = nfs_root.canonicalize()?;
        let (stdout, stderr) = opts.provisioner_log.stdio()?;
        let child = Command::new(&opts.provisioner)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--provisioner-name", PROVISIONER_NAME])
            .args(["--nfs-server", "127.0.0.1"])
            .arg("--nfs-path")
            .arg(&root)
            .arg("--mount-path")
            .arg(&root)
            .args(["--enable-leader-election=false", "--pod-name", "try-it"])
            .args(["--admin-address", "127.0.0.1:0", "--shutdown-grace", "5s"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group: a Ctrl-C in the terminal reaches only us, and we pass
            // one SIGTERM on (two signals would make it exit without finishing its work).
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start {}: {e}", opts.provisioner.display()),
                )
            })?;
        Ok(LocalCluster {
            fake,
            kubeconfig,
            nfs_root: root,
            child: Some(child),
        })
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The provisioner's NFS root: every claim's directory appears here.
    pub fn nfs_root(&self) -> &Path {
        &self.nfs_root
    }

    pub fn fake(&self) -> &FakeApiServer {
        &self.fake
    }

    /// Waits until the provisioner exits by itself (e.g. it got the terminal's Ctrl-C).
    pub async fn provisioner_exited(&mut self) -> io::Result<ExitStatus> {
        match self.child.as_mut() {
            Some(c) => c.wait().await,
            None => std::future::pending().await,
        }
    }

    /// Stops the provisioner (SIGTERM, SIGKILL after `grace`), then the API server, so the
    /// provisioner can finish what it was doing against a live API. Returns its exit status.
    pub async fn stop(mut self, grace: Duration) -> io::Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(Some(status));
        }
        if let Some(pid) = child.id() {
            // Not reaped yet (try_wait above said so), so the pid is still our child's.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let status = match tokio::time::timeout(grace, child.wait()).await {
            Ok(r) => r?,
            Err(_) => {
                child.kill().await?;
                child.wait().await?
            }
        };
        self.fake.shutdown();
        Ok(Some(status))
    }
}

/// A kubeconfig for the fake: plain HTTP on loopback, a token the fake knows, namespace
/// `default`.
pub fn kubeconfig_yaml(server: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: try-it\n  cluster:\n    server: \"{server}\"\n\
         users:\n\
         - name: admin\n  user:\n    token: \"{token}\"\n\
         contexts:\n\
         - name: try-it\n  context:\n    cluster: try-it\n    user: admin\n    namespace: default\n\
         current-context: try-it\n"
    )
}
