//! The three watches (claims, volumes, classes): each caches only what
//! [`Selection`](super::selection::Selection) selects and hands the keys of what may need work
//! to the queue.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::WorkItem;
use super::list_watch::list_then_watch;
use super::queue::WorkQueue;
use super::selection::{Ownership, Selection, claim_may_need_a_volume, class_name_of};
use super::volume_cache::VolumeCache;
use crate::objects::{self, Claim, Class, Volume};

/// Watches and caches claims, volumes and classes, feeding keys into `queue`.
pub struct Watches {
    pub claims: Store<Claim>,
    pub volumes: Arc<VolumeCache>,
    pub classes: Store<Class>,
}

/// Drops what the controller never reads before objects are cached: `managedFields` and the
/// last-applied annotation dominate the size of most objects.
fn trim<K: ResourceExt>(obj: &mut K) {
    obj.managed_fields_mut().clear();
    obj.annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
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
/// the cache. Yields `item` of the objects kept (what the queue needs of them, e.g. their
/// key: during a relist these are held until it completes, and holding every object of a
/// 100 000-volume list in full doubled the startup peak), each only once the cache shows it.
///
/// That last part matters after a relist (a watch expired, the API server restarted): the
/// reflector keeps serving the old cache until the whole list is in (`InitDone`), so an object
/// handed to the queue as soon as its page arrived (`InitApply`) was looked up by a worker in
/// the old cache, not found, and dropped; a claim created while the watch was down then waited
/// for the next resync. Relisted objects are therefore yielded at `InitDone`.
///
/// Each list is one unpaged list from the API server's watch cache, decoded as it arrives
/// (see [`list_then_watch`]).
fn selective_watch<K, T>(
    api: Api<K>,
    mut cache: impl FnMut(&watcher::Event<K>) + Send + 'static,
    keep: impl Fn(&mut K) -> bool + Send + 'static,
    item: impl Fn(&K) -> Option<T> + Send + 'static,
) -> impl futures::Stream<Item = Result<T, watcher::Error>> + Send
where
    T: Send + 'static,
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    list_then_watch(api)
        .default_backoff()
        .filter_map(move |event| {
            futures::future::ready(match event {
                Ok(event) => select_for_cache(event, &keep).map(Ok),
                Err(e) => Some(Err(e)),
            })
        })
        .inspect_ok(move |event| cache(event))
        .scan(Vec::new(), move |relisted: &mut Vec<T>, event| {
            let ready: Vec<Result<T, watcher::Error>> = match event {
                Ok(watcher::Event::Apply(obj)) => item(&obj).map(Ok).into_iter().collect(),
                Ok(watcher::Event::Init) => {
                    relisted.clear();
                    Vec::new()
                }
                Ok(watcher::Event::InitApply(obj)) => {
                    relisted.extend(item(&obj));
                    Vec::new()
                }
                // Taken, not drained: a drained vector keeps its capacity, which after the
                // initial list of 100 000 volumes was 13 MB held for the life of the process.
                Ok(watcher::Event::InitDone) => {
                    std::mem::take(relisted).into_iter().map(Ok).collect()
                }
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

/// Claims the controller caches: those that may still need a volume, and bound ones asking
/// for more (expansion).
fn keep_claim(claim: &mut Claim) -> bool {
    let keep = claim_may_need_a_volume(claim) || super::expansion::wants_expansion(claim);
    if keep {
        trim(claim);
    }
    keep
}

/// Volumes the controller caches (see [`Selection::caches_volume`]): ours whole, the others
/// reduced to name and NFS source.
fn keep_volume(pv: &mut Volume, selection: &Selection) -> bool {
    if !selection.caches_volume(pv) {
        return false;
    }
    trim(pv);
    objects::lean_volume(pv, selection.ownership(pv) != Ownership::Foreign);
    true
}

impl Watches {
    /// Starts the three watches on `tasks`; they run until `stop` fires.
    pub fn start(
        client: &Client,
        selection: &Selection,
        queue: &Arc<WorkQueue<WorkItem>>,
        stop: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let (claims, writer) = reflector::store();
        let claim_queue = queue.clone();
        let stream = selective_watch(
            Api::<Claim>::all(client.clone()),
            apply_to(writer),
            keep_claim,
            |claim: &Claim| Some(ObjectRef::from_obj(claim)),
        );
        spawn_until(
            tasks,
            stop,
            stream,
            "persistentvolumeclaims",
            move |claim: ObjectRef<Claim>| claim_queue.add(WorkItem::Claim(claim)),
        );

        let volumes = Arc::new(VolumeCache::default());
        let cache = volumes.clone();
        let volume_queue = queue.clone();
        let (keep, queued) = (selection.clone(), selection.clone());
        let stream = selective_watch(
            Api::<Volume>::all(client.clone()),
            move |event: &watcher::Event<Volume>| cache.apply_watcher_event(event),
            move |pv: &mut Volume| keep_volume(pv, &keep),
            move |pv: &Volume| {
                (queued.ownership(pv) != Ownership::Foreign).then(|| ObjectRef::from_obj(pv))
            },
        );
        spawn_until(
            tasks,
            stop,
            stream,
            "persistentvolumes",
            move |pv: ObjectRef<Volume>| volume_queue.add(WorkItem::Volume(pv)),
        );

        let (classes, writer) = reflector::store();
        let class_queue = queue.clone();
        let claims_for_classes = claims.clone();
        let keep = selection.clone();
        let stream = selective_watch(
            Api::<Class>::all(client.clone()),
            apply_to(writer),
            // Only this provisioner's classes: a claim of any other class is not ours.
            move |class: &mut Class| {
                let ours = keep.class_is_ours(class);
                if ours {
                    trim(class);
                }
                ours
            },
            |class: &Class| Some(class.name().to_string()),
        );
        spawn_until(
            tasks,
            stop,
            stream,
            "storageclasses",
            move |class: String| {
                // A fixed class makes waiting claims succeed without waiting out their backoff.
                for claim in claims_for_classes.state() {
                    if claim_may_need_a_volume(&claim)
                        && class_name_of(&claim) == Some(class.as_str())
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
        self.volumes.wait_until_ready().await;
        let _ = self.classes.wait_until_ready().await;
    }
}

fn spawn_until<S, K, F>(
    tasks: &TaskTracker,
    stop: &CancellationToken,
    stream: S,
    what: &'static str,
    mut on_object: F,
) where
    S: futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    K: Send + 'static,
    F: FnMut(K) + Send + 'static,
{
    let stop = stop.clone();
    tasks.spawn(async move {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistent_volume::{ANN_PROVISIONED_BY, FINALIZER};
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

    fn sel() -> Selection {
        Selection::new("me", &["filer"])
    }

    #[test]
    fn only_our_volumes_and_nfs_volumes_of_our_server_are_cached() {
        let mut ours = volume("me", nfs("filer"));
        assert!(keep_volume(&mut ours, &sel()));
        assert!(
            ours.spec.as_ref().unwrap().claim_ref.is_some(),
            "ours is kept whole"
        );
        assert!(ours.status.is_some());

        // Ours to release: kept whole too, whatever its server.
        let mut with_our_finalizer = volume("me", nfs("elsewhere"));
        with_our_finalizer.metadata.annotations = None;
        with_our_finalizer.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
        assert!(keep_volume(&mut with_our_finalizer, &sel()));
        assert!(with_our_finalizer.status.is_some());

        let mut same_server = volume("someone-else", nfs("filer"));
        assert!(keep_volume(&mut same_server, &sel()));
        let spec = same_server.spec.as_ref().unwrap();
        assert_eq!(spec.nfs.as_ref().unwrap().path, "/export/x");
        assert!(spec.claim_ref.is_none() && same_server.status.is_none());

        assert!(!keep_volume(
            &mut volume("someone-else", nfs("elsewhere")),
            &sel()
        ));
        let csi = json!({"csi": {"driver": "d", "volumeHandle": "h"}});
        assert!(!keep_volume(&mut volume("someone-else", csi), &sel()));
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
