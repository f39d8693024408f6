//! A claim cloned from another claim's volume: its directory is a copy of the source's.
//!
//! Three steps, each safe to repeat after a crash or a lost leadership:
//!
//! 1. [`NfsPlugin::prepare_clone`] plans the new directory as for any claim, refuses one that
//!    already exists (unless this claim's own earlier attempt put it there) or that overlaps
//!    the source, and records it in the orphan journal before anything is copied;
//! 2. [`NfsPlugin::copy_for_clone`] copies the source into the claim's private staging place
//!    (`crate::storage::CloneStaging`); nothing is visible at a volume path meanwhile;
//! 3. [`NfsPlugin::finish_clone`] renames the complete copy into place under the directory's
//!    lock (refusing a directory that appeared meanwhile) and builds the PV object.
//!
//! A half copy is never bound: only a complete copy is ever renamed, and a restart throws an
//! incomplete one away and copies again.

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::overlap::{Relation, relation};
use super::provision::refusal_of_shape;
use super::{NfsPlugin, ProvisionedVolume, VolumeError};
use crate::objects::{Claim, Class, Volume};
use crate::planning::VolumeDirectory;
use crate::storage::{CloneStaging, CopyOutcome, CopyProgress, FinishOutcome, RemoveOutcome};

/// Where a clone copies from and to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneTarget {
    /// The source volume's directory.
    pub source: VolumeDirectory,
    /// The new volume's directory.
    pub destination: VolumeDirectory,
    /// The claim's staging place.
    pub staging: CloneStaging,
    /// An earlier attempt of this claim already put the copy in place: nothing to copy.
    pub in_place: bool,
}

impl NfsPlugin {
    /// Step 1: checks where `claim` (whose class is `class`) would be cloned to from
    /// `source_pv` (a PV of this export, checked by the caller), and records the destination
    /// in the orphan journal.
    pub async fn prepare_clone(
        &self,
        claim: &Claim,
        class: &Class,
        source_pv: &Volume,
        pv_name: &str,
        term: &CancellationToken,
    ) -> Result<CloneTarget, VolumeError> {
        if let Some(refusal) = refusal_of_shape(claim) {
            return Err(refusal);
        }
        let plan = self.plan(claim, class, pv_name)?;
        let source = self.directory_of(source_pv.spec.as_ref().and_then(|s| s.nfs.as_ref()))?;
        let destination = plan.directory;
        if let Some(relation) = relation(&source, &destination) {
            return Err(VolumeError::CloneOverlapsSource {
                destination: destination.to_string(),
                source_dir: source.to_string(),
                relation: match relation {
                    Relation::Same => "is",
                    Relation::Inside => "lies inside",
                    Relation::Contains => "contains",
                },
            });
        }
        let uid = plan.request.claim_uid;
        let staging = CloneStaging::for_claim(&uid)?;
        let _owner = self.lock(&destination).await;
        let exists = self.root.volume_dir_exists(&destination, term).await?;
        let journaled = self.journaled_for(&uid, &destination, term).await?;
        if exists && !journaled {
            return Err(VolumeError::CloneDestinationExists(destination.to_string()));
        }
        if !journaled {
            self.root.journal_record(&uid, &destination, term).await?;
        }
        Ok(CloneTarget {
            source,
            destination,
            staging,
            in_place: exists,
        })
    }

    /// Step 2: copies the source into the staging place (see
    /// `crate::storage::NfsRoot::copy_volume_dir`); `progress` is called after every slice.
    pub async fn copy_for_clone(
        &self,
        target: &CloneTarget,
        progress: &(dyn Fn(&CopyProgress) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<CopyOutcome, VolumeError> {
        Ok(self
            .root
            .copy_volume_dir(&target.source, &target.staging, progress, cancel)
            .await?)
    }

    /// Step 3: puts the complete copy in place and builds PV `pv_name` for it. The copy is
    /// renamed only onto a destination that is still absent: a directory that appeared
    /// since [`Self::prepare_clone`] is someone else's, is left alone and fails the clone.
    pub async fn finish_clone(
        &self,
        claim: &Claim,
        class: &Class,
        target: &CloneTarget,
        pv_name: &str,
        term: &CancellationToken,
    ) -> Result<ProvisionedVolume, VolumeError> {
        let mut plan = self.plan(claim, class, pv_name)?;
        // The claim's labels and annotations may have changed since the copy started; the
        // directory journaled and copied for is the one that counts.
        plan.directory = target.destination.clone();
        let owner = self.lock(&target.destination).await;
        let uid = plan.request.claim_uid.as_str();
        if !self.journaled_for(uid, &target.destination, term).await? {
            return Err(VolumeError::CloneNotJournaled(
                target.destination.to_string(),
            ));
        }
        let exists = self
            .root
            .volume_dir_exists(&target.destination, term)
            .await?;
        match (exists, target.in_place) {
            (true, true) => {
                info!(destination = %target.destination, "cloned directory already in place from an earlier attempt");
            }
            (true, false) => {
                // Made by someone else while the copy ran: not this volume's, and the copy is
                // not renamed over it. Forgetting the journal entry keeps the orphan sweep
                // away from it; the next attempt refuses the directory as existing.
                warn!(destination = %target.destination, "a directory appeared where the clone was to go; leaving it alone");
                self.root.journal_remove(uid, term).await?;
                return Err(VolumeError::CloneDestinationExists(
                    target.destination.to_string(),
                ));
            }
            (false, _) => {
                match self
                    .root
                    .finish_copy(
                        &target.staging,
                        &target.destination,
                        &plan.parent_permissions,
                        term,
                    )
                    .await?
                {
                    FinishOutcome::Finished { .. } => {}
                    FinishOutcome::NothingStaged { .. } => {
                        return Err(VolumeError::CloneNotStaged(target.staging.to_string()));
                    }
                }
            }
        }
        Ok(self.volume_for(plan, claim, class, false, owner))
    }

    /// Throws away a claim's staged copy, complete or not (the claim is gone, or its copy
    /// failed and starts over).
    pub async fn discard_clone_copy(
        &self,
        staging: &CloneStaging,
        term: &CancellationToken,
    ) -> Result<bool, VolumeError> {
        Ok(matches!(
            self.root.discard_copy(staging, term).await?,
            RemoveOutcome::Removed
        ))
    }
}
