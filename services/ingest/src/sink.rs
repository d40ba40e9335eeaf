//! `flightline-ingest sink`: Kafka → ClickHouse in batches.
//!
//! Each batch is inserted, then (and only then) its offsets are committed. A crash between the two
//! redelivers the batch; rows carry their `(source_topic, source_partition, source_offset)` in the
//! table's sorting key (a `ReplacingMergeTree`), so the second copy collapses into the first and
//! `FINAL` queries never see it.
//!
//! Nothing is lost and nothing stalls the partition:
//! - A batch holds at most `SINK_BATCH_SIZE` records and `SINK_MAX_BATCH_BYTES` of payload.
//! - Its rows are grouped by day of `scheduled_at` and inserted at most `MAX_DAYS_PER_INSERT` days
//!   at a time, so no insert reaches ClickHouse's limit of 100 partitions per insert, whatever the
//!   table's partitioning (month, day or none) and the server's time zone.
//! - A ClickHouse error is transient (network, timeout, overload, anything unknown: retried with
//!   backoff, nothing committed) or permanent (the rows themselves: see `PERMANENT_CODES`). A
//!   permanent one splits the insert in halves until the refused rows are alone; they go to the
//!   dead-letter topic with ClickHouse's message, the rest is stored. Splitting is bounded (see
//!   `bisect`): a refusal of every row costs 3 inserts, never more than `MAX_SPLIT_INSERTS`.
//! - Records that are not a valid flight go to the dead-letter topic as well. Sending there is
//!   retried until the broker takes them. With no dead-letter topic, each dropped record is
//!   logged and counted in `flightline_sink_dropped_records_total{reason}`.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clickhouse::Row;
use flightline_service::config;
use flightline_service::flight::{Identity, PeriodDay, read_one_json};
use flightline_service::server::{self, ReadyCheck, Telemetry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;

/// Days of `scheduled_at` (UTC) in one insert. ClickHouse refuses an insert touching more than 100
/// partitions (`max_partitions_per_insert_block`); a day is the finest partitioning a table has, and
/// the server's time zone may cut each UTC day in two: 50 days are at most 100 partitions anywhere.
/// (A server set lower still is handled: its refusal splits the insert.)
pub const MAX_DAYS_PER_INSERT: usize = 50;
/// ClickHouse's message in a dead letter's `flightline.reason` header and in logs, at most.
const MAX_REASON_BYTES: usize = 1_024;
const INSERT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
const INSERT_END_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A dead letter the broker refuses for its size or form is sent again with at most this much of
/// its payload and key (and the original size in a header): the reason and origin always arrive.
const TRUNCATED_DEAD_LETTER_BYTES: usize = 1_024;
/// Dead letters failing this long without a break make the sink unready: the partition is stalled
/// behind them, and the operator's status and the alerts must say so.
pub const DEAD_LETTERS_UNREADY_AFTER: Duration = Duration::from_secs(5 * 60);

/// A table row; field order and types follow `operator/src/build/table.rs`.
#[derive(Row, Serialize, Debug, Clone, PartialEq)]
pub struct FlightRow {
    pub scheduled_at: u32,
    pub scheduled_flight: String,
    pub scheduled_origin: String,
    pub scheduled_destination: String,
    pub scheduled_airline: String,
    pub operated_at: u32,
    pub operated_flight: String,
    pub operated_origin: String,
    pub operated_destination: String,
    pub operated_airline: String,
    pub day: u8,
    pub month: u8,
    pub year: u16,
    pub day_name: String,
    /// Enum8: 1 = I, 2 = N.
    pub flight_type: i8,
    pub airline_name: String,
    pub origin_city: String,
    pub destination_city: String,
    pub delay_minutes: i32,
    pub delayed: bool,
    /// Enum8: 1 = morning, 2 = afternoon, 3 = night.
    pub period_day: i8,
    pub high_season: bool,
    /// The identity (`Flight::record_id`); the table keeps one row per id.
    pub record_id: String,
    /// Of two rows with one id, the one with the larger version stays.
    pub version: u64,
    /// DateTime64(3): milliseconds since the epoch.
    pub ingested_at: i64,
    pub source_partition: i32,
    pub source_offset: i64,
    pub source_topic: String,
}

/// Why a record was not stored: a fixed set, the `reason` label of the dropped-records metric.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DropReason {
    /// Not one JSON flight object.
    Unparseable,
    /// A flight with invalid fields.
    Invalid,
    /// ClickHouse refused the row itself (a permanent error).
    RefusedByClickhouse,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [DropReason::Unparseable, DropReason::Invalid, DropReason::RefusedByClickhouse];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Unparseable => "unparseable",
            DropReason::Invalid => "invalid",
            DropReason::RefusedByClickhouse => "refused_by_clickhouse",
        }
    }
}

/// Where a record comes from.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The record's version: ingest's `flightline-version` header, else (another producer) the
    /// record's Kafka timestamp in nanoseconds, the same scale.
    pub version: u64,
}

/// The offset to commit for each partition of a batch: one past its last record. One entry per
/// partition, not per record (a batch of 2,000 records is a handful of entries, not 2,000).
pub fn offsets_to_commit<'a>(
    records: impl IntoIterator<Item = (&'a str, i32, i64)>,
) -> std::collections::BTreeMap<(&'a str, i32), i64> {
    let mut next = std::collections::BTreeMap::new();
    for (topic, partition, offset) in records {
        let entry = next.entry((topic, partition)).or_insert(offset + 1);
        *entry = (*entry).max(offset + 1);
    }
    next
}

/// The version of a Kafka record, from its header or its timestamp (see `Source::version`).
pub fn version_of(header: Option<&[u8]>, timestamp_ms: Option<i64>) -> u64 {
    header
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or_else(|| timestamp_ms.and_then(|ms| u64::try_from(ms).ok()).unwrap_or(0).saturating_mul(1_000_000))
}

/// Parses a Kafka record into a row, or says why it cannot be stored. The checks are ingest's own
/// (`Flight` validation), so a record ingest accepted always becomes a row. The id is computed
/// here from the content, never taken from a header: a replay or another producer's copy of a
/// record gets the same id as the original.
pub fn to_row(
    payload: Option<&[u8]>,
    source: Source<'_>,
    ingested_at_ms: i64,
    identity: Identity,
) -> Result<FlightRow, (DropReason, String)> {
    let payload = payload.ok_or((DropReason::Unparseable, "empty message".to_string()))?;
    let flight = read_one_json(payload).map_err(|e| match e {
        Ok(body) => (DropReason::Unparseable, body.to_string()),
        Err(errors) => (
            DropReason::Invalid,
            errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "),
        ),
    })?;
    let d = flight.derive().ok_or((DropReason::Invalid, "times out of range".to_string()))?;
    Ok(FlightRow {
        record_id: flight.record_id(identity),
        version: source.version,
        scheduled_at: d.scheduled_epoch,
        operated_at: d.operated_epoch,
        flight_type: if flight.flight_type == "I" { 1 } else { 2 },
        delay_minutes: d.delay_minutes,
        delayed: d.delayed,
        period_day: match d.period_day {
            PeriodDay::Morning => 1,
            PeriodDay::Afternoon => 2,
            PeriodDay::Night => 3,
        },
        high_season: d.high_season,
        ingested_at: ingested_at_ms,
        source_partition: source.partition,
        source_offset: source.offset,
        source_topic: source.topic.to_string(),
        scheduled_flight: flight.scheduled_flight,
        scheduled_origin: flight.scheduled_origin,
        scheduled_destination: flight.scheduled_destination,
        scheduled_airline: flight.scheduled_airline,
        operated_flight: flight.operated_flight,
        operated_origin: flight.operated_origin,
        operated_destination: flight.operated_destination,
        operated_airline: flight.operated_airline,
        day: flight.day,
        month: flight.month,
        year: flight.year,
        day_name: flight.day_name,
        airline_name: flight.airline_name,
        origin_city: flight.origin_city,
        destination_city: flight.destination_city,
    })
}

/// Sorts rows by day of `scheduled_at` and cuts them into inserts of at most `max_days` days each.
pub fn chunks_by_day<T>(rows: &mut [T], scheduled_at: impl Fn(&T) -> u32, max_days: usize) -> Vec<Range<usize>> {
    rows.sort_by_key(|r| scheduled_at(r) / 86_400);
    let mut chunks = Vec::new();
    let (mut start, mut days, mut last_day) = (0, 0, None);
    for (i, row) in rows.iter().enumerate() {
        let day = scheduled_at(row) / 86_400;
        if last_day != Some(day) {
            if days == max_days {
                chunks.push(start..i);
                (start, days) = (i, 0);
            }
            days += 1;
            last_day = Some(day);
        }
    }
    if start < rows.len() {
        chunks.push(start..rows.len());
    }
    chunks
}

/// Inserts spent at most on splitting the refused inserts of one batch. Each insert makes a part in
/// ClickHouse: unbounded halving of a batch whose every row is refused would cost 2N-1 inserts
/// (about 20,000 for 10,000 rows) and end in "Too many parts".
pub const MAX_SPLIT_INSERTS: usize = 64;

/// Inserts `chunks` and finds the rows ClickHouse refuses for good: a refused insert is split in
/// halves, tried one after the other, until each refused row is alone. Returns the refused ranges
/// with ClickHouse's message. Bounded: when both halves are refused with the same message, the
/// rows share the fault (a CHECK every row fails) and both are refused whole; and once
/// `max_split_inserts` are spent, what remains unsplit is refused whole, with the message of the
/// insert that held it.
pub async fn bisect(
    chunks: Vec<Range<usize>>,
    max_split_inserts: usize,
    mut insert: impl AsyncFnMut(Range<usize>) -> Result<(), String>,
) -> Vec<(Range<usize>, String)> {
    let mut refused = Vec::new();
    // The halves of a refused insert, and ClickHouse's message for their whole.
    let mut halves: Vec<(Range<usize>, Range<usize>, String)> = Vec::new();
    let split = |range: Range<usize>, why: String, halves: &mut Vec<_>, refused: &mut Vec<_>| {
        if range.len() == 1 {
            refused.push((range, why));
        } else {
            let middle = range.start + range.len() / 2;
            halves.push((range.start..middle, middle..range.end, why));
        }
    };
    let mut budget = max_split_inserts;
    for chunk in chunks {
        if let Err(why) = insert(chunk.clone()).await {
            split(chunk, why, &mut halves, &mut refused);
        }
        while let Some((left, right, why)) = halves.pop() {
            if budget < 2 {
                let note = format!("not isolated ({max_split_inserts} split inserts spent): {why}");
                refused.push((left.start..right.end, note));
                continue;
            }
            budget -= 2;
            let (l, r) = (insert(left.clone()).await, insert(right.clone()).await);
            match (l, r) {
                (Err(l), Err(r)) if l == r => refused.push((left.start..right.end, l)),
                (l, r) => {
                    // Right first on the stack: the left half is searched first.
                    if let Err(r) = r {
                        split(right, r, &mut halves, &mut refused);
                    }
                    if let Err(l) = l {
                        split(left, l, &mut halves, &mut refused);
                    }
                }
            }
        }
    }
    refused
}

/// What to do about a failed insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// ClickHouse or the way to it is unwell: retry the same rows later, commit nothing.
    Transient,
    /// The rows themselves are refused: split the insert to find them.
    Permanent,
}

/// ClickHouse error codes caused by the rows of an insert (bad data): parse and conversion
/// errors, values out of a type's range, a table CONSTRAINT or a `throwIf` default violated.
/// Everything else, known or not, is transient: 159 TIMEOUT_EXCEEDED, 202
/// TOO_MANY_SIMULTANEOUS_QUERIES, 241 MEMORY_LIMIT_EXCEEDED, 242 TABLE_IS_READ_ONLY, 60/81
/// UNKNOWN_TABLE/DATABASE and 16 NO_SUCH_COLUMN_IN_TABLE (the operator repairs the table), 516
/// authentication, 5xx without a code, network errors and client timeouts. Retrying a permanent
/// error would stall the partition for ever; sending a transient one to the dead-letter topic
/// would empty a healthy batch into it, so only codes known to be about the data are here.
pub const PERMANENT_CODES: [(u32, &str); 14] = [
    (6, "CANNOT_PARSE_TEXT"),
    (27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED"),
    (38, "CANNOT_PARSE_DATE"),
    (41, "CANNOT_PARSE_DATETIME"),
    (53, "TYPE_MISMATCH"),
    (69, "ARGUMENT_OUT_OF_BOUND"),
    (70, "CANNOT_CONVERT_TYPE"),
    (72, "CANNOT_PARSE_NUMBER"),
    (117, "INCORRECT_DATA"),
    (131, "TOO_LARGE_STRING_SIZE"),
    (321, "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"),
    (395, "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO"),
    (469, "VIOLATED_CONSTRAINT"),
    (691, "UNKNOWN_ELEMENT_OF_ENUM"),
];

/// 252 TOO_MANY_PARTS is both "too many partitions for single INSERT block" (these rows: split)
/// and "too many parts" (merges behind: wait).
const TOO_MANY_PARTS: u32 = 252;
const TOO_MANY_PARTITIONS_MESSAGE: &str = "Too many partitions for single INSERT block";

/// Sorts a ClickHouse error message (`Code: N. DB::Exception: ...`, as the HTTP interface sends it).
pub fn classify_message(message: &str) -> Failure {
    let code = message.find("Code: ").and_then(|at| {
        let digits: String = message[at + 6..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    match code {
        Some(TOO_MANY_PARTS) if message.contains(TOO_MANY_PARTITIONS_MESSAGE) => Failure::Permanent,
        Some(code) if PERMANENT_CODES.iter().any(|(c, _)| *c == code) => Failure::Permanent,
        _ => Failure::Transient,
    }
}

pub fn classify(error: &clickhouse::error::Error) -> Failure {
    match error {
        clickhouse::error::Error::BadResponse(message) => classify_message(message),
        _ => Failure::Transient,
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A dead letter the broker will never take as it is (too large, or a record it cannot read):
/// retrying it would stall the partition for ever. Anything else (a broker away, a full queue,
/// a timeout) is worth retrying.
pub fn refused_for_good(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error,
        KafkaError::MessageProduction(
            MessageSizeTooLarge | InvalidMessageSize | InvalidMessage | InvalidRecord | MessageBatchTooLarge
        )
    )
}

/// Readiness of the dead-letter path: failing for `DEAD_LETTERS_UNREADY_AFTER` without a
/// success in between is unready.
pub fn dead_letters_ready(failing_for: Option<Duration>) -> Result<(), String> {
    match failing_for {
        Some(failing) if failing >= DEAD_LETTERS_UNREADY_AFTER => Err(format!(
            "the dead-letter topic has refused every send for {} s: the partition is stalled",
            failing.as_secs()
        )),
        _ => Ok(()),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

struct Metrics {
    rows: Counter,
    dead_letters: Counter,
    dead_letter_errors: Counter,
    dead_letters_truncated: Counter,
    dropped: Family<ReasonLabels, Counter>,
    batch_size: Histogram,
    insert_seconds: Histogram,
    insert_errors: Counter,
    consumer_errors: Counter,
    lag: Family<PartitionLabels, Gauge>,
    freshness: Histogram,
}

impl Metrics {
    fn register(telemetry: &Telemetry) -> Arc<Self> {
        let m = Self {
            rows: Counter::default(),
            dead_letters: Counter::default(),
            dead_letter_errors: Counter::default(),
            dead_letters_truncated: Counter::default(),
            dropped: Family::default(),
            batch_size: Histogram::new([1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0]),
            insert_seconds: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            insert_errors: Counter::default(),
            consumer_errors: Counter::default(),
            lag: Family::default(),
            freshness: Histogram::new([
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
            ]),
        };
        // Every reason is there from the start, at 0: a rate over it never sees a missing series.
        for reason in DropReason::ALL {
            let _ = m.dropped.get_or_create(&ReasonLabels { reason: reason.as_str() });
        }
        telemetry.register("rows", "Rows inserted into ClickHouse", m.rows.clone());
        telemetry.register("dead_letters", "Records sent to the dead-letter topic", m.dead_letters.clone());
        telemetry.register(
            "dead_letter_errors",
            "Failed sends to the dead-letter topic (retried)",
            m.dead_letter_errors.clone(),
        );
        telemetry.register(
            "dead_letters_truncated",
            "Dead letters the broker refused whole (too large or malformed), sent with a truncated payload",
            m.dead_letters_truncated.clone(),
        );
        telemetry.register(
            "dropped_records",
            "Records not stored and not dead-lettered (no dead-letter topic), by reason",
            m.dropped.clone(),
        );
        telemetry.register("batch_size", "Records per batch", m.batch_size.clone());
        telemetry.register_with_unit("insert_duration", "ClickHouse insert latency", m.insert_seconds.clone());
        telemetry.register("insert_errors", "Failed ClickHouse inserts (retried or split)", m.insert_errors.clone());
        telemetry.register(
            "consumer_errors",
            "Kafka consumer errors (a broker away, a fetch refused; librdkafka retries by itself)",
            m.consumer_errors.clone(),
        );
        telemetry.register("consumer_lag", "Records in the topic not yet committed, by partition", m.lag.clone());
        telemetry.register_with_unit(
            "freshness",
            "Time from a record's Kafka timestamp (its ingestion) to its insert into ClickHouse",
            m.freshness.clone(),
        );
        Arc::new(m)
    }
}

struct Settings {
    bootstrap: String,
    topic: String,
    dead_letter_topic: Option<String>,
    batch_size: usize,
    batch_bytes: usize,
    linger: Duration,
    table: String,
    identity: Identity,
}

pub async fn run(config: config::SinkConfig) -> anyhow::Result<()> {
    let telemetry = Telemetry::new("sink");
    let metrics = Metrics::register(&telemetry);
    // TLS and SASL are read again by each client (`client_config`); checked here, before anything starts.
    flightline_service::connect::KafkaSecurity::from_args(&config.kafka_security)?;
    let settings = Settings {
        bootstrap: config.kafka.bootstrap_servers.clone(),
        topic: config.kafka.topic.clone(),
        dead_letter_topic: config.sink.dead_letter_topic().map(str::to_string),
        batch_size: usize::try_from(config.sink.batch_size)?,
        batch_bytes: usize::try_from(config.sink.max_batch_bytes)?,
        linger: Duration::from_millis(config.sink.linger_ms),
        table: config.clickhouse.table.clone(),
        identity: config.records.identity(),
    };
    if settings.dead_letter_topic.is_none() {
        tracing::warn!("no dead-letter topic: records that cannot be stored are dropped (logged and counted)");
    }
    let consumer: StreamConsumer = crate::produce::client_config(&settings.bootstrap)?
        .set("group.id", &config.sink.consumer_group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // A ClickHouse outage holds a batch while it is retried; stay in the group meanwhile.
        .set("max.poll.interval.ms", "900000")
        .create()?;
    consumer.subscribe(&[&settings.topic])?;
    let dead_letters = RwLock::new(crate::produce::producer(&settings.bootstrap)?);
    let clickhouse = config.clickhouse.client()?.with_database(&config.clickhouse.database).with_validation(false);

    let consuming = Arc::new(AtomicBool::new(false));
    let dead_letters_failing_since = Arc::new(Mutex::new(None::<Instant>));
    let ready: ReadyCheck = {
        let clickhouse = clickhouse.clone();
        let consuming = consuming.clone();
        let failing_since = dead_letters_failing_since.clone();
        Arc::new(move || {
            let clickhouse = clickhouse.clone();
            let consuming = consuming.clone();
            let failing_for = failing_since.lock().expect("lock").map(|since| since.elapsed());
            Box::pin(async move {
                dead_letters_ready(failing_for)?;
                clickhouse.query("SELECT 1").execute().await.map_err(|e| format!("ClickHouse: {e}"))?;
                if consuming.load(Ordering::Relaxed) { Ok(()) } else { Err("not consuming yet".into()) }
            })
        })
    };
    let app = server::app(axum::Router::new(), telemetry, ready, None, config::HttpLimits::INGEST);
    let http = tokio::spawn(server::serve(config.server.listen_addr, app));
    let sink = Sink { consumer, dead_letters, clickhouse, settings, metrics, consuming, dead_letters_failing_since };
    tokio::select! {
        result = sink.run() => result?,
        _ = server::shutdown_signal() => tracing::info!("stopping: the current batch is not committed and will be redelivered"),
    }
    http.abort();
    Ok(())
}

struct Sink {
    consumer: StreamConsumer,
    /// Replaced after a failed send, as ingest does (a broker that lost the producer's session).
    dead_letters: RwLock<FutureProducer>,
    clickhouse: clickhouse::Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    consuming: Arc<AtomicBool>,
    /// When the current run of failed dead-letter sends began (`None`: the last one went through).
    dead_letters_failing_since: Arc<Mutex<Option<Instant>>>,
}

/// A record that is not stored, and why.
struct Dropped<'m> {
    message: &'m BorrowedMessage<'m>,
    reason: DropReason,
    why: String,
}

impl Sink {
    async fn run(&self) -> anyhow::Result<()> {
        let mut last_lag = Instant::now();
        loop {
            let batch = self.next_batch().await?;
            self.consuming.store(true, Ordering::Relaxed);
            // Also when idle: a lag measured before the last batch would otherwise stay up for ever.
            if last_lag.elapsed() > Duration::from_secs(5) {
                self.update_lag().await;
                last_lag = Instant::now();
            }
            if batch.is_empty() {
                continue;
            }
            let mut rows = Vec::with_capacity(batch.len());
            let mut dropped = Vec::new();
            let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
            for (i, message) in batch.iter().enumerate() {
                let header = message.headers().and_then(|headers| {
                    headers.iter().find(|h| h.key == crate::produce::VERSION_HEADER).and_then(|h| h.value)
                });
                let source = Source {
                    topic: message.topic(),
                    partition: message.partition(),
                    offset: message.offset(),
                    version: version_of(header, message.timestamp().to_millis()),
                };
                match to_row(message.payload(), source, now_ms, self.settings.identity) {
                    Ok(row) => rows.push((i, row)),
                    Err((reason, why)) => dropped.push(Dropped { message, reason, why }),
                }
            }
            for (i, why) in self.store(&mut rows).await {
                dropped.push(Dropped { message: &batch[i], reason: DropReason::RefusedByClickhouse, why });
            }
            self.observe_freshness(&batch);
            self.dead_letter(&dropped).await;
            if let Err(e) = self.commit(&batch) {
                // The rows are stored: a redelivery collapses into them (see the module's comment).
                tracing::warn!(error = %e, "offset commit failed; the batch may be delivered again");
            }
            self.metrics.batch_size.observe(batch.len() as f64);
        }
    }

    /// Up to `batch_size` messages and `batch_bytes` of payload (a larger single message makes a
    /// batch of its own), waiting at most `linger` after the first and 5 s for the first. A
    /// consumer error (a broker away, a fetch refused) ends the batch early; librdkafka reconnects
    /// and retries by itself. Errors are not slept on: they are events queued while the sink was
    /// busy (a commit blocked during an outage queues dozens), and half a second each kept it from
    /// its records for up to a minute after the broker was back. A fatal error ends the sink, so
    /// the pod restarts (librdkafka raises one for a fenced static member, `group.instance.id`).
    async fn next_batch(&self) -> anyhow::Result<Vec<BorrowedMessage<'_>>> {
        let mut batch = Vec::new();
        let first_deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut bytes = loop {
            match tokio::time::timeout_at(first_deadline, self.consumer.recv()).await {
                Err(_) => return Ok(batch),
                Ok(Ok(message)) => {
                    let bytes = message.payload_len();
                    batch.push(message);
                    break bytes;
                }
                Ok(Err(e)) => self.consumer_error(&e, "polling again")?,
            }
        };
        let deadline = tokio::time::Instant::now() + self.settings.linger;
        while batch.len() < self.settings.batch_size && bytes < self.settings.batch_bytes {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(message)) => {
                    bytes += message.payload_len();
                    batch.push(message);
                }
                Ok(Err(e)) => {
                    self.consumer_error(&e, "storing what this batch holds")?;
                    break;
                }
            }
        }
        Ok(batch)
    }

    /// Logs and counts a consumer error; `Err` when the consumer is unusable for good.
    fn consumer_error(&self, error: &KafkaError, then: &str) -> anyhow::Result<()> {
        self.metrics.consumer_errors.inc();
        if let Some((code, reason)) = self.consumer.client().fatal_error() {
            anyhow::bail!("fatal Kafka consumer error {code:?}: {reason}");
        }
        tracing::warn!(error = %error, "Kafka consumer error; {then}");
        Ok(())
    }

    /// Stores the rows, at most `MAX_DAYS_PER_INSERT` days per insert; an insert refused for its
    /// rows is split in halves until each refused row is alone. Returns the refused rows (their
    /// index in the batch) with ClickHouse's message.
    async fn store(&self, rows: &mut [(usize, FlightRow)]) -> Vec<(usize, String)> {
        let chunks = chunks_by_day(rows, |(_, row)| row.scheduled_at, MAX_DAYS_PER_INSERT);
        let rows = &*rows;
        let refused = bisect(chunks, MAX_SPLIT_INSERTS, async |range| self.insert_with_retry(&rows[range]).await).await;
        refused.into_iter().flat_map(|(range, why)| rows[range].iter().map(move |(i, _)| (*i, why.clone()))).collect()
    }

    /// Inserts until ClickHouse takes the rows or refuses them for good (`Err` with its message),
    /// backing off from 0.5 s to 30 s while the failure is transient.
    async fn insert_with_retry(&self, rows: &[(usize, FlightRow)]) -> Result<(), String> {
        let mut delay = Duration::from_millis(500);
        loop {
            let started = Instant::now();
            let error = match self.insert(rows).await {
                Ok(()) => {
                    self.metrics.insert_seconds.observe(started.elapsed().as_secs_f64());
                    self.metrics.rows.inc_by(rows.len() as u64);
                    return Ok(());
                }
                Err(e) => e,
            };
            self.metrics.insert_errors.inc();
            let message = error.to_string();
            let message = truncate(&message, MAX_REASON_BYTES);
            if classify(&error) == Failure::Permanent {
                tracing::warn!(error = message, rows = rows.len(), "ClickHouse refused the rows; splitting the insert");
                return Err(message.to_string());
            }
            tracing::warn!(
                error = message,
                rows = rows.len(),
                retry_in_ms = delay.as_millis() as u64,
                "ClickHouse insert failed"
            );
            // Records pile up while ClickHouse is away: the lag must say so.
            self.update_lag().await;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    }

    /// Ingest-to-queryable time of the records just inserted.
    fn observe_freshness(&self, batch: &[BorrowedMessage<'_>]) {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        for produced_ms in batch.iter().filter_map(|m| m.timestamp().to_millis()) {
            self.metrics.freshness.observe((now_ms - produced_ms).max(0) as f64 / 1000.0);
        }
    }

    async fn insert(&self, rows: &[(usize, FlightRow)]) -> Result<(), clickhouse::error::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .clickhouse
            .insert::<FlightRow>(&self.settings.table)
            .await?
            .with_timeouts(Some(INSERT_SEND_TIMEOUT), Some(INSERT_END_TIMEOUT));
        for (_, row) in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }

    /// Sends records that are not stored to the dead-letter topic (original key and payload; the
    /// reason, its kind and the origin in headers), retrying until the broker takes each one. A
    /// record the broker refuses for good (too large, malformed) goes with a truncated payload and
    /// its original size instead; refused even so, it is counted as dropped. With no dead-letter
    /// topic, records are counted as dropped.
    async fn dead_letter(&self, dropped: &[Dropped<'_>]) {
        for Dropped { message, reason, why } in dropped {
            let why = truncate(why, MAX_REASON_BYTES);
            tracing::warn!(
                partition = message.partition(),
                offset = message.offset(),
                reason = reason.as_str(),
                why,
                "record not stored"
            );
            let Some(topic) = &self.settings.dead_letter_topic else {
                self.metrics.dropped.get_or_create(&ReasonLabels { reason: reason.as_str() }).inc();
                continue;
            };
            let origin = format!("{}/{}/{}", message.topic(), message.partition(), message.offset());
            let (payload, key) = (message.payload().unwrap_or_default(), message.key());
            let original_size = payload.len().to_string();
            let mut truncated = false;
            let mut delay = Duration::from_millis(500);
            loop {
                let mut headers = OwnedHeaders::new()
                    .insert(Header { key: "flightline.reason", value: Some(why) })
                    .insert(Header { key: "flightline.reason-kind", value: Some(reason.as_str()) })
                    .insert(Header { key: "flightline.origin", value: Some(origin.as_str()) });
                let mut record = FutureRecord::to(topic);
                if truncated {
                    headers = headers.insert(Header { key: "flightline.original-size", value: Some(&original_size) });
                    record = record.payload(&payload[..payload.len().min(TRUNCATED_DEAD_LETTER_BYTES)]);
                    if let Some(key) = key {
                        record = record.key(&key[..key.len().min(TRUNCATED_DEAD_LETTER_BYTES)]);
                    }
                } else {
                    record = record.payload(payload);
                    if let Some(key) = key {
                        record = record.key(key);
                    }
                }
                let producer = self.dead_letters.read().expect("producer lock").clone();
                let error = match producer.send(record.headers(headers), Duration::from_secs(30)).await {
                    Ok(_) => {
                        self.metrics.dead_letters.inc();
                        if truncated {
                            self.metrics.dead_letters_truncated.inc();
                        }
                        *self.dead_letters_failing_since.lock().expect("lock") = None;
                        break;
                    }
                    Err((e, _)) => e,
                };
                self.metrics.dead_letter_errors.inc();
                if refused_for_good(&error) {
                    if !truncated {
                        tracing::warn!(error = %error, %topic, size = payload.len(), "dead letter refused; sending it truncated");
                        truncated = true;
                        continue;
                    }
                    tracing::error!(error = %error, %topic, "truncated dead letter refused too; record dropped");
                    self.metrics.dropped.get_or_create(&ReasonLabels { reason: reason.as_str() }).inc();
                    break;
                }
                self.dead_letters_failing_since.lock().expect("lock").get_or_insert_with(Instant::now);
                tracing::warn!(error = %error, %topic, retry_in_ms = delay.as_millis() as u64, "dead-letter send failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
                match crate::produce::producer(&self.settings.bootstrap) {
                    Ok(fresh) => *self.dead_letters.write().expect("producer lock") = fresh,
                    Err(e) => tracing::error!(error = %e, "could not create a new Kafka producer"),
                }
            }
        }
    }

    fn commit(&self, batch: &[BorrowedMessage<'_>]) -> anyhow::Result<()> {
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in
            offsets_to_commit(batch.iter().map(|m| (m.topic(), m.partition(), m.offset())))
        {
            offsets.add_partition_offset(topic, partition, Offset::Offset(next))?;
        }
        self.consumer.commit(&offsets, CommitMode::Sync)?;
        Ok(())
    }

    async fn update_lag(&self) {
        let Ok(assignment) = self.consumer.assignment() else { return };
        let Ok(committed) = self.consumer.committed_offsets(assignment.clone(), Duration::from_secs(2)) else { return };
        // Partitions lost in a rebalance are another pod's now: drop their series.
        self.metrics.lag.clear();
        for element in committed.elements() {
            let Ok((_, high)) =
                self.consumer.fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(2))
            else {
                continue;
            };
            let done = match element.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            self.metrics
                .lag
                .get_or_create(&PartitionLabels { partition: element.partition() })
                .set((high - done).max(0));
        }
    }
}

#[cfg(test)]
// `vec![0..n]` is one insert of rows 0..n here, not a mistaken list of numbers.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rdkafka::ClientConfig;

    const PAYLOAD: &str = r#"{"Fecha-I":"2017-01-01 23:30:00","Vlo-I":"226","Ori-I":"SCEL","Des-I":"KMIA","Emp-I":"AAL","Fecha-O":"2017-01-02 00:03:00","Vlo-O":"226","Ori-O":"SCEL","Des-O":"KMIA","Emp-O":"AAL","DIA":"2","MES":"1","AÑO":"2017","DIANOM":"Lunes","TIPOVUELO":"I","OPERA":"American Airlines","SIGLAORI":"Santiago","SIGLADES":"Miami"}"#;
    const SOURCE: Source<'static> = Source { topic: "ns.p.flights", partition: 2, offset: 41, version: 9 };

    #[test]
    fn a_flight_message_becomes_a_row() {
        let row = to_row(Some(PAYLOAD.as_bytes()), SOURCE, 7, Identity::Record).unwrap();
        assert_eq!((row.delay_minutes, row.delayed, row.period_day, row.flight_type), (33, true, 3, 1));
        assert_eq!((row.source_partition, row.source_offset, row.ingested_at), (2, 41, 7));
        assert_eq!(row.source_topic, "ns.p.flights");
        assert_eq!(row.version, 9);
        // The same record from another partition, offset or topic (a replay, a second producer)
        // is the same identity; in ScheduledFlight mode the id names the flight, not the record.
        let elsewhere = Source { topic: "other", partition: 0, offset: 7, version: 10 };
        let again = to_row(Some(PAYLOAD.as_bytes()), elsewhere, 8, Identity::Record).unwrap();
        assert_eq!(again.record_id, row.record_id);
        let by_flight = to_row(Some(PAYLOAD.as_bytes()), SOURCE, 7, Identity::ScheduledFlight).unwrap();
        assert_ne!(by_flight.record_id, row.record_id);
    }

    #[test]
    fn versions_come_from_the_header_else_from_the_kafka_timestamp() {
        assert_eq!(version_of(Some(b"1764561234000000123"), Some(5)), 1_764_561_234_000_000_123);
        assert_eq!(version_of(None, Some(1_764_561_234_000)), 1_764_561_234_000_000_000);
        assert_eq!(version_of(Some(b"not a number"), Some(2)), 2_000_000);
        assert_eq!(version_of(None, None), 0);
        assert_eq!(version_of(None, Some(-1)), 0);
    }

    /// A sink reading from `bootstrap` (librdkafka's mock cluster), with no ClickHouse behind it:
    /// enough to poll batches.
    fn polling_sink(bootstrap: &str, batch_size: usize) -> Sink {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "sink")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["flights"]).unwrap();
        let producer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
        Sink {
            consumer,
            dead_letters: RwLock::new(producer),
            clickhouse: clickhouse::Client::default().with_url("http://127.0.0.1:9"),
            settings: Settings {
                bootstrap: bootstrap.to_string(),
                topic: "flights".into(),
                dead_letter_topic: None,
                batch_size,
                batch_bytes: 1 << 20,
                linger: Duration::from_millis(200),
                table: "t".into(),
                identity: Identity::Record,
            },
            metrics: Metrics::register(&Telemetry::new("sink")),
            consuming: Arc::default(),
            dead_letters_failing_since: Arc::default(),
        }
    }

    async fn produce(bootstrap: &str, records: std::ops::Range<u32>) {
        let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
        for i in records {
            let payload = i.to_string();
            producer
                .send(FutureRecord::<(), _>::to("flights").payload(&payload), Duration::from_secs(30))
                .await
                .unwrap();
        }
    }

    /// Polls until `count` records came, in as many batches as it takes (the mock broker hands
    /// out one record set per fetch); a poll that comes back empty must have waited its whole 5 s.
    async fn poll_offsets(sink: &Sink, count: usize) -> Vec<i64> {
        let started = Instant::now();
        let mut offsets = Vec::new();
        while offsets.len() < count {
            let poll = Instant::now();
            let batch = sink.next_batch().await.unwrap();
            if batch.is_empty() {
                assert!(poll.elapsed() >= Duration::from_millis(4_900), "a poll came back empty on an error");
            }
            offsets.extend(batch.iter().map(|m| m.offset()));
            assert!(started.elapsed() < Duration::from_secs(60), "only {offsets:?} after a minute");
        }
        offsets
    }

    /// The errors librdkafka queued while the broker was away (the sink busy elsewhere meanwhile,
    /// as in a commit that waits for the broker) are read through: a poll comes back empty only
    /// when no record came for its whole 5 s. It used to sleep half a second on each error and
    /// come back empty, which after a restart kept the sink from its records for minutes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors_queued_during_a_broker_outage_do_not_hold_up_the_records_after_it() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        let bootstrap = cluster.bootstrap_servers();
        cluster.create_topic("flights", 1, 1).unwrap();
        produce(&bootstrap, 0..5).await;
        let sink = polling_sink(&bootstrap, 5);
        assert_eq!(poll_offsets(&sink, 5).await, (0..5).collect::<Vec<_>>());

        cluster.broker_down(1).unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        cluster.broker_up(1).unwrap();
        produce(&bootstrap, 5..10).await;
        let errors_before = sink.metrics.consumer_errors.get();
        assert_eq!(poll_offsets(&sink, 5).await, (5..10).collect::<Vec<_>>());
        assert!(sink.metrics.consumer_errors.get() > errors_before, "the outage queued consumer errors");
    }

    #[test]
    fn each_partition_commits_one_past_its_last_record() {
        let records = [("t", 0, 7), ("t", 1, 3), ("t", 0, 8), ("t", 1, 2), ("u", 0, 0)];
        let offsets: Vec<_> = offsets_to_commit(records).into_iter().collect();
        assert_eq!(offsets, vec![(("t", 0), 9), (("t", 1), 4), (("u", 0), 1)]);
        assert!(offsets_to_commit([]).is_empty());
    }

    #[test]
    fn poison_messages_say_why() {
        assert_eq!(
            to_row(None, SOURCE, 0, Identity::Record).unwrap_err(),
            (DropReason::Unparseable, "empty message".into())
        );
        let (reason, why) = to_row(Some(b"not json"), SOURCE, 0, Identity::Record).unwrap_err();
        assert!(reason == DropReason::Unparseable && why.starts_with("invalid JSON"), "{why}");
        let (reason, why) = to_row(Some(br#"{"MES": "13"}"#), SOURCE, 0, Identity::Record).unwrap_err();
        assert!(reason == DropReason::Invalid && why.contains("MES"), "{why}");
        let two = format!("[{PAYLOAD},{PAYLOAD}]");
        assert_eq!(to_row(Some(two.as_bytes()), SOURCE, 0, Identity::Record).unwrap_err().0, DropReason::Unparseable);
    }

    #[test]
    fn inserts_never_span_more_than_fifty_days() {
        // The issue's poison batch: 400 flights over 34 years, in no order.
        let mut days: Vec<u32> = (0..400u32).map(|i| (i * 7919 % 400) * 31 * 86_400 + 3_600).collect();
        let chunks = chunks_by_day(&mut days, |d| *d, MAX_DAYS_PER_INSERT);
        assert_eq!(chunks.len(), 8);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 400);
        for chunk in &chunks {
            let mut distinct: Vec<u32> = days[chunk.clone()].iter().map(|d| d / 86_400).collect();
            distinct.dedup();
            assert!(distinct.len() <= MAX_DAYS_PER_INSERT);
        }
        // Many rows of one day stay together; an empty batch has no insert.
        let mut same = vec![86_400u32 * 5; 10_000];
        assert_eq!(chunks_by_day(&mut same, |d| *d, MAX_DAYS_PER_INSERT), vec![0..10_000]);
        assert!(chunks_by_day(&mut Vec::<u32>::new(), |d| *d, 100).is_empty());
    }

    #[test]
    fn clickhouse_errors_are_sorted_by_whether_the_rows_are_at_fault() {
        use Failure::*;
        for (message, want) in [
            (
                "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100). (TOO_MANY_PARTS)",
                Permanent,
            ),
            (
                "Code: 252. DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts",
                Transient,
            ),
            (
                "Code: 469. DB::Exception: Constraint `poison` for table t is violated at row 1. (VIOLATED_CONSTRAINT)",
                Permanent,
            ),
            (
                "Code: 27. DB::Exception: Cannot parse input: expected '\\t' before: ... (CANNOT_PARSE_INPUT_ASSERTION_FAILED)",
                Permanent,
            ),
            ("Code: 6. DB::Exception: Cannot parse string 'x' as UInt8. (CANNOT_PARSE_TEXT)", Permanent),
            ("Code: 241. DB::Exception: Memory limit (total) exceeded. (MEMORY_LIMIT_EXCEEDED)", Transient),
            ("Code: 159. DB::Exception: Timeout exceeded: elapsed 10 seconds. (TIMEOUT_EXCEEDED)", Transient),
            ("Code: 202. DB::Exception: Too many simultaneous queries. (TOO_MANY_SIMULTANEOUS_QUERIES)", Transient),
            ("Code: 60. DB::Exception: Table db.t does not exist. (UNKNOWN_TABLE)", Transient),
            (
                "Code: 16. DB::Exception: No such column source_topic in table db.t. (NO_SUCH_COLUMN_IN_TABLE)",
                Transient,
            ),
            ("Code: 516", Transient),
            ("502 Bad Gateway", Transient),
            ("", Transient),
        ] {
            assert_eq!(classify_message(message), want, "{message}");
        }
        assert_eq!(classify(&clickhouse::error::Error::TimedOut), Transient);
        let permanent = clickhouse::error::Error::BadResponse("Code: 53. DB::Exception: Type mismatch".into());
        assert_eq!(classify(&permanent), Permanent);
    }

    /// Runs `bisect` against a fake ClickHouse that refuses an insert when it holds a row for which
    /// `bad` says why; returns the refused ranges and the inserts made.
    fn run_bisect(
        rows: usize,
        chunks: Vec<Range<usize>>,
        bad: impl Fn(usize) -> Option<String>,
    ) -> (Vec<(Range<usize>, String)>, usize) {
        let mut inserts = 0;
        let refused = futures::executor::block_on(bisect(chunks, MAX_SPLIT_INSERTS, async |range: Range<usize>| {
            inserts += 1;
            assert!(range.end <= rows && !range.is_empty());
            match range.clone().find_map(&bad) {
                Some(why) => Err(why),
                None => Ok(()),
            }
        }));
        (refused, inserts)
    }

    fn refused_rows(refused: &[(Range<usize>, String)]) -> Vec<usize> {
        let mut rows: Vec<usize> = refused.iter().flat_map(|(r, _)| r.clone()).collect();
        rows.sort();
        rows
    }

    #[test]
    fn a_refused_row_is_isolated_and_the_rest_is_stored() {
        let (refused, inserts) = run_bisect(50, vec![0..50], |i| (i == 17).then(|| format!("row {i}")));
        assert_eq!(refused, vec![(17..18, "row 17".to_string())]);
        assert!(inserts <= 1 + 2 * 6, "{inserts}");
        let (refused, _) =
            run_bisect(100, vec![0..60, 60..100], |i| [3, 70, 99].contains(&i).then(|| format!("row {i}")));
        assert_eq!(refused_rows(&refused), vec![3, 70, 99]);
        assert!(refused.iter().all(|(r, why)| *why == format!("row {}", r.start)));
    }

    #[test]
    fn a_refusal_of_every_row_costs_three_inserts_not_two_n() {
        // A CHECK that all 10,000 rows fail: ClickHouse names the first row of each insert.
        let (refused, inserts) = run_bisect(10_000, vec![0..10_000], |_| Some("Code: 469. violated at row 1".into()));
        assert_eq!(inserts, 3);
        assert_eq!(refused, vec![(0..10_000, "Code: 469. violated at row 1".to_string())]);
    }

    #[test]
    fn splitting_stops_after_the_insert_budget_and_refuses_the_rest_whole() {
        // Every row refused with a message of its own (Code 27 quoting the row): no two halves agree.
        let (refused, inserts) = run_bisect(10_000, vec![0..10_000], |i| Some(format!("Code: 27. at {i}")));
        assert_eq!(inserts, 1 + MAX_SPLIT_INSERTS);
        assert_eq!(refused_rows(&refused), (0..10_000).collect::<Vec<_>>());
        assert!(refused.iter().any(|(_, why)| why.starts_with("not isolated (64 split inserts spent): Code: 27.")));
        // The budget is per batch of chunks' splits; chunks themselves are always tried.
        let chunks: Vec<Range<usize>> = (0..200).map(|c| c * 50..(c + 1) * 50).collect();
        let (refused, inserts) = run_bisect(10_000, chunks, |i| (i % 50 == 7).then(|| format!("row {i}")));
        assert_eq!(inserts, 200 + MAX_SPLIT_INSERTS);
        // The first chunks' bad rows are isolated; once the budget is spent, a chunk is refused whole.
        assert_eq!(refused[0], (7..8, "row 7".to_string()));
        let last = refused.last().unwrap();
        assert_eq!(last.0, 199 * 50..200 * 50);
        assert!(last.1.starts_with("not isolated"), "{}", last.1);
    }

    #[test]
    fn dead_letters_refused_for_their_size_or_form_are_not_retried_as_they_are() {
        use RDKafkaErrorCode::*;
        for code in [MessageSizeTooLarge, InvalidMessageSize, InvalidMessage, InvalidRecord, MessageBatchTooLarge] {
            assert!(refused_for_good(&KafkaError::MessageProduction(code)), "{code:?}");
        }
        for code in [QueueFull, MessageTimedOut, BrokerTransportFailure, NotLeaderForPartition, UnknownTopicOrPartition]
        {
            assert!(!refused_for_good(&KafkaError::MessageProduction(code)), "{code:?}");
        }
        assert!(!refused_for_good(&KafkaError::Canceled));
    }

    #[test]
    fn the_sink_is_unready_after_five_minutes_of_failed_dead_letters() {
        assert!(dead_letters_ready(None).is_ok());
        assert!(dead_letters_ready(Some(Duration::from_secs(299))).is_ok());
        let unready = dead_letters_ready(Some(Duration::from_secs(300))).unwrap_err();
        assert!(unready.contains("300 s"), "{unready}");
    }

    #[test]
    fn reasons_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("añb", 2), "a");
        assert_eq!(truncate("abc", 10), "abc");
    }

    proptest! {
        #[test]
        fn prop_any_payload_becomes_a_row_or_a_reason(payload in proptest::collection::vec(any::<u8>(), 0..600)) {
            match to_row(Some(&payload), SOURCE, 0, Identity::Record) {
                Ok(row) => prop_assert!(row.flight_type == 1 || row.flight_type == 2),
                Err((_, why)) => prop_assert!(!why.is_empty()),
            }
        }

        #[test]
        fn prop_bisect_refuses_exactly_the_bad_rows_or_gives_up_within_the_budget(
            bad in proptest::collection::btree_set(0usize..300, 0..40),
        ) {
            let (refused, inserts) = run_bisect(300, vec![0..150, 150..300], |i| bad.contains(&i).then(|| format!("row {i}")));
            prop_assert!(inserts <= 2 + MAX_SPLIT_INSERTS);
            let rows = refused_rows(&refused);
            // Every bad row is refused, no row twice; a good row only when the budget ran out.
            prop_assert!(bad.iter().all(|b| rows.contains(b)));
            prop_assert!(rows.windows(2).all(|w| w[0] < w[1]));
            if inserts < 2 + MAX_SPLIT_INSERTS - 1 {
                prop_assert_eq!(rows, bad.iter().copied().collect::<Vec<_>>());
            }
        }

        #[test]
        fn prop_chunks_cover_every_row_once_within_the_day_limit(
            mut times in proptest::collection::vec(0u32..u32::MAX, 0..600),
            max_days in 1usize..120,
        ) {
            let chunks = chunks_by_day(&mut times, |t| *t, max_days);
            let mut next = 0;
            for chunk in chunks {
                prop_assert_eq!(chunk.start, next);
                prop_assert!(!chunk.is_empty());
                let mut days: Vec<u32> = times[chunk.clone()].iter().map(|t| t / 86_400).collect();
                days.dedup();
                prop_assert!(days.len() <= max_days);
                next = chunk.end;
            }
            prop_assert_eq!(next, times.len());
        }

        #[test]
        fn prop_ingest_records_become_rows(day in 1u32..28, month in 1u32..13, year in 1970u32..2101, minute in 0u32..1440) {
            let operated = format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:00", minute / 60, minute % 60);
            let payload = PAYLOAD
                .replace("2017-01-02 00:03:00", &operated)
                .replace(r#""DIA":"2","MES":"1","AÑO":"2017""#, &format!(r#""DIA":"{day}","MES":"{month}","AÑO":"{year}""#));
            let row = to_row(Some(payload.as_bytes()), SOURCE, 0, Identity::Record).map_err(|e| TestCaseError::fail(e.1))?;
            prop_assert_eq!((row.day as u32, row.month as u32, row.year as u32), (day, month, year));
        }
    }
}
