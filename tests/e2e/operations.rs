//! What an operator sees: `/metrics` and `/readyz` during a provisioning run, including a
//! stalled NFS root, and the process's behaviour on bad flags and signals.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fake_apiserver::{Kind, Options};
use nfs_provisioner::app::Instrumentation;

use crate::cluster::TestCluster;
use crate::provisioner::RunningProvisioner;

/// Minimal HTTP GET: (status, body).
pub fn get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(host).expect("admin endpoint reachable");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        // HTTP/1.0: the body ends with the connection, never chunked (`/metrics` is streamed).
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample line (`name{labels} value`) in a metrics page.
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_follow_a_provisioning_run() {
    let c = TestCluster::fake(Options::default()).await;
    let root = tempfile::tempdir().unwrap();
    let class = c.create_class("observed", &[], "Delete").await;
    let stalled = Arc::new(AtomicBool::new(false));
    let hook_flag = stalled.clone();
    let instrumentation = Instrumentation {
        // Stands in for an NFS server that stops answering: every operation blocks while
        // the flag is set.
        nfs_fault_hook: Some(Arc::new(move |_op: &str, _path: &str| {
            while hook_flag.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        })),
        ..Default::default()
    };
    let mut options = c.provisioner_options(root.path());
    options.extra_args = ["--nfs-probe-interval", "100ms", "--fs-timeout", "500ms"]
        .map(String::from)
        .to_vec();
    let p =
        RunningProvisioner::start_instrumented(&options, c.provisioner_config(), instrumentation);

    c.eventually("ready", || async {
        (get(&p.admin_url("/readyz")).0 == 200).then_some(())
    })
    .await;
    assert_eq!(get(&p.admin_url("/healthz")).0, 200);

    for i in 0..5 {
        c.create_claim(&TestCluster::claim(&format!("m-{i}"), &class))
            .await;
    }
    let mut block = TestCluster::claim("m-block", &class);
    block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
    c.create_claim(&block).await;
    for i in 0..5 {
        c.wait_bound(&format!("m-{i}")).await;
    }
    let ok_series = format!(
        "nfs_provisioner_provision_operations_total{{storage_class=\"{class}\",result=\"success\"}}"
    );
    let count_series =
        format!("nfs_provisioner_provision_duration_seconds_count{{storage_class=\"{class}\"}}");
    let page = c
        .eventually("metrics of the run", || async {
            let (_, page) = get(&p.admin_url("/metrics"));
            let waiting = sample(&page, "nfs_provisioner_claims_waiting")?;
            (sample(&page, &ok_series) == Some(5.0) && waiting == 1.0).then_some(page)
        })
        .await;
    assert_eq!(sample(&page, &count_series), Some(5.0), "{page}");
    assert_eq!(sample(&page, "nfs_provisioner_leader"), Some(1.0), "{page}");
    assert_eq!(
        sample(
            &page,
            "nfs_provisioner_nfs_root_healthy{export=\"default\"}"
        ),
        Some(1.0),
        "{page}"
    );
    let failures = sample(
        &page,
        "nfs_provisioner_failures_total{operation=\"provision\",reason=\"block_volume_mode\"}",
    );
    assert!(failures.unwrap_or(0.0) >= 1.0, "{page}");
    assert!(page.contains("nfs_provisioner_build_info"), "{page}");

    // The NFS server stops answering: not ready, and the check that fails is named.
    stalled.store(true, Ordering::SeqCst);
    let body = c
        .eventually("not ready while the NFS root is stalled", || async {
            let (status, body) = get(&p.admin_url("/readyz"));
            (status == 503).then_some(body)
        })
        .await;
    assert!(
        body.contains("nfs-root default") && body.contains("not responding"),
        "{body}"
    );
    let (_, page) = get(&p.admin_url("/metrics"));
    assert_eq!(
        sample(
            &page,
            "nfs_provisioner_nfs_root_healthy{export=\"default\"}"
        ),
        Some(0.0),
        "{page}"
    );
    // Provisioning fails clearly meanwhile, and recovers without a restart.
    c.create_claim(&TestCluster::claim("m-stalled", &class))
        .await;
    let note = c.wait_claim_event("m-stalled", "ProvisioningFailed").await;
    assert!(
        note.contains("not responding") || note.contains("stuck"),
        "{note}"
    );

    stalled.store(false, Ordering::SeqCst);
    c.eventually("ready again", || async {
        (get(&p.admin_url("/readyz")).0 == 200).then_some(())
    })
    .await;
    c.wait_bound("m-stalled").await;
    p.stop();
}

fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nfs-provisioner"));
    // Only what a test sets counts, not the developer's environment.
    for var in [
        "PROVISIONER_NAME",
        "NFS_SERVER",
        "NFS_PATH",
        "NFS_MOUNT_PATH",
        "KUBECONFIG",
        "ENABLE_LEADER_ELECTION",
        "POD_NAMESPACE",
        "POD_NAME",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

#[test]
fn bad_settings_exit_non_zero_with_one_line_naming_the_setting() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--nfs-server", "s", "--nfs-path", "/e"],
            "PROVISIONER_NAME",
        ),
        (
            &["--provisioner-name", "a/b", "--nfs-path", "/e"],
            "NFS_SERVER",
        ),
        (
            &[
                "--provisioner-name",
                "a/b",
                "--nfs-server",
                "s",
                "--nfs-path",
                "relative",
            ],
            "NFS_PATH",
        ),
        (
            &[
                "--provisioner-name",
                "A B",
                "--nfs-server",
                "s",
                "--nfs-path",
                "/e",
            ],
            "PROVISIONER_NAME",
        ),
        (
            &[
                "--provisioner-name",
                "a/b",
                "--nfs-server",
                "s",
                "--nfs-path",
                "/e",
                "--workers",
                "0",
            ],
            "WORKERS",
        ),
        (
            &[
                "--provisioner-name",
                "a/b",
                "--nfs-server",
                "s",
                "--nfs-path",
                "/e",
                "--lease-duration",
                "5s",
            ],
            "RENEW_DEADLINE",
        ),
        (
            &["--enable-leader-election", "maybe"],
            "--enable-leader-election",
        ),
        (&["--admin-address", "everywhere"], "--admin-address"),
        (&["--no-such-flag"], "--no-such-flag"),
    ];
    for (args, needle) in cases {
        let out = binary().args(*args).output().expect("binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: one line, got {stderr}"
        );
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // The environment names of the Go provisioner are read too.
    let out = binary()
        .env("PROVISIONER_NAME", "bad name")
        .env("NFS_SERVER", "s")
        .env("NFS_PATH", "/e")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PROVISIONER_NAME"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_nfs_root_stops_the_process_with_an_error() {
    let c = TestCluster::fake(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let fake = c.fake_server().unwrap();
    let kubeconfig = kubeconfig_for(&fake.url(), &fake.token_for("nobody"), dir.path());
    let out = binary()
        .args([
            "--provisioner-name",
            "a/b",
            "--nfs-server",
            "s",
            "--nfs-path",
            "/e",
        ])
        .args([
            "--mount-path",
            "/nonexistent/nfs-root",
            "--admin-address",
            "127.0.0.1:0",
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        format!("{stdout}{stderr}").contains("/nonexistent/nfs-root"),
        "the error names the NFS root: {stdout}{stderr}"
    );
}

fn kubeconfig_for(url: &str, token: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\nusers:\n- name: provisioner\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: provisioner\ncurrent-context: fake\n"
        ),
    )
    .unwrap();
    path
}

/// The provisioner binary pointed at the fake control plane as `user`, with `root` as NFS root.
fn provisioner_process(
    c: &TestCluster,
    dir: &std::path::Path,
    root: &std::path::Path,
    user: &str,
) -> Command {
    let fake = c.fake_server().unwrap();
    c.grant_provisioner_roles(user);
    let kubeconfig = kubeconfig_for(&fake.url(), &fake.token_for(user), dir);
    let mut cmd = binary();
    cmd.args([
        "--provisioner-name",
        "example.com/nfs",
        "--nfs-server",
        "nfs.example.test",
        "--nfs-path",
        "/exports",
    ])
    .arg("--mount-path")
    .arg(root)
    .arg("--kubeconfig")
    .arg(&kubeconfig)
    .args(["--admin-address", "127.0.0.1:0"]);
    cmd
}

/// A provisioner process leading against the fake as `user`, its log in `dir/log`.
struct LeadingProcess {
    c: TestCluster,
    dir: tempfile::TempDir,
    _root: tempfile::TempDir,
    child: std::process::Child,
}

impl LeadingProcess {
    async fn start(user: &str) -> Self {
        let c = TestCluster::fake(Options::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let child = provisioner_process(&c, dir.path(), root.path(), user)
            .args([
                "--pod-namespace",
                "nfs-provisioner",
                "--pod-name",
                "signal-test",
            ])
            .args([
                "--lease-duration",
                "3s",
                "--renew-deadline",
                "2s",
                "--retry-period",
                "200ms",
            ])
            .stdout(std::fs::File::create(dir.path().join("log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn provisioner");
        let p = Self {
            c,
            dir,
            _root: root,
            child,
        };
        p.c.eventually("the process to lead", || async {
            holder(&p.c).filter(|h| h.starts_with("signal-test_"))
        })
        .await;
        p
    }

    /// Waits until the process logged a line containing `needle`.
    async fn wait_for_log(&self, needle: &str) {
        let log = self.dir.path().join("log");
        self.c
            .eventually(&format!("log line {needle:?}"), || async {
                std::fs::read_to_string(&log)
                    .ok()?
                    .contains(needle)
                    .then_some(())
            })
            .await
    }
}

fn holder(c: &TestCluster) -> Option<String> {
    let lease = c
        .fake_server()
        .unwrap()
        .get(Kind::Lease, "nfs-provisioner", "example.com-nfs")?;
    Some(
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    )
}

fn signal(child: &std::process::Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

async fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    panic!("provisioner did not exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_the_lease_and_exits_zero() {
    let mut p = LeadingProcess::start("signal-test").await;
    signal(&p.child, nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut p.child).await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        holder(&p.c).as_deref(),
        Some(""),
        "lease released for the next leader"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let mut p = LeadingProcess::start("impatient").await;
    // With the API unreachable, releasing the lease hangs: shutdown cannot finish by itself.
    p.c.fake_server().unwrap().partition_user("impatient", true);
    signal(&p.child, nix::sys::signal::Signal::SIGTERM);
    p.wait_for_log("signal received: shutting down").await;
    assert!(p.child.try_wait().unwrap().is_none(), "still shutting down");
    signal(&p.child, nix::sys::signal::Signal::SIGINT);
    let status = wait_exit(&mut p.child).await;
    assert_eq!(status.code(), Some(130));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_claim_and_volume() {
    let c = TestCluster::fake(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let class = c
        .create_class("logged", &[("onDelete", "delete")], "Delete")
        .await;
    let log = dir.path().join("log.jsonl");
    let mut child = provisioner_process(
        &c,
        dir.path(),
        root.path(),
        crate::cluster::PROVISIONER_USER,
    )
    .args(["--enable-leader-election", "false", "--log-format", "json"])
    .stdout(std::fs::File::create(&log).unwrap())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    c.create_claim(&TestCluster::claim("logged", &class)).await;
    let pv = c.wait_bound("logged").await;
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(wait_exit(&mut child).await.code(), Some(0));

    let claim = format!("{}/logged", c.namespace);
    let pv_name = kube::ResourceExt::name_any(&pv);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let about_volume: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["message"].as_str().is_some_and(|m| m.contains("volume")) && l.get("span").is_some()
        })
        .collect();
    assert!(!about_volume.is_empty(), "{lines:?}");
    for line in about_volume {
        assert_eq!(line["span"]["claim"], claim.as_str(), "{line}");
        assert_eq!(line["span"]["pv"], pv_name.as_str(), "{line}");
    }
}
