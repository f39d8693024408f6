//! Reading Kubernetes objects from YAML and checking them against k8s-openapi's types, shared
//! by the manifest tests (`deploy/`, `rbac/`) and the chart tests (rendered templates).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::storage::v1::StorageClass;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Kinds of the Prometheus Operator's CRDs: no k8s-openapi type, checked field by field by
/// the observability tests instead.
pub const OPERATOR_KINDS: &[&str] = &["ServiceMonitor", "PrometheusRule"];

pub fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The YAML documents of `text`, empty ones (a trailing `---`) left out.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(de).map_err(|e| format!("document {index}: {e}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Drops `null` values (absent and null mean the same to the API server).
pub fn normalise(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalise(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalise).collect()),
        other => other.clone(),
    }
}

/// Paths at which `written` and `typed` differ.
pub fn differences(path: &str, written: &Value, typed: &Value, out: &mut Vec<String>) {
    match (written, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(w) => differences(&p, v, w, out),
                    None => out.push(format!(
                        "{p}: not a field of the typed object (misspelled or misplaced?)"
                    )),
                }
            }
            // Embedded resources (volumeClaimTemplates) serialise their apiVersion and kind
            // even when the manifest leaves them out; anything else added is reported.
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                if !(path.contains('.') && (k == "apiVersion" || k == "kind")) {
                    out.push(format!("{path}.{k}: added by the typed object"));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                differences(&format!("{path}[{i}]"), v, w, out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: written {a}, reads back as {b}")),
    }
}

/// Parses `value` as a `T` and serialises it back: k8s-openapi ignores unknown fields, so a
/// misspelled or misplaced field shows up as a difference.
pub fn round_trip<T: DeserializeOwned + serde::Serialize>(value: &Value) -> Vec<String> {
    let typed: T = match serde_json::from_value(value.clone()) {
        Ok(t) => t,
        Err(e) => return vec![format!("not a valid {}: {e}", value["kind"])],
    };
    let back = serde_json::to_value(&typed).expect("typed object serialises");
    let mut out = Vec::new();
    differences("", &normalise(value), &normalise(&back), &mut out);
    out
}

/// [`round_trip`] with the type chosen by the object's kind; a kind no test knows is a
/// difference too.
pub fn typed_round_trip(value: &Value) -> Vec<String> {
    match value["kind"].as_str().unwrap_or("") {
        "Deployment" => round_trip::<Deployment>(value),
        "StatefulSet" => round_trip::<StatefulSet>(value),
        "ServiceAccount" => round_trip::<ServiceAccount>(value),
        "ClusterRole" => round_trip::<ClusterRole>(value),
        "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(value),
        "Role" => round_trip::<Role>(value),
        "RoleBinding" => round_trip::<RoleBinding>(value),
        "StorageClass" => round_trip::<StorageClass>(value),
        "PersistentVolume" => round_trip::<PersistentVolume>(value),
        "PersistentVolumeClaim" => round_trip::<PersistentVolumeClaim>(value),
        "Pod" => round_trip::<Pod>(value),
        "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(value),
        "Namespace" => round_trip::<Namespace>(value),
        "Service" => round_trip::<Service>(value),
        "ConfigMap" => round_trip::<ConfigMap>(value),
        kind if OPERATOR_KINDS.contains(&kind) => Vec::new(),
        other => vec![format!("kind {other:?} is not checked by this test")],
    }
}

pub fn typed<T: DeserializeOwned>(value: &Value) -> T {
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("not a valid {}: {e}", value["kind"]))
}

/// A tool found by its environment variable (`HELM`, `KUBECTL`), in `target/tools/bin`
/// (scripts/install-tools) or on `PATH`.
pub fn tool(name: &str) -> Option<PathBuf> {
    let variable = name.to_uppercase();
    if let Some(path) = std::env::var_os(&variable).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let installed = repository_root().join("target/tools/bin").join(name);
    if installed.is_file() {
        return Some(installed);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Runs `program args` and returns its standard output, panicking with its error output.
pub fn output_of(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(repository_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {} failed: {}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `kubectl kustomize DIR` (the kustomize built into kubectl): the objects an overlay installs.
pub fn kustomize(kubectl: &Path, dir: &str) -> Vec<Value> {
    let text = output_of(kubectl, &["kustomize", dir]);
    parse_documents(&text).unwrap_or_else(|e| panic!("kubectl kustomize {dir}: {e}"))
}

pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The one object of `kind` in `docs`.
pub fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

/// Where `spec` breaks the PodSecurity `restricted` level (Kubernetes 1.25+ rules), as far as
/// the fields this project sets go. The real check is the API server's admission
/// (tests/e2e/real_cluster.rs); this one fails fast and names the field.
pub fn restricted_violations(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<String> {
    const VOLUME_TYPES: &[&str] = &[
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    let mut out = Vec::new();
    for volume in spec.volumes.as_deref().unwrap_or_default() {
        let fields = serde_json::to_value(volume).expect("volume serialises");
        for key in fields.as_object().expect("object").keys() {
            if key != "name" && !VOLUME_TYPES.contains(&key.as_str()) {
                out.push(format!("volume {}: type {key} is not allowed", volume.name));
            }
        }
    }
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true)
    {
        out.push("host namespaces".into());
    }
    let pod = spec.security_context.clone().unwrap_or_default();
    if pod.run_as_user == Some(0) {
        out.push("pod runAsUser 0".into());
    }
    let seccomp_ok = |p: &Option<k8s_openapi::api::core::v1::SeccompProfile>| {
        p.as_ref()
            .map(|p| p.type_ == "RuntimeDefault" || p.type_ == "Localhost")
    };
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let sc = c.security_context.clone().unwrap_or_default();
        let name = &c.name;
        if sc.privileged == Some(true) {
            out.push(format!("{name}: privileged"));
        }
        if sc.allow_privilege_escalation != Some(false) {
            out.push(format!("{name}: allowPrivilegeEscalation must be false"));
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            out.push(format!("{name}: capabilities must drop ALL"));
        }
        for add in caps.add.iter().flatten() {
            if add != "NET_BIND_SERVICE" {
                out.push(format!("{name}: adds capability {add}"));
            }
        }
        let non_root = sc.run_as_non_root.or(pod.run_as_non_root);
        if non_root != Some(true) {
            out.push(format!("{name}: runAsNonRoot must be true"));
        }
        if sc.run_as_user == Some(0) {
            out.push(format!("{name}: runAsUser 0"));
        }
        match seccomp_ok(&sc.seccomp_profile).or(seccomp_ok(&pod.seccomp_profile)) {
            Some(true) => {}
            _ => out.push(format!("{name}: seccompProfile must be RuntimeDefault")),
        }
        for port in c.ports.iter().flatten() {
            if port.host_port.is_some_and(|p| p != 0) {
                out.push(format!("{name}: hostPort"));
            }
        }
    }
    out
}
