//! Checks that only a real API server can answer: whether it admits what a user applies.
//! Without `E2E_KUBECONFIG` they say they were skipped (the fake serves only the kinds the
//! provisioner uses, so it cannot judge a Deployment or a Namespace).

use std::path::{Path, PathBuf};

use kube::api::{DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client};
use serde::Deserialize;

use crate::cluster::{TestCluster, real_cluster_kubeconfig};

/// Objects that exist only from some Kubernetes minor version on (and which the README
/// says so of); on older servers their API must be missing, nothing else may fail.
const MINIMUM_MINOR: &[(&str, &str, u32)] = &[("policy/v1", "PodDisruptionBudget", 21)];

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

fn manifests() -> Vec<(PathBuf, DynamicObject)> {
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
            out.push((file.clone(), object));
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

/// Every object under `deploy/` and `rbac/` is admitted by the server (server-side dry run,
/// namespaced objects in the scenario's namespace), except objects whose API the server is
/// too old for, which must then be missing from it, as the README says.
#[tokio::test]
async fn the_api_server_admits_every_shipped_manifest() {
    if real_cluster_kubeconfig().is_none() {
        eprintln!("real_cluster: E2E_KUBECONFIG is not set: SKIPPED (needs a real API server)");
        return;
    }
    let cluster = TestCluster::start("manifests").await;
    let client = cluster.client.clone();
    let minor = server_minor(&client).await;
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let objects = manifests();
    assert!(objects.len() >= 10, "expected the shipped manifests");
    let mut failures = Vec::new();
    for (file, mut object) in objects {
        let types = object.types.clone().expect("apiVersion and kind");
        let at = format!(
            "{} {} {}",
            file.display(),
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
                // A Pod in a fresh namespace waits for its ServiceAccount's token (v1.19
                // answers 500 ServerTimeout "retry after the token is ... created").
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    match api.create(&dry_run, &object).await {
                        Ok(_) => eprintln!("{at}: admitted by 1.{minor}"),
                        Err(kube::Error::Api(s))
                            if s.reason == "ServerTimeout" && attempts < 60 =>
                        {
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            continue;
                        }
                        Err(e) => failures.push(format!("{at}: refused by 1.{minor}: {e}")),
                    }
                    break;
                }
            }
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
