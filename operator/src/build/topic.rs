//! Desired Kafka topics and the plan that turns what a broker has into them. Pure.

use std::collections::BTreeMap;

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

pub fn plan_topic(want: &TopicSpec, have: Option<&ObservedTopic>) -> TopicPlan {
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
            if configs.get(key) != Some(value) {
                plan.set_configs.insert(key.clone(), value.clone());
            }
        }
    }
    plan
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
        assert!(plan_topic(&spec(3), None).create);
    }

    #[test]
    fn matching_topic_needs_nothing() {
        assert!(plan_topic(&spec(3), Some(&observed(3, Some("1000")))).is_noop());
    }

    #[test]
    fn partitions_grow_but_never_shrink() {
        assert_eq!(plan_topic(&spec(6), Some(&observed(3, Some("1000")))).grow_partitions_to, Some(6));
        let shrink = plan_topic(&spec(3), Some(&observed(6, Some("1000"))));
        assert!(shrink.is_noop());
        assert!(shrink.not_supported[0].contains("cannot remove partitions"), "{shrink:?}");
    }

    #[test]
    fn replication_change_is_not_supported() {
        let mut have = observed(3, Some("1000"));
        have.replication_factor = 3;
        assert!(plan_topic(&spec(3), Some(&have)).not_supported[0].contains("replication factor 3"));
    }

    #[test]
    fn changed_and_missing_configs_are_set() {
        let plan = plan_topic(&spec(3), Some(&observed(3, Some("5"))));
        assert_eq!(plan.set_configs.get("retention.ms").map(String::as_str), Some("1000"));
        assert_eq!(plan_topic(&spec(3), Some(&observed(3, None))).set_configs.len(), 1);
    }

    #[test]
    fn configs_are_left_alone_when_the_broker_cannot_describe_them() {
        let have = ObservedTopic { partitions: 3, replication_factor: 1, configs: None };
        assert!(plan_topic(&spec(3), Some(&have)).is_noop());
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
