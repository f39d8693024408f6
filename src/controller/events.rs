//! Kubernetes Events (events.k8s.io/v1) on claims and volumes, with the reasons users and
//! tooling already know from the Go provisioner.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::{EventType, Reporter};
use kube::{Api, Client, Resource};
use tracing::warn;

use crate::kube_client::WorkLoad;
use crate::objects::{Claim, Volume};

use crate::metrics::Metrics;

pub const REASON_PROVISIONING_SUCCEEDED: &str = "ProvisioningSucceeded";
pub const REASON_PROVISIONING_FAILED: &str = "ProvisioningFailed";
pub const REASON_VOLUME_FAILED_DELETE: &str = "VolumeFailedDelete";
/// A directory left in place because another PV uses it, a directory inside it or one above it.
pub const REASON_DIRECTORY_SHARED: &str = "VolumeDirectoryShared";
/// A directory left in place because it existed before the volume was provisioned.
pub const REASON_DATA_PREDATES_VOLUME: &str = "VolumeDataPredatesVolume";
/// A deleted PV that carried our finalizer but no `provisioned-by` annotation: let go, its
/// directory untouched.
pub const REASON_RELEASED_UNTOUCHED: &str = "VolumeReleasedDataKept";
/// A Released PV whose claim still exists (the binder judged from a stale cache): not deleted.
pub const REASON_CLAIM_STILL_EXISTS: &str = "VolumeClaimStillExists";
/// Claim expansion, with kubernetes-csi/external-resizer's reasons.
pub const REASON_RESIZING: &str = "Resizing";
pub const REASON_RESIZE_SUCCEEDED: &str = "VolumeResizeSuccessful";
pub const REASON_RESIZE_FAILED: &str = "VolumeResizeFailed";

/// Cloning: waiting for a copy slot, the copy started, how far it got (at most once a
/// minute), and what the copy could not keep (a Warning).
pub const REASON_CLONE_WAITING: &str = "CloneWaiting";
pub const REASON_CLONE_STARTED: &str = "CloneStarted";
pub const REASON_CLONE_PROGRESS: &str = "CloneProgress";
pub const REASON_CLONE_DIFFERENCES: &str = "CloneDifferences";

/// Namespace of Events about cluster-scoped objects (PVs). v1.19 accepts such an Event only in
/// `kube-system` (422 "involvedObject.namespace: does not match event.namespace" in `default`),
/// v1.33 in `default` or `kube-system`; `kubectl describe pv` finds it in either.
pub const CLUSTER_SCOPED_EVENT_NAMESPACE: &str = "kube-system";

/// How long a written warning is remembered to fold repeats into its series (as client-go
/// and kube's recorder do).
const SERIES_TTL: std::time::Duration = std::time::Duration::from_secs(6 * 60);

/// What makes two warnings "the same" for folding. Unlike kube's recorder the note is part
/// of it: v1.33 refuses to change an Event's note (422 "message: field is immutable"), so a
/// different note is a new Event, and the series patch changes only `series`.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    warning: bool,
    reason: String,
    note: String,
    regarding_uid: String,
    regarding_name: String,
    regarding_namespace: String,
}

struct Series {
    namespace: String,
    name: String,
    count: i32,
    last: std::time::Instant,
}

/// Events waiting to be written, at most this many; beyond it publishing waits (an Event is
/// never dropped) unless it repeats one already waiting, which it is folded into.
const QUEUE_CAPACITY: usize = 4096;

/// How long an Event waits for the work client to be idle before it is written anyway.
const MAX_DEFERRAL: std::time::Duration = std::time::Duration::from_secs(5);

/// How often the writer looks whether the work client became idle.
const IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// One Event to write.
struct Pending {
    reference: ObjectReference,
    warning: bool,
    reason: String,
    note: String,
    /// Folded with earlier identical Events into one Event with a series count; one-off
    /// Events (`ProvisioningSucceeded`) are not.
    series: bool,
    /// Identical Events folded into this one while it waited.
    repeats: i32,
    queued: std::time::Instant,
}

impl Pending {
    fn repeats(&self, other: &Pending) -> bool {
        self.series
            && other.series
            && self.warning == other.warning
            && self.reason == other.reason
            && self.note == other.note
            && self.reference.uid == other.reference.uid
            && self.reference.name == other.reference.name
            && self.reference.namespace == other.reference.namespace
    }
}

#[derive(Default)]
struct Queue {
    pending: std::collections::VecDeque<Pending>,
    /// The writer holds one it took from `pending`.
    writing: bool,
}

#[derive(Default)]
struct Shared {
    queue: std::sync::Mutex<Queue>,
    /// Something was queued, taken or written.
    changed: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes Events. Hand-written instead of kube's `Recorder`, which puts Events about
/// cluster-scoped objects in `default`, a namespace v1.19 refuses them in. Warnings fold
/// repeats (a claim failing again and again) into one Event with a growing series count, as
/// client-go does; one-off success events skip that cache, so a burst of thousands of claims
/// does not grow it.
///
/// Publishing queues the Event and returns; one writer task writes them in the order they
/// were published, one at a time, and only while the work client is idle (no request in
/// flight or waiting for a token; see [`crate::kube_client::WorkLoad`]) or once an Event
/// waited [`MAX_DEFERRAL`]: a PV create never queues behind Events, which only people read.
#[derive(Clone)]
pub struct EventPublisher {
    client: Client,
    reporter: Reporter,
    metrics: Metrics,
    series: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<SeriesKey, Series>>>,
    shared: std::sync::Arc<Shared>,
    load: WorkLoad,
}

impl EventPublisher {
    /// Writes with `client`, without waiting for any other client.
    pub fn new(client: Client, provisioner_name: &str, identity: &str, metrics: Metrics) -> Self {
        Self::yielding_to(
            client,
            WorkLoad::default(),
            provisioner_name,
            identity,
            metrics,
        )
    }

    /// Writes with `client` whenever `load` is idle. Starts the writer task.
    pub fn yielding_to(
        client: Client,
        load: WorkLoad,
        provisioner_name: &str,
        identity: &str,
        metrics: Metrics,
    ) -> Self {
        let reporter = Reporter {
            controller: provisioner_name.to_string(),
            instance: Some(identity.to_string()),
        };
        let publisher = Self {
            client,
            reporter,
            metrics,
            series: Default::default(),
            shared: Default::default(),
            load,
        };
        tokio::spawn(publisher.clone().write_queued());
        publisher
    }

    pub async fn on_claim(&self, claim: &Claim, kind: EventType, reason: &str, note: String) {
        self.publish(claim.object_ref(&()), kind, reason, note, true)
            .await;
    }

    pub async fn on_volume(&self, pv: &Volume, kind: EventType, reason: &str, note: String) {
        self.publish(pv.object_ref(&()), kind, reason, note, true)
            .await;
    }

    /// A Normal `ProvisioningSucceeded`-style event that happens once per object: written
    /// without the series cache. Events are for people; failing to write one never fails
    /// the operation.
    pub async fn success_on_claim(&self, claim: &Claim, reason: &str, note: String) {
        self.publish(
            claim.object_ref(&()),
            EventType::Normal,
            reason,
            note,
            false,
        )
        .await;
    }

    /// Queues an Event (waits only while [`QUEUE_CAPACITY`] Events are already waiting).
    async fn publish(
        &self,
        reference: ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
        series: bool,
    ) {
        let event = Pending {
            reference,
            warning: matches!(type_, EventType::Warning),
            reason: reason.to_string(),
            note: truncate(note, 1024),
            series,
            repeats: 1,
            queued: std::time::Instant::now(),
        };
        loop {
            let changed = self.shared.changed.notified();
            {
                let mut queue = self.shared.lock();
                if let Some(waiting) = queue.pending.iter_mut().find(|p| p.repeats(&event)) {
                    waiting.repeats += 1;
                    return;
                }
                if queue.pending.len() < QUEUE_CAPACITY {
                    queue.pending.push_back(event);
                    drop(queue);
                    self.shared.changed.notify_waiters();
                    return;
                }
            }
            changed.await;
        }
    }

    /// Waits until every queued Event was written, at most `within`; returns how many were
    /// left unwritten.
    pub async fn flush(&self, within: std::time::Duration) -> usize {
        let written = async {
            loop {
                let changed = self.shared.changed.notified();
                {
                    let queue = self.shared.lock();
                    if queue.pending.is_empty() && !queue.writing {
                        return;
                    }
                }
                changed.await;
            }
        };
        let _ = tokio::time::timeout(within, written).await;
        let queue = self.shared.lock();
        queue.pending.len() + usize::from(queue.writing)
    }

    /// The writer: takes queued Events in order and writes each one once the work client is
    /// idle (or the Event waited long enough).
    async fn write_queued(self) {
        loop {
            let queued = loop {
                let changed = self.shared.changed.notified();
                if let Some(front) = self.shared.lock().pending.front() {
                    break front.queued;
                }
                changed.await;
            };
            let deadline = queued + MAX_DEFERRAL;
            while !self.load.is_idle() && std::time::Instant::now() < deadline {
                tokio::time::sleep(IDLE_POLL).await;
            }
            let next = {
                let mut queue = self.shared.lock();
                let next = queue.pending.pop_front();
                queue.writing = next.is_some();
                next
            };
            self.shared.changed.notify_waiters();
            if let Some(event) = next {
                self.write(event).await;
            }
            self.shared.lock().writing = false;
            self.shared.changed.notify_waiters();
        }
    }

    /// Writes one Event: a new one, or (a repeat of a warning written within [`SERIES_TTL`])
    /// the series count of the one written before. Failures are counted and logged.
    async fn write(&self, event: Pending) {
        let Pending {
            reference,
            warning,
            reason,
            note,
            series,
            repeats,
            ..
        } = event;
        let type_ = if warning { "Warning" } else { "Normal" };
        if !series {
            let event = self.event(&reference, type_, &reason, note);
            if let Err(e) = self.create(&event).await {
                self.failed(&reference, &reason, &e);
            }
            return;
        }
        let key = SeriesKey {
            warning,
            reason: reason.clone(),
            note: note.clone(),
            regarding_uid: reference.uid.clone().unwrap_or_default(),
            regarding_name: reference.name.clone().unwrap_or_default(),
            regarding_namespace: reference.namespace.clone().unwrap_or_default(),
        };
        let repeat = {
            let mut series = self.series.lock().expect("event series lock");
            series.retain(|_, s| s.last.elapsed() < SERIES_TTL);
            series.get_mut(&key).map(|s| {
                s.count += repeats;
                s.last = std::time::Instant::now();
                (s.namespace.clone(), s.name.clone(), s.count)
            })
        };
        let result = match repeat {
            Some((namespace, name, count)) => self.patch_count(&namespace, &name, count).await,
            None => {
                let event = self.event(&reference, type_, &reason, note);
                let (namespace, name) = (
                    event.metadata.namespace.clone().unwrap_or_default(),
                    event.metadata.name.clone().unwrap_or_default(),
                );
                let mut result = self.create(&event).await;
                if result.is_ok() && repeats > 1 {
                    result = self.patch_count(&namespace, &name, repeats).await;
                }
                if result.is_ok() {
                    self.series.lock().expect("event series lock").insert(
                        key,
                        Series {
                            namespace,
                            name,
                            count: repeats,
                            last: std::time::Instant::now(),
                        },
                    );
                }
                result
            }
        };
        if let Err(e) = result {
            self.failed(&reference, &reason, &e);
        }
    }

    async fn patch_count(
        &self,
        namespace: &str,
        name: &str,
        count: i32,
    ) -> Result<(), kube::Error> {
        let patch = serde_json::json!({
            "series": {"count": count, "lastObservedTime": MicroTime(Timestamp::now())},
        });
        Api::<K8sEvent>::namespaced(self.client.clone(), namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }

    fn event(
        &self,
        reference: &ObjectReference,
        type_: &str,
        reason: &str,
        note: String,
    ) -> K8sEvent {
        let now = Timestamp::now();
        let controller = &self.reporter.controller;
        let action = match reason {
            REASON_VOLUME_FAILED_DELETE
            | REASON_DIRECTORY_SHARED
            | REASON_DATA_PREDATES_VOLUME
            | REASON_RELEASED_UNTOUCHED
            | REASON_CLAIM_STILL_EXISTS => "Delete",
            REASON_RESIZING | REASON_RESIZE_SUCCEEDED | REASON_RESIZE_FAILED => "Resize",
            crate::usage::REASON_USAGE_OVER_REQUEST | crate::usage::REASON_USAGE_WITHIN_REQUEST => {
                "Measure"
            }
            _ => "Provision",
        };
        K8sEvent {
            action: Some(action.to_string()),
            reason: Some(reason.to_string()),
            event_time: Some(MicroTime(now)),
            note: Some(truncate(note, 1024)),
            metadata: ObjectMeta {
                namespace: Some(event_namespace(reference).to_string()),
                name: Some(format!(
                    "{}.{:x}",
                    reference.name.as_ref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..Default::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            type_: Some(type_.to_string()),
            regarding: Some(reference.clone()),
            ..Default::default()
        }
    }

    async fn create(&self, event: &K8sEvent) -> Result<(), kube::Error> {
        let namespace = event.metadata.namespace.as_deref().unwrap_or_default();
        Api::<K8sEvent>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), event)
            .await
            .map(|_| ())
    }

    fn failed(&self, reference: &ObjectReference, reason: &str, e: &kube::Error) {
        self.metrics.events_failed.inc();
        warn!(object = ?reference.name, reason, error = %e, "could not write event");
    }
}

/// The Event's namespace: the object's own, or [`CLUSTER_SCOPED_EVENT_NAMESPACE`].
pub fn event_namespace(reference: &ObjectReference) -> &str {
    match reference.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => ns,
        _ => CLUSTER_SCOPED_EVENT_NAMESPACE,
    }
}

/// The API server rejects event notes over 1 KiB.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher() -> EventPublisher {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        EventPublisher::new(client, "example.com/nfs", "pod-0_abc", Metrics::new())
    }

    fn reference(namespace: Option<&str>, kind: &str) -> ObjectReference {
        ObjectReference {
            kind: Some(kind.into()),
            name: Some("target".into()),
            namespace: namespace.map(String::from),
            uid: Some("u-1".into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_volume_event_goes_to_kube_system_and_a_claim_event_to_its_namespace() {
        let p = publisher();
        let pv = p.event(
            &reference(None, "PersistentVolume"),
            "Warning",
            REASON_DIRECTORY_SHARED,
            "kept".into(),
        );
        assert_eq!(pv.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(pv.action.as_deref(), Some("Delete"));
        assert_eq!(pv.reporting_controller.as_deref(), Some("example.com/nfs"));
        assert_eq!(pv.reporting_instance.as_deref(), Some("pod-0_abc"));
        assert!(pv.metadata.name.unwrap().starts_with("target."));
        let claim = p.event(
            &reference(Some("team"), "PersistentVolumeClaim"),
            "Normal",
            REASON_PROVISIONING_SUCCEEDED,
            "done".into(),
        );
        assert_eq!(claim.metadata.namespace.as_deref(), Some("team"));
        assert_eq!(claim.action.as_deref(), Some("Provision"));
        assert_eq!(claim.type_.as_deref(), Some("Normal"));
    }

    #[tokio::test]
    async fn every_volume_reason_is_a_delete_action() {
        let p = publisher();
        for reason in [
            REASON_VOLUME_FAILED_DELETE,
            REASON_DIRECTORY_SHARED,
            REASON_DATA_PREDATES_VOLUME,
            REASON_RELEASED_UNTOUCHED,
            REASON_CLAIM_STILL_EXISTS,
        ] {
            let e = p.event(
                &reference(None, "PersistentVolume"),
                "Warning",
                reason,
                String::new(),
            );
            assert_eq!(e.action.as_deref(), Some("Delete"), "{reason}");
        }
    }

    #[test]
    fn notes_are_cut_to_what_the_api_server_accepts_on_a_character_boundary() {
        let long = "é".repeat(600); // 1200 bytes
        let cut = truncate(long, 1024);
        assert_eq!(cut.len(), 1024);
        assert!(cut.chars().all(|c| c == 'é'));
        let odd = format!("a{}", "é".repeat(600));
        assert_eq!(truncate(odd, 1024).len(), 1023, "never splits a character");
        assert_eq!(truncate("short".into(), 1024), "short");
    }
}
