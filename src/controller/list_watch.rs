//! List, then watch from the list's resourceVersion: the event sequence of kube-runtime's
//! `watcher` (`Init`, `InitApply`…, `InitDone`, then `Apply` and `Delete`; errors for the
//! caller's backoff; a relist when the watch's resourceVersion is gone), with the list made
//! by [`streamed_list`](super::streamed_list).
//!
//! Written here rather than taken from kube-runtime because its `watcher` lists only in
//! pages (each decoded from a whole buffered body) or, with `resourceVersion=0`, in one body
//! held whole: pages are served from etcd, which took 11–13 s for 100 000 volumes, and one
//! held body is 356 MB. Its list cannot be replaced from outside.

use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::api::{WatchEvent, WatchParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::debug;

use super::streamed_list::{self, StreamedList};

/// Server-side timeout of a watch request; as kube-runtime's watcher.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// A watch that delivers nothing (not even a bookmark) for this long past its timeout is
/// taken for a dead connection; as kube-runtime's watcher.
const WATCH_IDLE: Duration = Duration::from_secs(WATCH_TIMEOUT_SECS as u64 + 5);

enum State<K> {
    /// Nothing listed (yet, or any more: the watch's resourceVersion expired).
    Empty,
    Listing(StreamedList<K>),
    /// Listed (or watched) up to this resourceVersion; a watch from it is to be started.
    Listed(String),
    Watching(String, BoxStream<'static, kube::Result<WatchEvent<K>>>),
}

/// A watch of every `K`: see the module's documentation. Use it with a backoff
/// (`WatchStreamExt::default_backoff`), which pauses the stream after each error.
pub fn list_then_watch<K>(api: Api<K>) -> impl Stream<Item = watcher::Result<Event<K>>> + Send
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let client = api.clone().into_client();
    futures::stream::unfold(
        (api, client, State::Empty),
        |(api, client, state)| async move {
            let (event, state) = step(&api, &client, state).await;
            Some((event, (api, client, state)))
        },
    )
}

/// Advances `state` to its next event (bookmarks and ended watches produce none, so it
/// loops over them).
async fn step<K>(
    api: &Api<K>,
    client: &kube::Client,
    mut state: State<K>,
) -> (watcher::Result<Event<K>>, State<K>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    loop {
        state = match state {
            State::Empty => {
                return match streamed_list::list(client, api.resource_url()).await {
                    Ok(list) => (Ok(Event::Init), State::Listing(list)),
                    Err(e) => (
                        Err(watcher::Error::InitialListFailed(e.into())),
                        State::Empty,
                    ),
                };
            }
            State::Listing(mut list) => {
                if let Some(obj) = list.next().await {
                    return (Ok(Event::InitApply(obj)), State::Listing(list));
                }
                return match list.finish() {
                    Ok(rv) => (Ok(Event::InitDone), State::Listed(rv)),
                    // Relisted from the start: `Init` again discards what came so far.
                    Err(e) => (
                        Err(watcher::Error::InitialListFailed(e.into())),
                        State::Empty,
                    ),
                };
            }
            State::Listed(rv) => {
                let params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
                match api.watch(&params, &rv).await {
                    Ok(events) => State::Watching(rv, events.boxed()),
                    Err(e) => {
                        let next = if is_gone(&e) {
                            State::Empty
                        } else {
                            State::Listed(rv)
                        };
                        return (Err(watcher::Error::WatchStartFailed(e)), next);
                    }
                }
            }
            State::Watching(rv, mut events) => {
                let next = tokio::time::timeout(WATCH_IDLE, events.next())
                    .await
                    .unwrap_or_else(|_| {
                        debug!("watch idle past its timeout; watching again");
                        None
                    });
                match next {
                    Some(Ok(WatchEvent::Added(obj) | WatchEvent::Modified(obj))) => {
                        return match obj.resource_version() {
                            Some(rv) if !rv.is_empty() => {
                                (Ok(Event::Apply(obj)), State::Watching(rv, events))
                            }
                            _ => (Err(watcher::Error::NoResourceVersion), State::Empty),
                        };
                    }
                    Some(Ok(WatchEvent::Deleted(obj))) => {
                        return match obj.resource_version() {
                            Some(rv) if !rv.is_empty() => {
                                (Ok(Event::Delete(obj)), State::Watching(rv, events))
                            }
                            _ => (Err(watcher::Error::NoResourceVersion), State::Empty),
                        };
                    }
                    Some(Ok(WatchEvent::Bookmark(bookmark))) => {
                        State::Watching(bookmark.metadata.resource_version, events)
                    }
                    Some(Ok(WatchEvent::Error(status))) => {
                        // 410 Gone: the resourceVersion is compacted away; list again.
                        let next = if status.code == 410 {
                            State::Empty
                        } else {
                            State::Watching(rv, events)
                        };
                        return (Err(watcher::Error::WatchError(status)), next);
                    }
                    Some(Err(e)) => {
                        let next = if is_gone(&e) {
                            State::Empty
                        } else {
                            State::Watching(rv, events)
                        };
                        return (Err(watcher::Error::WatchFailed(e)), next);
                    }
                    None => State::Listed(rv),
                }
            }
        };
    }
}

fn is_gone(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 410)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use fake_apiserver::{FakeApiServer, Fault, FaultAction, Options};
    use kube::Client;
    use kube::runtime::WatchStreamExt;
    use serde_json::json;

    use super::*;
    use crate::objects::Volume;

    async fn fake() -> (FakeApiServer, Client) {
        let fake = FakeApiServer::start(Options::default()).await.unwrap();
        let mut config = kube::Config::new(fake.url().parse().unwrap());
        config.auth_info.token = Some(fake.token_for("admin").into());
        (fake, Client::try_from(config).unwrap())
    }

    fn put_pv(fake: &FakeApiServer, name: &str) {
        fake.put_object(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                     "nfs": {"server": "filer", "path": format!("/export/{name}")}},
        }))
        .unwrap();
    }

    /// What the next event is, in short: `Init`, `InitApply pv-1`, `Apply pv-1`, `Err`…
    async fn next<S>(stream: &mut S) -> String
    where
        S: Stream<Item = watcher::Result<Event<Volume>>> + Unpin,
    {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on");
        let name = |pv: &Volume| pv.metadata.name.clone().unwrap_or_default();
        match event {
            Ok(Event::Init) => "Init".into(),
            Ok(Event::InitApply(pv)) => format!("InitApply {}", name(&pv)),
            Ok(Event::InitDone) => "InitDone".into(),
            Ok(Event::Apply(pv)) => format!("Apply {}", name(&pv)),
            Ok(Event::Delete(pv)) => format!("Delete {}", name(&pv)),
            Err(e) => format!("Err {e}"),
        }
    }

    fn requests(fake: &FakeApiServer, verb: &str) -> Vec<fake_apiserver::RequestRecord> {
        fake.requests()
            .into_iter()
            .filter(|r| {
                r.verb.as_deref() == Some(verb)
                    && r.resource.as_deref() == Some("persistentvolumes")
            })
            .collect()
    }

    fn query_value<'q>(query: &'q str, key: &str) -> Option<&'q str> {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }

    /// One unpaged list from the watch cache, a watch from exactly the list's
    /// resourceVersion, and a full relist when that watch's resourceVersion is compacted.
    #[tokio::test]
    async fn lists_once_watches_from_the_list_and_relists_when_gone() {
        let (fake, client) = fake().await;
        fake.set_controller_manager(false);
        put_pv(&fake, "pv-1");
        put_pv(&fake, "pv-2");
        let listed_at = fake.current_resource_version();
        let mut stream = std::pin::pin!(list_then_watch(Api::<Volume>::all(client)));
        assert_eq!(next(&mut stream).await, "Init");
        assert_eq!(next(&mut stream).await, "InitApply pv-1");
        assert_eq!(next(&mut stream).await, "InitApply pv-2");
        assert_eq!(next(&mut stream).await, "InitDone");

        let lists = requests(&fake, "list");
        assert_eq!(lists.len(), 1);
        assert_eq!(query_value(&lists[0].query, "resourceVersion"), Some("0"));
        assert_eq!(query_value(&lists[0].query, "limit"), None);

        put_pv(&fake, "pv-3");
        assert_eq!(next(&mut stream).await, "Apply pv-3");
        let watches = requests(&fake, "watch");
        assert_eq!(watches.len(), 1);
        assert_eq!(
            query_value(&watches[0].query, "resourceVersion"),
            Some(listed_at.to_string().as_str()),
            "the watch starts where the list ended"
        );

        // Watches resume from the last event seen, not from the list.
        fake.close_watches();
        put_pv(&fake, "pv-4");
        assert_eq!(next(&mut stream).await, "Apply pv-4");
        let watches = requests(&fake, "watch");
        let pv3_at = fake.current_resource_version() - 1;
        assert_eq!(
            query_value(&watches.last().unwrap().query, "resourceVersion"),
            Some(pv3_at.to_string().as_str())
        );

        // Compacted: the watch cannot resume, the next event is an error, then a relist.
        fake.compact_and_close_watches();
        put_pv(&fake, "pv-5");
        let gone = next(&mut stream).await;
        assert!(gone.starts_with("Err"), "{gone}");
        assert_eq!(next(&mut stream).await, "Init");
        for i in 1..=5 {
            assert_eq!(next(&mut stream).await, format!("InitApply pv-{i}"));
        }
        assert_eq!(next(&mut stream).await, "InitDone");
        assert_eq!(requests(&fake, "list").len(), 2);
    }

    /// A failed list surfaces as an error, and the backoff spaces the retries.
    #[tokio::test]
    async fn list_errors_surface_and_are_retried_after_a_backoff() {
        let (fake, client) = fake().await;
        fake.set_controller_manager(false);
        put_pv(&fake, "pv-1");
        fake.add_fault(
            Fault::new(FaultAction::RespondError(500, "InternalError".into()))
                .verb("list")
                .resource("persistentvolumes")
                .times(2),
        );
        let stream = list_then_watch(Api::<Volume>::all(client)).default_backoff();
        let mut stream = std::pin::pin!(stream);
        for _ in 0..2 {
            let e = next(&mut stream).await;
            assert!(
                e.starts_with("Err failed to perform initial object list"),
                "{e}"
            );
        }
        assert_eq!(next(&mut stream).await, "Init");
        assert_eq!(next(&mut stream).await, "InitApply pv-1");
        assert_eq!(next(&mut stream).await, "InitDone");
        let at: Vec<SystemTime> = requests(&fake, "list").iter().map(|r| r.at).collect();
        assert_eq!(at.len(), 3);
        let gap = at[1].duration_since(at[0]).unwrap();
        assert!(gap >= Duration::from_millis(700), "retried after {gap:?}");
    }

    /// A list whose connection drops is an error, and is listed again.
    #[tokio::test]
    async fn a_dropped_list_is_listed_again() {
        let (fake, client) = fake().await;
        fake.set_controller_manager(false);
        put_pv(&fake, "pv-1");
        fake.add_fault(
            Fault::new(FaultAction::DropConnection)
                .verb("list")
                .resource("persistentvolumes")
                .times(1),
        );
        let mut stream = std::pin::pin!(list_then_watch(Api::<Volume>::all(client)));
        let e = next(&mut stream).await;
        assert!(e.starts_with("Err"), "{e}");
        assert_eq!(next(&mut stream).await, "Init");
        assert_eq!(next(&mut stream).await, "InitApply pv-1");
        assert_eq!(next(&mut stream).await, "InitDone");
    }
}
