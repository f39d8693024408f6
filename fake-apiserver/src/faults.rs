//! Injected faults, network partitions and the request log.

use std::collections::HashMap;
use std::time::SystemTime;
use tokio::sync::watch;

/// What a matching request gets.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultAction {
    /// Answer with this HTTP status and `Status.reason` (e.g. `500, "InternalError"`,
    /// `503, "ServiceUnavailable"`, `429, "TooManyRequests"`), without touching state.
    RespondError(u16, String),
    /// Hold the request, unanswered and unapplied, until the fault is removed (then it is
    /// served normally), the connection drops, or the server shuts down.
    Hang,
    /// Apply the request, then never answer (until the fault is removed): the server did
    /// it, the client never heard.
    ApplyThenHang,
    /// Close the connection without an answer and without applying the request.
    DropConnection,
}

/// A rule selecting requests and what happens to them. Unset matchers match everything.
#[derive(Debug, Clone)]
pub struct Fault {
    pub method: Option<String>,
    pub path_prefix: Option<String>,
    /// Plural resource, optionally with subresource: `persistentvolumes/status`.
    pub resource: Option<String>,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: Option<String>,
    pub user: Option<String>,
    pub name: Option<String>,
    pub action: FaultAction,
    /// Fire at most this many times (then the rule stays, inert).
    pub times: Option<usize>,
}

impl Fault {
    pub fn new(action: FaultAction) -> Fault {
        Fault {
            method: None,
            path_prefix: None,
            resource: None,
            verb: None,
            user: None,
            name: None,
            action,
            times: None,
        }
    }
    pub fn method(mut self, m: &str) -> Fault {
        self.method = Some(m.to_ascii_uppercase());
        self
    }
    pub fn path_prefix(mut self, p: &str) -> Fault {
        self.path_prefix = Some(p.into());
        self
    }
    pub fn resource(mut self, r: &str) -> Fault {
        self.resource = Some(r.into());
        self
    }
    pub fn verb(mut self, v: &str) -> Fault {
        self.verb = Some(v.into());
        self
    }
    pub fn user(mut self, u: &str) -> Fault {
        self.user = Some(u.into());
        self
    }
    pub fn name(mut self, n: &str) -> Fault {
        self.name = Some(n.into());
        self
    }
    pub fn times(mut self, n: usize) -> Fault {
        self.times = Some(n);
        self
    }
}

/// Returned by `add_fault`: how often the fault fired, and a way to wait for it.
#[derive(Debug, Clone)]
pub struct FaultHandle {
    pub(crate) id: u64,
    pub(crate) hits: watch::Receiver<usize>,
}

impl FaultHandle {
    /// How many requests this fault has caught so far.
    pub fn hits(&self) -> usize {
        *self.hits.borrow()
    }
    /// Waits until the fault has fired at least `n` times in total.
    pub async fn wait_hits(&self, n: usize) {
        let mut rx = self.hits.clone();
        let _ = rx.wait_for(|h| *h >= n).await;
    }
    /// Waits until the fault has fired at least once.
    pub async fn triggered(&self) {
        self.wait_hits(1).await
    }
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// The part of a request faults match on.
#[derive(Debug, Clone)]
pub(crate) struct RequestInfo {
    pub method: String,
    pub path: String,
    pub resource: Option<String>,
    pub verb: Option<String>,
    pub user: String,
    pub name: Option<String>,
}

pub(crate) struct ActiveFault {
    pub fault: Fault,
    pub fired: usize,
    pub hits: watch::Sender<usize>,
}

impl ActiveFault {
    fn matches(&self, r: &RequestInfo) -> bool {
        let f = &self.fault;
        if f.times.is_some_and(|t| self.fired >= t) {
            return false;
        }
        f.method.as_ref().is_none_or(|m| *m == r.method)
            && f.path_prefix
                .as_ref()
                .is_none_or(|p| r.path.starts_with(p.as_str()))
            && f.resource
                .as_ref()
                .is_none_or(|x| Some(x) == r.resource.as_ref())
            && f.verb.as_ref().is_none_or(|x| Some(x) == r.verb.as_ref())
            && f.user.as_ref().is_none_or(|x| *x == r.user)
            && f.name.as_ref().is_none_or(|x| Some(x) == r.name.as_ref())
    }
}

/// How a partitioned user's requests fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partition {
    /// Requests hang (and open watches go silent) until healed.
    Hang,
    /// Connections are closed at once (and open watches are cut).
    Refuse,
}

#[derive(Default)]
pub(crate) struct FaultState {
    pub next_id: u64,
    pub faults: Vec<(u64, ActiveFault)>,
    pub partitions: HashMap<String, Partition>,
}

impl FaultState {
    /// Finds the first matching fault and counts the hit.
    pub fn fire(&mut self, r: &RequestInfo) -> Option<(u64, FaultAction)> {
        for (id, f) in &mut self.faults {
            if f.matches(r) {
                f.fired += 1;
                let n = f.fired;
                f.hits.send_replace(n);
                return Some((*id, f.fault.action.clone()));
            }
        }
        None
    }
    pub fn has(&self, id: u64) -> bool {
        self.faults.iter().any(|(i, _)| *i == id)
    }
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub seq: u64,
    pub at: SystemTime,
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub user: String,
    /// RBAC verb, when the path named a served resource.
    pub verb: Option<String>,
    /// `resource` or `resource/subresource`.
    pub resource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// HTTP status sent; `None` while unanswered (hanging) or when the connection was dropped.
    pub status: Option<u16>,
    /// Id of the fault that caught it, if any.
    pub fault: Option<u64>,
}
