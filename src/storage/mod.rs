// TEMPORARY interface stub for the controller to compile against; replaced by the storage branch.
use crate::parameters::DirectoryPermissions;
use crate::planning::VolumeDirectory;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
#[derive(Debug, Clone)]
pub struct StorageOptions {
    pub op_timeout: Duration,
    pub max_stuck_ops: usize,
}
#[derive(Clone)]
pub struct NfsRoot;
#[derive(Debug)]
pub enum CreateOutcome {
    Created,
    AlreadyExisted,
}
#[derive(Debug)]
pub enum RemoveOutcome {
    Removed,
    AlreadyGone,
}
#[derive(Debug)]
pub enum ArchiveOutcome {
    Archived { to: VolumeDirectory },
    AlreadyGone,
}
#[derive(Debug, thiserror::Error)]
#[error("storage error")]
pub struct StorageError;
impl StorageError {
    pub fn label(&self) -> &'static str {
        "io"
    }
}
impl NfsRoot {
    pub async fn open(_p: &Path, _o: StorageOptions) -> Result<NfsRoot, StorageError> {
        unimplemented!()
    }
    pub async fn create_volume_dir(
        &self,
        _d: &VolumeDirectory,
        _p: &DirectoryPermissions,
        _c: &CancellationToken,
    ) -> Result<CreateOutcome, StorageError> {
        unimplemented!()
    }
    pub async fn delete_volume_dir(
        &self,
        _d: &VolumeDirectory,
        _c: &CancellationToken,
    ) -> Result<RemoveOutcome, StorageError> {
        unimplemented!()
    }
    pub async fn archive_volume_dir(
        &self,
        _d: &VolumeDirectory,
        _a: &VolumeDirectory,
        _c: &CancellationToken,
    ) -> Result<ArchiveOutcome, StorageError> {
        unimplemented!()
    }
    pub async fn volume_dir_exists(
        &self,
        _d: &VolumeDirectory,
        _c: &CancellationToken,
    ) -> Result<bool, StorageError> {
        unimplemented!()
    }
    pub async fn probe(&self) -> Result<Duration, StorageError> {
        unimplemented!()
    }
    pub fn stuck_operations(&self) -> usize {
        0
    }
}
