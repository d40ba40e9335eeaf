//! What the API server offers beyond the built-in workload APIs: which HPA version, and whether
//! the prometheus-operator and KEDA CRDs are installed. Asked at most once per TTL (and again after
//! an apply of a discovered kind failed), so installing a CRD later is picked up without a restart
//! while a fleet of 1,000 pipelines does not ask the API server three times per reconcile.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIGroupList;
use kube::Client;

use crate::crd::AutoscalingProvider;
use crate::desired::autoscaling::{HpaVersion, Offers};
use crate::spec::resolve::Resolved;

/// How old an answer may be when a pipeline asks for a kind it says is missing: a CRD installed
/// for that pipeline is picked up within seconds, not a whole TTL.
pub const MISSING_TTL: Duration = Duration::from_secs(5);

pub use crate::desired::children::Discovered;

pub async fn discover(client: &Client) -> Result<Discovered, kube::Error> {
    let groups = client.list_api_groups().await?;
    let serves = |group: &str, version: &str| serves(&groups, group, version);
    let hpa = if serves("autoscaling", "v2") {
        Some(HpaVersion::V2)
    } else if serves("autoscaling", "v2beta2") {
        Some(HpaVersion::V2beta2)
    } else {
        None
    };
    let kinds = |group_version: &'static str, present: bool| {
        let client = client.clone();
        async move {
            if !present {
                return Ok::<_, kube::Error>(Vec::new());
            }
            let list = client.list_api_group_resources(group_version).await?;
            Ok(list.resources.into_iter().map(|r| r.kind).collect::<Vec<_>>())
        }
    };
    let keda = kinds("keda.sh/v1alpha1", serves("keda.sh", "v1alpha1")).await?;
    let monitoring = kinds("monitoring.coreos.com/v1", serves("monitoring.coreos.com", "v1")).await?;
    Ok(Discovered {
        autoscaling: Offers { hpa, keda: keda.iter().any(|k| k == "ScaledObject") },
        service_monitor: monitoring.iter().any(|k| k == "ServiceMonitor"),
        prometheus_rule: monitoring.iter().any(|k| k == "PrometheusRule"),
    })
}

fn serves(groups: &APIGroupList, group: &str, version: &str) -> bool {
    groups.groups.iter().any(|g| g.name == group && g.versions.iter().any(|v| v.version == version))
}

/// Whether the pipeline asks for a kind `found` says the API server does not serve.
pub fn wants_missing(resolved: &Resolved, found: &Discovered) -> bool {
    let monitoring = &resolved.monitoring;
    let autoscaling = resolved.workloads.iter().filter(|w| w.enabled).filter_map(|w| w.autoscaling.as_ref());
    (monitoring.service_monitor && !found.service_monitor)
        || (monitoring.alert_rules && !found.prometheus_rule)
        || autoscaling.into_iter().any(|a| match a.provider {
            AutoscalingProvider::Hpa => found.autoscaling.hpa.is_none(),
            AutoscalingProvider::Keda => !found.autoscaling.keda,
        })
}

/// The last answer and when it was got; `discover` asks again once it is older than the TTL.
pub struct DiscoveryCache {
    ttl: Duration,
    last: Mutex<Option<(Instant, Discovered)>>,
}

impl DiscoveryCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, last: Mutex::new(None) }
    }

    /// The cached answer while fresh, else a new one (concurrent misses may each ask: harmless).
    pub async fn get(&self, client: &Client) -> Result<Discovered, kube::Error> {
        self.get_within(client, self.ttl).await
    }

    /// The answer for `resolved`: one at most `MISSING_TTL` old when it lacks a kind the pipeline asks for.
    pub async fn for_pipeline(&self, client: &Client, resolved: &Resolved) -> Result<Discovered, kube::Error> {
        let found = self.get(client).await?;
        if !wants_missing(resolved, &found) {
            return Ok(found);
        }
        self.get_within(client, MISSING_TTL).await
    }

    async fn get_within(&self, client: &Client, ttl: Duration) -> Result<Discovered, kube::Error> {
        if let Some(found) = self.fresh_within(Instant::now(), ttl) {
            return Ok(found);
        }
        let found = discover(client).await?;
        *self.last.lock().expect("discovery lock") = Some((Instant::now(), found));
        Ok(found)
    }

    /// The cached answer if it is younger than the TTL at `now`.
    pub fn fresh(&self, now: Instant) -> Option<Discovered> {
        self.fresh_within(now, self.ttl)
    }

    fn fresh_within(&self, now: Instant, ttl: Duration) -> Option<Discovered> {
        let ttl = ttl.min(self.ttl);
        let last = self.last.lock().expect("discovery lock");
        last.and_then(|(at, found)| (now.saturating_duration_since(at) < ttl).then_some(found))
    }

    /// Forgets the answer: an apply of a discovered kind failed, the CRD may be gone.
    pub fn invalidate(&self) {
        *self.last.lock().expect("discovery lock") = None;
    }

    #[cfg(test)]
    fn store(&self, at: Instant, found: Discovered) {
        *self.last.lock().expect("discovery lock") = Some((at, found));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_reused_until_the_ttl_and_forgotten_on_invalidate() {
        let cache = DiscoveryCache::new(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(cache.fresh(start), None);
        let found = Discovered { service_monitor: true, ..Discovered::default() };
        cache.store(start, found);
        assert_eq!(cache.fresh(start + Duration::from_secs(59)), Some(found));
        assert_eq!(cache.fresh(start + Duration::from_secs(60)), None);
        cache.invalidate();
        assert_eq!(cache.fresh(start), None);
        cache.store(start, found);
        assert_eq!(cache.fresh_within(start + Duration::from_secs(6), MISSING_TTL), None);
        assert_eq!(cache.fresh_within(start + Duration::from_secs(4), MISSING_TTL), Some(found));
    }

    #[test]
    fn a_pipeline_asking_for_a_kind_not_served_wants_a_fresher_answer() {
        use crate::crd::AutoscalingSpec;
        use crate::spec::resolve::{Defaults, resolve};
        let defaults = Defaults {
            kafka_bootstrap_servers: Some("kafka:9092".into()),
            clickhouse_url: Some("http://ch:8123".into()),
            ..Defaults::default()
        };
        let mut spec = crate::crd::FlightPipelineSpec::default();
        spec.monitoring.service_monitor = false;
        spec.monitoring.alert_rules = false;
        let plain = resolve("ns", "p", &spec, &defaults).unwrap();
        let nothing = Discovered::default();
        assert!(!wants_missing(&plain, &nothing));
        spec.monitoring.service_monitor = true;
        let monitored = resolve("ns", "p", &spec, &defaults).unwrap();
        assert!(wants_missing(&monitored, &nothing));
        assert!(!wants_missing(&monitored, &Discovered { service_monitor: true, ..nothing }));
        spec.monitoring.service_monitor = false;
        spec.query.workload.autoscaling =
            Some(AutoscalingSpec { provider: AutoscalingProvider::Keda, ..AutoscalingSpec::default() });
        let keda = resolve("ns", "p", &spec, &defaults).unwrap();
        let hpa_only = Discovered { autoscaling: Offers { hpa: Some(HpaVersion::V2), keda: false }, ..nothing };
        assert!(wants_missing(&keda, &hpa_only));
        assert!(!wants_missing(
            &keda,
            &Discovered { autoscaling: Offers { keda: true, ..hpa_only.autoscaling }, ..nothing }
        ));
    }
}
