//! What kubectl reads before it touches a resource: `/version`, API discovery (legacy, and
//! aggregated on v1.33) and the OpenAPI v3 operations (v1.33; v1.19 has no `/openapi/v3`).
//! Every document lists only what the fake serves, shaped as the real control planes answer
//! (`tests/fixtures/v1.*-kubectl.json`, compared in `tests/kubectl_trace.rs`).

use serde_json::{Map, Value, json};

use crate::resource::Kind;
use crate::store::KubeVersion;

/// A non-resource answer: status, content type, body.
pub(crate) struct Document {
    pub code: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

const JSON: &str = "application/json";
const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// API groups in the order the real servers list them (by group priority).
const GROUPS: [&str; 3] = ["events.k8s.io", "storage.k8s.io", "coordination.k8s.io"];

/// The document for a GET of `path`, or `None` when `path` is not a non-resource path the
/// fake knows (the caller then routes it as a resource path).
pub(crate) fn document(
    version: KubeVersion,
    path: &str,
    accept: Option<&str>,
    host: &str,
) -> Option<Document> {
    let path = path.trim_end_matches('/');
    let aggregated = version == KubeVersion::V1_33 && accepts_aggregated(accept);
    let doc = match path {
        "/version" => ok(version_info(version)),
        "/api" if aggregated => aggregated_doc(vec![aggregated_group("")]),
        "/api" => ok(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
        })),
        "/apis" if aggregated => {
            aggregated_doc(GROUPS.iter().map(|g| aggregated_group(g)).collect())
        }
        "/apis" => ok(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": GROUPS.iter().map(|g| api_group(g)).collect::<Vec<_>>(),
        })),
        "/api/v1" => ok(json!({
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": resource_list(version, ""),
        })),
        "/openapi/v3" if version == KubeVersion::V1_33 => openapi_root(),
        _ => {
            if let Some(gv) = path.strip_prefix("/openapi/v3/") {
                if version != KubeVersion::V1_33 {
                    return None;
                }
                return openapi_group_version(gv).map(|v| Document {
                    code: 200,
                    content_type: JSON,
                    body: serde_json::to_vec(&v).unwrap_or_default(),
                });
            }
            let rest = path.strip_prefix("/apis/")?;
            let (group, gv) = match rest.split_once('/') {
                Some((g, "v1")) => (g, true),
                Some(_) => return None,
                None => (rest, false),
            };
            if !GROUPS.contains(&group) {
                return None;
            }
            if gv {
                ok(json!({
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": format!("{group}/v1"),
                    "resources": resource_list(version, group),
                }))
            } else {
                let mut g = api_group(group);
                let m = g.as_object_mut().expect("object");
                m.insert("kind".into(), json!("APIGroup"));
                m.insert("apiVersion".into(), json!("v1"));
                ok(g)
            }
        }
    };
    Some(doc)
}

fn ok(v: Value) -> Document {
    Document {
        code: 200,
        content_type: JSON,
        body: serde_json::to_vec(&v).unwrap_or_default(),
    }
}

/// kubectl asks for `application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`
/// first and takes the legacy documents when the answer is plain JSON.
fn accepts_aggregated(accept: Option<&str>) -> bool {
    accept.unwrap_or("").split(',').any(|range| {
        let params: Vec<&str> = range.split(';').map(str::trim).collect();
        params.contains(&"as=APIGroupDiscoveryList")
            && params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"v=v2")
    })
}

fn version_info(version: KubeVersion) -> Value {
    // The version imitated, marked as the fake in the build metadata (`+fake-apiserver`), as
    // distributions mark theirs (`v1.33.3+k3s1`).
    match version {
        KubeVersion::V1_19 => json!({
            "major": "1", "minor": "19", "gitVersion": "v1.19.0+fake-apiserver",
            "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "",
            "compiler": "", "platform": "linux/amd64",
        }),
        KubeVersion::V1_33 => json!({
            "major": "1", "minor": "33",
            "emulationMajor": "1", "emulationMinor": "33",
            "minCompatibilityMajor": "1", "minCompatibilityMinor": "32",
            "gitVersion": "v1.33.3+fake-apiserver",
            "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "",
            "compiler": "", "platform": "linux/amd64",
        }),
    }
}

fn kinds_of(group: &str) -> Vec<Kind> {
    let mut kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| k.group() == group)
        .collect();
    kinds.sort_by_key(|k| k.resource());
    kinds
}

fn api_group(group: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `storageVersionHash` of each resource, as the real servers report it.
fn storage_version_hash(version: KubeVersion, kind: Kind) -> &'static str {
    match kind {
        Kind::PersistentVolumeClaim => "QWTyNDq0dC4=",
        Kind::PersistentVolume => "HN/zwEC+JgM=",
        Kind::CoreEvent | Kind::Event => "r2yiGXH7wu8=",
        Kind::Namespace => "Q3oi5N2YM8M=",
        Kind::StorageClass => "K+m6uJwbjGY=",
        Kind::Lease => match version {
            KubeVersion::V1_19 => "/sY7hl8ol1U=",
            KubeVersion::V1_33 => "gqkMMb/YqFM=",
        },
    }
}

const STATUS_VERBS: [&str; 3] = ["get", "patch", "update"];

/// The legacy `APIResourceList` entries of a group (`""`: core), subresources included.
fn resource_list(version: KubeVersion, group: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for kind in kinds_of(group) {
        let singular = match version {
            KubeVersion::V1_19 => "",
            KubeVersion::V1_33 => kind.singular(),
        };
        let mut r = json!({
            "name": kind.resource(),
            "singularName": singular,
            "namespaced": kind.namespaced(),
            "kind": kind.kind(),
            "verbs": kind.verbs(),
            "storageVersionHash": storage_version_hash(version, kind),
        });
        if !kind.short_names().is_empty() {
            r["shortNames"] = json!(kind.short_names());
        }
        out.push(r);
        if kind.has_status() {
            out.push(json!({
                "name": format!("{}/status", kind.resource()),
                "singularName": "",
                "namespaced": kind.namespaced(),
                "kind": kind.kind(),
                "verbs": STATUS_VERBS,
            }));
        }
    }
    out
}

fn aggregated_doc(items: Vec<Value>) -> Document {
    let v = json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    });
    Document {
        code: 200,
        content_type: AGGREGATED,
        body: serde_json::to_vec(&v).unwrap_or_default(),
    }
}

/// One `APIGroupDiscovery` item of the aggregated documents.
fn aggregated_group(group: &str) -> Value {
    let response_kind = |k: Kind| json!({"group": "", "version": "", "kind": k.kind()});
    let resources: Vec<Value> = kinds_of(group)
        .into_iter()
        .map(|kind| {
            let mut r = json!({
                "resource": kind.resource(),
                "responseKind": response_kind(kind),
                "scope": if kind.namespaced() { "Namespaced" } else { "Cluster" },
                "singularResource": kind.singular(),
                "verbs": kind.verbs(),
            });
            if !kind.short_names().is_empty() {
                r["shortNames"] = json!(kind.short_names());
            }
            if kind.has_status() {
                r["subresources"] = json!([{
                    "subresource": "status",
                    "responseKind": response_kind(kind),
                    "verbs": STATUS_VERBS,
                }]);
            }
            r
        })
        .collect();
    let mut metadata = json!({"creationTimestamp": null});
    if !group.is_empty() {
        metadata["name"] = json!(group);
    }
    json!({
        "metadata": metadata,
        "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}],
    })
}

// ---- OpenAPI v3 -------------------------------------------------------------------------

/// The group-versions the fake describes, as `/openapi/v3` names them.
const OPENAPI_GROUP_VERSIONS: [(&str, &str); 4] = [
    ("api/v1", ""),
    ("apis/coordination.k8s.io/v1", "coordination.k8s.io"),
    ("apis/events.k8s.io/v1", "events.k8s.io"),
    ("apis/storage.k8s.io/v1", "storage.k8s.io"),
];

fn openapi_root() -> Document {
    let mut paths = Map::new();
    for (gv, group) in OPENAPI_GROUP_VERSIONS {
        // The hash makes clients' caches (kubectl keeps them on disk) follow a changed
        // document; the real server uses SHA-512 of the document, any digest of it will do.
        let body = serde_json::to_vec(&group_version_doc(group)).unwrap_or_default();
        paths.insert(
            gv.to_string(),
            json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={:016X}", fnv1a(&body))}),
        );
    }
    Document {
        code: 200,
        // what the real server answers, odd as it is
        content_type: "text/plain; charset=utf-8",
        body: serde_json::to_vec(&json!({"paths": paths})).unwrap_or_default(),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn openapi_group_version(gv: &str) -> Option<Value> {
    OPENAPI_GROUP_VERSIONS
        .iter()
        .find(|(name, _)| *name == gv)
        .map(|(_, group)| group_version_doc(group))
}

const LIST_PARAMS: [&str; 10] = [
    "allowWatchBookmarks",
    "continue",
    "fieldSelector",
    "labelSelector",
    "limit",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
    "timeoutSeconds",
    "watch",
];
const WRITE_PARAMS: [&str; 3] = ["dryRun", "fieldManager", "fieldValidation"];
const PATCH_PARAMS: [&str; 4] = ["dryRun", "fieldManager", "fieldValidation", "force"];
const DELETE_PARAMS: [&str; 5] = [
    "dryRun",
    "gracePeriodSeconds",
    "ignoreStoreReadErrorWithClusterBreakingPotential",
    "orphanDependents",
    "propagationPolicy",
];
const DELETE_COLLECTION_PARAMS: [&str; 13] = [
    "continue",
    "dryRun",
    "fieldSelector",
    "gracePeriodSeconds",
    "ignoreStoreReadErrorWithClusterBreakingPotential",
    "labelSelector",
    "limit",
    "orphanDependents",
    "propagationPolicy",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
    "timeoutSeconds",
];

/// `CoreV1`, `StorageV1`, ...: the group part of operation ids.
fn operation_group(group: &str) -> &'static str {
    match group {
        "" => "CoreV1",
        "storage.k8s.io" => "StorageV1",
        "coordination.k8s.io" => "CoordinationV1",
        _ => "EventsV1",
    }
}

/// The operations (paths, verbs, query parameters, kinds) of one group-version: enough for
/// kubectl to find that the server checks fields itself (`fieldValidation`) and which kind
/// a path serves. No schemas: the fake validates what it models and nothing more.
fn group_version_doc(group: &str) -> Value {
    let prefix = if group.is_empty() {
        "/api/v1".to_string()
    } else {
        format!("/apis/{group}/v1")
    };
    let mut paths = Map::new();
    for kind in kinds_of(group) {
        let g = operation_group(group);
        let k = kind.kind();
        let gvk = json!({"group": group, "version": "v1", "kind": k});
        let op = |id: String, action: &str, params: &[&str], codes: &[&str]| {
            let responses: Map<String, Value> = codes
                .iter()
                .map(|c| {
                    let description = match *c {
                        "200" => "OK",
                        "201" => "Created",
                        "202" => "Accepted",
                        _ => "Unauthorized",
                    };
                    (c.to_string(), json!({"description": description}))
                })
                .collect();
            let mut o = json!({
                "operationId": id,
                "responses": responses,
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            });
            if !params.is_empty() {
                o["parameters"] = json!(params.iter().map(|p| query(p)).collect::<Vec<_>>());
            }
            o
        };
        let (scope, base) = if kind.namespaced() {
            ("Namespaced", format!("{prefix}/namespaces/{{namespace}}"))
        } else {
            ("", prefix.clone())
        };
        let item_params = |extra: &[&str]| {
            let mut p: Vec<Value> = vec![path_param("name")];
            if kind.namespaced() {
                p.push(path_param("namespace"));
            }
            p.push(query("pretty"));
            p.extend(extra.iter().map(|e| query(e)));
            Value::Array(p)
        };
        // collection
        let mut collection = json!({
            "parameters": if kind.namespaced() {
                json!([path_param("namespace"), query("pretty")])
            } else {
                json!([query("pretty")])
            },
            "get": op(format!("list{g}{scope}{k}"), "list", &LIST_PARAMS, &["200", "401"]),
            "post": op(format!("create{g}{scope}{k}"), "post", &WRITE_PARAMS, &["200", "201", "202", "401"]),
        });
        if kind.verbs().contains(&"deletecollection") {
            collection["delete"] = op(
                format!("delete{g}Collection{scope}{k}"),
                "deletecollection",
                &DELETE_COLLECTION_PARAMS,
                &["200", "401"],
            );
        }
        paths.insert(format!("{base}/{}", kind.resource()), collection);
        // one object
        paths.insert(
            format!("{base}/{}/{{name}}", kind.resource()),
            json!({
                "parameters": item_params(&[]),
                "get": op(format!("read{g}{scope}{k}"), "get", &[], &["200", "401"]),
                "put": op(format!("replace{g}{scope}{k}"), "put", &WRITE_PARAMS, &["200", "201", "401"]),
                "delete": op(format!("delete{g}{scope}{k}"), "delete", &DELETE_PARAMS, &["200", "202", "401"]),
                "patch": op(format!("patch{g}{scope}{k}"), "patch", &PATCH_PARAMS, &["200", "201", "401"]),
            }),
        );
        if kind.has_status() {
            paths.insert(
                format!("{base}/{}/{{name}}/status", kind.resource()),
                json!({
                    "parameters": item_params(&[]),
                    "get": op(format!("read{g}{scope}{k}Status"), "get", &[], &["200", "401"]),
                    "put": op(format!("replace{g}{scope}{k}Status"), "put", &WRITE_PARAMS, &["200", "201", "401"]),
                    "patch": op(format!("patch{g}{scope}{k}Status"), "patch", &PATCH_PARAMS, &["200", "201", "401"]),
                }),
            );
        }
        if kind.namespaced() {
            let mut params: Vec<Value> = LIST_PARAMS.iter().map(|p| query(p)).collect();
            params.insert(5, query("pretty"));
            paths.insert(
                format!("{prefix}/{}", kind.resource()),
                json!({
                    "parameters": params,
                    "get": op(format!("list{g}{k}ForAllNamespaces"), "list", &[], &["200", "401"]),
                }),
            );
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "1.33"},
        "paths": paths,
    })
}

fn query(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}})
}
