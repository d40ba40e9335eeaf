//! End-to-end tests of whole pipelines: the operator creates them, the local node runs the
//! services' pods as processes, and the data set goes ingest → Kafka → sink → ClickHouse → query.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use flightline_service::auth::hash_key;
use flightline_service::flight::{Flight, read_csv};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{Value, json};
use support::*;

const ROWS: u64 = 68_206;
const JSON: (&str, &str) = ("Content-Type", "application/json");
const CSV: (&str, &str) = ("Content-Type", "text/csv");

/// Applies a pipeline and returns the addresses of its ingest, query and predict pods.
async fn running_pipeline(
    stack: &Stack,
    ns: &TestNamespace,
    fp: &flightline_operator::crd::FlightPipeline,
) -> [String; 3] {
    let api = pipelines(stack, ns);
    apply(&api, fp).await.unwrap();
    wait_condition(&api, "scl", "Ready", "True", None).await;
    [
        service_addr(stack, ns, "scl", "ingest").await,
        service_addr(stack, ns, "scl", "query").await,
        service_addr(stack, ns, "scl", "predict").await,
    ]
}

async fn stats(query: &str, by: &str) -> Value {
    let (status, body) = http("GET", query, &format!("/v1/stats/delays?by={by}"), &[], b"").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn stored(query: &str) -> u64 {
    stats(query, "type").await["total"]["flights"].as_u64().unwrap()
}

async fn wait_stored(query: &str, rows: u64) {
    eventually(&format!("{rows} rows are queryable"), async || stored(query).await >= rows).await;
    // Nothing more trickles in afterwards: exactly `rows`.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stored(query).await, rows);
}

async fn post_data_set(ingest: &str) {
    let (status, body) = http("POST", ingest, "/v1/flights", &[CSV], &data_set_csv()).await;
    assert_eq!(status, 202, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((answer["accepted"].as_u64(), answer["rejected"].as_u64()), (Some(ROWS), Some(0)));
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn the_data_set_is_stored_exactly_once_with_the_data_sets_delay_rates_and_predictions_work() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("load").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let [ingest, query, predict] = running_pipeline(&stack, &ns, &example_pipeline(&ns)).await;

    let started = std::time::Instant::now();
    post_data_set(&ingest).await;
    wait_stored(&query, ROWS).await;
    println!("68,206 rows queryable {:.1}s after the POST began (debug build)", started.elapsed().as_secs_f64() - 3.0);

    // Delay rates from the query service match the data set, overall and per airline.
    let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for raw in read_csv(&data_set_csv()).unwrap() {
        let flight = Flight::parse(&raw).unwrap();
        let entry = expected.entry(flight.airline_name.clone()).or_default();
        entry.0 += 1;
        entry.1 += u64::from(flight.derive().unwrap().delayed);
    }
    let by_airline = stats(&query, "airline").await;
    assert_eq!(by_airline["total"]["delay_rate"].as_f64(), Some(0.1849));
    assert_eq!(by_airline["total"]["delayed"].as_u64(), Some(12_614));
    let groups = by_airline["groups"].as_array().unwrap();
    assert_eq!(groups.len(), expected.len());
    for g in groups {
        let (flights, delayed) = expected[g["key"].as_str().unwrap()];
        assert_eq!((g["flights"].as_u64().unwrap(), g["delayed"].as_u64().unwrap()), (flights, delayed), "{g}");
    }
    for by in ["month", "destination", "period_day", "type"] {
        assert_eq!(stats(&query, by).await["total"]["flights"].as_u64(), Some(ROWS), "by={by}");
    }
    let periods = stats(&query, "period_day").await;
    let keys: Vec<&str> = periods["groups"].as_array().unwrap().iter().map(|g| g["key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), 3, "every flight has a period of day: {keys:?}");

    // Pagination walks pages without overlap.
    let (_, first) = http("GET", &query, "/v1/flights?limit=50&airline=Copa%20Air", &[], b"").await;
    let first: Value = serde_json::from_str(&first).unwrap();
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) =
        http("GET", &query, &format!("/v1/flights?limit=50&airline=Copa%20Air&cursor={cursor}"), &[], b"").await;
    let second: Value = serde_json::from_str(&second).unwrap();
    assert_eq!(second["flights"].as_array().unwrap().len(), 50);
    assert_ne!(first["flights"][49], second["flights"][0]);
    assert!(second["flights"].as_array().unwrap().iter().all(|f| f["OPERA"] == "Copa Air"));

    // Predict: the challenge sample and the three invalid requests.
    let sample = json!({"flights": [{"OPERA": "Aerolineas Argentinas", "TIPOVUELO": "N", "MES": 3}]});
    let (status, body) = http("POST", &predict, "/predict", &[JSON], sample.to_string().as_bytes()).await;
    assert_eq!((status, body.as_str()), (200, r#"{"predict":[0]}"#));
    for (flight, field) in [
        (json!({"OPERA": "Argentinas", "TIPOVUELO": "N", "MES": 3}), "OPERA"),
        (json!({"OPERA": "Aerolineas Argentinas", "TIPOVUELO": "O", "MES": 3}), "TIPOVUELO"),
        (json!({"OPERA": "Aerolineas Argentinas", "TIPOVUELO": "N", "MES": 13}), "MES"),
    ] {
        let (status, body) =
            http("POST", &predict, "/predict", &[JSON], json!({"flights": [flight]}).to_string().as_bytes()).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains(field), "{body}");
    }
    let (status, body) = http("POST", &predict, "/v1/predict", &[JSON], sample.to_string().as_bytes()).await;
    assert_eq!(status, 200);
    let v1: Value = serde_json::from_str(&body).unwrap();
    assert!(v1["model_version"].as_str().unwrap().starts_with("v1-"));
    let p = v1["predictions"][0]["delay_probability"].as_f64().unwrap();
    assert!((0.30..0.40).contains(&p), "{p}");
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn a_sink_killed_mid_load_loses_and_duplicates_nothing() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("sink-kill").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let mut fp = example_pipeline(&ns);
    fp.spec.sink.batch_size = 2_000; // many small batches, so the kill lands between some of them
    fp.spec.sink.linger_ms = 200;
    let [ingest, query, _] = running_pipeline(&stack, &ns, &fp).await;
    post_data_set(&ingest).await;

    // Kill the sink pod once some rows are in, before all are.
    eventually("the sink has started storing rows", async || stored(&query).await > 0).await;
    let pods: Api<Pod> = Api::namespaced(stack.client.clone(), &ns.name);
    let sinks = pods.list(&ListParams::default().labels("app.kubernetes.io/component=sink")).await.unwrap();
    let at_kill = stored(&query).await;
    for pod in sinks {
        pods.delete(&pod.metadata.name.unwrap(), &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
            .await
            .unwrap();
    }
    println!("sink killed with {at_kill} of {ROWS} rows stored");
    wait_stored(&query, ROWS).await;
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn bad_input_is_refused_with_reasons_and_poison_goes_to_the_dead_letter_topic() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("bad-input").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let [ingest, query, _] = running_pipeline(&stack, &ns, &example_pipeline(&ns)).await;

    // Malformed records: 400 with per-record reasons when none is valid; 202 with counts otherwise.
    let bad = json!([{"Fecha-I": "2017-13-01 10:00:00", "MES": 13, "TIPOVUELO": "X"}]);
    let (status, body) = http("POST", &ingest, "/v1/flights", &[JSON], bad.to_string().as_bytes()).await;
    assert_eq!(status, 400, "{body}");
    for field in ["Fecha-I", "MES", "TIPOVUELO", "OPERA"] {
        assert!(body.contains(&format!("\"field\":\"{field}\"")), "{field} missing in {body}");
    }
    let csv = String::from_utf8(data_set_csv()).unwrap();
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    let good = lines.next().unwrap();
    let mixed = format!("{header}\n{good}\n{}\n", good.replace(",I,", ",Q,"));
    let (status, body) = http("POST", &ingest, "/v1/flights", &[CSV], mixed.as_bytes()).await;
    assert_eq!(status, 202, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((answer["accepted"].as_u64(), answer["rejected"].as_u64()), (Some(1), Some(1)));
    assert_eq!(answer["errors"][0]["record"].as_u64(), Some(1));
    let (status, _) = http("POST", &ingest, "/v1/flights", &[("Content-Type", "text/plain")], b"x").await;
    assert_eq!(status, 415);
    let (status, _) = http("POST", &ingest, "/v1/flights", &[JSON], b"{not json").await;
    assert_eq!(status, 400);
    let huge = vec![b' '; 17 * 1024 * 1024];
    let (status, _) = http("POST", &ingest, "/v1/flights", &[JSON], &huge).await;
    assert_eq!(status, 413);

    // Poison put straight onto the topic: the sink sends it to the DLQ with the reason.
    let topic = format!("{}.scl.flights", ns.name);
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &stack.bootstrap).create().unwrap();
    for payload in ["not json at all", r#"{"MES": "13"}"#] {
        producer.send(FutureRecord::<(), _>::to(&topic).payload(payload), Duration::from_secs(10)).await.unwrap();
    }
    eventually("the good record is stored", async || stored(&query).await == 1).await;
    let dlq = dead_letters(&stack.bootstrap, &format!("{topic}.dlq"), 2).await;
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    assert!(
        dlq.iter().any(|(payload, reason)| payload == "not json at all" && reason.starts_with("invalid JSON")),
        "{dlq:?}"
    );
    assert!(dlq.iter().any(|(_, reason)| reason.contains("MES")), "{dlq:?}");

    // Injection attempts in every query parameter: 400, or a harmless empty result.
    let attacks = ["' OR 1=1 --", "1; DROP TABLE flights", "x\") UNION SELECT * FROM system.users --"];
    for param in ["from", "to", "airline", "origin", "destination", "type", "delayed", "limit", "cursor"] {
        for attack in attacks {
            let path = format!("/v1/flights?{param}={}", encode(attack));
            let (status, body) = http("GET", &query, &path, &[], b"").await;
            let harmless = status == 200
                && serde_json::from_str::<Value>(&body).unwrap()["flights"].as_array().unwrap().is_empty();
            assert!(status == 400 || harmless, "{param}={attack}: {status} {body}");
        }
    }
    for attack in attacks {
        let (status, _) = http("GET", &query, &format!("/v1/stats/delays?by={}", encode(attack)), &[], b"").await;
        assert_eq!(status, 400);
    }
    let (status, body) = http("GET", &query, "/v1/flights?sort=desc", &[], b"").await;
    assert_eq!(status, 400);
    assert!(body.contains("\"field\":\"sort\""), "{body}");
    assert_eq!(stored(&query).await, 1, "the table is intact");
}

/// Reads the dead-letter topic from the start: (payload, reason header) of up to `want` records.
async fn dead_letters(bootstrap: &str, topic: &str, want: usize) -> Vec<(String, String)> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", "e2e-dlq-reader").create().unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&assignment).unwrap();
    let mut found = Vec::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while found.len() < want && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
            let reason = message
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "flightline.reason")
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                })
                .unwrap_or_default();
            found.push((String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(), reason));
        }
        tokio::task::yield_now().await;
    }
    found
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn api_keys_guard_every_api() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("auth").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), &ns.name);
    let jwt_secret = "a-shared-secret-of-at-least-32-bytes!";
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "api-keys"},
        "stringData": {"api-key-hashes": format!("# team-a\n{}\n", hash_key("s3cret")), "jwt-key": jwt_secret},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let mut fp = example_pipeline(&ns);
    fp.spec.auth = serde_json::from_value(json!({
        "apiKeysSecret": {"name": "api-keys"},
        "jwt": {"algorithm": "HS256", "keySecret": {"name": "api-keys"}, "issuer": "flightline-tests", "audience": "scl"},
    }))
    .unwrap();
    let [ingest, query, predict] = running_pipeline(&stack, &ns, &fp).await;

    let sample = json!({"flights": [{"OPERA": "Grupo LATAM", "TIPOVUELO": "N", "MES": 3}]}).to_string();
    let calls = [
        ("GET", query.as_str(), "/v1/stats/delays?by=month", ""),
        ("POST", predict.as_str(), "/predict", sample.as_str()),
        ("POST", ingest.as_str(), "/v1/flights", "[]"),
    ];
    for (method, addr, path, body) in calls {
        let (status, text) = http(method, addr, path, &[JSON], body.as_bytes()).await;
        assert_eq!(status, 401, "{path} without a key: {text}");
        assert!(text.contains("API key or a bearer token is required"), "{text}");
        let (status, text) =
            http(method, addr, path, &[JSON, ("Authorization", "Bearer wrong")], body.as_bytes()).await;
        assert_eq!(status, 403, "{path} with a wrong key: {text}");
        let (status, text) = http(method, addr, path, &[JSON, ("X-API-Key", "s3cret")], body.as_bytes()).await;
        assert!(status != 401 && status != 403, "{path} with the key: {status} {text}");
    }
    // JWTs: a valid token passes; expired → 401; another audience → 403; a forged one → 401.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mint = |claims: Value, secret: &str| {
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        format!("Bearer {}", jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap())
    };
    let claims = json!({"sub": "analyst", "iss": "flightline-tests", "aud": "scl", "exp": now + 600});
    let cases = [
        (mint(claims.clone(), jwt_secret), 200, ""),
        (mint(json!({"iss": "flightline-tests", "aud": "scl", "exp": now - 600}), jwt_secret), 401, "expired"),
        (mint(json!({"iss": "flightline-tests", "aud": "other", "exp": now + 600}), jwt_secret), 403, "audience"),
        (mint(claims, "a-forged-secret-of-at-least-32-bytes!!"), 401, "signature"),
    ];
    for (bearer, want, says) in cases {
        let (status, text) = http("GET", &query, "/v1/stats/delays?by=month", &[("Authorization", &bearer)], b"").await;
        assert_eq!(status, want, "{text}");
        assert!(text.contains(says), "{text}");
    }

    // Health and metrics stay open for probes and Prometheus.
    let (status, _) = http("GET", &query, "/healthz", &[], b"").await;
    assert_eq!(status, 200);
}
