//! Directories created for a claim whose PV was never made (the process crashed after the
//! mkdir, and the claim was deleted before a later attempt): found through the orphan journal
//! on the NFS root (`NfsRoot::journal_*`), so also after a restart, and archived.
//!
//! Provisioning records `claim uid → directory` before it creates a directory and removes the
//! record once the PV exists (or once it finds the directory existed before). An entry whose
//! claim is gone and whose PV (`pvc-<claim uid>`) does not exist, checked against the API
//! server under the directory's lock, is an orphan. Archiving (never deleting) keeps whatever
//! a pod may have written meanwhile; a directory another PV uses is left in place.

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::Api;
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Context, volume_overlap};
use crate::persistent_volume::pv_name_for;
use crate::planning::archive_directory;
use crate::storage::ArchiveOutcome;

/// Namespace part of an orphan's archive name (its claim is gone; its uid names it).
const ORPHAN_ARCHIVE_NAMESPACE: &str = "orphan";

/// Looks at every journal entry once. Failures are logged and retried at the next sweep.
pub async fn sweep(ctx: &Context, term: &CancellationToken) {
    let entries = match ctx.root.journal_entries(term).await {
        Ok(entries) => entries,
        Err(e) => {
            warn!(error = %e, "could not read the orphan journal; trying again at the next sweep");
            return;
        }
    };
    for (uid, directory) in entries {
        if term.is_cancelled() {
            return;
        }
        if let Err(e) = handle(ctx, &uid, &directory, term).await {
            warn!(claim_uid = %uid, %directory, error = %e, "could not handle an orphan journal entry; trying again at the next sweep");
        }
    }
}

async fn handle(
    ctx: &Context,
    uid: &str,
    directory: &crate::planning::VolumeDirectory,
    term: &CancellationToken,
) -> super::Result<()> {
    let pv_name = pv_name_for(uid);
    if ctx.volumes.get(&ObjectRef::new(&pv_name)).is_some() {
        ctx.root.journal_remove(uid, term).await?;
        return Ok(());
    }
    // The claim still waits for its volume: provisioning goes on (and removes the entry).
    let waiting = ctx
        .claims
        .state()
        .iter()
        .any(|c| c.metadata.uid.as_deref() == Some(uid));
    if waiting {
        return Ok(());
    }
    let _owner = ctx.directory_locks.acquire(directory).await;
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    // A list by name, not a get: `list` is what the RBAC already grants for PVs.
    let named = ListParams::default().fields(&format!("metadata.name={pv_name}"));
    if !api.list(&named).await?.items.is_empty() {
        ctx.root.journal_remove(uid, term).await?;
        return Ok(());
    }
    let overlap = match volume_overlap::in_cache(ctx, &pv_name, directory) {
        Some(overlap) => Some(overlap),
        None => volume_overlap::in_api(ctx, &pv_name, directory).await?,
    };
    if let Some(overlap) = overlap {
        warn!(claim_uid = %uid, %directory, %overlap, "directory created for a deleted claim is used by another volume; left in place");
        ctx.root.journal_remove(uid, term).await?;
        return Ok(());
    }
    let archive = archive_directory(directory, ORPHAN_ARCHIVE_NAMESPACE, uid, &pv_name);
    match ctx
        .root
        .archive_volume_dir(directory, &archive, Vec::new(), term)
        .await?
    {
        ArchiveOutcome::Archived { to } => warn!(
            claim_uid = %uid,
            %directory,
            archive = %to,
            "archived an orphaned directory: it was created for a claim that was deleted before its PersistentVolume was made; remove it when it holds nothing you need"
        ),
        ArchiveOutcome::AlreadyGone => {
            info!(claim_uid = %uid, %directory, "orphaned directory already gone")
        }
    }
    ctx.root.journal_remove(uid, term).await?;
    Ok(())
}
