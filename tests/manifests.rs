//! Checks of the deployment manifests under `deploy/` and `rbac/`.
//!
//! * Every YAML document parses into its typed k8s-openapi struct, and serialising that struct
//!   gives back the same document: k8s-openapi ignores unknown fields, so a misspelled or
//!   misplaced field shows up as a difference.
//! * The Deployment only sets environment variables the binary reads, mounts the export where
//!   the binary expects it, probes the admin endpoint and keeps the hardened security context.
//! * The RBAC rules are exactly the API calls the binary makes: one permission more or less
//!   fails here.
//! * StorageClasses, the PodDisruptionBudget and the bindings agree with the Deployment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, Namespace, PersistentVolumeClaim, Pod, PodSpec, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use nfs_provisioner::config::{Cli, parse_duration};

/// The API calls the binary makes, cluster-wide: (apiGroup, resource, verb).
const CLUSTER_PERMISSIONS: &[(&str, &str, &str)] = &[
    ("", "persistentvolumes", "list"),
    ("", "persistentvolumes", "watch"),
    ("", "persistentvolumes", "create"),
    ("", "persistentvolumes", "delete"),
    ("", "persistentvolumes", "patch"),
    ("", "persistentvolumeclaims", "list"),
    ("", "persistentvolumeclaims", "watch"),
    ("", "persistentvolumeclaims/status", "patch"),
    ("storage.k8s.io", "storageclasses", "list"),
    ("storage.k8s.io", "storageclasses", "watch"),
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
];

/// The API calls the binary makes in its own namespace (leader election).
const NAMESPACE_PERMISSIONS: &[(&str, &str, &str)] = &[
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
];

const NFS_ROOT: &str = "/persistentvolumes";

/// The parameters a StorageClass of this provisioner may carry.
const CLASS_PARAMETERS: &[&str] = &[
    "onDelete",
    "archiveOnDelete",
    "pathPattern",
    "directoryMode",
    "directoryUid",
    "directoryGid",
];

/// Capabilities the container may add back after dropping ALL.
const ALLOWED_CAPABILITIES: &[&str] = &["CHOWN", "FOWNER", "DAC_OVERRIDE"];

// ---------------------------------------------------------------------------------------------
// Loading

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One YAML document of a manifest file.
#[derive(Debug, Clone)]
struct Doc {
    file: PathBuf,
    index: usize,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    fn at(&self) -> String {
        format!(
            "{} (document {})",
            self.file
                .strip_prefix(root())
                .unwrap_or(&self.file)
                .display(),
            self.index
        )
    }

    fn typed<T: DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.value.clone())
            .unwrap_or_else(|e| panic!("{}: not a valid {}: {e}", self.at(), self.kind()))
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

fn is_kustomization(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
    )
}

/// Every YAML file under `deploy/` and `rbac/`.
fn all_yaml_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    yaml_files(&root().join("deploy"), &mut files);
    yaml_files(&root().join("rbac"), &mut files);
    assert!(!files.is_empty(), "no manifests found");
    files
}

fn parse_documents(file: &Path) -> Vec<Doc> {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    let mut docs = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(de)
            .unwrap_or_else(|e| panic!("{} (document {index}): bad YAML: {e}", file.display()));
        if value.is_null() {
            continue; // empty document, e.g. after a trailing `---`
        }
        docs.push(Doc {
            file: file.to_path_buf(),
            index,
            value,
        });
    }
    docs
}

/// Every Kubernetes object in the manifests (kustomization files excluded).
fn documents() -> Vec<Doc> {
    all_yaml_files()
        .iter()
        .filter(|f| !is_kustomization(f))
        .flat_map(|f| parse_documents(f))
        .collect()
}

fn of_kind<T: DeserializeOwned>(docs: &[Doc], kind: &str) -> Vec<(Doc, T)> {
    docs.iter()
        .filter(|d| d.kind() == kind)
        .map(|d| (d.clone(), d.typed::<T>()))
        .collect()
}

fn is_under(doc: &Doc, dir: &str) -> bool {
    doc.file.starts_with(root().join(dir))
}

// ---------------------------------------------------------------------------------------------
// Round trip

/// Drops `null` values (absent and null mean the same to the API server).
fn normalise(value: &Value) -> Value {
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
fn differences(path: &str, written: &Value, typed: &Value, out: &mut Vec<String>) {
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

fn round_trip<T: DeserializeOwned + serde::Serialize>(doc: &Doc) -> Vec<String> {
    let typed: T = match serde_json::from_value(doc.value.clone()) {
        Ok(t) => t,
        Err(e) => return vec![format!("not a valid {}: {e}", doc.kind())],
    };
    let back = serde_json::to_value(&typed).expect("typed object serialises");
    let mut out = Vec::new();
    differences("", &normalise(&doc.value), &normalise(&back), &mut out);
    out
}

#[test]
fn every_document_is_a_known_kind_without_unknown_fields() {
    let docs = documents();
    let mut problems = Vec::new();
    for doc in &docs {
        let diffs = match doc.kind() {
            "Deployment" => round_trip::<Deployment>(doc),
            "StatefulSet" => round_trip::<StatefulSet>(doc),
            "ServiceAccount" => round_trip::<ServiceAccount>(doc),
            "ClusterRole" => round_trip::<ClusterRole>(doc),
            "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(doc),
            "Role" => round_trip::<Role>(doc),
            "RoleBinding" => round_trip::<RoleBinding>(doc),
            "StorageClass" => round_trip::<StorageClass>(doc),
            "PersistentVolumeClaim" => round_trip::<PersistentVolumeClaim>(doc),
            "Pod" => round_trip::<Pod>(doc),
            "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(doc),
            "Namespace" => round_trip::<Namespace>(doc),
            other => vec![format!("kind {other:?} is not checked by this test")],
        };
        problems.extend(diffs.into_iter().map(|d| format!("{}: {d}", doc.at())));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Sanity: the loader found the objects the other tests rely on.
    for kind in ["Deployment", "ClusterRole", "Role", "StorageClass"] {
        assert!(
            docs.iter().any(|d| d.kind() == kind),
            "no {kind} in the manifests"
        );
    }
}

#[test]
fn round_trip_detects_a_misspelled_field() {
    let doc = Doc {
        file: root().join("inline"),
        index: 0,
        value: serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "volumeMount": []}]}
        }),
    };
    let diffs = round_trip::<Pod>(&doc);
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert!(
        diffs[0].starts_with(".spec.containers[0].volumeMount"),
        "{diffs:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Kustomizations

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Kustomization {
    api_version: String,
    kind: String,
    #[serde(default)]
    resources: Vec<String>,
}

fn kustomization(dir: &Path) -> Kustomization {
    let file = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    let k: Kustomization =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(k.kind, "Kustomization", "{}", file.display());
    assert_eq!(
        k.api_version,
        "kustomize.config.k8s.io/v1beta1",
        "{}",
        file.display()
    );
    k
}

/// The files a kustomization directory installs, following nested directories.
fn kustomized_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for resource in kustomization(dir).resources {
        let path = dir.join(&resource);
        assert!(
            path.exists(),
            "{}/kustomization.yaml lists {resource}, which does not exist",
            dir.display()
        );
        if path.is_dir() {
            out.extend(kustomized_files(&path));
        } else {
            out.push(path.canonicalize().expect("canonical path"));
        }
    }
    out
}

#[test]
fn kustomizations_list_existing_resources() {
    for file in all_yaml_files().iter().filter(|f| is_kustomization(f)) {
        kustomized_files(file.parent().expect("parent"));
    }
}

#[test]
fn rbac_kustomization_lists_every_rbac_file() {
    let dir = root().join("rbac");
    let listed: BTreeSet<PathBuf> = kustomized_files(&dir).into_iter().collect();
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    for file in files.iter().filter(|f| !is_kustomization(f)) {
        assert!(
            listed.contains(&file.canonicalize().expect("canonical path")),
            "{} is not listed in rbac/kustomization.yaml",
            file.display()
        );
    }
}

#[test]
fn deploy_kustomization_installs_the_provisioner() {
    let installed: Vec<Doc> = kustomized_files(&root().join("deploy"))
        .iter()
        .flat_map(|f| parse_documents(f))
        .collect();
    let kinds: BTreeSet<&str> = installed.iter().map(Doc::kind).collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "StorageClass",
    ] {
        assert!(
            kinds.contains(kind),
            "deploy/kustomization.yaml installs no {kind}"
        );
    }
    // Examples are applied by hand, never installed; the PodDisruptionBudget (policy/v1,
    // Kubernetes 1.21+) is its own kustomization so the install works on 1.19 and 1.20.
    for kind in [
        "Pod",
        "PersistentVolumeClaim",
        "StatefulSet",
        "PodDisruptionBudget",
    ] {
        assert!(
            !kinds.contains(kind),
            "deploy/kustomization.yaml installs a {kind}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The Deployment

struct Provisioner {
    deployment: Deployment,
    namespace: String,
    pod: PodSpec,
    container: Container,
}

fn provisioner() -> Provisioner {
    let docs = documents();
    let deployments: Vec<(Doc, Deployment)> = of_kind(&docs, "Deployment");
    assert_eq!(deployments.len(), 1, "expected one Deployment");
    let deployment = deployments.into_iter().next().expect("one").1;
    let namespace = deployment
        .metadata
        .namespace
        .clone()
        .expect("the Deployment names its namespace");
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    let container = pod
        .containers
        .iter()
        .find(|c| c.name == "nfs-provisioner")
        .cloned()
        .expect("a container named nfs-provisioner");
    Provisioner {
        deployment,
        namespace,
        pod,
        container,
    }
}

impl Provisioner {
    fn env(&self) -> &[EnvVar] {
        self.container.env.as_deref().unwrap_or_default()
    }

    fn env_value(&self, name: &str) -> Option<String> {
        self.env()
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    fn required_env(&self, name: &str) -> String {
        self.env_value(name)
            .unwrap_or_else(|| panic!("the Deployment sets no {name} value"))
    }

    fn pod_labels(&self) -> BTreeMap<String, String> {
        self.deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default()
    }

    fn service_account(&self) -> String {
        self.pod
            .service_account_name
            .clone()
            .expect("the pod names its ServiceAccount")
    }
}

/// `selector` selects pods labelled `labels` (matchLabels only: expressions are not used here).
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let match_labels = selector.match_labels.clone().unwrap_or_default();
    selector
        .match_expressions
        .as_ref()
        .is_none_or(Vec::is_empty)
        && !match_labels.is_empty()
        && match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn cli_default(id: &str) -> String {
    let command = Cli::command();
    let arg = command
        .get_arguments()
        .find(|a| a.get_id() == id)
        .unwrap_or_else(|| panic!("the binary has no argument {id}"));
    arg.get_default_values()
        .first()
        .and_then(|v| v.to_str())
        .unwrap_or_else(|| panic!("argument {id} has no default"))
        .to_string()
}

#[test]
fn deployment_sets_only_environment_the_binary_reads() {
    let read: BTreeSet<String> = Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    assert!(read.contains("PROVISIONER_NAME"), "env list: {read:?}");
    let p = provisioner();
    let mut seen = BTreeSet::new();
    for var in p.env() {
        assert!(
            read.contains(&var.name),
            "the Deployment sets {}, which the binary does not read (it reads {read:?})",
            var.name
        );
        assert!(seen.insert(&var.name), "{} is set twice", var.name);
    }
    assert!(
        p.container.env_from.is_none(),
        "envFrom could set unchecked variables"
    );
    for name in ["PROVISIONER_NAME", "NFS_SERVER", "NFS_PATH"] {
        assert!(!p.required_env(name).trim().is_empty(), "{name} is empty");
    }
    nfs_provisioner::config::validate_provisioner_name(&p.required_env("PROVISIONER_NAME"))
        .expect("PROVISIONER_NAME is valid");
}

#[test]
fn deployment_runs_two_replicas_with_leader_election() {
    let p = provisioner();
    let spec = p.deployment.spec.as_ref().expect("spec");
    assert!(spec.replicas.unwrap_or(1) >= 2, "run a standby replica");
    match p.env_value("ENABLE_LEADER_ELECTION") {
        None => assert_eq!(cli_default("enable_leader_election"), "true"),
        Some(v) => assert_eq!(nfs_provisioner::config::parse_go_bool(&v), Ok(true)),
    }
    let strategy = spec.strategy.as_ref().expect("a rollout strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    assert!(
        selects(&spec.selector, &p.pod_labels()),
        "the Deployment's selector does not match its pod labels"
    );
}

#[test]
fn deployment_mounts_the_export_named_by_its_environment() {
    let p = provisioner();
    let mount_path = p
        .env_value("NFS_MOUNT_PATH")
        .unwrap_or_else(|| cli_default("mount_path"));
    assert_eq!(mount_path, NFS_ROOT);
    let mount = p
        .container
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|m| m.mount_path == NFS_ROOT)
        .unwrap_or_else(|| panic!("nothing is mounted at {NFS_ROOT}"));
    assert_ne!(mount.read_only, Some(true), "the export must be writable");
    let volume = p
        .pod
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap_or_else(|| panic!("no volume {}", mount.name));
    let nfs = volume
        .nfs
        .as_ref()
        .unwrap_or_else(|| panic!("volume {} is not an nfs volume", volume.name));
    assert_eq!(
        nfs.server,
        p.required_env("NFS_SERVER"),
        "NFS_SERVER and the nfs volume's server differ"
    );
    assert_eq!(
        nfs.path,
        p.required_env("NFS_PATH"),
        "NFS_PATH and the nfs volume's path differ"
    );
}

#[test]
fn pod_namespace_and_name_come_from_the_downward_api() {
    let p = provisioner();
    for (name, field) in [
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_NAME", "metadata.name"),
    ] {
        let var = p
            .env()
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("the Deployment does not set {name}"));
        let field_path = var
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(field_path, Some(field), "{name} must come from a fieldRef");
        assert!(var.value.is_none(), "{name} has both value and valueFrom");
    }
}

#[test]
fn probes_hit_the_admin_endpoint() {
    let p = provisioner();
    let default_address = cli_default("admin_address");
    let address = p.env_value("ADMIN_ADDRESS").unwrap_or(default_address);
    let admin_port: i32 = address
        .rsplit(':')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no port in ADMIN_ADDRESS {address:?}"));
    assert_eq!(admin_port, 8080);
    let port = p
        .container
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|port| port.name.as_deref() == Some("admin"))
        .expect("a container port named admin");
    assert_eq!(port.container_port, admin_port);
    for (probe, path) in [
        (&p.container.liveness_probe, "/healthz"),
        (&p.container.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|pr| pr.http_get.as_ref())
            .unwrap_or_else(|| panic!("no httpGet probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert!(
            get.port == IntOrString::String("admin".into())
                || get.port == IntOrString::Int(admin_port),
            "the {path} probe does not use the admin port"
        );
    }
}

#[test]
fn container_is_hardened() {
    let p = provisioner();
    let sc = p
        .container
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    for cap in caps.add.as_deref().unwrap_or_default() {
        assert!(
            ALLOWED_CAPABILITIES.contains(&cap.as_str()),
            "capability {cap} is not needed"
        );
    }
    let seccomp = sc
        .seccomp_profile
        .as_ref()
        .or(p
            .pod
            .security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref()))
        .expect("a seccomp profile");
    assert_eq!(seccomp.type_, "RuntimeDefault");
    assert!(
        p.pod.host_network != Some(true) && p.pod.host_pid != Some(true),
        "no host namespaces"
    );
}

#[test]
fn termination_grace_outlasts_shutdown_grace() {
    let p = provisioner();
    let shutdown = p
        .env_value("SHUTDOWN_GRACE")
        .unwrap_or_else(|| cli_default("shutdown_grace"));
    let shutdown = parse_duration(&shutdown).expect("SHUTDOWN_GRACE parses");
    let termination = p.pod.termination_grace_period_seconds.unwrap_or(30);
    assert!(
        Duration::from_secs(termination as u64) > shutdown + Duration::from_secs(5),
        "terminationGracePeriodSeconds {termination} leaves no margin over SHUTDOWN_GRACE {shutdown:?}"
    );
}

#[test]
fn replicas_spread_over_nodes() {
    let p = provisioner();
    let labels = p.pod_labels();
    let spread = p
        .pod
        .topology_spread_constraints
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|t| {
            t.topology_key == "kubernetes.io/hostname"
                && t.label_selector
                    .as_ref()
                    .is_some_and(|s| selects(s, &labels))
        });
    let anti = p
        .pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_some_and(|terms| {
            terms.iter().any(|t| {
                t.pod_affinity_term.topology_key == "kubernetes.io/hostname"
                    && t.pod_affinity_term
                        .label_selector
                        .as_ref()
                        .is_some_and(|s| selects(s, &labels))
            })
        });
    assert!(spread || anti, "replicas are not spread over nodes");
}

#[test]
fn pod_disruption_budget_covers_the_deployment() {
    let p = provisioner();
    let docs = documents();
    let pdbs: Vec<(Doc, PodDisruptionBudget)> = of_kind(&docs, "PodDisruptionBudget");
    assert_eq!(pdbs.len(), 1, "expected one PodDisruptionBudget");
    let (doc, pdb) = &pdbs[0];
    let budget: BTreeSet<String> = kustomized_files(&root().join("deploy/disruption-budget"))
        .iter()
        .flat_map(|f| parse_documents(f))
        .map(|d| d.kind().to_string())
        .collect();
    assert_eq!(
        budget,
        BTreeSet::from(["PodDisruptionBudget".to_string()]),
        "deploy/disruption-budget/ installs exactly the PodDisruptionBudget ({})",
        doc.at()
    );
    assert_eq!(
        pdb.metadata.namespace.as_deref(),
        Some(p.namespace.as_str())
    );
    let spec = pdb.spec.as_ref().expect("spec");
    assert!(
        spec.selector
            .as_ref()
            .is_some_and(|s| selects(s, &p.pod_labels())),
        "the PodDisruptionBudget does not select the provisioner's pods"
    );
    assert_eq!(spec.min_available, Some(IntOrString::Int(1)));
}

// ---------------------------------------------------------------------------------------------
// StorageClasses

fn storage_classes() -> Vec<(Doc, StorageClass)> {
    of_kind(&documents(), "StorageClass")
}

#[test]
fn storage_classes_select_this_provisioner() {
    let name = provisioner().required_env("PROVISIONER_NAME");
    let classes = storage_classes();
    assert!(classes.len() >= 4, "expected the four example classes");
    for (doc, class) in &classes {
        assert_eq!(class.provisioner, name, "{}", doc.at());
        assert_eq!(
            class.allow_volume_expansion,
            Some(true),
            "{}: claims may be resized (the provisioner answers as the external resizer)",
            doc.at()
        );
        for key in class.parameters.as_ref().into_iter().flat_map(|p| p.keys()) {
            assert!(
                CLASS_PARAMETERS.contains(&key.as_str()),
                "{}: unknown parameter {key}",
                doc.at()
            );
        }
    }
    let names: BTreeSet<&str> = classes
        .iter()
        .filter_map(|(_, c)| c.metadata.name.as_deref())
        .collect();
    assert!(names.contains("nfs-client"), "the compat class nfs-client");
}

#[test]
fn examples_use_a_shipped_class() {
    let docs = documents();
    let classes: BTreeSet<String> = storage_classes()
        .into_iter()
        .filter_map(|(_, c)| c.metadata.name)
        .collect();
    let mut claims: Vec<(String, Option<String>)> = of_kind(&docs, "PersistentVolumeClaim")
        .into_iter()
        .map(|(d, c): (Doc, PersistentVolumeClaim)| {
            (d.at(), c.spec.and_then(|s| s.storage_class_name))
        })
        .collect();
    for (doc, set) in of_kind::<StatefulSet>(&docs, "StatefulSet") {
        for template in set
            .spec
            .and_then(|s| s.volume_claim_templates)
            .unwrap_or_default()
        {
            claims.push((doc.at(), template.spec.and_then(|s| s.storage_class_name)));
        }
    }
    assert!(claims.len() >= 2, "the example claim and StatefulSet");
    for (at, class) in claims {
        let class = class.unwrap_or_else(|| panic!("{at}: no storageClassName"));
        assert!(classes.contains(&class), "{at}: no StorageClass {class}");
    }
}

#[test]

fn storage_class_parameters_parse() {
    use nfs_provisioner::parameters::{ClassParameters, OnDelete};
    for (doc, class) in storage_classes() {
        let parameters = class.parameters.clone().unwrap_or_default();
        let parsed =
            ClassParameters::parse(&parameters).unwrap_or_else(|e| panic!("{}: {e}", doc.at()));
        let expected = match class.metadata.name.as_deref() {
            Some("nfs-client") => Some(OnDelete::Archive),
            Some("nfs-client-delete") | Some("nfs-client-path-pattern") => Some(OnDelete::Delete),
            Some("nfs-client-retain") => Some(OnDelete::Retain),
            _ => None,
        };
        if let Some(expected) = expected {
            assert_eq!(parsed.on_delete, expected, "{}", doc.at());
        }
        if parameters.contains_key("pathPattern") {
            assert!(parsed.path_pattern.is_some(), "{}", doc.at());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RBAC

type Permission = (String, String, String);

fn permissions(rules: &[PolicyRule], at: &str) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.non_resource_urls.is_none(),
            "{at}: nonResourceURLs are not used"
        );
        assert!(
            rule.resource_names.is_none(),
            "{at}: resourceNames cannot restrict create; keep rules uniform"
        );
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        assert!(
            !groups.is_empty() && !resources.is_empty() && !rule.verbs.is_empty(),
            "{at}: a rule without groups, resources or verbs"
        );
        for group in &groups {
            for resource in &resources {
                for verb in &rule.verbs {
                    for word in [group, resource, verb] {
                        assert!(!word.contains('*'), "{at}: wildcard {word:?}");
                    }
                    assert!(
                        resource != "endpoints" && resource != "endpointslices",
                        "{at}: endpoints are not used"
                    );
                    assert!(
                        out.insert((group.clone(), resource.clone(), verb.clone())),
                        "{at}: {group}/{resource} {verb} granted twice"
                    );
                }
            }
        }
    }
    out
}

fn expected(list: &[(&str, &str, &str)]) -> BTreeSet<Permission> {
    list.iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect()
}

fn assert_same_permissions(
    granted: &BTreeSet<Permission>,
    wanted: &BTreeSet<Permission>,
    at: &str,
) {
    let extra: Vec<_> = granted.difference(wanted).collect();
    let missing: Vec<_> = wanted.difference(granted).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{at}: permissions not used by the binary: {extra:?}; needed but missing: {missing:?}"
    );
}

fn rbac_docs() -> Vec<Doc> {
    documents()
        .into_iter()
        .filter(|d| is_under(d, "rbac"))
        .collect()
}

#[test]
fn cluster_role_grants_exactly_what_the_binary_calls() {
    let docs = documents();
    let roles: Vec<(Doc, ClusterRole)> = of_kind(&docs, "ClusterRole");
    assert_eq!(roles.len(), 1, "expected one ClusterRole");
    let (doc, role) = &roles[0];
    assert!(
        role.aggregation_rule.is_none(),
        "{}: no aggregation",
        doc.at()
    );
    let granted = permissions(role.rules.as_deref().unwrap_or_default(), &doc.at());
    assert_same_permissions(&granted, &expected(CLUSTER_PERMISSIONS), &doc.at());
}

#[test]
fn role_grants_exactly_the_lease_calls() {
    let p = provisioner();
    let docs = documents();
    let roles: Vec<(Doc, Role)> = of_kind(&docs, "Role");
    assert_eq!(roles.len(), 1, "expected one Role");
    let (doc, role) = &roles[0];
    assert_eq!(
        role.metadata.namespace.as_deref(),
        Some(p.namespace.as_str()),
        "{}: the Lease lives in the provisioner's namespace (POD_NAMESPACE)",
        doc.at()
    );
    let granted = permissions(role.rules.as_deref().unwrap_or_default(), &doc.at());
    assert_same_permissions(&granted, &expected(NAMESPACE_PERMISSIONS), &doc.at());
}

#[test]
fn bindings_grant_the_roles_to_the_deployments_service_account() {
    let p = provisioner();
    let sa_name = p.service_account();
    let docs = rbac_docs();

    let accounts: Vec<(Doc, ServiceAccount)> = of_kind(&docs, "ServiceAccount");
    assert!(
        accounts.iter().any(|(_, a)| {
            a.metadata.name.as_deref() == Some(sa_name.as_str())
                && a.metadata.namespace.as_deref() == Some(p.namespace.as_str())
        }),
        "no ServiceAccount {}/{sa_name}",
        p.namespace
    );
    assert_eq!(sa_name, "nfs-provisioner");
    assert_eq!(p.namespace, "nfs-provisioner");
    let all = documents();
    let namespaces: Vec<(Doc, Namespace)> = of_kind(&all, "Namespace");
    assert!(
        namespaces
            .iter()
            .any(|(_, n)| n.metadata.name.as_deref() == Some(p.namespace.as_str())),
        "no Namespace {}",
        p.namespace
    );

    let subject_ok = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        let subjects = subjects.as_deref().unwrap_or_default();
        subjects.len() == 1
            && subjects[0].kind == "ServiceAccount"
            && subjects[0].name == sa_name
            && subjects[0].namespace.as_deref() == Some(p.namespace.as_str())
    };

    let cluster_roles: Vec<(Doc, ClusterRole)> = of_kind(&docs, "ClusterRole");
    let cluster_bindings: Vec<(Doc, ClusterRoleBinding)> = of_kind(&docs, "ClusterRoleBinding");
    assert_eq!(cluster_bindings.len(), 1, "expected one ClusterRoleBinding");
    for (doc, binding) in &cluster_bindings {
        assert!(subject_ok(&binding.subjects), "{}: subjects", doc.at());
        assert_eq!(binding.role_ref.kind, "ClusterRole", "{}", doc.at());
        assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
        assert!(
            cluster_roles
                .iter()
                .any(|(_, r)| r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str())),
            "{}: no ClusterRole {}",
            doc.at(),
            binding.role_ref.name
        );
    }

    let roles: Vec<(Doc, Role)> = of_kind(&docs, "Role");
    let bindings: Vec<(Doc, RoleBinding)> = of_kind(&docs, "RoleBinding");
    assert_eq!(bindings.len(), 1, "expected one RoleBinding");
    for (doc, binding) in &bindings {
        assert!(subject_ok(&binding.subjects), "{}: subjects", doc.at());
        assert_eq!(
            binding.metadata.namespace.as_deref(),
            Some(p.namespace.as_str()),
            "{}",
            doc.at()
        );
        assert_eq!(binding.role_ref.kind, "Role", "{}", doc.at());
        assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
        assert!(
            roles.iter().any(|(_, r)| {
                r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str())
                    && r.metadata.namespace == binding.metadata.namespace
            }),
            "{}: no Role {} in its namespace",
            doc.at(),
            binding.role_ref.name
        );
    }
}

#[test]
fn namespaced_objects_live_in_the_provisioners_namespace() {
    let p = provisioner();
    for doc in documents() {
        if is_under(&doc, "deploy/examples") {
            continue; // examples go wherever the user applies them
        }
        let namespaced = !matches!(
            doc.kind(),
            "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "StorageClass"
        );
        let ns = doc.value["metadata"]["namespace"].as_str();
        if namespaced {
            assert_eq!(ns, Some(p.namespace.as_str()), "{}", doc.at());
        } else {
            assert_eq!(
                ns,
                None,
                "{}: cluster-scoped object with a namespace",
                doc.at()
            );
        }
    }
}
