//! Wires the parts together for one process: NFS root and plugin, admin endpoint and probe,
//! leader election and the controller; then the shutdown sequence, which waits for every
//! task it started.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, Readiness};
use crate::config::Settings;
use crate::controller::selection::Selection;
use crate::controller::{Controller, ControllerSettings, EventPublisher};
use crate::kube_client::Clients;
use crate::leader::LeaseLock;
use crate::metrics::Metrics;
use crate::nfs_plugin::{Exports, NfsPlugin};
use crate::storage::{FaultHook, NfsRoot, StorageOptions};

/// Why the process could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("NFS export {export} mounted at {path}: {source}")]
    NfsRoot {
        export: String,
        path: String,
        #[source]
        source: crate::storage::StorageError,
    },
    #[error("admin endpoint {address}: {source}")]
    Admin {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Handles a caller keeps to observe a running provisioner (tests, benchmark).
#[derive(Clone)]
pub struct Observers {
    pub metrics: Metrics,
    pub readiness: Arc<Readiness>,
    pub leading: watch::Receiver<bool>,
    /// The admin endpoint's bound address (useful with port 0).
    pub admin_address: std::net::SocketAddr,
}

/// Runs the provisioner until `shutdown` fires, then stops taking work, lets in-flight work
/// finish (up to the shutdown grace), releases the Lease and returns.
pub async fn run(
    settings: Settings,
    clients: Clients,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    run_observed(
        settings,
        clients,
        shutdown,
        Instrumentation::default(),
        |_| {},
    )
    .await
}

/// Test seams; production runs with the default (none).
#[derive(Default, Clone)]
pub struct Instrumentation {
    /// Called on the storage worker thread before each operation: lets a test stand in for
    /// a hung NFS server. Applies to every export without its own hook below.
    pub nfs_fault_hook: Option<FaultHook>,
    /// The same for one export, by name.
    pub export_fault_hooks: Vec<(String, FaultHook)>,
}

/// [`run`], handing `observe` the metrics, readiness and leadership as soon as they exist.
pub async fn run_observed(
    settings: Settings,
    clients: Clients,
    shutdown: CancellationToken,
    instrumentation: Instrumentation,
    observe: impl FnOnce(Observers),
) -> Result<(), StartError> {
    let client = clients.work.clone();
    let metrics = Metrics::new();
    let readiness = Arc::new(Readiness::default());

    let storage_options = StorageOptions {
        op_timeout: settings.fs_timeout,
        max_stuck_ops: settings.max_stuck_fs_ops,
    };
    let mut plugins = Vec::with_capacity(settings.exports.len());
    for export in &settings.exports {
        let hook = instrumentation
            .export_fault_hooks
            .iter()
            .find(|(name, _)| *name == export.name)
            .map(|(_, hook)| hook.clone())
            .or_else(|| instrumentation.nfs_fault_hook.clone());
        // Each export has its own root: its own deadline, its own pool of stuck operations,
        // so a hung export fails only its own work.
        let root = match hook {
            Some(hook) => {
                NfsRoot::open_with_fault_hook(&export.mount_path, storage_options.clone(), hook)
                    .await
            }
            None => NfsRoot::open(&export.mount_path, storage_options.clone()).await,
        }
        .map_err(|source| StartError::NfsRoot {
            export: export.name.clone(),
            path: export.mount_path.display().to_string(),
            source,
        })?;
        plugins.push(NfsPlugin::new(
            &export.name,
            &settings.provisioner_name,
            &export.server,
            export.path.clone(),
            settings.default_permissions,
            root,
        ));
    }
    let listener = admin::bind(settings.admin_address)
        .await
        .map_err(|source| StartError::Admin {
            address: settings.admin_address,
            source,
        })?;

    let admin_address = listener.local_addr().unwrap_or(settings.admin_address);

    // Everything here stops with `background` once the controller is done; `shutdown` only
    // starts the sequence.
    let background = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(admin::serve(
        listener,
        readiness.clone(),
        metrics.clone(),
        background.clone(),
    ));
    for plugin in &plugins {
        tasks.spawn(admin::probe_nfs_root(
            plugin.name().to_string(),
            plugin.root().clone(),
            readiness.clone(),
            metrics.clone(),
            settings.nfs_probe_interval,
            background.clone(),
        ));
    }
    tasks.spawn(crate::memory::release_free_heap_periodically(
        background.clone(),
    ));

    let servers: Vec<&str> = settings.exports.iter().map(|e| e.server.as_str()).collect();
    let selection = Selection::new(&settings.provisioner_name, &servers);
    // Events have a client of their own that gives way to `client` (see `EventPublisher`).
    let events = EventPublisher::yielding_to(
        clients.events.clone(),
        clients.work_load.clone(),
        &settings.provisioner_name,
        &settings.identity,
        metrics.clone(),
    );
    let controller = Controller::start(
        client,
        selection,
        Exports::new(plugins),
        events.clone(),
        metrics.clone(),
        readiness.clone(),
        ControllerSettings {
            workers: settings.workers,
            resync_period: settings.resync_period,
            shutdown_grace: settings.shutdown_grace,
            retry_base_delay: settings.retry_base_delay,
            retry_max_delay: settings.retry_max_delay,
            usage: settings.usage.clone(),
            max_concurrent_clones: settings.max_concurrent_clones,
            clone_progress_interval: settings.clone_progress_interval,
        },
    );

    let (leading_tx, leading) = watch::channel(false);
    let elector_stop = CancellationToken::new();
    let elector = match &settings.leader_election {
        Some(le) => {
            info!(lease = %le.lease_name, namespace = %le.namespace, identity = %settings.identity, "campaigning for leadership");
            let lock = LeaseLock::new(
                clients.leader_election.clone(),
                le.clone(),
                settings.identity.clone(),
            );
            tokio::spawn(lock.run(leading_tx, elector_stop.clone()))
        }
        None => {
            info!("leader election disabled; this replica provisions");
            let _ = leading_tx.send(true);
            // Keep the sender alive so `leading` stays open.
            let stop = elector_stop.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                drop(leading_tx);
            })
        }
    };
    observe(Observers {
        metrics: metrics.clone(),
        readiness,
        leading: leading.clone(),
        admin_address,
    });

    controller.run(leading, shutdown).await;
    // Events still queued are written before the process goes (within the shutdown grace).
    let unwritten = events.flush(settings.shutdown_grace).await;
    if unwritten > 0 {
        warn!(unwritten, "Events not written within the shutdown grace");
    }

    // The controller's work is done; give up the Lease, then stop the rest.
    elector_stop.cancel();
    if let Err(e) = elector.await {
        error!(error = %e, "leader election task failed");
    }
    background.cancel();
    tasks.close();
    tasks.wait().await;
    info!("stopped");
    Ok(())
}
