//! A stateful, in-process stand-in for kube-apiserver (and the PV binder of
//! kube-controller-manager) for tests and benchmarks of the NFS provisioner.
//!
//! Start it with [`FakeApiServer::start`], point a `kube::Client` at [`FakeApiServer::url`]
//! with a bearer token from [`FakeApiServer::token_for`], and drive or inspect it through
//! the test API on [`FakeApiServer`]. See README.md for what it models.

mod discovery;
mod faults;
mod kcm;
pub mod local_cluster;
mod patch;
mod rbac;
mod resource;
mod server;
mod status;
mod store;
mod table;
mod util;

pub use faults::{Fault, FaultAction, FaultHandle, Partition, RequestRecord};
pub use kcm::{
    ANN_BETA_STORAGE_PROVISIONER, ANN_BIND_COMPLETED, ANN_BOUND_BY_CONTROLLER, ANN_PROVISIONED_BY,
    ANN_SELECTED_NODE, ANN_STORAGE_PROVISIONER,
};
pub use rbac::RbacPolicy;
pub use resource::Kind;
pub use store::{KubeVersion, PV_PROTECTION, PVC_PROTECTION};

use faults::{ActiveFault, FaultState};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How to start the server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen; default `127.0.0.1:0`.
    pub addr: SocketAddr,
    /// Which control plane to imitate where versions differ (default v1.33).
    pub kube_version: KubeVersion,
    /// Run the kube-controller-manager stand-in (binder, pvc/pv-protection). Default on.
    pub controller_manager: bool,
    /// Sleep between two writes of the controller manager (default none).
    pub controller_step_delay: Option<Duration>,
    /// Delay added to every request before it is handled (default zero).
    pub latency: Duration,
    /// How often watches that asked for bookmarks get one (`None`: never). Default 1 s.
    pub bookmark_interval: Option<Duration>,
    /// Watch events kept per kind; older revisions answer 410 Expired. Default 10 000.
    pub history_limit: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            kube_version: KubeVersion::V1_33,
            controller_manager: true,
            controller_step_delay: None,
            latency: Duration::ZERO,
            bookmark_interval: Some(Duration::from_secs(1)),
            history_limit: 10_000,
        }
    }
}

pub(crate) struct Inner {
    pub store: Mutex<Store>,
    pub rv_tx: watch::Sender<u64>,
    pub faults: Mutex<FaultState>,
    pub faults_tx: watch::Sender<u64>,
    pub rbac: Mutex<Option<Arc<RbacPolicy>>>,
    pub tokens: Mutex<HashMap<String, String>>,
    pub requests: Mutex<Vec<RequestRecord>>,
    pub req_seq: AtomicU64,
    pub shutdown_tx: watch::Sender<bool>,
    pub latency: Duration,
    pub bookmark_interval: Option<Duration>,
    /// (enabled, paused)
    pub kcm_tx: watch::Sender<(bool, bool)>,
    pub kcm_step_delay: Option<Duration>,
}

impl Inner {
    /// Runs `f` on the store and wakes watchers if it wrote.
    pub fn with_store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let mut s = self.store.lock().expect("lock");
        let before = s.rv;
        let r = f(&mut s);
        let after = s.rv;
        drop(s);
        if after != before {
            self.rv_tx.send_replace(after);
        }
        r
    }

    pub fn current_rv(&self) -> u64 {
        self.store.lock().expect("lock").rv
    }

    pub fn kcm_active(&self) -> bool {
        let (enabled, paused) = *self.kcm_tx.borrow();
        enabled && !paused
    }

    fn bump_faults(&self) {
        self.faults_tx.send_modify(|g| *g += 1);
    }
}

/// The fake API server. Dropping it shuts it down.
pub struct FakeApiServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

impl FakeApiServer {
    /// Binds, then serves on the current tokio runtime.
    pub async fn start(opts: Options) -> std::io::Result<FakeApiServer> {
        let listener = TcpListener::bind(opts.addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            store: Mutex::new(Store::new(opts.history_limit, opts.kube_version)),
            rv_tx: watch::channel(1).0,
            faults: Mutex::new(FaultState::default()),
            faults_tx: watch::channel(0).0,
            rbac: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            req_seq: AtomicU64::new(0),
            shutdown_tx: watch::channel(false).0,
            latency: opts.latency,
            bookmark_interval: opts.bookmark_interval,
            kcm_tx: watch::channel((opts.controller_manager, false)).0,
            kcm_step_delay: opts.controller_step_delay,
        });
        tokio::spawn(accept_loop(inner.clone(), listener));
        tokio::spawn(kcm::run(inner.clone()));
        Ok(FakeApiServer { inner, addr })
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes connections, ends watches and hanging requests.
    pub fn shutdown(&self) {
        self.inner.shutdown_tx.send_replace(true);
    }

    // ---- identities ------------------------------------------------------------------

    /// A bearer token that authenticates as `user` (registered on first use).
    pub fn token_for(&self, user: &str) -> String {
        let token = format!("fake-token:{user}");
        self.add_user(&token, user);
        token
    }

    /// Registers a bearer token for `user`. Unknown or missing tokens are `system:anonymous`.
    pub fn add_user(&self, token: &str, user: &str) {
        self.inner
            .tokens
            .lock()
            .expect("lock")
            .insert(token.to_string(), user.to_string());
    }

    // ---- request log -----------------------------------------------------------------

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.inner.requests.lock().expect("lock").clone()
    }

    pub fn clear_requests(&self) {
        self.inner.requests.lock().expect("lock").clear();
    }

    /// Requests answered 403.
    pub fn denied_requests(&self) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == Some(403))
            .collect()
    }

    // ---- state -------------------------------------------------------------------------

    /// An object by kind, namespace (ignored for cluster-scoped kinds) and name.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let ns = if kind.namespaced() { namespace } else { "" };
        self.inner
            .store
            .lock()
            .expect("lock")
            .get(kind, &(ns.to_string(), name.to_string()))
            .map(|v| (*v).clone())
    }

    /// All objects of a kind, ordered by namespace and name.
    pub fn list(&self, kind: Kind) -> Vec<Value> {
        self.inner
            .store
            .lock()
            .expect("lock")
            .ks(kind)
            .objects
            .values()
            .map(|v| (**v).clone())
            .collect()
    }

    /// Stores an object as given, bypassing admission, validation and RBAC (the kind comes
    /// from `apiVersion` and `kind`; uid and creationTimestamp are filled when missing).
    /// Watchers see ADDED or MODIFIED. Returns the stored object.
    pub fn put_object(&self, obj: Value) -> Result<Value, String> {
        let av = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let k = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        let kind = Kind::from_api_version_kind(av, k)
            .ok_or_else(|| format!("unsupported apiVersion/kind {av}/{k}"))?;
        if util::meta_str(&obj, "name").is_none() {
            return Err("metadata.name is required".into());
        }
        Ok((*self.inner.with_store(|s| s.put_raw(kind, obj))).clone())
    }

    /// Many objects in one go (one lock).
    pub fn put_objects(&self, objs: Vec<Value>) -> Result<usize, String> {
        let n = objs.len();
        for o in objs {
            self.put_object(o)?;
        }
        Ok(n)
    }

    /// Changes a stored object in place (no admission, no RBAC); watchers see MODIFIED.
    pub fn modify_object(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let ns = if kind.namespaced() { namespace } else { "" };
        self.inner.with_store(|s| {
            let mut obj = (*s.get(kind, &(ns.to_string(), name.to_string()))?).clone();
            f(&mut obj);
            Some((*s.put_raw(kind, obj)).clone())
        })
    }

    /// Removes an object at once, whatever its finalizers; watchers see DELETED.
    pub fn delete_object(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let ns = if kind.namespaced() { namespace } else { "" };
        self.inner
            .with_store(|s| s.delete_raw(kind, &(ns.to_string(), name.to_string())))
            .map(|v| (*v).clone())
    }

    /// Drops all watch history (like an etcd compaction): any watch or continue token from
    /// an older resourceVersion now gets 410 Expired.
    pub fn compact(&self) {
        self.inner.with_store(|s| s.compact());
    }

    /// Ends every open watch stream (cleanly, like an API server restart or timeout).
    pub fn close_watches(&self) {
        self.inner.with_store(|s| s.watch_epoch += 1);
        let rv = self.inner.current_rv();
        self.inner.rv_tx.send_replace(rv);
    }

    /// Compaction and closing of all watches in one step, so that every watcher has to
    /// resume from a compacted revision.
    pub fn compact_and_close_watches(&self) {
        self.inner.with_store(|s| {
            s.compact();
            s.watch_epoch += 1;
        });
        let rv = self.inner.current_rv();
        self.inner.rv_tx.send_replace(rv);
    }

    pub fn current_resource_version(&self) -> u64 {
        self.inner.current_rv()
    }

    /// Waits until `pred` holds for the server's state; re-checked after every write.
    /// Returns whether it held before `timeout`.
    pub async fn wait_for(&self, pred: impl Fn(&FakeApiServer) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut rx = self.inner.rv_tx.subscribe();
        loop {
            rx.borrow_and_update();
            if pred(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), rx.changed()).await;
        }
    }

    /// Waits until the object satisfies `pred` (`None` = absent) and returns it.
    pub async fn wait_for_object(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        pred: impl Fn(Option<&Value>) -> bool,
        timeout: Duration,
    ) -> Result<Option<Value>, Option<Value>> {
        let ok = self
            .wait_for(|s| pred(s.get(kind, namespace, name).as_ref()), timeout)
            .await;
        let v = self.get(kind, namespace, name);
        if ok { Ok(v) } else { Err(v) }
    }

    // ---- RBAC --------------------------------------------------------------------------

    /// `None` allows everything (the default).
    pub fn set_rbac(&self, policy: Option<RbacPolicy>) {
        *self.inner.rbac.lock().expect("lock") = policy.map(Arc::new);
    }

    // ---- faults ------------------------------------------------------------------------

    pub fn add_fault(&self, fault: Fault) -> FaultHandle {
        let (tx, rx) = watch::channel(0);
        let id = {
            let mut f = self.inner.faults.lock().expect("lock");
            f.next_id += 1;
            let id = f.next_id;
            f.faults.push((
                id,
                ActiveFault {
                    fault,
                    fired: 0,
                    hits: tx,
                },
            ));
            id
        };
        self.inner.bump_faults();
        FaultHandle { id, hits: rx }
    }

    /// Removes one fault; requests it holds go on.
    pub fn remove_fault(&self, handle: &FaultHandle) {
        self.inner
            .faults
            .lock()
            .expect("lock")
            .faults
            .retain(|(id, _)| *id != handle.id);
        self.inner.bump_faults();
    }

    /// Removes all faults; held requests go on.
    pub fn clear_faults(&self) {
        self.inner.faults.lock().expect("lock").faults.clear();
        self.inner.bump_faults();
    }

    /// Cuts `user` off (`true`: requests and watches hang until healed) or heals it.
    pub fn partition_user(&self, user: &str, partitioned: bool) {
        if partitioned {
            self.set_partition(user, Some(Partition::Hang));
        } else {
            self.set_partition(user, None);
        }
    }

    /// Sets how `user` is cut off; `None` heals.
    pub fn set_partition(&self, user: &str, mode: Option<Partition>) {
        {
            let mut f = self.inner.faults.lock().expect("lock");
            match mode {
                Some(m) => {
                    f.partitions.insert(user.to_string(), m);
                }
                None => {
                    f.partitions.remove(user);
                }
            }
        }
        self.inner.bump_faults();
    }

    // ---- controller manager -----------------------------------------------------------

    /// Pauses (`true`) or resumes the controller-manager stand-in.
    pub fn pause_controller_manager(&self, paused: bool) {
        self.inner.kcm_tx.send_modify(|s| s.1 = paused);
        // a step checks the flag under the store lock: once we hold it, none is in flight
        drop(self.inner.store.lock().expect("lock"));
    }

    /// Turns the controller-manager stand-in on or off.
    pub fn set_controller_manager(&self, enabled: bool) {
        self.inner.kcm_tx.send_modify(|s| s.0 = enabled);
        drop(self.inner.store.lock().expect("lock"));
    }

    /// Switches the imitated version (affects later writes only).
    pub fn set_kube_version(&self, v: KubeVersion) {
        self.inner.store.lock().expect("lock").version = v;
        self.inner.kcm_tx.send_modify(|_| {});
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let mut shutdown = inner.shutdown_tx.subscribe();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|v| *v) => return,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let inner = inner.clone();
        tokio::spawn(async move {
            let mut shutdown = inner.shutdown_tx.subscribe();
            let svc_inner = inner.clone();
            let svc = hyper::service::service_fn(move |req| server::handle(svc_inner.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.wait_for(|v| *v) => {}
            }
        });
    }
}
