//! Why the plugin could not provision or reclaim a volume.

use crate::parameters::ParameterError;
use crate::planning::PlanError;
use crate::storage::StorageError;

/// A failure of one attempt. Every one is retried with backoff by the controller; the label
/// is what metrics count, and the message is written for the claim's or PV's events.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volumeMode Block is not supported: NFS volumes are file systems")]
    BlockVolumeMode,
    #[error(
        "spec.selector is not supported: this provisioner creates new volumes and cannot match a selector"
    )]
    Selector,
    #[error(
        "{0} is not supported: this provisioner cannot populate a volume from another volume or snapshot"
    )]
    DataSource(String),
    #[error(
        "the clone's directory {destination} {relation} the source volume's directory {source_dir}: a clone must not overlap its source; change the class's pathPattern or the claim's annotations"
    )]
    CloneOverlapsSource {
        destination: String,
        source_dir: String,
        /// "is", "lies inside" or "contains".
        relation: &'static str,
    },
    #[error(
        "directory {0} already exists: a clone is copied into a new directory only, and existing data is left alone; remove or rename that directory, or change the class's pathPattern"
    )]
    CloneDestinationExists(String),
    #[error(
        "the clone's directory {0} is no longer recorded for this claim (another attempt gave it up); starting over"
    )]
    CloneNotJournaled(String),
    #[error("no complete copy is staged at {0}; copying again")]
    CloneNotStaged(String),
    #[error("spec.resources.requests.storage is missing")]
    NoStorageRequest,
    #[error("StorageClass {class} has invalid parameters: {source}")]
    InvalidParameters {
        class: String,
        #[source]
        source: Box<ParameterError>,
    },
    #[error("invalid claim annotation: {0}")]
    InvalidClaimAnnotation(#[source] Box<ParameterError>),
    #[error("unsafe volume path: {0}")]
    UnsafePath(#[source] PlanError),
    #[error(
        "the PV's NFS path {path:?} is not a directory under this provisioner's export: {source}"
    )]
    PathOutsideExport {
        path: String,
        #[source]
        source: PlanError,
    },
    #[error(
        "the PV points to NFS server {found:?}, but this provisioner manages {ours:?}; its data is left alone"
    )]
    ForeignServer { found: String, ours: String },
    #[error("the PV has no spec.nfs")]
    NotNfs,
    #[error(
        "the StorageClass names export {name:?}, which this provisioner does not serve (it serves: {served}); set the class parameter `export` to one of those, or add the export to the provisioner's exports configuration"
    )]
    UnknownExport { name: String, served: String },
    #[error("the recorded delete policy {0:?} is not one of delete, retain, archive")]
    InvalidRecordedPolicy(String),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("looking up other volumes: {0}")]
    Lookup(#[from] LookupError),
}

impl VolumeError {
    pub fn label(&self) -> &'static str {
        match self {
            VolumeError::BlockVolumeMode => "block_volume_mode",
            VolumeError::Selector => "selector",
            VolumeError::DataSource(_) => "data_source",
            VolumeError::CloneOverlapsSource { .. } => "clone_overlaps_source",
            VolumeError::CloneDestinationExists(_) => "clone_destination_exists",
            VolumeError::CloneNotJournaled(_) | VolumeError::CloneNotStaged(_) => "clone_restarted",
            VolumeError::NoStorageRequest => "no_storage_request",
            VolumeError::InvalidParameters { .. } => "invalid_parameters",
            VolumeError::InvalidClaimAnnotation(_) => "invalid_claim_annotation",
            VolumeError::UnsafePath(_) => "unsafe_path",
            VolumeError::PathOutsideExport { .. } => "path_outside_export",
            VolumeError::ForeignServer { .. } => "foreign_server",
            VolumeError::NotNfs => "not_nfs",
            VolumeError::UnknownExport { .. } => "unknown_export",
            VolumeError::InvalidRecordedPolicy(_) => "invalid_recorded_policy",
            VolumeError::Storage(e) => e.label(),
            VolumeError::Lookup(_) => "kube_api",
        }
    }

    /// The PV cannot be mapped to a directory of this export: its data is not this
    /// provisioner's to touch.
    pub fn is_unmappable(&self) -> bool {
        matches!(
            self,
            VolumeError::ForeignServer { .. }
                | VolumeError::PathOutsideExport { .. }
                | VolumeError::NotNfs
        )
    }
}

/// The view of the other PVs could not answer (the API server, for the controller's view).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LookupError(#[source] pub Box<dyn std::error::Error + Send + Sync>);
