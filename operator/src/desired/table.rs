//! The ClickHouse table for a pipeline: its columns, its DDL and the plan that brings an existing
//! table to it. Pure: the I/O lives in `reconcile::clickhouse`.
//!
//! Every row carries its identity, `record_id` (a hash of the record, or of the scheduled flight:
//! `spec.identity`), and a `version` (when ingest received it). The table is a
//! `ReplacingMergeTree(version)` sorted by `(scheduled_at, record_id)`: whatever path brings a
//! record twice (a client's retry, a broker's redelivery, a sink crash before its offset commit, a
//! replay of the topic), `FINAL` reads and merges keep one row per identity, the newest version.
//! The id determines `scheduled_at` in both modes, so the key dedups by identity alone.
//!
//! A table the operator creates carries an owner marker and its identity in its `COMMENT`
//! (`flightline.dev/owner=<namespace>/<name>/<uid> flightline.dev/identity=<mode>`), so who created it
//! survives a lost status and the identity, fixed once rows exist, cannot change under them.

use std::collections::BTreeMap;

use crate::crd::{ExtraColumnType, Identity, Partitioning};

/// Columns of the data set (18, renamed to SQL-friendly names), the derived ones and the sink's.
/// Types are spelled exactly as ClickHouse reports them in `system.columns`.
pub const BASE_COLUMNS: &[(&str, &str)] = &[
    ("scheduled_at", "DateTime"),                        // Fecha-I
    ("scheduled_flight", "String"),                      // Vlo-I
    ("scheduled_origin", "LowCardinality(String)"),      // Ori-I
    ("scheduled_destination", "LowCardinality(String)"), // Des-I
    ("scheduled_airline", "LowCardinality(String)"),     // Emp-I
    ("operated_at", "DateTime"),                         // Fecha-O
    ("operated_flight", "String"),                       // Vlo-O
    ("operated_origin", "LowCardinality(String)"),       // Ori-O
    ("operated_destination", "LowCardinality(String)"),  // Des-O
    ("operated_airline", "LowCardinality(String)"),      // Emp-O
    ("day", "UInt8"),                                    // DIA
    ("month", "UInt8"),                                  // MES
    ("year", "UInt16"),                                  // AÑO
    ("day_name", "LowCardinality(String)"),              // DIANOM
    ("flight_type", "Enum8('I' = 1, 'N' = 2)"),          // TIPOVUELO
    ("airline_name", "LowCardinality(String)"),          // OPERA
    ("origin_city", "LowCardinality(String)"),           // SIGLAORI
    ("destination_city", "LowCardinality(String)"),      // SIGLADES
    ("delay_minutes", "Int32"),
    ("delayed", "Bool"),
    ("period_day", "Enum8('morning' = 1, 'afternoon' = 2, 'night' = 3)"),
    ("high_season", "Bool"),
    ("record_id", "String"),
    ("version", "UInt64"),
    ("ingested_at", "DateTime64(3, 'UTC')"),
    ("source_partition", "Int32"),
    ("source_offset", "Int64"),
    ("source_topic", "LowCardinality(String)"),
];

const SORTING_KEY: &str = "scheduled_at, record_id";
/// Longest table name the operator accepts (the CRD allows the same for `spec.clickhouse.table`).
pub const MAX_TABLE_LEN: usize = 63;
/// Prefix of the owner marker in a table's comment.
pub const OWNER_MARKER: &str = "flightline.dev/owner=";
/// Prefix of the identity marker in a table's comment.
pub const IDENTITY_MARKER: &str = "flightline.dev/identity=";

/// The table as the pipeline wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    pub database: String,
    pub table: String,
    pub ttl_days: Option<u32>,
    pub partitioning: Partitioning,
    pub identity: Identity,
    /// Extra columns, in spec order.
    pub extra_columns: Vec<(String, ExtraColumnType)>,
}

/// The table as ClickHouse describes it (`system.columns`, `system.tables`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedTable {
    pub columns: BTreeMap<String, String>,
    /// `system.tables.partition_key`.
    pub partition_key: String,
    /// `system.tables.sorting_key`, e.g. `scheduled_at, source_partition, source_offset`.
    pub sorting_key: String,
    /// `system.tables.comment`, where the owner marker is.
    pub comment: String,
    /// The TTL expression, from `system.tables.engine_full`; empty when there is none.
    pub ttl: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TablePlan {
    pub create: bool,
    pub statements: Vec<String>,
    pub not_supported: Vec<String>,
}

impl TablePlan {
    /// Some difference cannot be made: carry out none of the plan.
    pub fn is_blocked(&self) -> bool {
        !self.not_supported.is_empty()
    }
}

impl TableSpec {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.database, self.table)
    }

    /// Every column with its type, base columns first.
    pub fn columns(&self) -> Vec<(String, String)> {
        let base = BASE_COLUMNS.iter().map(|(n, t)| (n.to_string(), t.to_string()));
        let extra = self.extra_columns.iter().map(|(n, t)| (n.clone(), extra_type(*t).to_string()));
        base.chain(extra).collect()
    }

    pub fn partition_key(&self) -> &'static str {
        match self.partitioning {
            Partitioning::Month => "toYYYYMM(scheduled_at)",
            Partitioning::Day => "toYYYYMMDD(scheduled_at)",
            Partitioning::None => "",
        }
    }

    /// The TTL expression as ClickHouse prints it back.
    pub fn ttl_expression(&self) -> String {
        self.ttl_days.map(|d| format!("scheduled_at + toIntervalDay({d})")).unwrap_or_default()
    }

    pub fn create_database(&self) -> String {
        format!("CREATE DATABASE IF NOT EXISTS `{}`", self.database)
    }

    /// `CREATE TABLE` without `IF NOT EXISTS`: a table someone else made in the meantime fails the
    /// statement (code 57) instead of being taken for this pipeline's.
    pub fn create_table(&self, owner: &TableOwner) -> String {
        let columns: Vec<String> = self.columns().iter().map(|(n, t)| format!("    `{n}` {t}")).collect();
        let mut ddl = format!(
            "CREATE TABLE `{}`.`{}`\n(\n{}\n)\nENGINE = ReplacingMergeTree(version)\n",
            self.database,
            self.table,
            columns.join(",\n")
        );
        if !self.partition_key().is_empty() {
            ddl += &format!("PARTITION BY {}\n", self.partition_key());
        }
        ddl += &format!("ORDER BY ({SORTING_KEY})\n");
        if self.ttl_days.is_some() {
            ddl += &format!("TTL {}\n", self.ttl_expression());
        }
        // Names are DNS labels and a uid is hex and '-': nothing to escape in the quoted string.
        ddl += &format!("COMMENT '{} {IDENTITY_MARKER}{}'\n", owner.marker(), self.identity.as_str());
        ddl
    }
}

fn extra_type(t: ExtraColumnType) -> &'static str {
    match t {
        ExtraColumnType::String => "String",
        ExtraColumnType::Int64 => "Int64",
        ExtraColumnType::Float64 => "Float64",
        ExtraColumnType::Bool => "Bool",
        ExtraColumnType::DateTime => "DateTime",
    }
}

/// The pipeline a table was created for, as its comment records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableOwner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl TableOwner {
    pub fn marker(&self) -> String {
        format!("{OWNER_MARKER}{}/{}/{}", self.namespace, self.name, self.uid)
    }

    /// The owner in a table comment, if it has a marker.
    pub fn from_comment(comment: &str) -> Option<Self> {
        let rest = &comment[comment.find(OWNER_MARKER)? + OWNER_MARKER.len()..];
        let marker = rest.split_whitespace().next().unwrap_or_default();
        let mut parts = marker.splitn(3, '/');
        let (namespace, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
        Some(Self { namespace: namespace.into(), name: name.into(), uid: uid.into() })
    }
}

/// The default table of a pipeline: `<namespace>_<name>_<length of namespace>_flights`, with '-'
/// written as '_'. Injective: namespaces and names are DNS labels (no '_'), so reading back from
/// the end, the number before `_flights` says where the namespace ends and every '_' before it
/// was a '-'. A name that does not fit in `MAX_TABLE_LEN` is refused: the spec must name a table.
pub fn default_table_name(namespace: &str, name: &str) -> Result<String, String> {
    let table = format!("{namespace}_{name}_{}_flights", namespace.len()).replace('-', "_");
    if table.len() > MAX_TABLE_LEN {
        return Err(format!(
            "the default table name {table:?} is longer than {MAX_TABLE_LEN} characters; name a table"
        ));
    }
    Ok(table)
}

/// The pipeline `(namespace, name)` whose default table `table` is, if it is one: the inverse of
/// `default_table_name`. The number before `_flights` is where the namespace ends, and every '_'
/// was a '-'; a count with a leading zero or parts that are not labels are no default's.
pub fn default_table_owner(table: &str) -> Option<(String, String)> {
    let (joined, length) = table.strip_suffix("_flights")?.rsplit_once('_')?;
    if length.starts_with('0') || !length.chars().all(|c| c.is_ascii_digit()) || !joined.is_ascii() {
        return None;
    }
    let length: usize = length.parse().ok()?;
    let (namespace, name) = (joined.get(..length)?, joined.get(length..)?.strip_prefix('_')?);
    let (namespace, name) = (namespace.replace('_', "-"), name.replace('_', "-"));
    (is_label(&namespace) && is_label(&name)).then_some((namespace, name))
}

/// A Kubernetes namespace or object name part: a DNS label (RFC 1123).
pub fn is_label(s: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&s.len())
        && s.starts_with(alphanumeric)
        && s.ends_with(alphanumeric)
        && s.chars().all(|c| alphanumeric(c) || c == '-')
}

/// The identity a table's comment records; a table without the marker was made by hand.
pub fn identity_from_comment(comment: &str) -> Option<Identity> {
    let rest = &comment[comment.find(IDENTITY_MARKER)? + IDENTITY_MARKER.len()..];
    Identity::parse(rest.split_whitespace().next().unwrap_or_default())
}

fn without_spaces(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// The statements that bring `have` to `want`, computed in full before anything runs: a plan with
/// any `not_supported` part must not be carried out at all (the caller checks `is_blocked`).
pub fn plan_table(want: &TableSpec, have: Option<&ObservedTable>, owner: &TableOwner) -> TablePlan {
    let Some(have) = have else {
        return TablePlan { create: true, statements: vec![want.create_table(owner)], not_supported: vec![] };
    };
    let mut plan = TablePlan::default();
    let target = format!("`{}`.`{}`", want.database, want.table);
    if without_spaces(&have.sorting_key) != without_spaces(SORTING_KEY) {
        // Tables of Flightline before record ids were sorted by Kafka position: their rows have no
        // identity to deduplicate by, and a sorting key cannot be rebuilt in place.
        plan.not_supported.push(format!(
            "table {} is sorted by ({}) and Flightline needs ({SORTING_KEY}) to store each record once: \
             the sorting key is fixed; name a new table in spec.clickhouse.table (and copy the rows with INSERT ... SELECT)",
            want.qualified(),
            have.sorting_key
        ));
    } else if let Some(have_identity) = identity_from_comment(&have.comment)
        && have_identity != want.identity
    {
        plan.not_supported.push(format!(
            "table {} identifies flights by {} and the spec asks for {}: the identity is fixed once the table exists",
            want.qualified(),
            have_identity.as_str(),
            want.identity.as_str()
        ));
    }
    for (name, wanted_type) in want.columns() {
        match have.columns.get(&name) {
            None => plan.statements.push(format!("ALTER TABLE {target} ADD COLUMN IF NOT EXISTS `{name}` {wanted_type}")),
            Some(actual) if *actual != wanted_type => plan.not_supported.push(format!(
                "column {name} of {} is {actual} and the spec asks for {wanted_type}: changing a column's type is not supported",
                want.qualified()
            )),
            Some(_) => {}
        }
    }
    if have.partition_key != want.partition_key() {
        plan.not_supported.push(format!(
            "table {} is partitioned by {:?} and the spec asks for {:?}: the partition key is fixed once the table exists",
            want.qualified(),
            have.partition_key,
            want.partition_key()
        ));
    }
    let ttl = want.ttl_expression();
    if have.ttl != ttl {
        plan.statements.push(if ttl.is_empty() {
            format!("ALTER TABLE {target} REMOVE TTL")
        } else {
            format!("ALTER TABLE {target} MODIFY TTL {ttl}")
        });
    }
    plan
}

/// Extracts the TTL expression from `system.tables.engine_full`.
pub fn ttl_from_engine_full(engine_full: &str) -> String {
    let Some(start) = engine_full.find(" TTL ") else {
        return String::new();
    };
    let rest = &engine_full[start + 5..];
    let end = rest.find(" SETTINGS ").unwrap_or(rest.len());
    rest[..end].trim().to_string()
}

/// Parses `365d` into days; empty means no TTL.
pub fn ttl_days(text: &str) -> Result<Option<u32>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let days = text.strip_suffix('d').ok_or_else(|| format!("{text:?} must be a number of days like 365d"))?;
    match days.parse::<u32>() {
        Ok(0) | Err(_) => Err(format!("{text:?} must be a positive number of days like 365d")),
        Ok(d) => Ok(Some(d)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TableSpec {
        TableSpec {
            database: "db".into(),
            table: "flights".into(),
            ttl_days: None,
            partitioning: Partitioning::Month,
            identity: Identity::Record,
            extra_columns: vec![],
        }
    }

    fn owner() -> TableOwner {
        TableOwner { namespace: "air".into(), name: "scl".into(), uid: "0b6e-11".into() }
    }

    fn plan_for(want: &TableSpec, have: Option<&ObservedTable>) -> TablePlan {
        plan_table(want, have, &owner())
    }

    fn observed(spec: &TableSpec) -> ObservedTable {
        ObservedTable {
            columns: spec.columns().into_iter().collect(),
            partition_key: spec.partition_key().into(),
            sorting_key: SORTING_KEY.into(),
            comment: format!("{} {IDENTITY_MARKER}{}", owner().marker(), spec.identity.as_str()),
            ttl: spec.ttl_expression(),
        }
    }

    #[test]
    fn ddl_has_every_column_the_dedup_key_and_the_owner() {
        let ddl = spec().create_table(&owner());
        assert_eq!(BASE_COLUMNS.len(), 28);
        for (name, ty) in BASE_COLUMNS {
            assert!(ddl.contains(&format!("`{name}` {ty}")), "{name} missing from {ddl}");
        }
        assert!(ddl.starts_with("CREATE TABLE `db`.`flights`"), "no IF NOT EXISTS: {ddl}");
        assert!(ddl.contains("ENGINE = ReplacingMergeTree(version)"));
        assert!(ddl.contains("ORDER BY (scheduled_at, record_id)"));
        assert!(ddl.contains("PARTITION BY toYYYYMM(scheduled_at)"));
        assert!(ddl.contains("COMMENT 'flightline.dev/owner=air/scl/0b6e-11 flightline.dev/identity=Record'"));
        assert!(!ddl.contains("TTL"));
    }

    #[test]
    fn missing_table_is_created_and_matching_table_is_left_alone() {
        assert!(plan_for(&spec(), None).create);
        let plan = plan_for(&spec(), Some(&observed(&spec())));
        assert_eq!(plan, TablePlan::default());
    }

    #[test]
    fn a_table_sorted_by_kafka_position_is_not_supported_and_says_what_to_do() {
        // What Flightline created before record ids.
        let mut have = observed(&spec());
        have.columns.remove("record_id");
        have.columns.remove("version");
        have.sorting_key = "scheduled_at, source_partition, source_offset, source_topic".into();
        let plan = plan_for(&spec(), Some(&have));
        assert!(plan.is_blocked(), "{plan:?}");
        assert!(plan.not_supported[0].contains("name a new table"), "{plan:?}");
    }

    #[test]
    fn the_identity_is_fixed_once_the_table_exists() {
        let have = observed(&spec());
        let mut want = spec();
        want.identity = Identity::ScheduledFlight;
        let plan = plan_for(&want, Some(&have));
        assert!(plan.is_blocked());
        assert!(plan.not_supported[0].contains("identifies flights by Record"), "{plan:?}");
        assert_eq!(identity_from_comment(&have.comment), Some(Identity::Record));
        assert_eq!(identity_from_comment("made by hand"), None);
        // A comment with both markers still names its owner.
        assert_eq!(TableOwner::from_comment(&have.comment), Some(owner()));
    }

    #[test]
    fn a_foreign_table_is_not_supported_as_a_whole() {
        // The hand-made `victim.t (id UInt64)`: another sorting key and no partitions.
        let have = ObservedTable {
            columns: BTreeMap::from([("id".to_string(), "UInt64".to_string())]),
            sorting_key: "id".into(),
            ..ObservedTable::default()
        };
        let mut want = spec();
        want.ttl_days = Some(1);
        let plan = plan_for(&want, Some(&have));
        assert!(plan.is_blocked());
        assert_eq!(plan.not_supported.len(), 2, "sorting key and partition key: {plan:?}");
        let mut wrong_key = observed(&spec());
        wrong_key.sorting_key = "scheduled_at".into();
        assert!(plan_table(&spec(), Some(&wrong_key), &owner()).is_blocked());
    }

    #[test]
    fn owner_marker_round_trips_and_is_found_in_a_longer_comment() {
        assert_eq!(TableOwner::from_comment(&owner().marker()), Some(owner()));
        let comment = format!("team data; {} (do not edit)", owner().marker());
        assert_eq!(TableOwner::from_comment(&comment), Some(owner()));
        assert_eq!(TableOwner::from_comment("made by hand"), None);
        assert_eq!(TableOwner::from_comment("flightline.dev/owner=only-one-part"), None);
    }

    #[test]
    fn default_table_names_are_distinct_per_namespace_and_name() {
        let cases = [
            ("air", "scl", "air_scl_3_flights"),
            ("a-b", "c", "a_b_c_3_flights"),
            ("a", "b-c", "a_b_c_1_flights"),
            ("a--b", "c", "a__b_c_4_flights"),
            ("a", "b--c", "a_b__c_1_flights"),
            ("a-1", "b", "a_1_b_3_flights"),
            ("a", "1-b", "a_1_b_1_flights"),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for (namespace, name, table) in cases {
            assert_eq!(default_table_name(namespace, name).as_deref(), Ok(table), "{namespace}/{name}");
            assert!(seen.insert(table), "{table} twice");
        }
        // Exhaustively over labels of 1 to 4 characters from {a, 1, -}: no two pairs share a name.
        let mut labels = vec!["a".to_string()];
        for _ in 0..3 {
            let longer: Vec<String> = labels.iter().flat_map(|l| ["a", "1", "-"].map(|c| format!("{l}{c}"))).collect();
            labels.extend(longer);
        }
        labels.sort();
        labels.dedup();
        labels.retain(|l| !l.ends_with('-'));
        let mut names = std::collections::BTreeMap::new();
        for namespace in &labels {
            for name in &labels {
                let table = default_table_name(namespace, name).unwrap();
                if let Some(other) = names.insert(table.clone(), (namespace, name)) {
                    panic!("{table}: {other:?} and {:?}", (namespace, name));
                }
            }
        }
        let long = default_table_name(&"n".repeat(40), &"p".repeat(20));
        assert!(long.unwrap_err().contains("name a table"));
    }

    #[test]
    fn default_table_names_decode_to_their_pipeline_and_nothing_else_does() {
        let cases: [(&str, Option<(&str, &str)>); 12] = [
            ("air_scl_3_flights", Some(("air", "scl"))),
            ("a_b_c_3_flights", Some(("a-b", "c"))),
            ("a_b_c_1_flights", Some(("a", "b-c"))),
            ("b_scl_1_flights", Some(("b", "scl"))),
            ("a_1_b_3_flights", Some(("a-1", "b"))),
            ("flights", None),
            ("my_flights", None),
            ("air_scl_03_flights", None),
            ("air_scl_9_flights", None),
            ("a__b_1_flights", None),
            ("a_b__1_flights", None),
            ("A_scl_1_flights", None),
        ];
        for (table, owner) in cases {
            let expected = owner.map(|(ns, n)| (ns.to_string(), n.to_string()));
            assert_eq!(default_table_owner(table), expected, "{table}");
        }
        for (namespace, name) in [("air", "scl"), ("a--b", "c"), ("a", "b--c"), ("team-7", "flights-eu")] {
            let table = default_table_name(namespace, name).unwrap();
            assert_eq!(default_table_owner(&table), Some((namespace.into(), name.into())), "{table}");
        }
    }

    #[test]
    fn new_extra_column_is_added() {
        let before = spec();
        let mut after = spec();
        after.extra_columns.push(("gate".into(), ExtraColumnType::String));
        let plan = plan_for(&after, Some(&observed(&before)));
        assert_eq!(plan.statements, vec!["ALTER TABLE `db`.`flights` ADD COLUMN IF NOT EXISTS `gate` String"]);
    }

    #[test]
    fn type_change_and_partition_change_are_not_supported() {
        let mut have = observed(&spec());
        have.columns.insert("delay_minutes".into(), "Float64".into());
        have.partition_key = "toYYYYMMDD(scheduled_at)".into();
        let plan = plan_for(&spec(), Some(&have));
        assert!(plan.statements.is_empty());
        assert_eq!(plan.not_supported.len(), 2, "{plan:?}");
    }

    #[test]
    fn ttl_is_modified_and_removed() {
        let mut want = spec();
        want.ttl_days = Some(30);
        let plan = plan_for(&want, Some(&observed(&spec())));
        assert_eq!(plan.statements, vec!["ALTER TABLE `db`.`flights` MODIFY TTL scheduled_at + toIntervalDay(30)"]);
        let plan = plan_for(&spec(), Some(&observed(&want)));
        assert_eq!(plan.statements, vec!["ALTER TABLE `db`.`flights` REMOVE TTL"]);
    }

    #[test]
    fn ttl_is_read_from_engine_full() {
        let full = "ReplacingMergeTree PARTITION BY toYYYYMM(scheduled_at) ORDER BY (a, b) TTL scheduled_at + toIntervalDay(30) SETTINGS index_granularity = 8192";
        assert_eq!(ttl_from_engine_full(full), "scheduled_at + toIntervalDay(30)");
        assert_eq!(ttl_from_engine_full("MergeTree ORDER BY a SETTINGS index_granularity = 8192"), "");
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(ttl_days(""), Ok(None));
        assert_eq!(ttl_days("365d"), Ok(Some(365)));
        assert!(ttl_days("0d").is_err());
        assert!(ttl_days("12h").is_err());
    }
}
