//! End-to-end provisioning benchmark.
//!
//! Creates N claims of one StorageClass at once, waits until all are Bound, deletes them and
//! waits until their PVs are gone, then reports time to all bound, claims/s, claim-to-PV and
//! claim-to-Bound latency percentiles, delete time, and the provisioner's peak RSS and CPU
//! seconds. The provisioner is the release binary, run as a subprocess so that its memory
//! and CPU are its own.
//!
//! ```sh
//! cargo bench --bench provisioning -- --claims 1000 [--background 10000] [--kubeconfig FILE] [--provisioner-args "..."]
//! ```
//!
//! Without `--kubeconfig` the cluster is the in-process fake API server (`fake-apiserver/`,
//! which also plays kube-controller-manager's PV binder); with it, a real cluster (a unique
//! namespace, StorageClass and provisioner name are created and removed afterwards).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use fake_apiserver::{FakeApiServer, Options};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{
    Namespace, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const PROVISIONER_USER: &str = "system:serviceaccount:nfs-provisioner:nfs-provisioner";
/// How long the bench waits after the last PV is gone before it reads the settled RSS.
const SETTLE: Duration = Duration::from_secs(6);

#[derive(Parser, Debug)]
#[command(about = "Provisioning benchmark of nfs-provisioner")]
struct Args {
    /// Claims created at once.
    #[arg(long, default_value_t = 1000)]
    claims: usize,
    /// Unrelated PVCs and PVs (other classes and drivers) seeded before the provisioner starts
    /// (fake API server only).
    #[arg(long, default_value_t = 0)]
    background: usize,
    /// Existing volumes of this provisioner seeded before it starts: Released PVs with reclaim
    /// policy Retain, its `provisioned-by` annotation and finalizer, plus as many claims that
    /// have a volume (another PV's). On a real cluster they are created with `--seed-concurrency`
    /// requests in flight and kept for the next run of the same `--provisioner-name`.
    #[arg(long, default_value_t = 0)]
    existing: usize,
    /// Seed the existing volumes Bound to the seeded claims instead of Released (fake API
    /// server only: a real one leaves status to kube-controller-manager), each with its
    /// directory on the NFS root. Bound volumes of this provisioner are also measured by the
    /// usage task.
    #[arg(long)]
    existing_bound: bool,
    /// Creations in flight while seeding existing volumes on a real cluster.
    #[arg(long, default_value_t = 128)]
    seed_concurrency: usize,
    /// Provisioner name (real cluster; default a unique one per run). Seeded volumes carry it,
    /// so a run with the same name finds them already there.
    #[arg(long)]
    provisioner_name: Option<String>,
    /// Instead of nfs-provisioner, a minimal provisioner inside the bench that creates one PV
    /// per claim and deletes a Released PV, nothing else (no events, no finalizer, no
    /// directory): the floor a provisioner's burst time is compared with. Same client limits as
    /// nfs-provisioner's defaults (200 requests/s, burst 400, 16 in flight).
    #[arg(long)]
    floor: bool,
    /// Measure the CPU of one full resync: the provisioner runs with this resync period (s) and
    /// the bench reads its CPU around the first periodic resync, before the burst.
    #[arg(long, default_value_t = 0)]
    resync_period: u64,
    /// Stay idle this many seconds after the provisioner is ready (before the burst), sampling
    /// its RSS every second; reports the first, last and highest reading.
    #[arg(long, default_value_t = 0)]
    idle: u64,
    /// Run this binary instead of the bench profile's nfs-provisioner (e.g. an unstripped build
    /// for a heap profile).
    #[arg(long)]
    provisioner_binary: Option<PathBuf>,
    /// Run the provisioner under this command, split on whitespace (e.g. "heaptrack -o FILE").
    /// Memory and CPU figures are then the wrapper's process's.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    provisioner_wrapper: String,
    /// Skip the burst: stop after the idle and resync measurements.
    #[arg(long)]
    no_burst: bool,
    /// Do not delete the claims after the burst (on a real cluster the namespace is still
    /// deleted at the end, with the provisioner stopped: its PVs stay, Released).
    #[arg(long)]
    skip_delete: bool,
    /// Run against the cluster of this kubeconfig instead of the fake API server.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Extra arguments for the provisioner, split on whitespace (e.g. "--workers 8").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    provisioner_args: String,
    /// Claim creations and deletions in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Give up waiting for a phase after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Keep the provisioner's log (stderr+stdout) at this path.
    #[arg(long)]
    provisioner_log: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("benchmark failed: {e}");
        std::process::exit(1);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn random_suffix() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|u| u.trim().chars().filter(|c| *c != '-').take(8).collect())
        .unwrap_or_else(|_| format!("{:08x}", std::process::id()))
}

/// Per-claim timestamps.
#[derive(Default, Clone, Copy)]
struct ClaimTimes {
    created: Option<Instant>,
    pv_seen: Option<Instant>,
    bound: Option<Instant>,
}

#[derive(Default)]
struct Observed {
    claims: HashMap<String, ClaimTimes>,
    /// PV name -> claim name, for PVs whose claimRef is in our namespace.
    pvs: HashMap<String, String>,
    pvs_gone: usize,
    last_pv_gone: Option<Instant>,
}

struct Target {
    client: Client,
    fake: Option<FakeApiServer>,
    /// Kubeconfig the provisioner uses.
    provisioner_kubeconfig: PathBuf,
    /// The same as a client configuration (for `--floor`).
    provisioner_config: kube::Config,
    namespace: String,
    class: String,
    provisioner_name: String,
}

async fn run(args: Args) -> Result<(), BoxError> {
    let scratch = tempfile::Builder::new()
        .prefix("nfs-provisioner-bench")
        .tempdir_in(std::env::temp_dir())?;
    let nfs_root = scratch.path().join("nfs-root");
    std::fs::create_dir(&nfs_root)?;

    let target = setup(&args, scratch.path()).await?;
    let result = bench(&args, &target, scratch.path(), &nfs_root).await;
    cleanup(&target).await;
    result
}

async fn setup(args: &Args, scratch: &Path) -> Result<Target, BoxError> {
    match &args.kubeconfig {
        None => {
            let fake = FakeApiServer::start(Options::default()).await?;
            let mut config = kube::Config::new(fake.url().parse()?);
            config.auth_info.token = Some(fake.token_for("admin").into());
            let client = Client::try_from(config)?;
            let token = fake.token_for(PROVISIONER_USER);
            let mut provisioner_config = kube::Config::new(fake.url().parse()?);
            provisioner_config.auth_info.token = Some(token.clone().into());
            let kubeconfig = scratch.join("kubeconfig");
            std::fs::write(
                &kubeconfig,
                format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\nusers:\n- name: provisioner\n  user:\n    token: \"{token}\"\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: provisioner\ncurrent-context: fake\n",
                    url = fake.url()
                ),
            )?;
            if args.background > 0 {
                let started = Instant::now();
                let (claims, volumes) = background_objects(args.background);
                let bytes: usize = claims
                    .iter()
                    .chain(volumes.iter())
                    .map(|o| o.to_string().len())
                    .sum();
                fake.put_objects(claims)?;
                fake.put_objects(volumes)?;
                println!(
                    "seeded {n} unrelated PVCs and {n} PVs ({mb:.1} MB of JSON) in {s:.1} s",
                    n = args.background,
                    mb = bytes as f64 / 1e6,
                    s = started.elapsed().as_secs_f64()
                );
            }
            let target = Target {
                client,
                fake: Some(fake),
                provisioner_kubeconfig: kubeconfig,
                provisioner_config,
                namespace: "bench".into(),
                class: "nfs-bench".into(),
                provisioner_name: "example.com/nfs".into(),
            };
            create_namespace_and_class(&target).await?;
            if args.existing > 0 {
                let started = Instant::now();
                let (claims, volumes) =
                    existing_objects(args.existing, &target.provisioner_name, args.existing_bound);
                if args.existing_bound {
                    // A Bound volume has its directory: the usage task measures it (empty)
                    // and exports its series, as it would in a cluster.
                    let nfs_root = scratch.join("nfs-root");
                    for pv in &volumes {
                        let path = pv["spec"]["nfs"]["path"].as_str().unwrap_or_default();
                        let directory = path.strip_prefix("/exports/").expect("under the export");
                        std::fs::create_dir(nfs_root.join(directory))?;
                    }
                }
                let fake = target.fake.as_ref().expect("fake");
                fake.put_objects(claims)?;
                fake.put_objects(volumes)?;
                println!(
                    "seeded {n} {phase} volumes of this provisioner and {n} claims with a volume in {s:.1} s",
                    n = args.existing,
                    phase = if args.existing_bound {
                        "Bound"
                    } else {
                        "Released"
                    },
                    s = started.elapsed().as_secs_f64()
                );
            }
            Ok(target)
        }
        Some(path) => {
            let config = nfs_provisioner::kube_client::load_config(Some(path)).await?;
            let client = Client::try_from(config.clone())?;
            let suffix = random_suffix();
            let target = Target {
                client,
                fake: None,
                provisioner_kubeconfig: path.clone(),
                provisioner_config: config,
                namespace: format!("nfs-bench-{suffix}"),
                class: format!("nfs-bench-{suffix}"),
                provisioner_name: args
                    .provisioner_name
                    .clone()
                    .unwrap_or_else(|| format!("example.com/nfs-bench-{suffix}")),
            };
            create_namespace_and_class(&target).await?;
            if args.existing_bound {
                return Err("--existing-bound is for the fake API server only".into());
            }
            if args.existing > 0 {
                seed_real_cluster(&target, args.existing, args.seed_concurrency).await?;
            }
            Ok(target)
        }
    }
}

async fn create_namespace_and_class(t: &Target) -> Result<(), BoxError> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(t.namespace.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<Namespace>::all(t.client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let class = StorageClass {
        metadata: ObjectMeta {
            name: Some(t.class.clone()),
            ..Default::default()
        },
        provisioner: t.provisioner_name.clone(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("Immediate".into()),
        parameters: Some(BTreeMap::from([("onDelete".into(), "delete".into())])),
        ..Default::default()
    };
    Api::<StorageClass>::all(t.client.clone())
        .create(&PostParams::default(), &class)
        .await?;
    Ok(())
}

async fn cleanup(t: &Target) {
    if t.fake.is_some() {
        return;
    }
    let dp = DeleteParams::default();
    let _ = Api::<StorageClass>::all(t.client.clone())
        .delete(&t.class, &dp)
        .await;
    let _ = Api::<Namespace>::all(t.client.clone())
        .delete(&t.namespace, &dp)
        .await;
}

/// The provisioner subprocess and what we sample of it; or, with `--floor`, the bench's own
/// minimal provisioner (no process: memory and CPU figures are then zero).
struct Provisioner {
    child: Option<Child>,
    floor: Option<Floor>,
    admin: SocketAddr,
    peak_sampled_rss_kb: Arc<AtomicU64>,
    stop_sampling: Arc<AtomicBool>,
}

fn free_local_port() -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.local_addr()
}

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of the process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks)
}

fn threads(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("Threads:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Provisioner {
    fn start(
        args: &Args,
        t: &Target,
        nfs_root: &Path,
        log: &Path,
    ) -> Result<Provisioner, BoxError> {
        let admin = free_local_port()?;
        let log_file = std::fs::File::create(log)?;
        let binary = args
            .provisioner_binary
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nfs-provisioner")));
        let mut wrapper = args.provisioner_wrapper.split_whitespace();
        let mut cmd = match wrapper.next() {
            Some(program) => {
                let mut cmd = Command::new(program);
                cmd.args(wrapper).arg(&binary);
                cmd
            }
            None => Command::new(&binary),
        };
        if args.resync_period > 0 {
            cmd.args(["--resync-period", &format!("{}s", args.resync_period)]);
        }
        cmd.args([
            "--kubeconfig",
            &t.provisioner_kubeconfig.display().to_string(),
            "--provisioner-name",
            &t.provisioner_name,
            "--nfs-server",
            "nfs.example.test",
            "--nfs-path",
            "/exports",
            "--mount-path",
            &nfs_root.display().to_string(),
            "--enable-leader-election=false",
            "--admin-address",
            &admin.to_string(),
        ])
        .args(args.provisioner_args.split_whitespace())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
        let child = cmd.spawn()?;
        let pid = child.id();
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = proc_status_kb(pid, "VmRSS:") {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        Ok(Provisioner {
            child: Some(child),
            floor: None,
            admin,
            peak_sampled_rss_kb: peak,
            stop_sampling: stop,
        })
    }

    /// The bench's minimal provisioner instead of nfs-provisioner.
    fn start_floor(t: &Target) -> Result<Provisioner, BoxError> {
        Ok(Provisioner {
            child: None,
            floor: Some(Floor::start(t)?),
            admin: free_local_port()?,
            peak_sampled_rss_kb: Arc::new(AtomicU64::new(0)),
            stop_sampling: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The process's pid (0 for the floor: no /proc figures).
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    fn ready(&self) -> bool {
        if let Some(floor) = &self.floor {
            return floor.ready.load(Ordering::Relaxed);
        }
        let Ok(mut s) = TcpStream::connect_timeout(&self.admin, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.1 200")
    }

    fn metrics(&self) -> String {
        if self.floor.is_some() {
            return String::new();
        }
        let Ok(mut s) = TcpStream::connect_timeout(&self.admin, Duration::from_millis(500)) else {
            return String::new();
        };
        // A page with a usage series per volume is tens of MB at 100 000 volumes.
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        // HTTP/1.0: the streamed page ends with the connection instead of being chunked.
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    fn stop(mut self) {
        self.stop_sampling.store(true, Ordering::Relaxed);
        if let Some(floor) = self.floor.take() {
            floor.stop();
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A bench that fails midway (an early `?`) must not leave the provisioner running: it would
/// keep using CPU and skew the next runs.
impl Drop for Provisioner {
    fn drop(&mut self) {
        self.stop_sampling.store(true, Ordering::Relaxed);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn claim_object(name: &str, class: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([("app".into(), "nfs-bench".into())])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            storage_class_name: Some(class.to_string()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), Quantity("1Mi".into()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// Watches our claims (Bound times) and every PV whose claimRef is in our namespace.
fn spawn_watches(t: &Target, observed: Arc<Mutex<Observed>>) {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(t.client.clone(), &t.namespace);
    let obs = observed.clone();
    tokio::spawn(async move {
        let stream = watcher(claims, watcher::Config::default());
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { continue };
            if let watcher::Event::Apply(c) | watcher::Event::InitApply(c) = ev {
                let bound = c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
                if bound {
                    let now = Instant::now();
                    let mut o = obs.lock().unwrap();
                    let entry = o.claims.entry(c.name_any()).or_default();
                    entry.bound.get_or_insert(now);
                }
            }
        }
    });
    let volumes: Api<PersistentVolume> = Api::all(t.client.clone());
    let ns = t.namespace.clone();
    let obs = observed;
    tokio::spawn(async move {
        let stream = watcher(volumes, watcher::Config::default());
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { continue };
            let now = Instant::now();
            match ev {
                watcher::Event::Apply(pv) | watcher::Event::InitApply(pv) => {
                    let Some(claim) = pv
                        .spec
                        .as_ref()
                        .and_then(|s| s.claim_ref.as_ref())
                        .filter(|r| r.namespace.as_deref() == Some(ns.as_str()))
                        .and_then(|r| r.name.clone())
                    else {
                        continue;
                    };
                    let mut o = obs.lock().unwrap();
                    if o.pvs.insert(pv.name_any(), claim.clone()).is_none() {
                        o.claims
                            .entry(claim)
                            .or_default()
                            .pv_seen
                            .get_or_insert(now);
                    }
                }
                watcher::Event::Delete(pv) => {
                    let mut o = obs.lock().unwrap();
                    if o.pvs.contains_key(&pv.name_any()) {
                        o.pvs_gone += 1;
                        o.last_pv_gone = Some(now);
                    }
                }
                _ => {}
            }
        }
    });
}

/// Polls `done` every 10 ms until it holds, the provisioner exits, or the timeout passes.
async fn wait_until(
    what: &str,
    timeout: Duration,
    provisioner: &mut Provisioner,
    mut done: impl FnMut() -> (bool, String),
) -> Result<(), BoxError> {
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    loop {
        let (ok, progress) = done();
        if ok {
            return Ok(());
        }
        if let Some(status) = provisioner.exited() {
            return Err(format!("provisioner exited ({status}) while waiting for {what}").into());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}: {progress}").into());
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("  ... waiting for {what}: {progress}");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn bench(args: &Args, t: &Target, scratch: &Path, nfs_root: &Path) -> Result<(), BoxError> {
    let n = args.claims;
    let timeout = Duration::from_secs(args.timeout);
    let log = args
        .provisioner_log
        .clone()
        .unwrap_or_else(|| scratch.join("provisioner.log"));
    let observed = Arc::new(Mutex::new(Observed::default()));
    spawn_watches(t, observed.clone());

    // Start the provisioner and wait until its caches are synced.
    let started = Instant::now();
    let mut provisioner = if args.floor {
        Provisioner::start_floor(t)?
    } else {
        Provisioner::start(args, t, nfs_root, &log)?
    };
    let pid = provisioner.pid();
    let ready_deadline = Instant::now() + Duration::from_secs(600);
    while !provisioner.ready() {
        if let Some(status) = provisioner.exited() {
            let out = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("provisioner exited ({status}) before ready:\n{out}").into());
        }
        if Instant::now() > ready_deadline {
            return Err("provisioner not ready after 600 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready_after = started.elapsed();
    let ready_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let startup_hwm = proc_status_kb(pid, "VmHWM:").unwrap_or(0);
    // The first pass over every cached claim and volume runs as the term starts, right after
    // the caches synced: settled is when the process has been (nearly) idle for a second.
    let settled_after = settle(pid, Duration::from_secs(120)).await;
    let settled_idle_rss = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let cpu_at_ready = cpu_seconds(pid).unwrap_or(0.0);
    if pid != 0 {
        println!(
            "ready after {}; settled {} later (startup CPU {cpu_at_ready:.2} s): RSS {:.1} MB ({:.1} MB anonymous), startup peak {:.1} MB",
            ms(ready_after),
            ms(settled_after),
            settled_idle_rss as f64 / 1024.0,
            proc_status_kb(pid, "RssAnon:").unwrap_or(0) as f64 / 1024.0,
            proc_status_kb(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0,
        );
    }
    let resync = if args.resync_period > 0 && pid != 0 {
        Some(measure_resync(pid, ready_at, Duration::from_secs(args.resync_period)).await?)
    } else {
        None
    };
    if let Some(r) = &resync {
        println!(
            "resync: {:.2} CPU s above idle ({:.2} s measured over {}, idle {:.4} CPU s/s); RSS {:.1} MB before, {:.1} MB after",
            r.cpu,
            r.raw_cpu,
            ms(r.window),
            r.idle_rate,
            r.rss_before_kb as f64 / 1024.0,
            r.rss_after_kb as f64 / 1024.0,
        );
    }
    if args.idle > 0 && pid != 0 {
        let (first, last, max) = sample_idle(pid, Duration::from_secs(args.idle)).await;
        println!(
            "idle {} s: RSS first {:.1} MB, last {:.1} MB, highest {:.1} MB; CPU {:.2} s",
            args.idle,
            first as f64 / 1024.0,
            last as f64 / 1024.0,
            max as f64 / 1024.0,
            cpu_seconds(pid).unwrap_or(0.0) - cpu_at_ready,
        );
    }
    if args.existing_bound && pid != 0 {
        // What the usage task exported by now, and what one scrape of it costs.
        let before = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
        // RSS sampled every 2 ms while the page is served: its highest is the scrape's cost.
        let serving = std::sync::atomic::AtomicBool::new(true);
        let mut highest = before;
        let page = std::thread::scope(|scope| {
            let sampler = scope.spawn(|| {
                let mut highest = 0;
                while serving.load(Ordering::Relaxed) {
                    highest = highest.max(proc_status_kb(pid, "VmRSS:").unwrap_or(0));
                    std::thread::sleep(Duration::from_millis(2));
                }
                highest
            });
            let page = provisioner.metrics();
            serving.store(false, Ordering::Relaxed);
            highest = highest.max(sampler.join().unwrap_or(0));
            page
        });
        let measured = page
            .lines()
            .filter(|l| l.starts_with("nfs_provisioner_volume_used_bytes{"))
            .count();
        println!(
            "usage: {measured} volumes measured; /metrics page {:.1} MB; RSS {:.1} MB before the scrape, {:.1} MB at most during it, {:.1} MB after",
            page.len() as f64 / 1e6,
            before as f64 / 1024.0,
            highest as f64 / 1024.0,
            proc_status_kb(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0,
        );
    }
    let cpu_at_ready = cpu_seconds(pid).unwrap_or(0.0);
    if args.no_burst {
        println!(
            "== {} existing volumes: ready {}, idle RSS {:.1} MB (settled), startup CPU {:.2} s ==",
            args.existing,
            ms(ready_after),
            settled_idle_rss as f64 / 1024.0,
            cpu_at_ready
        );
        provisioner.stop();
        return Ok(());
    }

    // Create all claims, bounded concurrency.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(t.client.clone(), &t.namespace);
    let names: Vec<String> = (0..n).map(|i| format!("bench-{i:05}")).collect();
    let wall_create = SystemTime::now();
    let create_start = Instant::now();
    futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let claims = claims.clone();
            let class = t.class.clone();
            let observed = observed.clone();
            async move {
                let at = Instant::now();
                observed
                    .lock()
                    .unwrap()
                    .claims
                    .entry(name.clone())
                    .or_default()
                    .created = Some(at);
                claims
                    .create(&PostParams::default(), &claim_object(&name, &class))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let created_in = create_start.elapsed();

    let count_bound = || {
        let o = observed.lock().unwrap();
        let bound = names
            .iter()
            .filter(|c| o.claims.get(*c).is_some_and(|t| t.bound.is_some()))
            .count();
        (bound == n, format!("{bound}/{n} Bound"))
    };
    wait_until("all claims Bound", timeout, &mut provisioner, count_bound).await?;
    let (all_bound_at, times): (Instant, Vec<ClaimTimes>) = {
        let o = observed.lock().unwrap();
        let times: Vec<ClaimTimes> = names.iter().map(|c| o.claims[c]).collect();
        (times.iter().filter_map(|t| t.bound).max().unwrap(), times)
    };
    let to_bound = all_bound_at - create_start;
    let cpu_after_bind = cpu_seconds(pid).unwrap_or(0.0);

    // Delete all claims; wait until every PV of ours is gone.
    let wall_delete = SystemTime::now();
    let delete_start = Instant::now();
    let to_delete = if args.skip_delete {
        &[][..]
    } else {
        &names[..]
    };
    futures::stream::iter(to_delete.iter().cloned())
        .map(|name| {
            let claims = claims.clone();
            async move {
                match claims.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let pvs_expected = if args.skip_delete {
        0
    } else {
        observed.lock().unwrap().pvs.len()
    };
    let count_gone = || {
        let o = observed.lock().unwrap();
        (
            o.pvs_gone >= pvs_expected,
            format!("{}/{pvs_expected} PVs gone", o.pvs_gone),
        )
    };
    wait_until("all PVs gone", timeout, &mut provisioner, count_gone).await?;
    let delete_time = observed
        .lock()
        .unwrap()
        .last_pv_gone
        .map(|t| t - delete_start)
        .unwrap_or_default();
    let wall_end = SystemTime::now();

    let cpu_total = cpu_seconds(pid).unwrap_or(0.0);
    let hwm = proc_status_kb(pid, "VmHWM:").unwrap_or(0);
    let end_rss = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let nthreads = threads(pid).unwrap_or(0);
    let end_anon = proc_status_kb(pid, "RssAnon:").unwrap_or(0);
    let end_file = proc_status_kb(pid, "RssFile:").unwrap_or(0);
    // What the provisioner keeps once the burst is over (after its periodic housekeeping).
    tokio::time::sleep(SETTLE).await;
    let settled_rss = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let settled_anon = proc_status_kb(pid, "RssAnon:").unwrap_or(0);
    let sampled_peak = provisioner.peak_sampled_rss_kb.load(Ordering::Relaxed);
    let metrics = provisioner.metrics();
    provisioner.stop();

    // Report.
    let mut to_pv: Vec<Duration> = times
        .iter()
        .filter_map(|t| Some(t.pv_seen? - t.created?))
        .collect();
    let mut to_bound_each: Vec<Duration> = times
        .iter()
        .filter_map(|t| Some(t.bound? - t.created?))
        .collect();
    to_pv.sort();
    to_bound_each.sort();
    let dirs_left = std::fs::read_dir(nfs_root).map(|d| d.count()).unwrap_or(0);
    let mb = |kb: u64| kb as f64 / 1024.0;

    println!();
    println!(
        "== nfs-provisioner benchmark: {n} claims against {} ==",
        if t.fake.is_some() {
            "the fake API server"
        } else {
            "a real cluster"
        }
    );
    if args.background > 0 {
        println!(
            "background: {b} unrelated PVCs + {b} PVs in the cluster",
            b = args.background
        );
    }
    if args.existing > 0 {
        println!(
            "existing: {e} {phase} volumes of this provisioner + {e} claims with a volume",
            e = args.existing,
            phase = if args.existing_bound {
                "Bound"
            } else {
                "Released"
            }
        );
    }
    if args.floor {
        println!("provisioner: the FLOOR (one PV per claim, nothing else; no process figures)");
    }
    if !args.provisioner_args.is_empty() {
        println!("provisioner args: {}", args.provisioner_args);
    }
    println!(
        "provisioner ready (caches synced) after   {}",
        ms(ready_after)
    );
    println!(
        "claims created (concurrency {})          {}",
        args.concurrency,
        ms(created_in)
    );
    println!("time to all Bound                         {}", ms(to_bound));
    println!(
        "throughput                                {:.1} claims/s",
        n as f64 / to_bound.as_secs_f64()
    );
    println!(
        "claim -> PV created   p50/p95/p99/max     {} / {} / {} / {}",
        ms(percentile(&to_pv, 50.0)),
        ms(percentile(&to_pv, 95.0)),
        ms(percentile(&to_pv, 99.0)),
        ms(percentile(&to_pv, 100.0))
    );
    println!(
        "claim -> Bound        p50/p95/p99/max     {} / {} / {} / {}",
        ms(percentile(&to_bound_each, 50.0)),
        ms(percentile(&to_bound_each, 95.0)),
        ms(percentile(&to_bound_each, 99.0)),
        ms(percentile(&to_bound_each, 100.0))
    );
    println!(
        "delete time (claims deleted -> PVs gone)  {}  ({pvs_expected} PVs, {:.1} PVs/s)",
        ms(delete_time),
        pvs_expected as f64 / delete_time.as_secs_f64().max(1e-9)
    );
    println!(
        "provisioner RSS: idle after sync {:.1} MB, peak {:.1} MB (VmHWM; sampled {:.1} MB), end {:.1} MB; startup peak {:.1} MB",
        mb(idle_rss),
        mb(hwm),
        mb(sampled_peak),
        mb(end_rss),
        mb(startup_hwm)
    );
    println!(
        "  at the end: {:.1} MB anonymous (heap, stacks), {:.1} MB file-backed (the binary's pages)",
        mb(end_anon),
        mb(end_file)
    );
    println!(
        "  {} s after the end: {:.1} MB ({:.1} MB anonymous)",
        SETTLE.as_secs(),
        mb(settled_rss),
        mb(settled_anon)
    );
    println!(
        "provisioner CPU: {cpu_total:.2} s total (startup {cpu_at_ready:.2} s, provisioning {:.2} s, deleting {:.2} s); {nthreads} threads",
        cpu_after_bind - cpu_at_ready,
        cpu_total - cpu_after_bind
    );
    println!("directories left on the NFS root: {dirs_left}");
    let failures: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("nfs_provisioner_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b);
    println!("failed attempts (provisioner metrics): {failures}");

    if let Some(fake) = &t.fake {
        report_requests(fake, n, pvs_expected, [wall_create, wall_delete, wall_end]);
    }
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let warnings = log_text.lines().filter(|l| l.contains(" WARN ")).count();
    let errors = log_text.lines().filter(|l| l.contains(" ERROR ")).count();
    println!("provisioner log: {warnings} WARN, {errors} ERROR lines");
    if warnings + errors > 0 {
        for l in log_text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .take(5)
        {
            println!("  {l}");
        }
    }
    Ok(())
}

/// Requests the provisioner sent, per phase, from the fake server's log.
fn report_requests(fake: &FakeApiServer, n: usize, pvs: usize, bounds: [SystemTime; 3]) {
    let reqs: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.user == PROVISIONER_USER)
        .collect();
    for (phase, from, to, per) in [
        ("provisioning", bounds[0], bounds[1], n),
        ("deleting", bounds[1], bounds[2], pvs),
    ] {
        let in_phase: Vec<_> = reqs
            .iter()
            .filter(|r| r.at >= from && r.at < to && r.verb.as_deref() != Some("watch"))
            .collect();
        let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
        let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
        for r in &in_phase {
            let key = format!(
                "{} {}",
                r.verb.as_deref().unwrap_or(&r.method),
                r.resource.as_deref().unwrap_or(&r.path)
            );
            *by_kind.entry(key).or_default() += 1;
            let sec = r.at.duration_since(from).unwrap_or_default().as_secs();
            *per_second.entry(sec).or_default() += 1;
        }
        let peak = per_second.values().max().copied().unwrap_or(0);
        let secs = to.duration_since(from).unwrap_or_default().as_secs_f64();
        println!(
            "API requests while {phase}: {} ({:.2} per claim), peak {peak} req/s (1 s windows), mean {:.0} req/s",
            in_phase.len(),
            in_phase.len() as f64 / per.max(1) as f64,
            in_phase.len() as f64 / secs.max(1e-9)
        );
        for (k, c) in by_kind {
            println!(
                "    {k:<40} {c:>7}  ({:.2} per claim)",
                c as f64 / per.max(1) as f64
            );
        }
    }
    let watches = reqs
        .iter()
        .filter(|r| r.verb.as_deref() == Some("watch"))
        .count();
    let lists = reqs
        .iter()
        .filter(|r| r.verb.as_deref() == Some("list"))
        .count();
    println!("watch requests over the run: {watches}; list requests: {lists}");
}

/// `n` bound claims of other classes and their PVs (CSI, plus every tenth an NFS volume of
/// another provisioner), with the metadata real objects carry.
fn background_objects(n: usize) -> (Vec<Value>, Vec<Value>) {
    let mut claims = Vec::with_capacity(n);
    let mut volumes = Vec::with_capacity(n);
    let filler = "x".repeat(700);
    for i in 0..n {
        let ns = format!("team-{:02}", i % 50);
        let name = format!("data-app-{i}");
        let uid = format!("{:08x}-1111-4222-8333-{:012x}", i, i * 7919);
        let pv_name = format!("pvc-{uid}");
        let nfs = i % 10 == 0;
        let (class, driver) = if nfs {
            (
                "nfs-legacy",
                "cluster.local/nfs-subdir-external-provisioner",
            )
        } else {
            ("gp3", "ebs.csi.aws.com")
        };
        let last_applied = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": format!("app-{}", i % 97)},
                         "annotations": {"note": filler}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": "10Gi"}}}
        })
        .to_string();
        let managed = json!([
            {"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "v1",
             "time": "2024-05-01T10:00:00Z", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}},
                          "f:labels": {".": {}, "f:app": {}, "f:team": {}}},
                          "f:spec": {"f:accessModes": {}, "f:resources": {"f:requests": {".": {}, "f:storage": {}}},
                                     "f:storageClassName": {}, "f:volumeMode": {}}}},
            {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
             "time": "2024-05-01T10:00:02Z", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:annotations": {"f:pv.kubernetes.io/bind-completed": {},
                          "f:pv.kubernetes.io/bound-by-controller": {}, "f:volume.kubernetes.io/storage-provisioner": {}}},
                          "f:spec": {"f:volumeName": {}}}},
            {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
             "time": "2024-05-01T10:00:02Z", "fieldsType": "FieldsV1", "subresource": "status",
             "fieldsV1": {"f:status": {"f:accessModes": {}, "f:capacity": {".": {}, "f:storage": {}}, "f:phase": {}}}}
        ]);
        claims.push(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": name, "namespace": ns, "uid": uid,
                "resourceVersion": "1", "creationTimestamp": "2024-05-01T10:00:00Z",
                "labels": {"app": format!("app-{}", i % 97), "team": format!("team-{}", i % 50),
                           "app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/instance": format!("release-{}", i % 13)},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": last_applied,
                    "pv.kubernetes.io/bind-completed": "yes",
                    "pv.kubernetes.io/bound-by-controller": "yes",
                    "volume.kubernetes.io/storage-provisioner": driver,
                    "volume.beta.kubernetes.io/storage-provisioner": driver,
                    "meta.helm.sh/release-name": format!("release-{}", i % 13),
                    "meta.helm.sh/release-namespace": ns
                },
                "finalizers": ["kubernetes.io/pvc-protection"],
                "managedFields": managed
            },
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}},
                     "storageClassName": class, "volumeMode": "Filesystem", "volumeName": pv_name},
            "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"}}
        }));
        let source = if nfs {
            json!({"nfs": {"server": "old-filer.example.test", "path": format!("/exports/{ns}-{name}-{pv_name}")}})
        } else {
            json!({"csi": {"driver": driver, "volumeHandle": format!("vol-{:017x}", i * 104729),
                           "fsType": "ext4",
                           "volumeAttributes": {"storage.kubernetes.io/csiProvisionerIdentity": "1714557600000-8081-ebs.csi.aws.com"}},
                   "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                       {"key": "topology.ebs.csi.aws.com/zone", "operator": "In", "values": [format!("eu-west-1{}", ["a", "b", "c"][i % 3])]}]}]}}})
        };
        let mut spec = json!({
            "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns,
                         "name": name, "uid": uid, "resourceVersion": "1"},
            "persistentVolumeReclaimPolicy": "Delete", "storageClassName": class,
            "volumeMode": "Filesystem"
        });
        for (k, v) in source.as_object().unwrap() {
            spec[k] = v.clone();
        }
        volumes.push(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {
                "name": pv_name, "uid": format!("{:08x}-2222-4222-8333-{:012x}", i, i * 31),
                "resourceVersion": "1", "creationTimestamp": "2024-05-01T10:00:01Z",
                "annotations": {"pv.kubernetes.io/provisioned-by": driver,
                                "volume.kubernetes.io/provisioner-deletion-secret-name": "",
                                "volume.kubernetes.io/provisioner-deletion-secret-namespace": ""},
                "finalizers": ["kubernetes.io/pv-protection", "external-attacher/ebs-csi-aws-com"],
                "managedFields": [
                    {"manager": "csi-provisioner", "operation": "Update", "apiVersion": "v1",
                     "time": "2024-05-01T10:00:01Z", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:pv.kubernetes.io/provisioned-by": {}}},
                                  "f:spec": {"f:accessModes": {}, "f:capacity": {".": {}, "f:storage": {}},
                                             "f:claimRef": {".": {}, "f:apiVersion": {}, "f:kind": {}, "f:name": {},
                                                            "f:namespace": {}, "f:resourceVersion": {}, "f:uid": {}},
                                             "f:csi": {".": {}, "f:driver": {}, "f:fsType": {}, "f:volumeHandle": {}},
                                             "f:nodeAffinity": {".": {}, "f:required": {}},
                                             "f:persistentVolumeReclaimPolicy": {}, "f:storageClassName": {}, "f:volumeMode": {}}}},
                    {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                     "time": "2024-05-01T10:00:02Z", "fieldsType": "FieldsV1", "subresource": "status",
                     "fieldsV1": {"f:status": {"f:phase": {}}}}
                ]
            },
            "spec": spec,
            "status": {"phase": "Bound", "lastPhaseTransitionTime": "2024-05-01T10:00:02Z"}
        }));
    }
    (claims, volumes)
}

/// Namespace of the seeded claims (kept across runs on a real cluster).
const EXISTING_NAMESPACE: &str = "nfs-bench-existing";
/// Label on seeded objects; its value names the provisioner (a hash: names hold `/`).
const EXISTING_LABEL: &str = "nfs-bench-existing";

fn existing_label_value(provisioner_name: &str) -> String {
    nfs_provisioner::persistent_volume::directory_tree_label(provisioner_name)
}

/// `n` volumes of `provisioner_name` as it leaves them once their claims are gone under
/// reclaim policy Retain (Released, with its annotations, label and finalizer, and the
/// managedFields a real API server adds), and `n` claims that have a volume (a PV that is
/// not among these: the provisioner has nothing to do for them either).
fn existing_objects(n: usize, provisioner_name: &str, bound: bool) -> (Vec<Value>, Vec<Value>) {
    use nfs_provisioner::persistent_volume::{
        ANN_ON_DELETE, ANN_PROVISIONED_BY, FINALIZER, LABEL_DIRECTORY_TREE, directory_tree_label,
    };
    let tag = existing_label_value(provisioner_name);
    let ns = EXISTING_NAMESPACE;
    let mut claims = Vec::with_capacity(n);
    let mut volumes = Vec::with_capacity(n);
    for i in 0..n {
        let uid = format!("{i:08x}-{}-4000-8000-{:012x}", &tag[..4], i * 7919);
        let pv_name = format!("pvc-{uid}");
        let claim_name = format!("data-{i:06}");
        let claim_uid = format!("{i:08x}-5555-4555-8555-{:012x}", i * 17);
        let gone_claim = format!("gone-{i:06}");
        let directory = format!("{ns}-{gone_claim}-{pv_name}");
        volumes.push(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {
                "name": pv_name, "uid": format!("{i:08x}-3333-4333-8333-{:012x}", i * 31),
                "resourceVersion": "1", "creationTimestamp": "2025-03-01T10:00:01Z",
                "labels": {LABEL_DIRECTORY_TREE: directory_tree_label(&directory), EXISTING_LABEL: tag},
                "annotations": {ANN_PROVISIONED_BY: provisioner_name, ANN_ON_DELETE: "retain"},
                "finalizers": ["kubernetes.io/pv-protection", FINALIZER],
                "managedFields": [
                    {"manager": "nfs-provisioner", "operation": "Update", "apiVersion": "v1",
                     "time": "2025-03-01T10:00:01Z", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:nfs-provisioner.io/on-delete": {}, "f:pv.kubernetes.io/provisioned-by": {}},
                                                 "f:finalizers": {".": {}, "v:\"nfs-provisioner.io/volume-directory\"": {}},
                                                 "f:labels": {".": {}, "f:nfs-provisioner.io/directory-tree": {}}},
                                  "f:spec": {"f:accessModes": {}, "f:capacity": {".": {}, "f:storage": {}},
                                             "f:claimRef": {".": {}, "f:apiVersion": {}, "f:kind": {}, "f:name": {}, "f:namespace": {}, "f:uid": {}},
                                             "f:nfs": {".": {}, "f:path": {}, "f:server": {}},
                                             "f:persistentVolumeReclaimPolicy": {}, "f:storageClassName": {}, "f:volumeMode": {}}}},
                    {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                     "time": "2025-03-02T10:00:02Z", "fieldsType": "FieldsV1", "subresource": "status",
                     "fieldsV1": {"f:status": {"f:phase": {}}}}
                ]
            },
            "spec": {
                "accessModes": ["ReadWriteMany"], "capacity": {"storage": "1Gi"},
                "claimRef": if bound {
                    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns,
                           "name": claim_name, "uid": claim_uid, "resourceVersion": "1"})
                } else {
                    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns,
                           "name": gone_claim, "uid": format!("{i:08x}-4444-4444-8444-{:012x}", i * 13), "resourceVersion": "1"})
                },
                "nfs": {"server": "nfs.example.test", "path": format!("/exports/{directory}")},
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "nfs-bench-existing",
                "volumeMode": "Filesystem"
            },
            "status": {"phase": if bound { "Bound" } else { "Released" }}
        }));
        claims.push(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": claim_name, "namespace": ns,
                "uid": claim_uid,
                "resourceVersion": "1", "creationTimestamp": "2025-03-01T10:00:00Z",
                "labels": {"app": format!("app-{}", i % 97), EXISTING_LABEL: tag},
                "finalizers": ["kubernetes.io/pvc-protection"]
            },
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                     "storageClassName": "", "volumeMode": "Filesystem",
                     "volumeName": if bound { pv_name.clone() } else { format!("elsewhere-{i:06}") }},
            "status": if bound {
                json!({"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}})
            } else {
                json!({"phase": "Pending"})
            }
        }));
    }
    (claims, volumes)
}

/// Creates the existing volumes and claims on a real cluster (those already there from an
/// earlier run of the same provisioner name count), then waits until kube-controller-manager
/// has marked every volume Released.
async fn seed_real_cluster(t: &Target, n: usize, concurrency: usize) -> Result<(), BoxError> {
    let selector = format!(
        "{EXISTING_LABEL}={}",
        existing_label_value(&t.provisioner_name)
    );
    let pvs: Api<PersistentVolume> = Api::all(t.client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(t.client.clone(), EXISTING_NAMESPACE);
    let count = |released_only: bool| {
        let pvs = pvs.clone();
        let selector = selector.clone();
        async move {
            let mut lp = kube::api::ListParams::default()
                .labels(&selector)
                .limit(500);
            let mut total = 0;
            loop {
                let page = pvs.list(&lp).await?;
                total += page
                    .items
                    .iter()
                    .filter(|pv| {
                        !released_only
                            || pv.status.as_ref().and_then(|s| s.phase.as_deref())
                                == Some("Released")
                    })
                    .count();
                match page.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(c) => lp = lp.continue_token(&c),
                    None => return Ok::<usize, kube::Error>(total),
                }
            }
        }
    };
    let started = Instant::now();
    let present = count(false).await?;
    if present < n {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(EXISTING_NAMESPACE.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match Api::<Namespace>::all(t.client.clone())
            .create(&PostParams::default(), &ns)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let (claim_objects, volume_objects) = existing_objects(n, &t.provisioner_name, false);
        let strip = |mut v: Value| {
            // What the API server sets itself.
            let meta = v["metadata"].as_object_mut().expect("metadata");
            for field in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "managedFields",
            ] {
                meta.remove(field);
            }
            v.as_object_mut().expect("object").remove("status");
            v
        };
        let created = Arc::new(AtomicU64::new(0));
        let creations = volume_objects
            .into_iter()
            .map(|v| Either::Volume(strip(v)))
            .chain(claim_objects.into_iter().map(|c| Either::Claim(strip(c))));
        futures::stream::iter(creations)
            .map(|object| {
                let (pvs, claims, created) = (pvs.clone(), claims.clone(), created.clone());
                async move {
                    let result = match object {
                        Either::Volume(v) => pvs
                            .create(&PostParams::default(), &serde_json::from_value(v)?)
                            .await
                            .map(|_| ()),
                        Either::Claim(c) => claims
                            .create(&PostParams::default(), &serde_json::from_value(c)?)
                            .await
                            .map(|_| ()),
                    };
                    let done = created.fetch_add(1, Ordering::Relaxed) + 1;
                    if done % 10_000 == 0 {
                        eprintln!("  ... seeded {done} objects");
                    }
                    match result {
                        Ok(()) => Ok(()),
                        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                        Err(e) => Err(BoxError::from(e)),
                    }
                }
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        println!(
            "seeded {n} volumes and {n} claims on the cluster in {:.1} s ({present} volumes were there)",
            started.elapsed().as_secs_f64()
        );
    } else {
        println!("{present} seeded volumes of this provisioner name already on the cluster");
    }
    let waiting = Instant::now();
    loop {
        let released = count(true).await?;
        if released >= n {
            break;
        }
        if waiting.elapsed() > Duration::from_secs(1800) {
            return Err(format!("only {released}/{n} seeded volumes Released after 30 min").into());
        }
        eprintln!("  ... {released}/{n} seeded volumes Released");
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    println!(
        "all {n} seeded volumes Released after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

enum Either {
    Volume(Value),
    Claim(Value),
}

/// The floor (`--floor`): creates one PV per pending claim of the bench's class once
/// kube-controller-manager handed it over, and deletes a Released PV it created, with nfs-provisioner's default client limits. No events, no
/// finalizer, no directory, no cache beyond the two sets below.
struct Floor {
    ready: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Floor {
    fn start(t: &Target) -> Result<Floor, BoxError> {
        let client = kube::client::ClientBuilder::try_from(t.provisioner_config.clone())?
            .with_layer(&nfs_provisioner::kube_client::request_limits(200.0, 400))
            .build();
        let synced = Arc::new(AtomicU64::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let mark_synced = {
            let (synced, ready) = (synced.clone(), ready.clone());
            move || {
                if synced.fetch_add(1, Ordering::Relaxed) + 1 == 2 {
                    ready.store(true, Ordering::Relaxed);
                }
            }
        };
        let mut tasks = Vec::new();

        let (c, class, name, synced) = (
            client.clone(),
            t.class.clone(),
            t.provisioner_name.clone(),
            mark_synced.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let pvs: Api<PersistentVolume> = Api::all(c.clone());
            let mut created: HashSet<String> = HashSet::new();
            let stream = watcher(
                Api::<PersistentVolumeClaim>::all(c),
                watcher::Config::default(),
            );
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                let claim = match ev {
                    Ok(watcher::Event::InitDone) => {
                        synced();
                        continue;
                    }
                    Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => c,
                    _ => continue,
                };
                let spec = claim.spec.clone().unwrap_or_default();
                // Like any external provisioner, it waits until kube-controller-manager has
                // handed the claim to it (either storage-provisioner annotation).
                let handed_over = [
                    "volume.kubernetes.io/storage-provisioner",
                    "volume.beta.kubernetes.io/storage-provisioner",
                ]
                .iter()
                .any(|a| claim.annotations().get(*a) == Some(&name));
                if !handed_over
                    || spec.storage_class_name.as_deref() != Some(class.as_str())
                    || spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
                    || claim.metadata.deletion_timestamp.is_some()
                {
                    continue;
                }
                let uid = claim.uid().unwrap_or_default();
                if !created.insert(uid.clone()) {
                    continue;
                }
                let pv: PersistentVolume = serde_json::from_value(json!({
                    "metadata": {"name": format!("pvc-{uid}"),
                                 "annotations": {"pv.kubernetes.io/provisioned-by": name}},
                    "spec": {
                        "accessModes": spec.access_modes,
                        "capacity": {"storage": spec.resources.and_then(|r| r.requests)
                            .and_then(|r| r.get("storage").cloned()).unwrap_or(Quantity("1Mi".into()))},
                        "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                     "namespace": claim.namespace(), "name": claim.name_any(), "uid": uid},
                        "nfs": {"server": "nfs.example.test", "path": format!("/exports/{uid}")},
                        "persistentVolumeReclaimPolicy": "Delete", "storageClassName": class,
                        "volumeMode": "Filesystem"
                    }
                }))
                .expect("PV");
                let pvs = pvs.clone();
                tokio::spawn(async move {
                    for _ in 0..10 {
                        match pvs.create(&PostParams::default(), &pv).await {
                            Ok(_) => return,
                            Err(kube::Error::Api(s)) if s.code == 409 => return,
                            Err(e) => eprintln!("floor: creating a PV failed: {e}"),
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
            }
        }));

        let (c, name, namespace) = (client, t.provisioner_name.clone(), t.namespace.clone());
        tasks.push(tokio::spawn(async move {
            let pvs: Api<PersistentVolume> = Api::all(c);
            let mut deleted: HashSet<String> = HashSet::new();
            let stream = watcher(pvs.clone(), watcher::Config::default());
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                let pv = match ev {
                    Ok(watcher::Event::InitDone) => {
                        mark_synced();
                        continue;
                    }
                    Ok(watcher::Event::Apply(pv) | watcher::Event::InitApply(pv)) => pv,
                    _ => continue,
                };
                // Only the PVs it made for the bench's claims (not the seeded volumes).
                let ours = pv.annotations().get("pv.kubernetes.io/provisioned-by") == Some(&name)
                    && pv
                        .spec
                        .as_ref()
                        .and_then(|s| s.claim_ref.as_ref())
                        .and_then(|r| r.namespace.as_deref())
                        == Some(namespace.as_str());
                let released =
                    pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
                if !ours || !released || !deleted.insert(pv.name_any()) {
                    continue;
                }
                let pvs = pvs.clone();
                tokio::spawn(async move {
                    for _ in 0..10 {
                        match pvs.delete(&pv.name_any(), &DeleteParams::default()).await {
                            Ok(_) => return,
                            Err(kube::Error::Api(s)) if s.code == 404 => return,
                            Err(e) => eprintln!("floor: deleting a PV failed: {e}"),
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
            }
        }));
        Ok(Floor { ready, tasks })
    }

    fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Waits until the process used under 2 % of a core over the last second (at most `limit`);
/// returns how long that took.
async fn settle(pid: u32, limit: Duration) -> Duration {
    let started = Instant::now();
    if pid == 0 {
        return Duration::ZERO;
    }
    let mut last = cpu_seconds(pid).unwrap_or(0.0);
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cpu_seconds(pid).unwrap_or(0.0);
        if now - last < 0.02 {
            break;
        }
        last = now;
    }
    started.elapsed()
}

struct ResyncCost {
    /// CPU seconds of the resync: measured minus what idling costs over the same time.
    cpu: f64,
    raw_cpu: f64,
    window: Duration,
    idle_rate: f64,
    rss_before_kb: u64,
    rss_after_kb: u64,
}

/// The CPU of the first periodic resync, which starts `period` after the term began (at
/// `ready_at` at the earliest): idle CPU is measured from now until a second before it, then
/// the process is watched from there until it has been busy and is idle again.
async fn measure_resync(
    pid: u32,
    ready_at: Instant,
    period: Duration,
) -> Result<ResyncCost, BoxError> {
    let before = ready_at + period - Duration::from_secs(1);
    let idle_from = Instant::now();
    if idle_from + Duration::from_secs(2) > before {
        return Err(format!(
            "--resync-period {} s is too short: the provisioner settled only {} after it was ready",
            period.as_secs(),
            ms(idle_from - ready_at)
        )
        .into());
    }
    let idle_cpu_from = cpu_seconds(pid).unwrap_or(0.0);
    tokio::time::sleep_until(before.into()).await;
    let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
    let idle_rate = (cpu_before - idle_cpu_from) / (before - idle_from).as_secs_f64();
    let rss_before_kb = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    // The resync starts `period` after the term began, and the term begins once the caches
    // synced plus the sweeps that run first: wait (up to a minute) until the process is
    // clearly busy, then until it is idle again.
    let busy = (idle_rate * 5.0).max(0.05);
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut last = cpu_before;
    while Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = cpu_seconds(pid).unwrap_or(0.0);
        if (now - last) / 0.25 > busy {
            break;
        }
        last = now;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    settle(pid, Duration::from_secs(300)).await;
    let window = before.elapsed();
    let raw_cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    Ok(ResyncCost {
        cpu: raw_cpu - idle_rate * window.as_secs_f64(),
        raw_cpu,
        window,
        idle_rate,
        rss_before_kb,
        rss_after_kb: proc_status_kb(pid, "VmRSS:").unwrap_or(0),
    })
}

/// Samples RSS every second for `period`: first, last and highest reading.
async fn sample_idle(pid: u32, period: Duration) -> (u64, u64, u64) {
    let until = Instant::now() + period;
    let first = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let (mut last, mut max) = (first, first);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        last = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
        max = max.max(last);
    }
    (first, last, max)
}
