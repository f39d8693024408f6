//! Kubernetes Events (events.k8s.io/v1) on claims and volumes, with the reasons users and
//! tooling already know from the Go provisioner.

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use tracing::warn;

use crate::metrics::Metrics;

pub const REASON_PROVISIONING: &str = "Provisioning";
pub const REASON_PROVISIONING_SUCCEEDED: &str = "ProvisioningSucceeded";
pub const REASON_PROVISIONING_FAILED: &str = "ProvisioningFailed";
pub const REASON_VOLUME_FAILED_DELETE: &str = "VolumeFailedDelete";
/// A directory left in place because another PV still uses it.
pub const REASON_DIRECTORY_SHARED: &str = "VolumeDirectoryShared";

#[derive(Clone)]
pub struct EventPublisher {
    recorder: Recorder,
    metrics: Metrics,
}

impl EventPublisher {
    pub fn new(client: Client, provisioner_name: &str, identity: &str, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: provisioner_name.to_string(),
            instance: Some(identity.to_string()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            metrics,
        }
    }

    pub async fn on_claim(
        &self,
        claim: &PersistentVolumeClaim,
        kind: EventType,
        reason: &str,
        note: String,
    ) {
        self.publish(claim.object_ref(&()), kind, reason, note)
            .await;
    }

    pub async fn on_volume(
        &self,
        pv: &PersistentVolume,
        kind: EventType,
        reason: &str,
        note: String,
    ) {
        self.publish(pv.object_ref(&()), kind, reason, note).await;
    }

    /// Events are for people; failing to write one never fails the operation.
    async fn publish(
        &self,
        reference: ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let action = match reason {
            REASON_VOLUME_FAILED_DELETE | REASON_DIRECTORY_SHARED => "Delete",
            _ => "Provision",
        };
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(truncate(note, 1024)),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            self.metrics.events_failed.inc();
            warn!(object = ?reference.name, reason, error = %e, "could not write event");
        }
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
