//! NFS subdirectory provisioner: one directory on a mounted NFS export per claim.
//!
//! * [`config`] — flags and environment, validated; [`exports_file`] — the NFS exports served.
//! * [`parameters`], [`planning`] — StorageClass parameters; which directory a claim gets.
//! * [`storage`] — every file system operation on the NFS root: confined, deadline-bound.
//! * [`nfs_plugin`] — what a volume is on the export: provision a directory and build its PV,
//!   decide and apply a delete policy. No Kubernetes API calls.
//! * [`persistent_volume`] — what goes into a PV; [`objects`] — claims, volumes and classes
//!   as read and cached; [`quantity`] — storage sizes.
//! * [`controller`] — which objects are ours, watches, the queue, PV create/delete,
//!   finalizers, events.
//! * [`leader`] — leader election on a Lease.
//! * [`admin`], [`metrics`] — health, readiness and Prometheus metrics; [`usage`] — measured
//!   usage of every volume, with a budget.
//! * [`hand_back`] — `nfs-provisioner hand-back`: PVs back to the Go provisioner.
//! * [`app`] — wires one process together; [`kube_client`] — the rate-limited API client;
//!   [`memory`] — allocator tuning.

pub mod admin;
pub mod app;
pub mod config;
pub mod controller;
pub mod exports_file;
pub mod hand_back;
pub mod kube_client;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod nfs_plugin;
pub mod objects;
pub mod parameters;
pub mod persistent_volume;
pub mod planning;
pub mod quantity;
pub mod storage;
pub mod usage;
