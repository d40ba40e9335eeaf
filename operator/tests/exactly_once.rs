//! Exactly once, end to end: a record sent any number of times, by any path (a client's retry, a
//! whole request sent again, a replay of the topic), is stored and counted once; with
//! `ScheduledFlight` identity a later record of a flight replaces the earlier one (PUT or POST).
//! Needs the local stack: `dev/test` runs these.

mod support;

use std::time::Duration;

use flightline_operator::crd::{FlightPipeline, Identity};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Value, json};
use support::*;

const CSV: (&str, &str) = ("Content-Type", "text/csv");
const JSON: (&str, &str) = ("Content-Type", "application/json");

/// The data set's header and its first `n` records.
fn first_records(n: usize) -> Vec<u8> {
    let csv = String::from_utf8(data_set_csv()).unwrap();
    let lines: Vec<&str> = csv.lines().take(n + 1).collect();
    format!("{}\n", lines.join("\n")).into_bytes()
}

/// Record `index` (0-based, after the header) of the data set as a JSON flight.
fn record_json(index: usize) -> Value {
    let csv = String::from_utf8(data_set_csv()).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let values: Vec<&str> = lines.nth(index).unwrap().split(',').collect();
    Value::Object(header.iter().zip(values).map(|(k, v)| (k.to_string(), json!(v))).collect())
}

async fn send(method: &str, ingest: &str, content_type: (&str, &str), body: &[u8]) -> (u16, Value) {
    let (status, text) = http(method, ingest, "/v1/flights", &[content_type], body).await;
    (status, serde_json::from_str(&text).unwrap_or_else(|_| json!({ "text": text })))
}

fn ids(answer: &Value) -> Vec<String> {
    answer["ids"].as_array().expect("ids").iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

async fn ready_pipeline(stack: &Stack, ns: &TestNamespace, identity: Identity) -> (FlightPipeline, String) {
    let api = pipelines(stack, ns);
    let mut fp = example_pipeline(ns);
    fp.spec.identity = identity;
    apply(&api, &fp).await.unwrap();
    let fp = wait_condition(&api, "scl", "Ready", "True", None).await;
    let ingest = service_addr(stack, ns, "scl", "ingest").await;
    (fp, ingest)
}

/// Produces every record of `topic` into it again, key, payload and headers as they are: what a
/// replay (a mirror, a reset consumer, a producer resending a batch) delivers. Returns how many.
async fn replay_topic(stack: &Stack, topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.bootstrap)
        .set("group.id", "e2e-replay")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let marks = watermarks(&consumer, topic);
    let mut assignment = TopicPartitionList::new();
    for (partition, low, _) in &marks {
        assignment.add_partition_offset(topic, *partition, Offset::Offset(*low)).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let wanted: i64 = marks.iter().map(|(_, low, high)| high - low).sum();
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (records.len() as i64) < wanted && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
            let headers: Vec<(String, Vec<u8>)> = m
                .headers()
                .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
                .unwrap_or_default();
            records.push((m.key().map(<[u8]>::to_vec), m.payload().unwrap_or_default().to_vec(), headers));
        }
    }
    assert_eq!(records.len() as i64, wanted, "read all of {topic}");
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &stack.bootstrap).create().unwrap();
    for (key, payload, headers) in &records {
        let owned = headers
            .iter()
            .fold(OwnedHeaders::new(), |all, (k, v)| all.insert(rdkafka::message::Header { key: k, value: Some(v) }));
        let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(topic).payload(payload).headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }
    records.len()
}

async fn operated_at(stack: &Stack, table: &str, id: &str) -> String {
    stack
        .clickhouse()
        .query(&format!("SELECT toString(operated_at) FROM {table} FINAL WHERE record_id = {{id:String}}"))
        .param("id", id)
        .fetch_one::<String>()
        .await
        .unwrap()
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn a_record_sent_again_by_any_path_is_stored_once() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("once").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let (fp, ingest) = ready_pipeline(&stack, &ns, Identity::Record).await;
    let table = table_of(&fp);

    let body = first_records(1_000);
    let (status, first) = send("POST", &ingest, CSV, &body).await;
    assert_eq!(status, 202, "{first}");
    let first_ids = ids(&first);
    assert_eq!(first_ids.len(), 1_000);
    assert_eq!(first_ids.iter().collect::<std::collections::BTreeSet<_>>().len(), 1_000, "distinct records");
    // The whole request again (a client that timed out before the 202), then one record of it alone.
    let (status, again) = send("POST", &ingest, CSV, &body).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(ids(&again), first_ids, "the same records get the same ids");
    let (status, one) = send("POST", &ingest, JSON, record_json(0).to_string().as_bytes()).await;
    assert_eq!(status, 202, "{one}");
    assert_eq!(ids(&one), vec![first_ids[0].clone()]);
    wait_count(&stack, &ns, &fp, 1_000).await;

    // A replay of the whole topic (2,001 records) stores nothing new either.
    assert_eq!(replay_topic(&stack, &topic_of(&fp)).await, 2_001);
    wait_count(&stack, &ns, &fp, 1_000).await;
    // Not only FINAL reads: once merged, the table itself holds one row per record.
    stack.clickhouse().query(&format!("OPTIMIZE TABLE {table} FINAL")).execute().await.unwrap();
    let merged = stack.clickhouse().query(&format!("SELECT count() FROM {table}")).fetch_one::<u64>().await.unwrap();
    assert_eq!(merged, 1_000);

    // Records are the identity here: nothing to replace, and PUT says so by name.
    let (status, put) = send("PUT", &ingest, CSV, &body).await;
    assert_eq!((status, put["error"].as_str()), (405, Some("updates_not_enabled")), "{put}");
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn scheduled_flight_identity_keeps_the_newest_record_of_each_flight() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("updates").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let (fp, ingest) = ready_pipeline(&stack, &ns, Identity::ScheduledFlight).await;
    let table = table_of(&fp);

    // The data set holds one scheduled flight twice (2017-03-26 08:55, SKU 1, SCEL→SCTE; records
    // 12,719 and 13,905 counting from 0), operated at 10:00 and at 09:02: one flight, so 68,205
    // rows, and the later record in the body wins.
    let (status, answer) = send("POST", &ingest, CSV, &data_set_csv()).await;
    assert_eq!(status, 202, "{}", answer.to_string().chars().take(300).collect::<String>());
    let all = ids(&answer);
    assert_eq!(all.len(), 68_206);
    assert_eq!(all[12_719], all[13_905], "one scheduled flight, one id");
    assert_eq!(all.iter().collect::<std::collections::BTreeSet<_>>().len(), 68_205);
    wait_count(&stack, &ns, &fp, 68_205).await;
    let id = all[13_905].clone();
    assert_eq!(operated_at(&stack, &table, &id).await, "2017-03-26 09:02:00");

    // PUT a correction: it replaces the flight, and the count stays.
    let mut corrected = record_json(13_905);
    corrected["Fecha-O"] = json!("2017-03-26 10:30:00");
    let (status, put) = send("PUT", &ingest, JSON, corrected.to_string().as_bytes()).await;
    assert_eq!(status, 202, "{put}");
    assert_eq!(ids(&put), vec![id.clone()]);
    eventually("the correction is read", async || operated_at(&stack, &table, &id).await == "2017-03-26 10:30:00")
        .await;
    wait_count(&stack, &ns, &fp, 68_205).await;
    // query serves the flight by its id, newest version; an id nobody has is 404 by name.
    let query = service_addr(&stack, &ns, "scl", "query").await;
    eventually("GET /v1/flights/{id} reads the correction", async || {
        let (status, body) = http("GET", &query, &format!("/v1/flights/{id}"), &[], b"").await;
        let flight: Value = serde_json::from_str(&body).unwrap_or_default();
        status == 200 && flight["Fecha-O"] == "2017-03-26 10:30:00" && flight["id"] == json!(id)
    })
    .await;
    let (status, body) = http("GET", &query, &format!("/v1/flights/{}", "0".repeat(32)), &[], b"").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "flight_not_found");

    // In this mode a POST of an older record of the flight is an update too: the last one sent wins.
    let (status, post) = send("POST", &ingest, JSON, record_json(12_719).to_string().as_bytes()).await;
    assert_eq!(status, 202, "{post}");
    eventually("the last record sent wins", async || operated_at(&stack, &table, &id).await == "2017-03-26 10:00:00")
        .await;
    wait_count(&stack, &ns, &fp, 68_205).await;
}
