//! Wires the parts together for one process: NFS root, watches, admin endpoint, leader
//! election, workers, and the shutdown sequence.

use std::sync::Arc;
use std::time::Duration;

use crate::kube_client::Clients;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{self, Readiness};
use crate::config::Settings;
use crate::controller::{self, Context, EventPublisher, Watches, WorkItem, queue::WorkQueue};
use crate::leader::LeaseLock;
use crate::metrics::Metrics;
use crate::storage::{FaultHook, NfsRoot, StorageOptions};
use crate::usage;

/// Why the process could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("NFS root {path}: {source}")]
    NfsRoot {
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

const WAITING_GAUGE_PERIOD: Duration = Duration::from_secs(5);

/// Large allocations (a page of a list, up to a few hundred KB of JSON) get their own
/// mappings, returned to the kernel when freed. glibc otherwise raises this threshold each
/// time such a block is freed, after which list pages land in the heap and leave it
/// fragmented: with 10 000 foreign PVCs and PVs that kept about 1.5 MB more resident after the
/// initial lists. Call once, before the runtime starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; 128 KiB is glibc's own default value,
    // setting it explicitly turns off the dynamic adjustment.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Returns free heap pages to the kernel. glibc keeps memory freed after a burst (decoded
/// watch pages, claims in flight) in its arenas; `malloc_trim` releases the free pages of
/// every arena. Called once after the caches synced and then with the 5 s gauge update.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only takes the arenas' own locks.
    unsafe {
        libc::malloc_trim(0);
    }
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
    /// a hung NFS server.
    pub nfs_fault_hook: Option<FaultHook>,
}

/// [`run`], handing `observe` the metrics, readiness and leadership as soon as they exist.
pub async fn run_observed(
    settings: Settings,
    clients: Clients,
    shutdown: CancellationToken,
    instrumentation: Instrumentation,
    observe: impl FnOnce(Observers),
) -> Result<(), StartError> {
    let client = clients.work;
    let metrics = Metrics::new();
    let readiness = Arc::new(Readiness::default());

    let storage_options = StorageOptions {
        op_timeout: settings.fs_timeout,
        max_stuck_ops: settings.max_stuck_fs_ops,
    };
    let root = match instrumentation.nfs_fault_hook {
        Some(hook) => {
            NfsRoot::open_with_fault_hook(&settings.mount_path, storage_options, hook).await
        }
        None => NfsRoot::open(&settings.mount_path, storage_options).await,
    }
    .map_err(|source| StartError::NfsRoot {
        path: settings.mount_path.display().to_string(),
        source,
    })?;
    let listener = admin::bind(settings.admin_address)
        .await
        .map_err(|source| StartError::Admin {
            address: settings.admin_address,
            source,
        })?;

    let admin_address = listener.local_addr().unwrap_or(settings.admin_address);

    // Everything below stops with `background`; `shutdown` only starts the sequence.
    let background = CancellationToken::new();
    let _stop_background = background.clone().drop_guard();

    tokio::spawn(admin::serve(
        listener,
        readiness.clone(),
        metrics.clone(),
        background.clone(),
    ));
    tokio::spawn(admin::probe_nfs_root(
        root.clone(),
        readiness.clone(),
        metrics.clone(),
        settings.nfs_probe_interval,
        background.clone(),
    ));

    let queue = WorkQueue::<WorkItem>::new(settings.retry_base_delay, settings.retry_max_delay);
    let watches = Watches::start(
        &client,
        &settings.provisioner_name,
        &settings.nfs_server,
        &queue,
        &background,
    );
    let events = EventPublisher::new(
        client.clone(),
        &settings.provisioner_name,
        &settings.identity,
        metrics.clone(),
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        provisioner_name: settings.provisioner_name.clone(),
        nfs_server: settings.nfs_server.clone(),
        export: settings.export.clone(),
        default_permissions: settings.default_permissions,
        root,
        claims: watches.claims.clone(),
        volumes: watches.volumes.clone(),
        directories: watches.directories.clone(),
        directory_locks: Default::default(),
        classes: watches.classes.clone(),
        events,
        metrics: metrics.clone(),
    });

    let (synced_tx, mut synced) = watch::channel(false);
    {
        let readiness = readiness.clone();
        tokio::spawn(async move {
            watches.wait_until_synced().await;
            readiness.set_watches_synced();
            let _ = synced_tx.send(true);
            info!("watches synced");
            // The initial lists are decoded in full before they are trimmed for the caches.
            release_free_heap();
        });
    }
    {
        let ctx = ctx.clone();
        let stop = background.clone();
        tokio::spawn(async move {
            loop {
                ctx.metrics
                    .claims_waiting
                    .set(controller::count_waiting_claims(&ctx) as i64);
                release_free_heap();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(WAITING_GAUGE_PERIOD) => {}
                }
            }
        });
    }

    let (leading_tx, mut leading) = watch::channel(false);
    let elector_stop = CancellationToken::new();
    let elector = match &settings.leader_election {
        Some(le) => {
            info!(lease = %le.lease_name, namespace = %le.namespace, identity = %settings.identity, "campaigning for leadership");
            let lock = LeaseLock::new(
                clients.leader_election.clone(),
                le.clone(),
                settings.identity.clone(),
            );
            Some(tokio::spawn(lock.run(leading_tx, elector_stop.clone())))
        }
        None => {
            info!("leader election disabled; this replica provisions");
            let _ = leading_tx.send(true);
            // Keep the sender alive so `leading` stays open.
            let stop = elector_stop.clone();
            Some(tokio::spawn(async move {
                stop.cancelled().await;
                drop(leading_tx);
            }))
        }
    };
    observe(Observers {
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        leading: leading.clone(),
        admin_address,
    });

    'terms: loop {
        // Follow until leading (and caches are complete), or until shutdown.
        tokio::select! {
            _ = shutdown.cancelled() => break 'terms,
            r = leading.wait_for(|l| *l) => if r.is_err() { break 'terms },
        }
        tokio::select! {
            _ = shutdown.cancelled() => break 'terms,
            _ = synced.wait_for(|s| *s) => {}
        }
        metrics.leader.set(1);
        let term = CancellationToken::new();
        let stop_taking = CancellationToken::new();
        controller::enqueue_all(&ctx, &queue);
        {
            // Periodic full re-check catches anything a watch event did not cover; the
            // orphan sweep runs at the start of every term and with every re-check.
            let (ctx, queue, stop, term, every) = (
                ctx.clone(),
                queue.clone(),
                stop_taking.clone(),
                term.clone(),
                settings.resync_period,
            );
            tokio::spawn(async move {
                loop {
                    controller::sweep_orphans(&ctx, &term).await;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => controller::enqueue_all(&ctx, &queue),
                    }
                }
            });
        }
        {
            // Usage measurement, while leading; it stops taking work with the workers.
            let source = ctx.clone();
            let volumes: usage::VolumeSource = Arc::new(move || usage::from_cache(&source));
            let probe = metrics.clone();
            let healthy: usage::HealthSource = Arc::new(move || probe.nfs_root_healthy.get() == 1);
            let monitor = usage::UsageMonitor::new(
                ctx.root.clone(),
                metrics.usage.clone(),
                ctx.events.clone(),
                volumes,
                healthy,
                settings.usage.clone(),
            );
            tokio::spawn(monitor.run(stop_taking.clone()));
        }
        let mut workers = tokio::spawn(controller::run_workers(
            ctx.clone(),
            queue.clone(),
            settings.workers,
            stop_taking.clone(),
            term.clone(),
        ));

        let lost = tokio::select! {
            r = leading.wait_for(|l| !*l) => { let _ = r; true }
            _ = shutdown.cancelled() => false,
        };
        stop_taking.cancel();
        if lost {
            // Another replica may lead soon: stop everything now, do not finish.
            warn!("leadership lost: stopping all work and campaigning again");
            term.cancel();
            let _ = workers.await;
            metrics.leader.set(0);
            continue 'terms;
        }
        info!(grace = ?settings.shutdown_grace, "shutting down: letting in-flight work finish");
        if tokio::time::timeout(settings.shutdown_grace, &mut workers)
            .await
            .is_err()
        {
            warn!("in-flight work did not finish within the shutdown grace; abandoning it");
            term.cancel();
            let _ = workers.await;
        }
        break 'terms;
    }

    metrics.leader.set(0);
    elector_stop.cancel();
    if let Some(elector) = elector
        && let Err(e) = elector.await
    {
        error!(error = %e, "leader election task failed");
    }
    info!("stopped");
    Ok(())
}
