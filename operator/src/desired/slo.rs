//! SLO recording rules and alerts for a pipeline, as a Prometheus rule file (the `spec` of a
//! `PrometheusRule`). Pure.
//!
//! The SLIs are the HTTP services' own request counter and latency histogram, per component:
//! availability counts 5xx answers as bad, latency counts answers slower than the threshold as
//! bad. Alerts follow the multi-window, multi-burn-rate recipe of the Google SRE workbook: for a
//! 30-day objective, page when 2 % of the budget burns in 1 h (14.4×, checked over 1 h and 5 min)
//! or 5 % in 6 h (6×, over 6 h and 30 min), open a ticket at 3× over 1 d/2 h and 1× over 3 d/6 h.
//! Windows scale with the objective's period, so the burn rates keep their meaning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::resolve::{Component, Resolved};

/// Where runbooks live; each alert links to its section.
pub const RUNBOOK_BASE: &str = "https://github.com/flightline/flightline/blob/main/docs/runbooks.md";
/// Fewest requests in the long window before a burn-rate alert may fire: one error among three
/// requests at night is not an incident.
const MIN_REQUESTS_IN_WINDOW: f64 = 10.0;
/// The shortest window a rule uses, so that a rate sees at least a few scrapes.
const MIN_WINDOW_SECONDS: u64 = 30;
/// Histogram buckets of the services' latency (milliseconds → the `le` label they export).
pub const LATENCY_BUCKETS_MS: [(i32, &str); 11] = [
    (5, "0.005"),
    (10, "0.01"),
    (25, "0.025"),
    (50, "0.05"),
    (100, "0.1"),
    (250, "0.25"),
    (400, "0.4"),
    (500, "0.5"),
    (1000, "1.0"),
    (2500, "2.5"),
    (5000, "5.0"),
];

/// A Prometheus rule file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RuleFile {
    pub groups: Vec<RuleGroup>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RuleGroup {
    pub name: String,
    pub rules: Vec<Rule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Rule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    pub expr: String,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The objectives of a pipeline, resolved from `spec.slo`.
#[derive(Clone, Debug, PartialEq)]
pub struct Objectives {
    /// e.g. 0.995
    pub availability: f64,
    /// e.g. 0.95
    pub latency: f64,
    /// The `le` label of the latency threshold's bucket, e.g. `0.4`.
    pub latency_le: String,
    pub latency_threshold_ms: i32,
    pub window_seconds: u64,
    pub max_consumer_lag: i64,
    pub max_freshness_seconds: i32,
}

/// A `window` string (`28d`, `6h`) in seconds.
pub fn window_seconds(window: &str) -> Result<u64, String> {
    let (number, unit) = window.split_at(window.len().saturating_sub(1));
    let n: u64 = number.parse().map_err(|_| format!("{window:?} must be a number of days or hours, e.g. 28d"))?;
    let seconds = match unit {
        "d" => n * 86_400,
        "h" => n * 3_600,
        _ => return Err(format!("{window:?} must end in d or h")),
    };
    if !(3_600..=366 * 86_400).contains(&seconds) {
        return Err(format!("{window:?} must be between 1h and 366d"));
    }
    Ok(seconds)
}

/// The `le` label of a latency threshold, if it is one of the buckets.
pub fn latency_le(threshold_ms: i32) -> Option<&'static str> {
    LATENCY_BUCKETS_MS.iter().find(|(ms, _)| *ms == threshold_ms).map(|(_, le)| *le)
}

/// A duration as Prometheus writes it: `56m`, `4m40s`, `2d19h12m`.
pub fn prom_duration(seconds: u64) -> String {
    let mut out = String::new();
    let mut rest = seconds;
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

/// One burn-rate alert condition: both windows over `factor` times the budget rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BurnWindow {
    pub long: u64,
    pub short: u64,
    pub factor: f64,
}

const THIRTY_DAYS: u64 = 30 * 86_400;

/// The page and ticket windows for an objective period, scaled from the 30-day recipe.
pub fn burn_windows(period_seconds: u64) -> (Vec<BurnWindow>, Vec<BurnWindow>) {
    let scale = |base: u64| {
        let scaled = (base as u128 * period_seconds as u128 / THIRTY_DAYS as u128) as u64;
        // Whole minutes above an hour keep the labels readable.
        let rounded = if scaled >= 3_600 { scaled / 60 * 60 } else { scaled };
        rounded.max(MIN_WINDOW_SECONDS)
    };
    let window = |long: u64, short: u64, factor: f64| BurnWindow { long: scale(long), short: scale(short), factor };
    let page = vec![window(3_600, 300, 14.4), window(6 * 3_600, 1_800, 6.0)];
    let ticket = vec![window(86_400, 2 * 3_600, 3.0), window(3 * 86_400, 6 * 3_600, 1.0)];
    (page, ticket)
}

/// The rule file of a pipeline.
pub fn rules(resolved: &Resolved) -> RuleFile {
    let o = &resolved.objectives;
    let scope = format!(r#"namespace="{}",pipeline="{}""#, resolved.namespace, resolved.name);
    let http: Vec<&str> = resolved
        .workloads
        .iter()
        .filter(|w| w.enabled && w.component != Component::Sink)
        .map(|w| w.component.as_str())
        .collect();
    let mut groups = Vec::new();
    if !http.is_empty() {
        groups.push(slo_recording_group(resolved, &scope, &http));
        groups.push(slo_alert_group(resolved, &scope));
    }
    let sink_enabled = resolved.workloads.iter().any(|w| w.enabled && w.component == Component::Sink);
    groups.push(pipeline_alert_group(resolved, &scope, sink_enabled, o));
    RuleFile { groups }
}

fn all_windows(o: &Objectives) -> Vec<u64> {
    let (page, ticket) = burn_windows(o.window_seconds);
    let mut windows: Vec<u64> =
        page.iter().chain(&ticket).flat_map(|w| [w.long, w.short]).chain([o.window_seconds]).collect();
    windows.sort_unstable();
    windows.dedup();
    windows
}

fn slo_recording_group(resolved: &Resolved, scope: &str, http: &[&str]) -> RuleGroup {
    let o = &resolved.objectives;
    let names = http.join("|");
    let api = format!(
        r#"namespace="{}",pipeline="{}",route!~"/healthz|/readyz|/metrics""#,
        resolved.namespace, resolved.name
    );
    let requests = format!(r#"{{__name__=~"flightline_({names})_http_requests_total",{api}}}"#);
    let errors = format!(r#"{{__name__=~"flightline_({names})_http_requests_total",{api},status=~"5.."}}"#);
    let fast = format!(
        r#"{{__name__=~"flightline_({names})_http_request_duration_seconds_bucket",{api},le="{}"}}"#,
        o.latency_le
    );
    let all = format!(r#"{{__name__=~"flightline_({names})_http_request_duration_seconds_count",{api}}}"#);
    let by = "sum by (namespace, pipeline, component)";
    let mut rules = Vec::new();
    for window in all_windows(o) {
        let w = prom_duration(window);
        let labels = |slo: Option<&str>| {
            let mut l = BTreeMap::from([("window".to_string(), w.clone())]);
            if let Some(slo) = slo {
                l.insert("slo".into(), slo.into());
            }
            l
        };
        rules.push(record("flightline:slo_requests:rate", format!("{by} (rate({requests}[{w}]))"), labels(None)));
        rules.push(record(
            "flightline:slo_errors:ratio",
            // `or 0 * ...`: a service that never answered 5xx has no such series; its ratio is 0, not absent.
            format!("({by} (rate({errors}[{w}])) or 0 * {by} (rate({requests}[{w}]))) / {by} (rate({requests}[{w}]))"),
            labels(Some("availability")),
        ));
        rules.push(record(
            "flightline:slo_errors:ratio",
            format!("1 - ({by} (rate({fast}[{w}])) / {by} (rate({all}[{w}])))"),
            labels(Some("latency")),
        ));
    }
    let period = prom_duration(o.window_seconds);
    for (slo, objective) in [("availability", o.availability), ("latency", o.latency)] {
        let slo_labels = BTreeMap::from([
            ("namespace".to_string(), resolved.namespace.clone()),
            ("pipeline".to_string(), resolved.name.clone()),
            ("slo".to_string(), slo.to_string()),
        ]);
        rules.push(record("flightline:slo_objective:ratio", format!("vector({objective})"), slo_labels));
        let budget = budget(objective);
        rules.push(record(
            "flightline:slo_burn_rate",
            format!(r#"flightline:slo_errors:ratio{{{scope},slo="{slo}"}} / {budget}"#),
            BTreeMap::new(),
        ));
        rules.push(record(
            "flightline:slo_error_budget_remaining:ratio",
            format!(r#"1 - flightline:slo_errors:ratio{{{scope},slo="{slo}",window="{period}"}} / {budget}"#),
            BTreeMap::new(),
        ));
    }
    RuleGroup { name: format!("flightline-slo-{}-{}", resolved.namespace, resolved.name), rules }
}

fn slo_alert_group(resolved: &Resolved, scope: &str) -> RuleGroup {
    let o = &resolved.objectives;
    let (page, ticket) = burn_windows(o.window_seconds);
    let mut rules = Vec::new();
    for (alert, severity, windows) in
        [("FlightlineErrorBudgetBurnFast", "page", &page), ("FlightlineErrorBudgetBurnSlow", "ticket", &ticket)]
    {
        let conditions: Vec<String> = windows
            .iter()
            .map(|w| {
                let (long, short) = (prom_duration(w.long), prom_duration(w.short));
                let min_rate = MIN_REQUESTS_IN_WINDOW / w.long as f64;
                format!(
                    r#"(flightline:slo_burn_rate{{{scope},window="{long}"}} > {f} and ignoring (window) flightline:slo_burn_rate{{{scope},window="{short}"}} > {f} and ignoring (window, slo) flightline:slo_requests:rate{{{scope},window="{long}"}} > {min_rate:.6})"#,
                    f = w.factor
                )
            })
            .collect();
        let budget_word = if severity == "page" { "fast" } else { "steadily" };
        rules.push(alert_rule(
            alert,
            format!("max without (window) ({})", conditions.join(" or ")),
            Some(prom_duration(windows[0].short.max(MIN_WINDOW_SECONDS))),
            severity,
            format!("{{{{ $labels.component }}}} of pipeline {} burns its {{{{ $labels.slo }}}} error budget {budget_word}", resolved.name),
            format!(
                "The {{{{ $labels.slo }}}} SLI of {{{{ $labels.component }}}} in {}/{} burns its error budget at {{{{ $value | printf \"%.1f\" }}}}× the sustainable rate (objective window {}). At this rate the budget is gone well before the window ends.",
                resolved.namespace,
                resolved.name,
                prom_duration(o.window_seconds)
            ),
        ));
    }
    RuleGroup { name: format!("flightline-slo-alerts-{}-{}", resolved.namespace, resolved.name), rules }
}

fn pipeline_alert_group(resolved: &Resolved, scope: &str, sink_enabled: bool, o: &Objectives) -> RuleGroup {
    let mut rules = Vec::new();
    for workload in resolved.workloads.iter().filter(|w| w.enabled) {
        let c = workload.component.as_str();
        let mut rule = alert_rule(
            "FlightlineSLIAbsent",
            format!(r#"absent(flightline_{c}_http_requests_total{{{scope}}})"#),
            Some("10m".into()),
            "ticket",
            format!("No metrics from {c} of pipeline {}", resolved.name),
            format!(
                "Prometheus has no flightline_{c}_http_requests_total series for {}/{}: the pods are down or not scraped, so the SLOs cannot be judged.",
                resolved.namespace, resolved.name
            ),
        );
        // absent() keeps only the selector's equality matchers (namespace, pipeline): without
        // this label the alerts of two missing components would be one alert to Alertmanager,
        // and one component coming back would resolve the other's.
        rule.labels.insert("component".into(), c.into());
        rules.push(rule);
    }
    if sink_enabled {
        rules.push(alert_rule(
            "FlightlineConsumerLagHigh",
            format!(r#"sum by (namespace, pipeline) (flightline_sink_consumer_lag{{{scope}}}) > {}"#, o.max_consumer_lag),
            Some("10m".into()),
            "ticket",
            format!("The sink of pipeline {} is behind", resolved.name),
            format!(
                "{{{{ $value | printf \"%.0f\" }}}} records wait in the topic of {}/{} (threshold {}). Check the sink's insert errors and ClickHouse, or scale the sink (up to the partition count).",
                resolved.namespace, resolved.name, o.max_consumer_lag
            ),
        ));
        rules.push(alert_rule(
            "FlightlineDeadLettersGrowing",
            format!(r#"sum by (namespace, pipeline) (increase(flightline_sink_dead_letters_total{{{scope}}}[15m])) > 0"#),
            None,
            "ticket",
            format!("Records of pipeline {} go to the dead-letter topic", resolved.name),
            "{{ $value | printf \"%.0f\" }} records were dead-lettered in the last 15 minutes; the flightline.reason header of each says why.".into(),
        ));
        rules.push(alert_rule(
            "FlightlineFreshnessSLO",
            format!(
                r#"histogram_quantile(0.95, sum by (namespace, pipeline, le) (rate(flightline_sink_freshness_seconds_bucket{{{scope}}}[10m]))) > {}"#,
                o.max_freshness_seconds
            ),
            Some("10m".into()),
            "ticket",
            format!("Data of pipeline {} takes too long to become queryable", resolved.name),
            format!(
                "95 % of records take more than {{{{ $value | printf \"%.0f\" }}}} s from ingestion to ClickHouse (threshold {} s).",
                o.max_freshness_seconds
            ),
        ));
        rules.push(alert_rule(
            "FlightlineSinkStalled",
            format!(
                r#"sum by (namespace, pipeline) (flightline_sink_consumer_lag{{{scope}}}) > 0 and sum by (namespace, pipeline) (rate(flightline_sink_rows_total{{{scope}}}[10m])) == 0"#
            ),
            Some("10m".into()),
            "page",
            format!("The sink of pipeline {} inserts nothing while records wait", resolved.name),
            "Records wait in the topic but no row reached ClickHouse for 10 minutes: new data is not queryable.".into(),
        ));
    }
    rules.push(alert_rule(
        "FlightlinePipelineNotReady",
        format!(r#"flightline_operator_pipeline_ready{{{scope}}} == 0"#),
        Some("15m".into()),
        "ticket",
        format!("Pipeline {} is not Ready", resolved.name),
        format!(
            "kubectl describe flightpipeline {} -n {} shows the failing condition and its reason.",
            resolved.name, resolved.namespace
        ),
    ));
    RuleGroup { name: format!("flightline-pipeline-alerts-{}-{}", resolved.namespace, resolved.name), rules }
}

/// Alerts about the operator itself (shipped once, beside the operator, not per pipeline).
pub fn operator_rules() -> RuleFile {
    let rules = vec![
        alert_rule(
            "FlightlineOperatorDown",
            r#"absent(up{job="flightline-operator"} == 1)"#.into(),
            Some("5m".into()),
            "page",
            "No Flightline operator is running".into(),
            "No operator replica has been scraped successfully for 5 minutes: pipelines are not reconciled.".into(),
        ),
        alert_rule(
            "FlightlineOperatorNoLeader",
            r#"sum(flightline_operator_leader{job="flightline-operator"}) < 1"#.into(),
            Some("5m".into()),
            "page",
            "No Flightline operator replica holds the leader lease".into(),
            "Operator replicas run but none leads, so nothing is reconciled. Check the Lease and the replicas' logs.".into(),
        ),
        alert_rule(
            "FlightlineOperatorReconcileErrors",
            r#"sum by (reason) (rate(flightline_operator_reconcile_errors_total{job="flightline-operator"}[10m])) > 0.05"#
                .into(),
            Some("15m".into()),
            "ticket",
            "Flightline reconciles keep failing ({{ $labels.reason }})".into(),
            "Reconciles fail at {{ $value | printf \"%.2f\" }}/s with reason {{ $labels.reason }} for 15 minutes.".into(),
        ),
    ];
    RuleFile { groups: vec![RuleGroup { name: "flightline-operator".into(), rules }] }
}

fn budget(objective: f64) -> String {
    // Rounded so that 1 - 0.995 prints as 0.005, not 0.0050000000000000044.
    format!("{}", ((1.0 - objective) * 1e9).round() / 1e9)
}

fn record(name: &str, expr: String, labels: BTreeMap<String, String>) -> Rule {
    Rule { record: Some(name.into()), expr, labels, ..Rule::default() }
}

fn alert_rule(
    name: &str,
    expr: String,
    for_: Option<String>,
    severity: &str,
    summary: String,
    description: String,
) -> Rule {
    Rule {
        alert: Some(name.into()),
        expr,
        for_,
        labels: BTreeMap::from([("severity".into(), severity.into())]),
        annotations: BTreeMap::from([
            ("summary".into(), summary),
            ("description".into(), description),
            ("runbook_url".into(), format!("{RUNBOOK_BASE}#{}", name.to_lowercase())),
        ]),
        ..Rule::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::FlightPipelineSpec;
    use crate::spec::fixtures::resolved;

    #[test]
    fn windows_scale_with_the_period() {
        let (page, ticket) = burn_windows(THIRTY_DAYS);
        assert_eq!((page[0].long, page[0].short, page[0].factor), (3_600, 300, 14.4));
        assert_eq!((ticket[1].long, ticket[1].short, ticket[1].factor), (3 * 86_400, 6 * 3_600, 1.0));
        let (page, _) = burn_windows(28 * 86_400);
        assert_eq!(prom_duration(page[0].long), "56m");
        assert_eq!(prom_duration(page[0].short), "4m40s");
        // A 12-hour objective (used by the end-to-end test) floors the short window.
        let (page, _) = burn_windows(12 * 3_600);
        assert_eq!((page[0].long, page[0].short), (60, MIN_WINDOW_SECONDS));
    }

    #[test]
    fn window_and_threshold_parsing() {
        assert_eq!(window_seconds("28d"), Ok(28 * 86_400));
        assert_eq!(window_seconds("6h"), Ok(6 * 3_600));
        assert!(window_seconds("0h").is_err());
        assert!(window_seconds("400d").is_err());
        assert!(window_seconds("d").is_err());
        assert_eq!(latency_le(400), Some("0.4"));
        assert_eq!(latency_le(1000), Some("1.0"));
        assert_eq!(latency_le(401), None);
        assert_eq!(prom_duration(67 * 3_600 + 12 * 60), "2d19h12m");
    }

    #[test]
    fn rules_cover_every_window_and_alert() {
        let file = rules(&resolved(&FlightPipelineSpec::default()));
        let all: Vec<&Rule> = file.groups.iter().flat_map(|g| &g.rules).collect();
        let windows: std::collections::BTreeSet<_> = all
            .iter()
            .filter(|r| r.record.as_deref() == Some("flightline:slo_requests:rate"))
            .map(|r| r.labels["window"].clone())
            .collect();
        for w in ["4m40s", "56m", "28m", "5h36m", "1h52m", "22h24m", "2d19h12m", "28d"] {
            assert!(windows.contains(w), "missing window {w}: {windows:?}");
        }
        let alerts: std::collections::BTreeSet<_> = all.iter().filter_map(|r| r.alert.as_deref()).collect();
        for a in [
            "FlightlineErrorBudgetBurnFast",
            "FlightlineErrorBudgetBurnSlow",
            "FlightlineSLIAbsent",
            "FlightlineConsumerLagHigh",
            "FlightlineDeadLettersGrowing",
            "FlightlineFreshnessSLO",
            "FlightlineSinkStalled",
            "FlightlinePipelineNotReady",
        ] {
            assert!(alerts.contains(a), "missing alert {a}");
        }
        let fast = all.iter().find(|r| r.alert.as_deref() == Some("FlightlineErrorBudgetBurnFast")).unwrap();
        assert!(fast.expr.contains(r#"window="56m"} > 14.4"#), "{}", fast.expr);
        assert!(fast.expr.contains(r#"window="5h36m"} > 6"#), "{}", fast.expr);
        assert_eq!(fast.labels["severity"], "page");
        assert!(fast.annotations["runbook_url"].ends_with("#flightlineerrorbudgetburnfast"));
        let budget =
            all.iter().find(|r| r.record.as_deref() == Some("flightline:slo_error_budget_remaining:ratio")).unwrap();
        assert!(budget.expr.ends_with(r#"window="28d"} / 0.005"#), "{}", budget.expr);
    }

    #[test]
    fn disabled_components_have_no_rules() {
        let mut spec = FlightPipelineSpec::default();
        spec.sink.workload.enabled = false;
        spec.predict.workload.enabled = false;
        let file = rules(&resolved(&spec));
        let text = serde_json::to_string(&file).unwrap();
        assert!(!text.contains("FlightlineConsumerLagHigh"));
        assert!(!text.contains("flightline_predict_http"));
        assert!(text.contains("flightline_(ingest|query)_http_requests_total"));
    }
}
