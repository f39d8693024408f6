//! The NFS volume plugin: what a volume is on the export, with no Kubernetes API calls.
//!
//! sig-storage-lib-external-provisioner keeps a `Provisioner` (Provision → PV, Delete → the
//! storage asset) apart from the controller that talks to the API server; this module is that
//! half. [`NfsPlugin::provision`] plans a claim's directory, creates it and builds the PV
//! object; [`NfsPlugin::reclaim`] decides a released volume's delete policy
//! ([`delete_policy`]) and applies it unless another volume's directory overlaps
//! ([`overlap`]). Creating and deleting PV objects, finalizers, events, metrics and the work
//! queue stay in [`crate::controller`], which hands this plugin what it knows of the cluster
//! (the claim, its class, a view of the other PVs).

mod clone;
pub mod delete_policy;
pub mod directory_locks;
mod error;
mod exports;
pub mod overlap;
mod provision;
mod reclaim;

use std::sync::Arc;

pub use clone::CloneTarget;
pub use directory_locks::{DirectoryGuard, DirectoryLocks};
pub use error::{LookupError, VolumeError};
pub use exports::Exports;
pub use overlap::{OtherVolumes, Overlap, Relation};
pub use provision::{ProvisionedVolume, refusal_of};
pub use reclaim::{KeptBecause, ReclaimOutcome};

use crate::objects::Class;
use crate::parameters::{ClassParameters, DirectoryPermissions};
use crate::planning::{ExportPath, VolumeDirectory};
use crate::storage::NfsRoot;

/// One NFS export as this provisioner serves it: where PVs point (server and export path),
/// where it is mounted here, and who may work on which directory.
pub struct NfsPlugin {
    /// The export's name (`default` for `NFS_SERVER` / `NFS_PATH`).
    name: String,
    provisioner_name: String,
    nfs_server: String,
    export: ExportPath,
    default_permissions: DirectoryPermissions,
    root: NfsRoot,
    /// One owner at a time per directory tree (provisioning, reclaim, orphan sweep).
    locks: Arc<DirectoryLocks>,
}

impl NfsPlugin {
    pub fn new(
        name: &str,
        provisioner_name: &str,
        nfs_server: &str,
        export: ExportPath,
        default_permissions: DirectoryPermissions,
        root: NfsRoot,
    ) -> Self {
        NfsPlugin {
            name: name.to_string(),
            provisioner_name: provisioner_name.to_string(),
            nfs_server: nfs_server.to_string(),
            export,
            default_permissions,
            root,
            locks: Default::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn nfs_server(&self) -> &str {
        &self.nfs_server
    }

    /// The exported path PVs of this export point beneath.
    pub fn export_path(&self) -> &ExportPath {
        &self.export
    }

    pub fn root(&self) -> &NfsRoot {
        &self.root
    }

    /// Waits until no overlapping directory is held, then holds `dir` until the guard drops.
    pub async fn lock(&self, dir: &VolumeDirectory) -> DirectoryGuard {
        self.locks.acquire(dir).await
    }

    /// The directory beneath the root that a PV's `spec.nfs` points at, if it is of this
    /// export (same server, a path beneath the export path).
    pub fn directory_of(
        &self,
        nfs: Option<&k8s_openapi::api::core::v1::NFSVolumeSource>,
    ) -> Result<VolumeDirectory, VolumeError> {
        let nfs = nfs.ok_or(VolumeError::NotNfs)?;
        if nfs.server != self.nfs_server {
            return Err(VolumeError::ForeignServer {
                found: nfs.server.clone(),
                ours: self.nfs_server.clone(),
            });
        }
        self.export
            .directory_of(&nfs.path)
            .map_err(|source| VolumeError::PathOutsideExport {
                path: nfs.path.clone(),
                source,
            })
    }
}

/// A class's parameters as parsed when it was cached, or the error naming the class.
fn parameters_of(class: &Class) -> Result<&ClassParameters, VolumeError> {
    class
        .parameters
        .as_ref()
        .map_err(|source| VolumeError::InvalidParameters {
            class: class.name().to_string(),
            source: Box::new(source.clone()),
        })
}

#[cfg(test)]
mod tests;
