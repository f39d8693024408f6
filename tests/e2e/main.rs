//! End-to-end scenarios: the provisioner against a fake control plane (default) or a real
//! cluster (`E2E_KUBECONFIG`). Crash and fault scenarios always use the fake.

mod cluster;
mod expansion;
mod fake_only;
mod leadership;
mod operations;
mod provisioner;
mod rbac;
mod real_cluster;
mod scenarios;
mod usage;
