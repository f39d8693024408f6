//! "Try it without a cluster" (`scripts/try-it`, README): kubectl against the fake API server
//! with the real provisioner binary attached. Applying `deploy/examples/test-claim.yaml` gives
//! a bound claim whose directory appears under the local NFS root; deleting the claim archives
//! it, as class `nfs-client` says. Skipped, with the reason printed, when kubectl is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fake_apiserver::local_cluster::{
    LocalCluster, LocalClusterOptions, ProvisionerLog, nfs_client_class,
};
use serde::Deserialize;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `kubectl` on PATH, or why not.
fn kubectl_binary() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
        .ok_or_else(|| "kubectl is not on PATH".to_string())
}

struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    /// kubectl caches discovery under $HOME; the sandbox leaves only a scratch dir writable.
    home: PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(&self.binary)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", &self.home)
            .env_remove("KUBECONFIG")
            .output()
            .expect("kubectl runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args);
        assert!(ok, "kubectl {args:?} failed:\n{text}");
        text
    }

    fn wait_for(&self, what: &str, args: &[&str], done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, text) = self.run(args);
            if done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Cells of the line of `kubectl get` output that starts with `name`.
fn row<'a>(output: &'a str, name: &str) -> Vec<&'a str> {
    output
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no line for {name} in:\n{output}"))
        .split_whitespace()
        .collect()
}

#[test]
fn kubectl_apply_gives_a_bound_claim_and_its_directory_without_a_cluster() {
    let kubectl = match kubectl_binary() {
        Ok(k) => k,
        Err(why) => {
            eprintln!("try_it: SKIPPED: {why}; install kubectl to run this test");
            return;
        }
    };
    let work = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let log = work.path().join("provisioner.log");
    let cluster = runtime
        .block_on(LocalCluster::start(LocalClusterOptions {
            addr: "127.0.0.1:0".parse().unwrap(),
            dir: work.path().join("try-it"),
            provisioner: PathBuf::from(env!("CARGO_BIN_EXE_nfs-provisioner")),
            provisioner_log: ProvisionerLog::File(log.clone()),
        }))
        .expect("local cluster starts");
    let home = work.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let k = Kubectl {
        binary: kubectl,
        kubeconfig: cluster.kubeconfig().to_path_buf(),
        home,
    };
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let claim_file = repo("deploy/examples/test-claim.yaml");
    let applied = k.ok(&["apply", "-f", claim_file.to_str().unwrap()]);
    assert!(
        applied.contains("persistentvolumeclaim/test-claim created"),
        "{applied}"
    );
    k.wait_for(
        "test-claim to be Bound",
        &["get", "pvc", "test-claim", "-o", "jsonpath={.status.phase}"],
        |out| out == "Bound",
    );

    // What the README shows: a Bound claim and its Bound volume, in kubectl's own columns.
    let listing = k.ok(&["get", "pvc,pv"]);
    let claim = row(&listing, "persistentvolumeclaim/test-claim");
    let pv_name = claim[2].to_string();
    assert!(pv_name.starts_with("pvc-"), "{listing}");
    assert_eq!(
        &claim[1..],
        &[
            "Bound",
            &pv_name,
            "1Mi",
            "RWX",
            "nfs-client",
            "<unset>",
            claim[7]
        ],
        "{listing}"
    );
    let pv = row(&listing, &format!("persistentvolume/{pv_name}"));
    assert_eq!(
        &pv[1..8],
        &[
            "1Mi",
            "RWX",
            "Delete",
            "Bound",
            "default/test-claim",
            "nfs-client",
            "<unset>"
        ],
        "{listing}"
    );

    // The claim's directory on the local "NFS root", which the PV names.
    let dir = format!("default-test-claim-{pv_name}");
    assert!(
        cluster.nfs_root().join(&dir).is_dir(),
        "no {dir} under {}; provisioner log:\n{}",
        cluster.nfs_root().display(),
        show_log()
    );
    let nfs_path = k.ok(&["get", "pv", &pv_name, "-o", "jsonpath={.spec.nfs.path}"]);
    assert_eq!(Path::new(&nfs_path), cluster.nfs_root().join(&dir));

    // Applying again changes nothing; the claim's events are there.
    let again = k.ok(&["apply", "-f", claim_file.to_str().unwrap()]);
    assert!(
        again.contains("persistentvolumeclaim/test-claim unchanged"),
        "{again}"
    );
    let events = k.ok(&["get", "events.events.k8s.io", "-n", "default"]);
    assert!(events.contains("ProvisioningSucceeded"), "{events}");

    // Deleting the claim archives the directory (class nfs-client) and removes the PV.
    k.ok(&["delete", "pvc", "test-claim"]);
    k.wait_for("the PV to go", &["get", "pv", "-o", "name"], |out| {
        out.trim().is_empty()
    });
    let archived = format!("archived-default-test-claim-{pv_name}");
    assert!(
        cluster.nfs_root().join(&archived).is_dir(),
        "no {archived}; provisioner log:\n{}",
        show_log()
    );
    assert!(!cluster.nfs_root().join(&dir).exists());

    let status = runtime
        .block_on(cluster.stop(Duration::from_secs(20)))
        .expect("stops");
    assert!(
        status.is_some_and(|s| s.success()),
        "the provisioner did not stop cleanly ({status:?}):\n{}",
        show_log()
    );
}

#[test]
fn the_try_it_class_is_the_installed_nfs_client_class() {
    let text = std::fs::read_to_string(repo("deploy/base/storageclass-archive.yaml")).unwrap();
    let shipped = serde_json::Value::deserialize(serde_yaml::Deserializer::from_str(&text))
        .expect("storageclass-archive.yaml parses");
    assert_eq!(nfs_client_class(), shipped);
}
