// TEMPORARY interface stub for the controller to compile against; replaced by the storage branch.
use std::collections::BTreeMap;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    Delete,
    Retain,
    Archive,
}
impl OnDelete {
    pub fn as_str(&self) -> &'static str {
        match self {
            OnDelete::Delete => "delete",
            OnDelete::Retain => "retain",
            OnDelete::Archive => "archive",
        }
    }
    pub fn parse(s: &str) -> Result<Self, ParameterError> {
        match s {
            "delete" => Ok(Self::Delete),
            "retain" => Ok(Self::Retain),
            "archive" => Ok(Self::Archive),
            _ => Err(ParameterError {
                key: "onDelete".into(),
            }),
        }
    }
}
#[derive(Debug, Clone)]
pub struct PathPattern(pub String);
#[derive(Debug, Clone)]
pub struct ClassParameters {
    pub on_delete: OnDelete,
    pub path_pattern: Option<PathPattern>,
    pub directory_mode: Option<u32>,
    pub directory_uid: Option<u32>,
    pub directory_gid: Option<u32>,
}
impl ClassParameters {
    pub fn parse(_p: &BTreeMap<String, String>) -> Result<Self, ParameterError> {
        unimplemented!()
    }
}
#[derive(Debug, thiserror::Error)]
#[error("bad parameter {key}")]
pub struct ParameterError {
    key: String,
}
impl ParameterError {
    pub fn key(&self) -> &str {
        &self.key
    }
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryPermissions {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}
impl DirectoryPermissions {
    pub fn resolve(
        _d: &DirectoryPermissions,
        _c: &ClassParameters,
        _a: &BTreeMap<String, String>,
    ) -> Result<Self, ParameterError> {
        unimplemented!()
    }
}
