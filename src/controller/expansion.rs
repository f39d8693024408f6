//! Claim expansion: this provisioner is the external resizer of claims bound to its volumes.
//!
//! When a Bound claim asks for more (`spec.resources.requests.storage` above
//! `status.capacity`), kube-controller-manager finds no in-tree plugin for `nfs` volumes and
//! waits for an external controller (Event `ExternalExpanding`; no resizer annotation is set).
//! This module answers as kubernetes-csi/external-resizer does, with the writes the real
//! control planes were seen to accept (fake-apiserver/tests/fixtures/v1.*-expansion.json):
//!
//! 1. claim `/status`: condition `Resizing`, and `allocatedResources` plus
//!    `allocatedResourceStatuses: ControllerResizeInProgress` (v1.33 keeps them for quota and
//!    recovery; v1.19 drops them silently, so they are always sent);
//! 2. PV `spec.capacity.storage` = the request;
//! 3. claim `/status`: `capacity` = the PV's, resize conditions and the storage resize status
//!    removed. That is what `kubectl get pvc` prints.
//!
//! Every write is a merge patch carrying the `resourceVersion` it was computed from, so a stale
//! view fails (409, retried) instead of overwriting. A crash after step 2 leaves a PV that
//! already holds the request: the next attempt goes straight to step 3 ([`Decision::Finish`]).
//! Nothing on the NFS server changes: the capacity of a directory is accounting.
//!
//! What is refused, with a Warning Event on the claim: a claim of this provisioner's class
//! bound to a PV it did not make, a PV bound to another claim, a class that is gone or no
//! longer allows expansion. A shrink never gets here: the API server refuses it (422).

use k8s_openapi::api::core::v1::PersistentVolumeClaimCondition;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tracing::{Instrument, debug, info, info_span, warn};

use super::events::{REASON_RESIZE_FAILED, REASON_RESIZE_SUCCEEDED, REASON_RESIZING};
use super::selection::class_name_of;
use super::{Context, Error, Next, Result};
use crate::objects::{Claim, Class, Volume};
use crate::persistent_volume::ANN_PROVISIONED_BY;
use crate::quantity::{QuantityError, quantity_bytes};

/// Condition an external resizer sets while it works.
pub const CONDITION_RESIZING: &str = "Resizing";
/// Condition of a resize waiting for the node (never needed for NFS; removed like Resizing).
const CONDITION_FILE_SYSTEM_RESIZE_PENDING: &str = "FileSystemResizePending";
/// `allocatedResourceStatuses.storage` while the controller side of a resize runs.
pub const CONTROLLER_RESIZE_IN_PROGRESS: &str = "ControllerResizeInProgress";
const STORAGE: &str = "storage";
/// When to look again after a write found the cached claim or PV out of date.
const STALE_RECHECK: std::time::Duration = std::time::Duration::from_millis(500);

fn request(claim: &Claim) -> Option<&Quantity> {
    claim
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get(STORAGE)
}

fn status_capacity(claim: &Claim) -> Option<&Quantity> {
    claim.status.as_ref()?.capacity.as_ref()?.get(STORAGE)
}

fn volume_name(claim: &Claim) -> Option<&str> {
    claim
        .spec
        .as_ref()?
        .volume_name
        .as_deref()
        .filter(|n| !n.is_empty())
}

fn is_bound(claim: &Claim) -> bool {
    claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
        && volume_name(claim).is_some()
}

/// Whether a claim asks for more than it holds: Bound, not deleting, and its storage request
/// above `status.capacity` (as external-resizer decides). Unparsable sizes count as asking, so
/// that the claim gets an Event saying what is wrong.
pub fn wants_expansion(claim: &Claim) -> bool {
    if !is_bound(claim) || claim.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let (Some(request), Some(capacity)) = (request(claim), status_capacity(claim)) else {
        return false;
    };
    match (quantity_bytes(request), quantity_bytes(capacity)) {
        (Ok(r), Ok(c)) => r > c,
        _ => request != capacity,
    }
}

/// Whether the controller should hand this cached claim to [`reconcile`] rather than to
/// provisioning: it has a volume.
pub fn applies_to(ctx: &Context, key: &ObjectRef<Claim>) -> bool {
    ctx.claims
        .get(key)
        .is_some_and(|c| volume_name(&c).is_some())
}

/// Why a resize is left alone; the Display text is the Event note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    VolumeNotOurs { pv: String },
    VolumeOfAnotherClaim { pv: String },
    NotNfs { pv: String },
    ClassGone { class: String },
    ClassDisallows { class: String },
    BadSize(QuantityError),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::VolumeNotOurs { pv } => write!(
                f,
                "not resized: PV {pv} was not provisioned by this provisioner, so its capacity is not its to change; ask its owner or an administrator"
            ),
            Refusal::VolumeOfAnotherClaim { pv } => write!(
                f,
                "not resized: PV {pv} is not bound to this claim (its claimRef names another one)"
            ),
            Refusal::NotNfs { pv } => write!(f, "not resized: PV {pv} is not an NFS volume"),
            Refusal::ClassGone { class } => write!(
                f,
                "not resized: StorageClass {class:?} no longer exists (or no longer names this provisioner), so nothing says expansion is allowed"
            ),
            Refusal::ClassDisallows { class } => write!(
                f,
                "not resized: StorageClass {class:?} does not set allowVolumeExpansion: true"
            ),
            Refusal::BadSize(e) => write!(f, "not resized: {e}"),
        }
    }
}

/// What to do about one claim.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No resize asked, or not this provisioner's to answer: no write, no Event.
    Nothing,
    Refuse(Refusal),
    /// Grow the PV from `from` to `to`, then record `to` on the claim.
    Expand {
        pv: String,
        from: Quantity,
        to: Quantity,
    },
    /// The PV already holds at least the request (an earlier attempt grew it before it could
    /// update the claim): record the PV's `capacity` on the claim.
    Finish {
        pv: String,
        capacity: Quantity,
    },
}

/// What a decision needs of the claim's StorageClass (whatever shape the class cache holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassFacts<'a> {
    pub provisioner: &'a str,
    pub allow_volume_expansion: Option<bool>,
}

impl<'a> From<&'a Class> for ClassFacts<'a> {
    fn from(class: &'a Class) -> Self {
        ClassFacts {
            provisioner: &class.provisioner,
            allow_volume_expansion: class.allow_volume_expansion,
        }
    }
}

impl<'a> From<&'a StorageClass> for ClassFacts<'a> {
    fn from(class: &'a StorageClass) -> Self {
        ClassFacts {
            provisioner: &class.provisioner,
            allow_volume_expansion: class.allow_volume_expansion,
        }
    }
}

/// Everything a decision depends on, from the controller's caches.
pub struct Facts<'a> {
    pub claim: &'a Claim,
    /// The PV named by the claim's `volumeName`, if the volume cache holds it.
    pub volume: Option<&'a Volume>,
    /// The claim's StorageClass, if the class cache holds it (it holds only this
    /// provisioner's classes).
    pub class: Option<ClassFacts<'a>>,
    pub provisioner_name: &'a str,
}

/// Decides what to do about a claim. Pure: no API calls, so every case is unit-tested.
pub fn decide(facts: &Facts<'_>) -> Decision {
    let claim = facts.claim;
    if !wants_expansion(claim) {
        return Decision::Nothing;
    }
    let Some(pv_name) = volume_name(claim) else {
        return Decision::Nothing;
    };
    let pv_ours = facts.volume.is_some_and(|pv| {
        pv.annotations().get(ANN_PROVISIONED_BY).map(String::as_str) == Some(facts.provisioner_name)
    });
    let class_ours = facts
        .class
        .is_some_and(|c| c.provisioner == facts.provisioner_name);
    if !pv_ours {
        // A claim of another driver's class is none of our business; one of our class bound
        // to someone else's PV (static, or another provisioner's) is told why nothing happens.
        return if class_ours {
            Decision::Refuse(Refusal::VolumeNotOurs {
                pv: pv_name.to_string(),
            })
        } else {
            Decision::Nothing
        };
    }
    let pv = facts.volume.expect("checked above");
    let spec = pv.spec.as_deref();
    let claim_ref = spec.and_then(|s| s.claim_ref.as_ref());
    let bound_here = claim_ref.is_some_and(|r| {
        r.uid.as_deref() == claim.uid().as_deref()
            && r.namespace.as_deref() == claim.namespace().as_deref()
            && r.name.as_deref() == Some(claim.name_any().as_str())
    });
    if !bound_here {
        return Decision::Refuse(Refusal::VolumeOfAnotherClaim {
            pv: pv_name.to_string(),
        });
    }
    if spec.and_then(|s| s.nfs.as_ref()).is_none() {
        return Decision::Refuse(Refusal::NotNfs {
            pv: pv_name.to_string(),
        });
    }
    let class_name = class_name_of(claim).unwrap_or_default().to_string();
    let Some(class) = facts.class.filter(|_| class_ours) else {
        return Decision::Refuse(Refusal::ClassGone { class: class_name });
    };
    if class.allow_volume_expansion != Some(true) {
        return Decision::Refuse(Refusal::ClassDisallows { class: class_name });
    }
    let wanted = request(claim).cloned().unwrap_or_default();
    let held = spec
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get(STORAGE))
        .cloned()
        .unwrap_or_else(|| Quantity("0".into()));
    let sizes = quantity_bytes(&wanted).and_then(|w| Ok((w, quantity_bytes(&held)?)));
    match sizes {
        Err(e) => Decision::Refuse(Refusal::BadSize(e)),
        Ok((w, h)) if h >= w => Decision::Finish {
            pv: pv_name.to_string(),
            capacity: held,
        },
        Ok(_) => Decision::Expand {
            pv: pv_name.to_string(),
            from: held,
            to: wanted,
        },
    }
}

/// The claim's conditions without the resize ones, plus `add`.
fn resize_conditions(
    claim: &Claim,
    add: Option<PersistentVolumeClaimCondition>,
) -> Vec<PersistentVolumeClaimCondition> {
    let mut conditions: Vec<_> = claim
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| {
            c.type_ != CONDITION_RESIZING && c.type_ != CONDITION_FILE_SYSTEM_RESIZE_PENDING
        })
        .collect();
    conditions.extend(add);
    conditions
}

/// Merge patch of the claim's status marking the resize started (external-resizer's
/// `markControllerResizeInProgress`).
pub fn mark_resizing_patch(claim: &Claim, to: &Quantity, now: Timestamp) -> Value {
    let resizing = PersistentVolumeClaimCondition {
        type_: CONDITION_RESIZING.to_string(),
        status: "True".to_string(),
        last_transition_time: Some(Time(now)),
        ..Default::default()
    };
    json!({
        "metadata": {"resourceVersion": claim.resource_version()},
        "status": {
            "conditions": resize_conditions(claim, Some(resizing)),
            "allocatedResources": {STORAGE: to},
            "allocatedResourceStatuses": {STORAGE: CONTROLLER_RESIZE_IN_PROGRESS},
        }
    })
}

/// Merge patch of the claim's status recording the new capacity and ending the resize
/// (external-resizer's `markOverallExpansionAsFinished`). Empty lists are sent as null so that
/// the field goes away, as Go's `omitempty` leaves it on the real server.
pub fn finish_patch(claim: &Claim, capacity: &Quantity) -> Value {
    let conditions = resize_conditions(claim, None);
    let mut status = json!({
        "capacity": {STORAGE: capacity},
        "conditions": if conditions.is_empty() { Value::Null } else { json!(conditions) },
    });
    let has_resize_status = claim
        .status
        .as_ref()
        .and_then(|s| s.allocated_resource_statuses.as_ref())
        .is_some_and(|m| m.contains_key(STORAGE));
    if has_resize_status {
        status["allocatedResourceStatuses"] = json!({STORAGE: null});
    }
    json!({
        "metadata": {"resourceVersion": claim.resource_version()},
        "status": status,
    })
}

/// Merge patch growing the PV.
pub fn grow_volume_patch(pv: &Volume, to: &Quantity) -> Value {
    json!({
        "metadata": {"resourceVersion": pv.resource_version()},
        "spec": {"capacity": {STORAGE: to}},
    })
}

/// The hook the controller calls for a claim with a volume (see [`applies_to`]): decides from
/// the caches and applies the decision.
pub async fn reconcile(ctx: &Context, key: &ObjectRef<Claim>) -> Result<Next> {
    let Some(claim) = ctx.claims.get(key) else {
        return Ok(Next::Done);
    };
    let volume = volume_name(&claim).and_then(|n| ctx.volumes.get(&ObjectRef::new(n)));
    let class = class_name_of(&claim).and_then(|n| ctx.classes.get(&ObjectRef::<Class>::new(n)));
    let decision = decide(&Facts {
        claim: &claim,
        volume: volume.as_deref(),
        class: class.as_deref().map(ClassFacts::from),
        provisioner_name: ctx.selection.provisioner_name(),
    });
    if decision == Decision::Nothing {
        return Ok(Next::Done);
    }
    let span = info_span!(
        "resize",
        claim = %format!("{}/{}", key.namespace.as_deref().unwrap_or(""), key.name),
        pv = volume_name(&claim).unwrap_or_default(),
    );
    let class_name = class_name_of(&claim).unwrap_or_default().to_string();
    let outcome = apply(ctx, &claim, volume.as_deref(), decision)
        .instrument(span.clone())
        .await;
    // A 409 means the cache is behind the claim or PV (typically our own previous write
    // not seen yet): look again shortly instead of reporting a failure.
    if let Err(Error::Kube(kube::Error::Api(status))) = &outcome
        && status.code == 409
    {
        span.in_scope(|| debug!("claim or PV changed since cached; looking again"));
        return Ok(Next::RecheckAfter(STALE_RECHECK));
    }
    let label = match &outcome {
        Ok(Applied::Resized) => "success",
        Ok(Applied::Refused) => "refused",
        Err(e) => e.label(),
    };
    ctx.metrics.resized(&class_name, label);
    if let Err(e) = &outcome {
        span.in_scope(|| warn!(error = %e, "resize failed; will retry"));
        let note = format!("resize failed, will retry: {e}");
        ctx.events
            .on_claim(&claim, EventType::Warning, REASON_RESIZE_FAILED, note)
            .await;
    }
    outcome.map(|_| Next::Done)
}

enum Applied {
    Resized,
    Refused,
}

async fn apply(
    ctx: &Context,
    claim: &Claim,
    volume: Option<&Volume>,
    decision: Decision,
) -> Result<Applied> {
    let claims: Api<Claim> = Api::namespaced(
        ctx.client.clone(),
        claim.namespace().as_deref().unwrap_or_default(),
    );
    let name = claim.name_any();
    let params = PatchParams::default();
    let held = status_capacity(claim)
        .map(|q| q.0.clone())
        .unwrap_or_default();
    match decision {
        Decision::Nothing => Ok(Applied::Refused),
        Decision::Refuse(why) => {
            info!(reason = %why, "resize left alone");
            ctx.events
                .on_claim(
                    claim,
                    EventType::Warning,
                    REASON_RESIZE_FAILED,
                    why.to_string(),
                )
                .await;
            Ok(Applied::Refused)
        }
        Decision::Expand { pv, from, to } => {
            let volume = volume.expect("Expand is only decided for a cached PV");
            let marked = claims
                .patch_status(
                    &name,
                    &params,
                    &Patch::Merge(mark_resizing_patch(claim, &to, Timestamp::now())),
                )
                .await?;
            ctx.events
                .success_on_claim(
                    claim,
                    REASON_RESIZING,
                    format!("resizing volume {pv} from {} to {}", from.0, to.0),
                )
                .await;
            Api::<Volume>::all(ctx.client.clone())
                .patch(&pv, &params, &Patch::Merge(grow_volume_patch(volume, &to)))
                .await?;
            info!(from = %from.0, to = %to.0, "grew the PV");
            claims
                .patch_status(&name, &params, &Patch::Merge(finish_patch(&marked, &to)))
                .await?;
            info!(capacity = %to.0, "resize finished");
            let note = format!(
                "resized volume {pv}: the claim now holds {} (it held {held}); on NFS the size is accounting, no quota is set on the server",
                to.0
            );
            ctx.events
                .success_on_claim(claim, REASON_RESIZE_SUCCEEDED, note)
                .await;
            Ok(Applied::Resized)
        }
        Decision::Finish { pv, capacity } => {
            claims
                .patch_status(
                    &name,
                    &params,
                    &Patch::Merge(finish_patch(claim, &capacity)),
                )
                .await?;
            info!(capacity = %capacity.0, "resize finished (the PV had grown already)");
            let note = format!(
                "resized volume {pv}: the claim now holds {} (it held {held}); the PV had been grown by an earlier attempt",
                capacity.0
            );
            ctx.events
                .success_on_claim(claim, REASON_RESIZE_SUCCEEDED, note)
                .await;
            Ok(Applied::Resized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "example.com/nfs";

    fn claim(request: &str, capacity: &str) -> Claim {
        serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "ns", "uid": "u-1", "resourceVersion": "7"},
            "spec": {"storageClassName": "nfs", "volumeName": "pvc-u-1",
                     "resources": {"requests": {"storage": request}}},
            "status": {"phase": "Bound", "capacity": {"storage": capacity}}
        }))
        .unwrap()
    }

    fn volume(capacity: &str) -> Volume {
        serde_json::from_value(json!({
            "metadata": {"name": "pvc-u-1", "resourceVersion": "3",
                         "annotations": {ANN_PROVISIONED_BY: ME}},
            "spec": {"capacity": {"storage": capacity},
                     "claimRef": {"namespace": "ns", "name": "data", "uid": "u-1"},
                     "nfs": {"server": "filer", "path": "/export/x"}},
            "status": {"phase": "Bound"}
        }))
        .unwrap()
    }

    fn class(allow: Option<bool>) -> StorageClass {
        StorageClass {
            metadata: kube::api::ObjectMeta {
                name: Some("nfs".into()),
                ..Default::default()
            },
            provisioner: ME.into(),
            allow_volume_expansion: allow,
            ..Default::default()
        }
    }

    fn decide_for(c: &Claim, v: Option<&Volume>, sc: Option<&StorageClass>) -> Decision {
        decide(&Facts {
            claim: c,
            volume: v,
            class: sc.map(ClassFacts::from),
            provisioner_name: ME,
        })
    }

    fn q(s: &str) -> Quantity {
        Quantity(s.into())
    }

    #[test]
    fn a_bigger_request_grows_the_volume() {
        let sc = class(Some(true));
        assert_eq!(
            decide_for(&claim("2Gi", "1Gi"), Some(&volume("1Gi")), Some(&sc)),
            Decision::Expand {
                pv: "pvc-u-1".into(),
                from: q("1Gi"),
                to: q("2Gi")
            }
        );
    }

    #[test]
    fn nothing_to_do_without_a_bigger_request() {
        let sc = class(Some(true));
        let v = volume("1Gi");
        for (request, capacity) in [("1Gi", "1Gi"), ("1024Mi", "1Gi"), ("1Gi", "2Gi")] {
            assert_eq!(
                decide_for(&claim(request, capacity), Some(&v), Some(&sc)),
                Decision::Nothing,
                "{request} of {capacity}"
            );
        }
        let mut pending = claim("2Gi", "1Gi");
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        assert_eq!(decide_for(&pending, Some(&v), Some(&sc)), Decision::Nothing);
        let mut deleting = claim("2Gi", "1Gi");
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert_eq!(
            decide_for(&deleting, Some(&v), Some(&sc)),
            Decision::Nothing
        );
    }

    #[test]
    fn a_volume_grown_by_an_earlier_attempt_only_finishes_the_claim() {
        let sc = class(Some(true));
        assert_eq!(
            decide_for(&claim("2Gi", "1Gi"), Some(&volume("2Gi")), Some(&sc)),
            Decision::Finish {
                pv: "pvc-u-1".into(),
                capacity: q("2Gi")
            }
        );
        // Grown further than asked (a request lowered meanwhile): the claim gets what is there.
        assert_eq!(
            decide_for(&claim("3Gi", "2Gi"), Some(&volume("4Gi")), Some(&sc)),
            Decision::Finish {
                pv: "pvc-u-1".into(),
                capacity: q("4Gi")
            }
        );
    }

    #[test]
    fn a_class_without_allow_volume_expansion_refuses() {
        let c = claim("2Gi", "1Gi");
        let v = volume("1Gi");
        for allow in [None, Some(false)] {
            assert_eq!(
                decide_for(&c, Some(&v), Some(&class(allow))),
                Decision::Refuse(Refusal::ClassDisallows {
                    class: "nfs".into()
                })
            );
        }
        assert_eq!(
            decide_for(&c, Some(&v), None),
            Decision::Refuse(Refusal::ClassGone {
                class: "nfs".into()
            })
        );
    }

    #[test]
    fn a_volume_that_is_not_ours_is_left_alone() {
        let c = claim("2Gi", "1Gi");
        let sc = class(Some(true));
        let mut foreign = volume("1Gi");
        foreign.metadata.annotations = None;
        let not_ours = Decision::Refuse(Refusal::VolumeNotOurs {
            pv: "pvc-u-1".into(),
        });
        assert_eq!(decide_for(&c, Some(&foreign), Some(&sc)), not_ours);
        assert_eq!(decide_for(&c, None, Some(&sc)), not_ours);
        // Another driver's claim: not even an Event.
        let mut theirs = class(Some(true));
        theirs.provisioner = "ebs.csi.aws.com".into();
        assert_eq!(decide_for(&c, None, Some(&theirs)), Decision::Nothing);
        assert_eq!(decide_for(&c, None, None), Decision::Nothing);
    }

    #[test]
    fn a_volume_of_another_claim_or_not_nfs_is_refused() {
        let c = claim("2Gi", "1Gi");
        let sc = class(Some(true));
        let mut other = volume("1Gi");
        other.spec.as_mut().unwrap().claim_ref.as_mut().unwrap().uid = Some("u-2".into());
        assert!(matches!(
            decide_for(&c, Some(&other), Some(&sc)),
            Decision::Refuse(Refusal::VolumeOfAnotherClaim { .. })
        ));
        let mut not_nfs = volume("1Gi");
        not_nfs.spec.as_mut().unwrap().nfs = None;
        assert!(matches!(
            decide_for(&c, Some(&not_nfs), Some(&sc)),
            Decision::Refuse(Refusal::NotNfs { .. })
        ));
    }

    #[test]
    fn unreadable_sizes_are_refused_with_the_reason() {
        let sc = class(Some(true));
        let c = claim("2Gi", "1Gi");
        let mut bad = volume("1Gi");
        bad.spec.as_mut().unwrap().capacity =
            Some([("storage".to_string(), q("lots"))].into_iter().collect());
        let d = decide_for(&c, Some(&bad), Some(&sc));
        let Decision::Refuse(why) = d else {
            panic!("{d:?}")
        };
        assert!(why.to_string().contains("\"lots\""), "{why}");
    }

    #[test]
    fn patches_carry_the_resource_version_and_keep_other_conditions() {
        let mut c = claim("2Gi", "1Gi");
        c.status.as_mut().unwrap().conditions = Some(vec![
            PersistentVolumeClaimCondition {
                type_: "ModifyingVolume".into(),
                status: "True".into(),
                ..Default::default()
            },
            PersistentVolumeClaimCondition {
                type_: CONDITION_RESIZING.into(),
                status: "True".into(),
                ..Default::default()
            },
        ]);
        let now: Timestamp = "2026-12-02T10:00:00Z".parse().unwrap();
        let mark = mark_resizing_patch(&c, &q("2Gi"), now);
        assert_eq!(mark["metadata"]["resourceVersion"], "7");
        let types: Vec<&str> = mark["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["ModifyingVolume", "Resizing"]);
        assert_eq!(
            mark["status"]["conditions"][1]["lastTransitionTime"],
            "2026-12-02T10:00:00Z"
        );
        assert_eq!(mark["status"]["allocatedResources"]["storage"], "2Gi");
        assert_eq!(
            mark["status"]["allocatedResourceStatuses"]["storage"],
            CONTROLLER_RESIZE_IN_PROGRESS
        );

        c.status.as_mut().unwrap().allocated_resource_statuses = Some(
            [(
                "storage".to_string(),
                CONTROLLER_RESIZE_IN_PROGRESS.to_string(),
            )]
            .into_iter()
            .collect(),
        );
        let finish = finish_patch(&c, &q("2Gi"));
        assert_eq!(finish["metadata"]["resourceVersion"], "7");
        assert_eq!(finish["status"]["capacity"]["storage"], "2Gi");
        assert_eq!(finish["status"]["conditions"].as_array().unwrap().len(), 1);
        assert_eq!(
            finish["status"]["allocatedResourceStatuses"],
            json!({"storage": null})
        );
        // Without other conditions the list goes away; without a resize status none is sent.
        let plain = finish_patch(&claim("2Gi", "1Gi"), &q("2Gi"));
        assert_eq!(plain["status"]["conditions"], Value::Null);
        assert!(plain["status"].get("allocatedResourceStatuses").is_none());

        let grow = grow_volume_patch(&volume("1Gi"), &q("2Gi"));
        assert_eq!(
            grow,
            json!({"metadata": {"resourceVersion": "3"}, "spec": {"capacity": {"storage": "2Gi"}}})
        );
    }

    #[test]
    fn only_claims_asking_for_more_want_expansion() {
        assert!(wants_expansion(&claim("2Gi", "1Gi")));
        assert!(!wants_expansion(&claim("1Gi", "1Gi")));
        assert!(!wants_expansion(&claim("1Gi", "2Gi")));
        assert!(wants_expansion(&claim("much", "1Gi")));
        let mut unbound = claim("2Gi", "1Gi");
        unbound.spec.as_mut().unwrap().volume_name = None;
        assert!(!wants_expansion(&unbound));
    }
}
