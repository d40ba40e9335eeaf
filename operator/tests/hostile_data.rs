//! End-to-end tests of hostile data: nothing a producer sends is lost, stalls a partition or
//! exhausts ingest's memory (issue 8, "Poison never stalls and is never lost" and "Bounded memory").

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use clickhouse::Row;
use flightline_operator::crd::FlightPipeline;
use kube::ResourceExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::{Value, json};
use support::*;

const JSON: (&str, &str) = ("Content-Type", "application/json");
const CSV: (&str, &str) = ("Content-Type", "text/csv");

/// A valid flight operated (and scheduled) at `at`, `YYYY-MM-DD HH:MM:SS`.
fn flight(at: &str, airline: &str) -> Value {
    let (year, month, day) = (&at[0..4], at[5..7].trim_start_matches('0'), at[8..10].trim_start_matches('0'));
    json!({
        "Fecha-I": at, "Vlo-I": "226", "Ori-I": "SCEL", "Des-I": "KMIA", "Emp-I": "AAL",
        "Fecha-O": at, "Vlo-O": "226", "Ori-O": "SCEL", "Des-O": "KMIA", "Emp-O": "AAL",
        "DIA": day, "MES": month, "AÑO": year, "DIANOM": "Lunes", "TIPOVUELO": "I",
        "OPERA": airline, "SIGLAORI": "Santiago", "SIGLADES": "Miami",
    })
}

/// `flight` with flight number `n`: records are identified by their content (a record sent twice
/// is stored once), so a test that wants N rows sends N different flights.
fn numbered(mut flight: Value, n: usize) -> Value {
    flight["Vlo-I"] = json!(n.to_string());
    flight["Vlo-O"] = json!(n.to_string());
    flight
}

/// The issue's poison batch: `n` flights one month apart from January 1970 (400 span 1970–2003).
fn flights_one_month_apart(n: usize) -> Vec<Value> {
    (0..n).map(|i| flight(&format!("{}-{:02}-01 10:00:00", 1970 + i / 12, i % 12 + 1), "American Airlines")).collect()
}

/// Applies the pipeline, waits until it is ready and returns it with its status.
async fn ready_pipeline(stack: &Stack, ns: &TestNamespace, fp: &FlightPipeline) -> FlightPipeline {
    let api = pipelines(stack, ns);
    apply(&api, fp).await.unwrap();
    wait_condition(&api, &fp.name_any(), "Ready", "True", None).await
}

async fn post(ingest: &str, content_type: (&str, &str), body: &[u8]) -> (u16, Value) {
    let (status, text) = http("POST", ingest, "/v1/flights", &[content_type], body).await;
    (status, serde_json::from_str(&text).unwrap_or_else(|_| json!({"text": text})))
}

/// Every record in `topic` up to its high-water mark (payload and headers), in partition order:
/// a test asserts the exact count, so an extra record cannot go unnoticed.
async fn read_all(stack: &Stack, topic: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.bootstrap)
        .set("group.id", "e2e-topic-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let marks = watermarks(&consumer, topic);
    let mut assignment = TopicPartitionList::new();
    for (partition, low, _) in &marks {
        assignment.add_partition_offset(topic, *partition, Offset::Offset(*low)).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let want: i64 = marks.iter().map(|(_, low, high)| high - low).sum();
    let mut found = Vec::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while (found.len() as i64) < want {
        assert!(std::time::Instant::now() < deadline, "read {} of {want} records of {topic}", found.len());
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            let message = message.expect("a record");
            found.push(payload_and_headers(&message));
        }
        tokio::task::yield_now().await;
    }
    found
}

/// A table CONSTRAINT that ClickHouse checks at every insert: the one way a record ingest accepts
/// can still be refused for good (the DBA's rule, not the sink's).
async fn forbid_airline(stack: &Stack, table: &str, airline: &str) {
    let ddl = format!("ALTER TABLE {table} ADD CONSTRAINT no_poison CHECK airline_name != '{airline}'");
    stack.clickhouse().query(&ddl).execute().await.unwrap();
}

#[derive(Row, Serialize)]
struct Probe {
    at: u32,
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn the_local_clickhouse_refuses_what_a_real_server_refuses() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("chdb-errors").await;
    stack.clickhouse().query(&format!("CREATE DATABASE IF NOT EXISTS `{}`", ns.database)).execute().await.unwrap();
    let ch = stack.clickhouse().with_database(&ns.database);
    let table = format!("`{}`.monthly", ns.database);
    let ddl = format!("CREATE TABLE {table} (at DateTime) ENGINE = MergeTree PARTITION BY toYYYYMM(at) ORDER BY at");
    ch.query(&ddl).execute().await.unwrap();

    // The issue's case through the sink's own client (RowBinary, LZ4): 400 months in one insert.
    let insert = async |client: &clickhouse::Client, months: u32| {
        let mut insert = client.insert::<Probe>("monthly").await?;
        for i in 0..months {
            insert.write(&Probe { at: i * 31 * 86_400 }).await?;
        }
        insert.end().await
    };
    let refused = insert(&ch, 400).await.unwrap_err().to_string();
    assert!(
        refused.contains("Code: 252") && refused.contains("Too many partitions for single INSERT block"),
        "{refused}"
    );
    let rows = ch.query(&format!("SELECT count() FROM {table}")).fetch_one::<u64>().await.unwrap();
    assert_eq!(rows, 0, "a refused insert stores nothing");
    insert(&ch, 100).await.unwrap();

    // Settings in the URL reach the engine: readonly refuses writes with READONLY (164).
    let readonly = ch.clone().with_setting("readonly", "2");
    let refused = insert(&readonly, 1).await.unwrap_err().to_string();
    assert!(refused.contains("Code: 164"), "{refused}");
    let ddl = readonly.query(&format!("CREATE TABLE {table}_2 (a UInt8) ENGINE = Memory")).execute().await;
    assert!(ddl.unwrap_err().to_string().contains("Code: 164"));
    let rows = readonly.query(&format!("SELECT count() FROM {table}")).fetch_one::<u64>().await.unwrap();
    assert_eq!(rows, 100);
    let slow = ch.clone().with_setting("max_execution_time", "1").query("SELECT sleep(2)").execute().await;
    assert!(slow.unwrap_err().to_string().contains("Code: 159"));
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn poison_never_stalls_and_is_never_lost() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("poison").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let fp = ready_pipeline(&stack, &ns, &example_pipeline(&ns)).await;
    let (table, topic) = (table_of(&fp), topic_of(&fp));
    let ingest = service_addr(&stack, &ns, "scl", "ingest").await;

    // 400 flights over 34 years in one POST: all stored (inserts of at most 100 days each).
    let batch = serde_json::to_vec(&flights_one_month_apart(400)).unwrap();
    let (status, answer) = post(&ingest, JSON, &batch).await;
    assert_eq!((status, answer["accepted"].as_u64()), (202, Some(400)), "{answer}");
    wait_count(&stack, &ns, &fp, 400).await;
    // A flight posted after them arrives too: the partition is not stalled.
    let later = serde_json::to_vec(&flight("2017-03-01 08:00:00", "Sky Airline")).unwrap();
    assert_eq!(post(&ingest, JSON, &later).await.0, 202);
    wait_count(&stack, &ns, &fp, 401).await;

    // A record ClickHouse refuses for good: it alone goes to the dead-letter topic, with
    // ClickHouse's reason; the other 49 of its batch are stored.
    forbid_airline(&stack, &table, "Poison Air").await;
    let mut mixed: Vec<Value> =
        (1..=49).map(|d| numbered(flight(&format!("2018-01-{:02} 10:00:00", d % 28 + 1), "Grupo LATAM"), d)).collect();
    mixed.insert(17, flight("2018-02-01 10:00:00", "Poison Air"));
    let (status, answer) = post(&ingest, JSON, &serde_json::to_vec(&mixed).unwrap()).await;
    assert_eq!((status, answer["accepted"].as_u64()), (202, Some(50)), "{answer}");
    wait_count(&stack, &ns, &fp, 450).await;
    let dlq = read_all(&stack, &format!("{topic}.dlq")).await;
    assert_eq!(dlq.len(), 1, "exactly the refused record is dead-lettered: {dlq:?}");
    let (payload, headers) = &dlq[0];
    assert!(payload.contains("Poison Air"), "{payload}");
    assert_eq!(headers.get("flightline.reason-kind").map(String::as_str), Some("refused_by_clickhouse"));
    let reason = &headers["flightline.reason"];
    assert!(reason.contains("Code: 469") && reason.len() <= 1024, "{reason}");
    assert!(headers["flightline.origin"].starts_with(&topic));

    // A refusal of every row of a batch is not split 2N-1 times (each insert a part): a few
    // inserts, and all 300 rows go to the dead-letter topic with ClickHouse's reason.
    let sink = service_addr(&stack, &ns, "scl", "sink").await;
    let failed_inserts = async || {
        let (_, metrics) = http("GET", &sink, "/metrics", &[], b"").await;
        let sample = "flightline_sink_insert_errors_total ";
        metrics.lines().find_map(|l| l.strip_prefix(sample)).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
    };
    let before = failed_inserts().await;
    let poison = vec![flight("2018-03-01 10:00:00", "Poison Air"); 300];
    let (status, answer) = post(&ingest, JSON, &serde_json::to_vec(&poison).unwrap()).await;
    assert_eq!((status, answer["accepted"].as_u64()), (202, Some(300)), "{answer}");
    wait_count(&stack, &ns, &fp, 450).await;
    let dlq = read_all(&stack, &format!("{topic}.dlq")).await;
    assert_eq!(dlq.len(), 301, "the refused records, no more");
    assert!(dlq[1..].iter().all(|(_, h)| h["flightline.reason"].contains("Code: 469")));
    let spent = failed_inserts().await - before;
    assert!(spent <= 12.0, "{spent} failed inserts for 300 refused rows");
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn hostile_bodies_get_a_4xx_naming_the_field_and_ingest_memory_stays_bounded() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("hostile-bodies").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let fp = ready_pipeline(&stack, &ns, &example_pipeline(&ns)).await;
    let ingest = service_addr(&stack, &ns, "scl", "ingest").await;
    let pid = pod_pid(&stack, &ns, "scl", "ingest").await;

    // The issue's case: 8 MB of CSV, a `DIA` header and 4,000,000 rows of `1` (2,495 MB before).
    let body = [&b"DIA\n"[..], &b"1\n".repeat(4_000_000)].concat();
    let (status, answer) = post(&ingest, CSV, &body).await;
    assert_eq!((status, answer["error"].as_str()), (413, Some("too_many_records")), "{answer}");
    let peak_mib = peak_rss_kib(pid) / 1024;
    println!("ingest peak RSS after the 8 MB CSV: {peak_mib} MiB");
    assert!(peak_mib < 96, "ingest peaked at {peak_mib} MiB");

    // Fields the table cannot hold: 400 naming the field.
    let cases = [
        ("OPERA", "x".repeat(257)),
        ("Fecha-I", "1969-12-31 23:59:59".to_string()),
        // After 2100 a TTL could wrap `scheduled_at + ttl` past DateTime's end to 1970.
        ("Fecha-O", "2101-01-01 00:00:00".to_string()),
        ("Fecha-I", "2105-06-01 10:00:00".to_string()),
        ("SIGLADES", "Miami\u{0}\u{1b}[2J".to_string()),
        ("DIA", "2".to_string()),
    ];
    for (field, value) in cases {
        let mut record = flight("2017-01-01 10:00:00", "Sky Airline");
        record[field] = value.clone().into();
        let (status, answer) = post(&ingest, JSON, &serde_json::to_vec(&record).unwrap()).await;
        assert_eq!(status, 400, "{field}={value}: {answer}");
        let fields: Vec<&str> =
            answer["details"][0]["errors"].as_array().unwrap().iter().filter_map(|e| e["field"].as_str()).collect();
        assert!(fields.contains(&field), "{field}: {answer}");
    }
    // At the body limit: 16 MiB of valid flights are taken, within the same bound.
    let mut flights = Vec::new();
    let mut size = 2;
    let mut day = 0;
    while size < 16 * 1024 * 1024 - 1_000 {
        let f = serde_json::to_vec(&numbered(
            flight(&format!("2017-{:02}-{:02} 10:00:00", day / 28 % 12 + 1, day % 28 + 1), "Copa Air"),
            day,
        ))
        .unwrap();
        size += f.len() + 1;
        flights.push(f);
        day += 1;
    }
    let body = [&b"["[..], &flights.join(&b","[..]), b"]"].concat();
    let (status, answer) = post(&ingest, JSON, &body).await;
    assert_eq!((status, answer["accepted"].as_u64()), (202, Some(flights.len() as u64)), "{answer}");
    let peak_mib = peak_rss_kib(pid) / 1024;
    println!(
        "ingest peak RSS after {} flights in {:.1} MiB of JSON: {peak_mib} MiB",
        flights.len(),
        body.len() as f64 / 1048576.0
    );
    assert!(peak_mib < 128, "ingest peaked at {peak_mib} MiB");
    wait_count(&stack, &ns, &fp, flights.len() as u64).await;
    // The sink took them in batches of at most 16 MiB of payload (SINK_MAX_BATCH_BYTES).
    let sink_mib = peak_rss_kib(pod_pid(&stack, &ns, "scl", "sink").await) / 1024;
    println!("sink peak RSS after storing them: {sink_mib} MiB");
    assert!(sink_mib < 256, "the sink peaked at {sink_mib} MiB");
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn with_the_dead_letter_topic_off_poison_is_counted_as_dropped() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("dropped").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let mut fp = example_pipeline(&ns);
    fp.spec.kafka.dead_letter.enabled = false;
    let fp = ready_pipeline(&stack, &ns, &fp).await;
    let (table, topic) = (table_of(&fp), topic_of(&fp));
    let sink = service_addr(&stack, &ns, "scl", "sink").await;

    // Poison straight onto the topic, and a flight ClickHouse refuses, between good ones.
    forbid_airline(&stack, &table, "Poison Air").await;
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &stack.bootstrap).create().unwrap();
    let good = serde_json::to_string(&flight("2017-05-05 10:00:00", "Sky Airline")).unwrap();
    let other = serde_json::to_string(&flight("2017-05-07 10:00:00", "Sky Airline")).unwrap();
    let refused = serde_json::to_string(&flight("2017-05-06 10:00:00", "Poison Air")).unwrap();
    for payload in [good.as_str(), "not json at all", r#"{"MES": "13"}"#, refused.as_str(), other.as_str()] {
        producer.send(FutureRecord::<(), _>::to(&topic).payload(payload), Duration::from_secs(10)).await.unwrap();
    }
    wait_count(&stack, &ns, &fp, 2).await;
    let dropped = async |reason: &str| {
        let (_, metrics) = http("GET", &sink, "/metrics", &[], b"").await;
        let sample = format!("flightline_sink_dropped_records_total{{reason=\"{reason}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(sample.as_str())).and_then(|v| v.parse::<f64>().ok())
    };
    eventually("the three dropped records are counted", async || {
        dropped("unparseable").await == Some(1.0)
            && dropped("invalid").await == Some(1.0)
            && dropped("refused_by_clickhouse").await == Some(1.0)
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn a_dead_letter_too_large_for_the_broker_goes_truncated_with_its_size() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("dlq-size").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    // The topic takes records up to 4 MB (Kafka's default is 1 MB); the dead-letter topic keeps
    // the default, so the poison record's dead letter cannot be written whole.
    let mut big_records = example_pipeline(&ns);
    big_records.spec.kafka.config.insert("max.message.bytes".into(), "4000000".into());
    let fp = ready_pipeline(&stack, &ns, &big_records).await;
    let topic = topic_of(&fp);
    let sink = service_addr(&stack, &ns, "scl", "sink").await;

    // A 1.5 MB poison record on the topic (a producer with a larger limit than the sink's): its
    // dead letter is over the sink producer's 1 MB `message.max.bytes`, refused for good. Before,
    // the sink retried it for ever and the partition stalled behind it.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.bootstrap)
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap();
    let huge = "x".repeat(1_500_000);
    let good = serde_json::to_string(&flight("2017-05-05 10:00:00", "Sky Airline")).unwrap();
    for payload in [huge.as_str(), good.as_str()] {
        producer.send(FutureRecord::<(), _>::to(&topic).payload(payload), Duration::from_secs(10)).await.unwrap();
    }
    wait_count(&stack, &ns, &fp, 1).await;
    let dlq = read_all(&stack, &format!("{topic}.dlq")).await;
    assert_eq!(dlq.len(), 1, "{:?}", dlq.iter().map(|(p, h)| (p.len(), h)).collect::<Vec<_>>());
    let (payload, headers) = &dlq[0];
    assert_eq!(payload.len(), 1024);
    assert_eq!(headers["flightline.original-size"], "1500000");
    assert_eq!(headers["flightline.reason-kind"], "unparseable");
    let (_, metrics) = http("GET", &sink, "/metrics", &[], b"").await;
    assert!(metrics.lines().any(|l| l == "flightline_sink_dead_letters_truncated_total 1"), "{metrics}");
    let (status, _) = http("GET", &sink, "/readyz", &[], b"").await;
    assert_eq!(status, 200);
}
