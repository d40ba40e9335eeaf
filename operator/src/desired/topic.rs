//! Desired Kafka topics and the plan that turns what a broker has into them. Pure.

use std::collections::BTreeMap;

use crate::desired::table::is_label;

/// A topic as the pipeline wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    /// Topic configs the operator manages (`retention.ms`, `cleanup.policy` and the user's extras).
    pub configs: BTreeMap<String, String>,
}

/// A topic as the broker describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedTopic {
    pub partitions: i32,
    pub replication_factor: i16,
    /// `None` when the broker cannot describe topic configs.
    pub configs: Option<BTreeMap<String, String>>,
}

/// What to do to a topic. An empty plan means it is as wanted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicPlan {
    pub create: bool,
    /// Grow the topic to this many partitions.
    pub grow_partitions_to: Option<i32>,
    /// Configs to set (name → value).
    pub set_configs: BTreeMap<String, String>,
    /// Differences the operator will not make, in words.
    pub not_supported: Vec<String>,
}

impl TopicPlan {
    pub fn is_noop(&self) -> bool {
        !self.create && self.grow_partitions_to.is_none() && self.set_configs.is_empty()
    }

    /// Some difference cannot be made: carry out none of the plan.
    pub fn is_blocked(&self) -> bool {
        !self.not_supported.is_empty()
    }
}

/// `adopted`: the topic was not made by this pipeline. Its `cleanup.policy` is then never changed
/// (a compacted topic turned into a delete topic loses every key's last value once retention
/// passes); only retention, partitions and the spec's extra configs are.
pub fn plan_topic(want: &TopicSpec, have: Option<&ObservedTopic>, adopted: bool) -> TopicPlan {
    let Some(have) = have else {
        return TopicPlan { create: true, ..TopicPlan::default() };
    };
    let mut plan = TopicPlan::default();
    if want.partitions > have.partitions {
        plan.grow_partitions_to = Some(want.partitions);
    } else if want.partitions < have.partitions {
        plan.not_supported.push(format!(
            "topic {} has {} partitions and the spec asks for {}: Kafka cannot remove partitions",
            want.name, have.partitions, want.partitions
        ));
    }
    if want.replication_factor != have.replication_factor {
        plan.not_supported.push(format!(
            "topic {} has replication factor {} and the spec asks for {}: the operator does not reassign replicas",
            want.name, have.replication_factor, want.replication_factor
        ));
    }
    if let Some(configs) = &have.configs {
        for (key, value) in &want.configs {
            match configs.get(key) {
                Some(have) if have == value => {}
                // Adopted and not described: what it is cannot be known, so it is left as it is.
                None if adopted && key == CLEANUP_POLICY => {}
                Some(have) if adopted && key == CLEANUP_POLICY => plan.not_supported.push(format!(
                    "topic {} has {CLEANUP_POLICY}={have} and the pipeline needs {value}: the operator does not \
                     change the cleanup policy of a topic it adopted",
                    want.name
                )),
                _ => {
                    plan.set_configs.insert(key.clone(), value.clone());
                }
            }
        }
    }
    plan
}

/// The pipeline `(namespace, name)` whose default topic (`<namespace>.<name>.flights`) or default
/// dead-letter topic (that and `.dlq`) `topic` is, if it is one. Labels have no '.', so the split
/// is unique.
pub fn default_topic_owner(topic: &str) -> Option<(String, String)> {
    let main = topic.strip_suffix(".dlq").unwrap_or(topic);
    let (namespace, name) = main.strip_suffix(".flights")?.split_once('.')?;
    (is_label(namespace) && is_label(name)).then(|| (namespace.to_string(), name.to_string()))
}

const CLEANUP_POLICY: &str = "cleanup.policy";

/// Topics of well-known Kafka tools (Schema Registry, Connect, MirrorMaker).
pub const TOOL_TOPICS: &[&str] = &["_schemas", "connect-configs", "connect-offsets", "connect-status", "heartbeats"];
/// Prefixes of Kafka's own internal topics and Confluent's.
pub const INTERNAL_TOPIC_PREFIXES: &[&str] = &["__", "_confluent"];
/// Suffixes of MirrorMaker's and Kafka Streams' internal topics.
pub const INTERNAL_TOPIC_SUFFIXES: &[&str] = &[".internal", "-changelog", "-repartition"];

/// Why a topic name belongs to Kafka itself or to a well-known tool, so that no pipeline may
/// create, adopt or reconfigure it: `__consumer_offsets`, `__transaction_state`,
/// `__cluster_metadata` and every other `__` name (Kafka's internal topics), `_confluent*` and
/// `_schemas` (Confluent Platform, Schema Registry), Kafka Connect's default
/// `connect-configs`/`connect-offsets`/`connect-status`, MirrorMaker 2's `heartbeats` and
/// `*.internal`, and Kafka Streams' `*-changelog`/`*-repartition`.
pub fn reserved_topic(name: &str) -> Option<&'static str> {
    if name.starts_with("__") {
        Some("names starting with '__' are Kafka's internal topics")
    } else if INTERNAL_TOPIC_PREFIXES.iter().any(|prefix| name.starts_with(prefix)) || TOOL_TOPICS.contains(&name) {
        Some("is the topic of a well-known Kafka tool (Schema Registry, Connect, MirrorMaker, Confluent)")
    } else if INTERNAL_TOPIC_SUFFIXES.iter().any(|suffix| name.ends_with(suffix)) {
        Some(
            "names ending in .internal, -changelog or -repartition are internal topics of MirrorMaker or Kafka Streams",
        )
    } else {
        None
    }
}

/// Parses `7d`, `12h`, `30m`, `45s`, `500ms` or `forever` into Kafka's `retention.ms` value.
pub fn retention_ms(text: &str) -> Result<i64, String> {
    if text == "forever" {
        return Ok(-1);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| format!("{text:?} has no unit"))?;
    let (digits, unit) = text.split_at(split);
    let amount: i64 = digits.parse().map_err(|_| format!("{text:?} does not start with a number"))?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!("{text:?} has unknown unit {unit:?} (use ms, s, m, h or d)"));
        }
    };
    amount.checked_mul(factor).filter(|ms| *ms > 0).ok_or_else(|| format!("{text:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(partitions: i32) -> TopicSpec {
        TopicSpec {
            name: "t".into(),
            partitions,
            replication_factor: 1,
            configs: BTreeMap::from([("retention.ms".into(), "1000".into())]),
        }
    }

    fn observed(partitions: i32, retention: Option<&str>) -> ObservedTopic {
        ObservedTopic {
            partitions,
            replication_factor: 1,
            configs: Some(retention.map(|r| BTreeMap::from([("retention.ms".into(), r.into())])).unwrap_or_default()),
        }
    }

    #[test]
    fn missing_topic_is_created() {
        assert!(plan_topic(&spec(3), None, false).create);
    }

    #[test]
    fn matching_topic_needs_nothing() {
        assert!(plan_topic(&spec(3), Some(&observed(3, Some("1000"))), false).is_noop());
    }

    #[test]
    fn partitions_grow_but_never_shrink() {
        assert_eq!(plan_topic(&spec(6), Some(&observed(3, Some("1000"))), false).grow_partitions_to, Some(6));
        let shrink = plan_topic(&spec(3), Some(&observed(6, Some("1000"))), false);
        assert!(shrink.is_noop());
        assert!(shrink.not_supported[0].contains("cannot remove partitions"), "{shrink:?}");
    }

    #[test]
    fn replication_change_is_not_supported() {
        let mut have = observed(3, Some("1000"));
        have.replication_factor = 3;
        assert!(plan_topic(&spec(3), Some(&have), false).not_supported[0].contains("replication factor 3"));
    }

    #[test]
    fn changed_and_missing_configs_are_set() {
        let plan = plan_topic(&spec(3), Some(&observed(3, Some("5"))), false);
        assert_eq!(plan.set_configs.get("retention.ms").map(String::as_str), Some("1000"));
        assert_eq!(plan_topic(&spec(3), Some(&observed(3, None)), false).set_configs.len(), 1);
    }

    #[test]
    fn configs_are_left_alone_when_the_broker_cannot_describe_them() {
        let have = ObservedTopic { partitions: 3, replication_factor: 1, configs: None };
        assert!(plan_topic(&spec(3), Some(&have), false).is_noop());
    }

    #[test]
    fn an_adopted_topic_keeps_its_cleanup_policy_and_only_its_retention_changes() {
        let mut want = spec(3);
        want.configs.insert("cleanup.policy".into(), "delete".into());
        let have = |policy: Option<&str>| {
            let mut configs = BTreeMap::from([("retention.ms".into(), "5".into())]);
            configs.extend(policy.map(|p| ("cleanup.policy".to_string(), p.to_string())));
            ObservedTopic { partitions: 3, replication_factor: 1, configs: Some(configs) }
        };
        let compacted = plan_topic(&want, Some(&have(Some("compact"))), true);
        assert!(compacted.is_blocked(), "{compacted:?}");
        assert!(compacted.not_supported[0].contains("cleanup.policy=compact"), "{compacted:?}");
        assert!(!compacted.set_configs.contains_key("cleanup.policy"), "{compacted:?}");
        let delete = plan_topic(&want, Some(&have(Some("delete"))), true);
        assert!(!delete.is_blocked());
        assert_eq!(delete.set_configs, BTreeMap::from([("retention.ms".into(), "1000".into())]));
        let undescribed = plan_topic(&want, Some(&have(None)), true);
        assert!(!undescribed.is_blocked() && !undescribed.set_configs.contains_key("cleanup.policy"));
        // A topic the pipeline created is its own: its policy is put back.
        let own = plan_topic(&want, Some(&have(Some("compact"))), false);
        assert_eq!(own.set_configs.get("cleanup.policy").map(String::as_str), Some("delete"));
        assert!(!own.is_blocked());
    }

    #[test]
    fn internal_and_tool_topics_are_reserved() {
        for name in [
            "__consumer_offsets",
            "__transaction_state",
            "__cluster_metadata",
            "__anything",
            "_schemas",
            "_confluent-metrics",
            "connect-configs",
            "connect-offsets",
            "connect-status",
            "heartbeats",
            "mm2-offset-syncs.east.internal",
            "app-store-changelog",
            "app-by-key-repartition",
        ] {
            assert!(reserved_topic(name).is_some(), "{name}");
        }
        for name in ["air.scl.flights", "air.scl.flights.dlq", "_private", "connect-flights", "flights"] {
            assert_eq!(reserved_topic(name), None, "{name}");
        }
    }

    #[test]
    fn default_topic_names_decode_to_their_pipeline_and_nothing_else_does() {
        let owner = |ns: &str, n: &str| Some((ns.to_string(), n.to_string()));
        assert_eq!(default_topic_owner("b.scl.flights"), owner("b", "scl"));
        assert_eq!(default_topic_owner("b.scl.flights.dlq"), owner("b", "scl"));
        assert_eq!(default_topic_owner("team-7.flights-eu.flights"), owner("team-7", "flights-eu"));
        for topic in ["flights", "b.flights", "a.b.c.flights", "b.scl.flights.dlq.dlq", "B.scl.flights", "-b.x.flights"]
        {
            assert_eq!(default_topic_owner(topic), None, "{topic}");
        }
    }

    #[test]
    fn retention_units() {
        assert_eq!(retention_ms("7d"), Ok(604_800_000));
        assert_eq!(retention_ms("90m"), Ok(5_400_000));
        assert_eq!(retention_ms("250ms"), Ok(250));
        assert_eq!(retention_ms("forever"), Ok(-1));
        assert!(retention_ms("7w").is_err());
        assert!(retention_ms("0d").is_err());
        assert!(retention_ms("d").is_err());
        assert!(retention_ms("999999999999d").is_err());
    }
}
