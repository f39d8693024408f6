//! The leader's workers: each takes a key from the queue, reconciles it, and schedules a
//! retry with backoff when the attempt failed.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::queue::WorkQueue;
use super::{Context, Error, Next, WorkItem, expansion, provision, reclaim};

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
    // A claim that has a volume may be asking for more: that is expansion's.
    let resize = matches!(key, WorkItem::Claim(r) if expansion::applies_to(ctx, r));
    let attempt = async {
        match key {
            WorkItem::Claim(r) if resize => expansion::reconcile(ctx, r).await,
            WorkItem::Claim(r) => provision::reconcile(ctx, r, term)
                .await
                .map(|()| Next::Done),
            WorkItem::Volume(r) => reclaim::reconcile(ctx, r, term).await.map(|()| Next::Done),
        }
    };
    let outcome = tokio::select! {
        biased;
        _ = term.cancelled() => Err(Error::Stopped),
        r = attempt => r,
    };
    match outcome {
        Ok(Next::Done) => queue.forget(key),
        Ok(Next::RecheckAfter(delay)) => {
            queue.forget(key);
            queue.add_after(key.clone(), delay);
        }
        Err(Error::Stopped) => debug!(?key, "attempt abandoned: work stopped"),
        Err(e) => {
            let delay = queue.backoff(key);
            let operation = match key {
                WorkItem::Claim(_) if resize => "resize",
                WorkItem::Claim(_) => "provision",
                WorkItem::Volume(_) => "delete",
            };
            ctx.metrics.failed(operation, e.label());
            warn!(?key, error = %e, retry_in = ?delay, "attempt failed; will retry");
            queue.add_after(key.clone(), delay);
        }
    }
}
