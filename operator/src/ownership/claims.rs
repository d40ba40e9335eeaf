//! Claims between pipelines: two FlightPipelines that resolve to the same topic or table at the
//! same place. The pipeline whose status records that it created the resource keeps it; among the
//! others the oldest claim wins (creation time, then `namespace/name`: Strimzi's rule). The losers
//! get `ResourceConflict` and change nothing. Creation comes first so that neither an older
//! pipeline that names a younger one's resource later nor a tie within the 1 s resolution of
//! `creationTimestamp` can take a resource from the pipeline that made it. Pure: the caller passes
//! every pipeline it knows (the controller's reflector store, so a check costs no API call).

use std::cmp::Ordering;

use k8s_openapi::jiff::Timestamp;

use crate::crd::{StorageKind, StorageRecord};
use crate::spec::resolve::Resolved;

/// One external resource: what it is, its name, and where it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceKey {
    pub kind: StorageKind,
    /// Topic name, or `database.table`.
    pub name: String,
    /// Bootstrap servers or ClickHouse URL.
    pub location: String,
}

impl ResourceKey {
    pub fn topic(name: &str, bootstrap_servers: &str) -> Self {
        Self { kind: StorageKind::Topic, name: name.into(), location: bootstrap_servers.into() }
    }

    pub fn table(qualified: &str, url: &str) -> Self {
        Self { kind: StorageKind::Table, name: qualified.into(), location: url.into() }
    }

    /// The same resource: same kind and name, and a location that is the same system. Two
    /// bootstrap lists name one cluster when they share a server; URLs are compared without case
    /// and trailing '/'.
    pub fn same_as(&self, other: &ResourceKey) -> bool {
        self.kind == other.kind && self.name == other.name && same_location(self.kind, &self.location, &other.location)
    }

    pub fn describe(&self) -> String {
        let noun = match self.kind {
            StorageKind::Topic => "topic",
            StorageKind::Table => "table",
        };
        format!("{noun} {} at {}", self.name, self.location)
    }
}

impl From<&StorageRecord> for ResourceKey {
    fn from(r: &StorageRecord) -> Self {
        Self { kind: r.kind, name: r.name.clone(), location: r.location.clone() }
    }
}

fn same_location(kind: StorageKind, a: &str, b: &str) -> bool {
    match kind {
        StorageKind::Topic => {
            let servers = |s: &str| -> Vec<String> {
                s.split(',').map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect()
            };
            let b = servers(b);
            servers(a).iter().any(|server| b.contains(server))
        }
        StorageKind::Table => {
            let url = |s: &str| s.trim().trim_end_matches('/').to_ascii_lowercase();
            url(a) == url(b)
        }
    }
}

/// The resources a resolved pipeline uses.
pub fn resource_keys(resolved: &Resolved) -> Vec<ResourceKey> {
    let topics = std::iter::once(&resolved.topic).chain(resolved.dead_letter.as_ref());
    topics
        .map(|t| ResourceKey::topic(&t.name, &resolved.bootstrap_servers))
        .chain(std::iter::once(ResourceKey::table(&resolved.table.qualified(), &resolved.clickhouse_url)))
        .collect()
}

/// A pipeline and what it claims: what its spec resolves to plus what its status records
/// (a resource it created keeps its claim after the spec moves on, until Delete removes it).
#[derive(Clone, Debug)]
pub struct Claimant {
    /// `namespace/name`.
    pub pipeline: String,
    pub uid: String,
    pub created: Option<Timestamp>,
    pub keys: Vec<ResourceKey>,
    /// The keys its `status.storage` records as created by it (`createdByFlightline`).
    pub creator_of: Vec<ResourceKey>,
}

impl Claimant {
    pub fn creates(&self, key: &ResourceKey) -> bool {
        self.creator_of.iter().any(|k| k.same_as(key))
    }

    /// Its rank for `key` against `other`: the creator first, then the older (a pipeline without
    /// a creation time, not yet stored, is the newest), then by `namespace/name`.
    fn rank(&self, other: &Claimant, key: &ResourceKey) -> Ordering {
        let by_creation = other.creates(key).cmp(&self.creates(key));
        let by_time = match (self.created, other.created) {
            (Some(a), Some(b)) => a.cmp(&b),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        by_creation.then(by_time).then_with(|| self.pipeline.cmp(&other.pipeline))
    }
}

/// One of `me`'s resources that another pipeline wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub key: ResourceKey,
    /// `namespace/name` of the pipeline that wins it.
    pub winner: String,
    /// The winner created it (else it wins by age).
    pub by_creation: bool,
}

impl Conflict {
    pub fn message(&self) -> String {
        let why = if self.by_creation {
            "which created it; the pipeline that created a resource keeps it"
        } else {
            "which is older; the oldest claim wins"
        };
        format!(
            "{} is claimed by FlightPipeline {}, {why}. Name another, or delete that pipeline",
            self.key.describe(),
            self.winner
        )
    }
}

/// `me`'s resources that a pipeline in `all` ranking before it also claims (`all` may include `me`).
pub fn conflicts(me: &Claimant, all: &[Claimant]) -> Vec<Conflict> {
    let mut found: Vec<Conflict> = Vec::new();
    for key in &me.keys {
        let winner = all
            .iter()
            .filter(|other| other.uid != me.uid && other.rank(me, key) == Ordering::Less)
            .filter(|other| other.keys.iter().chain(&other.creator_of).any(|k| k.same_as(key)))
            .min_by(|a, b| a.rank(b, key));
        if let Some(winner) = winner
            && !found.iter().any(|c| c.key == *key)
        {
            let by_creation = winner.creates(key);
            found.push(Conflict { key: key.clone(), winner: winner.pipeline.clone(), by_creation });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const KAFKA: &str = "kafka-0:9092,kafka-1:9092";

    fn claimant(pipeline: &str, created: &str, keys: Vec<ResourceKey>) -> Claimant {
        let uid = format!("uid-{pipeline}");
        Claimant { pipeline: pipeline.into(), uid, created: created.parse().ok(), keys, creator_of: vec![] }
    }

    fn table(name: &str) -> ResourceKey {
        ResourceKey::table(name, "http://ch:8123")
    }

    #[test]
    fn the_oldest_claim_wins_and_names_itself() {
        let old = claimant("team-a/flights", "2026-01-01T00:00:00Z", vec![table("shared.t")]);
        let new = claimant("team-b/flights", "2026-02-01T00:00:00Z", vec![table("shared.t"), table("b.own")]);
        let all = [old.clone(), new.clone()];
        assert!(conflicts(&old, &all).is_empty());
        let lost = conflicts(&new, &all);
        assert_eq!(
            lost,
            vec![Conflict { key: table("shared.t"), winner: "team-a/flights".into(), by_creation: false }]
        );
        assert!(lost[0].message().contains("team-a/flights"), "{}", lost[0].message());
        // The winner gone (deleted), the loser is free.
        assert!(conflicts(&new, std::slice::from_ref(&new)).is_empty());
    }

    #[test]
    fn same_creation_time_is_decided_by_namespace_and_name() {
        let a = claimant("a/x", "2026-01-01T00:00:00Z", vec![table("d.t")]);
        let b = claimant("b/x", "2026-01-01T00:00:00Z", vec![table("d.t")]);
        let all = [b.clone(), a.clone()];
        assert!(conflicts(&a, &all).is_empty());
        assert_eq!(conflicts(&b, &all)[0].winner, "a/x");
    }

    #[test]
    fn of_several_older_claimants_the_oldest_is_named() {
        let all = [
            claimant("c/x", "2026-03-01T00:00:00Z", vec![table("d.t")]),
            claimant("b/x", "2026-02-01T00:00:00Z", vec![table("d.t")]),
            claimant("a/x", "2026-01-01T00:00:00Z", vec![table("d.t")]),
        ];
        assert_eq!(conflicts(&all[0], &all)[0].winner, "a/x");
        assert_eq!(conflicts(&all[1], &all)[0].winner, "a/x");
    }

    fn creator(pipeline: &str, created: &str, key: ResourceKey) -> Claimant {
        Claimant { creator_of: vec![key.clone()], ..claimant(pipeline, created, vec![key]) }
    }

    #[test]
    fn the_creator_keeps_its_resource_against_an_older_pipeline_that_names_it_later() {
        // b/x created its default table; the long-lived a/x then names it in its spec.
        let key = table("flightline.b_x_1_flights");
        let younger_creator = creator("b/x", "2026-06-01T00:00:00Z", key.clone());
        let older = claimant("a/x", "2026-01-01T00:00:00Z", vec![key.clone()]);
        let all = [older.clone(), younger_creator.clone()];
        assert!(conflicts(&younger_creator, &all).is_empty());
        let lost = conflicts(&older, &all);
        assert_eq!(lost, vec![Conflict { key: key.clone(), winner: "b/x".into(), by_creation: true }]);
        assert!(lost[0].message().contains("which created it"), "{}", lost[0].message());
        // A creator whose spec has moved on still holds what its status records as created.
        let moved_on = Claimant { keys: vec![table("d.other")], ..younger_creator };
        assert_eq!(conflicts(&older, &[older.clone(), moved_on])[0].winner, "b/x");
    }

    #[test]
    fn in_the_same_second_the_creator_wins_over_the_name_tie_break() {
        // creationTimestamp has 1 s resolution: a/x applied in the second b/x created the table
        // would win the name tie-break, and both would be blocked for ever.
        let key = table("flightline.b_x_1_flights");
        let b = creator("b/x", "2026-01-01T00:00:00Z", key.clone());
        let a = claimant("a/x", "2026-01-01T00:00:00Z", vec![key]);
        let all = [a.clone(), b.clone()];
        assert!(conflicts(&b, &all).is_empty());
        assert_eq!(conflicts(&a, &all)[0].winner, "b/x");
    }

    #[test]
    fn between_two_creators_the_older_wins() {
        // Both records say created (one is stale or forged): age decides, as without records.
        let key = table("d.t");
        let old = creator("b/x", "2026-01-01T00:00:00Z", key.clone());
        let new = creator("a/x", "2026-02-01T00:00:00Z", key);
        let all = [old.clone(), new.clone()];
        assert!(conflicts(&old, &all).is_empty());
        assert_eq!(conflicts(&new, &all)[0].winner, "b/x");
    }

    #[test]
    fn locations_decide_whether_two_names_are_one_resource() {
        let topic = |location: &str| ResourceKey::topic("air.scl.flights", location);
        assert!(topic(KAFKA).same_as(&topic("KAFKA-1:9092")), "one shared bootstrap server is one cluster");
        assert!(!topic(KAFKA).same_as(&topic("other:9092")));
        assert!(table("d.t").same_as(&ResourceKey::table("d.t", "HTTP://CH:8123/")));
        assert!(!table("d.t").same_as(&ResourceKey::table("d.t", "http://other:8123")));
        assert!(!table("d.t").same_as(&table("d.u")));
        // A topic and a table never clash, even with one name and location string.
        let odd = ResourceKey { kind: StorageKind::Topic, ..table("d.t") };
        assert!(!odd.same_as(&table("d.t")));
    }

    #[test]
    fn a_pipeline_never_conflicts_with_itself_and_unrelated_ones_pass() {
        let me = claimant("a/x", "2026-02-01T00:00:00Z", vec![table("d.t")]);
        let other = claimant("b/y", "2026-01-01T00:00:00Z", vec![table("d.u")]);
        assert!(conflicts(&me, &[me.clone(), other]).is_empty());
    }

    #[test]
    fn resolved_pipelines_claim_their_topics_and_table() {
        use crate::spec::resolve::{Defaults, resolve};
        let defaults = Defaults {
            kafka_bootstrap_servers: Some(KAFKA.into()),
            clickhouse_url: Some("http://ch:8123".into()),
            ..Defaults::default()
        };
        let r = resolve("air", "scl", &Default::default(), &defaults).unwrap();
        let keys = resource_keys(&r);
        assert_eq!(
            keys,
            vec![
                ResourceKey::topic("air.scl.flights", KAFKA),
                ResourceKey::topic("air.scl.flights.dlq", KAFKA),
                ResourceKey::table("flightline.air_scl_3_flights", "http://ch:8123"),
            ]
        );
        // The a-b/c and a/b-c pipelines of the issue: nothing in common.
        let one = resource_keys(&resolve("a-b", "c", &Default::default(), &defaults).unwrap());
        let two = resource_keys(&resolve("a", "b-c", &Default::default(), &defaults).unwrap());
        assert!(one.iter().all(|k| !two.iter().any(|o| o.same_as(k))), "{one:?} {two:?}");
    }

    /// The figure for the report: what one reconcile's claim check costs among 1,000 pipelines
    /// (resolving every spec, as after an operator start, and comparing keys, as at every check).
    #[test]
    fn a_check_among_a_thousand_pipelines_is_cheap() {
        use crate::spec::resolve::{Defaults, resolve};
        let defaults = Defaults {
            kafka_bootstrap_servers: Some(KAFKA.into()),
            clickhouse_url: Some("http://ch:8123".into()),
            ..Defaults::default()
        };
        let started = std::time::Instant::now();
        let all: Vec<Claimant> = (0..1000)
            .map(|i| {
                let r = resolve(&format!("team-{i}"), "flights", &Default::default(), &defaults).unwrap();
                claimant(&format!("team-{i}/flights"), "2026-01-01T00:00:00Z", resource_keys(&r))
            })
            .collect();
        let resolving = started.elapsed();
        let started = std::time::Instant::now();
        for me in all.iter().take(100) {
            assert!(conflicts(me, &all).is_empty());
        }
        let checking = started.elapsed() / 100;
        println!("resolve 1,000 specs: {resolving:?}; one check against 1,000 claimants: {checking:?}");
        assert!(checking < std::time::Duration::from_millis(200), "{checking:?}");
    }
}
