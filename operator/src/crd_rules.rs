//! CEL validation rules (`x-kubernetes-validations`) of the FlightPipeline CRD: the cross-field
//! checks the API server can make at admission, so `kubectl apply` refuses a bad spec with a
//! clear message instead of the operator reporting `InvalidSpec` after the fact.
//!
//! The operator keeps the same checks (`spec::resolve`): objects stored before a rule existed and
//! servers that ignore the rules still get `InvalidSpec`. The lists in the rules come from the
//! constants the operator checks with, so the two cannot drift apart. Every rule is guarded with
//! `has()` so that a field left out is judged by its default, as the operator judges it.

use flightline_service::contract;
use schemars::Schema;
use serde_json::{Value, json};

use crate::desired::slo::LATENCY_BUCKETS_MS;
use crate::desired::table::BASE_COLUMNS;
use crate::desired::topic::{INTERNAL_TOPIC_PREFIXES, INTERNAL_TOPIC_SUFFIXES, TOOL_TOPICS};
use crate::spec::resolve::MANAGED_TOPIC_CONFIGS;

/// Most extra environment variables one component may set: bounds the cost of the env rule,
/// which the API server estimates before it accepts the CRD.
pub const MAX_ENV_VARS: u32 = 128;

/// `spec.<component>.autoscaling`.
pub fn autoscaling(schema: &mut Schema) {
    add_rule(
        schema,
        "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
        "minReplicas must be at most maxReplicas",
        ".minReplicas",
    );
}

/// `spec.kafka`.
pub fn kafka(schema: &mut Schema) {
    topic_name_rule(schema);
    add_rule(
        schema,
        &format!("!has(self.config) || !{}.exists(k, k in self.config)", cel_strings(&MANAGED_TOPIC_CONFIGS)),
        "config: retention.ms and cleanup.policy are managed by the operator; use spec.kafka.retention",
        ".config",
    );
    add_rule(
        schema,
        "!has(self.topic) || self.topic == '' || !has(self.deadLetter) || !has(self.deadLetter.topic) \
         || self.deadLetter.topic != self.topic",
        "deadLetter.topic must differ from the topic",
        ".deadLetter.topic",
    );
    add_rule(
        schema,
        "!has(self.sasl) || has(self.tls) || (has(self.sasl.allowPlaintext) && self.sasl.allowPlaintext)",
        "sasl: the credentials would cross the network unencrypted; add tls, or set sasl.allowPlaintext: true \
         for a SASL_PLAINTEXT listener",
        ".sasl",
    );
}

/// `spec.kafka.deadLetter`.
pub fn dead_letter(schema: &mut Schema) {
    topic_name_rule(schema);
}

/// The rule on a `topic` field beside the rule (`spec.kafka` and `spec.kafka.deadLetter`).
fn topic_name_rule(schema: &mut Schema) {
    add_rule(
        schema,
        &format!("!has(self.topic) || !({})", reserved_topic("self.topic")),
        "topic: the name is reserved (Kafka's internal topics start with '__'; Schema Registry, Connect, \
         MirrorMaker, Confluent and Kafka Streams own theirs) or is '.' or '..'",
        ".topic",
    );
}

/// `spec.clickhouse`.
pub fn clickhouse(schema: &mut Schema) {
    let base: Vec<&str> = BASE_COLUMNS.iter().map(|(name, _)| *name).collect();
    add_rule(
        schema,
        &format!("!has(self.extraColumns) || self.extraColumns.all(c, !(c.name in {}))", cel_strings(&base)),
        "extraColumns: a name is one of the table's built-in columns",
        ".extraColumns",
    );
    add_rule(
        schema,
        "!has(self.extraColumns) || self.extraColumns.all(c, self.extraColumns.exists_one(d, d.name == c.name))",
        "extraColumns: a name appears twice",
        ".extraColumns",
    );
    add_rule(
        schema,
        "!has(self.tls) || !has(self.url) || self.url == '' || self.url.startsWith('https://')",
        "tls: set, but the url is not https://",
        ".tls",
    );
    add_rule(
        schema,
        "!has(self.url) || self.url == '' || self.url.startsWith('http://') || self.url.startsWith('https://')",
        "url must start with http:// or https://",
        ".url",
    );
}

/// `spec.{ingest,sink,query,predict}`: the rules of the workload settings they all flatten in.
pub fn workload(schema: &mut Schema) {
    add_rule(
        schema,
        &format!(
            "!has(self.env) || self.env.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_]*$') && !(k in {}) \
             && (k in {} || !{}.exists(p, k.startsWith(p))))",
            cel_strings(&contract::reserved_outside_prefixes()),
            cel_strings(&contract::tunable_inside_prefixes()),
            cel_strings(&contract::RESERVED_PREFIXES),
        ),
        "env: a name is not a valid environment variable name, or is one the operator writes from the spec \
         (KAFKA_*, CLICKHOUSE_*, INGEST_*, SINK_*, QUERY_*, PREDICT_*, API_KEY*, JWT_*, the HTTP limits, \
         LISTEN_ADDR, FLIGHTLINE_PIPELINE, FLIGHTLINE_COMPONENT, FLIGHTLINE_IDENTITY); set the spec field instead",
        ".env",
    );
}

/// `spec.slo`.
pub fn slo(schema: &mut Schema) {
    let buckets: Vec<String> = LATENCY_BUCKETS_MS.iter().map(|(ms, _)| ms.to_string()).collect();
    add_rule(
        schema,
        &format!("!has(self.latencyThresholdMs) || self.latencyThresholdMs in [{}]", buckets.join(", ")),
        &format!("latencyThresholdMs must be a latency bucket of the services: one of {}", buckets.join(", ")),
        ".latencyThresholdMs",
    );
}

/// The CEL expression that holds when the string `var` is a reserved or illegal topic name
/// (the CEL twin of `desired::topic::reserved_topic` plus Kafka's `.` and `..`).
fn reserved_topic(var: &str) -> String {
    format!(
        "{var} == '.' || {var} == '..' || {var} in {tools} || {prefixes}.exists(p, {var}.startsWith(p)) \
         || {suffixes}.exists(s, {var}.endsWith(s))",
        tools = cel_strings(TOOL_TOPICS),
        prefixes = cel_strings(INTERNAL_TOPIC_PREFIXES),
        suffixes = cel_strings(INTERNAL_TOPIC_SUFFIXES),
    )
}

/// A CEL list literal of strings (the names here never hold quotes or backslashes).
fn cel_strings(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("'{s}'")).collect();
    format!("[{}]", quoted.join(", "))
}

fn add_rule(schema: &mut Schema, rule: &str, message: &str, field_path: &str) {
    let entry = json!({ "rule": rule, "message": message, "fieldPath": field_path });
    match schema.get_mut("x-kubernetes-validations") {
        Some(Value::Array(rules)) => rules.push(entry),
        _ => {
            schema.insert("x-kubernetes-validations".into(), Value::Array(vec![entry]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::FlightPipeline;
    use kube::CustomResourceExt;

    fn rules_at(path: &[&str]) -> Vec<Value> {
        let crd = serde_json::to_value(FlightPipeline::crd()).unwrap();
        let mut schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        for key in path {
            schema = &schema["properties"][key];
        }
        schema["x-kubernetes-validations"].as_array().cloned().unwrap_or_default()
    }

    #[test]
    fn every_rule_sits_where_its_field_path_points() {
        for (path, field) in [
            (&["kafka"][..], ".topic"),
            (&["kafka"][..], ".config"),
            (&["kafka", "deadLetter"][..], ".topic"),
            (&["clickhouse"][..], ".extraColumns"),
            (&["clickhouse"][..], ".url"),
            (&["slo"][..], ".latencyThresholdMs"),
            (&["ingest", "autoscaling"][..], ".minReplicas"),
            (&["predict", "autoscaling"][..], ".minReplicas"),
        ] {
            let rules = rules_at(path);
            assert!(rules.iter().any(|r| r["fieldPath"] == field), "{path:?}: {rules:?}");
        }
        for component in ["ingest", "sink", "query", "predict"] {
            let rules = rules_at(&[component]);
            assert!(rules.iter().any(|r| r["fieldPath"] == ".env"), "{component}: {rules:?}");
        }
    }

    #[test]
    fn the_env_map_is_bounded_so_the_rule_cost_is_too() {
        let crd = serde_json::to_value(FlightPipeline::crd()).unwrap();
        let env = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["query"]
            ["properties"]["env"];
        assert_eq!(env["maxProperties"], MAX_ENV_VARS);
    }

    #[test]
    fn lists_come_from_the_operators_own_constants() {
        let kafka = rules_at(&["kafka"]);
        let topic_rule = kafka[0]["rule"].as_str().unwrap();
        for name in TOOL_TOPICS.iter().chain(INTERNAL_TOPIC_PREFIXES).chain(INTERNAL_TOPIC_SUFFIXES) {
            assert!(topic_rule.contains(&format!("'{name}'")), "{name} missing from {topic_rule}");
        }
        let clickhouse = rules_at(&["clickhouse"]);
        assert!(BASE_COLUMNS.iter().all(|(n, _)| clickhouse[0]["rule"].as_str().unwrap().contains(n)));
        assert!(cel_strings(&["a", "b"]) == "['a', 'b']");
    }
}
