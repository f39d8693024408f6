//! The Kubernetes half: watch claims, volumes and classes; provision and reclaim.
//!
//! Watches run on every replica so a new leader starts with warm caches; workers run only
//! while this replica leads (see [`crate::leader`]). Each leadership term has a cancellation
//! token: losing the lease cancels it, which abandons in-flight API calls and stops file
//! system work at the next system call.

pub mod cache;
mod directory_index;
mod directory_locks;
mod events;
pub mod expansion;
mod orphans;
mod provision;
pub mod queue;
mod reclaim;
mod volume_overlap;

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
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
pub use directory_index::DirectoryIndex;
pub use directory_locks::DirectoryLocks;
pub use events::EventPublisher;
pub use orphans::sweep as sweep_orphans;
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
    /// Path component → cached volumes whose path has it (overlapping-directory check).
    pub directories: Arc<DirectoryIndex>,
    /// One owner at a time per directory tree (provisioning, reclaim, orphan sweep).
    pub directory_locks: Arc<DirectoryLocks>,
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
    #[error(
        "a PV named {0} already exists and is not known as this provisioner's: if an earlier attempt just created it, the next attempt finds it; otherwise another driver owns that name and it is left alone"
    )]
    VolumeNameTaken(String),
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
            Error::VolumeNameTaken(_) => "volume_name_taken",
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
    pub directories: Arc<DirectoryIndex>,
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

/// Decides what a watch event does to a cache that holds only the objects `keep` selects
/// (and trims them). An object that stops qualifying is removed: its update becomes a delete
/// for the cache. Most PVCs and PVs of a cluster belong to other drivers, and not caching them
/// at all is what keeps memory flat however big the cluster is.
fn select_for_cache<K>(
    event: watcher::Event<K>,
    keep: &impl Fn(&mut K) -> bool,
) -> Option<watcher::Event<K>> {
    match event {
        watcher::Event::Apply(mut obj) => Some(if keep(&mut obj) {
            watcher::Event::Apply(obj)
        } else {
            watcher::Event::Delete(obj)
        }),
        watcher::Event::InitApply(mut obj) => {
            keep(&mut obj).then_some(watcher::Event::InitApply(obj))
        }
        other => Some(other),
    }
}

/// A watch of `K` whose cache holds only what `keep` selects; `cache` applies each event to
/// the cache. Yields the objects kept, each only once the cache shows it.
///
/// That last part matters after a relist (a watch expired, the API server restarted): the
/// reflector keeps serving the old cache until the whole list is in (`InitDone`), so an object
/// handed to the queue as soon as its page arrived (`InitApply`) was looked up by a worker in
/// the old cache, not found, and dropped; a claim created while the watch was down then waited
/// for the next resync. Relisted objects are therefore yielded at `InitDone`.
fn selective_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    mut cache: impl FnMut(&watcher::Event<K>) + Send + 'static,
    keep: impl Fn(&mut K) -> bool + Send + 'static,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(api, config)
        .default_backoff()
        .filter_map(move |event| {
            futures::future::ready(match event {
                Ok(event) => select_for_cache(event, &keep).map(Ok),
                Err(e) => Some(Err(e)),
            })
        })
        .inspect_ok(move |event| cache(event))
        .scan(Vec::new(), |relisted: &mut Vec<K>, event| {
            let ready: Vec<Result<K, watcher::Error>> = match event {
                Ok(watcher::Event::Apply(obj)) => vec![Ok(obj)],
                Ok(watcher::Event::Init) => {
                    relisted.clear();
                    Vec::new()
                }
                Ok(watcher::Event::InitApply(obj)) => {
                    relisted.push(obj);
                    Vec::new()
                }
                Ok(watcher::Event::InitDone) => relisted.drain(..).map(Ok).collect(),
                Ok(watcher::Event::Delete(_)) => Vec::new(),
                Err(e) => vec![Err(e)],
            };
            futures::future::ready(Some(futures::stream::iter(ready)))
        })
        .flatten()
}

/// Applies watch events to a reflector cache.
fn apply_to<K>(mut writer: reflector::store::Writer<K>) -> impl FnMut(&watcher::Event<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone,
{
    move |event| writer.apply_watcher_event(event)
}

/// Claims the controller caches: those that may still need a volume. Bound and deleting
/// claims never do (a bound claim's `volumeName` cannot be unset), so they are not kept.
fn keep_claim(claim: &mut Claim) -> bool {
    let keep = claim_may_need_a_volume(claim) || expansion::wants_expansion(claim);
    if keep {
        trim(claim);
    }
    keep
}

/// Volumes the controller caches: its own (by annotation or finalizer) whole, and NFS volumes
/// of the same server reduced to name and source, because a directory another PV points at is
/// never deleted or archived. Volumes of other drivers or other servers are not kept.
fn keep_volume(pv: &mut Volume, provisioner_name: &str, nfs_server: &str) -> bool {
    let ours =
        volume_is_ours(pv, provisioner_name) || pv.finalizers().iter().any(|f| f == FINALIZER);
    let same_server = pv
        .spec
        .as_ref()
        .and_then(|s| s.nfs.as_ref())
        .is_some_and(|nfs| nfs.server == nfs_server);
    if !ours && !same_server {
        return false;
    }
    trim(pv);
    cache::lean_volume(pv, ours);
    true
}

impl Watches {
    /// Starts the three watches; they run until `stop` fires.
    pub fn start(
        client: &Client,
        provisioner_name: &str,
        nfs_server: &str,
        queue: &Arc<WorkQueue<WorkItem>>,
        stop: &CancellationToken,
    ) -> Self {
        let config = watcher::Config::default().page_size(WATCH_PAGE_SIZE);

        let (claims, writer) = reflector::store();
        let claim_queue = queue.clone();
        let stream = selective_watch(
            Api::<Claim>::all(client.clone()),
            config.clone(),
            apply_to(writer),
            keep_claim,
        );
        spawn_until(
            stop,
            stream,
            "persistentvolumeclaims",
            move |claim: Claim| {
                claim_queue.add(WorkItem::Claim(ObjectRef::from_obj(&claim)));
            },
        );

        let (volumes, writer) = reflector::store();
        let volume_queue = queue.clone();
        let name = provisioner_name.to_string();
        let (keep_name, keep_server) = (provisioner_name.to_string(), nfs_server.to_string());
        let directories = Arc::new(DirectoryIndex::default());
        let index = directories.clone();
        let mut writer = writer;
        let stream = selective_watch(
            Api::<Volume>::all(client.clone()),
            config.clone(),
            move |event: &watcher::Event<Volume>| index.apply(&mut writer, event),
            move |pv: &mut Volume| keep_volume(pv, &keep_name, &keep_server),
        );
        spawn_until(stop, stream, "persistentvolumes", move |pv: Volume| {
            if volume_is_ours(&pv, &name) {
                volume_queue.add(WorkItem::Volume(ObjectRef::from_obj(&pv)));
            }
        });

        let (classes, writer) = reflector::store();
        let class_queue = queue.clone();
        let claims_for_classes = claims.clone();
        // Only this provisioner's classes: a claim of any other class is not ours to serve.
        let keep_name = provisioner_name.to_string();
        let stream = selective_watch(
            Api::<StorageClass>::all(client.clone()),
            config,
            apply_to(writer),
            move |class: &mut StorageClass| {
                let keep = class.provisioner == keep_name;
                if keep {
                    trim(class);
                }
                keep
            },
        );
        spawn_until(
            stop,
            stream,
            "storageclasses",
            move |class: StorageClass| {
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
            directories,
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
        if claim_may_need_a_volume(&claim) || expansion::wants_expansion(&claim) {
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
    let resize = matches!(key, WorkItem::Claim(r) if expansion::applies_to(ctx, r));
    let attempt = async {
        match key {
            WorkItem::Claim(r) if resize => expansion::reconcile(ctx, r).await,
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
                WorkItem::Claim(_) if resize => "resize",
                WorkItem::Claim(_) => "provision",
                WorkItem::Volume(_) => "delete",
            };
            ctx.metrics.failed(operation, e.label());
            warn!(?key, error = %e, retry_in = ?delay, "attempt failed; will retry");
            queue.add_after(key.clone(), delay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(volume_name: Option<&str>, deleting: bool) -> Claim {
        let deletion_timestamp = deleting.then_some("2026-01-01T00:00:00Z");
        serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "n", "uid": "u",
                         "deletionTimestamp": deletion_timestamp,
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"storageClassName": "nfs", "volumeName": volume_name}
        }))
        .unwrap()
    }

    fn volume(provisioned_by: &str, source: serde_json::Value) -> Volume {
        serde_json::from_value(json!({
            "metadata": {"name": "pv", "annotations": {ANN_PROVISIONED_BY: provisioned_by},
                         "managedFields": [{"manager": "kcm"}]},
            "spec": source,
            "status": {"phase": "Bound"}
        }))
        .unwrap()
    }

    fn nfs(server: &str) -> serde_json::Value {
        json!({"nfs": {"server": server, "path": "/export/x"}, "claimRef": {"name": "a"}})
    }

    #[test]
    fn only_claims_that_may_need_a_volume_are_cached() {
        let mut pending = claim(None, false);
        assert!(keep_claim(&mut pending));
        assert!(pending.metadata.managed_fields.is_none_or(|m| m.is_empty()));
        assert!(!keep_claim(&mut claim(Some("pv-1"), false)));
        assert!(!keep_claim(&mut claim(None, true)));
    }

    #[test]
    fn only_our_volumes_and_nfs_volumes_of_our_server_are_cached() {
        let mut ours = volume("me", nfs("filer"));
        assert!(keep_volume(&mut ours, "me", "filer"));
        assert!(
            ours.spec.as_ref().unwrap().claim_ref.is_some(),
            "ours is kept whole"
        );
        assert!(ours.status.is_some());

        let mut with_our_finalizer = volume("someone-else", nfs("elsewhere"));
        with_our_finalizer.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
        assert!(keep_volume(&mut with_our_finalizer, "me", "filer"));

        let mut same_server = volume("someone-else", nfs("filer"));
        assert!(keep_volume(&mut same_server, "me", "filer"));
        let spec = same_server.spec.as_ref().unwrap();
        assert_eq!(spec.nfs.as_ref().unwrap().path, "/export/x");
        assert!(spec.claim_ref.is_none() && same_server.status.is_none());

        assert!(!keep_volume(
            &mut volume("someone-else", nfs("elsewhere")),
            "me",
            "filer"
        ));
        let csi = json!({"csi": {"driver": "d", "volumeHandle": "h"}});
        assert!(!keep_volume(
            &mut volume("someone-else", csi),
            "me",
            "filer"
        ));
    }

    #[test]
    fn an_object_that_stops_qualifying_leaves_the_cache() {
        let keep = |c: &mut Claim| keep_claim(c);
        let bound = claim(Some("pv-1"), false);
        assert!(matches!(
            select_for_cache(watcher::Event::Apply(bound.clone()), &keep),
            Some(watcher::Event::Delete(_))
        ));
        assert!(select_for_cache(watcher::Event::InitApply(bound.clone()), &keep).is_none());
        assert!(matches!(
            select_for_cache(watcher::Event::Delete(bound), &keep),
            Some(watcher::Event::Delete(_))
        ));
        let pending = claim(None, false);
        assert!(matches!(
            select_for_cache(watcher::Event::Apply(pending.clone()), &keep),
            Some(watcher::Event::Apply(_))
        ));
        assert!(matches!(
            select_for_cache(watcher::Event::InitApply(pending), &keep),
            Some(watcher::Event::InitApply(_))
        ));
        assert!(matches!(
            select_for_cache(watcher::Event::<Claim>::InitDone, &keep),
            Some(watcher::Event::InitDone)
        ));
    }

    /// The reflector applies what `select_for_cache` yields: a claim that binds is gone from
    /// the store, one that never qualified is never in it.
    #[test]
    fn the_store_holds_only_selected_objects() {
        let (store, mut writer) = reflector::store::<Claim>();
        let keep = |c: &mut Claim| keep_claim(c);
        let mut other = claim(Some("pv-9"), false);
        other.metadata.name = Some("other".into());
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(claim(None, false)),
            watcher::Event::InitApply(other),
            watcher::Event::InitDone,
        ] {
            if let Some(e) = select_for_cache(event, &keep) {
                writer.apply_watcher_event(&e);
            }
        }
        assert_eq!(store.state().len(), 1);
        let e = select_for_cache(watcher::Event::Apply(claim(Some("pv-1"), false)), &keep);
        writer.apply_watcher_event(&e.unwrap());
        assert!(store.state().is_empty());
    }
}
