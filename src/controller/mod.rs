//! The Kubernetes half: watch claims, volumes and classes; provision and reclaim.
//!
//! Watches run on every replica so a new leader starts with warm caches; workers run only
//! while this replica leads (see [`crate::leader`]). Each leadership term has a cancellation
//! token: losing the lease cancels it, which abandons in-flight API calls and stops file
//! system work at the next system call.

pub mod cache;
mod events;
mod provision;
pub mod queue;
mod reclaim;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::parameters::{DirectoryPermissions, ParameterError};
use crate::persistent_volume::{ANN_PROVISIONED_BY, FINALIZER};
use crate::planning::{ExportPath, PlanError};
use crate::storage::{NfsRoot, StorageError};

pub use cache::{Claim, Volume};
pub use events::EventPublisher;
use queue::WorkQueue;

/// One unit of work: a claim to provision or a volume to look after.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WorkItem {
    Claim(ObjectRef<Claim>),
    Volume(ObjectRef<Volume>),
}

/// What the workers share.
pub struct Context {
    pub client: Client,
    pub provisioner_name: String,
    pub nfs_server: String,
    pub export: ExportPath,
    pub default_permissions: DirectoryPermissions,
    pub root: NfsRoot,
    pub claims: Store<Claim>,
    pub volumes: Store<Volume>,
    pub classes: Store<StorageClass>,
    pub events: EventPublisher,
    pub metrics: Metrics,
}

/// Why one attempt failed. Every failure is retried with backoff; the label is what metrics
/// count.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("volumeMode Block is not supported: NFS volumes are file systems")]
    BlockVolumeMode,
    #[error(
        "spec.selector is not supported: this provisioner creates new volumes and cannot match a selector"
    )]
    Selector,
    #[error(
        "{0} is not supported: this provisioner cannot populate a volume from another volume or snapshot"
    )]
    DataSource(String),
    #[error("spec.resources.requests.storage is missing")]
    NoStorageRequest,
    #[error("StorageClass {class} has invalid parameters: {source}")]
    InvalidParameters {
        class: String,
        #[source]
        source: Box<ParameterError>,
    },
    #[error("invalid claim annotation: {0}")]
    InvalidClaimAnnotation(#[source] Box<ParameterError>),
    #[error("unsafe volume path: {0}")]
    UnsafePath(#[source] PlanError),
    #[error(
        "the PV's NFS path {path:?} is not a directory under this provisioner's export: {source}"
    )]
    PathOutsideExport {
        path: String,
        #[source]
        source: PlanError,
    },
    #[error(
        "the PV points to NFS server {found:?}, but this provisioner manages {ours:?}; its data is left alone"
    )]
    ForeignServer { found: String, ours: String },
    #[error("the PV has no spec.nfs")]
    NotNfs,
    #[error("the recorded delete policy {0:?} is not one of delete, retain, archive")]
    InvalidRecordedPolicy(String),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("work stopped: leadership lost or shutting down")]
    Stopped,
}

impl Error {
    pub fn label(&self) -> &'static str {
        match self {
            Error::BlockVolumeMode => "block_volume_mode",
            Error::Selector => "selector",
            Error::DataSource(_) => "data_source",
            Error::NoStorageRequest => "no_storage_request",
            Error::InvalidParameters { .. } => "invalid_parameters",
            Error::InvalidClaimAnnotation(_) => "invalid_claim_annotation",
            Error::UnsafePath(_) => "unsafe_path",
            Error::PathOutsideExport { .. } => "path_outside_export",
            Error::ForeignServer { .. } => "foreign_server",
            Error::NotNfs => "not_nfs",
            Error::InvalidRecordedPolicy(_) => "invalid_recorded_policy",
            Error::Storage(e) => e.label(),
            Error::Kube(_) => "kube_api",
            Error::Stopped => "stopped",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a successful attempt asks for next.
pub enum Next {
    Done,
    /// Look again later without counting a failure (waiting on another controller).
    RecheckAfter(Duration),
}

/// Objects per page of a watch's initial list. Each page is held in full (with managedFields
/// and everything the cache later drops) while it is decoded, so smaller pages keep the
/// startup peak of a big cluster down: 10 000 claims and volumes cost 100 list requests per
/// kind instead of 20.
const WATCH_PAGE_SIZE: u32 = 100;

/// Watches and caches claims, volumes and classes, feeding keys into `queue`.
pub struct Watches {
    pub claims: Store<Claim>,
    pub volumes: Store<Volume>,
    pub classes: Store<StorageClass>,
}

/// Drops what the controller never reads before objects are cached: `managedFields` and the
/// last-applied annotation dominate the size of most objects.
fn trim<K: ResourceExt>(obj: &mut K) {
    obj.managed_fields_mut().clear();
    obj.annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

fn claim_may_need_a_volume(claim: &Claim) -> bool {
    let unbound = claim
        .spec
        .as_ref()
        .is_none_or(|s| s.volume_name.as_deref().unwrap_or("").is_empty());
    unbound && claim.metadata.deletion_timestamp.is_none()
}

fn volume_is_ours(pv: &Volume, provisioner_name: &str) -> bool {
    pv.annotations().get(ANN_PROVISIONED_BY).map(String::as_str) == Some(provisioner_name)
}

impl Watches {
    /// Starts the three watches; they run until `stop` fires.
    pub fn start(
        client: &Client,
        provisioner_name: &str,
        queue: &Arc<WorkQueue<WorkItem>>,
        stop: &CancellationToken,
    ) -> Self {
        let config = watcher::Config::default().page_size(WATCH_PAGE_SIZE);

        let (claims, writer) = reflector::store();
        let claim_queue = queue.clone();
        let stream = watcher(Api::<Claim>::all(client.clone()), config.clone())
            .default_backoff()
            .modify(|claim: &mut Claim| {
                trim(claim);
                cache::lean_claim(claim);
            })
            .reflect(writer)
            .applied_objects();
        spawn_until(
            stop,
            stream,
            "persistentvolumeclaims",
            move |claim: Claim| {
                if claim_may_need_a_volume(&claim) {
                    claim_queue.add(WorkItem::Claim(ObjectRef::from_obj(&claim)));
                }
            },
        );

        let (volumes, writer) = reflector::store();
        let volume_queue = queue.clone();
        let name = provisioner_name.to_string();
        let lean_name = provisioner_name.to_string();
        let stream = watcher(Api::<Volume>::all(client.clone()), config.clone())
            .default_backoff()
            .modify(move |pv: &mut Volume| {
                trim(pv);
                let ours = volume_is_ours(pv, &lean_name)
                    || pv.finalizers().iter().any(|f| f == FINALIZER);
                cache::lean_volume(pv, ours);
            })
            .reflect(writer)
            .applied_objects();
        spawn_until(stop, stream, "persistentvolumes", move |pv: Volume| {
            if volume_is_ours(&pv, &name) {
                volume_queue.add(WorkItem::Volume(ObjectRef::from_obj(&pv)));
            }
        });

        let (classes, writer) = reflector::store();
        let class_queue = queue.clone();
        let claims_for_classes = claims.clone();
        let name = provisioner_name.to_string();
        let stream = watcher(Api::<StorageClass>::all(client.clone()), config)
            .default_backoff()
            .modify(trim)
            .reflect(writer)
            .applied_objects();
        spawn_until(
            stop,
            stream,
            "storageclasses",
            move |class: StorageClass| {
                if class.provisioner != name {
                    return;
                }
                // A fixed class makes waiting claims succeed without waiting out their backoff.
                let class_name = class.name_any();
                for claim in claims_for_classes.state() {
                    if claim_may_need_a_volume(&claim)
                        && provision::class_name_of(&claim).as_deref() == Some(class_name.as_str())
                    {
                        class_queue.add(WorkItem::Claim(ObjectRef::from_obj(&*claim)));
                    }
                }
            },
        );

        Self {
            claims,
            volumes,
            classes,
        }
    }

    /// True once every watch delivered its first full list.
    pub async fn wait_until_synced(&self) {
        let _ = self.claims.wait_until_ready().await;
        let _ = self.volumes.wait_until_ready().await;
        let _ = self.classes.wait_until_ready().await;
    }
}

fn spawn_until<S, K, F>(stop: &CancellationToken, stream: S, what: &'static str, mut on_object: F)
where
    S: futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    K: Send + 'static,
    F: FnMut(K) + Send + 'static,
{
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                item = stream.next() => match item {
                    Some(Ok(obj)) => on_object(obj),
                    Some(Err(e)) => warn!(resource = what, error = %e, "watch failed; retrying with backoff"),
                    None => return,
                }
            }
        }
    });
}

/// Queues every claim and volume this provisioner may have to act on.
pub fn enqueue_all(ctx: &Context, queue: &WorkQueue<WorkItem>) {
    for claim in ctx.claims.state() {
        if claim_may_need_a_volume(&claim) {
            queue.add(WorkItem::Claim(ObjectRef::from_obj(&*claim)));
        }
    }
    for pv in ctx.volumes.state() {
        if volume_is_ours(&pv, &ctx.provisioner_name)
            || pv.finalizers().iter().any(|f| f == FINALIZER)
        {
            queue.add(WorkItem::Volume(ObjectRef::from_obj(&*pv)));
        }
    }
}

/// Claims of this provisioner still waiting for a volume (for the `claims_waiting` gauge).
pub fn count_waiting_claims(ctx: &Context) -> usize {
    ctx.claims
        .state()
        .iter()
        .filter(|c| claim_may_need_a_volume(c) && provision::qualifying_class(ctx, c).is_some())
        .count()
}

/// Runs `workers` workers until `stop_taking` fires; `term` cancels in-flight work.
pub async fn run_workers(
    ctx: Arc<Context>,
    queue: Arc<WorkQueue<WorkItem>>,
    workers: usize,
    stop_taking: CancellationToken,
    term: CancellationToken,
) {
    let mut handles = Vec::with_capacity(workers);
    for _ in 0..workers {
        let ctx = ctx.clone();
        let queue = queue.clone();
        let stop_taking = stop_taking.clone();
        let term = term.clone();
        handles.push(tokio::spawn(async move {
            loop {
                let key = tokio::select! {
                    biased;
                    _ = stop_taking.cancelled() => return,
                    key = queue.next() => key,
                };
                process(&ctx, &queue, &key, &term).await;
                queue.done(&key);
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
}

async fn process(
    ctx: &Context,
    queue: &Arc<WorkQueue<WorkItem>>,
    key: &WorkItem,
    term: &CancellationToken,
) {
    let attempt = async {
        match key {
            WorkItem::Claim(r) => provision::reconcile(ctx, r, term).await,
            WorkItem::Volume(r) => reclaim::reconcile(ctx, r, term).await,
        }
    };
    let outcome = tokio::select! {
        biased;
        _ = term.cancelled() => Err(Error::Stopped),
        r = attempt => r,
    };
    match outcome {
        Ok(Next::Done) => queue.forget(key),
        Ok(Next::RecheckAfter(delay)) => {
            queue.forget(key);
            queue.add_after(key.clone(), delay);
        }
        Err(Error::Stopped) => debug!(?key, "attempt abandoned: work stopped"),
        Err(e) => {
            let delay = queue.backoff(key);
            let operation = match key {
                WorkItem::Claim(_) => "provision",
                WorkItem::Volume(_) => "delete",
            };
            ctx.metrics.failed(operation, e.label());
            warn!(?key, error = %e, retry_in = ?delay, "attempt failed; will retry");
            queue.add_after(key.clone(), delay);
        }
    }
}
