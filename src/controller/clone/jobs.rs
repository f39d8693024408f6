//! Copies run in the background, a bounded number at once, so a worker never waits for one:
//! the claim's reconcile starts its copy and returns; when the copy ends, the claim is queued
//! again and its next reconcile puts the copy in place and creates the PV.
//!
//! A copy belongs to the leadership term that started it: losing the lease or shutting down
//! cancels it, and the next term copies again from the start (an incomplete copy is never
//! used; see `crate::storage::staging`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::super::events::{
    EventPublisher, REASON_CLONE_PROGRESS, REASON_CLONE_STARTED, REASON_CLONE_WAITING,
};
use super::SourceRef;
use crate::nfs_plugin::CloneTarget;
use crate::objects::Claim;
use crate::quantity::HumanBytes;
use crate::storage::{CopyOutcome, CopyProgress, NfsRoot, StorageError};

/// One claim's copy.
struct Job {
    key: ObjectRef<Claim>,
    source: SourceRef,
    export: String,
    state: State,
}

/// How it stands.
enum State {
    /// Copying, or waiting for a slot; `cancel` abandons it.
    Running { cancel: CancellationToken },
    Done {
        target: CloneTarget,
        result: Result<CopyOutcome, StorageError>,
    },
}

/// The copy of a claim that is gone: its staging place to throw away and its source to
/// release.
pub struct Abandoned {
    pub uid: String,
    pub source: SourceRef,
    pub export: String,
    pub target: CloneTarget,
}

/// What a finished copy left for the claim's next reconcile.
pub enum Finished {
    Copied {
        target: CloneTarget,
        outcome: CopyOutcome,
    },
    Failed(StorageError),
}

/// The copies of this process, by claim UID.
#[derive(Clone)]
pub struct CloneJobs {
    slots: Arc<Semaphore>,
    max: usize,
    /// At most one progress event per copy this often (a copy that takes hours must not
    /// flood its claim's events).
    progress_every: Duration,
    jobs: Arc<Mutex<HashMap<String, Job>>>,
}

/// What a started copy needs besides the copy itself.
pub struct JobContext {
    pub root: NfsRoot,
    pub events: EventPublisher,
    pub tasks: TaskTracker,
    pub claim: Claim,
    pub source: SourceRef,
    /// The export copied on (its name).
    pub export: String,
    /// Called once the copy ended (queues the claim again).
    pub ended: Box<dyn FnOnce() + Send + Sync>,
}

impl CloneJobs {
    pub fn new(max_at_once: usize, progress_every: Duration) -> Self {
        CloneJobs {
            slots: Arc::new(Semaphore::new(max_at_once)),
            max: max_at_once,
            progress_every,
            jobs: Default::default(),
        }
    }

    /// Whether a copy for this claim UID is running (or waiting for a slot).
    pub fn is_running(&self, uid: &str) -> bool {
        matches!(
            self.lock().get(uid),
            Some(Job {
                state: State::Running { .. },
                ..
            })
        )
    }

    /// The ended copy of this claim, taken (the next call returns `None`).
    pub fn take_finished(&self, uid: &str) -> Option<Finished> {
        let mut jobs = self.lock();
        if !matches!(
            jobs.get(uid),
            Some(Job {
                state: State::Done { .. },
                ..
            })
        ) {
            return None;
        }
        match jobs.remove(uid)?.state {
            State::Done {
                target,
                result: Ok(outcome),
            } => Some(Finished::Copied { target, outcome }),
            State::Done { result: Err(e), .. } => Some(Finished::Failed(e)),
            State::Running { .. } => None,
        }
    }

    /// The claim `key` is gone: a running copy for it is cancelled (it ends soon and queues
    /// the claim again), an ended one is taken for cleaning up.
    pub fn abandon(&self, key: &ObjectRef<Claim>) -> Option<Abandoned> {
        let mut jobs = self.lock();
        let uid = jobs
            .iter()
            .find(|(_, job)| job.key == *key)
            .map(|(uid, _)| uid.clone())?;
        if let State::Running { cancel } = &jobs.get(&uid)?.state {
            cancel.cancel();
            return None;
        }
        let job = jobs.remove(&uid)?;
        match job.state {
            State::Done { target, .. } => Some(Abandoned {
                uid,
                source: job.source,
                export: job.export,
                target,
            }),
            State::Running { .. } => None,
        }
    }

    /// Forgets ended copies of claims `gone` says no longer wait (their result is never
    /// taken).
    pub fn forget_ended(&self, gone: impl Fn(&str) -> bool) {
        self.lock()
            .retain(|uid, job| matches!(job.state, State::Running { .. }) || !gone(uid));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts copying `target` for the claim in `job` unless a copy for it already runs.
    /// `term` cancels it.
    pub fn start(&self, target: CloneTarget, job: JobContext, term: &CancellationToken) {
        let uid = job.claim.uid().unwrap_or_default();
        let cancel = term.child_token();
        {
            let mut jobs = self.lock();
            if jobs.contains_key(&uid) {
                return;
            }
            jobs.insert(
                uid.clone(),
                Job {
                    key: ObjectRef::from_obj(&job.claim),
                    source: job.source.clone(),
                    export: job.export.clone(),
                    state: State::Running {
                        cancel: cancel.clone(),
                    },
                },
            );
        }
        let this = self.clone();
        let (tasks, term) = (job.tasks.clone(), term.clone());
        tasks.spawn(async move {
            let result = this.run(&target, &job, &cancel).await;
            {
                let mut jobs = this.lock();
                if term.is_cancelled() {
                    // The term ended: the next one starts over.
                    jobs.remove(&uid);
                } else if let Some(entry) = jobs.get_mut(&uid) {
                    // Finished, failed, or abandoned because the claim is gone.
                    entry.state = State::Done { target, result };
                }
            }
            (job.ended)();
        });
    }

    async fn run(
        &self,
        target: &CloneTarget,
        job: &JobContext,
        cancel: &CancellationToken,
    ) -> Result<CopyOutcome, StorageError> {
        let claim = &job.claim;
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let note = format!(
                    "waiting to copy claim {}: {} copies run at once (--max-concurrent-clones)",
                    job.source.name, self.max
                );
                job.events
                    .on_claim(claim, EventType::Normal, REASON_CLONE_WAITING, note)
                    .await;
                tokio::select! {
                    _ = cancel.cancelled() => return Err(StorageError::Cancelled),
                    permit = self.slots.clone().acquire_owned() => {
                        permit.map_err(|_| StorageError::Cancelled)?
                    }
                }
            }
        };
        info!(claim = %format!("{}/{}", claim.namespace().unwrap_or_default(), claim.name_any()), source = %target.source, destination = %target.destination, "copying for a clone");
        job.events
            .on_claim(
                claim,
                EventType::Normal,
                REASON_CLONE_STARTED,
                format!(
                    "copying claim {} into a new directory ({}); progress is reported at most every {:?}",
                    job.source.name, target.destination, self.progress_every
                ),
            )
            .await;
        let last_report = Mutex::new(Instant::now());
        let every = self.progress_every;
        let (events, tasks, reported_claim) =
            (job.events.clone(), job.tasks.clone(), claim.clone());
        let progress = move |p: &CopyProgress| {
            let mut last = last_report.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < every {
                return;
            }
            *last = Instant::now();
            let note = format!(
                "copied {} in {} entries so far",
                HumanBytes(u128::from(p.bytes)),
                p.entries
            );
            let (events, claim) = (events.clone(), reported_claim.clone());
            tasks.spawn(async move {
                events
                    .on_claim(&claim, EventType::Normal, REASON_CLONE_PROGRESS, note)
                    .await
            });
        };
        let result = job
            .root
            .copy_volume_dir(&target.source, &target.staging, &progress, cancel)
            .await;
        drop(permit);
        if let Err(e) = &result
            && !cancel.is_cancelled()
        {
            warn!(claim = %claim.name_any(), error = %e, "copy for a clone failed");
        }
        result
    }
}
