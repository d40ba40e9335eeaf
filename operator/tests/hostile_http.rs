//! End-to-end tests of the services' HTTP side against hostile clients: bursts (429), a full
//! concurrency limit (503), stalled headers and bodies, made-up methods and metric labels, JWTs
//! without the required claims, a hung ClickHouse, and predict's memory at its limits. Pipelines run
//! on the local stack with low `spec.<component>.limits`; the hung-ClickHouse and memory tests start
//! the service binaries directly (the operator would need to reach the hung server too).

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.0 exchange from raw request bytes: status, head (headers) and body.
async fn exchange(addr: &str, request: &[u8]) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(HTTP_TIMEOUT, stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

async fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    exchange(addr, (request + "\r\n").as_bytes()).await
}

fn retry_after(head: &str) -> Option<u64> {
    head.lines().find_map(|l| l.strip_prefix("retry-after:")).and_then(|v| v.trim().parse().ok())
}

fn json_body(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Applies `fp` (named `scl`) and waits until it is Ready.
async fn ready_pipeline(stack: &Stack, ns: &TestNamespace, fp: &flightline_operator::crd::FlightPipeline) {
    let api = pipelines(stack, ns);
    apply(&api, fp).await.unwrap();
    wait_condition(&api, "scl", "Ready", "True", None).await;
}

/// Series lines (not comments) on `/metrics`.
async fn metric_series(addr: &str) -> usize {
    let (status, _, body) = get(addr, "/metrics", &[]).await;
    assert_eq!(status, 200);
    body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count()
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn bursts_get_429_made_up_methods_add_no_series_and_stalled_headers_are_cut() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("hostile-http").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let mut fp = example_pipeline(&ns);
    fp.spec.query.limits.requests_per_second = Some(1);
    fp.spec.query.limits.burst = Some(5);
    ready_pipeline(&stack, &ns, &fp).await;
    let query = service_addr(&stack, &ns, "scl", "query").await;

    // A burst: the first 5 are served, then 429 with Retry-After and a JSON reason. `by=nope` is
    // charged to the limit but refused (400) before ClickHouse, so the burst is fast on any machine;
    // the bucket refills 1 a second, so the count allowed through is derived from the time it took.
    let burst_started = Instant::now();
    let mut statuses = Vec::new();
    while statuses.len() < 20 || !statuses.contains(&429) {
        assert!(statuses.len() < 200, "no 429 after 200 requests: {statuses:?}");
        let (status, head, body) = get(&query, "/v1/stats/delays?by=nope", &[]).await;
        if status == 429 {
            assert!(retry_after(&head).is_some_and(|s| (1..=5).contains(&s)), "{head}");
            let body = json_body(&body);
            assert_eq!(body["error"], "rate_limited", "{body}");
            assert!(body["message"].as_str().unwrap().contains("rate limit"), "{body}");
        } else {
            assert_eq!(status, 400, "{body}");
        }
        statuses.push(status);
    }
    let refills = burst_started.elapsed().as_secs() + 1;
    let served = statuses.iter().filter(|s| **s != 429).count() as u64;
    assert!(statuses[..5].iter().all(|s| *s == 400), "{statuses:?}");
    assert!(served <= 5 + refills, "{served} served in {refills} s: {statuses:?}");
    // Probes and scrapes are never rate limited.
    for path in ["/healthz", "/readyz", "/metrics"] {
        for _ in 0..10 {
            assert_eq!(get(&query, path, &[]).await.0, 200, "{path}");
        }
    }
    let (_, _, metrics) = get(&query, "/metrics", &[]).await;
    assert!(metrics.contains(r#"http_refused_requests_total{reason="rate_limited"}"#), "{metrics}");

    // 300 made-up methods: at most a few new series, and no method text in any label.
    let before = metric_series(&query).await;
    for n in 0..300 {
        let (status, _, _) = exchange(&query, format!("MADEUP{n} /healthz HTTP/1.0\r\n\r\n").as_bytes()).await;
        assert_eq!(status, 405, "MADEUP{n}");
    }
    let (_, _, metrics) = get(&query, "/metrics", &[]).await;
    assert!(!metrics.contains("MADEUP"), "a client's method reached a label");
    let grown = metric_series(&query).await - before;
    assert!(grown <= 20, "{grown} new series after 300 made-up methods");

    // Half a header line, then silence: the connection is closed within the header read timeout.
    let mut stalled = tokio::net::TcpStream::connect(&query).await.unwrap();
    stalled.write_all(b"GET /v1/stats/delays?by=month HTTP/1.1\r\nHost: x\r\nX-Slow: aaa").await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stalled.read_to_end(&mut rest)).await;
    let took = started.elapsed();
    assert!(read.is_ok(), "the stalled connection was still open after 30 s");
    // The header read timeout is 10 s; a busy machine may close it a little late, never early.
    assert!(took >= Duration::from_secs(8) && took <= Duration::from_secs(20), "closed after {took:?}");
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn a_full_concurrency_limit_answers_503_and_a_stalled_body_times_out() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("hostile-busy").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let mut fp = example_pipeline(&ns);
    fp.spec.predict.limits.max_concurrent_requests = Some(1);
    let body_timeout = Duration::from_secs(5);
    let timeout_env = body_timeout.as_secs().to_string();
    fp.spec.predict.workload.env.insert("HTTP_BODY_READ_TIMEOUT_SECONDS".into(), timeout_env);
    ready_pipeline(&stack, &ns, &fp).await;
    let predict = service_addr(&stack, &ns, "scl", "predict").await;

    // One request holds the only slot: it promises 1000 bytes of body and sends 10. It asks
    // `Expect: 100-continue`, which hyper answers when the handler first reads the body, past the
    // concurrency limit: from that answer on the slot is the holder's. (Polling with requests
    // until one got 503 raced under load: a request the server read before the holder's head
    // took the slot, the holder got the 503, and every later request 200.)
    let mut holder = tokio::net::TcpStream::connect(&predict).await.unwrap();
    let head = "POST /predict HTTP/1.1\r\nHost: predict\r\nContent-Type: application/json\r\n\
                Content-Length: 1000\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n";
    holder.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let interim = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 1024];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match holder.read(&mut chunk).await.unwrap() {
                0 => break,
                n => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let holding_since = Instant::now();
    let shown = String::from_utf8_lossy(&answer).into_owned();
    assert!(interim.is_ok() && shown.starts_with("HTTP/1.1 100 "), "the holder did not get the slot: {shown:?}");
    // Whatever came after the interim answer belongs to the final one.
    let mut answer = answer.split_off(answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4);
    holder.write_all(b"{\"flights\"").await.unwrap();

    let sample = json!({"flights": [{"OPERA": "Grupo LATAM", "TIPOVUELO": "N", "MES": 3}]}).to_string();
    let request = format!(
        "POST /predict HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{sample}",
        sample.len()
    );
    let started = Instant::now();
    let (status, head, body) = exchange(&predict, request.as_bytes()).await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(took < Duration::from_secs(2), "503 must not wait in a queue: {took:?}");
    assert_eq!(retry_after(&head), Some(1), "{head}");
    assert_eq!(json_body(&body)["error"], "overloaded");
    assert_eq!(get(&predict, "/healthz", &[]).await.0, 200, "health is not behind the concurrency limit");

    // The stalled body gives up after its body read timeout with 408, freeing the slot.
    let wait = body_timeout + Duration::from_secs(10);
    tokio::time::timeout(wait, holder.read_to_end(&mut answer)).await.unwrap().unwrap();
    let held = holding_since.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.") && answer.contains(" 408 ") && answer.contains("body_timeout"), "{answer}");
    // On the timeout (counted from the head, a moment before the interim answer), not sooner.
    assert!(held >= body_timeout - Duration::from_secs(2), "408 after {held:?} of a {body_timeout:?} timeout");
    let (status, _, body) = exchange(&predict, request.as_bytes()).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn jwts_without_required_claims_or_not_yet_valid_are_refused_and_each_subject_has_its_own_limit() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("hostile-jwt").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let jwt_secret = "a-shared-secret-of-at-least-32-bytes!";
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), &ns.name);
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "jwt"}, "stringData": {"jwt-key": jwt_secret}})).unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let mut fp = example_pipeline(&ns);
    fp.spec.auth = serde_json::from_value(json!({
        "jwt": {"algorithm": "HS256", "keySecret": {"name": "jwt"}, "issuer": "flightline-tests", "audience": "scl"},
    }))
    .unwrap();
    fp.spec.query.limits.requests_per_second = Some(1);
    fp.spec.query.limits.burst = Some(3);
    ready_pipeline(&stack, &ns, &fp).await;
    let query = service_addr(&stack, &ns, "scl", "query").await;

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mint = |claims: Value| {
        let key = jsonwebtoken::EncodingKey::from_secret(jwt_secret.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let valid = |sub: &str| json!({"sub": sub, "iss": "flightline-tests", "aud": "scl", "exp": now + 600});
    let mut no_issuer = valid("a");
    no_issuer.as_object_mut().unwrap().remove("iss");
    let mut no_audience = valid("a");
    no_audience.as_object_mut().unwrap().remove("aud");
    let mut tomorrow = valid("a");
    tomorrow["nbf"] = (now + 86_400).into();
    let cases = [
        (json!({"sub": "a", "exp": now + 600}), "claim"),
        (no_issuer, "no iss claim"),
        (no_audience, "no aud claim"),
        (tomorrow, "not valid yet"),
    ];
    for (claims, says) in cases {
        // Refused tokens are charged to the address (burst 3, 1 a second): pace them.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let bearer = format!("Bearer {}", mint(claims.clone()));
        let (status, head, body) = get(&query, "/v1/stats/delays?by=month", &[("Authorization", &bearer)]).await;
        assert_eq!(status, 401, "{claims}: {body}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        assert!(json_body(&body)["message"].as_str().unwrap().contains(says), "{claims}: {body}");
    }

    // The scheme is case-insensitive; requests are charged to the token's subject, not the address.
    let alice = format!("bearer {}", mint(valid("alice")));
    let bob = format!("BEARER {}", mint(valid("bob")));
    // `by=nope` (400 after authentication, before ClickHouse) keeps the burst fast; the bucket
    // refills 1 a second, so how many pass is checked against the time it took.
    let burst_started = Instant::now();
    let mut statuses = Vec::new();
    while statuses.len() < 5 || !statuses.contains(&429) {
        assert!(statuses.len() < 100, "no 429 after 100 requests: {statuses:?}");
        statuses.push(get(&query, "/v1/stats/delays?by=nope", &[("Authorization", &alice)]).await.0);
    }
    let refills = burst_started.elapsed().as_secs() + 1;
    assert_eq!(&statuses[..3], &[400, 400, 400], "{statuses:?}");
    let served = statuses.iter().filter(|s| **s == 400).count() as u64;
    assert!(served <= 3 + refills, "{served} served in {refills} s: {statuses:?}");
    assert!(statuses.iter().all(|s| [400, 429].contains(s)), "{statuses:?}");
    let (status, _, body) = get(&query, "/v1/stats/delays?by=month", &[("Authorization", &bob)]).await;
    assert_eq!(status, 200, "another subject from the same address has its own limit: {body}");
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn query_settings_make_clickhouse_refuse_writes_and_oversized_results() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("hostile-readonly").await;
    let admin = stack.clickhouse();
    let table = format!("`{}`.`t`", ns.database);
    admin.query(&format!("CREATE DATABASE IF NOT EXISTS `{}`", ns.database)).execute().await.unwrap();
    admin.query(&format!("CREATE TABLE {table} (id UInt64) ENGINE = MergeTree ORDER BY id")).execute().await.unwrap();
    let query_client = flightline_service::config::clickhouse_read_only_settings(10)
        .into_iter()
        .fold(stack.clickhouse(), |client, (name, value)| client.with_setting(name, value));
    for write in [
        format!("INSERT INTO {table} SELECT 1"),
        format!("ALTER TABLE {table} DELETE WHERE 1"),
        format!("DROP TABLE {table}"),
    ] {
        let error = query_client.query(&write).execute().await.unwrap_err().to_string();
        assert!(error.contains("Code: 164") && error.contains("READONLY"), "{write}: {error}");
    }
    let overflow = query_client
        .query("SELECT number FROM numbers(100)")
        .with_setting("max_result_rows", "10")
        .fetch_all::<u64>()
        .await
        .unwrap_err()
        .to_string();
    assert!(overflow.contains("Code: 396"), "{overflow}");
    let rows: Vec<u64> = query_client.query(&format!("SELECT id FROM {table}")).fetch_all().await.unwrap();
    assert!(rows.is_empty(), "nothing was written: {rows:?}");
}

/// A service binary from the build the tests run with.
fn binary(name: &str) -> String {
    let target =
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
    format!("{target}/debug/{name}")
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

async fn started(name: &str, env: &[(&str, &str)]) -> (Process, String) {
    let addr = free_addr();
    let mut command = Command::new(binary(name));
    command.env("LISTEN_ADDR", &addr).env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::null());
    for var in ["API_KEY_HASHES", "API_KEYS_FILE", "JWT_ALGORITHM", "JWT_KEY", "FLIGHTLINE_FAULT_ERROR_RATIO"] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let process = Process(
        command.spawn().unwrap_or_else(|e| panic!("start {} ({e}); cargo build --workspace first", binary(name))),
    );
    eventually(&format!("{name} listens"), async || tokio::net::TcpStream::connect(&addr).await.is_ok()).await;
    (process, addr)
}

#[tokio::test]
#[ignore = "needs the services built: cargo build --workspace"]
async fn a_hung_clickhouse_gives_504_within_the_timeout_and_not_ready() {
    // A "ClickHouse" that accepts connections and never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_url = format!("http://{}", hung.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            held.push(socket);
        }
    });
    let (_query, query) = started(
        "flightline-query",
        &[
            ("CLICKHOUSE_URL", &hung_url),
            ("CLICKHOUSE_DATABASE", "flightline"),
            ("CLICKHOUSE_TABLE", "scl_flights"),
            ("QUERY_MAX_EXECUTION_SECONDS", "2"),
        ],
    )
    .await;
    assert_eq!(get(&query, "/healthz", &[]).await.0, 200);
    let started_at = Instant::now();
    let (status, head, body) = get(&query, "/v1/stats/delays?by=month", &[]).await;
    let took = started_at.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(json_body(&body)["error"], "clickhouse_timeout");
    assert!(retry_after(&head).is_some(), "{head}");
    // 2 s execution limit + 2 s client margin; a busy machine may answer a little late, never early.
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(10), "answered after {took:?}");
    let (status, _, body) = get(&query, "/v1/flights?limit=5", &[]).await;
    assert_eq!(status, 504, "{body}");

    let started_at = Instant::now();
    let (status, _, body) = get(&query, "/readyz", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(started_at.elapsed() < Duration::from_secs(5), "readiness took {:?}", started_at.elapsed());
    assert!(body.contains("did not answer"), "{body}");
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(process: &Process) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.0.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test]
#[ignore = "needs the services built: cargo build --workspace"]
async fn predict_memory_stays_bounded_at_its_limits() {
    let (predict, addr) = started("flightline-predict", &[]).await;
    let post = async |body: &[u8]| {
        let head = format!(
            "POST /predict HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        exchange(&addr, &[head.as_bytes(), body].concat()).await
    };
    let idle = peak_rss_kib(&predict);
    // The issue's case: ~4 MB of 590,000 empty objects. Refused at flight 10,001, without building them.
    let empties = format!("{{\"flights\":[{}{{}}]}}", "{},    ".repeat(589_999));
    let (status, _, body) = post(empties.as_bytes()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(json_body(&body)["field"], "flights");
    // ~2 million numbers in one field the model reads: skipped without being built, 400 naming it.
    let zeros = format!("{{\"flights\":[{{\"OPERA\":[{}0]}}]}}", "0,".repeat(2_000_000));
    assert!(zeros.len() < 4 * 1024 * 1024);
    let (status, _, body) = post(zeros.as_bytes()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(json_body(&body)["field"], "flights[0].OPERA", "{body}");
    let refused = peak_rss_kib(&predict);
    eprintln!("predict peak RSS after the two refused bodies: +{} KiB", refused - idle);
    assert!(refused - idle < 16 * 1024, "predict grew by {} KiB on refused bodies", refused - idle);
    // 10,000 valid flights, the most one request may carry, are predicted.
    let flight = format!(r#"{{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":3,"padding":"{}"}}"#, " ".repeat(330));
    let most = format!("{{\"flights\":[{}]}}", vec![flight.as_str(); 10_000].join(","));
    assert!(most.len() < 4 * 1024 * 1024);
    let (status, _, body) = post(most.as_bytes()).await;
    assert_eq!(status, 200, "{}", &body[..body.len().min(300)]);
    let peak = peak_rss_kib(&predict);
    eprintln!("predict peak RSS: idle {idle} KiB, after both bodies {peak} KiB (+{} KiB)", peak - idle);
    // Each body is about 4 MB: the peak stays within a small multiple of it (2 million JSON values
    // would take 64-128 MB).
    assert!(peak - idle < 24 * 1024, "predict grew by {} KiB", peak - idle);
}

#[tokio::test]
#[ignore = "needs the local stack and the services built: run dev/test"]
async fn query_pages_of_control_characters_stay_bounded_and_many_groups_are_cut_not_failed() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("hostile-page").await;
    let admin = stack.clickhouse();
    admin.query(&format!("CREATE DATABASE IF NOT EXISTS `{}`", ns.database)).execute().await.unwrap();
    let columns = flightline_operator::desired::table::BASE_COLUMNS;
    let ddl: Vec<String> = columns.iter().map(|(name, ty)| format!("`{name}` {ty}")).collect();
    admin
        .query(&format!(
            "CREATE TABLE `{}`.`flights` ({}) ENGINE = ReplacingMergeTree(version) \
             ORDER BY (scheduled_at, record_id)",
            ns.database,
            ddl.join(", ")
        ))
        .execute()
        .await
        .unwrap();
    // 10,001 rows whose every string field is 256 control characters (6 bytes each in JSON): the
    // worst a client could have stored before ingest refused control characters.
    let strings: Vec<&str> =
        columns.iter().filter(|(_, ty)| ty.ends_with("String)") || *ty == "String").map(|c| c.0).collect();
    let values = vec!["repeat(char(1), 256)"; strings.len()].join(", ");
    admin
        .query(&format!(
            "INSERT INTO `{}`.`flights` (scheduled_at, source_partition, source_offset, {}) \
             SELECT toDateTime('2017-01-01 00:00:00', 'UTC') + number, 0, number, {values} FROM numbers(10001)",
            ns.database,
            strings.join(", ")
        ))
        .execute()
        .await
        .unwrap();
    let (query, addr) = started(
        "flightline-query",
        &[
            ("CLICKHOUSE_URL", &stack.clickhouse_url),
            ("CLICKHOUSE_DATABASE", &ns.database),
            ("CLICKHOUSE_TABLE", "flights"),
        ],
    )
    .await;
    let idle = peak_rss_kib(&query);
    // A full page of such rows is more than a page may read: refused, and not as a 5xx.
    let (status, _, body) = get(&addr, "/v1/flights?limit=10000", &[]).await;
    assert_eq!(status, 422, "{}", &body[..body.len().min(300)]);
    assert_eq!(json_body(&body)["error"], "result_too_large");
    // 1,000 rows fit in what a page may read, not in what it may write: the page ends early
    // with a cursor, and the next page goes on from there.
    let (status, _, body) = get(&addr, "/v1/flights?limit=1000", &[]).await;
    assert_eq!(status, 200, "{}", &body[..body.len().min(300)]);
    assert!(body.len() <= 8 * 1024 * 1024, "{} bytes", body.len());
    let page = json_body(&body);
    let listed = page["flights"].as_array().unwrap().len();
    assert!((100..1000).contains(&listed), "{listed} rows");
    let cursor = page["next_cursor"].as_str().expect("a cursor to the rest").to_string();
    let (status, _, body) = get(&addr, &format!("/v1/flights?limit=5&cursor={cursor}"), &[]).await;
    assert_eq!(status, 200, "{body}");
    let next = json_body(&body);
    assert_eq!(next["flights"][0]["Fecha-I"], format!("2017-01-01 00:{:02}:{:02}", listed / 60, listed % 60));
    let peak = peak_rss_kib(&query);
    eprintln!("query peak RSS: idle {idle} KiB, after the pages {peak} KiB (+{} KiB)", peak - idle);
    assert!(peak - idle < 40 * 1024, "query grew by {} KiB", peak - idle);

    // 1,500 made-up airlines: statistics by airline still answer, with the largest 1,000 groups,
    // `truncated`, and a total over every flight.
    admin
        .query(&format!(
            "INSERT INTO `{}`.`flights` (scheduled_at, source_partition, source_offset, airline_name) \
             SELECT toDateTime('2017-02-01 00:00:00', 'UTC') + number, 1, number, toString(number) FROM numbers(1500)",
            ns.database
        ))
        .execute()
        .await
        .unwrap();
    let (status, _, body) = get(&addr, "/v1/stats/delays?by=airline", &[]).await;
    assert_eq!(status, 200, "{}", &body[..body.len().min(300)]);
    let stats = json_body(&body);
    assert_eq!(stats["truncated"], true);
    assert_eq!(stats["groups"].as_array().unwrap().len(), 1000);
    assert_eq!(stats["groups"][0]["flights"], 10_001, "the largest group first");
    assert_eq!(stats["total"]["flights"], 11_501);
    let (status, _, body) = get(&addr, "/v1/stats/delays?by=month", &[]).await;
    assert_eq!((status, json_body(&body)["truncated"].clone()), (200, json!(false)), "{body}");
}
