//! Expansion of a bound claim: the fake answers the external resizer's writes, and the
//! refusals, as the real control planes did (tests/fixtures/v1.19-expansion.json and
//! v1.33-expansion.json, recorded with record-expansion.py beside them). The same steps run
//! against the fake and each step's answer is compared with the recorded one.

mod common;

use std::collections::BTreeMap;

use common::*;
use fake_apiserver::{FakeApiServer, KubeVersion, Options};
use serde_json::{Value, json};

const NS: &str = "rec-exp";
const PROVISIONER: &str = "example.com/record";
const MERGE: &str = "application/merge-patch+json";

struct Replay<'a> {
    srv: &'a FakeApiServer,
    token: String,
    results: BTreeMap<String, (u16, Value)>,
}

impl Replay<'_> {
    async fn call(&self, method: &str, path: &str, body: Option<Value>, ct: &str) -> (u16, Value) {
        let r = raw(
            self.srv,
            method,
            path,
            Some(&self.token),
            body.as_ref().map(|_| ct),
            body.as_ref(),
        )
        .await;
        (r.status, r.json())
    }

    async fn step(&mut self, name: &str, method: &str, path: &str, body: Option<Value>, ct: &str) {
        let result = self.call(method, path, body, ct).await;
        self.results.insert(name.to_string(), result);
    }

    async fn claim(&self, name: &str) -> Value {
        self.call(
            "GET",
            &format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/{name}"),
            None,
            "",
        )
        .await
        .1
    }

    async fn wait_claim(&self, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let c = self.claim(name).await;
            if ok(&c) {
                return c;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: {c}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Creates the claim, waits for the hand-over, creates its PV, waits for Bound.
    async fn provision(&self, name: &str, class: &str) -> String {
        let path = format!("/api/v1/namespaces/{NS}/persistentvolumeclaims");
        self.call(
            "POST",
            &path,
            Some(pvc_json(NS, name, class)),
            "application/json",
        )
        .await;
        let c = self
            .wait_claim(name, "hand-over", |c| {
                c["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-provisioner"]
                    .is_string()
            })
            .await;
        let uid = c["metadata"]["uid"].as_str().unwrap().to_string();
        let pv = format!("pvc-{uid}");
        let mut body = pv_json(
            &pv,
            json!({"storageClassName": class,
                   "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                                "namespace": NS, "name": name, "uid": uid}}),
        );
        body["metadata"]["annotations"] = json!({"pv.kubernetes.io/provisioned-by": PROVISIONER});
        self.call(
            "POST",
            "/api/v1/persistentvolumes",
            Some(body),
            "application/json",
        )
        .await;
        self.wait_claim(name, "Bound", |c| c["status"]["phase"] == "Bound")
            .await;
        pv
    }
}

fn resize(size: &str) -> Option<Value> {
    Some(json!({"spec": {"resources": {"requests": {"storage": size}}}}))
}

fn rv(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn replay(version: KubeVersion) -> BTreeMap<String, (u16, Value)> {
    let srv = FakeApiServer::start(Options {
        kube_version: version,
        ..Options::default()
    })
    .await
    .unwrap();
    let mut r = Replay {
        srv: &srv,
        token: srv.token_for("admin"),
        results: BTreeMap::new(),
    };
    for (class, allow) in [("rec-exp-yes", Some(true)), ("rec-exp-no", None)] {
        let mut body = class_json(class, PROVISIONER, "Immediate");
        if let Some(allow) = allow {
            body["allowVolumeExpansion"] = json!(allow);
        }
        r.call(
            "POST",
            "/apis/storage.k8s.io/v1/storageclasses",
            Some(body),
            "application/json",
        )
        .await;
    }
    let claims = format!("/api/v1/namespaces/{NS}/persistentvolumeclaims");
    let pv = r.provision("data", "rec-exp-yes").await;
    let data = format!("{claims}/data");
    let status = format!("{data}/status");
    let now = "2026-12-02T00:00:00Z";
    r.step(
        "ask for more: spec.resources.requests.storage 1Gi -> 2Gi",
        "PATCH",
        &data,
        resize("2Gi"),
        MERGE,
    )
    .await;
    r.step("claim after kcm saw the request", "GET", &data, None, "")
        .await;
    let current = rv(&r.claim("data").await);
    let stale = (current.parse::<u64>().unwrap() - 1).to_string();
    r.step(
        "status patch with a stale resourceVersion",
        "PATCH",
        &status,
        Some(json!({"metadata": {"resourceVersion": stale}, "status": {"conditions": []}})),
        MERGE,
    )
    .await;
    r.step(
        "resizer marks the claim Resizing (status subresource, merge patch with resourceVersion)",
        "PATCH",
        &status,
        Some(json!({"metadata": {"resourceVersion": current},
                    "status": {"conditions": [{"type": "Resizing", "status": "True", "lastTransitionTime": now}],
                               "allocatedResources": {"storage": "2Gi"},
                               "allocatedResourceStatuses": {"storage": "ControllerResizeInProgress"}}})),
        MERGE,
    )
    .await;
    let pv_path = format!("/api/v1/persistentvolumes/{pv}");
    let pv_rv = rv(&r.call("GET", &pv_path, None, "").await.1);
    r.step(
        "resizer grows the PV: spec.capacity.storage 2Gi (merge patch with resourceVersion)",
        "PATCH",
        &pv_path,
        Some(json!({"metadata": {"resourceVersion": pv_rv}, "spec": {"capacity": {"storage": "2Gi"}}})),
        MERGE,
    )
    .await;
    r.step("claim after the PV grew", "GET", &data, None, "")
        .await;
    let current = rv(&r.claim("data").await);
    r.step(
        "resizer finishes the claim: status.capacity 2Gi, conditions cleared, allocatedResourceStatuses removed",
        "PATCH",
        &status,
        Some(json!({"metadata": {"resourceVersion": current},
                    "status": {"capacity": {"storage": "2Gi"}, "conditions": null, "allocatedResourceStatuses": null}})),
        MERGE,
    )
    .await;
    r.step("claim after the resize finished", "GET", &data, None, "")
        .await;
    r.step(
        "shrink below status.capacity: 2Gi -> 1Gi",
        "PATCH",
        &data,
        resize("1Gi"),
        MERGE,
    )
    .await;
    r.step("ask for 4Gi", "PATCH", &data, resize("4Gi"), MERGE)
        .await;
    r.step(
        "lower a pending request to 3Gi (still above status.capacity)",
        "PATCH",
        &data,
        resize("3Gi"),
        MERGE,
    )
    .await;
    r.step("claim with the lowered request", "GET", &data, None, "")
        .await;

    let fixed_pv = r.provision("fixed", "rec-exp-no").await;
    r.step(
        "ask for more on a class without allowVolumeExpansion",
        "PATCH",
        &format!("{claims}/fixed"),
        resize("2Gi"),
        MERGE,
    )
    .await;

    let static_pv = pv_json(
        "rec-static",
        json!({"storageClassName": "rec-exp-yes",
               "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": NS, "name": "static"}}),
    );
    r.call(
        "POST",
        "/api/v1/persistentvolumes",
        Some(static_pv),
        "application/json",
    )
    .await;
    r.call(
        "POST",
        &claims,
        Some(pvc_json(NS, "static", "rec-exp-yes")),
        "application/json",
    )
    .await;
    r.wait_claim("static", "static claim Bound", |c| {
        c["status"]["phase"] == "Bound"
    })
    .await;
    let static_path = format!("{claims}/static");
    r.step(
        "ask for more on a claim bound to a PV no provisioner made",
        "PATCH",
        &static_path,
        resize("2Gi"),
        MERGE,
    )
    .await;
    r.step(
        "static claim after kcm saw the request",
        "GET",
        &static_path,
        None,
        "",
    )
    .await;
    r.step(
        "PV status patch (status subresource) with a spec change",
        "PATCH",
        &format!("/api/v1/persistentvolumes/{fixed_pv}/status"),
        Some(json!({"spec": {"capacity": {"storage": "9Gi"}}})),
        MERGE,
    )
    .await;
    r.results
}

/// What must match between the real answer and the fake's: the code, and for an error its
/// reason and message; for an object, the storage request, the PV's capacity and the claim's
/// status (time stamps blanked).
fn essence(code: u16, body: &Value) -> Value {
    if code >= 400 {
        return json!({"code": code, "reason": body["reason"], "message": body["message"]});
    }
    let mut status = body["status"].clone();
    if let Some(conditions) = status["conditions"].as_array_mut() {
        for c in conditions {
            c["lastTransitionTime"] = json!("T");
            if let Some(m) = c.as_object_mut() {
                m.remove("lastProbeTime");
            }
        }
    }
    if let Some(m) = status.as_object_mut() {
        m.remove("lastPhaseTransitionTime");
    }
    json!({
        "code": code,
        "request": body["spec"]["resources"]["requests"]["storage"],
        "capacity": body["spec"]["capacity"],
        "status": status,
    })
}

async fn compare(version: KubeVersion, fixture_name: &str) {
    let recorded: Value = serde_json::from_str(&fixture(fixture_name)).unwrap();
    let replayed = replay(version).await;
    let mut compared = 0;
    for step in recorded["steps"].as_array().unwrap() {
        let name = step["step"].as_str().unwrap();
        if step.get("code").is_none_or(Value::is_null) {
            continue; // `kubectl get pvc` output, shown in the README
        }
        let (code, body) = replayed
            .get(name)
            .unwrap_or_else(|| panic!("step {name:?} was not replayed"));
        let want = essence(step["code"].as_u64().unwrap() as u16, &step["response"]);
        assert_eq!(
            essence(*code, body),
            want,
            "{fixture_name}: step {name:?} answered differently"
        );
        compared += 1;
    }
    assert_eq!(compared, replayed.len(), "every replayed step was recorded");
}

#[tokio::test]
async fn v1_19_answers_the_resizer_as_recorded() {
    compare(KubeVersion::V1_19, "v1.19-expansion.json").await;
}

#[tokio::test]
async fn v1_33_answers_the_resizer_as_recorded() {
    compare(KubeVersion::V1_33, "v1.33-expansion.json").await;
}

/// The controller-manager stand-in writes nothing to a claim that asks for more: the real one
/// only records an `ExternalExpanding` Event (not modelled) and waits for an external resizer.
#[tokio::test]
async fn the_controller_manager_leaves_a_resize_to_an_external_resizer() {
    let recorded: Value = serde_json::from_str(&fixture("v1.33-expansion.json")).unwrap();
    let reasons: Vec<&str> = recorded["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["object"]["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"ExternalExpanding"), "{reasons:?}");
    let replayed = replay(KubeVersion::V1_33).await;
    let after = &replayed["claim after kcm saw the request"].1;
    assert_eq!(after["status"]["capacity"]["storage"], "1Gi");
    assert!(after["status"].get("conditions").is_none());
}
