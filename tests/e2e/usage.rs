//! Measured usage: the per-volume series on `/metrics`, the Events when a volume passes its
//! request and comes back, the series going away with the volume, and a hung measurement that
//! never delays provisioning. The first scenario also runs on a real cluster
//! (`E2E_KUBECONFIG`); the second injects a hung NFS server and uses the fake.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use fake_apiserver::Options;
use kube::ResourceExt;
use nfs_provisioner::app::Instrumentation;

use crate::cluster::TestCluster;
use crate::operations::{get, sample};
use crate::provisioner::RunningProvisioner;

/// Measuring every 100 ms, a volume again every 200 ms: quick enough for a test.
const FAST_USAGE: [&str; 8] = [
    "--usage-scan-interval",
    "100ms",
    "--usage-scan-slices",
    "4",
    "--usage-scan-entries-per-slice",
    "100",
    "--usage-rescan-period",
    "200ms",
];

fn series(metric: &str, namespace: &str, claim: &str, pv: &str) -> String {
    format!(
        "nfs_provisioner_{metric}{{namespace=\"{namespace}\",persistentvolumeclaim=\"{claim}\",persistentvolume=\"{pv}\"}}"
    )
}

fn metrics(p: &RunningProvisioner) -> String {
    get(&p.admin_url("/metrics")).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_exported_per_volume_and_reported_when_it_passes_the_request() {
    let c = TestCluster::start("usage").await;
    let root = tempfile::tempdir().unwrap();
    let mut options = c.provisioner_options(root.path());
    options.extra_args = FAST_USAGE.map(String::from).to_vec();
    let p = RunningProvisioner::start(&options, c.provisioner_config());
    let class = c
        .create_class("usage", &[("onDelete", "delete")], "Delete")
        .await;
    c.create_claim(&TestCluster::claim("data", &class)).await;
    let pv = c.wait_bound("data").await.name_any();
    let dir = root.path().join(format!("{}-data-{pv}", c.namespace));
    std::fs::write(dir.join("big"), vec![1u8; 3 << 20]).unwrap();
    for n in 0..5 {
        std::fs::write(dir.join(format!("small-{n}")), b"x").unwrap();
    }

    let used = series("volume_used_bytes", &c.namespace, "data", &pv);
    let inodes = series("volume_used_inodes", &c.namespace, "data", &pv);
    let capacity = series("volume_capacity_bytes", &c.namespace, "data", &pv);
    // A scrape is not a snapshot: a measurement that ends while the page is written can show
    // in one of a volume's series and not yet in the next, so wait for both.
    let page = c
        .eventually("the volume's usage on /metrics", || async {
            let page = metrics(&p);
            (sample(&page, &inodes) == Some(7.0)
                && sample(&page, &used).is_some_and(|b| b >= (3 << 20) as f64))
            .then_some(page)
        })
        .await;
    assert_eq!(sample(&page, &capacity), Some((1 << 20) as f64));
    assert!(
        sample(&page, "nfs_provisioner_usage_scan_entries_total").unwrap() >= 6.0,
        "{page}"
    );

    let note = c.wait_claim_event("data", "VolumeUsageOverRequest").await;
    assert!(
        note.contains(&pv) && note.contains("more than the 1.0 MiB requested"),
        "{note}"
    );
    std::fs::remove_file(dir.join("big")).unwrap();
    let note = c.wait_claim_event("data", "VolumeUsageWithinRequest").await;
    assert!(note.contains("back within"), "{note}");
    // Measured again and again meanwhile, but reported once each way: no event storm. Two
    // more complete measurements of the volume (7 entries each) first, so a repeat would
    // have had its chance.
    let entries_now = sample(&metrics(&p), "nfs_provisioner_usage_scan_entries_total").unwrap();
    c.eventually("two more measurements of the volume", || async {
        let entries = sample(&metrics(&p), "nfs_provisioner_usage_scan_entries_total")?;
        (entries >= entries_now + 14.0).then_some(())
    })
    .await;
    let events = c.events_about(&c.namespace, "data").await;
    for reason in ["VolumeUsageOverRequest", "VolumeUsageWithinRequest"] {
        let of_reason: Vec<_> = events
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect();
        assert_eq!(of_reason.len(), 1, "{reason}: {of_reason:?}");
        assert!(
            of_reason[0].series.is_none(),
            "{reason} repeated: {of_reason:?}"
        );
    }

    // The volume goes, and so do its series.
    c.delete_claim("data").await;
    c.wait_volume_gone(&pv).await;
    c.eventually("the volume's series gone", || async {
        let page = metrics(&p);
        (sample(&page, &used).is_none() && sample(&page, &capacity).is_none()).then_some(())
    })
    .await;
    p.stop();
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_usage_scan_never_delays_provisioning_and_resumes_when_the_server_answers() {
    let c = TestCluster::fake(Options::default()).await;
    let root = tempfile::tempdir().unwrap();
    let class = c.create_class("hung", &[], "Delete").await;
    let hung = Arc::new(AtomicBool::new(false));
    // Scan threads held by the hung server now, and at most.
    let held = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let (flag, threads) = (hung.clone(), held.clone());
    let instrumentation = Instrumentation {
        // A server that stops answering the scan's stats (and only those).
        nfs_fault_hook: Some(Arc::new(move |op: &str, _path: &str| {
            if op != "usage_entry" || !flag.load(Ordering::SeqCst) {
                return;
            }
            let now = threads.0.fetch_add(1, Ordering::SeqCst) + 1;
            threads.1.fetch_max(now, Ordering::SeqCst);
            while flag.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            threads.0.fetch_sub(1, Ordering::SeqCst);
        })),
        ..Default::default()
    };
    let mut options = c.provisioner_options(root.path());
    options.extra_args = FAST_USAGE.map(String::from).to_vec();
    options.extra_args.extend(
        [
            "--fs-timeout",
            "300ms",
            "--nfs-probe-interval",
            "100ms",
            "--max-stuck-fs-ops",
            "3",
        ]
        .map(String::from),
    );
    let p =
        RunningProvisioner::start_instrumented(&options, c.provisioner_config(), instrumentation);
    hung.store(true, Ordering::SeqCst);
    c.create_claim(&TestCluster::claim("first", &class)).await;
    let pv = c.wait_bound("first").await.name_any();
    let dir = root.path().join(format!("{}-first-{pv}", c.namespace));
    std::fs::write(dir.join("data"), vec![1u8; 10_000]).unwrap();

    c.eventually("a usage slice stuck and measurement paused", || async {
        let page = metrics(&p);
        let timed_out = sample(
            &page,
            "nfs_provisioner_usage_scan_slices_total{result=\"not_responding\"}",
        )
        .unwrap_or(0.0);
        (timed_out >= 1.0 && sample(&page, "nfs_provisioner_usage_scan_paused") == Some(1.0))
            .then_some(())
    })
    .await;

    // Provisioning goes on; the scan never holds more than its one thread meanwhile.
    for n in 0..5 {
        c.create_claim(&TestCluster::claim(&format!("later-{n}"), &class))
            .await;
    }
    c.eventually("claims created meanwhile Bound", || async {
        let claims = c.claims().list(&Default::default()).await.ok()?;
        let bound = claims
            .items
            .iter()
            .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
            .count();
        (bound == 6).then_some(())
    })
    .await;
    assert_eq!(held.0.load(Ordering::SeqCst), 1, "one scan thread waits");
    assert_eq!(held.1.load(Ordering::SeqCst), 1, "never more than one");

    // The server answers again: the scan resumes and the volume gets its numbers.
    hung.store(false, Ordering::SeqCst);
    let used = series("volume_used_bytes", &c.namespace, "first", &pv);
    c.eventually("the volume measured after all", || async {
        let page = metrics(&p);
        (sample(&page, &used).is_some_and(|b| b >= 10_000.0)
            && sample(&page, "nfs_provisioner_usage_scan_paused") == Some(0.0))
        .then_some(())
    })
    .await;
    p.stop();
}
