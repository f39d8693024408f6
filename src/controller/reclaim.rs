//! Released or deleted PV → the NFS plugin applies its delete policy → PV gone.
//!
//! The finalizer is added by `kube::runtime::finalizer` to a PV of ours that lacks it
//! (adopting PVs of the Go provisioner or of earlier versions). A PV being deleted that has
//! it gets the cleanup, and the finalizer is removed only once the cleanup succeeded, by
//! value ([`remove_finalizer`]).
//! The delete policy therefore runs in exactly one place, the cleanup: a Released PV whose
//! reclaim policy is `Delete` is first deleted as an object (and stays Terminating while its
//! directory is handled). A crash anywhere leaves a PV that the next attempt finishes.
//!
//! Rules that keep data safe:
//! * A volume still Bound to a claim is never touched, even when the PV itself is being
//!   deleted; the cluster's pv-protection keeps such a PV until the claim is gone.
//! * How the delete policy is decided: [`crate::nfs_plugin::delete_policy`].
//! * A PV that cannot be mapped to a directory of our export waits for an admin while
//!   Released; deleted by a user, it is let go with its data untouched.
//! * A PV that is ours only by its finalizer is let go, data untouched
//!   ([`Ownership::FinalizerOnly`]).

use std::sync::Arc;
use std::time::Instant;

use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{self, Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::events::{
    REASON_CLAIM_STILL_EXISTS, REASON_DATA_PREDATES_VOLUME, REASON_DIRECTORY_SHARED,
    REASON_RELEASED_UNTOUCHED, REASON_VOLUME_FAILED_DELETE,
};
use super::other_volumes::ClusterVolumes;
use super::selection::Ownership;
use super::{Context, Error, Result};
use crate::nfs_plugin::delete_policy::{Kept, class_name};
use crate::nfs_plugin::{KeptBecause, ReclaimOutcome, VolumeError};
use crate::objects::{Class, Volume};
use crate::persistent_volume::FINALIZER;

fn phase(pv: &Volume) -> &str {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub async fn reconcile(
    ctx: &Context,
    key: &ObjectRef<Volume>,
    term: &CancellationToken,
) -> Result<()> {
    let Some(pv) = ctx.volumes.get(key) else {
        return Ok(());
    };
    let ownership = ctx.selection.ownership(&pv);
    if ownership == Ownership::Foreign {
        return Ok(());
    }
    let claim = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .map(|c| {
            format!(
                "{}/{}",
                c.namespace.as_deref().unwrap_or(""),
                c.name.as_deref().unwrap_or("")
            )
        })
        .unwrap_or_default();
    let span = info_span!("reclaim", pv = %pv.name_any(), claim = %claim);
    reconcile_volume(ctx, pv, ownership, term)
        .instrument(span)
        .await
}

async fn reconcile_volume(
    ctx: &Context,
    mut pv: Arc<Volume>,
    ownership: Ownership,
    term: &CancellationToken,
) -> Result<()> {
    let api: Api<Volume> = Api::all(ctx.client.clone());
    // At most twice: a Released PV deleted by the first round is cleaned up at once with
    // the object the delete returned, instead of waiting for the watch to deliver it.
    for _ in 0..2 {
        let deleting = pv.metadata.deletion_timestamp.is_some();
        if ownership == Ownership::Ours && deleting && phase(&pv) == "Bound" {
            // Still in use by a claim: never touch the data. A deleting PV waits here until
            // the claim is gone and the binder marks the PV Released.
            return Ok(());
        }
        if deleting && has_finalizer(&pv) {
            cleanup(ctx, &pv, ownership, term).await?;
            return remove_finalizer(&api, &pv).await;
        }
        let adopting = !deleting && !has_finalizer(&pv);
        let mut deleted = None;
        let result = finalizer(&api, FINALIZER, pv.clone(), |event| async {
            match event {
                FinalizerEvent::Apply(pv) => {
                    deleted = apply(ctx, &api, &pv, ownership).await?;
                    Ok(Action::await_change())
                }
                // Handled above, with the finalizer removed by value.
                FinalizerEvent::Cleanup(pv) => {
                    cleanup(ctx, &pv, ownership, term).await?;
                    remove_finalizer(&api, &pv).await?;
                    Ok(Action::await_change())
                }
            }
        })
        .await;
        match result {
            Ok(_) => {}
            Err(finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e)) => {
                return Err(e);
            }
            // Gone meanwhile: nothing left to release.
            Err(finalizer::Error::RemoveFinalizer(kube::Error::Api(s))) if s.code == 404 => {}
            Err(finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e)) => {
                return Err(e.into());
            }
            Err(e @ (finalizer::Error::UnnamedObject | finalizer::Error::InvalidFinalizer)) => {
                warn!(error = %e, "cannot handle the volume's finalizer");
                return Ok(());
            }
        }
        if adopting {
            info!("added finalizer to adopt the volume");
        }
        match deleted {
            Some(next) => pv = Arc::new(next),
            None => return Ok(()),
        }
    }
    Ok(())
}

/// Removes our finalizer from `pv` by value: a strategic merge patch with
/// `$deleteFromPrimitiveList/finalizers`, which keeps every other finalizer wherever it
/// stands. kube's finalizer helper removes it by index (JSON patch `test` and `remove` of
/// `/metadata/finalizers/<i>`), which failed with 422 13–73 times per 1000 deletes on real
/// clusters: kube-controller-manager's pv-protection removes its own finalizer meanwhile.
/// The patch carries the PV's uid: a PV deleted and created again under the same name is
/// refused (422, uid is immutable) instead of losing its finalizer. A PV already without
/// it is left unchanged; one that is gone is done. Checked on v1.19 and v1.33.
async fn remove_finalizer(api: &Api<Volume>, pv: &Volume) -> Result<()> {
    let patch = serde_json::json!({
        "metadata": {
            "uid": pv.metadata.uid,
            "$deleteFromPrimitiveList/finalizers": [FINALIZER],
        }
    });
    match api
        .patch(
            &pv.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn has_finalizer(pv: &Volume) -> bool {
    pv.finalizers().iter().any(|f| f == FINALIZER)
}

fn class_of(ctx: &Context, pv: &Volume) -> Option<Arc<Class>> {
    ctx.classes.get(&ObjectRef::new(class_name(pv)))
}

/// A PV that is not being deleted. A Released one whose reclaim policy is `Delete` is
/// deleted (once its delete policy is known to be applicable); the cleanup then applies it.
/// Returns the deleted object while it still carries finalizers.
async fn apply(
    ctx: &Context,
    api: &Api<Volume>,
    pv: &Volume,
    ownership: Ownership,
) -> Result<Option<Volume>> {
    let released = matches!(phase(pv), "Released" | "Failed");
    let reclaim_deletes = crate::nfs_plugin::delete_policy::reclaim_policy(pv) == "Delete";
    if ownership != Ownership::Ours || !released || !reclaim_deletes {
        // Pending/Available volumes wait for the binder; Retain keeps the PV and its data.
        return Ok(None);
    }
    if let Some(note) = claim_still_there(ctx, pv).await? {
        info!("{note}");
        ctx.events
            .on_volume(pv, EventType::Warning, REASON_CLAIM_STILL_EXISTS, note)
            .await;
        return Ok(None);
    }
    // A PV whose policy cannot be applied stays Released, with an event, until an admin acts.
    let class = class_of(ctx, pv);
    if let Err(e) = ctx.exports.check_reclaim(pv, class.as_deref()) {
        let e = Error::from(e);
        report_failure(ctx, pv, &e, false).await;
        return Err(e);
    }
    match api.delete(&pv.name_any(), &DeleteParams::default()).await {
        Ok(either::Either::Left(deleted)) if has_finalizer(&deleted) => Ok(Some(deleted)),
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Why a Released PV is not released after all: the claim it names (same UID) still exists
/// and names no other volume.
///
/// kube-controller-manager marks a PV Released when its claim is missing from its own cache;
/// a cache behind the API server (seen on a loaded v1.19: a claim created with `volumeName`
/// before its PV) makes it release a PV whose claim is there and about to bind. Deleting then
/// would delete that claim's data, so the claim is looked up in the API server first (a list
/// by name: the provisioner may list claims, not get them). Once the claim binds, the PV is
/// Bound again; once it is gone, the next reconcile deletes. A claim bound to another volume
/// does not hold this one: the binder releases a provisioned PV whose claim went elsewhere,
/// for its provisioner to delete.
async fn claim_still_there(ctx: &Context, pv: &Volume) -> Result<Option<String>> {
    let Some(claim) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return Ok(None);
    };
    let (Some(namespace), Some(name)) = (claim.namespace.as_deref(), claim.name.as_deref()) else {
        return Ok(None);
    };
    let claims: Api<crate::objects::Claim> = Api::namespaced(ctx.client.clone(), namespace);
    let found = claims
        .list(&kube::api::ListParams::default().fields(&format!("metadata.name={name}")))
        .await?;
    let pv_name = pv.name_any();
    let holds_this_volume = found.items.iter().any(|c| {
        let same_claim = claim
            .uid
            .as_deref()
            .is_none_or(|uid| uid.is_empty() || c.metadata.uid.as_deref() == Some(uid));
        let volume = c.spec.as_ref().and_then(|s| s.volume_name.as_deref());
        same_claim && volume.is_none_or(|v| v.is_empty() || v == pv_name)
    });
    Ok(holds_this_volume.then(|| {
        format!(
            "PV {pv_name} is Released but its claim {namespace}/{name} still exists: not deleted; the binder's cache was behind, and the claim will bind to it again"
        )
    }))
}

/// A PV being deleted: apply the delete policy (or let go of a PV that is ours only by its
/// finalizer). Success removes the finalizer.
async fn cleanup(
    ctx: &Context,
    pv: &Volume,
    ownership: Ownership,
    term: &CancellationToken,
) -> Result<()> {
    if ownership == Ownership::FinalizerOnly {
        let note = format!(
            "the PV carries finalizer {FINALIZER} but no pv.kubernetes.io/provisioned-by annotation, so it is not known as this provisioner's volume: its directory was left untouched and the finalizer removed so the delete completes"
        );
        warn!("releasing a deleted PV that is ours only by its finalizer; data left in place");
        ctx.events
            .on_volume(pv, EventType::Normal, REASON_RELEASED_UNTOUCHED, note)
            .await;
        return Ok(());
    }
    let started = Instant::now();
    let class = class_of(ctx, pv);
    let result = ctx
        .exports
        .reclaim(pv, class.as_deref(), &ClusterVolumes(ctx), term)
        .await;
    match result {
        Ok(outcome) => {
            ctx.metrics
                .reclaimed(class_name(pv), "success", Some(started.elapsed()));
            let reason = match &outcome {
                ReclaimOutcome::Kept {
                    because: KeptBecause::Shared(_),
                    ..
                } => Some(REASON_DIRECTORY_SHARED),
                ReclaimOutcome::Kept {
                    because: KeptBecause::Policy(Kept::Predates(_)),
                    ..
                } => Some(REASON_DATA_PREDATES_VOLUME),
                _ => None,
            };
            if let Some(reason) = reason {
                warn!(%outcome, "kept a volume's directory in place");
                ctx.events
                    .on_volume(pv, EventType::Warning, reason, outcome.to_string())
                    .await;
            }
            Ok(())
        }
        Err(e) => {
            let unmappable = e.is_unmappable();
            let e = Error::from(e);
            report_failure(ctx, pv, &e, true).await;
            if unmappable {
                // Not ours to touch: a PV a user deleted is let go, data untouched, instead
                // of hanging in Terminating forever.
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

async fn report_failure(ctx: &Context, pv: &Volume, e: &Error, deleting: bool) {
    if matches!(
        e,
        Error::Stopped
            | Error::Volume(VolumeError::Storage(
                crate::storage::StorageError::Cancelled
            ))
    ) {
        return;
    }
    ctx.metrics.reclaimed(class_name(pv), e.label(), None);
    warn!(error = %e, "reclaiming the volume failed");
    let unmappable = matches!(e, Error::Volume(v) if v.is_unmappable());
    let note = if deleting && unmappable {
        format!(
            "{e}; the PV object was deleted by a user, so it is released and its data left in place"
        )
    } else {
        e.to_string()
    };
    ctx.events
        .on_volume(pv, EventType::Warning, REASON_VOLUME_FAILED_DELETE, note)
        .await;
}
