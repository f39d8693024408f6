//! Released or deleted PV -> the recorded delete policy on its directory -> PV gone.
//!
//! Rules that keep data safe:
//! * A volume still Bound to a claim is never touched, even when the PV itself is being
//!   deleted; the cluster's pv-protection keeps such a PV until the claim is gone.
//! * The policy recorded on the PV at provisioning wins. PVs without it (made by the Go
//!   provisioner) take it from their class at delete time, and are archived when the class
//!   is gone.
//! * A directory another PV points at, or one inside or above it, is left alone
//!   (`volume_overlap`), and so is a directory that existed before the volume.
//! * `Retain` reclaim keeps both the PV and the data.

use std::time::Instant;

use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::events::{
    REASON_DATA_PREDATES_VOLUME, REASON_DIRECTORY_SHARED, REASON_VOLUME_FAILED_DELETE,
};
use super::volume_overlap;
use super::{Context, Error, Next, Result, Volume};
use crate::parameters::{ClassParameters, OnDelete};
use crate::persistent_volume::{ANN_DIRECTORY_EXISTED, ANN_ON_DELETE, FINALIZER};
use crate::planning::archive_directory;
use crate::storage::{ArchiveOutcome, RemoveOutcome};

fn phase(pv: &Volume) -> &str {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn reclaim_policy(pv: &Volume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain")
}

fn has_finalizer(pv: &Volume) -> bool {
    pv.finalizers().iter().any(|f| f == FINALIZER)
}

pub async fn reconcile(
    ctx: &Context,
    key: &ObjectRef<Volume>,
    term: &CancellationToken,
) -> Result<Next> {
    let Some(pv) = ctx.volumes.get(key) else {
        return Ok(Next::Done);
    };
    if !super::volume_is_ours(&pv, &ctx.provisioner_name) {
        return Ok(Next::Done);
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
    reconcile_volume(ctx, &pv, term).instrument(span).await
}

async fn reconcile_volume(ctx: &Context, pv: &Volume, term: &CancellationToken) -> Result<Next> {
    let deleting = pv.metadata.deletion_timestamp.is_some();
    let api: Api<Volume> = Api::all(ctx.client.clone());
    let name = pv.name_any();

    if !deleting && !has_finalizer(pv) {
        // Take over a PV made by an earlier version or by the Go provisioner: from now on a
        // direct delete of the PV also goes through the delete policy.
        add_finalizer(&api, pv).await?;
        info!("added finalizer to adopt the volume");
        return Ok(Next::Done);
    }

    let released = matches!(phase(pv), "Released" | "Failed");
    if phase(pv) == "Bound" {
        // Still in use by a claim: never touch the data. A deleting PV waits here until the
        // claim is gone and the binder marks the PV Released.
        return Ok(Next::Done);
    }
    let reclaimable = deleting || (released && reclaim_policy(pv) == "Delete");
    if !reclaimable {
        // Pending/Available volumes wait for the binder; Retain keeps the PV and its data.
        return Ok(Next::Done);
    }

    let started = Instant::now();
    let class = pv
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default();
    let result = reclaim(ctx, pv, deleting, term).await;
    match &result {
        Ok(()) => ctx
            .metrics
            .reclaimed(&class, "success", Some(started.elapsed())),
        Err(Error::Stopped) => {}
        Err(e) => {
            ctx.metrics.reclaimed(&class, e.label(), None);
            warn!(error = %e, "reclaiming the volume failed");
            let unmappable = matches!(
                e,
                Error::ForeignServer { .. } | Error::PathOutsideExport { .. } | Error::NotNfs
            );
            let note = if deleting && unmappable {
                format!(
                    "{e}; the PV object was deleted by a user, so it is released and its data left in place"
                )
            } else {
                format!("{e}")
            };
            ctx.events
                .on_volume(pv, EventType::Warning, REASON_VOLUME_FAILED_DELETE, note)
                .await;
            if !(deleting && unmappable) {
                return Err(result.unwrap_err());
            }
            // A PV this provisioner cannot map to a directory of its export: its data is not
            // ours to touch. A Released PV waits for an admin; a PV a user deleted is let go,
            // data untouched, instead of hanging in Terminating forever.
        }
    }

    // Delete first, then drop the finalizer: a crash in between leaves a deleting PV whose
    // next reconcile finds the directory already handled.
    let current = if deleting {
        pv.clone()
    } else {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(either::Either::Left(deleted)) => deleted,
            // Deleted at once: it carried no finalizer any more.
            Ok(either::Either::Right(_)) => return Ok(Next::Done),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Next::Done),
            Err(e) => return Err(e.into()),
        }
    };
    remove_finalizer(&api, &current).await?;
    info!("volume reclaimed");
    Ok(Next::Done)
}

/// Applies the delete policy to the volume's directory (or decides to leave it).
async fn reclaim(
    ctx: &Context,
    pv: &Volume,
    deleting: bool,
    term: &CancellationToken,
) -> Result<()> {
    if reclaim_policy(pv) != "Delete" {
        // A Retain (or Recycle) volume deleted by hand: the data stays, only our finalizer goes.
        info!(
            reclaim_policy = reclaim_policy(pv),
            "PV deleted; keeping its data as its reclaim policy says"
        );
        return Ok(());
    }
    debug_assert!(deleting || matches!(phase(pv), "Released" | "Failed"));
    let policy = delete_policy(ctx, pv)?;
    if policy == OnDelete::Retain {
        info!("keeping the directory: the delete policy is retain");
        return Ok(());
    }
    let nfs = pv
        .spec
        .as_ref()
        .and_then(|s| s.nfs.as_ref())
        .ok_or(Error::NotNfs)?;
    if nfs.server != ctx.nfs_server {
        return Err(Error::ForeignServer {
            found: nfs.server.clone(),
            ours: ctx.nfs_server.clone(),
        });
    }
    let directory =
        ctx.export
            .directory_of(&nfs.path)
            .map_err(|source| Error::PathOutsideExport {
                path: nfs.path.clone(),
                source,
            })?;
    if pv
        .annotations()
        .get(ANN_DIRECTORY_EXISTED)
        .map(String::as_str)
        == Some("true")
    {
        // Data that predates the volume is not the volume's to delete, archive or move.
        let note = format!(
            "directory {directory} existed before this volume was provisioned, so its data is not this volume's alone; it was kept in place (delete policy {policy} not applied)"
        );
        warn!(%directory, "keeping a directory that existed before the volume");
        ctx.events
            .on_volume(pv, EventType::Warning, REASON_DATA_PREDATES_VOLUME, note)
            .await;
        return Ok(());
    }
    let me = pv.name_any();
    // One owner per directory tree from here until the directory is gone: a claim recreated
    // meanwhile waits for it instead of getting a directory that is being deleted.
    let _owner = ctx.directory_locks.acquire(&directory).await;
    let overlap = match volume_overlap::in_cache(ctx, &me, &directory) {
        Some(overlap) => Some(overlap),
        None => volume_overlap::in_api(ctx, &me, &directory).await?,
    };
    if let Some(overlap) = overlap {
        let note = format!("directory {directory} was neither deleted nor archived: {overlap}");
        warn!(%directory, other_pv = %overlap.pv, relation = ?overlap.relation, "leaving a directory another volume uses in place");
        ctx.events
            .on_volume(pv, EventType::Warning, REASON_DIRECTORY_SHARED, note)
            .await;
        return Ok(());
    }
    // No PV points at this directory, inside it or above it (checked just now, under the
    // directory's lock), so parent cleanup meets no other volume's directory.
    let keep = Vec::new();
    match policy {
        OnDelete::Delete => match ctx.root.delete_volume_dir(&directory, keep, term).await? {
            RemoveOutcome::Removed => info!(%directory, "deleted volume directory"),
            RemoveOutcome::AlreadyGone => info!(%directory, "volume directory already gone"),
        },
        OnDelete::Archive => {
            let claim = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
            let namespace = claim.and_then(|c| c.namespace.as_deref()).unwrap_or("");
            let claim_name = claim.and_then(|c| c.name.as_deref()).unwrap_or("");
            let archive = archive_directory(&directory, namespace, claim_name, &pv.name_any());
            match ctx
                .root
                .archive_volume_dir(&directory, &archive, keep, term)
                .await?
            {
                ArchiveOutcome::Archived { to } => {
                    info!(%directory, archive = %to, "archived volume directory")
                }
                ArchiveOutcome::AlreadyGone => info!(%directory, "volume directory already gone"),
            }
        }
        OnDelete::Retain => unreachable!("handled above"),
    }
    Ok(())
}

/// The policy recorded at provisioning; for adopted PVs the class's policy now, or archive
/// when the class is gone (never delete data when in doubt).
fn delete_policy(ctx: &Context, pv: &Volume) -> Result<OnDelete> {
    if let Some(recorded) = pv.annotations().get(ANN_ON_DELETE) {
        return OnDelete::parse(recorded)
            .map_err(|_| Error::InvalidRecordedPolicy(recorded.clone()));
    }
    let class_name = pv
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default();
    let Some(class) = ctx
        .classes
        .get(&ObjectRef::<StorageClass>::new(&class_name))
    else {
        info!(storage_class = %class_name, "class of adopted volume is gone; archiving");
        return Ok(OnDelete::Archive);
    };
    let empty = Default::default();
    let parameters =
        ClassParameters::parse(class.parameters.as_ref().unwrap_or(&empty)).map_err(|source| {
            Error::InvalidParameters {
                class: class_name,
                source: Box::new(source),
            }
        })?;
    Ok(parameters.on_delete)
}

async fn add_finalizer(api: &Api<Volume>, pv: &Volume) -> Result<()> {
    // JSON patch with a resourceVersion test: a concurrent change fails the patch instead of
    // being overwritten, and a merge patch would replace other controllers' finalizers.
    let rv = pv.resource_version().unwrap_or_default();
    let patch = if pv.metadata.finalizers.is_some() {
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    };
    let patch: json_patch::Patch = serde_json::from_value(patch).expect("static patch shape");
    api.patch(
        &pv.name_any(),
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await?;
    Ok(())
}

/// Removes our finalizer; the `test` makes a stale view fail (and retry) instead of removing
/// someone else's finalizer.
async fn remove_finalizer(api: &Api<Volume>, current: &Volume) -> Result<()> {
    let name = current.name_any();
    let Some(index) = current.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let patch = json!([
        {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": FINALIZER},
        {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
    ]);
    let patch: json_patch::Patch = serde_json::from_value(patch).expect("static patch shape");
    match api
        .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
