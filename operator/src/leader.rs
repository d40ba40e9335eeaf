//! Lease-based leader election (`coordination.k8s.io/v1`), so that several operator replicas can
//! run and exactly one reconciles. Writes use the Lease's resourceVersion: two replicas racing for
//! an expired lease cannot both win. The elector is given its own client (its own connections),
//! so renewals do not queue behind hundreds of reconciles' requests; the timings follow
//! controller-runtime (lease 15 s, renew deadline 10 s, retry every 2 s).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub duration: Duration,
    /// How long the holder keeps trying to renew before it gives leadership up (< duration).
    pub renew_deadline: Duration,
    /// How often the holder renews, and how often a standby or a failed renewal tries again.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Timings from a lease duration and optional overrides: the renew deadline defaults to 2/3 of
    /// the duration and stays below it; the retry period defaults to 1/5 of the renew deadline and
    /// stays below it (15 s gives controller-runtime's 10 s and 2 s).
    pub fn timings(
        duration: Duration,
        renew_deadline: Option<Duration>,
        retry_period: Option<Duration>,
    ) -> (Duration, Duration, Duration) {
        let duration = duration.max(Duration::from_secs(2));
        let renew_deadline = renew_deadline.unwrap_or(duration * 2 / 3).min(duration * 9 / 10);
        let retry_period = retry_period.unwrap_or(renew_deadline / 5).min(renew_deadline / 2);
        (duration, renew_deadline, retry_period.max(Duration::from_millis(100)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lost the leader lease {0} to {1}")]
    Lost(String, String),
    #[error("could not renew the leader lease within its renew deadline: {0}")]
    RenewFailed(String),
}

/// Outcome of one attempt.
enum Attempt {
    Held,
    HeldBy(String),
}

pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self { api: Api::namespaced(client, &config.namespace), config }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        let mut last_holder = String::new();
        loop {
            match self.attempt(self.config.renew_deadline).await {
                Ok(Attempt::Held) => {
                    tracing::info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
                    return;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if holder != last_holder {
                        tracing::info!(lease = %self.config.name, %holder, "standing by: another replica leads");
                        last_holder = holder;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews the lease until it is lost or cannot be renewed in time; returns why. The renew
    /// deadline (counted from before the last successful request was sent) ends leadership
    /// before a standby can see the lease expire; until then a failed renewal is retried.
    pub async fn hold(&self) -> LeaderError {
        let deadline = self.config.renew_deadline;
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            let sent = tokio::time::Instant::now();
            // One attempt may use what is left of the deadline, not more.
            let left = deadline.saturating_sub(last_renewal.elapsed()).max(Duration::from_millis(100));
            match self.attempt(left).await {
                Ok(Attempt::Held) => last_renewal = sent,
                Ok(Attempt::HeldBy(holder)) => return LeaderError::Lost(self.config.name.clone(), holder),
                Err(e) if last_renewal.elapsed() >= deadline => return LeaderError::RenewFailed(e),
                Err(e) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
            }
        }
    }

    /// One acquire-or-renew, bounded so a hung connection cannot outlive the lease.
    async fn attempt(&self, bound: Duration) -> Result<Attempt, String> {
        match tokio::time::timeout(bound, self.try_acquire()).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("timed out talking to the API server".into()),
        }
    }

    /// Gives the lease up (on shutdown) so a standby takes over without waiting for expiry.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() == Some(self.config.identity.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
                    Ok(_) => tracing::info!(lease = %self.config.name, "released leader lease"),
                    Err(e) => tracing::warn!(error = %e, "could not release the leader lease"),
                }
            }
        }
    }

    async fn try_acquire(&self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let duration_secs = self.config.duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.config.name.clone()), ..ObjectMeta::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::HeldBy("another replica".into())),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.config.identity;
        if !mine && !holder.is_empty() && !expired(spec, now) {
            return Ok(Attempt::HeldBy(holder));
        }
        if !mine {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.acquire_time = Some(MicroTime(now));
        }
        spec.holder_identity = Some(self.config.identity.clone());
        spec.lease_duration_seconds = Some(duration_secs);
        spec.renew_time = Some(MicroTime(now));
        // `replace` carries the resourceVersion we read: a concurrent writer makes it fail with 409.
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::HeldBy("another replica".into())),
            Err(e) => Err(e),
        }
    }
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref() else {
        return true;
    };
    let duration = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15).into());
    renewed.0 + duration < now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_default_to_controller_runtimes_and_stay_ordered() {
        let s = Duration::from_secs;
        assert_eq!(LeaseConfig::timings(s(15), None, None), (s(15), s(10), s(2)));
        // The e2e tests' short lease keeps deadline < duration and retry < deadline.
        let (duration, deadline, retry) = LeaseConfig::timings(s(4), None, None);
        assert!(retry < deadline && deadline < duration, "{retry:?} {deadline:?} {duration:?}");
        // Overrides beyond the duration are held below it.
        let (duration, deadline, retry) = LeaseConfig::timings(s(15), Some(s(20)), Some(s(30)));
        assert!(retry < deadline && deadline < duration, "{retry:?} {deadline:?} {duration:?}");
    }
}
