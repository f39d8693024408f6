//! Checks of the Helm chart (`charts/nfs-provisioner/`).
//!
//! Without Helm: its values are a superset of the Go nfs-subdir-external-provisioner chart's
//! (so a user can switch charts keeping their values file), and its templates read only
//! values it defines. With a `helm` binary (`HELM`, target/tools/bin from
//! scripts/install-tools, or `PATH`; CI installs one) the chart is rendered in several
//! configurations and the objects are compared with what `deploy/` and `rbac/` ship: the same
//! RBAC rules, environment, probes and security settings; the Go chart's values give the Go
//! chart's provisioner name and StorageClass; the restricted mode passes PodSecurity
//! `restricted`. Without one those tests say they were skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use serde_json::Value;

mod kube_objects;

use kube_objects::{only, repository_root, typed};

const CHART: &str = "charts/nfs-provisioner";

/// Every value of the Go chart (kubernetes-sigs/nfs-subdir-external-provisioner, chart 4.0.18,
/// values.yaml, including the keys it lists commented out and the two its helpers read).
const GO_CHART_VALUES: &[&str] = &[
    "replicaCount",
    "strategyType",
    "image.repository",
    "image.tag",
    "image.pullPolicy",
    "imagePullSecrets",
    "nfs.server",
    "nfs.path",
    "nfs.mountOptions",
    "nfs.volumeName",
    "nfs.reclaimPolicy",
    "storageClass.create",
    "storageClass.provisionerName",
    "storageClass.defaultClass",
    "storageClass.name",
    "storageClass.allowVolumeExpansion",
    "storageClass.reclaimPolicy",
    "storageClass.archiveOnDelete",
    "storageClass.onDelete",
    "storageClass.pathPattern",
    "storageClass.accessModes",
    "storageClass.volumeBindingMode",
    "storageClass.annotations",
    "leaderElection.enabled",
    "rbac.create",
    "podSecurityPolicy.enabled",
    "podAnnotations",
    "priorityClassName",
    "podSecurityContext",
    "securityContext",
    "serviceAccount.create",
    "serviceAccount.annotations",
    "serviceAccount.name",
    "resources",
    "nodeSelector",
    "tolerations",
    "affinity",
    "labels",
    "podDisruptionBudget.enabled",
    "podDisruptionBudget.maxUnavailable",
    "nameOverride",
    "fullnameOverride",
];

fn chart_values() -> Value {
    let text = std::fs::read_to_string(repository_root().join(CHART).join("values.yaml"))
        .expect("values.yaml");
    serde_yaml::from_str(&text).expect("values.yaml is YAML")
}

/// `path` (dotted) is a key of `values`, whatever its value (null included).
fn defines(values: &Value, path: &str) -> bool {
    let mut at = values;
    for key in path.split('.') {
        match at.as_object().and_then(|o| o.get(key)) {
            Some(next) => at = next,
            None => return false,
        }
    }
    true
}

#[test]
fn values_are_a_superset_of_the_go_charts() {
    let values = chart_values();
    let missing: Vec<&&str> = GO_CHART_VALUES
        .iter()
        .filter(|path| !defines(&values, path))
        .collect();
    assert!(
        missing.is_empty(),
        "values of the Go chart missing from values.yaml: {missing:?}"
    );
}

fn templates() -> Vec<(PathBuf, String)> {
    let dir = repository_root().join(CHART).join("templates");
    let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .expect("templates/")
        .map(|e| e.expect("entry").path())
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("template");
            (p, text)
        })
        .collect();
    out.sort();
    assert!(out.len() >= 10, "expected the chart's templates");
    out
}

/// The `.Values.a.b` paths a template reads.
fn value_references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(".Values.") {
        let path: String = rest[at + ".Values.".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
            .collect();
        let path = path.trim_end_matches('.').to_string();
        rest = &rest[at + ".Values.".len() + path.len()..];
        out.insert(path);
    }
    out
}

#[test]
fn templates_read_only_values_the_chart_defines() {
    let values = chart_values();
    let mut read = BTreeSet::new();
    for (path, text) in templates() {
        for reference in value_references(&text) {
            assert!(
                defines(&values, &reference),
                "{} reads .Values.{reference}, which values.yaml does not define",
                path.display()
            );
            read.insert(reference);
        }
    }
    // The Go chart's values do something here (except the removed PodSecurityPolicy's,
    // which only NOTES.txt mentions).
    for go in GO_CHART_VALUES {
        assert!(
            read.iter()
                .any(|r| r == go || r.starts_with(&format!("{go}."))),
            "no template reads the Go chart's value {go}"
        );
    }
}

#[test]
fn value_references_finds_nested_paths() {
    assert_eq!(
        value_references("{{ .Values.nfs.server | quote }} {{- with .Values.labels }}"),
        BTreeSet::from(["nfs.server".to_string(), "labels".to_string()])
    );
}

// ---------------------------------------------------------------------------------------------
// Rendered with Helm

fn helm_or_skip() -> Option<PathBuf> {
    let found = kube_objects::tool("helm");
    if found.is_none() {
        eprintln!(
            "SKIPPED: no helm (HELM, target/tools/bin or PATH; scripts/install-tools installs one): the chart is checked only structurally"
        );
    }
    found
}

/// `helm template` of the chart as release `release` in namespace `namespace`, with the
/// values file `values` (YAML text).
fn render(helm: &Path, release: &str, namespace: &str, values: &str) -> Vec<Value> {
    let file = tempfile::NamedTempFile::new().expect("values file");
    std::fs::write(file.path(), values).expect("write values");
    let path = file.path().to_str().expect("UTF-8 path");
    let text = kube_objects::output_of(
        helm,
        &[
            "template",
            release,
            CHART,
            "--namespace",
            namespace,
            "--values",
            path,
        ],
    );
    let docs = kube_objects::parse_documents(&text).expect("rendered YAML");
    for doc in &docs {
        let diffs = kube_objects::typed_round_trip(doc);
        assert!(
            diffs.is_empty(),
            "rendered {} {}: {diffs:?}",
            doc["kind"],
            doc["metadata"]["name"]
        );
    }
    docs
}

/// `helm template` that must fail; its error output.
fn render_error(helm: &Path, values: &str) -> String {
    let file = tempfile::NamedTempFile::new().expect("values file");
    std::fs::write(file.path(), values).expect("write values");
    let out = std::process::Command::new(helm)
        .args(["template", "r", CHART, "--values"])
        .arg(file.path())
        .current_dir(repository_root())
        .output()
        .expect("run helm");
    assert!(!out.status.success(), "rendered although it should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The objects `deploy/` and `rbac/` ship (the files, not a kustomize build: the default mode
/// patches nothing).
fn shipped(kind: &str) -> Value {
    let mut found = Vec::new();
    for dir in ["deploy/base", "rbac"] {
        for entry in std::fs::read_dir(repository_root().join(dir)).expect("manifests") {
            let path = entry.expect("entry").path();
            if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("manifest");
            for doc in kube_objects::parse_documents(&text).expect("YAML") {
                if doc["kind"] == kind {
                    found.push(doc);
                }
            }
        }
    }
    assert_eq!(found.len(), 1, "expected one shipped {kind}");
    found.remove(0)
}

fn rules_of(value: &Value) -> Vec<PolicyRule> {
    typed::<ClusterRole>(value).rules.unwrap_or_default()
}

fn pod_spec(docs: &[Value]) -> PodSpec {
    typed::<Deployment>(only(docs, "Deployment"))
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec")
}

fn container(spec: &PodSpec) -> Container {
    assert_eq!(spec.containers.len(), 1);
    spec.containers[0].clone()
}

fn env(container: &Container) -> BTreeMap<String, Value> {
    container
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => Value::String(v.clone()),
                (None, Some(from)) => serde_json::to_value(from).expect("valueFrom"),
                _ => Value::Null,
            };
            (e.name.clone(), value)
        })
        .collect()
}

const MINIMAL: &str = "nfs:\n  server: nfs.example.com\n  path: /exported/path\n";

#[test]
fn default_render_ships_what_deploy_ships() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let docs = render(&helm, "nfs", "storage", MINIMAL);
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            "Service",
            "StorageClass"
        ])
    );

    // RBAC: exactly the rules of rbac/ (tests/manifests.rs holds those to the binary's calls).
    assert_eq!(
        rules_of(only(&docs, "ClusterRole")),
        rules_of(&shipped("ClusterRole"))
    );
    assert_eq!(
        typed::<Role>(only(&docs, "Role")).rules,
        typed::<Role>(&shipped("Role")).rules
    );
    let sa = only(&docs, "ServiceAccount")["metadata"]["name"].clone();
    for binding in ["ClusterRoleBinding", "RoleBinding"] {
        let b = only(&docs, binding);
        assert_eq!(b["subjects"][0]["name"], sa, "{binding}");
        assert_eq!(b["subjects"][0]["namespace"], "storage", "{binding}");
    }
    let role_name = &only(&docs, "Role")["metadata"]["name"];
    assert_eq!(&only(&docs, "RoleBinding")["roleRef"]["name"], role_name);

    // The pod: the same container as deploy/, but for the names that come from the release.
    let ours = pod_spec(&docs);
    let shipped_pod: PodSpec = typed::<Deployment>(&shipped("Deployment"))
        .spec
        .and_then(|s| s.template.spec)
        .expect("shipped pod spec");
    let (c, s) = (container(&ours), container(&shipped_pod));
    let (ours_env, shipped_env) = (env(&c), env(&s));
    assert_eq!(
        ours_env.keys().collect::<Vec<_>>(),
        shipped_env.keys().collect::<Vec<_>>(),
        "the chart and deploy/ set different environment variables"
    );
    for same in [
        "ENABLE_LEADER_ELECTION",
        "POD_NAMESPACE",
        "POD_NAME",
        "SHUTDOWN_GRACE",
        "LOG_FORMAT",
        "LOG_LEVEL",
    ] {
        assert_eq!(ours_env[same], shipped_env[same], "{same}");
    }
    assert_eq!(ours_env["NFS_SERVER"], "nfs.example.com");
    assert_eq!(ours_env["NFS_PATH"], "/exported/path");
    assert_eq!(c.args, s.args);
    assert_eq!(c.command, s.command);
    assert_eq!(c.ports, s.ports);
    assert_eq!(c.liveness_probe, s.liveness_probe);
    assert_eq!(c.readiness_probe, s.readiness_probe);
    assert_eq!(c.resources, s.resources);
    assert_eq!(c.security_context, s.security_context);
    assert_eq!(ours.security_context, shipped_pod.security_context);
    assert_eq!(
        ours.termination_grace_period_seconds,
        shipped_pod.termination_grace_period_seconds
    );
    let mount = &c.volume_mounts.as_ref().expect("mounts")[0];
    assert_eq!(mount.mount_path, "/persistentvolumes");
    let volume = &ours.volumes.as_ref().expect("volumes")[0];
    assert_eq!(volume.name, mount.name);
    let nfs = volume
        .nfs
        .as_ref()
        .expect("an inline nfs volume without mount options");
    assert_eq!(
        (nfs.server.as_str(), nfs.path.as_str()),
        ("nfs.example.com", "/exported/path")
    );
    let deployment = typed::<Deployment>(only(&docs, "Deployment"));
    let shipped_deployment = typed::<Deployment>(&shipped("Deployment"));
    let (spec, shipped_spec) = (
        deployment.spec.expect("spec"),
        shipped_deployment.spec.expect("spec"),
    );
    assert_eq!(spec.replicas, shipped_spec.replicas);
    assert_eq!(spec.strategy, shipped_spec.strategy);

    // The metrics Service selects the pods and targets the admin port.
    let service = only(&docs, "Service");
    let pod_labels = &only(&docs, "Deployment")["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(
            &pod_labels[k], v,
            "the metrics Service does not select the pods"
        );
    }
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "admin");

    // The class: this provisioner; claims may be resized (the provisioner answers as the
    // external resizer), as the shipped classes allow.
    let class = only(&docs, "StorageClass");
    assert_eq!(class["provisioner"], ours_env["PROVISIONER_NAME"]);
    assert_eq!(class["allowVolumeExpansion"], true);
    assert_eq!(
        class["parameters"],
        serde_json::json!({"archiveOnDelete": "true"})
    );
    assert!(
        !kube_objects::restricted_violations(&ours).is_empty(),
        "the default mode runs as root with capabilities"
    );
}

/// A values file as users of the Go chart write it (their keys, their kind of values), with
/// this project's image.
const GO_STYLE_VALUES: &str = r#"
replicaCount: 1
strategyType: Recreate
image:
  repository: registry.example.com/nfs-provisioner
  tag: "0.1.0"
  pullPolicy: Always
imagePullSecrets:
  - name: regcred
nfs:
  server: 10.0.0.5
  path: /srv/nfs/kubernetes
  mountOptions:
    - nfsvers=4.1
    - hard
  volumeName: nfs-root
  reclaimPolicy: Retain
storageClass:
  create: true
  defaultClass: true
  name: nfs-sc
  allowVolumeExpansion: true
  reclaimPolicy: Retain
  archiveOnDelete: false
  onDelete: retain
  pathPattern: "${.PVC.namespace}/${.PVC.annotations.nfs.io/storage-path}"
  accessModes: ReadWriteMany
  volumeBindingMode: WaitForFirstConsumer
  annotations:
    team: storage
leaderElection:
  enabled: false
rbac:
  create: true
podSecurityPolicy:
  enabled: false
podAnnotations:
  prometheus.io/scrape: "true"
priorityClassName: system-cluster-critical
podSecurityContext:
  fsGroup: 2000
securityContext: {}
serviceAccount:
  create: true
  annotations:
    owner: storage
  name: nfs-sa
resources:
  limits:
    memory: 256Mi
nodeSelector:
  kubernetes.io/os: linux
tolerations:
  - key: storage
    operator: Exists
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - key: kubernetes.io/os
              operator: In
              values: [linux]
labels:
  team: storage
podDisruptionBudget:
  enabled: true
  maxUnavailable: 1
"#;

#[test]
fn a_go_chart_values_file_installs_the_same_class_and_provisioner_name() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    // The Go chart's default provisioner name is cluster.local/<its full name>: release
    // "nfs" gives nfs-nfs-subdir-external-provisioner, a release named after the chart gives
    // itself.
    for (release, expected) in [
        ("nfs", "cluster.local/nfs-nfs-subdir-external-provisioner"),
        (
            "nfs-subdir-external-provisioner",
            "cluster.local/nfs-subdir-external-provisioner",
        ),
    ] {
        let docs = render(&helm, release, "storage", GO_STYLE_VALUES);
        let spec = pod_spec(&docs);
        let c = container(&spec);
        let env = env(&c);
        assert_eq!(env["PROVISIONER_NAME"], expected, "release {release}");
        assert_eq!(only(&docs, "StorageClass")["provisioner"], expected);
        assert_eq!(env["ENABLE_LEADER_ELECTION"], "false");
        assert_eq!(env["NFS_SERVER"], "10.0.0.5");
        assert_eq!(env["NFS_PATH"], "/srv/nfs/kubernetes");

        // The class as the Go chart renders it from these values (its parameters are
        // immutable: an upgrade from that chart must leave them as they are).
        let class = only(&docs, "StorageClass");
        assert_eq!(class["metadata"]["name"], "nfs-sc");
        assert_eq!(
            class["metadata"]["annotations"],
            serde_json::json!({"storageclass.kubernetes.io/is-default-class": "true", "team": "storage"})
        );
        assert_eq!(
            class["parameters"],
            serde_json::json!({
                "archiveOnDelete": "false",
                "onDelete": "retain",
                "pathPattern": "${.PVC.namespace}/${.PVC.annotations.nfs.io/storage-path}"
            })
        );
        assert_eq!(
            class["mountOptions"],
            serde_json::json!(["nfsvers=4.1", "hard"])
        );
        assert_eq!(class["reclaimPolicy"], "Retain");
        assert_eq!(class["volumeBindingMode"], "WaitForFirstConsumer");
        assert_eq!(class["allowVolumeExpansion"], true);

        // Mount options: the export goes through the chart's PV and claim.
        let pv = only(&docs, "PersistentVolume");
        let pvc = only(&docs, "PersistentVolumeClaim");
        assert_eq!(pv["spec"]["mountOptions"], class["mountOptions"]);
        assert_eq!(pv["spec"]["nfs"]["server"], "10.0.0.5");
        assert_eq!(
            pv["spec"]["accessModes"],
            serde_json::json!(["ReadWriteMany"])
        );
        assert_eq!(pv["spec"]["claimRef"]["name"], pvc["metadata"]["name"]);
        assert_eq!(pv["spec"]["claimRef"]["namespace"], "storage");
        assert_eq!(pvc["spec"]["volumeName"], pv["metadata"]["name"]);
        let volume = &spec.volumes.as_ref().expect("volumes")[0];
        assert_eq!(volume.name, "nfs-root");
        assert_eq!(
            volume
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            pvc["metadata"]["name"].as_str()
        );

        // The rest of the pod.
        let deployment = only(&docs, "Deployment");
        assert_eq!(deployment["spec"]["replicas"], 1);
        assert_eq!(
            deployment["spec"]["strategy"],
            serde_json::json!({"type": "Recreate"})
        );
        assert_eq!(
            deployment["spec"]["template"]["metadata"]["labels"]["team"],
            "storage"
        );
        assert_eq!(
            deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"],
            "true"
        );
        assert_eq!(
            spec.priority_class_name.as_deref(),
            Some("system-cluster-critical")
        );
        assert_eq!(spec.service_account_name.as_deref(), Some("nfs-sa"));
        assert_eq!(
            only(&docs, "ServiceAccount")["metadata"]["annotations"]["owner"],
            "storage"
        );
        assert_eq!(spec.image_pull_secrets.as_ref().map(Vec::len), Some(1));
        assert_eq!(spec.tolerations.as_ref().map(Vec::len), Some(1));
        assert!(
            spec.affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref())
                .is_some()
        );
        assert_eq!(
            spec.security_context.as_ref().and_then(|s| s.fs_group),
            Some(2000)
        );
        assert_eq!(
            c.image.as_deref(),
            Some("registry.example.com/nfs-provisioner:0.1.0")
        );
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        // `securityContext: {}` (the Go chart's default, often copied) keeps this chart's
        // hardened default rather than emptying it.
        let sc = c.security_context.as_ref().expect("securityContext");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let pdb = only(&docs, "PodDisruptionBudget");
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        for (k, v) in pdb["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("selector")
        {
            assert_eq!(&deployment["spec"]["template"]["metadata"]["labels"][k], v);
        }
        for doc in &docs {
            assert_eq!(
                doc["metadata"]["labels"]["team"], "storage",
                "{}",
                doc["kind"]
            );
        }
    }
}

#[test]
fn mistakes_in_values_fail_with_a_message() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let error = render_error(&helm, "nfs:\n  path: /x\n");
    assert!(error.contains("nfs.server is required"), "{error}");
    // The Go provisioner's image with this chart's RBAC (a Lease, no Endpoints) would never
    // lead: refused with a hint.
    let error = render_error(
        &helm,
        "nfs:\n  server: s\nimage:\n  repository: registry.k8s.io/sig-storage/nfs-subdir-external-provisioner\n",
    );
    assert!(error.contains("the Go provisioner's image"), "{error}");
    let error = render_error(
        &helm,
        "nfs:\n  server: s\npodSecurity:\n  restricted: true\n  runAsUser: 0\n",
    );
    assert!(error.contains("must not be 0"), "{error}");
}

#[test]
fn restricted_mode_passes_podsecurity_restricted_like_deploy_restricted() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let docs = render(
        &helm,
        "nfs",
        "storage",
        &format!("{MINIMAL}podSecurity:\n  restricted: true\n"),
    );
    let spec = pod_spec(&docs);
    let violations = kube_objects::restricted_violations(&spec);
    assert!(violations.is_empty(), "{violations:?}");
    let c = container(&spec);
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(
        (sc.run_as_user, sc.run_as_group),
        (Some(65532), Some(65532))
    );
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    // The export through the chart's static PV and claim, naming the same export as the
    // environment.
    let pv = only(&docs, "PersistentVolume");
    let pvc = only(&docs, "PersistentVolumeClaim");
    assert_eq!(pv["spec"]["nfs"]["server"], env(&c)["NFS_SERVER"]);
    assert_eq!(pv["spec"]["nfs"]["path"], env(&c)["NFS_PATH"]);
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    assert_eq!(
        spec.volumes.as_ref().expect("volumes")[0]
            .persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.as_str()),
        pvc["metadata"]["name"].as_str()
    );
    // The same container security settings as deploy/restricted/ (read from its
    // kustomization's patch).
    let overlay =
        std::fs::read_to_string(repository_root().join("deploy/restricted/kustomization.yaml"))
            .expect("restricted overlay");
    let overlay: Value = serde_yaml::from_str(&overlay).expect("YAML");
    let patch = overlay["patches"]
        .as_array()
        .expect("patches")
        .iter()
        .find(|p| p["target"]["kind"] == "Deployment")
        .expect("the Deployment's patch");
    let ops: Value =
        serde_yaml::from_str(patch["patch"].as_str().expect("patch text")).expect("JSON patch");
    let container_sc = ops
        .as_array()
        .expect("operations")
        .iter()
        .find(|op| op["path"] == "/spec/template/spec/containers/0/securityContext")
        .expect("the container securityContext operation");
    assert_eq!(
        serde_json::to_value(sc).expect("securityContext"),
        container_sc["value"],
        "the chart's restricted securityContext differs from deploy/restricted/"
    );
}

#[test]
fn observability_renders_the_shared_alerts_and_dashboard() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    let docs = render(
        &helm,
        "nfs",
        "storage",
        &format!(
            "{MINIMAL}metrics:\n  serviceMonitor:\n    enabled: true\n  prometheusRule:\n    enabled: true\n  dashboard:\n    enabled: true\n"
        ),
    );
    let files = repository_root().join(CHART).join("files");
    let rules: Value = serde_yaml::from_str(
        &std::fs::read_to_string(files.join("alerts.rules.yaml")).expect("rules"),
    )
    .expect("rules YAML");
    assert_eq!(
        only(&docs, "PrometheusRule")["spec"]["groups"],
        rules["groups"]
    );
    let dashboard = std::fs::read_to_string(files.join("dashboard.json")).expect("dashboard");
    let config_map = only(&docs, "ConfigMap");
    assert_eq!(
        config_map["data"]["nfs-provisioner.json"]
            .as_str()
            .map(str::trim_end),
        Some(dashboard.trim_end())
    );
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    let monitor = only(&docs, "ServiceMonitor");
    let service = only(&docs, "Service");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "ServiceMonitor selector {k}"
        );
    }
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"][0],
        "storage"
    );
}

/// Two extra exports, one with mount options and a StorageClass.
const EXTRA_EXPORTS: &str = r#"
extraExports:
  - name: fast
    server: fast.nfs.example.com
    path: /exports/fast
    mountOptions: [nfsvers=4.1]
    storageClass:
      name: nfs-fast
      onDelete: delete
  - name: slow
    server: slow.nfs.example.com
    path: /exports/slow
"#;

#[test]
fn extra_exports_are_listed_mounted_and_given_their_class() {
    let Some(helm) = helm_or_skip() else {
        return;
    };
    for restricted in [false, true] {
        let values = format!("{MINIMAL}{EXTRA_EXPORTS}podSecurity:\n  restricted: {restricted}\n");
        let docs = render(&helm, "nfs", "storage", &values);
        let spec = pod_spec(&docs);
        let c = container(&spec);
        let mode = if restricted { "restricted" } else { "default" };
        if restricted {
            let violations = kube_objects::restricted_violations(&spec);
            assert!(violations.is_empty(), "{violations:?}");
        }

        // The list the binary reads, parsed by the binary's own loader.
        let config_map = only(&docs, "ConfigMap");
        let file = tempfile::NamedTempFile::new().expect("exports file");
        std::fs::write(
            file.path(),
            config_map["data"]["exports.yaml"]
                .as_str()
                .expect("exports.yaml"),
        )
        .expect("write");
        let exports = nfs_provisioner::exports_file::load(file.path())
            .unwrap_or_else(|e| panic!("{mode}: the chart's exports.yaml: {e}"));
        assert_eq!(
            exports.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["fast", "slow"]
        );

        // NFS_EXPORTS_CONFIG names the file in the ConfigMap's mount.
        let config = env(&c)["NFS_EXPORTS_CONFIG"]
            .as_str()
            .expect("NFS_EXPORTS_CONFIG")
            .to_string();
        let mounts = c.volume_mounts.clone().unwrap_or_default();
        let volumes = spec.volumes.clone().unwrap_or_default();
        let volume_at = |path: &str| {
            let mount = mounts
                .iter()
                .find(|m| m.mount_path == path)
                .unwrap_or_else(|| panic!("{mode}: nothing mounted at {path}"));
            volumes
                .iter()
                .find(|v| v.name == mount.name)
                .unwrap_or_else(|| panic!("{mode}: no volume {}", mount.name))
                .clone()
        };
        let config = Path::new(&config);
        assert_eq!(
            config.file_name().and_then(|n| n.to_str()),
            Some("exports.yaml")
        );
        let config_volume = volume_at(config.parent().and_then(|p| p.to_str()).expect("dir"));
        assert_eq!(
            config_volume.config_map.as_ref().map(|m| m.name.as_str()),
            config_map["metadata"]["name"].as_str()
        );

        // Each export is mounted where the list says, from its own server and path (inline,
        // or through the chart's pre-bound PV and claim).
        for export in &exports {
            let volume = volume_at(export.mount_path.to_str().expect("path"));
            let (server, path) = match (&volume.nfs, &volume.persistent_volume_claim) {
                (Some(nfs), None) => (nfs.server.clone(), nfs.path.clone()),
                (None, Some(claim)) => {
                    let pvc = kube_objects::of_kind(&docs, "PersistentVolumeClaim")
                        .into_iter()
                        .find(|p| p["metadata"]["name"] == claim.claim_name.as_str())
                        .unwrap_or_else(|| panic!("{mode}: no claim {}", claim.claim_name));
                    let pv = kube_objects::of_kind(&docs, "PersistentVolume")
                        .into_iter()
                        .find(|v| v["metadata"]["name"] == pvc["spec"]["volumeName"])
                        .unwrap_or_else(|| panic!("{mode}: no volume for {}", claim.claim_name));
                    assert_eq!(pv["spec"]["claimRef"]["name"], pvc["metadata"]["name"]);
                    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
                    if export.name == "fast" {
                        assert_eq!(
                            pv["spec"]["mountOptions"],
                            serde_json::json!(["nfsvers=4.1"])
                        );
                    }
                    (
                        pv["spec"]["nfs"]["server"]
                            .as_str()
                            .expect("server")
                            .to_string(),
                        pv["spec"]["nfs"]["path"]
                            .as_str()
                            .expect("path")
                            .to_string(),
                    )
                }
                other => panic!("{mode}: export {} mounted from {other:?}", export.name),
            };
            assert_eq!(server, export.server, "{mode}: {}", export.name);
            assert_eq!(path, export.path.as_str(), "{mode}: {}", export.name);
            let inline = volume.nfs.is_some();
            let with_options = export.name == "fast";
            assert_eq!(
                inline,
                !restricted && !with_options,
                "{mode}: export {} inline {inline}",
                export.name
            );
        }

        // The class of `fast` picks it, and its parameters parse.
        let class = kube_objects::of_kind(&docs, "StorageClass")
            .into_iter()
            .find(|c| c["metadata"]["name"] == "nfs-fast")
            .expect("class nfs-fast");
        assert_eq!(class["provisioner"], env(&c)["PROVISIONER_NAME"]);
        let parameters: BTreeMap<String, String> =
            serde_json::from_value(class["parameters"].clone()).expect("string parameters");
        let parsed = nfs_provisioner::parameters::ClassParameters::parse(&parameters)
            .unwrap_or_else(|e| panic!("nfs-fast: {e}"));
        assert_eq!(parsed.export.as_deref(), Some("fast"));
        assert_eq!(class["mountOptions"], serde_json::json!(["nfsvers=4.1"]));
    }
    let error = render_error(
        &helm,
        &format!("{MINIMAL}extraExports:\n  - name: default\n    server: s\n    path: /p\n"),
    );
    assert!(
        error.contains("the name default is nfs.*'s export"),
        "{error}"
    );
}
