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

use super::other_volumes::ClusterVolumes;
use super::{Context, Result};
use crate::nfs_plugin::{NfsPlugin, ReclaimOutcome};
use crate::persistent_volume::pv_name_for;
use crate::planning::VolumeDirectory;

/// Looks at every journal entry of every export once. Failures are logged and retried at
/// the next sweep; a hung export delays only its own entries.
pub async fn sweep(ctx: &Context, term: &CancellationToken) {
    for export in ctx.exports.iter() {
        let entries = match export.root().journal_entries(term).await {
            Ok(entries) => entries,
            Err(e) => {
                warn!(export = export.name(), error = %e, "could not read the orphan journal; trying again at the next sweep");
                continue;
            }
        };
        for (uid, directory) in entries {
            if term.is_cancelled() {
                return;
            }
            if let Err(e) = handle(ctx, export, &uid, &directory, term).await {
                warn!(export = export.name(), claim_uid = %uid, %directory, error = %e, "could not handle an orphan journal entry; trying again at the next sweep");
            }
        }
    }
}

async fn handle(
    ctx: &Context,
    export: &NfsPlugin,
    uid: &str,
    directory: &VolumeDirectory,
    term: &CancellationToken,
) -> Result<()> {
    let pv_name = pv_name_for(uid);
    if ctx.volumes.get(&ObjectRef::new(&pv_name)).is_some() {
        export.forget_journal_entry(uid, term).await?;
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
    let owner = export.lock(directory).await;
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    // A list by name, not a get: `list` is what the RBAC already grants for PVs.
    let named = ListParams::default().fields(&format!("metadata.name={pv_name}"));
    if !api.list(&named).await?.items.is_empty() {
        export.forget_journal_entry(uid, term).await?;
        return Ok(());
    }
    let outcome = export
        .archive_orphan(&owner, uid, &pv_name, directory, &ClusterVolumes(ctx), term)
        .await?;
    match outcome {
        ReclaimOutcome::Archived { to: Some(to), .. } => warn!(
            claim_uid = %uid,
            %directory,
            archive = %to,
            "archived an orphaned directory: it was created for a claim that was deleted before its PersistentVolume was made; remove it when it holds nothing you need"
        ),
        ReclaimOutcome::Kept { .. } => {
            warn!(claim_uid = %uid, %outcome, "directory created for a deleted claim is used by another volume; left in place")
        }
        _ => info!(claim_uid = %uid, %directory, "orphaned directory already gone"),
    }
    Ok(())
}
