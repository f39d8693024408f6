//! What kubectl reads (discovery, OpenAPI v3, server-side Tables) compared with what the real
//! v1.19 and v1.33 control planes answered for the same requests and objects
//! (`fixtures/v1.*-kubectl.json`, recorded with `fixtures/record-kubectl-trace`).

mod common;

use common::{fixture, get_accepting, server_with};
use fake_apiserver::{FakeApiServer, Kind, KubeVersion, Options};
use serde_json::{Value, json};
use std::time::Duration;

const VERSIONS: [(KubeVersion, &str); 2] = [
    (KubeVersion::V1_19, "v1.19-kubectl.json"),
    (KubeVersion::V1_33, "v1.33-kubectl.json"),
];

fn recorded(file: &str) -> Value {
    serde_json::from_str(&fixture(file)).expect("fixture parses")
}

/// A fake imitating `version` with the recorded objects stored as the real server had them
/// (the binder is off, so nothing moves).
async fn fake_with_recorded_objects(version: KubeVersion, rec: &Value) -> FakeApiServer {
    let fake = server_with(Options {
        kube_version: version,
        controller_manager: false,
        ..Options::default()
    })
    .await;
    for (name, api_version, kind) in [
        ("objects-pvc", "v1", "PersistentVolumeClaim"),
        ("objects-pv", "v1", "PersistentVolume"),
        ("objects-sc", "storage.k8s.io/v1", "StorageClass"),
        ("objects-ns", "v1", "Namespace"),
        ("objects-lease", "coordination.k8s.io/v1", "Lease"),
        ("objects-coreevent", "v1", "Event"),
        ("objects-event", "events.k8s.io/v1", "Event"),
    ] {
        for item in rec["responses"][name]["body"]["items"]
            .as_array()
            .expect("items")
        {
            let mut obj = item.clone();
            obj["apiVersion"] = json!(api_version);
            obj["kind"] = json!(kind);
            fake.put_object(obj).expect("recorded object stores");
        }
    }
    fake
}

fn response<'a>(rec: &'a Value, name: &str) -> &'a Value {
    let r = &rec["responses"][name];
    assert!(r.is_object(), "no recorded response {name}");
    r
}

fn content_type(headers: &str) -> String {
    headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// The fake serves only `v1` of each group; v1.19 also listed `v1beta1` versions.
fn served_versions_only(mut group: Value) -> Value {
    if let Some(versions) = group.get_mut("versions").and_then(Value::as_array_mut) {
        versions.retain(|v| v["version"] == "v1");
    }
    group
}

#[tokio::test]
async fn discovery_matches_what_real_control_planes_serve() {
    for (version, file) in VERSIONS {
        let rec = recorded(file);
        let fake = fake_with_recorded_objects(version, &rec).await;
        let names = [
            "version",
            "api",
            "apis",
            "api-v1",
            "group-storage.k8s.io",
            "gv-storage.k8s.io",
            "group-coordination.k8s.io",
            "gv-coordination.k8s.io",
            "group-events.k8s.io",
            "gv-events.k8s.io",
            "aggregated-api",
            "aggregated-apis",
        ];
        for name in names {
            let want = response(&rec, name);
            let path = want["path"].as_str().unwrap();
            let got = get_accepting(&fake, path, want["accept"].as_str().unwrap()).await;
            let ctx = format!("{file} {name} ({path})");
            assert_eq!(u64::from(got.status), want["code"], "{ctx}");
            assert_eq!(content_type(&got.headers), want["contentType"], "{ctx}");
            let (mut got, mut want) = (got.json(), want["body"].clone());
            match name {
                "version" => {
                    // Same fields, same version, marked as the fake.
                    let keys =
                        |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
                    assert_eq!(keys(&got), keys(&want), "{ctx}");
                    assert_eq!(got["major"], want["major"], "{ctx}");
                    assert_eq!(got["minor"], want["minor"], "{ctx}");
                    assert_eq!(
                        got["gitVersion"],
                        format!("{}+fake-apiserver", want["gitVersion"].as_str().unwrap()),
                        "{ctx}"
                    );
                    continue;
                }
                "api" | "aggregated-api" if got["kind"] == "APIVersions" => {
                    // The address is where the client reached the server.
                    for v in [&mut got, &mut want] {
                        v["serverAddressByClientCIDRs"][0]["serverAddress"] = json!("ADDRESS");
                    }
                }
                "apis" | "aggregated-apis" if got["kind"] == "APIGroupList" => {
                    let groups = want["groups"].as_array().unwrap().clone();
                    want["groups"] = groups.into_iter().map(served_versions_only).collect();
                }
                n if n.starts_with("group-") => want = served_versions_only(want),
                _ => {}
            }
            assert_eq!(got, want, "{ctx}");
        }
    }
}

/// Paths, methods, operation ids, kinds and query parameters of an OpenAPI v3 document, in
/// the recording's compact form.
fn operations(doc: &Value) -> Value {
    let names = |params: Option<&Value>| -> Vec<Value> {
        params
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|p| p["name"].clone()).collect())
            .unwrap_or_default()
    };
    let mut paths = serde_json::Map::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let mut ops = serde_json::Map::new();
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let mut responses: Vec<String> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            responses.sort();
            ops.insert(
                method.clone(),
                json!({
                    "operationId": op["operationId"],
                    "action": op["x-kubernetes-action"],
                    "gvk": op["x-kubernetes-group-version-kind"],
                    "parameters": names(op.get("parameters")),
                    "responses": responses,
                }),
            );
        }
        paths.insert(
            path.clone(),
            json!({"parameters": names(item.get("parameters")), "operations": ops}),
        );
    }
    Value::Object(paths)
}

#[tokio::test]
async fn openapi_v3_lists_the_operations_of_the_real_v1_33() {
    for (version, file) in VERSIONS {
        let rec = recorded(file);
        let fake = fake_with_recorded_objects(version, &rec).await;
        let root = response(&rec, "openapi-root");
        let got = get_accepting(&fake, "/openapi/v3", "application/json").await;
        assert_eq!(u64::from(got.status), root["code"], "{file} /openapi/v3");
        if version == KubeVersion::V1_19 {
            // v1.19 has no OpenAPI v3: kubectl falls back to v2, which the fake does not serve.
            continue;
        }
        assert_eq!(content_type(&got.headers), root["contentType"]);
        let got_root = got.json();
        let mut got_urls = serde_json::Map::new();
        for (gv, entry) in got_root["paths"].as_object().unwrap() {
            let url = entry["serverRelativeURL"].as_str().unwrap();
            let (path, hash) = url.split_once("?hash=").expect("a hash");
            assert!(!hash.is_empty());
            got_urls.insert(gv.clone(), json!({"serverRelativeURL": path}));

            // The document behind the URL: the real server's operations on the fake's
            // resources, except the deprecated /watch/ paths and namespaces/finalize, which
            // the fake does not serve.
            let doc = get_accepting(&fake, url, "application/json").await;
            assert_eq!(doc.status, 200, "{url}");
            let doc = doc.json();
            let want = &response(&rec, &format!("openapi-{gv}"))["body"];
            assert_eq!(doc["openapi"], want["openapi"]);
            assert_eq!(doc["info"], want["info"]);
            let mut want_paths = want["paths"].as_object().unwrap().clone();
            want_paths.retain(|p, _| !p.contains("/watch/") && !p.ends_with("/finalize"));
            assert_eq!(operations(&doc), Value::Object(want_paths), "{gv}");
        }
        assert_eq!(Value::Object(got_urls), root["body"]["paths"]);
    }
}

/// Columns whose cells are ages: they depend on when the table was made.
const AGE_COLUMNS: [&str; 3] = ["Age", "Last Seen", "First Seen"];

fn is_age(cell: &Value) -> bool {
    let s = cell.as_str().unwrap_or("");
    s == "<unknown>"
        || (!s.is_empty()
            && s.split_inclusive(|c: char| c.is_ascii_alphabetic())
                .all(|part| {
                    let (n, unit) = part.split_at(part.len() - 1);
                    n.parse::<u64>().is_ok() && matches!(unit, "s" | "m" | "h" | "d" | "y")
                }))
}

fn assert_same_table(got: &Value, want: &Value, ctx: &str) {
    assert_eq!(got["kind"], "Table", "{ctx}");
    assert_eq!(got["apiVersion"], want["apiVersion"], "{ctx}");
    assert_eq!(got["columnDefinitions"], want["columnDefinitions"], "{ctx}");
    assert!(got["metadata"]["resourceVersion"].is_string(), "{ctx}");
    let columns: Vec<String> = want["columnDefinitions"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    let (got_rows, want_rows) = (
        got["rows"].as_array().unwrap(),
        want["rows"].as_array().unwrap(),
    );
    assert_eq!(got_rows.len(), want_rows.len(), "{ctx}: rows");
    for (g, w) in got_rows.iter().zip(want_rows) {
        let (gc, wc) = (
            g["cells"].as_array().unwrap(),
            w["cells"].as_array().unwrap(),
        );
        assert_eq!(gc.len(), wc.len(), "{ctx}: {g}");
        for (i, (a, b)) in gc.iter().zip(wc).enumerate() {
            let column = columns.get(i).map(String::as_str).unwrap_or("");
            if AGE_COLUMNS.contains(&column) {
                assert!(is_age(a) && is_age(b), "{ctx}: {column} {a} vs {b}");
                assert_eq!(a == "<unknown>", b == "<unknown>", "{ctx}: {column}");
            } else {
                assert_eq!(a, b, "{ctx}: column {column} of {}", w["cells"]);
            }
        }
        // The row names its object: PartialObjectMetadata with the object's metadata.
        assert_eq!(g["object"]["kind"], w["object"]["kind"], "{ctx}");
        assert_eq!(
            g["object"]["apiVersion"], w["object"]["apiVersion"],
            "{ctx}"
        );
        let strip = |m: &Value| {
            let mut m = m.clone();
            m.as_object_mut().unwrap().remove("resourceVersion");
            m.as_object_mut().unwrap().remove("selfLink");
            m
        };
        assert_eq!(
            strip(&g["object"]["metadata"]),
            strip(&w["object"]["metadata"]),
            "{ctx}"
        );
    }
}

#[tokio::test]
async fn kubectl_get_tables_match_what_real_control_planes_print() {
    for (version, file) in VERSIONS {
        let rec = recorded(file);
        let fake = fake_with_recorded_objects(version, &rec).await;
        for name in [
            "table-pvc",
            "table-pvc-one",
            "table-pv",
            "table-sc",
            "table-ns",
            "table-lease",
            "table-coreevent",
            "table-event",
        ] {
            let want = response(&rec, name);
            let path = want["path"].as_str().unwrap();
            let got = get_accepting(&fake, path, want["accept"].as_str().unwrap()).await;
            let ctx = format!("{file} {name} ({path})");
            assert_eq!(got.status, 200, "{ctx}: {}", got.body);
            assert_same_table(&got.json(), &want["body"], &ctx);
        }
        // Without the Table media type the answer stays a plain list.
        let plain = get_accepting(&fake, "/api/v1/persistentvolumes", "application/json").await;
        assert_eq!(plain.json()["kind"], "PersistentVolumeList");
    }
}

#[tokio::test]
async fn kubectl_get_watch_gets_one_row_tables_with_columns_once() {
    for (version, file) in VERSIONS {
        let rec = recorded(file);
        let fake = fake_with_recorded_objects(version, &rec).await;
        let want = response(&rec, "watch-pv");
        let path = want["path"]
            .as_str()
            .unwrap()
            .replace("timeoutSeconds=3", "timeoutSeconds=1");
        let accept = want["accept"].as_str().unwrap().to_string();
        let touch = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            fake.modify_object(Kind::PersistentVolume, "", "trace-bound", |pv| {
                pv["metadata"]["annotations"] = json!({"example.com/touched": "yes"});
            });
        };
        let (got, ()) = tokio::join!(get_accepting(&fake, &path, &accept), touch);
        let got = got.lines();
        let want = want["body"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{file}: {got:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g["type"], w["type"], "{file}");
            assert_eq!(
                g["object"]["columnDefinitions"].is_null(),
                w["object"]["columnDefinitions"].is_null(),
                "{file}: column definitions in the first event only"
            );
            let mut w_obj = w["object"].clone();
            if w_obj["columnDefinitions"].is_null() {
                // compare the cells against the first event's columns
                w_obj["columnDefinitions"] = want[0]["object"]["columnDefinitions"].clone();
            }
            let mut g_obj = g["object"].clone();
            if g_obj["columnDefinitions"].is_null() {
                g_obj["columnDefinitions"] = got[0]["object"]["columnDefinitions"].clone();
            }
            // The recording touched the PV with `kubectl annotate`, the test directly (and
            // the fake keeps no managedFields).
            for o in [&mut g_obj, &mut w_obj] {
                let md = o["rows"][0]["object"]["metadata"].as_object_mut().unwrap();
                md.remove("annotations");
                md.remove("managedFields");
            }
            assert_same_table(&g_obj, &w_obj, file);
        }
    }
}
