//! The controller's view of the other PVs, which the NFS plugin asks before it deletes or
//! archives a directory ([`OtherVolumes`]).
//!
//! Two sources are asked: the cache (every NFS PV of our server, found by
//! [`VolumeCache::near`](super::volume_cache::VolumeCache::near)), and then the API server
//! itself for our PVs of the same directory tree (by [`LABEL_DIRECTORY_TREE`]), so a PV
//! created a moment ago that the watch has not delivered yet still counts. Those lists are
//! coalesced ([`TreeLists`]): one list answers every reclaim that asked before it was sent.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use tokio::sync::oneshot;

use super::{Context, Volume};
use crate::nfs_plugin::{LookupError, NfsPlugin, OtherVolumes, Overlap};
use crate::persistent_volume::{LABEL_DIRECTORY_TREE, directory_tree_label};
use crate::planning::VolumeDirectory;

/// The other PVs as the cache and the API server have them.
pub struct ClusterVolumes<'a>(pub &'a Context);

impl ClusterVolumes<'_> {
    /// A cached PV (other than `me`) whose directory overlaps `dir` of `export`.
    pub fn in_cache(&self, export: &NfsPlugin, me: &str, dir: &VolumeDirectory) -> Option<Overlap> {
        let path = export.export_path().pv_path(dir);
        self.0.volumes.near(&path).iter().find_map(|other| {
            export.overlap_with(
                me,
                dir,
                &other.name_any(),
                other.spec.as_ref().and_then(|s| s.nfs.as_ref()),
            )
        })
    }

    /// One of our PVs (other than `me`) whose directory overlaps `dir`, as the API server
    /// has them now: read by a list sent after this call began ([`TreeLists`]).
    pub async fn in_api(
        &self,
        export: &NfsPlugin,
        me: &str,
        dir: &VolumeDirectory,
    ) -> Result<Option<Overlap>, TreeListError> {
        let first = dir.components().next().unwrap_or_default();
        let tree = directory_tree_label(first);
        let listed = self.0.tree_lists.list(tree.clone()).await?;
        Ok(listed
            .iter()
            .filter(|other| other.labels().get(LABEL_DIRECTORY_TREE) == Some(&tree))
            .find_map(|other| {
                export.overlap_with(
                    me,
                    dir,
                    &other.name_any(),
                    other.spec.as_ref().and_then(|s| s.nfs.as_ref()),
                )
            }))
    }
}

impl OtherVolumes for ClusterVolumes<'_> {
    async fn overlapping(
        &self,
        export: &NfsPlugin,
        me: &str,
        dir: &VolumeDirectory,
    ) -> Result<Option<Overlap>, LookupError> {
        if let Some(overlap) = self.in_cache(export, me, dir) {
            return Ok(Some(overlap));
        }
        self.in_api(export, me, dir)
            .await
            .map_err(|e| LookupError(Box::new(e)))
    }
}

/// At most this many directory trees in one list's selector (`tree in (a,b,…)`): 100 values
/// of 16 characters keep the request line under 2 KB. More trees waiting go in the next
/// list.
pub const MAX_TREES_PER_LIST: usize = 100;

/// A failed list, as every reclaim that waited for it receives it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("listing volumes by directory tree: {0}")]
pub struct TreeListError(Arc<kube::Error>);

/// What one list answers: our PVs of the trees it asked for.
/// Decoded as the lean [`Volume`] (no managedFields, only the spec fields the check reads):
/// a tree can hold thousands of PVs (a `${namespace}/…` path pattern puts a namespace's
/// volumes in one tree).
type Listed = Result<Arc<Vec<Volume>>, TreeListError>;

/// Coalesced consistent lists of our PVs by [`LABEL_DIRECTORY_TREE`].
///
/// Each list is a consistent read, which kube-apiserver serves by reading every PV from
/// etcd whatever the selector: one per reclaim made deleting with 20 000 PVs in the cluster
/// crawl (3.9 PVs/s). Here a caller's tree joins the next list to be sent; one list at a
/// time is in flight, and callers that ask while it is take the one after it. So every
/// answer comes from a list sent after its caller asked (a PV created before the caller
/// asked is in it), and a list answers every caller waiting when it was sent (up to
/// [`MAX_TREES_PER_LIST`] trees). A failed list fails every caller it would have answered.
pub struct TreeLists {
    client: Client,
    state: Arc<Mutex<Waiting>>,
}

#[derive(Default)]
struct Waiting {
    /// Callers not yet in a sent list, in the order they asked.
    asked: VecDeque<(String, oneshot::Sender<Listed>)>,
    /// A task is sending lists (and takes `asked` before each).
    sending: bool,
}

impl TreeLists {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            state: Arc::default(),
        }
    }

    /// Our PVs of directory tree `tree` (label value) and possibly of others, from a list
    /// sent after this call began.
    pub async fn list(&self, tree: String) -> Listed {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut w = lock(&self.state);
            w.asked.push_back((tree, tx));
            !std::mem::replace(&mut w.sending, true)
        };
        if start {
            tokio::spawn(send_lists(self.client.clone(), self.state.clone()));
        }
        rx.await.unwrap_or_else(|_| {
            Err(TreeListError(Arc::new(kube::Error::Service(
                "the directory tree list was abandoned".into(),
            ))))
        })
    }
}

fn lock(state: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends lists while callers wait, then ends.
async fn send_lists(client: Client, state: Arc<Mutex<Waiting>>) {
    // Should this task end early (a panic), the callers still waiting get an error and the
    // next caller starts a new task.
    struct Ending {
        state: Arc<Mutex<Waiting>>,
        finished: bool,
    }
    impl Drop for Ending {
        fn drop(&mut self) {
            if !self.finished {
                let mut w = lock(&self.state);
                w.sending = false;
                w.asked.clear();
            }
        }
    }
    let mut ending = Ending {
        state,
        finished: false,
    };
    let api: Api<Volume> = Api::all(client);
    loop {
        let batch = {
            let mut w = lock(&ending.state);
            let batch = next_batch(&mut w.asked, MAX_TREES_PER_LIST);
            if batch.is_empty() {
                // Under the lock: a caller asking from now on starts a new task.
                w.sending = false;
                drop(w);
                ending.finished = true;
                return;
            }
            batch
        };
        let trees: Vec<&str> = {
            let mut seen = HashSet::new();
            batch
                .iter()
                .map(|(t, _)| t.as_str())
                .filter(|t| seen.insert(*t))
                .collect()
        };
        let answer = api
            .list(&ListParams::default().labels(&tree_selector(&trees)))
            .await
            .map(|list| Arc::new(list.items))
            .map_err(|e| TreeListError(Arc::new(e)));
        for (_, caller) in batch {
            // A caller that gave up (its work was stopped) no longer listens.
            let _ = caller.send(answer.clone());
        }
    }
}

/// Takes the callers of the first `max_trees` distinct trees asked (with every caller of
/// those trees), leaving the others in order.
fn next_batch<T>(asked: &mut VecDeque<(String, T)>, max_trees: usize) -> Vec<(String, T)> {
    let mut trees = HashSet::new();
    let mut batch = Vec::new();
    let mut rest = VecDeque::new();
    for (tree, caller) in asked.drain(..) {
        if trees.contains(&tree) || trees.len() < max_trees {
            trees.insert(tree.clone());
            batch.push((tree, caller));
        } else {
            rest.push_back((tree, caller));
        }
    }
    *asked = rest;
    batch
}

/// The label selector for our PVs of `trees` (one or more).
fn tree_selector(trees: &[&str]) -> String {
    match trees {
        [one] => format!("{LABEL_DIRECTORY_TREE}={one}"),
        many => format!("{LABEL_DIRECTORY_TREE} in ({})", many.join(",")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fake_apiserver::{FakeApiServer, Fault, FaultAction, Options};
    use k8s_openapi::api::core::v1::PersistentVolume;
    use kube::api::PostParams;

    use super::*;

    async fn fake() -> (FakeApiServer, Client) {
        let fake = FakeApiServer::start(Options::default()).await.unwrap();
        let mut config = kube::Config::new(fake.url().parse().unwrap());
        config.auth_info.token = Some(fake.token_for("admin").into());
        let client = Client::try_from(config).unwrap();
        (fake, client)
    }

    async fn create_pv(client: &Client, name: &str, tree: &str) {
        let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {LABEL_DIRECTORY_TREE: tree}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "nfs": {"server": "nfs.example", "path": format!("/export/{name}")},
            },
        }))
        .unwrap();
        Api::<PersistentVolume>::all(client.clone())
            .create(&PostParams::default(), &pv)
            .await
            .unwrap();
    }

    fn pv_lists(fake: &FakeApiServer) -> Vec<String> {
        fake.requests()
            .into_iter()
            .filter(|r| {
                r.verb.as_deref() == Some("list")
                    && r.resource.as_deref() == Some("persistentvolumes")
            })
            .map(|r| r.query)
            .collect()
    }

    fn names(listed: &Listed) -> Vec<String> {
        let mut names: Vec<_> = listed
            .as_ref()
            .unwrap()
            .iter()
            .map(|pv| pv.name_any())
            .collect();
        names.sort();
        names
    }

    /// Starts `lists.list(tree)` and returns its answer's handle once it has asked.
    async fn ask(lists: &Arc<TreeLists>, tree: &str) -> tokio::task::JoinHandle<Listed> {
        let (lists, tree) = (lists.clone(), tree.to_string());
        let handle = tokio::spawn(async move { lists.list(tree).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        handle
    }

    #[tokio::test]
    async fn one_list_answers_every_caller_that_asked_while_the_previous_was_in_flight() {
        let (fake, client) = fake().await;
        create_pv(&client, "old-a", "aaaa").await;
        let lists = Arc::new(TreeLists::new(client.clone()));
        let held = fake.add_fault(
            Fault::new(FaultAction::Hang)
                .verb("list")
                .resource("persistentvolumes")
                .times(1),
        );
        let first = ask(&lists, "aaaa").await;
        held.triggered().await;
        // Created before these callers asked, while the first list is in flight: every
        // answer they get must include it.
        create_pv(&client, "new-b", "bbbb").await;
        let mut waiting = Vec::new();
        for i in 0..20 {
            let tree = if i % 2 == 0 { "bbbb" } else { "cccc" };
            waiting.push(ask(&lists, tree).await);
        }
        assert_eq!(
            pv_lists(&fake).len(),
            1,
            "the others wait for the next list"
        );
        fake.remove_fault(&held);
        assert_eq!(names(&first.await.unwrap()), vec!["old-a"]);
        for answer in waiting {
            let listed = answer.await.unwrap();
            assert!(names(&listed).contains(&"new-b".to_string()));
        }
        let sent = pv_lists(&fake);
        assert_eq!(sent.len(), 2, "21 callers, two lists: {sent:?}");
        assert!(
            sent[1].contains("bbbb") && sent[1].contains("cccc") && !sent[1].contains("aaaa"),
            "one selector for the trees of the callers waiting: {}",
            sent[1]
        );

        // Asked after those lists: a new one, which sees what was created since.
        create_pv(&client, "later-a", "aaaa").await;
        let listed = lists.list("aaaa".into()).await;
        assert_eq!(names(&listed), vec!["later-a", "old-a"]);
        assert_eq!(pv_lists(&fake).len(), 3);
        fake.shutdown();
    }

    #[tokio::test]
    async fn a_failed_list_fails_every_caller_it_would_have_answered() {
        let (fake, client) = fake().await;
        create_pv(&client, "a", "aaaa").await;
        let lists = Arc::new(TreeLists::new(client.clone()));
        let held = fake.add_fault(
            Fault::new(FaultAction::Hang)
                .verb("list")
                .resource("persistentvolumes")
                .times(1),
        );
        fake.add_fault(
            Fault::new(FaultAction::RespondError(500, "InternalError".into()))
                .verb("list")
                .resource("persistentvolumes")
                .times(1),
        );
        let first = ask(&lists, "aaaa").await;
        held.triggered().await;
        let waiting = [ask(&lists, "aaaa").await, ask(&lists, "bbbb").await];
        fake.remove_fault(&held);
        assert!(first.await.unwrap().is_ok());
        for answer in waiting {
            let e = answer
                .await
                .unwrap()
                .expect_err("the failed list's callers fail");
            assert!(e.to_string().contains("listing volumes"), "{e}");
        }
        // The next caller gets a new list.
        assert_eq!(names(&lists.list("aaaa".into()).await), vec!["a"]);
        fake.shutdown();
    }

    #[test]
    fn a_list_takes_a_bounded_number_of_trees_with_all_their_callers() {
        let mut asked: VecDeque<(String, u32)> = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]
            .into_iter()
            .map(|(t, n)| (t.to_string(), n))
            .collect();
        let batch = next_batch(&mut asked, 2);
        let taken: Vec<u32> = batch.iter().map(|(_, n)| *n).collect();
        assert_eq!(taken, vec![1, 2, 3, 5]);
        assert_eq!(asked.len(), 1);
        assert_eq!(next_batch(&mut asked, 2).len(), 1);
        assert!(next_batch(&mut asked, 2).is_empty());
        assert_eq!(tree_selector(&["a"]), format!("{LABEL_DIRECTORY_TREE}=a"));
        assert_eq!(
            tree_selector(&["a", "b"]),
            format!("{LABEL_DIRECTORY_TREE} in (a,b)")
        );
    }
}
