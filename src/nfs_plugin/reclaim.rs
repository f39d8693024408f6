//! Released or deleted PV → its delete policy applied to its directory, or the directory kept.

use std::fmt;

use kube::ResourceExt;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::delete_policy::{self, Decision, Kept, PolicySource};
use super::{DirectoryGuard, NfsPlugin, OtherVolumes, Overlap, VolumeError};
use crate::objects::{Class, Volume};
use crate::parameters::OnDelete;
use crate::planning::{VolumeDirectory, archive_directory};
use crate::storage::{ArchiveOutcome, RemoveOutcome};

/// Why a reclaim left the directory in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeptBecause {
    /// The delete policy keeps it (see [`delete_policy`]).
    Policy(Kept),
    /// Another PV points at it, inside it or above it.
    Shared(Overlap),
}

/// What a reclaim did to the volume's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReclaimOutcome {
    Kept {
        directory: Option<VolumeDirectory>,
        because: KeptBecause,
    },
    /// Deleted (`existed`: false when it was already gone).
    Deleted {
        directory: VolumeDirectory,
        existed: bool,
    },
    /// Archived to `to` (`None`: it was already gone).
    Archived {
        directory: VolumeDirectory,
        to: Option<VolumeDirectory>,
    },
}

impl fmt::Display for ReclaimOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReclaimOutcome::Kept { directory, because } => {
                let dir = directory.as_ref().map_or("the directory", |d| d.as_str());
                match because {
                    KeptBecause::Policy(Kept::ReclaimPolicy(p)) => {
                        write!(f, "kept {dir}: the PV's reclaim policy is {p}")
                    }
                    KeptBecause::Policy(Kept::RetainPolicy(source)) => {
                        write!(f, "kept {dir}: the delete policy ({source}) is retain")
                    }
                    KeptBecause::Policy(Kept::Predates(policy)) => write!(
                        f,
                        "directory {dir} existed before this volume was provisioned, so its data is not this volume's alone; it was kept in place (delete policy {policy} not applied)"
                    ),
                    KeptBecause::Shared(overlap) => write!(
                        f,
                        "directory {dir} was neither deleted nor archived: {overlap}"
                    ),
                }
            }
            ReclaimOutcome::Deleted { directory, existed } => {
                if *existed {
                    write!(f, "deleted volume directory {directory}")
                } else {
                    write!(f, "volume directory {directory} was already gone")
                }
            }
            ReclaimOutcome::Archived { directory, to } => match to {
                Some(to) => write!(f, "archived volume directory {directory} to {to}"),
                None => write!(f, "volume directory {directory} was already gone"),
            },
        }
    }
}

/// What a reclaim will do, decided without touching the file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReclaimPlan {
    Keep(Kept),
    Apply {
        policy: OnDelete,
        source: PolicySource,
        directory: VolumeDirectory,
    },
}

impl NfsPlugin {
    /// Decides what [`Self::reclaim`] will do with `pv` (`class`: its StorageClass now, `None`
    /// when gone): the delete policy, and the directory it applies to. Fails when the PV
    /// cannot be mapped to a directory of this export or its policy cannot be read.
    pub fn plan_reclaim(
        &self,
        pv: &Volume,
        class: Option<&Class>,
    ) -> Result<ReclaimPlan, VolumeError> {
        match delete_policy::decide(pv, class)? {
            Decision::Keep(kept) => Ok(ReclaimPlan::Keep(kept)),
            Decision::Apply { policy, source } => {
                let nfs = pv.spec.as_ref().and_then(|s| s.nfs.as_ref());
                let directory = self.directory_of(nfs)?;
                Ok(ReclaimPlan::Apply {
                    policy,
                    source,
                    directory,
                })
            }
        }
    }

    /// Applies `pv`'s delete policy to its directory, unless another PV's directory (as
    /// `others` sees them, asked under the directory's lock right before the work) is the
    /// same, inside it or above it. Idempotent: a directory already gone is success.
    pub async fn reclaim(
        &self,
        pv: &Volume,
        class: Option<&Class>,
        others: &impl OtherVolumes,
        term: &CancellationToken,
    ) -> Result<ReclaimOutcome, VolumeError> {
        let nfs = pv.spec.as_ref().and_then(|s| s.nfs.as_ref());
        let (policy, source, directory) = match self.plan_reclaim(pv, class)? {
            ReclaimPlan::Keep(kept) => {
                let outcome = ReclaimOutcome::Kept {
                    directory: self.directory_of(nfs).ok(),
                    because: KeptBecause::Policy(kept),
                };
                info!(%outcome, "volume reclaimed");
                return Ok(outcome);
            }
            ReclaimPlan::Apply {
                policy,
                source,
                directory,
            } => (policy, source, directory),
        };
        let me = pv.name_any();
        // One owner per directory tree from here until the directory is gone: a claim
        // recreated meanwhile waits for it instead of getting a directory being deleted.
        let owner = self.lock(&directory).await;
        if let Some(overlap) = others.overlapping(self, &me, &directory).await? {
            let outcome = ReclaimOutcome::Kept {
                directory: Some(directory),
                because: KeptBecause::Shared(overlap),
            };
            info!(%outcome, "volume reclaimed");
            return Ok(outcome);
        }
        let outcome = match policy {
            OnDelete::Delete => self.delete(&owner, &directory, term).await?,
            OnDelete::Archive => {
                let claim = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
                let namespace = claim.and_then(|c| c.namespace.as_deref()).unwrap_or("");
                let claim_name = claim.and_then(|c| c.name.as_deref()).unwrap_or("");
                let archive = archive_directory(&directory, namespace, claim_name, &me);
                self.archive(&owner, &directory, &archive, term).await?
            }
            OnDelete::Retain => unreachable!("delete_policy::decide keeps retained directories"),
        };
        info!(%outcome, policy = %policy, policy_source = %source, "volume reclaimed");
        Ok(outcome)
    }

    /// Archives the directory of a claim that went away before its PV was made (see
    /// `crate::controller::orphans`), unless another PV's directory overlaps it, and forgets
    /// its journal entry. The caller holds the directory (`_owner`) across its own checks.
    pub async fn archive_orphan(
        &self,
        owner: &DirectoryGuard,
        claim_uid: &str,
        pv_name: &str,
        directory: &VolumeDirectory,
        others: &impl OtherVolumes,
        term: &CancellationToken,
    ) -> Result<ReclaimOutcome, VolumeError> {
        /// Namespace part of an orphan's archive name (its claim is gone; its uid names it).
        const ORPHAN_ARCHIVE_NAMESPACE: &str = "orphan";
        let outcome = match others.overlapping(self, pv_name, directory).await? {
            Some(overlap) => ReclaimOutcome::Kept {
                directory: Some(directory.clone()),
                because: KeptBecause::Shared(overlap),
            },
            None => {
                let archive =
                    archive_directory(directory, ORPHAN_ARCHIVE_NAMESPACE, claim_uid, pv_name);
                self.archive(owner, directory, &archive, term).await?
            }
        };
        self.root.journal_remove(claim_uid, term).await?;
        Ok(outcome)
    }

    /// Forgets the journal entry of a claim whose directory is not an orphan after all.
    pub async fn forget_journal_entry(
        &self,
        claim_uid: &str,
        term: &CancellationToken,
    ) -> Result<(), VolumeError> {
        Ok(self.root.journal_remove(claim_uid, term).await?)
    }

    async fn delete(
        &self,
        _owner: &DirectoryGuard,
        directory: &VolumeDirectory,
        term: &CancellationToken,
    ) -> Result<ReclaimOutcome, VolumeError> {
        // No PV points at this directory, inside it or above it (checked under its lock), so
        // the parent cleanup meets no other volume's directory: nothing to keep.
        let existed = match self
            .root
            .delete_volume_dir(directory, Vec::new(), term)
            .await?
        {
            RemoveOutcome::Removed => true,
            RemoveOutcome::AlreadyGone => false,
        };
        Ok(ReclaimOutcome::Deleted {
            directory: directory.clone(),
            existed,
        })
    }

    async fn archive(
        &self,
        _owner: &DirectoryGuard,
        directory: &VolumeDirectory,
        archive: &VolumeDirectory,
        term: &CancellationToken,
    ) -> Result<ReclaimOutcome, VolumeError> {
        let to = match self
            .root
            .archive_volume_dir(directory, archive, Vec::new(), term)
            .await?
        {
            ArchiveOutcome::Archived { to } => Some(to),
            ArchiveOutcome::AlreadyGone => None,
        };
        Ok(ReclaimOutcome::Archived {
            directory: directory.clone(),
            to,
        })
    }
}
