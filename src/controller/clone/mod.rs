//! Claims cloned from another claim (`dataSource: {kind: PersistentVolumeClaim, name}`).
//!
//! A clone's reconcile, each step repeatable:
//!
//! 1. the data source is checked ([`source`]): a claim of the same namespace, Bound to a PV
//!    of this provisioner on the export the clone's class names, no larger than the clone's
//!    request; anything else is refused with a `ProvisioningFailed` Warning;
//! 2. the NFS plugin checks and journals the new directory
//!    (`NfsPlugin::prepare_clone`);
//! 3. the source claim is protected from deletion ([`protection`]);
//! 4. the copy runs in the background ([`jobs`]), a bounded number at once, with Normal
//!    events at its start and at most once a minute;
//! 5. when it has ended, the next reconcile puts the copy in place
//!    (`NfsPlugin::finish_clone`) and the controller creates the PV as for any claim, then
//!    releases the source's protection ([`released`]).

mod jobs;
pub mod protection;
pub mod source;

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::events::REASON_CLONE_DIFFERENCES;
use super::{Context, Result, WorkItem};
use crate::nfs_plugin::{ProvisionedVolume, VolumeError};
use crate::objects::{Claim, Class};
use crate::quantity::HumanBytes;
use crate::storage::CopyOutcome;
pub use jobs::CloneJobs;
use jobs::{Finished, JobContext};
pub use source::{CloneRefusal, SourceRef};

/// Notes of skipped or differently copied entries listed in one event.
const NOTES_IN_EVENT: usize = 5;

/// Where a clone stands after one reconcile.
pub enum Step {
    /// The copy is in place and the PV object is ready to be created.
    Ready {
        volume: Box<ProvisionedVolume>,
        /// What the copy did (`None`: an earlier attempt already put it in place).
        summary: Option<String>,
    },
    /// The copy runs (or waits for a slot); the claim is queued again when it ends.
    Copying,
}

/// One reconcile of clone `claim` of `source` (see the module's steps).
pub async fn provision(
    ctx: &Context,
    claim: &Claim,
    class: &Class,
    source: &SourceRef,
    pv_name: &str,
    term: &CancellationToken,
) -> Result<Step> {
    let uid = claim.uid().unwrap_or_default();
    let export = ctx.exports.provision_export(class)?;
    match ctx.clones.take_finished(&uid) {
        Some(Finished::Copied { target, outcome }) => {
            let volume = export
                .finish_clone(claim, class, &target, pv_name, term)
                .await?;
            let summary = summarize(ctx, claim, source, &outcome).await;
            return Ok(Step::Ready {
                volume: Box::new(volume),
                summary: Some(summary),
            });
        }
        Some(Finished::Failed(e)) => return Err(VolumeError::from(e).into()),
        None if ctx.clones.is_running(&uid) => return Ok(Step::Copying),
        None => {}
    }

    let found = protection::read(&ctx.client, &source.namespace, &source.name).await?;
    let source_pv_name = source::check_claim(source, found.as_ref(), &uid)?.to_string();
    let source_claim = found.expect("checked: the source claim exists");
    let source_pv = ctx.volumes.get(&ObjectRef::new(&source_pv_name));
    source::check_volume(
        source,
        &source_claim,
        &source_pv_name,
        source_pv.as_deref(),
        &ctx.selection,
    )?;
    let source_pv = source_pv.expect("checked: the source PV is cached");
    let nfs = source_pv.spec.as_ref().and_then(|s| s.nfs.as_ref());
    let source_export = match ctx.exports.of_volume(nfs) {
        Ok(e) => e.name().to_string(),
        Err(e) => format!("no export served here ({e})"),
    };
    if source_export != export.name() {
        return Err(CloneRefusal::OtherExport {
            name: source.name.clone(),
            source_export: format!("export {source_export}"),
            class: class.name().to_string(),
            class_export: export.name().to_string(),
        }
        .into());
    }
    source::check_size(source, claim, &source_claim, &source_pv)?;

    let target = match export
        .prepare_clone(claim, class, &source_pv, pv_name, term)
        .await
    {
        Ok(target) => target,
        Err(e @ VolumeError::CloneDestinationExists(_)) => {
            // No copy will ever be put there: do not keep one staged.
            if let Ok(staging) = crate::storage::CloneStaging::for_claim(&uid) {
                let _ = export.discard_clone_copy(&staging, term).await;
            }
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    // Only a clone that is about to copy protects its source: a refused one never holds it.
    protection::protect(&ctx.client, source_claim, &uid).await?;
    if target.in_place {
        let volume = export
            .finish_clone(claim, class, &target, pv_name, term)
            .await?;
        return Ok(Step::Ready {
            volume: Box::new(volume),
            summary: None,
        });
    }
    let queue = ctx.queue.clone();
    let key = WorkItem::Claim(ObjectRef::from_obj(claim));
    ctx.clones.start(
        target,
        JobContext {
            root: export.root().clone(),
            events: ctx.events.clone(),
            tasks: ctx.tasks.clone(),
            claim: claim.clone(),
            source: source.clone(),
            export: export.name().to_string(),
            ended: Box::new(move || queue.add(key)),
        },
        term,
    );
    Ok(Step::Copying)
}

/// The success note's clone part, and a Warning listing what the copy could not keep.
async fn summarize(
    ctx: &Context,
    claim: &Claim,
    source: &SourceRef,
    outcome: &CopyOutcome,
) -> String {
    let p = &outcome.progress;
    if p.notes > 0 {
        let listed: Vec<String> = outcome
            .notes
            .iter()
            .take(NOTES_IN_EVENT)
            .map(ToString::to_string)
            .collect();
        let more = p.notes.saturating_sub(listed.len() as u64);
        let note = format!(
            "the copy of claim {} differs from it in {} entries ({} not copied): {}{}",
            source.name,
            p.notes,
            p.skipped,
            listed.join("; "),
            if more > 0 {
                format!("; and {more} more (see the provisioner's log)")
            } else {
                String::new()
            }
        );
        for n in &outcome.notes {
            warn!(claim = %claim.name_any(), entry = %n, "clone copy note");
        }
        ctx.events
            .on_claim(claim, EventType::Warning, REASON_CLONE_DIFFERENCES, note)
            .await;
    }
    format!(
        "cloned from claim {}: {} in {} entries",
        source.name,
        HumanBytes(u128::from(p.bytes)),
        p.entries
    )
}

/// After the clone's PV exists: its source is no longer protected for it.
pub async fn released(ctx: &Context, claim: &Claim, source: &SourceRef) {
    let uid = claim.uid().unwrap_or_default();
    match protection::release(&ctx.client, &source.namespace, &source.name, &uid).await {
        Ok(()) => info!(source = %source.name, "clone done; source released"),
        // The sweep takes it off later.
        Err(e) => {
            warn!(source = %source.name, error = %e, "could not release the clone source's protection; the next sweep will")
        }
    }
}

/// Claim `key` is gone (deleted, or bound elsewhere): a copy still running for it is
/// cancelled; once it has ended, its staged copy is thrown away and its source released.
pub async fn claim_gone(ctx: &Context, key: &ObjectRef<Claim>, term: &CancellationToken) {
    let Some(abandoned) = ctx.clones.abandon(key) else {
        return;
    };
    info!(claim = %key, "the claim of a clone is gone; discarding its copy");
    if let Ok(export) = ctx.exports.named(Some(&abandoned.export))
        && let Err(e) = export
            .discard_clone_copy(&abandoned.target.staging, term)
            .await
    {
        warn!(staging = %abandoned.target.staging, error = %e, "could not discard the copy of a gone claim; the next sweep will");
    }
    if let Err(e) = protection::release(
        &ctx.client,
        &abandoned.source.namespace,
        &abandoned.source.name,
        &abandoned.uid,
    )
    .await
    {
        warn!(source = %abandoned.source.name, error = %e, "could not release the clone source's protection; the next sweep will");
    }
}

/// Staged copies whose claim no longer waits for a volume and whose copy is not running are
/// thrown away (a copy is never anyone's data: its source is untouched).
pub async fn sweep_staged(ctx: &Arc<Context>, term: &CancellationToken) {
    let waiting = |uid: &str| {
        ctx.claims
            .state()
            .iter()
            .any(|c| c.metadata.uid.as_deref() == Some(uid))
    };
    ctx.clones.forget_ended(|uid| !waiting(uid));
    for export in ctx.exports.iter() {
        let staged = match export.root().staged_copies(term).await {
            Ok(staged) => staged,
            Err(e) => {
                warn!(export = export.name(), error = %e, "could not list staged clone copies; trying again at the next sweep");
                continue;
            }
        };
        for copy in staged {
            let uid = copy.staging.key();
            if waiting(uid) || ctx.clones.is_running(uid) {
                continue;
            }
            match export.discard_clone_copy(&copy.staging, term).await {
                Ok(_) => {
                    info!(export = export.name(), staging = %copy.staging, "discarded the staged copy of a clone whose claim is gone")
                }
                Err(e) => {
                    warn!(export = export.name(), staging = %copy.staging, error = %e, "could not discard a staged clone copy; trying again at the next sweep")
                }
            }
        }
    }
}
