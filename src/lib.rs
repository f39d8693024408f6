//! NFS subdirectory provisioner: one directory on a mounted NFS export per claim.
