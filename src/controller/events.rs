//! Kubernetes Events (events.k8s.io/v1) on claims and volumes, with the reasons users and
//! tooling already know from the Go provisioner.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use tracing::warn;

use super::{Claim, Volume};

use crate::metrics::Metrics;

pub const REASON_PROVISIONING_SUCCEEDED: &str = "ProvisioningSucceeded";
pub const REASON_PROVISIONING_FAILED: &str = "ProvisioningFailed";
pub const REASON_VOLUME_FAILED_DELETE: &str = "VolumeFailedDelete";
/// A directory left in place because another PV still uses it.
pub const REASON_DIRECTORY_SHARED: &str = "VolumeDirectoryShared";

/// Warnings go through kube's `Recorder`, which folds repeats of the same event (a claim
/// failing again and again) into one Event with a growing series count; to do so it keeps
/// every event it wrote for six minutes. One-off success events are written directly
/// ([`EventPublisher::success_on_claim`]), so a burst of thousands of claims does not grow
/// that cache.
#[derive(Clone)]
pub struct EventPublisher {
    recorder: Recorder,
    client: Client,
    reporter: Reporter,
    metrics: Metrics,
}

impl EventPublisher {
    pub fn new(client: Client, provisioner_name: &str, identity: &str, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: provisioner_name.to_string(),
            instance: Some(identity.to_string()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            client,
            reporter,
            metrics,
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
    /// directly, without the recorder's cache. Events are for people; failing to write one
    /// never fails the operation.
    pub async fn success_on_claim(&self, claim: &Claim, reason: &str, note: String) {
        let reference = claim.object_ref(&());
        let now = Timestamp::now();
        let controller = &self.reporter.controller;
        let event = K8sEvent {
            action: Some("Provision".to_string()),
            reason: Some(reason.to_string()),
            event_time: Some(MicroTime(now)),
            note: Some(truncate(note, 1024)),
            metadata: ObjectMeta {
                namespace: reference.namespace.clone(),
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
            type_: Some("Normal".to_string()),
            regarding: Some(reference.clone()),
            ..Default::default()
        };
        let api: Api<K8sEvent> = Api::namespaced(
            self.client.clone(),
            reference.namespace.as_deref().unwrap_or("default"),
        );
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            self.metrics.events_failed.inc();
            warn!(object = ?reference.name, reason, error = %e, "could not write event");
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
