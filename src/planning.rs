// TEMPORARY interface stub for the controller to compile against; replaced by the storage branch.
use crate::parameters::ClassParameters;
use std::collections::BTreeMap;
pub struct VolumeRequest {
    pub namespace: String,
    pub claim_name: String,
    pub claim_uid: String,
    pub pv_name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeDirectory(String);
impl VolumeDirectory {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn parse(_r: &str) -> Result<Self, PlanError> {
        unimplemented!()
    }
}
impl std::fmt::Display for VolumeDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
#[derive(Debug, thiserror::Error)]
#[error("plan error")]
pub struct PlanError;
pub fn plan_directory(
    _p: &ClassParameters,
    _r: &VolumeRequest,
) -> Result<VolumeDirectory, PlanError> {
    unimplemented!()
}
pub fn archive_directory(
    _d: &VolumeDirectory,
    _ns: &str,
    _claim: &str,
    _pv: &str,
) -> VolumeDirectory {
    unimplemented!()
}
#[derive(Debug, Clone)]
pub struct ExportPath(String);
impl ExportPath {
    pub fn new(p: &str) -> Self {
        Self(p.into())
    }
    pub fn pv_path(&self, _d: &VolumeDirectory) -> String {
        unimplemented!()
    }
    pub fn directory_of(&self, _p: &str) -> Result<VolumeDirectory, PlanError> {
        unimplemented!()
    }
}
