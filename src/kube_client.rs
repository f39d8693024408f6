//! The Kubernetes API client: kubeconfig or in-cluster config, behind a client-side rate limit
//! (`--kube-api-qps`, `--kube-api-burst`) shared by every request of the process, and a bound
//! on requests in flight.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::time::Instant;
use tower::layer::util::{Identity, Stack};
use tower::limit::ConcurrencyLimitLayer;
use tower::{Layer, Service, ServiceBuilder};

/// At most this many API requests wait for their response at once. kube speaks HTTP/1.1, one
/// request per connection, so without a bound a burst (the 400-token default burst, 32 workers
/// and their events at once) opened about a hundred connections, each with its buffers (about
/// 50 KB, more with TLS on a real cluster), and kept them in the pool afterwards. A watch holds
/// its permit only until its response headers arrive. 16 requests in flight sustain the
/// default 200 requests/s as long as a request takes under 80 ms.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 16;

/// Token bucket: `burst` tokens, refilled at `qps` per second, as client-go's client-side
/// limiter (`--kube-api-qps`, `--kube-api-burst`). Hand-written: tower's `RateLimit` is a
/// fixed window (`num` requests per `per`) with no burst above the sustained rate, and
/// `governor` would bring its own clock and timer dependencies for what is a dozen lines here.
struct Bucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// A request that cannot wait (see [`Priority`]) is waiting for a token due by then
    /// (a deadline rather than a flag: a waiter that gives up does not block others forever).
    urgent_until: Option<Instant>,
}

impl Bucket {
    fn refill(&mut self) {
        let now = Instant::now();
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.qps;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
    }

    /// Takes one token, or says how long until one is available.
    fn take(&mut self) -> Option<Duration> {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.urgent_until = None;
            None
        } else {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.qps);
            self.urgent_until = Some(Instant::now() + wait + URGENT_GRACE);
            Some(wait)
        }
    }

    fn urgent_waiting(&self) -> bool {
        self.urgent_until
            .is_some_and(|until| Instant::now() <= until)
    }

    /// Takes one token for a request that can wait: never while one that cannot is waiting
    /// for it.
    fn take_if_unwanted(&mut self) -> Option<Duration> {
        self.refill();
        if self.tokens >= 1.0 && !self.urgent_waiting() {
            self.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64(
                (1.0 - self.tokens).max(0.25) / self.qps,
            ))
        }
    }
}

/// How long past its due time a waiting request still counts as waiting.
const URGENT_GRACE: Duration = Duration::from_millis(50);

/// Which requests give way: background writes (Events) take a token only when no other
/// request is waiting for one (see [`WorkLoad`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    Work,
    Background,
}

#[derive(Clone)]
pub struct RateLimitLayer {
    bucket: Arc<Mutex<Bucket>>,
    priority: Priority,
}

impl RateLimitLayer {
    pub fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            bucket: Arc::new(Mutex::new(Bucket {
                qps,
                burst,
                tokens: burst,
                last: Instant::now(),
                urgent_until: None,
            })),
            priority: Priority::Work,
        }
    }

    /// The same bucket, for requests of `priority`.
    pub fn with_priority(&self, priority: Priority) -> Self {
        Self {
            bucket: self.bucket.clone(),
            priority,
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            bucket: self.bucket.clone(),
            priority: self.priority,
            wait: None,
            permitted: false,
        }
    }
}

/// Waits in `poll_ready` until the shared bucket grants a token, then lets one call through.
pub struct RateLimit<S> {
    inner: S,
    bucket: Arc<Mutex<Bucket>>,
    priority: Priority,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
    permitted: bool,
}

impl<S, Req> Service<Req> for RateLimit<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.permitted {
            if let Some(wait) = self.wait.as_mut() {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.wait = None;
            }
            let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            let delay = match self.priority {
                Priority::Work => bucket.take(),
                Priority::Background => bucket.take_if_unwanted(),
            };
            drop(bucket);
            match delay {
                None => self.permitted = true,
                Some(d) => self.wait = Some(Box::pin(tokio::time::sleep(d))),
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.permitted = false;
        self.inner.call(req)
    }
}

/// Loads the kubeconfig named by `kubeconfig` (or the usual inference: `$KUBECONFIG`,
/// `~/.kube/config`, in-cluster).
pub async fn load_config(kubeconfig: Option<&Path>) -> Result<Config, kube::Error> {
    match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(kube::Error::InferKubeconfig)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(kube::Error::InferKubeconfig)
        }
        None => Config::infer().await.map_err(kube::Error::InferConfig),
    }
}

/// The limits every request passes: a permit of [`MAX_REQUESTS_IN_FLIGHT`] first (so waiting
/// for a token does not hold a connection), then a token of the shared bucket.
pub fn request_limits(
    qps: f64,
    burst: u32,
) -> ServiceBuilder<Stack<RateLimitLayer, Stack<ConcurrencyLimitLayer, Identity>>> {
    limits_with(RateLimitLayer::new(qps, burst))
}

fn limits_with(
    rate: RateLimitLayer,
) -> ServiceBuilder<Stack<RateLimitLayer, Stack<ConcurrencyLimitLayer, Identity>>> {
    ServiceBuilder::new()
        .concurrency_limit(MAX_REQUESTS_IN_FLIGHT)
        .layer(rate)
}

/// Whether the work client is busy: requests of it in flight (until their response headers
/// arrive), or one waiting for a token. Background writes wait until it is not (see
/// `crate::controller::EventPublisher`).
#[derive(Clone, Default)]
pub struct WorkLoad {
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    bucket: Option<Arc<Mutex<Bucket>>>,
}

impl WorkLoad {
    pub fn is_idle(&self) -> bool {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0
            && !self
                .bucket
                .as_ref()
                .is_some_and(|b| b.lock().unwrap_or_else(|p| p.into_inner()).urgent_waiting())
    }
}

impl<S> Layer<S> for WorkLoad {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Counted {
            inner,
            in_flight: self.in_flight.clone(),
        }
    }
}

/// Counts the requests in flight through it (see [`WorkLoad`]).
pub struct Counted<S> {
    inner: S,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl<S, Req> Service<Req> for Counted<S>
where
    S: Service<Req>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let counted = InFlight(self.in_flight.clone());
        let response = self.inner.call(req);
        Box::pin(async move {
            let _counted = counted;
            response.await
        })
    }
}

/// At most this many Events are written at once: one, so they reach the API server in the
/// order they were published.
const EVENT_REQUESTS_IN_FLIGHT: usize = 1;

/// The API clients of one process.
#[derive(Clone)]
pub struct Clients {
    /// Watches, provisioning and reclaim: every request passes [`request_limits`].
    pub work: Client,
    /// Events: the same token bucket as `work`, but a token only when no work request is
    /// waiting for one, and connections of their own, so a backlog of Events never delays a
    /// PV create.
    pub events: Client,
    /// How busy `work` is, for the Event writer.
    pub work_load: WorkLoad,
    /// Leader election only, with its own connections and a small bucket of its own: a lease
    /// renewal must not queue behind a burst of work (hundreds of requests waiting for
    /// tokens), or a busy leader would lose its lease.
    pub leader_election: Client,
}

/// Lease requests: one per retry period when all is well.
const LEADER_ELECTION_QPS: f64 = 5.0;
const LEADER_ELECTION_BURST: u32 = 10;

/// Builds both clients from one configuration.
pub fn build_clients(config: Config, qps: f64, burst: u32) -> Result<Clients, kube::Error> {
    let leader_election = ClientBuilder::try_from(config.clone())?
        .with_layer(&RateLimitLayer::new(
            LEADER_ELECTION_QPS,
            LEADER_ELECTION_BURST,
        ))
        .build();
    let rate = RateLimitLayer::new(qps, burst);
    let work_load = WorkLoad {
        in_flight: Default::default(),
        bucket: Some(rate.bucket.clone()),
    };
    let work = ClientBuilder::try_from(config.clone())?
        .with_layer(&limits_with(rate.clone()).layer(work_load.clone()))
        .build();
    let events = ClientBuilder::try_from(config)?
        .with_layer(
            &ServiceBuilder::new()
                .concurrency_limit(EVENT_REQUESTS_IN_FLIGHT)
                .layer(rate.with_priority(Priority::Background)),
        )
        .build();
    Ok(Clients {
        work,
        events,
        work_load,
        leader_election,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_a_burst_then_the_sustained_rate() {
        let layer = RateLimitLayer::new(10.0, 5);
        let take = || layer.bucket.lock().unwrap().take();
        for _ in 0..5 {
            assert!(take().is_none(), "burst tokens are free");
        }
        let wait = take().expect("bucket is empty");
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        tokio::time::advance(Duration::from_secs(1)).await;
        let granted = (0..20).filter(|_| take().is_none()).count();
        assert_eq!(granted, 5, "refill is capped at the burst size");
    }

    /// Many callers at once (as behind kube's request buffer): while responses are held
    /// back, exactly `MAX_REQUESTS_IN_FLIGHT` calls reach the server; released, all complete.
    #[tokio::test]
    async fn requests_in_flight_are_bounded() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::sync::Semaphore;
        use tower::ServiceExt;
        let in_flight = Arc::new(AtomicUsize::new(0));
        let responses = Arc::new(Semaphore::new(0));
        let service = {
            let (in_flight, responses) = (in_flight.clone(), responses.clone());
            tower::service_fn(move |_: ()| {
                let (in_flight, responses) = (in_flight.clone(), responses.clone());
                async move {
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    responses.acquire().await.unwrap().forget();
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, std::convert::Infallible>(())
                }
            })
        };
        let buffered =
            tower::buffer::Buffer::new(request_limits(1e6, 1_000_000).service(service), 1024);
        let callers = 4 * MAX_REQUESTS_IN_FLIGHT;
        let calls: Vec<_> = (0..callers)
            .map(|_| {
                let svc = buffered.clone();
                tokio::spawn(async move { svc.oneshot(()).await.unwrap() })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while in_flight.load(Ordering::SeqCst) < MAX_REQUESTS_IN_FLIGHT && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Every caller has been queued long since; none beyond the bound may get through.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(in_flight.load(Ordering::SeqCst), MAX_REQUESTS_IN_FLIGHT);
        responses.add_permits(callers);
        for call in calls {
            call.await.unwrap();
        }
        assert_eq!(in_flight.load(Ordering::SeqCst), 0);
    }
}
