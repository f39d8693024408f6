//! Why one reconcile attempt failed. Every failure is retried with backoff; the label is
//! what metrics count.

use crate::nfs_plugin::VolumeError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(
        "a PV named {0} already exists and is not known as this provisioner's: if an earlier attempt just created it, the next attempt finds it; otherwise another driver owns that name and it is left alone"
    )]
    VolumeNameTaken(String),
    #[error("{0}")]
    CloneRefused(#[from] super::clone::CloneRefusal),
    #[error(
        "the protection of clone source {0} kept changing under this provisioner's writes; trying again"
    )]
    ProtectionConflict(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("work stopped: leadership lost or shutting down")]
    Stopped,
}

impl Error {
    pub fn label(&self) -> &'static str {
        match self {
            Error::Volume(e) => e.label(),
            Error::VolumeNameTaken(_) => "volume_name_taken",
            Error::CloneRefused(r) => r.label(),
            Error::ProtectionConflict(_) => "kube_conflict",
            Error::Kube(_) => "kube_api",
            Error::Stopped => "stopped",
        }
    }
}

impl From<crate::storage::StorageError> for Error {
    fn from(e: crate::storage::StorageError) -> Self {
        Error::Volume(e.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
