//! Events are written in the background, giving way to the work client: in the order they
//! were published (per object), none lost, and a PV create never waits behind a backlog of
//! them. Against the fake API server, judged by its request log and stored Events, not by
//! wall-clock time.

use std::collections::BTreeMap;
use std::time::Duration;

use fake_apiserver::{FakeApiServer, Kind, Options};
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::events::EventType;
use nfs_provisioner::controller::EventPublisher;
use nfs_provisioner::kube_client::{Clients, build_clients};
use nfs_provisioner::metrics::Metrics;
use nfs_provisioner::objects::Claim;
use serde_json::json;

async fn clients(fake: &FakeApiServer, qps: f64, burst: u32) -> Clients {
    let mut config = kube::Config::new(fake.url().parse().unwrap());
    config.auth_info.token = Some(fake.token_for("admin").into());
    build_clients(config, qps, burst).unwrap()
}

fn publisher(clients: &Clients) -> EventPublisher {
    EventPublisher::yielding_to(
        clients.events.clone(),
        clients.work_load.clone(),
        "example.com/nfs",
        "test-0",
        Metrics::new(),
    )
}

fn claim(i: usize) -> Claim {
    serde_json::from_value(json!({
        "metadata": {"name": format!("claim-{i}"), "namespace": "team", "uid": format!("uid-{i}")}
    }))
    .unwrap()
}

fn is_event_create(r: &fake_apiserver::RequestRecord) -> bool {
    r.method == "POST" && r.path.starts_with("/apis/events.k8s.io/")
}

#[tokio::test]
async fn events_arrive_in_order_per_object_and_none_is_lost() {
    let fake = FakeApiServer::start(Options::default()).await.unwrap();
    let clients = clients(&fake, 200.0, 20).await;
    let events = publisher(&clients);
    let claims: Vec<Claim> = (0..5).map(claim).collect();
    let n = 300;
    for i in 0..n {
        let claim = &claims[i % claims.len()];
        if i % 3 == 0 {
            let note = format!("attempt {i} failed");
            events
                .on_claim(claim, EventType::Warning, "ProvisioningFailed", note)
                .await;
        } else {
            let note = format!("step {i}");
            events
                .success_on_claim(claim, "ProvisioningSucceeded", note)
                .await;
        }
    }
    assert_eq!(
        events.flush(Duration::from_secs(60)).await,
        0,
        "all written"
    );

    let stored = fake.list(Kind::Event);
    assert_eq!(stored.len(), n, "one Event per distinct publish, none lost");
    // Per object, the order they were written in (eventTime, then the name, which is the
    // write time in nanoseconds) is the order they were published in.
    let mut by_object: BTreeMap<String, Vec<(String, String, usize)>> = BTreeMap::new();
    for e in &stored {
        let note = e["note"].as_str().unwrap();
        let step: usize = note.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
        by_object
            .entry(e["regarding"]["name"].as_str().unwrap().to_string())
            .or_default()
            .push((
                e["eventTime"].as_str().unwrap().to_string(),
                e["metadata"]["name"].as_str().unwrap().to_string(),
                step,
            ));
    }
    assert_eq!(by_object.len(), claims.len());
    for (object, mut written) in by_object {
        written.sort();
        let steps: Vec<usize> = written.iter().map(|w| w.2).collect();
        let mut published = steps.clone();
        published.sort();
        assert_eq!(steps, published, "{object}: written out of order");
    }
}

/// 200 Events wait to be written through a slow token bucket (10 requests/s, burst 1), and
/// are being written. Then 10 PV creates are sent on the work client at once: from the first
/// of them to the last, every token goes to a PV create, none to an Event (but the one that
/// may already have held its token).
#[tokio::test]
async fn a_backlog_of_events_does_not_delay_pv_creates() {
    let fake = FakeApiServer::start(Options::default()).await.unwrap();
    let clients = clients(&fake, 10.0, 1).await;
    let events = publisher(&clients);
    for i in 0..200 {
        events
            .success_on_claim(&claim(i), "ProvisioningSucceeded", format!("step {i}"))
            .await;
    }
    while fake
        .requests()
        .iter()
        .filter(|r| is_event_create(r))
        .count()
        < 3
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let volumes: Api<PersistentVolume> = Api::all(clients.work.clone());
    let creates = (0..10).map(|i| {
        let volumes = volumes.clone();
        async move {
            let pv: PersistentVolume = serde_json::from_value(json!({
                "metadata": {"name": format!("pv-{i}")},
                "spec": {"accessModes": ["ReadWriteMany"], "capacity": {"storage": "1Mi"},
                         "nfs": {"server": "nfs.example.test", "path": "/exports/x"}}
            }))
            .unwrap();
            volumes.create(&PostParams::default(), &pv).await.unwrap();
        }
    });
    futures::future::join_all(creates).await;

    let log = fake.requests();
    let is_pv_create = |r: &fake_apiserver::RequestRecord| {
        r.method == "POST" && r.path == "/api/v1/persistentvolumes"
    };
    let first = log.iter().position(is_pv_create).unwrap();
    let last = log.iter().rposition(is_pv_create).unwrap();
    let interleaved = log[first..last]
        .iter()
        .filter(|r| is_event_create(r))
        .count();
    assert!(
        interleaved <= 1,
        "{interleaved} Events were written while PV creates waited for tokens"
    );
    let written = log.iter().filter(|r| is_event_create(r)).count();
    assert!(written < 200, "the backlog was still there throughout");
    assert_eq!(events.flush(Duration::from_secs(60)).await, 0);
    assert_eq!(
        fake.list(Kind::Event).len(),
        200,
        "and then all were written"
    );
}
