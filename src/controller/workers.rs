//! The leader's workers: each takes a key from the queue, reconciles it, and schedules a
//! retry with backoff when the attempt failed.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::queue::WorkQueue;
use super::{Context, Error, WorkItem, provision, reclaim};

/// Runs `workers` workers until `stop_taking` fires; `term` cancels in-flight work.
pub async fn run(
    ctx: Arc<Context>,
    queue: Arc<WorkQueue<WorkItem>>,
    workers: usize,
    stop_taking: CancellationToken,
    term: CancellationToken,
) {
    let mut handles = Vec::with_capacity(workers);
    for _ in 0..workers {
        let ctx = ctx.clone();
        let queue = queue.clone();
        let stop_taking = stop_taking.clone();
        let term = term.clone();
        handles.push(tokio::spawn(async move {
            loop {
                let key = tokio::select! {
                    biased;
                    _ = stop_taking.cancelled() => return,
                    key = queue.next() => key,
                };
                process(&ctx, &queue, &key, &term).await;
                queue.done(&key);
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
}

async fn process(
    ctx: &Context,
    queue: &Arc<WorkQueue<WorkItem>>,
    key: &WorkItem,
    term: &CancellationToken,
) {
    let attempt = async {
        match key {
            WorkItem::Claim(r) => provision::reconcile(ctx, r, term).await,
            WorkItem::Volume(r) => reclaim::reconcile(ctx, r, term).await,
        }
    };
    let outcome = tokio::select! {
        biased;
        _ = term.cancelled() => Err(Error::Stopped),
        r = attempt => r,
    };
    match outcome {
        Ok(()) => queue.forget(key),
        Err(Error::Stopped) => debug!(?key, "attempt abandoned: work stopped"),
        Err(e) => {
            let delay = queue.backoff(key);
            let operation = match key {
                WorkItem::Claim(_) => "provision",
                WorkItem::Volume(_) => "delete",
            };
            ctx.metrics.failed(operation, e.label());
            warn!(?key, error = %e, retry_in = ?delay, "attempt failed; will retry");
            queue.add_after(key.clone(), delay);
        }
    }
}
