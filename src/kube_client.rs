//! The Kubernetes API client: kubeconfig or in-cluster config, behind a client-side rate limit
//! (`--kube-api-qps`, `--kube-api-burst`) shared by every request of the process.

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
use tower::{Layer, Service};

/// Token bucket: `burst` tokens, refilled at `qps` per second.
struct Bucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Takes one token, or says how long until one is available.
    fn take(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.qps;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - self.tokens) / self.qps))
        }
    }
}

#[derive(Clone)]
pub struct RateLimitLayer {
    bucket: Arc<Mutex<Bucket>>,
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
            })),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            bucket: self.bucket.clone(),
            wait: None,
            permitted: false,
        }
    }
}

/// Waits in `poll_ready` until the shared bucket grants a token, then lets one call through.
pub struct RateLimit<S> {
    inner: S,
    bucket: Arc<Mutex<Bucket>>,
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
            let delay = self.bucket.lock().unwrap_or_else(|p| p.into_inner()).take();
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

/// A client whose every request passes the shared rate limit.
pub fn build_client(config: Config, qps: f64, burst: u32) -> Result<Client, kube::Error> {
    let builder = ClientBuilder::try_from(config)?;
    Ok(builder.with_layer(&RateLimitLayer::new(qps, burst)).build())
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
}
