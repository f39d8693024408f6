//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` does it.
//!
//! * A candidate takes the Lease when it does not exist, has no holder, or its record has not
//!   changed for `lease_duration` as measured on the candidate's own clock from when it first
//!   saw that record (so clock skew between replicas does not matter).
//! * The leader renews every `retry_period`. When it could not renew for `renew_deadline`
//!   (shorter than `lease_duration`), counted from when its last successful renewal was
//!   *sent*, it stops leading at once: the time between the two is what keeps an old
//!   leader's work from overlapping a new leader's.
//! * On shutdown the leader releases the Lease (empty holder, 1 s duration) so a successor
//!   takes over within about a second.
//!
//! Every update is an optimistic-concurrency `replace` carrying the `resourceVersion` read, so
//! two candidates can never both win the same term.
//!
//! Hand-written: kube-runtime has no leader election. `kube-leader-election` decides expiry
//! by comparing the Lease's timestamps with the local clock (clock skew between nodes breaks
//! it, as its own documentation warns) and has no renew deadline shorter than the lease, so an
//! old leader could still be working when a new one starts. `kube-lease-manager` takes the
//! Lease with server-side apply, which needs `patch` on leases (the shipped RBAC grants
//! get/create/update, as the Go provisioner's does) and also relies on a configured skew.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::LeaderElectionSettings;

/// Who holds the Lease as this replica last saw it, and since when (local clock).
#[derive(Clone, Debug)]
struct ObservedRecord {
    holder: String,
    renew_time: Option<MicroTime>,
    lease_duration: Duration,
    observed_at: Instant,
}

/// When a leader must stop: `renew_deadline` after the *send* time of its last successful
/// renewal. The answer's arrival time must not count, or a slow answer would stretch
/// leadership past the point where other replicas may already consider the Lease expired.
#[derive(Clone, Copy, Debug)]
struct RenewClock {
    renew_deadline: Duration,
    last_sent: Instant,
}

impl RenewClock {
    /// Starts with the request that won the Lease, sent at `sent`.
    fn new(renew_deadline: Duration, sent: Instant) -> Self {
        RenewClock {
            renew_deadline,
            last_sent: sent,
        }
    }

    /// Records a successful renewal whose request was sent at `sent`.
    fn renewed(&mut self, sent: Instant) {
        self.last_sent = self.last_sent.max(sent);
    }

    fn deadline(&self) -> Instant {
        self.last_sent + self.renew_deadline
    }

    fn expired(&self, now: Instant) -> bool {
        now >= self.deadline()
    }
}

pub struct LeaseLock {
    api: Api<Lease>,
    settings: LeaderElectionSettings,
    identity: String,
    observed: Option<ObservedRecord>,
}

/// Outcome of one acquire-or-renew round.
enum Attempt {
    Leading,
    Follower { holder: String },
}

impl LeaseLock {
    pub fn new(client: Client, settings: LeaderElectionSettings, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            identity,
            observed: None,
        }
    }

    fn lease_seconds(&self) -> i32 {
        self.settings.lease_duration.as_secs().max(1) as i32
    }

    /// One round of client-go's `tryAcquireOrRenew`.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let name = &self.settings.lease_name;
        let existing = self.api.get_opt(name).await?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            self.api.create(&PostParams::default(), &lease).await?;
            self.observe_self();
            return Ok(Attempt::Leading);
        };

        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record_changed = match &self.observed {
            Some(o) => o.holder != holder || o.renew_time != spec.renew_time,
            None => true,
        };
        if record_changed {
            self.observed = Some(ObservedRecord {
                holder: holder.clone(),
                renew_time: spec.renew_time.clone(),
                lease_duration: Duration::from_secs(
                    spec.lease_duration_seconds.unwrap_or(0).max(0) as u64,
                ),
                observed_at: Instant::now(),
            });
        }
        let observed = self.observed.clone().expect("set above");
        let held_by_other = !holder.is_empty() && holder != self.identity;
        if held_by_other && observed.observed_at + observed.lease_duration > Instant::now() {
            return Ok(Attempt::Follower { holder });
        }

        let mut new_spec = spec.clone();
        if holder == self.identity {
            new_spec.renew_time = Some(now);
        } else {
            new_spec.holder_identity = Some(self.identity.clone());
            new_spec.acquire_time = Some(now.clone());
            new_spec.renew_time = Some(now);
            new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        new_spec.lease_duration_seconds = Some(self.lease_seconds());
        lease.spec = Some(new_spec);
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        self.api
            .replace(name, &PostParams::default(), &lease)
            .await?;
        self.observe_self();
        Ok(Attempt::Leading)
    }

    fn observe_self(&mut self) {
        self.observed = Some(ObservedRecord {
            holder: self.identity.clone(),
            renew_time: None,
            lease_duration: self.settings.lease_duration,
            observed_at: Instant::now(),
        });
    }

    /// Gives the Lease up so a successor can take it without waiting for it to expire.
    async fn release(&mut self) -> Result<(), kube::Error> {
        let name = &self.settings.lease_name;
        let Some(mut lease) = self.api.get_opt(name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        let now = MicroTime(Timestamp::now());
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now.clone());
        spec.acquire_time = Some(now);
        lease.spec = Some(spec);
        self.api
            .replace(name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }

    /// Campaigns and leads until `stop` fires, publishing whether this replica leads.
    /// On stop, a leader releases the Lease before returning.
    pub async fn run(mut self, leading: watch::Sender<bool>, stop: CancellationToken) {
        let retry = self.settings.retry_period;
        let renew_deadline = self.settings.renew_deadline;
        let mut last_holder = String::new();
        'campaign: loop {
            // Follower: try every retry period.
            let won_at = loop {
                if stop.is_cancelled() {
                    break 'campaign;
                }
                // The round starts before its first request, so this is never later than
                // the send time of the write that wins the Lease.
                let sent = Instant::now();
                match tokio::time::timeout(
                    retry.max(Duration::from_secs(1)),
                    self.try_acquire_or_renew(),
                )
                .await
                {
                    Ok(Ok(Attempt::Leading)) => break sent,
                    Ok(Ok(Attempt::Follower { holder })) => {
                        if holder != last_holder {
                            info!(lease = %self.settings.lease_name, %holder, "another replica leads");
                            last_holder = holder;
                        }
                    }
                    Ok(Err(e)) => {
                        warn!(lease = %self.settings.lease_name, error = %e, "could not acquire the lease")
                    }
                    Err(_) => {
                        warn!(lease = %self.settings.lease_name, "acquiring the lease timed out")
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => break 'campaign,
                    _ = tokio::time::sleep(retry) => {}
                }
            };

            info!(lease = %self.settings.lease_name, identity = %self.identity, "became leader");
            last_holder = self.identity.clone();
            let _ = leading.send(true);
            let mut clock = RenewClock::new(renew_deadline, won_at);
            // Leader: renew every retry period; give up once renewals failed for renew_deadline.
            loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        let _ = leading.send(false);
                        match tokio::time::timeout(Duration::from_secs(5), self.release()).await {
                            Ok(Ok(())) => info!(lease = %self.settings.lease_name, "released the lease"),
                            Ok(Err(e)) => warn!(error = %e, "could not release the lease; it expires by itself"),
                            Err(_) => warn!("releasing the lease timed out; it expires by itself"),
                        }
                        return;
                    }
                    _ = tokio::time::sleep(retry) => {}
                }
                let remaining = clock.deadline().saturating_duration_since(Instant::now());
                let sent = Instant::now();
                let outcome = tokio::time::timeout(remaining, self.try_acquire_or_renew()).await;
                match outcome {
                    Ok(Ok(Attempt::Leading)) => clock.renewed(sent),
                    Ok(Ok(Attempt::Follower { holder })) => {
                        warn!(lease = %self.settings.lease_name, %holder, "lost the lease to another replica");
                        let _ = leading.send(false);
                        continue 'campaign;
                    }
                    Ok(Err(e)) => warn!(error = %e, "renewing the lease failed"),
                    Err(_) => {}
                }
                if clock.expired(Instant::now()) {
                    warn!(
                        lease = %self.settings.lease_name,
                        "could not renew the lease within the renew deadline; stopping all work"
                    );
                    let _ = leading.send(false);
                    continue 'campaign;
                }
            }
        }
        let _ = leading.send(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_deadline_counts_from_the_send_time_not_the_answer() {
        let deadline = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut clock = RenewClock::new(deadline, t0);
        // A renewal sent at 2s whose answer only arrived at 9s: leadership lasts until 12s,
        // not 19s.
        clock.renewed(t0 + Duration::from_secs(2));
        assert!(!clock.expired(t0 + Duration::from_secs(11)));
        assert!(clock.expired(t0 + Duration::from_secs(12)));
        assert!(clock.expired(t0 + Duration::from_secs(18)));
        assert_eq!(clock.deadline(), t0 + Duration::from_secs(12));
    }

    #[test]
    fn without_renewal_the_leader_stops_at_the_deadline_from_winning() {
        let t0 = Instant::now();
        let clock = RenewClock::new(Duration::from_secs(10), t0);
        assert!(!clock.expired(t0 + Duration::from_millis(9_999)));
        assert!(clock.expired(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn an_answer_to_an_older_request_never_moves_the_deadline_back() {
        let t0 = Instant::now();
        let mut clock = RenewClock::new(Duration::from_secs(10), t0 + Duration::from_secs(4));
        clock.renewed(t0 + Duration::from_secs(1));
        assert_eq!(clock.deadline(), t0 + Duration::from_secs(14));
    }
}
