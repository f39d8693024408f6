//! Checks that only a real API server can answer: whether it admits what a user applies.
//! Without `E2E_KUBECONFIG` they say they were skipped (the fake serves only the kinds the
//! provisioner uses, so it cannot judge a Deployment or a Namespace).

use std::path::{Path, PathBuf};

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client};
use serde::Deserialize;

use crate::cluster::{TestCluster, real_cluster_kubeconfig};

/// Objects that exist only from some Kubernetes minor version on (and which the README
/// says so of); on older servers their API must be missing, nothing else may fail.
const MINIMUM_MINOR: &[(&str, &str, u32)] = &[("policy/v1", "PodDisruptionBudget", 21)];

/// Objects of the Prometheus Operator's CRDs (deploy/observability/, the chart's
/// ServiceMonitor and PrometheusRule): dry-run only where the CRDs are installed, which the
/// test control planes are not.
const OPERATOR_API: &str = "monitoring.coreos.com/v1";

/// PodSecurity admission is built in from this minor version on.
const POD_SECURITY_MINOR: u32 = 23;

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("manifest directory")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            // A kustomize Component holds patches and generator inputs, not whole objects;
            // it is rendered and checked with its base in tests/manifests.rs.
            if !is_component(&path) {
                yaml_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "yaml")
            && path.file_name().is_some_and(|n| n != "kustomization.yaml")
        {
            out.push(path);
        }
    }
}

fn is_component(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("kustomization.yaml"))
        .is_ok_and(|k| k.lines().any(|l| l.trim() == "kind: Component"))
}

fn manifests() -> Vec<(String, DynamicObject)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    yaml_files(&root.join("deploy"), &mut files);
    yaml_files(&root.join("rbac"), &mut files);
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read manifest");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).expect("YAML document");
            if value.is_null() {
                continue;
            }
            let object: DynamicObject = serde_yaml::from_value(value).expect("a Kubernetes object");
            out.push((file.display().to_string(), object));
        }
    }
    out
}

async fn server_minor(client: &Client) -> u32 {
    let info = client.apiserver_version().await.expect("server version");
    info.minor
        .trim_end_matches('+')
        .parse()
        .expect("numeric minor version")
}

/// The chart's objects as `helm template` renders them for this server's version, in the
/// configurations users install: defaults, mount options (the export through a PV and claim,
/// with a PodDisruptionBudget), the restricted mode with an extra export. `None` without a
/// helm binary.
fn chart_objects(minor: u32) -> Option<Vec<(String, DynamicObject)>> {
    let Some(helm) = crate::kube_objects::tool("helm") else {
        eprintln!(
            "real_cluster: no helm (scripts/install-tools installs one): the chart's objects are not dry-run"
        );
        return None;
    };
    let configurations = [
        ("defaults", "nfs:\n  server: nfs.example.test\n"),
        (
            "nfs.mountOptions",
            "nfs:\n  server: nfs.example.test\n  mountOptions: [nfsvers=4.1]\npodDisruptionBudget:\n  enabled: true\n",
        ),
        (
            "podSecurity.restricted, extraExports",
            "nfs:\n  server: nfs.example.test\npodSecurity:\n  restricted: true\nstorageClass:\n  create: false\nextraExports:\n  - name: second\n    server: nfs2.example.test\n    path: /second\n    storageClass:\n      name: dry-nfs-second\n",
        ),
    ];
    let mut out = Vec::new();
    for (index, (name, values)) in configurations.iter().enumerate() {
        let file = tempfile::NamedTempFile::new().expect("values file");
        std::fs::write(file.path(), values).expect("values");
        // A release name per configuration: their cluster-scoped objects differ by name.
        let release = format!("dry{index}");
        let text = crate::kube_objects::output_of(
            &helm,
            &[
                "template",
                &release,
                "charts/nfs-provisioner",
                "--kube-version",
                &format!("1.{minor}.0"),
                "--values",
                file.path().to_str().expect("path"),
            ],
        );
        for value in crate::kube_objects::parse_documents(&text).expect("rendered YAML") {
            // The default configuration's class is the shipped nfs-client: one is enough.
            if index > 0 && value["kind"] == "StorageClass" {
                continue;
            }
            let object: DynamicObject = serde_json::from_value(value).expect("object");
            out.push((format!("chart ({name})"), object));
        }
    }
    Some(out)
}

/// Server-side dry run of every object (namespaced ones in the scenario's namespace), except
/// objects whose API the server is too old for, which must then be missing from it, as the
/// README says. Returns the refusals.
async fn dry_run_all(
    cluster: &TestCluster,
    minor: u32,
    objects: Vec<(String, DynamicObject)>,
) -> Vec<String> {
    let client = cluster.client.clone();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let mut failures = Vec::new();
    for (source, mut object) in objects {
        let types = object.types.clone().expect("apiVersion and kind");
        let at = format!(
            "{source} {} {}",
            types.kind,
            object.metadata.name.as_deref().unwrap_or("")
        );
        let gvk = GroupVersionKind::try_from(&types).expect("apiVersion");
        let needed = MINIMUM_MINOR
            .iter()
            .find(|(api, kind, _)| *api == types.api_version && *kind == types.kind)
            .map(|(_, _, minor)| *minor);
        let resource = kube::discovery::pinned_kind(&client, &gvk).await;
        match (resource, needed) {
            (Err(_), _) if types.api_version == OPERATOR_API => {
                eprintln!("{at}: the Prometheus Operator's CRDs are not installed: not dry-run");
                continue;
            }
            (Err(_), Some(needed)) if minor < needed => {
                eprintln!("{at}: not served by 1.{minor} (needs 1.{needed}), as documented");
                continue;
            }
            (Ok(_), Some(needed)) if minor < needed => {
                failures.push(format!(
                    "{at}: served by 1.{minor}, documented as 1.{needed}+"
                ));
                continue;
            }
            (Err(e), _) => {
                failures.push(format!("{at}: kind not served: {e}"));
                continue;
            }
            (Ok((resource, capabilities)), _) => {
                let api: Api<DynamicObject> =
                    if capabilities.scope == kube::discovery::Scope::Namespaced {
                        object.metadata.namespace = Some(cluster.namespace.clone());
                        Api::namespaced_with(client.clone(), &cluster.namespace, &resource)
                    } else {
                        Api::all_with(client.clone(), &resource)
                    };
                match create_retrying_token_wait(&api, &dry_run, &object).await {
                    Ok(()) => eprintln!("{at}: admitted by 1.{minor}"),
                    Err(e) => failures.push(format!("{at}: refused by 1.{minor}: {e}")),
                }
            }
        }
    }
    failures
}

/// Creates `object` (a dry run when `params` say so). A Pod in a fresh namespace waits for
/// its ServiceAccount's token (v1.19 answers 500 ServerTimeout "retry after the token is ...
/// created"): retried for up to a minute.
async fn create_retrying_token_wait<K>(
    api: &Api<K>,
    params: &PostParams,
    object: &K,
) -> kube::Result<()>
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        match api.create(params, object).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.reason == "ServerTimeout" && attempts < 60 => {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Every object under `deploy/` and `rbac/`, and the chart's objects in the configurations
/// users install, are admitted by the server (server-side dry run).
#[tokio::test]
async fn the_api_server_admits_every_shipped_manifest() {
    if real_cluster_kubeconfig().is_none() {
        eprintln!("real_cluster: E2E_KUBECONFIG is not set: SKIPPED (needs a real API server)");
        return;
    }
    let cluster = TestCluster::start("manifests").await;
    let minor = server_minor(&cluster.client).await;
    let mut objects = manifests();
    assert!(objects.len() >= 10, "expected the shipped manifests");
    objects.extend(chart_objects(minor).unwrap_or_default());
    let failures = dry_run_all(&cluster, minor, objects).await;
    cluster.cleanup().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A Pod built from a Deployment's pod template, as its ReplicaSet would create it.
fn pod_from(deployment: &serde_json::Value, name: &str) -> Pod {
    let deployment: Deployment = serde_json::from_value(deployment.clone()).expect("a Deployment");
    let template = deployment.spec.expect("spec").template;
    let mut metadata = template.metadata.unwrap_or_default();
    metadata.name = Some(name.to_string());
    metadata.namespace = None;
    Pod {
        metadata,
        spec: template.spec,
        ..Default::default()
    }
}

/// The pod of every install mode with the PodSecurity level it must pass: deploy/ and the
/// chart's defaults (root with CHOWN, FOWNER, DAC_OVERRIDE and an nfs volume: `baseline`),
/// deploy/restricted/ and the chart's podSecurity.restricted (`restricted`).
fn install_mode_pods() -> Vec<(String, &'static str, Pod)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kubectl = crate::kube_objects::tool("kubectl").expect(
        "kubectl (KUBECTL, target/tools/bin from scripts/install-tools, or PATH) to build deploy/restricted/",
    );
    let base =
        std::fs::read_to_string(root.join("deploy/base/deployment.yaml")).expect("deployment");
    let base = crate::kube_objects::parse_documents(&base).expect("YAML");
    let restricted = crate::kube_objects::kustomize(&kubectl, "deploy/restricted");
    let mut pods = vec![
        (
            "deploy/".to_string(),
            "baseline",
            pod_from(
                crate::kube_objects::only(&base, "Deployment"),
                "deploy-default",
            ),
        ),
        (
            "deploy/restricted/".to_string(),
            "restricted",
            pod_from(
                crate::kube_objects::only(&restricted, "Deployment"),
                "deploy-restricted",
            ),
        ),
    ];
    match crate::kube_objects::tool("helm") {
        None => eprintln!(
            "real_cluster: no helm (scripts/install-tools installs one): the chart's pods are not checked"
        ),
        Some(helm) => {
            for (mode, level, values) in [
                ("defaults", "baseline", "nfs:\n  server: s\n"),
                (
                    "podSecurity.restricted",
                    "restricted",
                    "nfs:\n  server: s\npodSecurity:\n  restricted: true\nextraExports:\n  - name: second\n    server: s2\n    path: /second\n",
                ),
            ] {
                let file = tempfile::NamedTempFile::new().expect("values file");
                std::fs::write(file.path(), values).expect("values");
                let text = crate::kube_objects::output_of(
                    &helm,
                    &[
                        "template",
                        "nfs",
                        "charts/nfs-provisioner",
                        "--values",
                        file.path().to_str().expect("path"),
                    ],
                );
                let docs = crate::kube_objects::parse_documents(&text).expect("rendered YAML");
                let name = format!("chart-{}", mode.replace('.', "-").to_lowercase());
                pods.push((
                    format!("chart ({mode})"),
                    level,
                    pod_from(crate::kube_objects::only(&docs, "Deployment"), &name),
                ));
            }
        }
    }
    pods
}

/// A namespace enforcing PodSecurity `level` (the latest version of it), with the
/// ServiceAccounts the pods name (the ServiceAccount admission refuses a pod whose account
/// does not exist).
async fn namespace_enforcing(
    client: &Client,
    name: &str,
    level: &str,
    accounts: &BTreeSet<String>,
) {
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "labels": {
                "pod-security.kubernetes.io/enforce": level,
                "pod-security.kubernetes.io/enforce-version": "latest",
            }
        }
    }))
    .expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("create the namespace");
    for account in accounts {
        let sa: ServiceAccount =
            serde_json::from_value(serde_json::json!({"metadata": {"name": account}})).expect("sa");
        Api::<ServiceAccount>::namespaced(client.clone(), name)
            .create(&PostParams::default(), &sa)
            .await
            .expect("create the ServiceAccount");
    }
}

/// PodSecurity admission on the real API server: a Pod built from the Deployment's pod
/// template of each install mode is admitted (server-side dry run) in a namespace enforcing
/// the level the mode promises, and the default mode's pod is refused at `restricted`, so the
/// check can fail. Servers older than 1.23 have no PodSecurity admission: there the pods are
/// only dry-run in a plain namespace, and the test says so.
#[tokio::test]
async fn every_install_modes_pod_is_admitted_at_its_podsecurity_level() {
    if real_cluster_kubeconfig().is_none() {
        eprintln!("real_cluster: E2E_KUBECONFIG is not set: SKIPPED (needs a real API server)");
        return;
    }
    let cluster = TestCluster::start("podsecurity").await;
    let client = cluster.client.clone();
    let minor = server_minor(&client).await;
    let pods = install_mode_pods();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let accounts: BTreeSet<String> = pods
        .iter()
        .filter_map(|(_, _, p)| p.spec.as_ref()?.service_account_name.clone())
        .collect();
    let mut failures = Vec::new();
    if minor < POD_SECURITY_MINOR {
        eprintln!(
            "real_cluster: v1.{minor} has no PodSecurity admission (built in from 1.{POD_SECURITY_MINOR}): SKIPPED the admission check; the pods are only dry-run in a plain namespace"
        );
        let plain = format!("{}-plain", cluster.namespace);
        let namespace: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": plain}})).expect("ns");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("create the namespace");
        for account in &accounts {
            let sa: ServiceAccount =
                serde_json::from_value(serde_json::json!({"metadata": {"name": account}}))
                    .expect("sa");
            Api::<ServiceAccount>::namespaced(client.clone(), &plain)
                .create(&PostParams::default(), &sa)
                .await
                .expect("create the ServiceAccount");
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &plain);
        for (mode, _, pod) in &pods {
            match create_retrying_token_wait(&api, &dry_run, pod).await {
                Ok(()) => eprintln!("{mode}: pod admitted by 1.{minor} (no PodSecurity)"),
                Err(e) => failures.push(format!("{mode}: pod refused by 1.{minor}: {e}")),
            }
        }
        let _ = Api::<Namespace>::all(client.clone())
            .delete(&plain, &Default::default())
            .await;
    } else {
        let mut namespaces = Vec::new();
        for level in ["baseline", "restricted"] {
            let name = format!("{}-{level}", cluster.namespace);
            namespace_enforcing(&client, &name, level, &accounts).await;
            namespaces.push((level, name));
        }
        for (namespace_level, namespace) in &namespaces {
            let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
            for (mode, level, pod) in &pods {
                // A restricted pod passes baseline too; a baseline pod must be refused at
                // restricted.
                let admissible = *namespace_level == "baseline" || *level == "restricted";
                match (create_retrying_token_wait(&api, &dry_run, pod).await, admissible) {
                    (Ok(()), true) => {
                        eprintln!("{mode}: pod admitted at PodSecurity {namespace_level} by 1.{minor}")
                    }
                    (Err(kube::Error::Api(s)), false)
                        if s.code == 403 && s.message.contains("violates PodSecurity") =>
                    {
                        eprintln!("{mode}: pod refused at PodSecurity {namespace_level}, as expected: {}", s.message)
                    }
                    (Ok(()), false) => failures.push(format!(
                        "{mode}: pod admitted at PodSecurity {namespace_level}, which it cannot pass: the check proves nothing"
                    )),
                    (Err(e), _) => failures.push(format!(
                        "{mode}: pod refused at PodSecurity {namespace_level} by 1.{minor}: {e}"
                    )),
                }
            }
        }
        for (_, namespace) in &namespaces {
            let _ = Api::<Namespace>::all(client.clone())
                .delete(namespace, &Default::default())
                .await;
        }
    }
    cluster.cleanup().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The real control plane's directory (`control-plane start VERSION DIR`), when the scenario
/// may stop and restart its processes.
fn control_plane_dir() -> Option<PathBuf> {
    std::env::var_os("E2E_CONTROL_PLANE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// Stops the control plane's kube-apiserver (SIGTERM, as a rolling restart does), waits
/// `down`, and starts it again with the same command line, recording the new pid where
/// `control-plane stop` looks for it. The new process outlives the test (it is the control
/// plane's from now on; `control-plane stop` ends it), so it is never waited for.
#[allow(clippy::zombie_processes)]
fn restart_apiserver(dir: &Path, down: std::time::Duration) {
    use std::os::unix::process::CommandExt;
    let pid_file = dir.join("apiserver.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("apiserver.pid")
        .trim()
        .parse()
        .expect("pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("apiserver command line");
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("stop kube-apiserver");
    while Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(down);
    let log = std::fs::File::create(dir.join("logs/apiserver-restarted.log")).expect("log");
    let child = std::process::Command::new(&args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("start kube-apiserver again");
    std::fs::write(&pid_file, child.id().to_string()).expect("record the new pid");
}

/// A real API outage in the middle of a burst: the kube-apiserver process is stopped and
/// started again. The provisioner (the same instance, never restarted) reconnects its
/// watches and provisions every claim exactly once, those created before the outage and
/// those created after it. Every other scenario on that control plane sees the outage too, so
/// this one runs alone (`scripts/e2e-real` runs it after the others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provisioner_recovers_from_an_api_server_restart_without_restarting() {
    let (Some(_), Some(dir)) = (real_cluster_kubeconfig(), control_plane_dir()) else {
        eprintln!(
            "real_cluster: E2E_KUBECONFIG and E2E_CONTROL_PLANE are not both set: SKIPPED (needs a real control plane it may restart)"
        );
        return;
    };
    // The provisioner's log, shown if the scenario fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        ))
        .with_test_writer()
        .try_init();
    let cluster = TestCluster::start("apiserver-restart").await;
    let root = tempfile::tempdir().expect("temp NFS root");
    let provisioner = crate::provisioner::RunningProvisioner::start(
        &cluster.provisioner_options(root.path()),
        cluster.provisioner_config(),
    );
    let class = cluster
        .create_class("outage", &[("onDelete", "delete")], "Delete")
        .await;
    let before: Vec<String> = (0..40).map(|i| format!("before-{i:02}")).collect();
    let after: Vec<String> = (0..20).map(|i| format!("after-{i:02}")).collect();
    let first: Vec<_> = before
        .iter()
        .map(|n| TestCluster::claim(n, &class))
        .collect();
    futures::future::join_all(first.iter().map(|c| cluster.create_claim(c))).await;
    // Mid-burst: at least one claim is Bound, so the provisioner is at work.
    cluster
        .eventually("a first claim Bound", || async {
            let list = cluster.claims().list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
                .then_some(())
        })
        .await;
    let restart_dir = dir.clone();
    tokio::task::spawn_blocking(move || {
        restart_apiserver(&restart_dir, std::time::Duration::from_secs(3))
    })
    .await
    .expect("restart");
    // Back up: create the rest (retrying while the server finishes starting).
    for name in &after {
        let claim = TestCluster::claim(name, &class);
        cluster
            .eventually(
                &format!("claim {name} created after the restart"),
                || async {
                    cluster
                        .claims()
                        .create(&PostParams::default(), &claim)
                        .await
                        .ok()
                        .map(|_| ())
                },
            )
            .await;
    }
    let all = before.len() + after.len();
    let claims = cluster.wait_all_bound(all).await;
    assert!(provisioner.is_running(), "the provisioner stopped");
    assert_eq!(
        cluster.our_volumes().await.len(),
        all,
        "exactly one PV per claim"
    );
    for claim in &claims {
        let uid = claim.metadata.uid.as_deref().expect("uid");
        let pv = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .expect("bound");
        assert_eq!(pv, format!("pvc-{uid}"), "bound to its own PV");
    }
    assert_eq!(
        crate::cluster::entries(root.path()).len(),
        all,
        "one directory per claim"
    );
    provisioner.stop();
    cluster.cleanup().await;
}
