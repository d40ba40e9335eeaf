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

/// How long a kind served before must be missing before the operator believes it gone. Losing
/// `monitoring.coreos.com` switches every pipeline's pods to scrape annotations (a rollout of the
/// whole fleet) and deletes their ServiceMonitors; a CRD re-installed by a chart upgrade, or an
/// API server that answers discovery from a half-updated cache, must not do that for a moment.
pub const VANISHED_GRACE: Duration = Duration::from_secs(30);

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

/// What discovery is taken to say: a kind lost since the last answer is still held as served
/// until it has been missing for `VANISHED_GRACE`; a kind gained counts at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    pub found: Discovered,
    /// When an answer first lacked a kind `found` still holds.
    pub losing_since: Option<Instant>,
}

/// The next settled answer after `previous`, given discovery's `fresh` answer at `now`.
pub fn settle(previous: Option<Settled>, fresh: Discovered, now: Instant, grace: Duration) -> Settled {
    let accept = Settled { found: fresh, losing_since: None };
    let Some(previous) = previous else { return accept };
    let was = previous.found;
    let held = Discovered {
        autoscaling: Offers {
            hpa: fresh.autoscaling.hpa.or(was.autoscaling.hpa),
            keda: fresh.autoscaling.keda || was.autoscaling.keda,
        },
        service_monitor: fresh.service_monitor || was.service_monitor,
        prometheus_rule: fresh.prometheus_rule || was.prometheus_rule,
    };
    if held == fresh {
        return accept;
    }
    let since = previous.losing_since.unwrap_or(now);
    if now.saturating_duration_since(since) >= grace {
        tracing::warn!(was = ?was, now = ?fresh, "API kinds gone for good: children of them are no longer applied");
        return accept;
    }
    if previous.losing_since.is_none() {
        tracing::warn!(was = ?was, now = ?fresh, "API kinds missing from discovery: held as served for a while");
    }
    Settled { found: held, losing_since: Some(since) }
}

/// The last answer and when it was got; `discover` asks again once it is older than the TTL.
pub struct DiscoveryCache {
    ttl: Duration,
    last: Mutex<Option<(Instant, Discovered)>>,
    /// What the answers settled on, kept across `invalidate`.
    settled: Mutex<Option<Settled>>,
}

impl DiscoveryCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, last: Mutex::new(None), settled: Mutex::new(None) }
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
        let found = self.settle(discover(client).await?, Instant::now());
        *self.last.lock().expect("discovery lock") = Some((Instant::now(), found));
        Ok(found)
    }

    /// `fresh` with a kind lost since the last answer held for `VANISHED_GRACE`.
    fn settle(&self, fresh: Discovered, now: Instant) -> Discovered {
        let mut settled = self.settled.lock().expect("discovery lock");
        let next = settle(*settled, fresh, now, VANISHED_GRACE);
        *settled = Some(next);
        next.found
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

    /// Forgets the answer: an apply of a discovered kind failed, the CRD may be gone. While a lost
    /// kind is held, an answer younger than `MISSING_TTL` is kept: every reconcile of a fleet fails
    /// on the held kind, and each would otherwise ask discovery again.
    pub fn invalidate(&self) {
        let holding = self.settled.lock().expect("discovery lock").is_some_and(|s| s.losing_since.is_some());
        let mut last = self.last.lock().expect("discovery lock");
        if holding && last.is_some_and(|(at, _)| at.elapsed() < MISSING_TTL) {
            return;
        }
        *last = None;
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
    fn a_kind_lost_is_held_as_served_for_the_grace_and_a_kind_gained_counts_at_once() {
        let grace = Duration::from_secs(30);
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let all = Discovered {
            autoscaling: Offers { hpa: Some(HpaVersion::V2), keda: true },
            service_monitor: true,
            prometheus_rule: true,
        };
        let none = Discovered::default();
        // The first answer is taken as it is, whatever it lacks.
        assert_eq!(settle(None, none, at(0), grace).found, none);
        let first = settle(None, all, at(0), grace);
        assert_eq!(first, Settled { found: all, losing_since: None });
        // prometheus-operator's CRDs vanish for a moment (re-installed): still served...
        let lost = Discovered { service_monitor: false, prometheus_rule: false, ..all };
        let held = settle(Some(first), lost, at(10), grace);
        assert_eq!(held, Settled { found: all, losing_since: Some(at(10)) });
        let still = settle(Some(held), lost, at(39), grace);
        assert_eq!(still, Settled { found: all, losing_since: Some(at(10)) }, "the grace counts from the first loss");
        // ...and back: nothing happened.
        assert_eq!(settle(Some(still), all, at(20), grace), Settled { found: all, losing_since: None });
        // Gone for the whole grace: gone.
        assert_eq!(settle(Some(still), lost, at(40), grace), Settled { found: lost, losing_since: None });
        // KEDA installed meanwhile while the HPA version changes: both at once, no hold.
        let v2beta2 = Discovered { autoscaling: Offers { hpa: Some(HpaVersion::V2beta2), keda: true }, ..none };
        let keda_less = Discovered { autoscaling: Offers { hpa: Some(HpaVersion::V2), keda: false }, ..none };
        assert_eq!(settle(Some(settle(None, keda_less, at(0), grace)), v2beta2, at(1), grace).found, v2beta2);
        // HPAs no longer served at all: held like any other kind.
        let hpa_less = Discovered { autoscaling: Offers { hpa: None, keda: false }, ..none };
        assert_eq!(settle(Some(settle(None, keda_less, at(0), grace)), hpa_less, at(1), grace).found, keda_less);
    }

    /// The cache on a mock API server: prometheus-operator's group served, then missing for one
    /// answer (asked again after an apply failed): the ServiceMonitor kind is still served.
    #[tokio::test]
    async fn the_cache_holds_a_kind_missing_from_one_answer() {
        use axum::http::{Request, Response};
        use kube::client::Body;
        use serde_json::json;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let cache = DiscoveryCache::new(Duration::from_secs(60));
        let client = Client::new(service, "default");
        let serve = async |handle: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>, monitoring: bool| {
            let groups = if monitoring {
                json!([{"name": "monitoring.coreos.com", "versions": [{"groupVersion": "monitoring.coreos.com/v1", "version": "v1"}]}])
            } else {
                json!([])
            };
            let (request, send) = handle.next_request().await.expect("discovery asks for the groups");
            assert_eq!(request.uri().path(), "/apis");
            let list = json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups});
            send.send_response(Response::new(Body::from(serde_json::to_vec(&list).unwrap())));
            if monitoring {
                let (request, send) = handle.next_request().await.expect("and for the group's kinds");
                assert_eq!(request.uri().path(), "/apis/monitoring.coreos.com/v1");
                let kinds = json!({"kind": "APIResourceList", "groupVersion": "monitoring.coreos.com/v1", "resources": [
                    {"name": "servicemonitors", "singularName": "servicemonitor", "namespaced": true, "kind": "ServiceMonitor", "verbs": ["get"]},
                    {"name": "prometheusrules", "singularName": "prometheusrule", "namespaced": true, "kind": "PrometheusRule", "verbs": ["get"]}]});
                send.send_response(Response::new(Body::from(serde_json::to_vec(&kinds).unwrap())));
            }
        };
        let (found, ()) = tokio::join!(cache.get(&client), serve(&mut handle, true));
        assert!(found.unwrap().service_monitor);
        cache.invalidate();
        let (found, ()) = tokio::join!(cache.get(&client), serve(&mut handle, false));
        let found = found.unwrap();
        assert!(found.service_monitor && found.prometheus_rule, "held for the grace: {found:?}");
        // While held, a failed apply does not send every reconcile to discovery again.
        cache.invalidate();
        let found = tokio::time::timeout(Duration::from_secs(5), cache.get(&client)).await.expect("no request");
        assert!(found.unwrap().service_monitor);
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
