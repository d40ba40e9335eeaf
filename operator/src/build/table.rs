//! The ClickHouse table for a pipeline: its columns, its DDL and the plan that brings an existing
//! table to it. Pure: the I/O lives in `reconcile::clickhouse`.
//!
//! The sink writes one row per Kafka record and identifies it by `(source_partition, source_offset)`.
//! Both are in the sorting key of a `ReplacingMergeTree`, so a batch inserted twice (a crash
//! between insert and offset commit) collapses to one row, and `FINAL` queries never see both.

use std::collections::BTreeMap;

use crate::crd::{ExtraColumnType, Partitioning};

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
    ("ingested_at", "DateTime64(3, 'UTC')"),
    ("source_partition", "Int32"),
    ("source_offset", "Int64"),
];

const SORTING_KEY: &str = "scheduled_at, source_partition, source_offset";

/// The table as the pipeline wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    pub database: String,
    pub table: String,
    pub ttl_days: Option<u32>,
    pub partitioning: Partitioning,
    /// Extra columns, in spec order.
    pub extra_columns: Vec<(String, ExtraColumnType)>,
}

/// The table as ClickHouse describes it (`system.columns`, `system.tables`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedTable {
    pub columns: BTreeMap<String, String>,
    /// `system.tables.partition_key`.
    pub partition_key: String,
    /// The TTL expression, from `system.tables.engine_full`; empty when there is none.
    pub ttl: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TablePlan {
    pub create: bool,
    pub statements: Vec<String>,
    pub not_supported: Vec<String>,
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

    pub fn create_table(&self) -> String {
        let columns: Vec<String> = self.columns().iter().map(|(n, t)| format!("    `{n}` {t}")).collect();
        let mut ddl = format!(
            "CREATE TABLE IF NOT EXISTS `{}`.`{}`\n(\n{}\n)\nENGINE = ReplacingMergeTree\n",
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
        ddl
    }

    pub fn drop_table(&self) -> String {
        format!("DROP TABLE IF EXISTS `{}`.`{}`", self.database, self.table)
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

pub fn plan_table(want: &TableSpec, have: Option<&ObservedTable>) -> TablePlan {
    let Some(have) = have else {
        return TablePlan { create: true, statements: vec![want.create_table()], not_supported: vec![] };
    };
    let mut plan = TablePlan::default();
    let target = format!("`{}`.`{}`", want.database, want.table);
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
            extra_columns: vec![],
        }
    }

    fn observed(spec: &TableSpec) -> ObservedTable {
        ObservedTable {
            columns: spec.columns().into_iter().collect(),
            partition_key: spec.partition_key().into(),
            ttl: spec.ttl_expression(),
        }
    }

    #[test]
    fn ddl_has_every_column_and_the_dedup_key() {
        let ddl = spec().create_table();
        assert_eq!(BASE_COLUMNS.len(), 25);
        for (name, ty) in BASE_COLUMNS {
            assert!(ddl.contains(&format!("`{name}` {ty}")), "{name} missing from {ddl}");
        }
        assert!(ddl.contains("ENGINE = ReplacingMergeTree"));
        assert!(ddl.contains("ORDER BY (scheduled_at, source_partition, source_offset)"));
        assert!(ddl.contains("PARTITION BY toYYYYMM(scheduled_at)"));
        assert!(!ddl.contains("TTL"));
    }

    #[test]
    fn missing_table_is_created_and_matching_table_is_left_alone() {
        assert!(plan_table(&spec(), None).create);
        let plan = plan_table(&spec(), Some(&observed(&spec())));
        assert_eq!(plan, TablePlan::default());
    }

    #[test]
    fn new_extra_column_is_added() {
        let before = spec();
        let mut after = spec();
        after.extra_columns.push(("gate".into(), ExtraColumnType::String));
        let plan = plan_table(&after, Some(&observed(&before)));
        assert_eq!(plan.statements, vec!["ALTER TABLE `db`.`flights` ADD COLUMN IF NOT EXISTS `gate` String"]);
    }

    #[test]
    fn type_change_and_partition_change_are_not_supported() {
        let mut have = observed(&spec());
        have.columns.insert("delay_minutes".into(), "Float64".into());
        have.partition_key = "toYYYYMMDD(scheduled_at)".into();
        let plan = plan_table(&spec(), Some(&have));
        assert!(plan.statements.is_empty());
        assert_eq!(plan.not_supported.len(), 2, "{plan:?}");
    }

    #[test]
    fn ttl_is_modified_and_removed() {
        let mut want = spec();
        want.ttl_days = Some(30);
        let plan = plan_table(&want, Some(&observed(&spec())));
        assert_eq!(plan.statements, vec!["ALTER TABLE `db`.`flights` MODIFY TTL scheduled_at + toIntervalDay(30)"]);
        let plan = plan_table(&spec(), Some(&observed(&want)));
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
