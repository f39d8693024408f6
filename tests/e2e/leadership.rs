//! High availability: several replicas against one (fake) control plane. Only the leader
//! provisions; graceful stop hands over at once; a killed leader is replaced after its lease
//! expires; a leader cut off from the API stops before anyone else can lead.

use std::collections::BTreeSet;
use std::time::Duration;

use fake_apiserver::{Kind, Options};

use crate::cluster::{TestCluster, entries};
use crate::provisioner::RunningProvisioner;

const LEASE_NAMESPACE: &str = "nfs-provisioner";

fn user(i: usize) -> String {
    format!("system:serviceaccount:nfs-provisioner:replica-{i}")
}

fn start_replicas(c: &TestCluster, root: &std::path::Path, n: usize) -> Vec<RunningProvisioner> {
    start_replicas_with(c, root, n, |_| {})
}

fn start_replicas_with(
    c: &TestCluster,
    root: &std::path::Path,
    n: usize,
    adjust: impl Fn(&mut crate::provisioner::ProvisionerOptions),
) -> Vec<RunningProvisioner> {
    (0..n)
        .map(|i| {
            let mut o = c.provisioner_options(root);
            o.leader_election = true;
            adjust(&mut o);
            o.pod_name = format!("replica-{i}");
            c.grant_provisioner_roles(&user(i));
            RunningProvisioner::start(&o, c.fake_config_for(&user(i)))
        })
        .collect()
}

async fn wait_for_single_leader(c: &TestCluster, replicas: &[RunningProvisioner]) -> usize {
    c.eventually("exactly one leader", || async {
        let leaders: Vec<usize> = (0..replicas.len())
            .filter(|i| replicas[*i].is_leading())
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await
}

fn lease_holder(c: &TestCluster) -> Option<String> {
    let lease = c
        .fake_server()
        .unwrap()
        .get(Kind::Lease, LEASE_NAMESPACE, "example.com-nfs")?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}

/// Users that sent a request changing PVs or writing events.
fn writers(c: &TestCluster) -> BTreeSet<String> {
    c.fake_server()
        .unwrap()
        .requests()
        .into_iter()
        .filter(|r| {
            matches!(
                r.verb.as_deref(),
                Some("create" | "delete" | "patch" | "update")
            )
        })
        .filter(|r| matches!(r.resource.as_deref(), Some("persistentvolumes" | "events")))
        .map(|r| r.user)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_provisions() {
    let c = TestCluster::fake(Options::default()).await;
    let root = tempfile::tempdir().unwrap();
    let class = c.create_class("ha", &[], "Delete").await;
    let replicas = start_replicas(&c, root.path(), 3);
    let leader = wait_for_single_leader(&c, &replicas).await;
    assert!(
        lease_holder(&c)
            .unwrap()
            .starts_with(&format!("replica-{leader}_")),
        "lease names the leading pod"
    );
    for i in 0..20 {
        c.create_claim(&TestCluster::claim(&format!("ha-{i}"), &class))
            .await;
    }
    for i in 0..20 {
        c.wait_bound(&format!("ha-{i}")).await;
    }
    assert_eq!(
        writers(&c),
        BTreeSet::from([user(leader)]),
        "followers never wrote"
    );
    assert_eq!(c.our_volumes().await.len(), 20);
    for r in replicas {
        r.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_releases_the_lease_and_hands_over_without_losing_claims() {
    let c = TestCluster::fake(Options::default()).await;
    let root = tempfile::tempdir().unwrap();
    let class = c.create_class("handover", &[], "Delete").await;
    let mut replicas = start_replicas(&c, root.path(), 2);
    let leader = wait_for_single_leader(&c, &replicas).await;
    for i in 0..30 {
        c.create_claim(&TestCluster::claim(&format!("h-{i}"), &class))
            .await;
    }
    // Stop the leader mid-burst, as on SIGTERM.
    let old = replicas.remove(leader);
    old.stop();
    let holder = lease_holder(&c).unwrap_or_default();
    assert!(
        !holder.starts_with(&format!("replica-{leader}_")),
        "the stopped leader released its lease (holder now {holder:?})"
    );
    c.eventually("the follower to lead", || async {
        replicas[0].is_leading().then_some(())
    })
    .await;
    for i in 0..30 {
        c.wait_bound(&format!("h-{i}")).await;
    }
    assert_eq!(
        c.our_volumes().await.len(),
        30,
        "no claim provisioned twice"
    );
    assert_eq!(entries(root.path()).len(), 30, "no orphan directory");
    replicas.remove(0).stop();
}

/// Lease renewals do not queue behind work: with a client limit of 2 requests/s and a
/// backlog of over 8 s of requests, the leader keeps renewing (every 300 ms, 2 s deadline)
/// and never stops leading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_work_does_not_cost_the_leader_its_lease() {
    let c = TestCluster::fake(Options::default()).await;
    let root = tempfile::tempdir().unwrap();
    let class = c.create_class("backlog", &[], "Delete").await;
    let replicas = start_replicas_with(&c, root.path(), 1, |o| {
        o.extra_args
            .extend(["--kube-api-qps", "2", "--kube-api-burst", "1"].map(String::from));
    });
    wait_for_single_leader(&c, &replicas).await;
    let holder = lease_holder(&c).unwrap();
    let claims = 16;
    for i in 0..claims {
        c.create_claim(&TestCluster::claim(&format!("b-{i}"), &class))
            .await;
    }
    // Twice the lease duration, while the requests for 16 PVs and their events trickle out.
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < until {
        assert!(replicas[0].is_leading(), "the leader lost its lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lease_holder(&c).unwrap(), holder);
    let made = c.our_volumes().await.len();
    assert!(
        made < claims,
        "the backlog was still draining ({made} PVs made)"
    );
    for i in 0..claims {
        c.wait_bound(&format!("b-{i}")).await;
    }
    for r in replicas {
        r.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_after_its_lease_expires() {
    let c = TestCluster::fake(Options::default()).await;
    let root = tempfile::tempdir().unwrap();
    let class = c.create_class("expiry", &[], "Delete").await;
    let mut replicas = start_replicas(&c, root.path(), 2);
    let leader = wait_for_single_leader(&c, &replicas).await;
    let old = replicas.remove(leader);
    old.kill();
    assert!(
        lease_holder(&c)
            .unwrap()
            .starts_with(&format!("replica-{leader}_")),
        "a killed leader cannot release its lease"
    );
    c.create_claim(&TestCluster::claim("after-kill", &class))
        .await;
    c.eventually("the follower to take the expired lease", || async {
        replicas[0].is_leading().then_some(())
    })
    .await;
    c.wait_bound("after-kill").await;
    replicas.remove(0).stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_stops_before_another_can_lead() {
    let c = TestCluster::fake(Options::default()).await;
    let root = tempfile::tempdir().unwrap();
    let class = c.create_class("partition", &[], "Delete").await;
    // The ordering below rests on the gap between renew deadline and lease duration; 3 s of
    // it keeps a busy machine's scheduling delays from blurring the order.
    let replicas = start_replicas_with(&c, root.path(), 2, |o| {
        o.lease = (
            Duration::from_secs(5),
            Duration::from_secs(2),
            Duration::from_millis(300),
        );
    });
    let leader = wait_for_single_leader(&c, &replicas).await;
    let follower = 1 - leader;
    let mut leader_rx = replicas[leader].observers.leading.clone();
    let mut follower_rx = replicas[follower].observers.leading.clone();

    c.fake_server().unwrap().partition_user(&user(leader), true);
    // Record the order of the two transitions.
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (o1, o2) = (order.clone(), order.clone());
    let stopped = tokio::spawn(async move {
        let _ = leader_rx.wait_for(|l| !*l).await;
        o1.lock().unwrap().push("old leader stopped");
    });
    let started = tokio::spawn(async move {
        let _ = follower_rx.wait_for(|l| *l).await;
        o2.lock().unwrap().push("new leader started");
    });
    tokio::time::timeout(Duration::from_secs(30), async {
        stopped.await.unwrap();
        started.await.unwrap();
    })
    .await
    .expect("fail-over happens");
    assert_eq!(
        *order.lock().unwrap(),
        vec!["old leader stopped", "new leader started"],
        "the cut-off leader must stop working before its lease can be taken"
    );
    c.create_claim(&TestCluster::claim("after-partition", &class))
        .await;
    c.wait_bound("after-partition").await;
    c.fake_server()
        .unwrap()
        .partition_user(&user(leader), false);
    for r in replicas {
        r.kill();
    }
}
