//! Checks of the deployment manifests under `deploy/` and `rbac/`.
//!
//! * Every YAML document parses into its typed k8s-openapi struct, and serialising that struct
//!   gives back the same document: k8s-openapi ignores unknown fields, so a misspelled or
//!   misplaced field shows up as a difference.
//! * The Deployment only sets environment variables the binary reads, mounts the export where
//!   the binary expects it, probes the admin endpoint and keeps the hardened security context.
//! * The RBAC rules are exactly the API calls the binary makes: one permission more or less
//!   fails here.
//! * StorageClasses, the PodDisruptionBudget, the metrics Service and the bindings agree with
//!   the Deployment.
//! * The PodSecurity restricted overlay (built with kubectl's kustomize when one is found)
//!   changes only the export's volume and the security settings, and passes `restricted`.
//! * The alerts and the Grafana dashboard use only metrics and labels the binary exposes, and
//!   deploy/observability/ carries the chart's copies unchanged.

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

mod kube_objects;

/// The API calls the binary makes, cluster-wide: (apiGroup, resource, verb).
const CLUSTER_PERMISSIONS: &[(&str, &str, &str)] = &[
    ("", "persistentvolumes", "list"),
    ("", "persistentvolumes", "watch"),
    ("", "persistentvolumes", "create"),
    ("", "persistentvolumes", "delete"),
    ("", "persistentvolumes", "patch"),
    ("", "persistentvolumeclaims", "list"),
    ("", "persistentvolumeclaims", "watch"),
    ("", "persistentvolumeclaims", "patch"),
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
const CLASS_PARAMETERS: &[&str] = nfs_provisioner::parameters::ACCEPTED_KEYS;

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

/// A file a kustomize Component uses as input (a patch, a generator's file) rather than
/// installs: everything in a Component's directory but its `resources`.
fn is_component_input(path: &Path) -> bool {
    let Some(dir) = path.parent() else {
        return false;
    };
    let Ok(text) = std::fs::read_to_string(dir.join("kustomization.yaml")) else {
        return false;
    };
    let k: Kustomization = serde_yaml::from_str(&text).expect("kustomization");
    k.kind == "Component" && !k.resources.iter().any(|r| dir.join(r) == path)
}

/// Every Kubernetes object in the manifests (kustomization files and Component inputs
/// excluded).
fn documents() -> Vec<Doc> {
    all_yaml_files()
        .iter()
        .filter(|f| !is_kustomization(f) && !is_component_input(f))
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

fn round_trip<T: DeserializeOwned + serde::Serialize>(doc: &Doc) -> Vec<String> {
    kube_objects::round_trip::<T>(&doc.value)
}

#[test]
fn every_document_is_a_known_kind_without_unknown_fields() {
    let docs = documents();
    let mut problems = Vec::new();
    for doc in &docs {
        let diffs = kube_objects::typed_round_trip(&doc.value);
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
    #[serde(default)]
    config_map_generator: Vec<Generator>,
    #[serde(default)]
    patches: Vec<Patch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Generator {
    name: String,
    namespace: String,
    files: Vec<String>,
    #[serde(default)]
    options: Option<Value>,
}

/// A patch from a file (`path`) or inline (`patch`, with its `target`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Patch {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    patch: Option<String>,
    #[serde(default)]
    target: Option<Value>,
}

fn kustomization(dir: &Path) -> Kustomization {
    let file = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    let k: Kustomization =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let expected_api = match k.kind.as_str() {
        "Kustomization" => "kustomize.config.k8s.io/v1beta1",
        "Component" => "kustomize.config.k8s.io/v1alpha1",
        other => panic!("{}: unknown kind {other}", file.display()),
    };
    assert_eq!(k.api_version, expected_api, "{}", file.display());
    k
}

/// The files a kustomization directory installs, following nested directories.
fn kustomized_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let k = kustomization(dir);
    let inputs = k
        .config_map_generator
        .iter()
        .flat_map(|g| g.files.iter())
        .chain(k.patches.iter().filter_map(|p| p.path.as_ref()));
    for input in inputs {
        assert!(
            dir.join(input).is_file(),
            "{}/kustomization.yaml uses {input}, which does not exist",
            dir.display()
        );
    }
    for resource in k.resources {
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
        "Service",
        "StorageClass",
    ] {
        assert!(
            kinds.contains(kind),
            "deploy/kustomization.yaml installs no {kind}"
        );
    }
    // Examples are applied by hand, never installed; the PodDisruptionBudget (policy/v1,
    // Kubernetes 1.21+) is its own kustomization so the install works on 1.19 and 1.20; the
    // export's static volume belongs to the restricted mode; the Prometheus Operator's kinds
    // need its CRDs (deploy/observability/).
    for kind in [
        "Pod",
        "PersistentVolume",
        "PersistentVolumeClaim",
        "StatefulSet",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
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
    // The restricted mode's claim of the export is bound to its static volume by name, with
    // the empty class: it is no claim of this provisioner.
    let mut claims: Vec<(String, Option<String>)> = of_kind(&docs, "PersistentVolumeClaim")
        .into_iter()
        .filter(|(_, c): &(Doc, PersistentVolumeClaim)| {
            c.spec
                .as_ref()
                .and_then(|s| s.volume_name.as_ref())
                .is_none()
        })
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
            "Namespace"
                | "ClusterRole"
                | "ClusterRoleBinding"
                | "StorageClass"
                | "PersistentVolume"
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

// ---------------------------------------------------------------------------------------------
// Several exports (deploy/examples/second-export, a kustomize Component)

/// Every export the example's exports file names is mounted at its `mountPath` from a volume
/// of the same server and path, and NFS_EXPORTS_CONFIG points at the mounted file.
#[test]
fn the_second_export_example_mounts_what_its_exports_file_names() {
    let dir = root().join("deploy/examples/second-export");
    let exports = nfs_provisioner::exports_file::load(&dir.join("exports.yaml"))
        .unwrap_or_else(|e| panic!("exports.yaml: {e}"));
    let text = std::fs::read_to_string(dir.join("deployment-patch.yaml")).unwrap();
    let patch: Deployment = serde_yaml::from_str(&text).expect("deployment patch");
    let pod = patch.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let mounts = container.volume_mounts.as_deref().unwrap_or_default();
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let volume_at = |path: &str| {
        let mount = mounts
            .iter()
            .find(|m| m.mount_path == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"));
        volumes
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("no volume {}", mount.name))
    };
    for export in &exports {
        let volume = volume_at(&export.mount_path.display().to_string());
        let nfs = volume.nfs.as_ref().expect("an nfs volume");
        assert_eq!(nfs.server, export.server, "{}", export.name);
        assert_eq!(nfs.path, export.path.as_str(), "{}", export.name);
    }
    let config = container
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.name == "NFS_EXPORTS_CONFIG")
        .and_then(|e| e.value.clone())
        .expect("NFS_EXPORTS_CONFIG");
    let config = Path::new(&config);
    let volume = volume_at(&config.parent().unwrap().display().to_string());
    assert_eq!(
        volume.config_map.as_ref().map(|c| c.name.as_str()),
        Some("nfs-provisioner-exports")
    );
    assert_eq!(config.file_name().unwrap(), "exports.yaml");
}

// ---------------------------------------------------------------------------------------------
// The metrics Service

#[test]
fn metrics_service_selects_the_provisioner_and_its_admin_port() {
    let p = provisioner();
    let docs = documents();
    let services: Vec<(Doc, k8s_openapi::api::core::v1::Service)> = of_kind(&docs, "Service");
    assert_eq!(services.len(), 1, "expected the metrics Service");
    let (doc, service) = &services[0];
    assert_eq!(
        service.metadata.namespace.as_deref(),
        Some(p.namespace.as_str())
    );
    let spec = service.spec.as_ref().expect("spec");
    let selector = spec.selector.clone().unwrap_or_default();
    let labels = p.pod_labels();
    assert!(
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "{}: selector {selector:?} does not select the pods {labels:?}",
        doc.at()
    );
    let ports = spec.ports.as_deref().unwrap_or_default();
    assert_eq!(ports.len(), 1, "{}", doc.at());
    assert_eq!(ports[0].name.as_deref(), Some("metrics"));
    assert!(
        matches!(&ports[0].target_port, Some(IntOrString::String(name)) if name == "admin")
            || ports[0].target_port == Some(IntOrString::Int(8080)),
        "{}: the Service does not target the admin port",
        doc.at()
    );
}

// ---------------------------------------------------------------------------------------------
// The PodSecurity restricted overlay (needs kubectl's built-in kustomize to build it)

fn kubectl_or_skip() -> Option<PathBuf> {
    let found = kube_objects::tool("kubectl");
    if found.is_none() {
        eprintln!(
            "SKIPPED: no kubectl (KUBECTL, target/tools/bin or PATH; scripts/install-tools installs one) to build the kustomize overlays"
        );
    }
    found
}

/// The Deployment without the three parts the restricted overlay replaces.
fn without_restricted_parts(deployment: &Value) -> Value {
    let mut d = deployment.clone();
    let spec = &mut d["spec"]["template"]["spec"];
    spec.as_object_mut()
        .expect("pod spec")
        .remove("securityContext");
    spec["volumes"][0] = Value::Null;
    spec["containers"][0]
        .as_object_mut()
        .expect("container")
        .remove("securityContext");
    d
}

#[test]
fn restricted_overlay_changes_only_volume_and_security_and_passes_restricted() {
    let Some(kubectl) = kubectl_or_skip() else {
        return;
    };
    let default = kube_objects::kustomize(&kubectl, "deploy");
    let restricted = kube_objects::kustomize(&kubectl, "deploy/restricted");
    // Same objects but the export's volume and claim.
    let kinds = |docs: &[Value]| -> BTreeSet<(String, String)> {
        docs.iter()
            .map(|d| {
                (
                    d["kind"].as_str().unwrap_or("").to_string(),
                    d["metadata"]["name"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let added: Vec<_> = kinds(&restricted)
        .difference(&kinds(&default))
        .cloned()
        .collect();
    assert_eq!(
        added,
        vec![
            ("PersistentVolume".into(), "nfs-provisioner-root".into()),
            (
                "PersistentVolumeClaim".into(),
                "nfs-provisioner-root".into()
            )
        ]
    );
    assert!(kinds(&default).is_subset(&kinds(&restricted)));
    for doc in &restricted {
        let diffs = kube_objects::typed_round_trip(doc);
        assert!(diffs.is_empty(), "{}: {diffs:?}", doc["kind"]);
    }

    // The Deployment: environment, probes, ports, replicas as in the default mode.
    let base = kube_objects::only(&default, "Deployment");
    let deployment = kube_objects::only(&restricted, "Deployment");
    assert_eq!(
        without_restricted_parts(deployment),
        without_restricted_parts(base),
        "the restricted Deployment differs from the default one beyond its volume and securityContext"
    );
    let deployment: Deployment = kube_objects::typed(deployment);
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    let violations = kube_objects::restricted_violations(&pod);
    assert!(violations.is_empty(), "{violations:?}");
    let container = &pod.containers[0];
    let sc = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert!(sc.run_as_user.is_some_and(|u| u != 0));
    assert!(
        sc.capabilities
            .as_ref()
            .is_some_and(|c| c.add.as_deref().unwrap_or_default().is_empty()),
        "no capability is added back"
    );

    // The export: mounted at the NFS root through the claim, bound to the static volume
    // that names the same server and path as the environment.
    let mount = container
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|m| m.mount_path == NFS_ROOT)
        .expect("the export is mounted at the NFS root");
    let volume = pod
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.name == mount.name)
        .expect("the mounted volume");
    let claim_name = &volume
        .persistent_volume_claim
        .as_ref()
        .expect("mounted through a claim")
        .claim_name;
    let env = |name: &str| {
        container
            .env
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let pv: k8s_openapi::api::core::v1::PersistentVolume =
        kube_objects::typed(kube_objects::only(&restricted, "PersistentVolume"));
    let pvc: PersistentVolumeClaim =
        kube_objects::typed(kube_objects::only(&restricted, "PersistentVolumeClaim"));
    let pv_spec = pv.spec.expect("PV spec");
    let pvc_spec = pvc.spec.expect("PVC spec");
    assert_eq!(pvc.metadata.name.as_ref(), Some(claim_name));
    assert_eq!(
        pvc.metadata.namespace, deployment.metadata.namespace,
        "the claim lives with the pods"
    );
    let nfs = pv_spec.nfs.as_ref().expect("an nfs PV");
    assert_eq!(
        nfs.server,
        env("NFS_SERVER"),
        "PV server and NFS_SERVER differ"
    );
    assert_eq!(nfs.path, env("NFS_PATH"), "PV path and NFS_PATH differ");
    let claim_ref = pv_spec.claim_ref.as_ref().expect("pre-bound to its claim");
    assert_eq!(claim_ref.name.as_ref(), Some(claim_name));
    assert_eq!(claim_ref.namespace, pvc.metadata.namespace);
    assert_eq!(pvc_spec.volume_name, pv.metadata.name);
    assert_eq!(pv_spec.storage_class_name.as_deref(), Some(""));
    assert_eq!(pvc_spec.storage_class_name.as_deref(), Some(""));
    assert_eq!(pv_spec.access_modes, pvc_spec.access_modes);
    assert_eq!(
        pv_spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Retain"),
        "removing the install must never touch the export"
    );
    assert!(
        !pv_spec.mount_options.unwrap_or_default().is_empty(),
        "the static volume is where the export's mount options go"
    );

    // The namespace enforces the level the pods pass; the default one enforces baseline.
    let level = |docs: &[Value]| {
        kube_objects::only(docs, "Namespace")["metadata"]["labels"]
            ["pod-security.kubernetes.io/enforce"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(level(&restricted).as_deref(), Some("restricted"));
    assert_eq!(level(&default).as_deref(), Some("baseline"));
}

#[test]
fn restricted_check_catches_the_default_mode() {
    // The default mode adds capabilities and runs as root: the check must say so (or the
    // test above could pass on anything).
    let violations = kube_objects::restricted_violations(&provisioner().pod);
    for expected in [
        "volume nfs-client-root: type nfs is not allowed",
        "nfs-provisioner: adds capability CHOWN",
        "nfs-provisioner: runAsNonRoot must be true",
        "nfs-provisioner: runAsUser 0",
    ] {
        assert!(
            violations.iter().any(|v| v == expected),
            "{expected:?} not in {violations:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Observability: alerts and dashboard against the metrics the binary exposes

/// Sample names and label names the binary's /metrics can show, from its own registry
/// (every family given one sample so its labels appear).
fn exposed_metrics() -> (BTreeSet<String>, BTreeSet<String>) {
    let metrics = nfs_provisioner::metrics::Metrics::new();
    metrics.provisioned("c", "success", Some(Duration::from_millis(1)));
    metrics.reclaimed("c", "success", Some(Duration::from_millis(1)));
    metrics.failed("provision", "io");
    metrics.nfs_root_healthy("default").set(1);
    metrics.nfs_root_probe_seconds("default").set(0.001);
    metrics.nfs_stuck_operations("default").set(0);
    metrics.resized("c", "success");
    // One measured volume, as the usage task's table would hold it.
    struct OneVolume;
    impl nfs_provisioner::metrics::VolumeSamples for OneVolume {
        fn volume_count(&self) -> usize {
            1
        }
        fn for_each_sample(
            &self,
            _part: u64,
            _parts: u64,
            f: &mut dyn FnMut(&nfs_provisioner::metrics::VolumeSample<'_>),
        ) {
            f(&nfs_provisioner::metrics::VolumeSample {
                namespace: "n",
                persistentvolumeclaim: "c",
                persistentvolume: "pv",
                used_bytes: 1,
                used_inodes: 1,
                capacity_bytes: Some(1),
                measured_timestamp: 1,
            });
        }
    }
    let usage = &metrics.usage;
    let volume: std::sync::Arc<dyn nfs_provisioner::metrics::VolumeSamples> =
        std::sync::Arc::new(OneVolume);
    usage.volumes.attach(std::sync::Arc::downgrade(&volume));
    let result = nfs_provisioner::metrics::ResultLabels {
        result: "finished".into(),
    };
    usage.slices.get_or_create(&result).inc();
    usage.scans.get_or_create(&result).inc();
    let text = metrics.render();
    let mut names = BTreeSet::new();
    let mut labels = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().expect("name").to_string();
            let suffixes: &[&str] = match parts.next() {
                Some("counter") => &["_total"],
                Some("histogram") => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#')
            && let Some((_, rest)) = line.split_once('{')
        {
            let set = rest.split('}').next().unwrap_or("");
            for pair in split_outside_quotes(set, ',') {
                if let Some((label, _)) = pair.split_once('=') {
                    labels.insert(label.trim().to_string());
                }
            }
        }
    }
    assert!(
        names.contains("nfs_provisioner_provision_operations_total"),
        "{names:?}"
    );
    (names, labels)
}

/// Labels Prometheus adds to every scraped series (target and Kubernetes service discovery).
const TARGET_LABELS: &[&str] = &[
    "namespace",
    "pod",
    "job",
    "instance",
    "container",
    "service",
    "endpoint",
];

fn split_outside_quotes(text: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    let mut escaped = false;
    for c in text.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        parts.last_mut().expect("a part").push(c);
    }
    parts
}

/// Metric names (`nfs_provisioner_*`) and label names a PromQL expression uses: label
/// matchers in `{...}` and grouping in `by (...)`.
fn promql_names(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut rest = expr;
    while let Some(at) = rest.find("nfs_provisioner_") {
        let name: String = rest[at..].chars().take_while(|c| ident(*c)).collect();
        rest = &rest[at + name.len()..];
        metrics.insert(name);
    }
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').expect("closed matcher") + open;
        for matcher in split_outside_quotes(&rest[open + 1..close], ',') {
            let name: String = matcher.trim().chars().take_while(|c| ident(*c)).collect();
            if !name.is_empty() {
                labels.insert(name);
            }
        }
        rest = &rest[close + 1..];
    }
    for keyword in ["by (", "by(", "without (", "without("] {
        let mut rest = expr;
        while let Some(at) = rest.find(keyword) {
            let start = at + keyword.len();
            let end = rest[start..].find(')').expect("closed grouping") + start;
            labels.extend(
                rest[start..end]
                    .split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty()),
            );
            rest = &rest[end..];
        }
    }
    (metrics, labels)
}

/// Every expression names at least one metric, and only metrics and labels that exist.
fn check_expressions(what: &str, exprs: &[String]) {
    let (names, metric_labels) = exposed_metrics();
    assert!(!exprs.is_empty(), "{what}: no expressions found");
    for expr in exprs {
        let (metrics, labels) = promql_names(expr);
        assert!(
            !metrics.is_empty(),
            "{what}: {expr:?} uses no metric of the provisioner"
        );
        for metric in &metrics {
            assert!(
                names.contains(metric),
                "{what}: {expr:?} uses {metric}, which the binary does not expose (it exposes {names:?})"
            );
        }
        for label in &labels {
            assert!(
                metric_labels.contains(label) || TARGET_LABELS.contains(&label.as_str()),
                "{what}: {expr:?} uses label {label}, which no series has (metric labels {metric_labels:?})"
            );
        }
    }
}

fn chart_file(name: &str) -> String {
    let path = root().join("charts/nfs-provisioner/files").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn alert_rule_groups() -> Value {
    let rules: Value = serde_yaml::from_str(&chart_file("alerts.rules.yaml")).expect("rules YAML");
    rules["groups"].clone()
}

#[test]
fn promql_names_reads_metrics_and_labels() {
    let (metrics, labels) = promql_names(
        r#"sum by (namespace, reason) (increase(nfs_provisioner_failures_total{operation="provision", reason=~"a,b"}[5m])) / on() nfs_provisioner_leader"#,
    );
    assert_eq!(
        metrics,
        BTreeSet::from([
            "nfs_provisioner_failures_total".to_string(),
            "nfs_provisioner_leader".to_string()
        ])
    );
    assert_eq!(
        labels,
        BTreeSet::from(["namespace", "reason", "operation"].map(String::from))
    );
}

#[test]
fn alerts_use_only_exposed_metrics_and_cover_the_failures_users_need() {
    let groups = alert_rule_groups();
    let rules: Vec<&Value> = groups
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect();
    let exprs: Vec<String> = rules
        .iter()
        .map(|r| r["expr"].as_str().expect("expr").to_string())
        .collect();
    check_expressions("alerts.rules.yaml", &exprs);
    let alerts: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    for needed in [
        "NfsProvisionerProvisioningFailing",
        "NfsProvisionerNfsRootNotResponding",
        "NfsProvisionerClaimsWaitingTooLong",
        "NfsProvisionerReclaimFailing",
    ] {
        assert!(alerts.contains(needed), "no alert {needed}");
    }
    for rule in &rules {
        assert!(
            rule["labels"]["severity"].is_string() && rule["annotations"]["summary"].is_string(),
            "{rule}: every alert has a severity and a summary"
        );
    }
}

#[test]
fn dashboard_uses_only_exposed_metrics() {
    let dashboard: Value = serde_json::from_str(&chart_file("dashboard.json")).expect("JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            exprs.push(query.to_string());
        }
    }
    check_expressions("dashboard.json", &exprs);
    // Every metric the binary exposes is on the dashboard.
    let (names, _) = exposed_metrics();
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| promql_names(e).0).collect();
    for family in names
        .iter()
        .filter(|n| !n.ends_with("_sum") && !n.ends_with("_count"))
    {
        assert!(
            used.contains(family),
            "the dashboard does not show {family}"
        );
    }
}

#[test]
fn observability_manifests_match_the_charts_and_the_metrics_service() {
    let docs = documents();
    // The PrometheusRule carries the chart's alert groups, unchanged.
    let rules: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == "PrometheusRule")
        .collect();
    assert_eq!(rules.len(), 1, "one PrometheusRule under deploy/");
    assert_eq!(rules[0].value["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        rules[0].value["spec"]["groups"],
        alert_rule_groups(),
        "{} and charts/nfs-provisioner/files/alerts.rules.yaml differ",
        rules[0].at()
    );
    // The dashboard file is the chart's, byte for byte, and becomes a labelled ConfigMap.
    assert_eq!(
        std::fs::read_to_string(root().join("deploy/observability/nfs-provisioner-dashboard.json"))
            .expect("dashboard copy"),
        chart_file("dashboard.json"),
        "deploy/observability/nfs-provisioner-dashboard.json and the chart's dashboard differ"
    );
    let k = kustomization(&root().join("deploy/observability"));
    let generator = k
        .config_map_generator
        .iter()
        .find(|g| g.name == "nfs-provisioner-dashboard")
        .expect("the dashboard's ConfigMap generator");
    assert_eq!(generator.files, ["nfs-provisioner-dashboard.json"]);
    let options = generator.options.clone().unwrap_or_default();
    assert_eq!(options["labels"]["grafana_dashboard"], "1");
    // The ServiceMonitor scrapes the metrics Service by its labels and port name.
    let monitors: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == "ServiceMonitor")
        .collect();
    assert_eq!(monitors.len(), 1, "one ServiceMonitor under deploy/");
    let monitor = &monitors[0].value;
    let services: Vec<(Doc, k8s_openapi::api::core::v1::Service)> = of_kind(&docs, "Service");
    let service = &services[0].1;
    let service_labels = service.metadata.labels.clone().unwrap_or_default();
    let wanted = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    assert!(!wanted.is_empty());
    for (k, v) in wanted {
        assert_eq!(
            service_labels.get(k).map(String::as_str),
            v.as_str(),
            "the ServiceMonitor's selector {k} does not match the metrics Service"
        );
    }
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"][0].as_str(),
        service.metadata.namespace.as_deref()
    );
    let port = monitor["spec"]["endpoints"][0]["port"].as_str();
    assert!(
        service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .is_some_and(|ports| ports.iter().any(|p| p.name.as_deref() == port)),
        "the ServiceMonitor scrapes port {port:?}, which the Service does not have"
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
}
