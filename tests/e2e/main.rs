//! End-to-end scenarios: the provisioner against a fake control plane (default) or a real
//! cluster (`E2E_KUBECONFIG`). Crash and fault scenarios always use the fake.

mod cluster;
mod expansion;
mod exports;
mod fake_only;
#[path = "../kube_objects/mod.rs"]
mod kube_objects;
mod leadership;
mod operations;
mod provisioner;
mod rbac;
mod real_cluster;
mod scenarios;
mod usage;
