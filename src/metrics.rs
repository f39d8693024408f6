//! Prometheus metrics the admin endpoint serves at `/metrics`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Every metric's name starts with `nfs_provisioner_`.
const PREFIX: &str = "nfs_provisioner";

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// One measured volume, as the usage task's table holds it. Its labels join with
/// kube-state-metrics: `kube_persistentvolumeclaim_info{namespace, persistentvolumeclaim}`
/// and `kube_persistentvolume_info{persistentvolume}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSample<'a> {
    pub namespace: &'a str,
    pub persistentvolumeclaim: &'a str,
    pub persistentvolume: &'a str,
    pub used_bytes: u64,
    pub used_inodes: u64,
    /// The PV's capacity, if it parses.
    pub capacity_bytes: Option<u64>,
    /// When the last complete measurement ended (Unix time).
    pub measured_timestamp: i64,
}

/// What holds measured volumes (the usage task's table): read at each scrape, one part at a
/// time.
pub trait VolumeSamples: Send + Sync {
    /// Volumes held, measured or not (how many parts a scrape splits them into).
    fn volume_count(&self) -> usize;
    /// `f` of every measured volume in part `part` of `parts` (parts split the volumes by a
    /// hash of their name, so each is in exactly one).
    fn for_each_sample(&self, part: u64, parts: u64, f: &mut dyn FnMut(&VolumeSample<'_>));
}

/// The per-volume usage series: `volume_used_bytes`, `volume_used_inodes`,
/// `volume_capacity_bytes` and `volume_usage_measured_timestamp_seconds`.
///
/// Not kept as labelled gauges (`Family`): with 100 000 volumes, four families of three owned
/// label strings each held more than the rest of the provisioner. They are written at each
/// scrape from the sources attached, which hold one compact entry per volume.
///
/// Written by hand rather than through the crate's encoder: that encoder writes a whole
/// registry into one writer in one call, so a page had to be built whole (70 MB at 100 000
/// measured volumes, more than the rest of the process), or a slow client would hold the
/// usage table's lock. Here each part's text is built under the lock, then handed on after
/// it is released, and the page is streamed. A source is held weakly: when the usage task
/// ends (this replica stops leading), its series go. A page is not a snapshot (nor was it with
/// gauges, set one after another): a measurement that ends while the page is written can show
/// in a volume's later families and not in its earlier ones; each value is "as last measured".
#[derive(Default)]
pub struct VolumeUsageSeries {
    sources: std::sync::Mutex<Vec<Weak<dyn VolumeSamples>>>,
}

impl std::fmt::Debug for VolumeUsageSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeUsageSeries").finish_non_exhaustive()
    }
}

/// Volumes per part of a scrape: a part's text (about 180 bytes a series) is what is held at
/// once.
const VOLUMES_PER_PART: usize = 4096;

type SampleValue = fn(&VolumeSample<'_>) -> Option<u64>;

/// Name, help and value of each per-volume family.
const VOLUME_FAMILIES: [(&str, &str, SampleValue); 4] = [
    (
        "volume_used_bytes",
        "Bytes a volume's directory holds on the NFS server (st_blocks * 512, as du counts), as last measured",
        |s| Some(s.used_bytes),
    ),
    (
        "volume_used_inodes",
        "Files, directories and other entries in a volume's directory (hard links once), as last measured",
        |s| Some(s.used_inodes),
    ),
    (
        "volume_capacity_bytes",
        "The capacity of a volume (its PV's spec.capacity: what its claim requested); NFS does not enforce it",
        |s| s.capacity_bytes,
    ),
    (
        "volume_usage_measured_timestamp_seconds",
        "When a volume's usage was last measured completely (Unix time)",
        |s| u64::try_from(s.measured_timestamp).ok(),
    ),
];

/// A label value as the text format quotes it.
fn write_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

impl VolumeUsageSeries {
    /// Adds a source; it is read until it is dropped.
    pub fn attach(&self, source: Weak<dyn VolumeSamples>) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.retain(|s| s.strong_count() > 0);
        sources.push(source);
    }

    fn live_sources(&self) -> Vec<Arc<dyn VolumeSamples>> {
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.iter().filter_map(Weak::upgrade).collect()
    }

    /// Writes the four families in the text format, names prefixed with `prefix_`, as pieces
    /// handed to `emit` one after the other; stops early (false) when `emit` returns false.
    pub fn write(&self, prefix: &str, emit: &mut dyn FnMut(String) -> bool) -> bool {
        use std::fmt::Write;
        let sources = self.live_sources();
        for (name, help, value) in VOLUME_FAMILIES {
            let head = format!("# HELP {prefix}_{name} {help}.\n# TYPE {prefix}_{name} gauge\n");
            if !emit(head) {
                return false;
            }
            for source in &sources {
                let parts = (source.volume_count() / VOLUMES_PER_PART + 1) as u64;
                for part in 0..parts {
                    let mut text = String::new();
                    source.for_each_sample(part, parts, &mut |s| {
                        let Some(v) = value(s) else { return };
                        let _ = write!(text, "{prefix}_{name}{{namespace=\"");
                        write_label_value(&mut text, s.namespace);
                        text.push_str("\",persistentvolumeclaim=\"");
                        write_label_value(&mut text, s.persistentvolumeclaim);
                        text.push_str("\",persistentvolume=\"");
                        write_label_value(&mut text, s.persistentvolume);
                        let _ = writeln!(text, "\"}} {}", gauge_value(v));
                    });
                    if !text.is_empty() && !emit(text) {
                        return false;
                    }
                }
            }
        }
        true
    }
}

/// A count as a gauge's value (which is signed).
fn gauge_value(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// Usage measurement (see `crate::usage`): per volume, and of the scanner itself.
#[derive(Clone)]
pub struct UsageMetrics {
    /// The per-volume series, encoded from the usage task's own table at each scrape.
    pub volumes: Arc<VolumeUsageSeries>,
    pub entries: Counter,
    pub slices: Family<ResultLabels, Counter>,
    pub scans: Family<ResultLabels, Counter>,
    pub scan_duration: Histogram,
    pub paused: Gauge,
}

impl UsageMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = UsageMetrics {
            volumes: Arc::default(),
            entries: Counter::default(),
            slices: Family::default(),
            scans: Family::default(),
            // 0.1 s .. ~55 min: a volume of millions of files takes many slices.
            scan_duration: Histogram::new(exponential_buckets(0.1, 2.0, 16)),
            paused: Gauge::default(),
        };
        registry.register(
            "usage_scan_entries",
            "Directory entries stat'ed by usage measurement",
            m.entries.clone(),
        );
        registry.register(
            "usage_scan_slices",
            "Storage operations of usage measurement (one per volume a slice works on), by result (in_progress, finished, gone, or a failure reason)",
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
        let mut registry = Registry::with_prefix(PREFIX);
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
        self.write_page(&mut |piece| {
            out.push_str(&piece);
            true
        });
        out
    }

    /// The page in pieces, handed to `emit` in order (see [`VolumeUsageSeries`]): at most
    /// one part of the per-volume series is built at a time. Stops when `emit` returns false.
    pub fn write_page(&self, emit: &mut dyn FnMut(String) -> bool) {
        let mut head = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut head, &self.registry);
        if !emit(head) || !self.usage.volumes.write(PREFIX, emit) {
            return;
        }
        let mut eof = String::new();
        let _ = encode_eof(&mut eof);
        emit(eof);
    }
}
