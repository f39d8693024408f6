//! Error bodies, compared byte-for-byte in meaning with the ones a v1.33 server sent.

mod common;

use common::*;
use fake_apiserver::{Kind, Options};
use serde_json::{Value, json};

fn expected(name: &str) -> Value {
    let all: Value = serde_json::from_str(&fixture("v1.33-error-responses.json")).unwrap();
    all[name].clone()
}

#[tokio::test]
async fn not_found_already_exists_and_conflict_match_the_real_server() {
    let srv = server().await;
    let t = srv.token_for("admin");
    let r = raw(
        &srv,
        "GET",
        "/api/v1/persistentvolumes/nope",
        Some(&t),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), expected("notfound"));

    let pv = pv_json("err-probe", json!({}));
    let ct = Some("application/json");
    let r = raw(
        &srv,
        "POST",
        "/api/v1/persistentvolumes",
        Some(&t),
        ct,
        Some(&pv),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = raw(
        &srv,
        "POST",
        "/api/v1/persistentvolumes",
        Some(&t),
        ct,
        Some(&pv),
    )
    .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json(), expected("already"));

    // make one copy stale, then PUT it
    srv.pause_controller_manager(true);
    let created = raw(
        &srv,
        "GET",
        "/api/v1/persistentvolumes/err-probe",
        Some(&t),
        None,
        None,
    )
    .await
    .json();
    let mut newer = created.clone();
    newer["metadata"]["labels"] = json!({"a": "b"});
    let r = raw(
        &srv,
        "PUT",
        "/api/v1/persistentvolumes/err-probe",
        Some(&t),
        ct,
        Some(&newer),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut stale = created.clone();
    stale["metadata"]["labels"] = json!({"a": "c"});
    let r = raw(
        &srv,
        "PUT",
        "/api/v1/persistentvolumes/err-probe",
        Some(&t),
        ct,
        Some(&stale),
    )
    .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json(), expected("conflict"));
    // the stale write did not land
    let stored = srv.get(Kind::PersistentVolume, "", "err-probe").unwrap();
    assert_eq!(stored["metadata"]["labels"], json!({"a": "b"}));
}

#[tokio::test]
async fn invalid_pv_lists_each_field() {
    let srv = server().await;
    let t = srv.token_for("admin");
    let bad = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "bad"},
                     "spec": {"nfs": {"server": "s", "path": "/p"}}});
    let r = raw(
        &srv,
        "POST",
        "/api/v1/persistentvolumes",
        Some(&t),
        Some("application/json"),
        Some(&bad),
    )
    .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json(), expected("invalid"));
    assert!(srv.get(Kind::PersistentVolume, "", "bad").is_none());
}

#[tokio::test]
async fn anonymous_is_forbidden_under_rbac() {
    let srv = server().await;
    srv.set_rbac(Some(fake_apiserver::RbacPolicy::new()));
    let pv = pv_json("x", json!({}));
    let r = raw(
        &srv,
        "POST",
        "/api/v1/persistentvolumes",
        None,
        Some("application/json"),
        Some(&pv),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json(), expected("forbidden"));
    assert_eq!(srv.denied_requests().len(), 1);
}

#[tokio::test]
async fn new_finalizer_while_deleting_is_invalid() {
    let srv = server().await;
    let t = srv.token_for("admin");
    let ct = Some("application/json");
    let pv = pv_json("fin-probe", json!({}));
    let r = raw(
        &srv,
        "POST",
        "/api/v1/persistentvolumes",
        Some(&t),
        ct,
        Some(&pv),
    )
    .await;
    assert_eq!(r.status, 201);
    // pause the controller manager so pv-protection keeps its finalizer
    srv.pause_controller_manager(true);
    let r = raw(
        &srv,
        "DELETE",
        "/api/v1/persistentvolumes/fin-probe",
        Some(&t),
        ct,
        Some(&json!({})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.json()["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(r.json()["metadata"]["deletionGracePeriodSeconds"], json!(0));
    let patch =
        json!({"metadata": {"finalizers": ["kubernetes.io/pv-protection", "example.com/other"]}});
    let r = raw(
        &srv,
        "PATCH",
        "/api/v1/persistentvolumes/fin-probe",
        Some(&t),
        Some("application/merge-patch+json"),
        Some(&patch),
    )
    .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json(), expected("add-finalizer-while-deleting"));
}

#[tokio::test]
async fn watch_from_compacted_revision_is_200_then_expired() {
    let srv = server_with(Options {
        controller_manager: false,
        ..Options::default()
    })
    .await;
    let t = srv.token_for("admin");
    srv.compact();
    let r = raw(
        &srv,
        "GET",
        "/api/v1/persistentvolumes?watch=true&resourceVersion=1",
        Some(&t),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{}",
        r.headers
    );
    assert_eq!(r.lines(), vec![expected("gone")]);
}

#[tokio::test]
async fn bad_requests() {
    let srv = server().await;
    let t = srv.token_for("admin");
    let ct = Some("application/json");
    let claim = pvc_json("other", "c", "x");
    let r = raw(
        &srv,
        "POST",
        "/api/v1/namespaces/ns1/persistentvolumeclaims",
        Some(&t),
        ct,
        Some(&claim),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["reason"], "BadRequest");
    let noname = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    let r = raw(
        &srv,
        "POST",
        "/api/v1/namespaces/ns1/persistentvolumeclaims",
        Some(&t),
        ct,
        Some(&noname),
    )
    .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["details"]["causes"][0]["field"], "metadata.name");
    let nomodes = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "c"}, "spec": {}});
    let r = raw(
        &srv,
        "POST",
        "/api/v1/namespaces/ns1/persistentvolumeclaims",
        Some(&t),
        ct,
        Some(&nomodes),
    )
    .await;
    assert_eq!(r.status, 422);
    let fields: Vec<String> = r.json()["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(fields, vec!["spec.accessModes", "spec.resources[storage]"]);
    let r = raw(&srv, "GET", "/api/v1/nothing", Some(&t), None, None).await;
    assert_eq!(r.status, 404);
}

/// A fake imitating the trace case's `version`.
async fn server_as(case: &Value) -> fake_apiserver::FakeApiServer {
    let version = match case["version"].as_str().unwrap() {
        "v1.19" => fake_apiserver::KubeVersion::V1_19,
        _ => fake_apiserver::KubeVersion::V1_33,
    };
    server_with(Options {
        kube_version: version,
        ..Options::default()
    })
    .await
}

/// The Event the traces posted: about PV `pv-trace`, named `pv-trace.<ns>`.
fn pv_event(ns: &str) -> Value {
    json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": format!("pv-trace.{ns}"), "namespace": ns},
        "eventTime": "2026-12-02T12:00:00.000000Z",
        "reportingController": "example.com/nfs", "reportingInstance": "example.com/nfs-1",
        "action": "Delete", "reason": "VolumeFailedDelete", "type": "Warning", "note": "trace",
        "regarding": {"apiVersion": "v1", "kind": "PersistentVolume", "name": "pv-trace"}
    })
}

/// The response matches the trace case: status, and for a 422 message and causes.
fn assert_matches_trace(r: &RawResponse, case: &Value) {
    assert_eq!(r.status as u64, case["code"].as_u64().unwrap(), "{case}");
    if r.status == 422 {
        let body = r.json();
        assert_eq!(body["message"], case["message"], "{case}");
        assert_eq!(body["details"]["causes"], case["causes"], "{case}");
    }
}

/// An Event about a PV (cluster-scoped) is accepted or refused per namespace exactly as the
/// real v1.19 and v1.33 servers did (`fixtures/events-cluster-scoped.json`).
#[tokio::test]
async fn events_about_cluster_scoped_objects_follow_each_version() {
    let trace: Value = serde_json::from_str(&fixture("events-cluster-scoped.json")).unwrap();
    for case in trace["results"].as_array().unwrap() {
        let srv = server_as(case).await;
        let t = srv.token_for("admin");
        let ns = case["namespace"].as_str().unwrap();
        let r = raw(
            &srv,
            "POST",
            &format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
            Some(&t),
            Some("application/json"),
            Some(&pv_event(ns)),
        )
        .await;
        assert_matches_trace(&r, case);
    }
}

/// A repeat of an Event may change its series but, on v1.33, not its note.
#[tokio::test]
async fn event_notes_are_immutable_where_the_real_server_says_so() {
    let trace: Value = serde_json::from_str(&fixture("events-cluster-scoped.json")).unwrap();
    for case in trace["note_update"]["results"].as_array().unwrap() {
        let srv = server_as(case).await;
        let t = srv.token_for("admin");
        let path = "/apis/events.k8s.io/v1/namespaces/kube-system/events";
        let ct = Some("application/json");
        let r = raw(
            &srv,
            "POST",
            path,
            Some(&t),
            ct,
            Some(&pv_event("kube-system")),
        )
        .await;
        assert_eq!(r.status, 201);
        let patch = json!({"series": {"count": 2, "lastObservedTime": "2026-12-02T12:00:05.000000Z"}, "note": "changed"});
        let r = raw(
            &srv,
            "PATCH",
            &format!("{path}/pv-trace.kube-system"),
            Some(&t),
            Some("application/merge-patch+json"),
            Some(&patch),
        )
        .await;
        assert_matches_trace(&r, case);
    }
}
