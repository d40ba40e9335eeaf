//! Whether a pipeline may change a topic or table it found, and what its status records about
//! each. Pure.
//!
//! A pipeline changes only what it created or what its spec adopts (`adoptExisting`). "Created" is
//! known from `status.storage`, written before each create (and cleared when the create finds the
//! resource already there), and for tables also from the owner marker in the table's comment, so
//! it survives a lost status. `deletionPolicy: Delete` deletes only records marked as created.

pub mod claims;

use crate::crd::{StorageKind, StorageRecord};
use crate::desired::table::TableOwner;
use crate::ownership::claims::ResourceKey;

/// What a pipeline may do with one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Not there: record the intent, then create it.
    Missing,
    /// There, and this pipeline created it.
    Created,
    /// There, created by someone else, and the spec adopts it (or adopted it before).
    Adopted,
    /// There, not this pipeline's, not adopted: leave it alone. The message says why and how to adopt.
    Conflict(String),
}

impl Ownership {
    pub fn may_change(&self) -> bool {
        !matches!(self, Ownership::Conflict(_))
    }
}

/// What is known about a resource that exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found<'a> {
    /// For tables: the owner marker in the comment, if any.
    pub marker: Option<&'a TableOwner>,
    /// The pipeline the marker names still exists (its uid is in the controller's store).
    pub marker_is_live: bool,
}

/// Decides for one resource. `me` is this pipeline (namespace, name, uid); `records` its
/// `status.storage`; `adopt` the spec's `adoptExisting` for this kind.
pub fn decide(
    key: &ResourceKey,
    found: Option<Found<'_>>,
    me: &TableOwner,
    records: &[StorageRecord],
    adopt: bool,
) -> Ownership {
    let Some(found) = found else {
        return Ownership::Missing;
    };
    let record = records.iter().find(|r| ResourceKey::from(*r).same_as(key));
    match found.marker {
        // The table says who made it; that outranks a record (which a lost race can leave behind).
        Some(owner) if owner.uid == me.uid => return Ownership::Created,
        // adoptExisting is for what no live pipeline made: a live creator's table is never taken.
        Some(owner) if found.marker_is_live => {
            return Ownership::Conflict(format!(
                "{} was created by FlightPipeline {}/{}, which still exists; it is left as it is \
                 (adoptExisting adopts only resources that no existing pipeline created)",
                key.describe(),
                owner.namespace,
                owner.name
            ));
        }
        Some(owner) if !adopt && record.is_none_or(|r| r.created_by_flightline) => {
            let earlier = if owner.namespace == me.namespace && owner.name == me.name {
                " (an earlier pipeline of the same name, since deleted with Retain)"
            } else {
                ""
            };
            return Ownership::Conflict(format!(
                "{} was created by FlightPipeline {}/{}{earlier}, not by this one; it is left as it is. {}",
                key.describe(),
                owner.namespace,
                owner.name,
                how_to_adopt(key.kind)
            ));
        }
        Some(_) => return Ownership::Adopted,
        None => {}
    }
    match record {
        Some(r) if r.created_by_flightline => Ownership::Created,
        // Adopted before (or in use before ownership was recorded): stays in use.
        Some(_) => Ownership::Adopted,
        None if adopt => Ownership::Adopted,
        None => Ownership::Conflict(format!(
            "{} already exists and this pipeline did not create it; it is left as it is. {}",
            key.describe(),
            how_to_adopt(key.kind)
        )),
    }
}

fn how_to_adopt(kind: StorageKind) -> &'static str {
    match kind {
        StorageKind::Topic => {
            "To use it, set spec.kafka.adoptExisting: true (the operator then manages its partitions, \
             retention and extra configs, never changes its cleanup.policy, and never deletes it)"
        }
        StorageKind::Table => {
            "To use it, set spec.clickhouse.adoptExisting: true (the operator then adds its columns and \
             sets its TTL, and never drops it)"
        }
    }
}

pub fn record(key: &ResourceKey, created: bool) -> StorageRecord {
    StorageRecord {
        kind: key.kind,
        name: key.name.clone(),
        location: key.location.clone(),
        created_by_flightline: created,
    }
}

/// The records after a reconcile: every resource in use, and every resource this pipeline created
/// earlier and no longer uses (so that `Delete` still removes it). Adopted resources no longer in
/// use are forgotten.
pub fn next_records(previous: &[StorageRecord], in_use: &[(ResourceKey, bool)]) -> Vec<StorageRecord> {
    let mut records: Vec<StorageRecord> = in_use.iter().map(|(key, created)| record(key, *created)).collect();
    for old in previous.iter().filter(|r| r.created_by_flightline) {
        if !in_use.iter().any(|(key, _)| key.same_as(&ResourceKey::from(old))) {
            records.push(old.clone());
        }
    }
    records.sort();
    records.dedup();
    records
}

/// `status.storage` of a pipeline reconciled before ownership was recorded: the topics and table
/// its status names were in use, but whether it created them is unknown, so they count as adopted
/// (kept in use, never deleted).
pub fn legacy_records(topics: &[String], table: Option<&str>, bootstrap: &str, url: &str) -> Vec<StorageRecord> {
    let topics = topics.iter().map(|t| record(&ResourceKey::topic(t, bootstrap), false));
    topics.chain(table.map(|t| record(&ResourceKey::table(t, url), false))).collect()
}

/// The records `Delete` removes: those created by this pipeline.
pub fn to_delete(records: &[StorageRecord]) -> Vec<&StorageRecord> {
    records.iter().filter(|r| r.created_by_flightline).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> TableOwner {
        TableOwner { namespace: "air".into(), name: "scl".into(), uid: "uid-1".into() }
    }

    fn table() -> ResourceKey {
        ResourceKey::table("victim.t", "http://ch:8123")
    }

    fn topic() -> ResourceKey {
        ResourceKey::topic("air.scl.flights", "kafka:9092")
    }

    const UNMARKED: Option<Found<'static>> = Some(Found { marker: None, marker_is_live: false });

    #[test]
    fn decisions() {
        let mine = me();
        let other = TableOwner { namespace: "team-b".into(), name: "flights".into(), uid: "uid-2".into() };
        let earlier = TableOwner { uid: "uid-0".into(), ..me() };
        let marked = |o| Some(Found { marker: Some(o), marker_is_live: false });
        let marked_live = |o| Some(Found { marker: Some(o), marker_is_live: true });
        let created = [record(&table(), true)];
        let adopted = [record(&table(), false)];
        let conflict = |o: &Ownership| matches!(o, Ownership::Conflict(_));
        // (what exists, records, adoptExisting) → decision
        type Case<'a> = (&'a str, Option<Found<'a>>, &'a [StorageRecord], bool, fn(&Ownership) -> bool);
        let cases: Vec<Case> = vec![
            ("missing", None, &[], false, |o| *o == Ownership::Missing),
            ("hand-made, not adopted", UNMARKED, &[], false, conflict),
            ("hand-made, adopted", UNMARKED, &[], true, |o| *o == Ownership::Adopted),
            ("recorded as created", UNMARKED, &created, false, |o| *o == Ownership::Created),
            ("adopted earlier, flag off since", UNMARKED, &adopted, false, |o| *o == Ownership::Adopted),
            ("marked as mine, status lost", marked(&mine), &[], false, |o| *o == Ownership::Created),
            ("marked by another pipeline", marked(&other), &[], false, conflict),
            ("marked by another, adopted", marked(&other), &[], true, |o| *o == Ownership::Adopted),
            ("marked by another, lost race", marked(&other), &created, false, conflict),
            ("marked by my earlier namesake", marked(&earlier), &[], false, conflict),
            ("marked by another that exists, adopted", marked_live(&other), &[], true, conflict),
            ("marked by another that exists, adopted before", marked_live(&other), &adopted, true, conflict),
            ("marked by another that exists, forged record", marked_live(&other), &created, true, conflict),
            ("marked as mine, live", marked_live(&mine), &[], false, |o| *o == Ownership::Created),
        ];
        for (case, found, records, adopt, expected) in cases {
            let decision = decide(&table(), found, &mine, records, adopt);
            assert!(expected(&decision), "{case}: {decision:?}");
        }
    }

    #[test]
    fn conflict_messages_name_the_resource_the_owner_and_the_way_to_adopt() {
        let other = TableOwner { namespace: "team-b".into(), name: "flights".into(), uid: "uid-2".into() };
        let Ownership::Conflict(message) =
            decide(&table(), Some(Found { marker: Some(&other), marker_is_live: false }), &me(), &[], false)
        else {
            panic!("expected a conflict")
        };
        assert!(message.contains("victim.t") && message.contains("team-b/flights"), "{message}");
        assert!(message.contains("spec.clickhouse.adoptExisting: true"), "{message}");
        let live = Some(Found { marker: Some(&other), marker_is_live: true });
        let Ownership::Conflict(message) = decide(&table(), live, &me(), &[], true) else {
            panic!("adopting a live pipeline's table must be a conflict")
        };
        assert!(message.contains("team-b/flights, which still exists"), "{message}");
        let Ownership::Conflict(message) = decide(&topic(), UNMARKED, &me(), &[], false) else {
            panic!("expected a conflict")
        };
        assert!(message.contains("topic air.scl.flights at kafka:9092"), "{message}");
        assert!(message.contains("spec.kafka.adoptExisting: true"), "{message}");
    }

    #[test]
    fn records_keep_what_was_created_and_forget_what_was_only_adopted() {
        let old_topic = ResourceKey::topic("old.name", "kafka:9092");
        let old_adopted = ResourceKey::topic("borrowed", "kafka:9092");
        let previous = [record(&old_topic, true), record(&old_adopted, false), record(&table(), true)];
        let next = next_records(&previous, &[(topic(), true), (table(), true)]);
        assert_eq!(next.len(), 3, "{next:?}");
        assert!(next.contains(&record(&old_topic, true)), "a created topic stays recorded until Delete");
        assert!(!next.iter().any(|r| r.name == "borrowed"));
        assert_eq!(to_delete(&next).len(), 3);
        let adopted_only = next_records(&[], &[(topic(), false)]);
        assert!(to_delete(&adopted_only).is_empty(), "an adopted topic is never deleted");
    }

    #[test]
    fn legacy_pipelines_count_as_adopters() {
        let records = legacy_records(&["t".into(), "t.dlq".into()], Some("db.t"), "kafka:9092", "http://ch:8123");
        assert_eq!(records.len(), 3);
        assert!(to_delete(&records).is_empty());
        let legacy_table = ResourceKey::table("db.t", "http://ch:8123");
        assert_eq!(decide(&legacy_table, UNMARKED, &me(), &records, false), Ownership::Adopted);
    }
}
