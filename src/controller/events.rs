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

/// Writes Events. Hand-written instead of kube's `Recorder`, which puts Events about
/// cluster-scoped objects in `default`, a namespace v1.19 refuses them in. Warnings fold
/// repeats (a claim failing again and again) into one Event with a growing series count, as
/// client-go does; one-off success events skip that cache, so a burst of thousands of claims
/// does not grow it.
#[derive(Clone)]
pub struct EventPublisher {
    client: Client,
    reporter: Reporter,
    metrics: Metrics,
    series: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<SeriesKey, Series>>>,
}

impl EventPublisher {
    pub fn new(client: Client, provisioner_name: &str, identity: &str, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: provisioner_name.to_string(),
            instance: Some(identity.to_string()),
        };
        Self {
            client,
            reporter,
            metrics,
            series: Default::default(),
        }
    }

    pub async fn on_claim(&self, claim: &Claim, kind: EventType, reason: &str, note: String) {
        self.publish(claim.object_ref(&()), kind, reason, note)
            .await;
    }

    pub async fn on_volume(&self, pv: &Volume, kind: EventType, reason: &str, note: String) {
        self.publish(pv.object_ref(&()), kind, reason, note).await;
    }

    /// A Normal `ProvisioningSucceeded`-style event that happens once per object: written
    /// directly, without the series cache. Events are for people; failing to write one
    /// never fails the operation.
    pub async fn success_on_claim(&self, claim: &Claim, reason: &str, note: String) {
        let reference = claim.object_ref(&());
        let event = self.event(&reference, "Normal", reason, note);
        if let Err(e) = self.create(&event).await {
            self.failed(&reference, reason, &e);
        }
    }

    /// Events are for people; failing to write one never fails the operation.
    async fn publish(
        &self,
        reference: ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let warning = matches!(type_, EventType::Warning);
        let note = truncate(note, 1024);
        let key = SeriesKey {
            warning,
            reason: reason.to_string(),
            note: note.clone(),
            regarding_uid: reference.uid.clone().unwrap_or_default(),
            regarding_name: reference.name.clone().unwrap_or_default(),
            regarding_namespace: reference.namespace.clone().unwrap_or_default(),
        };
        let repeat = {
            let mut series = self.series.lock().expect("event series lock");
            series.retain(|_, s| s.last.elapsed() < SERIES_TTL);
            series.get_mut(&key).map(|s| {
                s.count += 1;
                s.last = std::time::Instant::now();
                (s.namespace.clone(), s.name.clone(), s.count)
            })
        };
        let result = match repeat {
            Some((namespace, name, count)) => {
                let patch = serde_json::json!({
                    "series": {"count": count, "lastObservedTime": MicroTime(Timestamp::now())},
                });
                Api::<K8sEvent>::namespaced(self.client.clone(), &namespace)
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            }
            None => {
                let type_ = if warning { "Warning" } else { "Normal" };
                let event = self.event(&reference, type_, reason, note);
                let created = self.create(&event).await;
                if created.is_ok() {
                    self.series.lock().expect("event series lock").insert(
                        key,
                        Series {
                            namespace: event.metadata.namespace.clone().unwrap_or_default(),
                            name: event.metadata.name.clone().unwrap_or_default(),
                            count: 1,
                            last: std::time::Instant::now(),
                        },
                    );
                }
                created
            }
        };
        if let Err(e) = result {
            self.failed(&reference, reason, &e);
        }
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
            | REASON_RELEASED_UNTOUCHED => "Delete",
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
