//! Measured usage of every bound volume: a background task with a budget, Prometheus gauges
//! per volume, and an Event on the claim when a volume holds more than was requested.
//!
//! Budget: every [`UsageSettings::interval`] a round of at most
//! [`UsageSettings::slices_per_interval`] slices runs, one slice at a time, each statting at
//! most [`UsageSettings::entries_per_slice`] entries within one storage deadline (see
//! [`NfsRoot::measure_volume_dir`]). So the task holds at most one of the storage worker
//! permits and provisioning never waits behind it. A measurement continues over as many
//! rounds as the volume needs (incremental: slices resume where the last one stopped), and a
//! volume is measured again at most every [`UsageSettings::rescan_period`].
//!
//! Health: while the NFS root's probe fails, or while one of this task's slices is stuck in
//! the server, no slice starts (`usage_scan_paused` is 1): a hung server gets no more load
//! from here, and the stuck slice's progress is kept for when it answers again.
//!
//! Events: a claim gets a Warning `VolumeUsageOverRequest` when its volume holds more bytes
//! than its capacity (the request, as provisioned or last resized), and a Normal
//! `VolumeUsageWithinRequest` once it is back under 95% of it. Only changes are reported, and
//! the band between 95% and 100% keeps a volume hovering at its size from flapping. The state
//! lives in memory: after a restart (or a change of leader) a volume found over its request is
//! reported once more; one found within it is not.
//!
//! The task runs only on the leader, and a replica that stops leading drops its usage series,
//! so exactly one replica exports them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kube::ResourceExt;
use kube::api::ObjectMeta;
use kube::runtime::events::EventType;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::controller::{Context, EventPublisher};
use crate::metrics::{ResultLabels, UsageMetrics, VolumeLabels};
use crate::nfs_plugin::NfsPlugin;
use crate::objects::{Claim, Volume};
use crate::persistent_volume::ANN_PROVISIONED_BY;
use crate::planning::{ExportPath, VolumeDirectory};
use crate::quantity::{HumanBytes, quantity_bytes};
use crate::storage::{NfsRoot, StorageError, UsageScan, UsageStep, VolumeUsage};

pub const REASON_USAGE_OVER_REQUEST: &str = "VolumeUsageOverRequest";
pub const REASON_USAGE_WITHIN_REQUEST: &str = "VolumeUsageWithinRequest";

/// How much measuring may cost (flags `--usage-scan-*`, `--usage-rescan-period`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSettings {
    pub interval: Duration,
    /// Slices per interval; 0 turns measuring off.
    pub slices_per_interval: u32,
    pub entries_per_slice: u64,
    pub rescan_period: Duration,
}

impl UsageSettings {
    pub fn enabled(&self) -> bool {
        self.slices_per_interval > 0
    }
}

/// A bound volume to measure, as the controller's cache knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRef {
    pub pv: String,
    pub namespace: String,
    pub claim: String,
    pub claim_uid: String,
    pub directory: VolumeDirectory,
    /// The PV's capacity in bytes, if it parses.
    pub capacity: Option<u64>,
}

impl VolumeRef {
    fn labels(&self) -> VolumeLabels {
        VolumeLabels {
            namespace: self.namespace.clone(),
            persistentvolumeclaim: self.claim.clone(),
            persistentvolume: self.pv.clone(),
        }
    }

    /// Enough of the claim to write an Event about it.
    fn claim_ref(&self) -> Claim {
        Claim {
            metadata: ObjectMeta {
                name: Some(self.claim.clone()),
                namespace: Some(self.namespace.clone()),
                uid: Some(self.claim_uid.clone()),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// Where the task gets the volumes to measure from (the controller's cache in production):
/// `None` when nothing changed since the last call (so an idle cache of 100 000 volumes is
/// not decoded every interval).
pub type VolumeSource = Arc<dyn Fn() -> Option<Vec<VolumeRef>> + Send + Sync>;
/// Whether the NFS root answered its last probe.
pub type HealthSource = Arc<dyn Fn() -> bool + Send + Sync>;

/// A PV of this provisioner, Bound, on its server and under its export: what can be measured.
pub fn volume_ref(
    pv: &Volume,
    provisioner_name: &str,
    nfs_server: &str,
    export: &ExportPath,
) -> Option<VolumeRef> {
    if pv.annotations().get(ANN_PROVISIONED_BY).map(String::as_str) != Some(provisioner_name)
        || pv.metadata.deletion_timestamp.is_some()
        || pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound")
    {
        return None;
    }
    let spec = pv.spec.as_deref()?;
    let nfs = spec.nfs.as_ref().filter(|n| n.server == nfs_server)?;
    let claim = spec.claim_ref.as_ref()?;
    Some(VolumeRef {
        pv: pv.name_any(),
        namespace: claim.namespace.clone()?,
        claim: claim.name.clone()?,
        claim_uid: claim.uid.clone().unwrap_or_default(),
        directory: export.directory_of(&nfs.path).ok()?,
        capacity: spec
            .capacity
            .as_ref()
            .and_then(|c| c.get("storage"))
            .and_then(|q| quantity_bytes(q).ok())
            .and_then(|b| u64::try_from(b).ok()),
    })
}

/// Every measurable volume of `export` in the controller's cache.
pub fn from_cache(ctx: &Context, export: &NfsPlugin) -> Vec<VolumeRef> {
    ctx.volumes.filter_map(|pv| {
        volume_ref(
            &pv,
            ctx.selection.provisioner_name(),
            export.nfs_server(),
            export.export_path(),
        )
    })
}

/// Whether a volume holds more than its request, as last reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fill {
    #[default]
    Within,
    Over,
}

/// A change worth an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    WentOver,
    CameBack,
}

/// Share of the capacity a volume must fall under to count as back within its request.
const BACK_WITHIN_PERCENT: u64 = 95;

/// The next state of a volume measured at `used` bytes against `capacity`, and the change to
/// report if any: over once above the capacity, back only under 95% of it.
pub fn next_fill(current: Fill, used: u64, capacity: u64) -> (Fill, Option<Transition>) {
    match current {
        Fill::Within if used > capacity => (Fill::Over, Some(Transition::WentOver)),
        Fill::Over if (used as u128) * 100 < (capacity as u128) * BACK_WITHIN_PERCENT as u128 => {
            (Fill::Within, Some(Transition::CameBack))
        }
        other => (other, None),
    }
}

struct Tracked {
    volume: VolumeRef,
    scan: Option<UsageScan>,
    scan_started: Option<Instant>,
    last_measured: Option<Instant>,
    fill: Fill,
}

/// The background task. Build it with [`UsageMonitor::new`], run it with
/// [`UsageMonitor::run`] while this replica leads.
pub struct UsageMonitor {
    root: NfsRoot,
    metrics: UsageMetrics,
    events: EventPublisher,
    volumes: VolumeSource,
    healthy: HealthSource,
    settings: UsageSettings,
    tracked: BTreeMap<String, Tracked>,
    /// Every tracked volume, least recently measured first (never measured: at the front).
    order: VecDeque<String>,
    /// The volume whose measurement is under way.
    current: Option<String>,
}

enum SliceEnd {
    Continue,
    /// The server did not answer: no more slices this round.
    Stop,
}

impl UsageMonitor {
    pub fn new(
        root: NfsRoot,
        metrics: UsageMetrics,
        events: EventPublisher,
        volumes: VolumeSource,
        healthy: HealthSource,
        settings: UsageSettings,
    ) -> Self {
        UsageMonitor {
            root,
            metrics,
            events,
            volumes,
            healthy,
            settings,
            tracked: BTreeMap::new(),
            order: VecDeque::new(),
            current: None,
        }
    }

    /// Measures until `stop` fires, then drops every usage series this replica exported.
    pub async fn run(mut self, stop: CancellationToken) {
        if !self.settings.enabled() {
            info!("usage measurement is off (USAGE_SCAN_SLICES=0)");
            return;
        }
        let mut ticks = tokio::time::interval(self.settings.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            self.round(&stop).await;
        }
        for tracked in self.tracked.values() {
            self.metrics.forget(&tracked.volume.labels());
        }
        self.metrics.paused.set(0);
    }

    /// One interval's worth of work.
    async fn round(&mut self, stop: &CancellationToken) {
        self.refresh();
        let stuck = self
            .current
            .as_ref()
            .and_then(|pv| self.tracked.get(pv)?.scan.as_ref())
            .is_some_and(UsageScan::is_busy);
        if stuck || !(self.healthy)() {
            if self.metrics.paused.get() == 0 {
                info!(
                    stuck,
                    "usage measurement paused until the NFS root answers again"
                );
            }
            self.metrics.paused.set(1);
            return;
        }
        self.metrics.paused.set(0);
        for _ in 0..self.settings.slices_per_interval {
            let Some(pv) = self.next_due(Instant::now()) else {
                return;
            };
            if let SliceEnd::Stop = self.slice(&pv, stop).await {
                return;
            }
        }
    }

    /// Follows the volume list: new volumes are tracked, gone ones forgotten (series removed),
    /// changed ones (capacity after a resize) updated.
    fn refresh(&mut self) {
        let Some(volumes) = (self.volumes)() else {
            return;
        };
        // Sorted in place rather than collected into a map: with 100 000 volumes the map's
        // nodes and copied names were tens of MB at every refresh.
        let mut current = volumes;
        current.sort_unstable_by(|a, b| a.pv.cmp(&b.pv));
        let find = |pv: &str| {
            current
                .binary_search_by(|v| v.pv.as_str().cmp(pv))
                .ok()
                .map(|i| &current[i])
        };
        let metrics = &self.metrics;
        self.tracked.retain(|pv, t| {
            let keep = find(pv).is_some_and(|v| {
                v.directory == t.volume.directory
                    && v.namespace == t.volume.namespace
                    && v.claim == t.volume.claim
            });
            if !keep {
                debug!(
                    pv,
                    "volume no longer measured; its usage series are dropped"
                );
                metrics.forget(&t.volume.labels());
            }
            keep
        });
        let tracked = &self.tracked;
        self.order.retain(|pv| tracked.contains_key(pv));
        if self
            .current
            .as_ref()
            .is_some_and(|pv| !self.tracked.contains_key(pv))
        {
            self.current = None;
        }
        for volume in current {
            match self.tracked.get_mut(&volume.pv) {
                Some(t) => {
                    if let Some(capacity) = volume.capacity {
                        self.metrics
                            .capacity_bytes
                            .get_or_create(&volume.labels())
                            .set(capacity as i64);
                    }
                    t.volume = volume;
                }
                None => {
                    let pv = volume.pv.clone();
                    self.order.push_front(pv.clone());
                    self.tracked.insert(
                        pv,
                        Tracked {
                            volume,
                            scan: None,
                            scan_started: None,
                            last_measured: None,
                            fill: Fill::Within,
                        },
                    );
                }
            }
        }
    }

    /// The volume whose measurement goes on next: the one under way, else the one never
    /// measured or measured longest ago, if its rescan period has passed. Constant time: the
    /// order is kept as volumes are measured.
    fn next_due(&mut self, now: Instant) -> Option<String> {
        if let Some(pv) = &self.current {
            return Some(pv.clone());
        }
        let front = self.order.front()?;
        let due = self.tracked.get(front).is_some_and(|t| {
            t.last_measured
                .is_none_or(|at| now.duration_since(at) >= self.settings.rescan_period)
        });
        if !due {
            return None;
        }
        let pv = self.order.pop_front()?;
        self.order.push_back(pv.clone());
        self.current = Some(pv.clone());
        Some(pv)
    }

    async fn slice(&mut self, pv: &str, stop: &CancellationToken) -> SliceEnd {
        let budget = self.settings.entries_per_slice;
        let tracked = self
            .tracked
            .get_mut(pv)
            .expect("picked from the tracked set");
        let scan = tracked
            .scan
            .get_or_insert_with(|| UsageScan::new(tracked.volume.directory.clone()))
            .clone();
        tracked.scan_started.get_or_insert_with(Instant::now);
        let step = self.root.measure_volume_dir(&scan, budget, stop).await;
        let result = match &step {
            Ok(UsageStep::InProgress { .. }) => "in_progress",
            Ok(UsageStep::Finished { .. }) => "finished",
            Ok(UsageStep::Gone) => "gone",
            Err(e) => e.label(),
        };
        self.metrics
            .slices
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
        let tracked = self.tracked.get_mut(pv).expect("still tracked");
        match step {
            Ok(UsageStep::InProgress { entries }) => {
                self.metrics.entries.inc_by(entries);
                SliceEnd::Continue
            }
            Ok(UsageStep::Finished { usage, entries }) => {
                let took = tracked.scan_started.take().map(|s| s.elapsed());
                tracked.scan = None;
                self.current = None;
                tracked.last_measured = Some(Instant::now());
                self.metrics.entries.inc_by(entries);
                if let Some(took) = took {
                    self.metrics.scan_duration.observe(took.as_secs_f64());
                }
                let volume = tracked.volume.clone();
                let transition = record(&self.metrics, tracked, &usage);
                if let Some(transition) = transition {
                    report(&self.events, &volume, &usage, transition).await;
                }
                SliceEnd::Continue
            }
            Ok(UsageStep::Gone) => {
                debug!(pv, "volume directory not there; nothing to measure");
                tracked.scan = None;
                self.current = None;
                tracked.scan_started = None;
                tracked.last_measured = Some(Instant::now());
                self.metrics.forget(&tracked.volume.labels());
                SliceEnd::Continue
            }
            Err(StorageError::Cancelled) => SliceEnd::Stop,
            Err(e) if e.is_not_responding() => {
                // Progress stays with the scan (and with its thread if that is stuck).
                warn!(pv, error = %e, "usage measurement paused: the NFS root did not answer");
                SliceEnd::Stop
            }
            Err(e) => {
                warn!(pv, error = %e, "could not measure the volume's usage; trying again after the rescan period");
                tracked.scan = None;
                self.current = None;
                tracked.scan_started = None;
                tracked.last_measured = Some(Instant::now());
                SliceEnd::Continue
            }
        }
    }
}

/// Updates the volume's series and its fill state; the change to report, if any.
fn record(
    metrics: &UsageMetrics,
    tracked: &mut Tracked,
    usage: &VolumeUsage,
) -> Option<Transition> {
    let labels = tracked.volume.labels();
    metrics
        .used_bytes
        .get_or_create(&labels)
        .set(usage.bytes.min(i64::MAX as u64) as i64);
    metrics
        .used_inodes
        .get_or_create(&labels)
        .set(usage.inodes.min(i64::MAX as u64) as i64);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    metrics.measured_timestamp.get_or_create(&labels).set(now);
    metrics
        .scans
        .get_or_create(&ResultLabels {
            result: if usage.is_exact() { "exact" } else { "inexact" }.to_string(),
        })
        .inc();
    let capacity = tracked.volume.capacity?;
    metrics
        .capacity_bytes
        .get_or_create(&labels)
        .set(capacity as i64);
    let (fill, transition) = next_fill(tracked.fill, usage.bytes, capacity);
    tracked.fill = fill;
    transition
}

async fn report(
    events: &EventPublisher,
    volume: &VolumeRef,
    usage: &VolumeUsage,
    transition: Transition,
) {
    let capacity = volume.capacity.unwrap_or_default();
    let held = format!(
        "{} in {} files and directories",
        HumanBytes(usage.bytes.into()),
        usage.inodes
    );
    let claim = volume.claim_ref();
    match transition {
        Transition::WentOver => {
            let note = format!(
                "volume {} holds {held}, more than the {} requested; NFS does not enforce the size: the export's free space is shared with every other volume on it. Expand the claim or delete data",
                volume.pv,
                HumanBytes(capacity.into()),
            );
            info!(pv = %volume.pv, used = usage.bytes, capacity, "volume holds more than requested");
            events
                .on_claim(&claim, EventType::Warning, REASON_USAGE_OVER_REQUEST, note)
                .await;
        }
        Transition::CameBack => {
            let note = format!(
                "volume {} holds {held}, back within the {} requested",
                volume.pv,
                HumanBytes(capacity.into()),
            );
            info!(pv = %volume.pv, used = usage.bytes, capacity, "volume back within its request");
            events
                .on_claim(&claim, EventType::Normal, REASON_USAGE_WITHIN_REQUEST, note)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn over_and_back_with_a_band_between() {
        use Fill::*;
        use Transition::*;
        assert_eq!(next_fill(Within, 100, 100), (Within, None));
        assert_eq!(next_fill(Within, 101, 100), (Over, Some(WentOver)));
        assert_eq!(next_fill(Over, 150, 100), (Over, None), "no repeat");
        assert_eq!(
            next_fill(Over, 100, 100),
            (Over, None),
            "at the size: still over"
        );
        assert_eq!(next_fill(Over, 95, 100), (Over, None), "inside the band");
        assert_eq!(next_fill(Over, 94, 100), (Within, Some(CameBack)));
        assert_eq!(next_fill(Within, 99, 100), (Within, None));
        // Sizes past 2^64 / 100 do not overflow.
        assert_eq!(next_fill(Over, u64::MAX - 1, u64::MAX), (Over, None));
    }

    fn volume(n: u32) -> VolumeRef {
        VolumeRef {
            pv: format!("pv-{n}"),
            namespace: "ns".into(),
            claim: format!("c-{n}"),
            claim_uid: format!("u-{n}"),
            directory: VolumeDirectory::parse(&format!("ns/v-{n}")).unwrap(),
            capacity: Some(1000),
        }
    }

    async fn monitor(volumes: Arc<std::sync::Mutex<Vec<VolumeRef>>>) -> UsageMonitor {
        let dir = tempfile::tempdir().unwrap();
        let root = NfsRoot::open(dir.path(), Default::default()).await.unwrap();
        let metrics = crate::metrics::Metrics::new();
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                .unwrap();
        let events = EventPublisher::new(client, "test", "test", metrics.clone());
        UsageMonitor::new(
            root,
            metrics.usage,
            events,
            Arc::new(move || Some(volumes.lock().unwrap().clone())),
            Arc::new(|| true),
            UsageSettings {
                interval: Duration::from_secs(1),
                slices_per_interval: 1,
                entries_per_slice: 10,
                rescan_period: Duration::from_secs(60),
            },
        )
    }

    /// Marks the scan under way as finished now, as a Finished slice does.
    fn finish_current(m: &mut UsageMonitor, at: Instant) {
        let pv = m.current.take().unwrap();
        m.tracked.get_mut(&pv).unwrap().last_measured = Some(at);
    }

    #[tokio::test]
    async fn volumes_are_measured_in_turn_and_again_only_after_the_rescan_period() {
        let list = Arc::new(std::sync::Mutex::new(vec![volume(1), volume(2)]));
        let mut m = monitor(list.clone()).await;
        m.refresh();
        let now = Instant::now();
        let first = m.next_due(now).unwrap();
        assert_eq!(
            m.next_due(now),
            Some(first.clone()),
            "the one under way goes on"
        );
        finish_current(&mut m, now);
        let second = m.next_due(now).unwrap();
        assert_ne!(first, second);
        finish_current(&mut m, now);
        assert_eq!(m.next_due(now), None, "both measured: nothing due yet");

        // A new volume comes first; a deleted one is forgotten.
        list.lock().unwrap().push(volume(3));
        list.lock().unwrap().retain(|v| v.pv != first);
        m.refresh();
        assert_eq!(m.next_due(now).as_deref(), Some("pv-3"));
        finish_current(&mut m, now);
        assert!(!m.tracked.contains_key(&first));
        assert!(!m.order.contains(&first));
        assert_eq!(m.next_due(now), None);
        let later = now + Duration::from_secs(61);
        assert_eq!(
            m.next_due(later),
            Some(second),
            "least recently measured first"
        );
    }

    fn pv(value: serde_json::Value) -> Volume {
        serde_json::from_value(value).unwrap()
    }

    fn ours() -> serde_json::Value {
        json!({
            "metadata": {"name": "pvc-1", "annotations": {ANN_PROVISIONED_BY: "me"}},
            "spec": {"capacity": {"storage": "1Gi"},
                     "claimRef": {"namespace": "ns", "name": "data", "uid": "u1"},
                     "nfs": {"server": "filer", "path": "/export/ns-data-pvc-1"}},
            "status": {"phase": "Bound"}
        })
    }

    #[test]
    fn only_our_bound_volumes_under_the_export_are_measured() {
        let export = ExportPath::new("/export").unwrap();
        let v = volume_ref(&pv(ours()), "me", "filer", &export).unwrap();
        assert_eq!(v.pv, "pvc-1");
        assert_eq!((v.namespace.as_str(), v.claim.as_str()), ("ns", "data"));
        assert_eq!(v.directory.as_str(), "ns-data-pvc-1");
        assert_eq!(v.capacity, Some(1 << 30));
        let labels = v.labels();
        assert_eq!(labels.persistentvolumeclaim, "data");
        assert_eq!(labels.persistentvolume, "pvc-1");

        let mut released = ours();
        released["status"]["phase"] = json!("Released");
        let mut theirs = ours();
        theirs["metadata"]["annotations"][ANN_PROVISIONED_BY] = json!("other");
        let mut elsewhere = ours();
        elsewhere["spec"]["nfs"]["path"] = json!("/other/x");
        let mut deleting = ours();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-12-02T00:00:00Z");
        for value in [released, theirs, elsewhere, deleting] {
            assert!(volume_ref(&pv(value), "me", "filer", &export).is_none());
        }
        assert!(volume_ref(&pv(ours()), "me", "other-filer", &export).is_none());
        let mut odd = ours();
        odd["spec"]["capacity"]["storage"] = json!("lots");
        assert_eq!(
            volume_ref(&pv(odd), "me", "filer", &export)
                .unwrap()
                .capacity,
            None
        );
    }
}
