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

mod tracked;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::ObjectMeta;
use kube::runtime::events::EventType;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::controller::EventPublisher;
use crate::metrics::{ResultLabels, UsageMetrics, VolumeSamples};
use crate::objects::{Claim, Volume};
use crate::persistent_volume::ANN_PROVISIONED_BY;
use crate::planning::{ExportPath, VolumeDirectory};
use crate::quantity::{HumanBytes, quantity_bytes};
use crate::storage::{NfsRoot, StorageError, UsageScan, UsageStep, VolumeUsage};
use tracked::TrackedVolumes;

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

/// Where the task gets the volumes to measure from (the controller's cache in production).
pub trait VolumeSource: Send + Sync {
    /// Calls `f` with every measurable volume, one at a time; or returns false without
    /// calling it when nothing changed since the last call (so an idle cache of 100 000
    /// volumes is not decoded every interval).
    fn visit_if_changed(&self, f: &mut dyn FnMut(VolumeRef)) -> bool;
    /// The measurable volume `pv` as it is now, if it still is one.
    fn get(&self, pv: &str) -> Option<VolumeRef>;
}
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

/// The measurement under way.
struct Current {
    volume: VolumeRef,
    scan: UsageScan,
    started: Instant,
}

/// The background task. Build it with [`UsageMonitor::new`], run it with
/// [`UsageMonitor::run`] while this replica leads.
pub struct UsageMonitor {
    root: NfsRoot,
    metrics: UsageMetrics,
    events: EventPublisher,
    volumes: Arc<dyn VolumeSource>,
    healthy: HealthSource,
    settings: UsageSettings,
    /// Every measurable volume, and the series of those measured (attached to `metrics`).
    tracked: Arc<Mutex<TrackedVolumes>>,
    current: Option<Current>,
}

enum SliceEnd {
    /// The volume's measurement ended (finished, gone, failed) after this many entries: the
    /// rest of the slice's budget goes to the next volume due.
    Spent(u64),
    /// The measurement goes on in the next slice.
    BudgetUsed,
    /// The server did not answer: no more slices this round.
    Stop,
}

impl UsageMonitor {
    pub fn new(
        root: NfsRoot,
        metrics: UsageMetrics,
        events: EventPublisher,
        volumes: Arc<dyn VolumeSource>,
        healthy: HealthSource,
        settings: UsageSettings,
    ) -> Self {
        let tracked = Arc::new(Mutex::new(TrackedVolumes::default()));
        let samples: Arc<dyn VolumeSamples> = tracked.clone();
        metrics.volumes.attach(Arc::downgrade(&samples));
        UsageMonitor {
            root,
            metrics,
            events,
            volumes,
            healthy,
            settings,
            tracked,
            current: None,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, TrackedVolumes> {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner())
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
        self.table().clear();
        self.metrics.paused.set(0);
    }

    /// One interval's worth of work.
    async fn round(&mut self, stop: &CancellationToken) {
        self.refresh();
        let stuck = self.current.as_ref().is_some_and(|c| c.scan.is_busy());
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
            // A slice goes on to the next volume due while its budget lasts: one volume per
            // slice would take days over 100 000 small volumes (4 per 10 s by default).
            let mut budget = self.settings.entries_per_slice;
            while budget > 0 {
                if !self.pick(Instant::now()) {
                    return;
                }
                match self.slice(stop, budget).await {
                    SliceEnd::Spent(entries) => budget = budget.saturating_sub(entries.max(1)),
                    SliceEnd::BudgetUsed => break,
                    SliceEnd::Stop => return,
                }
            }
        }
    }

    /// Follows the volume list: new volumes are tracked, gone ones forgotten (series
    /// dropped), a volume whose directory or claim changed measured anew. The list is
    /// visited one volume at a time, never collected.
    fn refresh(&mut self) {
        let mut table = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.as_ref().map(|c| c.volume.pv.clone());
        let mut current_changed = false;
        table.begin_refresh();
        let visited = self.volumes.visit_if_changed(&mut |volume| {
            if !table.see(&volume) && current.as_deref() == Some(volume.pv.as_str()) {
                current_changed = true;
            }
        });
        if !visited {
            // Nothing changed: every entry counts as seen, as before.
            table.begin_refresh();
            return;
        }
        table.end_refresh(|pv| {
            debug!(
                pv,
                "volume no longer measured; its usage series are dropped"
            );
        });
        if current_changed || current.is_some_and(|pv| !table.contains(&pv)) {
            self.current = None;
        }
    }

    /// Makes `current` the measurement to go on with: the one under way, else the next volume
    /// due (see [`TrackedVolumes::next_due`]). False if none is due.
    fn pick(&mut self, now: Instant) -> bool {
        if self.current.is_some() {
            return true;
        }
        loop {
            let Some(pv) = self.table().next_due(now, self.settings.rescan_period) else {
                return false;
            };
            match self.volumes.get(&pv) {
                Some(volume) => {
                    self.current = Some(Current {
                        scan: UsageScan::new(volume.directory.clone()),
                        volume,
                        started: Instant::now(),
                    });
                    return true;
                }
                // Left the cache since the last refresh: the next one forgets it.
                None => self.table().attempted(&pv, now),
            }
        }
    }

    /// Ends the measurement under way (gone, failed): the volume is next due after the
    /// rescan period.
    fn end_current(&mut self) {
        if let Some(current) = self.current.take() {
            self.table().attempted(&current.volume.pv, Instant::now());
        }
    }

    /// Measures the current volume on, statting at most `budget` entries (one storage
    /// operation, with its deadline).
    async fn slice(&mut self, stop: &CancellationToken, budget: u64) -> SliceEnd {
        let Some(current) = &self.current else {
            return SliceEnd::Spent(0);
        };
        let (scan, pv) = (current.scan.clone(), current.volume.pv.clone());
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
        match step {
            Ok(UsageStep::InProgress { entries }) => {
                self.metrics.entries.inc_by(entries);
                SliceEnd::BudgetUsed
            }
            Ok(UsageStep::Finished { usage, entries }) => {
                let Some(current) = self.current.take() else {
                    return SliceEnd::Spent(entries);
                };
                self.metrics.entries.inc_by(entries);
                self.metrics
                    .scan_duration
                    .observe(current.started.elapsed().as_secs_f64());
                self.metrics
                    .scans
                    .get_or_create(&ResultLabels {
                        result: if usage.is_exact() { "exact" } else { "inexact" }.to_string(),
                    })
                    .inc();
                let judged = {
                    let mut table = self.table();
                    table.attempted(&pv, Instant::now());
                    table.measured(&pv, usage.bytes, usage.inodes)
                };
                if let Some((Some(capacity), Some(transition))) = judged {
                    report(&self.events, &current.volume, capacity, &usage, transition).await;
                }
                SliceEnd::Spent(entries)
            }
            Ok(UsageStep::Gone) => {
                debug!(pv, "volume directory not there; nothing to measure");
                self.table().unmeasured(&pv);
                self.end_current();
                SliceEnd::Spent(1)
            }
            Err(StorageError::Cancelled) => SliceEnd::Stop,
            Err(e) if e.is_not_responding() => {
                // Progress stays with the scan (and with its thread if that is stuck).
                warn!(pv, error = %e, "usage measurement paused: the NFS root did not answer");
                SliceEnd::Stop
            }
            Err(e) => {
                warn!(pv, error = %e, "could not measure the volume's usage; trying again after the rescan period");
                self.end_current();
                SliceEnd::Spent(1)
            }
        }
    }
}

async fn report(
    events: &EventPublisher,
    volume: &VolumeRef,
    capacity: u64,
    usage: &VolumeUsage,
    transition: Transition,
) {
    let held = format!(
        "{} in {} files and directories",
        HumanBytes(usage.bytes.into()),
        usage.inodes
    );
    let claim = volume.claim_ref();
    let (kind, reason, note, message) = match transition {
        Transition::WentOver => (
            EventType::Warning,
            REASON_USAGE_OVER_REQUEST,
            format!(
                "volume {} holds {held}, more than the {} requested; NFS does not enforce the size: the export's free space is shared with every other volume on it. Expand the claim or delete data",
                volume.pv,
                HumanBytes(capacity.into()),
            ),
            "volume holds more than requested",
        ),
        Transition::CameBack => (
            EventType::Normal,
            REASON_USAGE_WITHIN_REQUEST,
            format!(
                "volume {} holds {held}, back within the {} requested",
                volume.pv,
                HumanBytes(capacity.into()),
            ),
            "volume back within its request",
        ),
    };
    info!(pv = %volume.pv, used = usage.bytes, capacity, "{message}");
    events.on_claim(&claim, kind, reason, note).await;
}

/// A volume `pv-N` of claim `ns/c-N` in directory `ns/v-N`, for tests.
#[cfg(test)]
pub(crate) fn test_volume(n: u32, capacity: Option<u64>) -> VolumeRef {
    VolumeRef {
        pv: format!("pv-{n}"),
        namespace: "ns".into(),
        claim: format!("c-{n}"),
        claim_uid: format!("u-{n}"),
        directory: crate::planning::VolumeDirectory::parse(&format!("ns/v-{n}")).unwrap(),
        capacity,
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

    /// Volumes in a list, with a flag for "changed since the last visit".
    #[derive(Default)]
    struct ListSource {
        volumes: std::sync::Mutex<(Vec<VolumeRef>, bool)>,
    }

    impl ListSource {
        fn set(&self, volumes: Vec<VolumeRef>) {
            *self.volumes.lock().unwrap() = (volumes, true);
        }
    }

    impl VolumeSource for ListSource {
        fn visit_if_changed(&self, f: &mut dyn FnMut(VolumeRef)) -> bool {
            let mut state = self.volumes.lock().unwrap();
            if !std::mem::take(&mut state.1) {
                return false;
            }
            state.0.iter().cloned().for_each(f);
            true
        }

        fn get(&self, pv: &str) -> Option<VolumeRef> {
            let state = self.volumes.lock().unwrap();
            state.0.iter().find(|v| v.pv == pv).cloned()
        }
    }

    fn volume(n: u32) -> VolumeRef {
        test_volume(n, Some(1000))
    }

    /// A monitor over an empty root (removed on return: every directory is gone).
    async fn monitor(volumes: Arc<ListSource>) -> (UsageMonitor, crate::metrics::Metrics) {
        let dir = tempfile::tempdir().unwrap();
        monitor_at(dir.path(), volumes).await
    }

    /// A monitor over `root`: one slice of 10 entries per round.
    async fn monitor_at(
        root: &std::path::Path,
        volumes: Arc<ListSource>,
    ) -> (UsageMonitor, crate::metrics::Metrics) {
        let root = NfsRoot::open(root, Default::default()).await.unwrap();
        let metrics = crate::metrics::Metrics::new();
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                .unwrap();
        let events = EventPublisher::new(client, "test", "test", metrics.clone());
        let monitor = UsageMonitor::new(
            root,
            metrics.usage.clone(),
            events,
            volumes,
            Arc::new(|| true),
            UsageSettings {
                interval: Duration::from_secs(1),
                slices_per_interval: 1,
                entries_per_slice: 10,
                rescan_period: Duration::from_secs(60),
            },
        );
        (monitor, metrics)
    }

    #[tokio::test]
    async fn the_measurement_under_way_stops_when_its_volume_goes_or_changes_claim() {
        let list = Arc::new(ListSource::default());
        list.set(vec![volume(1), volume(2)]);
        let (mut m, _metrics) = monitor(list.clone()).await;
        m.refresh();
        let now = Instant::now();
        assert!(m.pick(now));
        let first = m.current.as_ref().unwrap().volume.pv.clone();
        assert!(m.pick(now), "the one under way goes on");
        assert_eq!(m.current.as_ref().unwrap().volume.pv, first);

        // Unchanged list: the measurement goes on.
        m.refresh();
        assert_eq!(m.current.as_ref().unwrap().volume.pv, first);

        // Its claim changed: measured anew, not continued.
        let mut volumes = vec![volume(1), volume(2)];
        volumes.iter_mut().find(|v| v.pv == first).unwrap().claim = "other".into();
        list.set(volumes.clone());
        m.refresh();
        assert!(m.current.is_none());
        assert!(m.pick(now));
        let picked = m.current.as_ref().unwrap().volume.clone();
        volumes.retain(|v| v.pv != picked.pv);
        list.set(volumes);
        m.refresh();
        assert!(m.current.is_none(), "gone: not measured");
        assert!(!m.table().contains(&picked.pv));
    }

    #[tokio::test]
    async fn a_slice_measures_small_volumes_one_after_another_until_its_budget_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        for n in 1..=12 {
            let volume = dir.path().join(format!("ns/v-{n}"));
            std::fs::create_dir_all(&volume).unwrap();
            std::fs::write(volume.join("data"), b"12345").unwrap();
        }
        let list = Arc::new(ListSource::default());
        list.set((1..=12).map(volume).collect());
        let (mut m, metrics) = monitor_at(dir.path(), list).await;
        let measured = |metrics: &crate::metrics::Metrics| {
            let page = metrics.render();
            page.lines()
                .filter(|l| l.starts_with("nfs_provisioner_volume_used_inodes{"))
                .map(|l| {
                    assert!(l.ends_with(" 2"), "the directory and its file: {l}");
                    l.to_owned()
                })
                .count()
        };
        let stop = CancellationToken::new();

        // One slice of 10 entries: nine volumes of one file each, the tenth begun with the
        // last entry of the budget and not finished (one volume per slice would be one).
        m.round(&stop).await;
        assert_eq!(measured(&metrics), 9);
        assert!(m.current.is_some(), "the tenth goes on in the next slice");

        m.round(&stop).await;
        assert_eq!(measured(&metrics), 12);
        assert!(m.current.is_none());
    }

    #[tokio::test]
    async fn a_finished_measurement_is_exported_and_its_series_go_with_the_monitor() {
        let list = Arc::new(ListSource::default());
        list.set(vec![volume(1)]);
        let (mut m, metrics) = monitor(list.clone()).await;
        m.refresh();
        assert!(m.pick(Instant::now()));
        // The directory does not exist under the temporary root: measured as gone.
        let stop = CancellationToken::new();
        assert!(matches!(m.slice(&stop, 10).await, SliceEnd::Spent(1)));
        assert!(m.current.is_none());
        assert!(
            !m.pick(Instant::now()),
            "tried: not due again before the rescan"
        );
        m.table().measured("pv-1", 2000, 4);
        let page = metrics.render();
        let series = "nfs_provisioner_volume_used_bytes{namespace=\"ns\",persistentvolumeclaim=\"c-1\",persistentvolume=\"pv-1\"} 2000";
        assert!(page.contains(series), "{page}");
        assert!(page.contains("nfs_provisioner_volume_capacity_bytes{namespace=\"ns\",persistentvolumeclaim=\"c-1\",persistentvolume=\"pv-1\"} 1000"), "{page}");
        drop(m);
        let page = metrics.render();
        assert!(!page.contains("pv-1"), "{page}");
        assert!(
            page.contains("# TYPE nfs_provisioner_volume_used_bytes gauge"),
            "{page}"
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
