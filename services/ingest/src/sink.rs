//! `flightline-ingest sink`: Kafka → ClickHouse in batches.
//!
//! Each batch is inserted, then (and only then) its offsets are committed. A crash between the two
//! redelivers the batch; rows carry their `(source_partition, source_offset)` in the table's
//! sorting key (a `ReplacingMergeTree`), so the second copy collapses into the first and `FINAL`
//! queries never see it. Records that cannot be parsed go to the dead-letter topic with the reason
//! in a header, before their offsets are committed. A ClickHouse outage is retried with backoff
//! without committing, so nothing is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clickhouse::Row;
use flightline_service::config;
use flightline_service::flight::{Flight, PeriodDay, read_json};
use flightline_service::server::{self, ReadyCheck, Telemetry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::Serialize;

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
    /// DateTime64(3): milliseconds since the epoch.
    pub ingested_at: i64,
    pub source_partition: i32,
    pub source_offset: i64,
}

/// Parses a Kafka record into a row, or says why it cannot be stored.
pub fn to_row(payload: Option<&[u8]>, partition: i32, offset: i64, ingested_at_ms: i64) -> Result<FlightRow, String> {
    let payload = payload.ok_or("empty message")?;
    let mut records = read_json(payload)?;
    if records.len() != 1 {
        return Err(format!("expected one flight, found {}", records.len()));
    }
    let flight = Flight::parse(&records.remove(0)).map_err(|errors| {
        errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
    })?;
    let d = flight.derive().ok_or("times out of range")?;
    Ok(FlightRow {
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
        source_partition: partition,
        source_offset: offset,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    partition: i32,
}

struct Metrics {
    rows: Counter,
    dead_letters: Counter,
    batch_size: Histogram,
    insert_seconds: Histogram,
    insert_errors: Counter,
    lag: Family<PartitionLabels, Gauge>,
    freshness: Histogram,
}

impl Metrics {
    fn register(telemetry: &Telemetry) -> Arc<Self> {
        let m = Self {
            rows: Counter::default(),
            dead_letters: Counter::default(),
            batch_size: Histogram::new([1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0]),
            insert_seconds: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            insert_errors: Counter::default(),
            lag: Family::default(),
            freshness: Histogram::new([
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
            ]),
        };
        telemetry.register("rows", "Rows inserted into ClickHouse", m.rows.clone());
        telemetry.register("dead_letters", "Records sent to the dead-letter topic", m.dead_letters.clone());
        telemetry.register("batch_size", "Records per batch", m.batch_size.clone());
        telemetry.register_with_unit("insert_duration", "ClickHouse insert latency", m.insert_seconds.clone());
        telemetry.register("insert_errors", "Failed ClickHouse inserts (retried)", m.insert_errors.clone());
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
    topic: String,
    dead_letter_topic: Option<String>,
    batch_size: usize,
    linger: Duration,
    table: String,
}

pub async fn run() -> anyhow::Result<()> {
    let telemetry = Telemetry::new("sink");
    let metrics = Metrics::register(&telemetry);
    let bootstrap = config::required("KAFKA_BOOTSTRAP_SERVERS")?;
    let settings = Settings {
        topic: config::required("KAFKA_TOPIC")?,
        dead_letter_topic: std::env::var("KAFKA_DLQ_TOPIC").ok().filter(|t| !t.is_empty()),
        batch_size: config::parsed("SINK_BATCH_SIZE", 10_000usize)?.max(1),
        linger: Duration::from_millis(config::parsed("SINK_LINGER_MS", 1_000u64)?),
        table: config::required("CLICKHOUSE_TABLE")?,
    };
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", config::required("KAFKA_CONSUMER_GROUP")?)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // A ClickHouse outage holds a batch while it is retried; stay in the group meanwhile.
        .set("max.poll.interval.ms", "900000")
        .create()?;
    consumer.subscribe(&[&settings.topic])?;
    let dead_letters = crate::produce::producer(&bootstrap)?;
    let mut clickhouse = clickhouse::Client::default()
        .with_url(config::required("CLICKHOUSE_URL")?)
        .with_database(config::required("CLICKHOUSE_DATABASE")?)
        .with_validation(false);
    if let Ok(user) = config::required("CLICKHOUSE_USER") {
        clickhouse = clickhouse.with_user(user).with_password(std::env::var("CLICKHOUSE_PASSWORD").unwrap_or_default());
    }

    let consuming = Arc::new(AtomicBool::new(false));
    let ready: ReadyCheck = {
        let clickhouse = clickhouse.clone();
        let consuming = consuming.clone();
        Arc::new(move || {
            let clickhouse = clickhouse.clone();
            let consuming = consuming.clone();
            Box::pin(async move {
                clickhouse.query("SELECT 1").execute().await.map_err(|e| format!("ClickHouse: {e}"))?;
                if consuming.load(Ordering::Relaxed) { Ok(()) } else { Err("not consuming yet".into()) }
            })
        })
    };
    let app = server::app(axum::Router::new(), telemetry, ready, None, config::HttpLimits::INGEST);
    let http = tokio::spawn(server::serve(config::listen_addr()?, app));
    let sink = Sink { consumer, dead_letters, clickhouse, settings, metrics, consuming };
    tokio::select! {
        result = sink.run() => result?,
        _ = server::shutdown_signal() => tracing::info!("stopping: the current batch is not committed and will be redelivered"),
    }
    http.abort();
    Ok(())
}

struct Sink {
    consumer: StreamConsumer,
    dead_letters: FutureProducer,
    clickhouse: clickhouse::Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    consuming: Arc<AtomicBool>,
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
            let mut rejected = Vec::new();
            let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
            for message in &batch {
                match to_row(message.payload(), message.partition(), message.offset(), now_ms) {
                    Ok(row) => rows.push(row),
                    Err(reason) => rejected.push((message, reason)),
                }
            }
            self.insert_with_retry(&rows).await;
            self.observe_freshness(&batch);
            self.dead_letter(&rejected).await?;
            self.commit(&batch)?;
            self.metrics.batch_size.observe(batch.len() as f64);
        }
    }

    /// Up to `batch_size` messages, waiting at most `linger` after the first. Consumer errors
    /// (a broker away, a rebalance) end the batch early and are retried by the next poll.
    async fn next_batch(&self) -> anyhow::Result<Vec<BorrowedMessage<'_>>> {
        let mut batch = Vec::new();
        let first = tokio::time::timeout(Duration::from_secs(5), self.consumer.recv()).await;
        match first {
            Err(_) => return Ok(batch),
            Ok(Ok(message)) => batch.push(message),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Kafka consumer error; polling again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Ok(batch);
            }
        }
        let deadline = tokio::time::Instant::now() + self.settings.linger;
        while batch.len() < self.settings.batch_size {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(message)) => batch.push(message),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error; committing what this batch holds");
                    break;
                }
            }
        }
        Ok(batch)
    }

    /// Inserts until ClickHouse takes the rows, backing off from 0.5 s to 30 s.
    async fn insert_with_retry(&self, rows: &[FlightRow]) {
        let mut delay = Duration::from_millis(500);
        loop {
            let started = Instant::now();
            match self.insert(rows).await {
                Ok(()) => {
                    self.metrics.insert_seconds.observe(started.elapsed().as_secs_f64());
                    self.metrics.rows.inc_by(rows.len() as u64);
                    return;
                }
                Err(e) => {
                    self.metrics.insert_errors.inc();
                    tracing::warn!(error = %e, rows = rows.len(), retry_in_ms = delay.as_millis() as u64, "ClickHouse insert failed");
                    // Records pile up while ClickHouse is away: the lag must say so.
                    self.update_lag().await;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Ingest-to-queryable time of the records just inserted.
    fn observe_freshness(&self, batch: &[BorrowedMessage<'_>]) {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        for produced_ms in batch.iter().filter_map(|m| m.timestamp().to_millis()) {
            self.metrics.freshness.observe((now_ms - produced_ms).max(0) as f64 / 1000.0);
        }
    }

    async fn insert(&self, rows: &[FlightRow]) -> Result<(), clickhouse::error::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self.clickhouse.insert::<FlightRow>(&self.settings.table).await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }

    /// Sends unparseable records to the dead-letter topic (original key and payload, the reason
    /// and origin in headers) and waits for the broker to take them.
    async fn dead_letter(&self, rejected: &[(&BorrowedMessage<'_>, String)]) -> anyhow::Result<()> {
        for (message, reason) in rejected {
            tracing::warn!(partition = message.partition(), offset = message.offset(), %reason, "dead letter");
            let Some(topic) = &self.settings.dead_letter_topic else { continue };
            let origin = format!("{}/{}/{}", message.topic(), message.partition(), message.offset());
            let headers = OwnedHeaders::new()
                .insert(Header { key: "flightline.reason", value: Some(reason.as_str()) })
                .insert(Header { key: "flightline.origin", value: Some(origin.as_str()) });
            let mut record = FutureRecord::to(topic).headers(headers).payload(message.payload().unwrap_or_default());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            self.dead_letters
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| anyhow::anyhow!("dead-letter topic {topic}: {e}"))?;
            self.metrics.dead_letters.inc();
        }
        Ok(())
    }

    fn commit(&self, batch: &[BorrowedMessage<'_>]) -> anyhow::Result<()> {
        let mut offsets = TopicPartitionList::new();
        for message in batch {
            offsets.add_partition_offset(message.topic(), message.partition(), Offset::Offset(message.offset() + 1))?;
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
mod tests {
    use super::*;

    #[test]
    fn a_flight_message_becomes_a_row() {
        let payload = r#"{"Fecha-I":"2017-01-01 23:30:00","Vlo-I":"226","Ori-I":"SCEL","Des-I":"KMIA","Emp-I":"AAL","Fecha-O":"2017-01-02 00:03:00","Vlo-O":"226","Ori-O":"SCEL","Des-O":"KMIA","Emp-O":"AAL","DIA":"2","MES":"1","AÑO":"2017","DIANOM":"Lunes","TIPOVUELO":"I","OPERA":"American Airlines","SIGLAORI":"Santiago","SIGLADES":"Miami"}"#;
        let row = to_row(Some(payload.as_bytes()), 2, 41, 7).unwrap();
        assert_eq!((row.delay_minutes, row.delayed, row.period_day, row.flight_type), (33, true, 3, 1));
        assert_eq!((row.source_partition, row.source_offset, row.ingested_at), (2, 41, 7));
    }

    #[test]
    fn poison_messages_say_why() {
        assert_eq!(to_row(None, 0, 0, 0).unwrap_err(), "empty message");
        assert!(to_row(Some(b"not json"), 0, 0, 0).unwrap_err().starts_with("invalid JSON"));
        assert!(to_row(Some(br#"{"MES": "13"}"#), 0, 0, 0).unwrap_err().contains("MES"));
    }
}
