//! NFS subdirectory provisioner: one directory on a mounted NFS export per claim.
//!
//! * [`config`] — flags and environment, validated.
//! * [`parameters`], [`planning`] — StorageClass parameters; which directory a claim gets.
//! * [`storage`] — every file system operation on the NFS root: confined, deadline-bound.
//! * [`persistent_volume`] — the PV object a claim gets; [`quantity`] — storage sizes.
//! * [`controller`] — watches, provisioning, reclaiming, events.
//! * [`leader`] — leader election on a Lease.
//! * [`admin`], [`metrics`] — health, readiness and Prometheus metrics; [`usage`] — measured
//!   usage of every volume, with a budget.
//! * [`app`] — wires one process together; [`kube_client`] — the rate-limited API client.

pub mod admin;
pub mod app;
pub mod config;
pub mod controller;
pub mod kube_client;
pub mod leader;
pub mod metrics;
pub mod parameters;
pub mod persistent_volume;
pub mod planning;
pub mod quantity;
pub mod storage;
pub mod usage;
