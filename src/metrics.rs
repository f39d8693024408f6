//! Prometheus metrics the admin endpoint serves at `/metrics`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of one provision or delete operation outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub storage_class: String,
    /// `success` or a short failure reason (an error label).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub storage_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `provision`, `delete` or `resize`.
    pub operation: String,
    pub reason: String,
}

/// One volume, labelled so that it joins with kube-state-metrics:
/// `kube_persistentvolumeclaim_info{namespace, persistentvolumeclaim}` and
/// `kube_persistentvolume_info{persistentvolume}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct VolumeLabels {
    pub namespace: String,
    pub persistentvolumeclaim: String,
    pub persistentvolume: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// Usage measurement (see `crate::usage`): per volume, and of the scanner itself.
#[derive(Clone)]
pub struct UsageMetrics {
    pub used_bytes: Family<VolumeLabels, Gauge>,
    pub used_inodes: Family<VolumeLabels, Gauge>,
    pub capacity_bytes: Family<VolumeLabels, Gauge>,
    pub measured_timestamp: Family<VolumeLabels, Gauge>,
    pub entries: Counter,
    pub slices: Family<ResultLabels, Counter>,
    pub scans: Family<ResultLabels, Counter>,
    pub scan_duration: Histogram,
    pub paused: Gauge,
}

impl UsageMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = UsageMetrics {
            used_bytes: Family::default(),
            used_inodes: Family::default(),
            capacity_bytes: Family::default(),
            measured_timestamp: Family::default(),
            entries: Counter::default(),
            slices: Family::default(),
            scans: Family::default(),
            // 0.1 s .. ~55 min: a volume of millions of files takes many slices.
            scan_duration: Histogram::new(exponential_buckets(0.1, 2.0, 16)),
            paused: Gauge::default(),
        };
        registry.register(
            "volume_used_bytes",
            "Bytes a volume's directory holds on the NFS server (st_blocks * 512, as du counts), as last measured",
            m.used_bytes.clone(),
        );
        registry.register(
            "volume_used_inodes",
            "Files, directories and other entries in a volume's directory (hard links once), as last measured",
            m.used_inodes.clone(),
        );
        registry.register(
            "volume_capacity_bytes",
            "The capacity of a volume (its PV's spec.capacity: what its claim requested); NFS does not enforce it",
            m.capacity_bytes.clone(),
        );
        registry.register(
            "volume_usage_measured_timestamp_seconds",
            "When a volume's usage was last measured completely (Unix time)",
            m.measured_timestamp.clone(),
        );
        registry.register(
            "usage_scan_entries",
            "Directory entries stat'ed by usage measurement",
            m.entries.clone(),
        );
        registry.register(
            "usage_scan_slices",
            "Slices of usage measurement, by result (in_progress, finished, gone, or a failure reason)",
            m.slices.clone(),
        );
        registry.register(
            "usage_scans",
            "Complete measurements of a volume, by result (exact, or inexact: something was skipped)",
            m.scans.clone(),
        );
        registry.register(
            "usage_scan_duration_seconds",
            "Time from the first to the last slice of a volume's measurement",
            m.scan_duration.clone(),
        );
        registry.register(
            "usage_scan_paused",
            "1 while usage measurement waits for the NFS root to answer its probe again",
            m.paused.clone(),
        );
        m
    }

    /// Drops every series of one volume (deleted, or no longer measured here).
    pub fn forget(&self, volume: &VolumeLabels) {
        self.used_bytes.remove(volume);
        self.used_inodes.remove(volume);
        self.capacity_bytes.remove(volume);
        self.measured_timestamp.remove(volume);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// Metrics of one NFS export.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExportLabels {
    pub export: String,
}

impl ExportLabels {
    fn of(export: &str) -> Self {
        ExportLabels {
            export: export.to_string(),
        }
    }
}

fn duration_histogram() -> Histogram {
    // 5 ms .. ~80 s
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Every metric of the process, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub provisions: Family<OperationLabels, Counter>,
    pub provision_duration: Family<ClassLabels, Histogram, fn() -> Histogram>,
    pub deletes: Family<OperationLabels, Counter>,
    pub delete_duration: Family<ClassLabels, Histogram, fn() -> Histogram>,
    pub resizes: Family<OperationLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub claims_waiting: Gauge,
    pub leader: Gauge,
    nfs_root_healthy: Family<ExportLabels, Gauge>,
    nfs_root_probe_seconds: Family<ExportLabels, Gauge<f64, AtomicU64>>,
    nfs_stuck_operations: Family<ExportLabels, Gauge>,
    pub events_failed: Counter,
    pub usage: UsageMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("nfs_provisioner");
        let provisions = Family::<OperationLabels, Counter>::default();
        registry.register(
            "provision_operations",
            "Provision attempts by StorageClass and result",
            provisions.clone(),
        );
        let provision_duration: Family<ClassLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "provision_duration_seconds",
            "Duration of successful provisions (directory and PV), by StorageClass",
            provision_duration.clone(),
        );
        let deletes = Family::<OperationLabels, Counter>::default();
        registry.register(
            "delete_operations",
            "Reclaim attempts by StorageClass and result",
            deletes.clone(),
        );
        let delete_duration: Family<ClassLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "delete_duration_seconds",
            "Duration of successful reclaims (directory policy and PV removal), by StorageClass",
            delete_duration.clone(),
        );
        let resizes = Family::<OperationLabels, Counter>::default();
        registry.register(
            "resize_operations",
            "Claim expansions answered, by StorageClass and result (success, refused, or a failure reason)",
            resizes.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "failures",
            "Failed attempts that will be retried, by operation and reason",
            failures.clone(),
        );
        let claims_waiting = Gauge::default();
        registry.register(
            "claims_waiting",
            "Claims of this provisioner that are waiting for a volume",
            claims_waiting.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease (or runs without leader election)",
            leader.clone(),
        );
        let nfs_root_healthy = Family::<ExportLabels, Gauge>::default();
        registry.register(
            "nfs_root_healthy",
            "1 when the last probe of the export's NFS root succeeded",
            nfs_root_healthy.clone(),
        );
        let nfs_root_probe_seconds = Family::<ExportLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "nfs_root_probe_seconds",
            "Latency of the last probe of the export's NFS root",
            nfs_root_probe_seconds.clone(),
        );
        let nfs_stuck_operations = Family::<ExportLabels, Gauge>::default();
        registry.register(
            "nfs_stuck_operations",
            "File system operations on the export's NFS root that outlived their deadline and are still running",
            nfs_stuck_operations.clone(),
        );
        let events_failed = Counter::default();
        registry.register(
            "events_failed",
            "Kubernetes Events that could not be written",
            events_failed.clone(),
        );
        let usage = UsageMetrics::register(&mut registry);
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("build_info", "Build information", build_info);

        Self {
            registry: Arc::new(registry),
            provisions,
            provision_duration,
            deletes,
            delete_duration,
            resizes,
            failures,
            claims_waiting,
            leader,
            nfs_root_healthy,
            nfs_root_probe_seconds,
            nfs_stuck_operations,
            events_failed,
            usage,
        }
    }

    /// 1 while `export`'s root answers its probe.
    pub fn nfs_root_healthy(&self, export: &str) -> Gauge {
        self.nfs_root_healthy
            .get_or_create(&ExportLabels::of(export))
            .clone()
    }

    pub fn nfs_root_probe_seconds(&self, export: &str) -> Gauge<f64, AtomicU64> {
        self.nfs_root_probe_seconds
            .get_or_create(&ExportLabels::of(export))
            .clone()
    }

    pub fn nfs_stuck_operations(&self, export: &str) -> Gauge {
        self.nfs_stuck_operations
            .get_or_create(&ExportLabels::of(export))
            .clone()
    }

    pub fn provisioned(&self, class: &str, result: &str, took: Option<Duration>) {
        self.provisions
            .get_or_create(&OperationLabels {
                storage_class: class.to_string(),
                result: result.to_string(),
            })
            .inc();
        if let Some(took) = took {
            self.provision_duration
                .get_or_create(&ClassLabels {
                    storage_class: class.to_string(),
                })
                .observe(took.as_secs_f64());
        }
    }

    pub fn reclaimed(&self, class: &str, result: &str, took: Option<Duration>) {
        self.deletes
            .get_or_create(&OperationLabels {
                storage_class: class.to_string(),
                result: result.to_string(),
            })
            .inc();
        if let Some(took) = took {
            self.delete_duration
                .get_or_create(&ClassLabels {
                    storage_class: class.to_string(),
                })
                .observe(took.as_secs_f64());
        }
    }

    pub fn resized(&self, class: &str, result: &str) {
        self.resizes
            .get_or_create(&OperationLabels {
                storage_class: class.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    pub fn failed(&self, operation: &str, reason: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                operation: operation.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// OpenMetrics text, as Prometheus scrapes it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
