//! Status conditions: what each part of a reconcile found, folded into `Ready`, and merged with the
//! conditions already on the object so that `lastTransitionTime` only moves when a status does. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition types a pipeline's status carries, in the order `status.conditions` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConditionType {
    /// All parts ready; otherwise the first failing part's reason.
    Ready,
    KafkaReady,
    ClickHouseReady,
    WorkloadsAvailable,
    AutoscalingReady,
    MonitoringReady,
    /// Present only while `spec.paused` is true.
    Paused,
}

impl ConditionType {
    /// Every type, in the order status lists them.
    pub const ALL: [ConditionType; 7] = [
        Self::Ready,
        Self::KafkaReady,
        Self::ClickHouseReady,
        Self::WorkloadsAvailable,
        Self::AutoscalingReady,
        Self::MonitoringReady,
        Self::Paused,
    ];
    /// The parts `Ready` is folded from, in the order a reconcile decides them.
    pub const PARTS: [ConditionType; 5] = [
        Self::KafkaReady,
        Self::ClickHouseReady,
        Self::WorkloadsAvailable,
        Self::AutoscalingReady,
        Self::MonitoringReady,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::KafkaReady => "KafkaReady",
            Self::ClickHouseReady => "ClickHouseReady",
            Self::WorkloadsAvailable => "WorkloadsAvailable",
            Self::AutoscalingReady => "AutoscalingReady",
            Self::MonitoringReady => "MonitoringReady",
            Self::Paused => "Paused",
        }
    }
}

impl std::fmt::Display for ConditionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<ConditionType> for String {
    fn eq(&self, other: &ConditionType) -> bool {
        self == other.as_str()
    }
}

/// Longest condition message and Event note, in bytes (an Event's note may not be longer): an
/// error body from Kafka or ClickHouse has no bound of its own.
pub const MAX_MESSAGE_BYTES: usize = 1024;
const ELLIPSIS: &str = "…";

/// Reasons, in CamelCase as Kubernetes conventions ask.
pub mod reason {
    pub const READY: &str = "Ready";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const NOT_SUPPORTED: &str = "NotSupported";
    /// A topic or table that another pipeline claims, or that exists and is neither created nor adopted.
    pub const RESOURCE_CONFLICT: &str = "ResourceConflict";
    pub const TOPIC_READY: &str = "TopicReady";
    pub const TABLE_READY: &str = "TableReady";
    pub const KAFKA_UNAVAILABLE: &str = "KafkaUnavailable";
    pub const KAFKA_ERROR: &str = "KafkaError";
    /// The TLS handshake with a broker failed (CA, certificate name, client certificate, listener).
    pub const KAFKA_TLS_FAILED: &str = "KafkaTLSFailed";
    /// A broker refused the SASL mechanism or the credentials.
    pub const KAFKA_AUTHENTICATION_FAILED: &str = "KafkaAuthenticationFailed";
    pub const CLICKHOUSE_UNAVAILABLE: &str = "ClickHouseUnavailable";
    pub const CLICKHOUSE_ERROR: &str = "ClickHouseError";
    /// The TLS handshake with ClickHouse failed (CA, certificate name, a plain-HTTP port).
    pub const CLICKHOUSE_TLS_FAILED: &str = "ClickHouseTLSFailed";
    /// ClickHouse refused the user or password.
    pub const CLICKHOUSE_AUTHENTICATION_FAILED: &str = "ClickHouseAuthenticationFailed";
    pub const AVAILABLE: &str = "Available";
    pub const PROGRESSING: &str = "Progressing";
    pub const WAITING: &str = "WaitingForStorage";
    pub const PAUSED: &str = "ReconciliationPaused";
    pub const AUTOSCALERS_APPLIED: &str = "AutoscalersApplied";
    pub const FIXED_REPLICAS: &str = "FixedReplicas";
    pub const PROVIDER_MISSING: &str = "ProviderMissing";
    /// The API server refused a child (an admission webhook, a policy, a permission, the schema).
    pub const CHILD_REFUSED: &str = "ChildRefused";
    pub const MONITORING_APPLIED: &str = "MonitoringApplied";
}

/// One condition as a reconcile computed it, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub type_: ConditionType,
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Finding {
    pub fn ok(type_: ConditionType, reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_, ok: true, reason, message: message.into() }
    }
    pub fn failed(type_: ConditionType, reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_, ok: false, reason, message: message.into() }
    }
}

/// `Ready` from the part conditions: true when all are, otherwise the first failure's reason.
pub fn ready(parts: &[Finding]) -> Finding {
    match parts.iter().find(|p| !p.ok) {
        None => Finding::ok(
            ConditionType::Ready,
            reason::READY,
            "topic, table, workloads, autoscaling and monitoring are ready",
        ),
        Some(failed) => {
            Finding::failed(ConditionType::Ready, failed.reason, format!("{}: {}", failed.type_, failed.message))
        }
    }
}

/// Every condition false with the same reason (an invalid spec stops everything).
pub fn all_failed(reason: &'static str, message: &str) -> Vec<Finding> {
    std::iter::once(ConditionType::Ready)
        .chain(ConditionType::PARTS)
        .map(|t| Finding::failed(t, reason, message))
        .collect()
}

/// `message` cut to `MAX_MESSAGE_BYTES` on a character boundary, ending in "…" when it was cut.
pub fn truncate(message: &str) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE_BYTES - ELLIPSIS.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &message[..end])
}

/// Part conditions (not `Ready`) that are newly `ResourceConflict`, or conflict over something new,
/// as their type and an Event note `<type>: <message>`: each such conflict gets an Event even when
/// `Ready` reports another failure first.
pub fn new_conflicts<'a>(old: &[Condition], new: &'a [Condition]) -> Vec<(&'a str, String)> {
    let is_conflict = |c: &Condition| c.type_ != ConditionType::Ready && c.reason == reason::RESOURCE_CONFLICT;
    new.iter()
        .filter(|c| is_conflict(c))
        .filter(|c| !old.iter().any(|o| is_conflict(o) && o.type_ == c.type_ && o.message == c.message))
        .map(|c| (c.type_.as_str(), format!("{}: {}", c.type_, c.message)))
        .collect()
}

/// New conditions from findings. Types not in `findings` are kept as they were, except `Paused`,
/// which is dropped when absent (it is only there while paused).
pub fn merge(existing: &[Condition], findings: &[Finding], generation: Option<i64>, now: &Time) -> Vec<Condition> {
    let mut merged: Vec<Condition> = existing
        .iter()
        .filter(|c| !findings.iter().any(|f| c.type_ == f.type_))
        .filter(|c| c.type_ != ConditionType::Paused)
        .cloned()
        .collect();
    for finding in findings {
        let status = if finding.ok { "True" } else { "False" };
        let previous = existing.iter().find(|c| c.type_ == finding.type_);
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => now.clone(),
        };
        merged.push(Condition {
            type_: finding.type_.as_str().to_string(),
            status: status.to_string(),
            reason: finding.reason.to_string(),
            message: truncate(&finding.message),
            observed_generation: generation,
            last_transition_time,
        });
    }
    let order = ConditionType::ALL;
    merged.sort_by_key(|c| order.iter().position(|t| c.type_ == *t).unwrap_or(order.len()));
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn the_crd_documents_every_condition_type() {
        let crd = crate::crdgen::crd_yaml();
        for t in ConditionType::ALL {
            assert!(crd.contains(&format!("`{t}`")), "the status.conditions description lacks `{t}`");
        }
        assert_eq!(ConditionType::ALL.iter().filter(|t| ConditionType::PARTS.contains(t)).count(), 5);
    }

    #[test]
    fn ready_takes_the_first_failure() {
        let parts = vec![
            Finding::ok(ConditionType::KafkaReady, reason::TOPIC_READY, "ok"),
            Finding::failed(ConditionType::ClickHouseReady, reason::NOT_SUPPORTED, "type change"),
            Finding::failed(ConditionType::WorkloadsAvailable, reason::PROGRESSING, "0/1"),
        ];
        let r = ready(&parts);
        assert!(!r.ok);
        assert_eq!(r.reason, reason::NOT_SUPPORTED);
        assert!(r.message.contains("type change"));
        assert!(ready(&parts[..1]).ok);
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let t0 = time("2026-01-01T00:00:00Z");
        let t1 = time("2026-01-01T00:05:00Z");
        let first = merge(&[], &[Finding::failed(ConditionType::Ready, reason::PROGRESSING, "a")], Some(1), &t0);
        let same = merge(&first, &[Finding::failed(ConditionType::Ready, reason::WAITING, "b")], Some(2), &t1);
        assert_eq!(same[0].last_transition_time, t0);
        assert_eq!(same[0].reason, reason::WAITING);
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(&same, &[Finding::ok(ConditionType::Ready, reason::READY, "c")], Some(2), &t1);
        assert_eq!(flipped[0].last_transition_time, t1);
        assert_eq!(flipped[0].status, "True");
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("short"), "short");
        let exact = "a".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(truncate(&exact), exact);
        // 'é' is two bytes: a cut at an odd byte would split one.
        let long = format!("x{}", "é".repeat(2000));
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES, "{} bytes", cut.len());
        assert!(cut.len() > MAX_MESSAGE_BYTES - 8);
        assert!(cut.ends_with('…') && cut.starts_with("xé"));
        let t = time("2026-01-01T00:00:00Z");
        let body = "Code: 62. DB::Exception: ".to_string() + &"syntax error ".repeat(10_000);
        let merged =
            merge(&[], &[Finding::failed(ConditionType::ClickHouseReady, reason::CLICKHOUSE_ERROR, body)], Some(1), &t);
        assert!(merged[0].message.len() <= MAX_MESSAGE_BYTES);
        assert!(merged[0].message.starts_with("Code: 62."));
    }

    #[test]
    fn each_new_conflict_is_noted_once() {
        let t = time("2026-01-01T00:00:00Z");
        let conflict = |type_, message: &str| Finding::failed(type_, reason::RESOURCE_CONFLICT, message);
        let first = merge(
            &[],
            &[
                conflict(ConditionType::Ready, "WorkloadsAvailable: Deployment a"),
                conflict(ConditionType::WorkloadsAvailable, "Deployment a"),
                Finding::ok(ConditionType::KafkaReady, reason::TOPIC_READY, "ok"),
            ],
            Some(1),
            &t,
        );
        assert_eq!(new_conflicts(&[], &first), vec![("WorkloadsAvailable", "WorkloadsAvailable: Deployment a".into())]);
        assert!(new_conflicts(&first, &first).is_empty(), "an unchanged conflict is not noted again");
        let second = merge(
            &first,
            &[
                conflict(ConditionType::WorkloadsAvailable, "Deployment a"),
                conflict(ConditionType::MonitoringReady, "ConfigMap b"),
            ],
            Some(1),
            &t,
        );
        assert_eq!(new_conflicts(&first, &second), vec![("MonitoringReady", "MonitoringReady: ConfigMap b".into())]);
    }

    #[test]
    fn paused_is_added_and_removed_and_keeps_the_rest() {
        let t = time("2026-01-01T00:00:00Z");
        let base = merge(&[], &[Finding::ok(ConditionType::Ready, reason::READY, "ok")], Some(1), &t);
        let paused = merge(&base, &[Finding::ok(ConditionType::Paused, reason::PAUSED, "paused")], Some(2), &t);
        assert_eq!(paused.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), vec!["Ready", "Paused"]);
        let resumed = merge(&paused, &[Finding::ok(ConditionType::Ready, reason::READY, "ok")], Some(3), &t);
        assert_eq!(resumed.len(), 1);
    }
}
