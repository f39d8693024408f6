//! The admin endpoint: `/healthz` (process alive), `/readyz` (watches synced and NFS root
//! responding, naming the failing check) and `/metrics` (Prometheus/OpenMetrics text).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::storage::NfsRoot;

/// What `/readyz` reports.
#[derive(Default)]
pub struct Readiness {
    watches_synced: AtomicBool,
    /// Per export: the last probe's problem (absent or `None`: healthy).
    export_problems: Mutex<BTreeMap<String, Option<String>>>,
}

impl Readiness {
    pub fn set_watches_synced(&self) {
        self.watches_synced.store(true, Ordering::SeqCst);
    }

    /// Records the last probe of `export`'s NFS root.
    pub fn set_export(&self, export: &str, problem: Option<String>) {
        self.export_problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(export.to_string(), problem);
    }

    /// `Ok` when ready, otherwise every failing check, one a line.
    pub fn check(&self) -> Result<(), String> {
        let mut failing = Vec::new();
        if !self.watches_synced.load(Ordering::SeqCst) {
            failing.push(
                "watches: initial list of claims, volumes and classes not complete".to_string(),
            );
        }
        // One line per export whose root does not answer, naming it: one hung export does
        // not stop the others' claims, but an operator must see which one it is.
        for (export, problem) in self
            .export_problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if let Some(problem) = problem {
                failing.push(format!("nfs-root {export}: {problem}"));
            }
        }
        if failing.is_empty() {
            Ok(())
        } else {
            Err(failing.join("\n"))
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static response parts")
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long one piece of a `/metrics` page waits for the client to take it.
const METRICS_PIECE_TIMEOUT: Duration = Duration::from_secs(30);

/// `/metrics`, streamed: the page is written piece by piece on a blocking thread as the
/// client reads it (see [`Metrics::write_page`]), so the series of 100 000 volumes (70 MB of
/// text) are never held at once. A client that takes no piece for 30 s loses the rest.
fn metrics_page(metrics: &Metrics) -> Response<Body> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let metrics = metrics.clone();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        metrics.write_page(&mut |piece| {
            let sent = runtime.block_on(tokio::time::timeout(
                METRICS_PIECE_TIMEOUT,
                tx.send(Bytes::from(piece)),
            ));
            matches!(sent, Ok(Ok(())))
        });
    });
    let pieces = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|piece| piece.map(|b| Ok::<_, Infallible>(Frame::data(b))))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", OPENMETRICS)
        .body(BodyExt::boxed(StreamBody::new(pieces)))
        .expect("static response parts")
}

fn route(path: &str, readiness: &Readiness, metrics: &Metrics) -> Response<Body> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    match path {
        "/healthz" | "/livez" => text(StatusCode::OK, "ok\n".into(), PLAIN),
        "/readyz" => match readiness.check() {
            Ok(()) => text(StatusCode::OK, "ok\n".into(), PLAIN),
            Err(failing) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{failing}\n"),
                PLAIN,
            ),
        },
        "/metrics" => metrics_page(metrics),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), PLAIN),
    }
}

/// Binds the admin address; the returned address is the one actually bound (port 0 picks one).
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(address = %addr, "admin endpoint listening");
    }
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "admin endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let readiness = readiness.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = route(req.uri().path(), &readiness, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// Probes an export's NFS root every `every`, feeding readiness and metrics.
pub async fn probe_nfs_root(
    export: String,
    root: NfsRoot,
    readiness: Arc<Readiness>,
    metrics: Metrics,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        match root.probe().await {
            Ok(latency) => {
                metrics.nfs_root_healthy(&export).set(1);
                metrics
                    .nfs_root_probe_seconds(&export)
                    .set(latency.as_secs_f64());
                readiness.set_export(&export, None);
            }
            Err(e) => {
                metrics.nfs_root_healthy(&export).set(0);
                warn!(%export, error = %e, "NFS root probe failed");
                readiness.set_export(&export, Some(e.to_string()));
            }
        }
        metrics
            .nfs_stuck_operations(&export)
            .set(root.stuck_operations() as i64);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_names_each_failing_check() {
        let r = Readiness::default();
        let err = r.check().unwrap_err();
        assert!(err.contains("watches"), "{err}");
        r.set_watches_synced();
        assert!(r.check().is_ok());
        r.set_export("default", None);
        r.set_export("slow", Some("NFS root not responding".into()));
        let err = r.check().unwrap_err();
        assert_eq!(err, "nfs-root slow: NFS root not responding");
        let resp = route("/readyz", &r, &Metrics::new());
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            route("/healthz", &r, &Metrics::new()).status(),
            StatusCode::OK
        );
        assert_eq!(
            route("/nope", &r, &Metrics::new()).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let m = Metrics::new();
        m.provisioned("fast", "success", Some(Duration::from_millis(20)));
        let body = m.render();
        assert!(body.contains("nfs_provisioner_provision_operations_total{storage_class=\"fast\",result=\"success\"} 1"), "{body}");
        assert!(
            body.contains(
                "nfs_provisioner_provision_duration_seconds_count{storage_class=\"fast\"} 1"
            ),
            "{body}"
        );
        assert!(body.contains("nfs_provisioner_build_info"), "{body}");
    }

    /// Volumes `0..n`, each measured, one of them with label values that need quoting.
    struct ManyVolumes(u64);

    impl crate::metrics::VolumeSamples for ManyVolumes {
        fn volume_count(&self) -> usize {
            self.0 as usize
        }

        fn for_each_sample(
            &self,
            part: u64,
            parts: u64,
            f: &mut dyn FnMut(&crate::metrics::VolumeSample<'_>),
        ) {
            for v in (0..self.0).filter(|v| v % parts == part) {
                let pv = format!("pv-{v}");
                let claim = if v == 7 {
                    "odd\"\\\nname".to_string()
                } else {
                    format!("c-{v}")
                };
                f(&crate::metrics::VolumeSample {
                    namespace: "ns",
                    persistentvolumeclaim: &claim,
                    persistentvolume: &pv,
                    used_bytes: v,
                    used_inodes: 1,
                    capacity_bytes: (v % 2 == 0).then_some(1000),
                    measured_timestamp: 1_700_000_000,
                });
            }
        }
    }

    #[tokio::test]
    async fn the_streamed_metrics_page_is_the_whole_page() {
        use std::io::{Read, Write};
        let metrics = Metrics::new();
        let volumes: Arc<dyn crate::metrics::VolumeSamples> = Arc::new(ManyVolumes(20_000));
        metrics.usage.volumes.attach(Arc::downgrade(&volumes));
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Readiness::default()),
            metrics.clone(),
            stop.clone(),
        ));
        let raw = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(address).unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut raw = String::new();
            s.read_to_string(&mut raw).unwrap();
            raw
        })
        .await
        .unwrap();
        stop.cancel();
        let _ = server.await;
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(" 200 "), "{head}");
        assert!(head.contains("openmetrics-text"), "{head}");
        let page = metrics.render();
        assert_eq!(body.len(), page.len());
        assert!(
            body == page,
            "the streamed page differs from the rendered one"
        );
        assert!(page.ends_with("# EOF\n"));
        // Every volume once per family (capacity: the even ones), in the text format.
        let count = |family: &str| {
            page.lines()
                .filter(|l| l.starts_with(&format!("nfs_provisioner_{family}{{")))
                .count()
        };
        assert_eq!(count("volume_used_bytes"), 20_000);
        assert_eq!(count("volume_capacity_bytes"), 10_000);
        assert!(page.contains("# TYPE nfs_provisioner_volume_used_inodes gauge\n"));
        assert!(page.contains(
            "nfs_provisioner_volume_used_bytes{namespace=\"ns\",persistentvolumeclaim=\"c-12\",persistentvolume=\"pv-12\"} 12\n"
        ));
        assert!(
            page.contains("persistentvolumeclaim=\"odd\\\"\\\\\\nname\""),
            "label values are quoted"
        );
    }
}
