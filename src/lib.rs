//! NFS subdirectory provisioner: one directory on a mounted NFS export per claim.

pub mod parameters;
pub mod planning;
pub mod storage;
