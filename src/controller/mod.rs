//! The Kubernetes half: watch claims, volumes and classes; hand the NFS work to the
//! NFS volume plugin of each export ([`Exports`]); create and delete PV objects, manage finalizers, write events and metrics.
//!
//! * [`selection`] — which claims, classes and PVs are ours.
//! * [`watches`] — the three watches and their caches; [`volume_cache`] holds the PVs
//!   compactly and finds those at, above or beneath a directory.
//! * [`provision`], [`reclaim`] — one reconcile each for a claim and a PV; [`orphans`] — the
//!   sweep of directories whose claim went away before their PV existed.
//! * [`queue`], [`workers`] — the work queue and the leader's workers; [`events`].
//!
//! Watches run on every replica so a new leader starts with warm caches; workers run only
//! while this replica leads (see [`crate::leader`]). Each leadership term has a cancellation
//! token: losing the lease cancels it, which abandons in-flight API calls and stops file
//! system work at the next system call.

pub mod clone;
mod error;
mod events;
pub mod expansion;
mod list_watch;
mod orphans;
mod other_volumes;
mod provision;
pub mod queue;
mod reclaim;
pub mod selection;
mod streamed_list;
mod usage_source;
mod volume_cache;
mod watches;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::Readiness;
use crate::metrics::Metrics;
use crate::nfs_plugin::Exports;
use crate::objects::{Claim, Class, Volume};
use crate::usage::{self, UsageSettings};
pub use error::{Error, Result};
pub use events::EventPublisher;
use queue::WorkQueue;
use selection::{Ownership, Selection, claim_may_need_a_volume, class_name_of};
pub use volume_cache::VolumeCache;
use watches::Watches;

/// What a successful attempt asks for next.
pub enum Next {
    Done,
    /// Look again after a while without counting a failure (a write found the cache behind).
    RecheckAfter(Duration),
}

/// One unit of work: a claim to provision or a volume to look after.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WorkItem {
    Claim(ObjectRef<Claim>),
    Volume(ObjectRef<Volume>),
}

impl WorkItem {
    /// Claims are provisioning's critical path; volume work (reclaims, adopting finalizers)
    /// can wait without anything being lost.
    fn lane(&self) -> queue::Lane {
        match self {
            WorkItem::Claim(_) => queue::Lane::Urgent,
            WorkItem::Volume(_) => queue::Lane::Deferrable,
        }
    }
}

/// How many of `workers` volume work may occupy at once: all but a quarter (at least one
/// when there are two or more), which are kept for claims.
///
/// Claims are handed out before volumes anyway, so every worker that frees up goes to a
/// claim while claims wait; the reserve is for the moment a burst starts while reclaims
/// hold workers. A reclaim can hold its worker long (waiting for the API server's list of
/// its directory tree, removing a huge tree slice by slice, an NFS server that stalls up to
/// the operation deadline), and nothing is lost while it waits; a claim's work is a mkdir
/// and one PV create, so a quarter of the workers (8 of the default 32) keeps the client's
/// request budget busy with PV creates until volume workers free up. Volume work keeps at
/// least three quarters, so a resync's thousands of volumes still proceed in parallel.
pub fn volume_worker_limit(workers: usize) -> usize {
    let reserved = if workers >= 2 {
        (workers / 4).max(1)
    } else {
        0
    };
    workers - reserved
}

/// What the workers share.
pub struct Context {
    pub client: Client,
    pub selection: Selection,
    /// The NFS exports served, one plugin each.
    pub exports: Exports,
    pub claims: Store<Claim>,
    pub volumes: Arc<VolumeCache>,
    pub classes: Store<Class>,
    pub events: EventPublisher,
    pub metrics: Metrics,
    /// Background writes (events) and clone copies; the controller waits for them before it
    /// stops.
    pub tasks: TaskTracker,
    /// The work queue (a clone's copy queues its claim again when it ends).
    pub queue: Arc<WorkQueue<WorkItem>>,
    /// Clone copies running in the background.
    pub clones: clone::CloneJobs,
    /// The reclaims' coalesced lists of our PVs by directory tree.
    pub tree_lists: other_volumes::TreeLists,
}

impl Context {
    /// The cached class a claim names, if this provisioner should provision the claim now.
    pub fn class_to_provision(&self, claim: &Claim) -> Option<Arc<Class>> {
        let class = self.classes.get(&ObjectRef::new(class_name_of(claim)?));
        self.selection
            .claim_is_ours(claim, class.as_deref())
            .then_some(class)
            .flatten()
    }
}

/// How the controller works: workers, periods and delays.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    pub workers: usize,
    pub resync_period: Duration,
    pub shutdown_grace: Duration,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// Budget and pace of usage measurement.
    pub usage: UsageSettings,
    /// Clone copies at once.
    pub max_concurrent_clones: usize,
    /// At most one progress event per clone this often.
    pub clone_progress_interval: Duration,
}

/// How often the `claims_waiting` gauge is updated.
const WAITING_GAUGE_PERIOD: Duration = Duration::from_secs(5);

/// The controller component: started once per process, run until shutdown.
pub struct Controller {
    ctx: Arc<Context>,
    queue: Arc<WorkQueue<WorkItem>>,
    synced: watch::Receiver<bool>,
    settings: ControllerSettings,
    /// Stops the watches and the gauge once [`Controller::run`] is done.
    stop: CancellationToken,
}

impl Controller {
    /// Starts the watches (on every replica) and marks `readiness` once they synced.
    pub fn start(
        client: Client,
        selection: Selection,
        exports: Exports,
        events: EventPublisher,
        metrics: Metrics,
        readiness: Arc<Readiness>,
        settings: ControllerSettings,
    ) -> Self {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let queue = WorkQueue::<WorkItem>::with_lanes(
            settings.retry_base_delay,
            settings.retry_max_delay,
            WorkItem::lane,
            volume_worker_limit(settings.workers),
        );
        let watches = Watches::start(&client, &selection, &queue, &stop, &tasks);
        let ctx = Arc::new(Context {
            tree_lists: other_volumes::TreeLists::new(client.clone()),
            client,
            selection,
            exports,
            claims: watches.claims.clone(),
            volumes: watches.volumes.clone(),
            classes: watches.classes.clone(),
            events,
            metrics,
            tasks,
            queue: queue.clone(),
            clones: clone::CloneJobs::new(
                settings.max_concurrent_clones,
                settings.clone_progress_interval,
            ),
        });

        let (synced_tx, synced) = watch::channel(false);
        let until_stopped = stop.clone();
        ctx.tasks.spawn(async move {
            tokio::select! {
                _ = until_stopped.cancelled() => return,
                _ = watches.wait_until_synced() => {}
            }
            readiness.set_watches_synced();
            let _ = synced_tx.send(true);
            info!("watches synced");
            // The initial lists are decoded in full before they are trimmed for the caches.
            crate::memory::release_free_heap();
        });
        let (gauge_ctx, until_stopped) = (ctx.clone(), stop.clone());
        ctx.tasks.spawn(async move {
            loop {
                gauge_ctx
                    .metrics
                    .claims_waiting
                    .set(count_waiting_claims(&gauge_ctx) as i64);
                tokio::select! {
                    _ = until_stopped.cancelled() => return,
                    _ = tokio::time::sleep(WAITING_GAUGE_PERIOD) => {}
                }
            }
        });
        Controller {
            ctx,
            queue,
            synced,
            settings,
            stop,
        }
    }

    /// Works during every leadership term `leading` announces, until `shutdown`: then stops
    /// taking work, lets in-flight work finish (up to the shutdown grace), stops the watches
    /// and waits for every task it started.
    pub async fn run(mut self, mut leading: watch::Receiver<bool>, shutdown: CancellationToken) {
        let metrics = self.ctx.metrics.clone();
        'terms: loop {
            // Follow until leading (and caches are complete), or until shutdown.
            tokio::select! {
                _ = shutdown.cancelled() => break 'terms,
                r = leading.wait_for(|l| *l) => if r.is_err() { break 'terms },
            }
            tokio::select! {
                _ = shutdown.cancelled() => break 'terms,
                _ = self.synced.wait_for(|s| *s) => {}
            }
            metrics.leader.set(1);
            let term = CancellationToken::new();
            let stop_taking = CancellationToken::new();
            let term_tasks = TaskTracker::new();
            enqueue_all(&self.ctx, &self.queue);
            term_tasks.spawn(resync(
                self.ctx.clone(),
                self.queue.clone(),
                self.settings.resync_period,
                stop_taking.clone(),
                term.clone(),
            ));
            // Usage measurement while leading, one task per export with that export's root,
            // health and volumes; it stops taking work with the workers.
            for export in self.ctx.exports.iter() {
                let name = export.name().to_string();
                let volumes = Arc::new(usage_source::CachedVolumes::new(
                    self.ctx.clone(),
                    name.clone(),
                ));
                let probe = metrics.clone();
                let healthy: usage::HealthSource =
                    Arc::new(move || probe.nfs_root_healthy(&name).get() == 1);
                let monitor = usage::UsageMonitor::new(
                    export.root().clone(),
                    metrics.usage.clone(),
                    self.ctx.events.clone(),
                    volumes,
                    healthy,
                    self.settings.usage.clone(),
                );
                term_tasks.spawn(monitor.run(stop_taking.clone()));
            }
            term_tasks.spawn(workers::run(
                self.ctx.clone(),
                self.queue.clone(),
                self.settings.workers,
                stop_taking.clone(),
                term.clone(),
            ));
            term_tasks.close();

            let lost = tokio::select! {
                r = leading.wait_for(|l| !*l) => { let _ = r; true }
                _ = shutdown.cancelled() => false,
            };
            stop_taking.cancel();
            if lost {
                // Another replica may lead soon: stop everything now, do not finish.
                warn!("leadership lost: stopping all work and campaigning again");
                term.cancel();
                term_tasks.wait().await;
                metrics.leader.set(0);
                continue 'terms;
            }
            info!(grace = ?self.settings.shutdown_grace, "shutting down: letting in-flight work finish");
            if tokio::time::timeout(self.settings.shutdown_grace, term_tasks.wait())
                .await
                .is_err()
            {
                warn!("in-flight work did not finish within the shutdown grace; abandoning it");
                term.cancel();
                term_tasks.wait().await;
            }
            // Clone copies run beyond the workers: stop them (the next leader copies again).
            term.cancel();
            break 'terms;
        }
        metrics.leader.set(0);
        self.stop.cancel();
        self.ctx.tasks.close();
        self.ctx.tasks.wait().await;
    }
}

/// Periodic full re-check: catches anything a watch event did not cover. The orphan sweep
/// runs at the start of every term and with every re-check.
async fn resync(
    ctx: Arc<Context>,
    queue: Arc<WorkQueue<WorkItem>>,
    every: Duration,
    stop_taking: CancellationToken,
    term: CancellationToken,
) {
    loop {
        orphans::sweep(&ctx, &term).await;
        clone::sweep_staged(&ctx, &term).await;
        clone::protection::sweep(&ctx).await;
        tokio::select! {
            _ = stop_taking.cancelled() => return,
            _ = tokio::time::sleep(every) => enqueue_all(&ctx, &queue),
        }
    }
}

/// Queues every claim and volume this provisioner may have to act on.
fn enqueue_all(ctx: &Context, queue: &WorkQueue<WorkItem>) {
    for claim in ctx.claims.state() {
        if claim_may_need_a_volume(&claim) || expansion::wants_expansion(&claim) {
            queue.add(WorkItem::Claim(ObjectRef::from_obj(&*claim)));
        }
    }
    let ours = ctx.volumes.filter_map(|pv| {
        (ctx.selection.ownership(&pv) != Ownership::Foreign).then(|| ObjectRef::from_obj(&pv))
    });
    for key in ours {
        queue.add(WorkItem::Volume(key));
    }
}

/// Claims of this provisioner still waiting for a volume (for the `claims_waiting` gauge).
fn count_waiting_claims(ctx: &Context) -> usize {
    ctx.claims
        .state()
        .iter()
        .filter(|c| ctx.class_to_provision(c).is_some())
        .count()
}

#[cfg(test)]
mod tests {
    use super::volume_worker_limit;

    #[test]
    fn volume_work_leaves_workers_for_claims() {
        assert_eq!(
            volume_worker_limit(1),
            1,
            "one worker: volumes must still go on"
        );
        assert_eq!(volume_worker_limit(2), 1);
        assert_eq!(volume_worker_limit(4), 3);
        assert_eq!(volume_worker_limit(32), 24);
    }
}
