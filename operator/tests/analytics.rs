//! End-to-end tests of query's analytics: statistics by several dimensions, time buckets, delay
//! minutes and top-N checked against an independent computation on the data set (in Rust, from
//! `data/scl-flights-2017.csv.gz`, not from ClickHouse); CSV answers; flights by id; the result
//! cache (one ClickHouse query for concurrent identical requests) and its freshness bound
//! (statistics equal a deduplicated `FINAL` read once the bound has passed).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clickhouse::Row;
use flightline_service::flight::read_csv;
use serde::Deserialize;
use serde_json::Value;
use support::*;

const ROWS: u64 = 68_206;
const FRESHNESS_MS: u64 = 2_000;
/// What a statistic's age may exceed the bound by: an answer is at most the bound plus one
/// statistics query old (a request past the bound may join a load that started before it), and
/// dev/test runs this beside seven other pipelines on 2 cores; plus the test's own polling.
const SLACK_MS: u64 = 3_000;

/// One flight of the data set, with what the statistics group and measure it by, computed here.
struct Record {
    fields: BTreeMap<String, String>,
    delay_minutes: i64,
}

/// Seconds since the epoch of `YYYY-MM-DD HH:MM:SS` (UTC), by the civil-from-days algorithm.
fn epoch(text: &str) -> i64 {
    let n = |range: std::ops::Range<usize>| text[range].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    days * 86_400 + n(11..13) * 3_600 + n(14..16) * 60 + n(17..19)
}

/// The date `days` after 1970-01-01, as `YYYY-MM-DD`.
fn date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{:04}-{m:02}-{d:02}", yoe + era * 400 + i64::from(m <= 2))
}

impl Record {
    /// A dimension's key, as query names it.
    fn key(&self, dimension: &str) -> String {
        let scheduled = &self.fields["Fecha-I"];
        let days = epoch(scheduled).div_euclid(86_400);
        match dimension {
            "airline" => self.fields["OPERA"].clone(),
            "month" => self.fields["MES"].trim().parse::<u8>().unwrap().to_string(),
            "destination" => self.fields["SIGLADES"].clone(),
            "type" => self.fields["TIPOVUELO"].clone(),
            "day" => scheduled[..10].to_string(),
            // 1970-01-01 was a Thursday: Monday is 3 days before.
            "week" => date(days - (days + 3).rem_euclid(7)),
            "year_month" => scheduled[..7].to_string(),
            "hour_of_day" => scheduled[11..13].parse::<u8>().unwrap().to_string(),
            other => panic!("no independent key for {other}"),
        }
    }
}

fn data_set() -> Vec<Record> {
    read_csv(&data_set_csv())
        .unwrap()
        .into_iter()
        .map(|raw| {
            let fields: BTreeMap<String, String> = raw.into_iter().map(|(k, v)| (k, v.trim().to_string())).collect();
            let delay_minutes = (epoch(&fields["Fecha-O"]) - epoch(&fields["Fecha-I"])).div_euclid(60);
            Record { fields, delay_minutes }
        })
        .collect()
}

/// What a group should say: flights, delayed (> 15 minutes), delay rate, and delay minutes.
#[derive(Debug, PartialEq)]
struct Expected {
    flights: u64,
    delayed: u64,
    delay_rate: f64,
    mean: f64,
    /// ClickHouse's `quantileExact`: the value at 0-based position `floor(level * n)` of the sorted
    /// values, no interpolation.
    p50: i64,
    p90: i64,
    p99: i64,
}

fn expected(mut delays: Vec<i64>) -> Expected {
    delays.sort_unstable();
    let n = delays.len();
    let at = |level: f64| delays[((level * n as f64) as usize).min(n - 1)];
    let delayed = delays.iter().filter(|&&d| d > 15).count() as u64;
    let round = |x: f64, scale: f64| (x * scale).round() / scale;
    Expected {
        flights: n as u64,
        delayed,
        delay_rate: round(delayed as f64 / n as f64, 1e4),
        mean: round(delays.iter().sum::<i64>() as f64 / n as f64, 1e2),
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
    }
}

fn groups_of(records: &[Record], by: &[&str]) -> BTreeMap<Vec<String>, Expected> {
    let mut delays: BTreeMap<Vec<String>, Vec<i64>> = BTreeMap::new();
    for r in records {
        delays.entry(by.iter().map(|d| r.key(d)).collect()).or_default().push(r.delay_minutes);
    }
    delays.into_iter().map(|(k, v)| (k, expected(v))).collect()
}

fn answered(group: &Value) -> Expected {
    let minutes = &group["delay_minutes"];
    Expected {
        flights: group["flights"].as_u64().unwrap(),
        delayed: group["delayed"].as_u64().unwrap(),
        delay_rate: group["delay_rate"].as_f64().unwrap(),
        mean: minutes["mean"].as_f64().unwrap(),
        p50: minutes["p50"].as_i64().unwrap(),
        p90: minutes["p90"].as_i64().unwrap(),
        p99: minutes["p99"].as_i64().unwrap(),
    }
}

/// A GET with an `Accept` header: status, response head (lowercase names) and body.
async fn get(addr: &str, path: &str, accept: &str) -> (u16, BTreeMap<String, String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(HTTP_TIMEOUT, stream.read_to_end(&mut response)).await.unwrap().unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

async fn stats(query: &str, params: &str) -> Value {
    let (status, headers, body) = get(query, &format!("/v1/stats/delays?{params}"), "application/json").await;
    assert_eq!(status, 200, "{params}: {body}");
    let age: u64 = headers["x-flightline-data-age-ms"].parse().unwrap();
    assert!(age <= FRESHNESS_MS + SLACK_MS, "{params}: an answer {age} ms old");
    serde_json::from_str(&body).unwrap()
}

/// Checks one `by` against the independent computation: every group, its figures, the total.
async fn check_groups(query: &str, records: &[Record], by: &[&str]) -> Value {
    let answer = stats(query, &format!("by={}&limit=5000", by.join(","))).await;
    let want = groups_of(records, by);
    let groups = answer["groups"].as_array().unwrap();
    assert_eq!((groups.len(), &answer["truncated"]), (want.len(), &Value::Bool(false)), "by={by:?}");
    assert_eq!(answer["dimensions"], serde_json::json!(by));
    for group in groups {
        let key: Vec<String> = by.iter().map(|d| group["keys"][d].as_str().unwrap().to_string()).collect();
        let want = want.get(&key).unwrap_or_else(|| panic!("by={by:?}: no group {key:?} in the data set"));
        assert_eq!(&answered(group), want, "by={by:?} group {key:?}");
    }
    let all: Vec<i64> = records.iter().map(|r| r.delay_minutes).collect();
    assert_eq!(answered(&answer["total"]), expected(all), "by={by:?} total");
    answer
}

fn keys(answer: &Value, dimension: &str) -> Vec<String> {
    answer["groups"].as_array().unwrap().iter().map(|g| g["keys"][dimension].as_str().unwrap().to_string()).collect()
}

/// RFC 4180 lines: quoted fields may hold commas, doubled quotes and line breaks.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field, mut quoted, mut chars) =
        (Vec::new(), Vec::new(), String::new(), false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (_, c) => field.push(c),
        }
    }
    assert!(field.is_empty() && row.is_empty(), "CSV ends with CRLF");
    rows
}

#[derive(Row, Deserialize)]
struct Counts {
    flights: u64,
    delayed_flights: u64,
}

/// The deduplicated truth: a `FINAL` read of the pipeline's table.
async fn final_counts(stack: &Stack, database: &str) -> (u64, u64) {
    let counts: Counts = stack
        .clickhouse()
        .query(&format!("SELECT count() AS flights, toUInt64(countIf(delayed)) AS delayed_flights FROM `{database}`.`scl_flights` FINAL"))
        .fetch_one()
        .await
        .unwrap();
    (counts.flights, counts.delayed_flights)
}

async fn metric(query: &str, name: &str) -> f64 {
    let (_, _, body) = get(query, "/metrics", "*/*").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} on /metrics"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn statistics_match_an_independent_computation_and_stay_within_the_freshness_bound() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("analytics").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let mut fp = example_pipeline(&ns);
    fp.spec.query.freshness_ms = FRESHNESS_MS as i32;
    let api = pipelines(&stack, &ns);
    apply(&api, &fp).await.unwrap();
    wait_condition(&api, "scl", "Ready", "True", None).await;
    let ingest = service_addr(&stack, &ns, "scl", "ingest").await;
    let query = service_addr(&stack, &ns, "scl", "query").await;

    let (status, body) = http("POST", &ingest, "/v1/flights", &[("Content-Type", "text/csv")], &data_set_csv()).await;
    assert_eq!(status, 202, "{body}");
    eventually("the data set is stored", async || final_counts(&stack, &ns.database).await.0 == ROWS).await;
    tokio::time::sleep(Duration::from_millis(FRESHNESS_MS + 200)).await;
    let records = data_set();
    assert_eq!(records.len() as u64, ROWS);

    // Several dimensions at once; categories come largest first.
    let answer = check_groups(&query, &records, &["airline", "month"]).await;
    let flights: Vec<u64> =
        answer["groups"].as_array().unwrap().iter().map(|g| g["flights"].as_u64().unwrap()).collect();
    assert!(flights.windows(2).all(|w| w[0] >= w[1]), "largest first");
    assert!(answer["groups"][0].get("key").is_none(), "several dimensions: keys, no key");
    // One dimension keeps its `key` (as before `by` took several).
    let answer = check_groups(&query, &records, &["airline"]).await;
    assert_eq!(answer["groups"][0]["key"], answer["groups"][0]["keys"]["airline"]);
    // Time buckets: a time series, in time order.
    for by in [&["week"][..], &["day"], &["year_month", "type"], &["hour_of_day"], &["destination", "week"]] {
        let answer = check_groups(&query, &records, by).await;
        // Dates sort as text; hours as numbers. The first dimension never goes back.
        let order =
            |k: &String| if by[0] == "hour_of_day" { format!("{:02}", k.parse::<u32>().unwrap()) } else { k.clone() };
        let first: Vec<String> = keys(&answer, by[0]).iter().map(order).collect();
        assert!(first.windows(2).all(|w| w[0] <= w[1]), "by={by:?} in order: {first:?}");
    }
    let weeks = keys(&stats(&query, "by=week").await, "week");
    assert_eq!(weeks.first().map(String::as_str), Some("2016-12-26"), "weeks start on Monday");

    // Top-N: the N largest groups, `truncated`, and a total over every flight.
    let top = stats(&query, "by=destination&limit=5").await;
    let want = groups_of(&records, &["destination"]);
    let mut largest: Vec<(u64, &String)> = want.iter().map(|(k, e)| (e.flights, &k[0])).collect();
    largest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let listed: Vec<(u64, &String)> = largest.into_iter().take(5).collect();
    let got: Vec<(u64, String)> = top["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["flights"].as_u64().unwrap(), g["key"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(got, listed.iter().map(|(n, k)| (*n, k.to_string())).collect::<Vec<_>>());
    assert_eq!((&top["truncated"], top["total"]["flights"].as_u64()), (&Value::Bool(true), Some(ROWS)));

    // CSV: a header row, one line per group, the same figures as JSON.
    let json = stats(&query, "by=airline,month&limit=5000").await;
    let (status, headers, body) = get(&query, "/v1/stats/delays?by=airline,month&limit=5000", "text/csv").await;
    assert_eq!(status, 200, "{body}");
    assert!(headers["content-type"].starts_with("text/csv"), "{headers:?}");
    let rows = parse_csv(&body);
    assert_eq!(rows[0][..4], ["airline", "month", "flights", "delayed"]);
    assert_eq!(rows.len() - 1, json["groups"].as_array().unwrap().len());
    for (row, group) in rows[1..].iter().zip(json["groups"].as_array().unwrap()) {
        assert_eq!(
            (&row[0], &row[1]),
            (
                &group["keys"]["airline"].as_str().unwrap().to_string(),
                &group["keys"]["month"].as_str().unwrap().to_string()
            )
        );
        assert_eq!(row[2], group["flights"].to_string());
        assert_eq!(row[8], group["delay_minutes"]["p99"].to_string());
    }

    // Flight pages as CSV carry their cursor in X-Next-Cursor; each flight has an id, and
    // GET /v1/flights/{id} returns it.
    let (status, headers, body) = get(&query, "/v1/flights?airline=Copa%20Air&limit=50", "text/csv").await;
    assert_eq!(status, 200, "{body}");
    let first = parse_csv(&body);
    assert_eq!((first.len(), first[0][0].as_str(), first[0][1].as_str()), (51, "id", "Fecha-I"));
    let cursor = &headers["x-next-cursor"];
    let (_, headers, body) =
        get(&query, &format!("/v1/flights?airline=Copa%20Air&limit=50&cursor={cursor}"), "text/csv").await;
    let second = parse_csv(&body);
    assert_eq!(second.len(), 51);
    assert!(headers.contains_key("x-next-cursor"));
    let opera = first[0].iter().position(|c| c == "OPERA").unwrap();
    let ids: std::collections::BTreeSet<&String> = first[1..].iter().chain(&second[1..]).map(|r| &r[0]).collect();
    assert_eq!(ids.len(), 100, "pages do not overlap");
    assert!(first[1..].iter().chain(&second[1..]).all(|r| r[opera] == "Copa Air"));
    let (_, _, page) = get(&query, "/v1/flights?airline=Copa%20Air&limit=1", "application/json").await;
    let page: Value = serde_json::from_str(&page).unwrap();
    let id = page["flights"][0]["id"].as_str().unwrap();
    assert_eq!(id, first[1][0]);
    let (status, _, one) = get(&query, &format!("/v1/flights/{id}"), "application/json").await;
    assert_eq!((status, serde_json::from_str::<Value>(&one).unwrap()), (200, page["flights"][0].clone()));
    let (status, _, body) = get(&query, "/v1/flights/NOT-AN-ID", "application/json").await;
    assert!(status == 400 && body.contains("invalid_id"), "{status} {body}");
    let (status, _, body) = get(&query, &format!("/v1/flights/{}", "0".repeat(32)), "application/json").await;
    assert!(status == 404 && body.contains("flight_not_found"), "{status} {body}");

    // Coalescing: 20 concurrent requests for an answer nobody asked for yet cost one ClickHouse query.
    let (misses, hits, coalesced) = (
        metric(&query, "flightline_query_cache_misses_total").await,
        metric(&query, "flightline_query_cache_hits_total").await,
        metric(&query, "flightline_query_cache_coalesced_waits_total").await,
    );
    let answers =
        futures::future::join_all((0..20).map(|_| stats(&query, "by=airline,type,hour_of_day&limit=7"))).await;
    assert!(answers.iter().all(|a| *a == answers[0]));
    assert_eq!(metric(&query, "flightline_query_cache_misses_total").await - misses, 1.0);
    let shared = metric(&query, "flightline_query_cache_hits_total").await - hits
        + metric(&query, "flightline_query_cache_coalesced_waits_total").await
        - coalesced;
    assert_eq!(shared, 19.0);

    // Freshness: a new flight, once a FINAL read counts it, is in the statistics within the bound;
    // the same flight sent again (a client's retry) changes nothing.
    let before = stats(&query, "by=airline").await;
    let csv = String::from_utf8(data_set_csv()).unwrap();
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    let new_flight = lines.next().unwrap().replacen(",226,", ",9226,", 2);
    let body = format!("{header}\n{new_flight}\n");
    let (status, answer) = http("POST", &ingest, "/v1/flights", &[("Content-Type", "text/csv")], body.as_bytes()).await;
    assert_eq!(status, 202, "{answer}");
    eventually("the new flight is stored", async || final_counts(&stack, &ns.database).await.0 == ROWS + 1).await;
    let stored = Instant::now();
    let truth = final_counts(&stack, &ns.database).await;
    loop {
        let total = &stats(&query, "by=airline").await["total"];
        if (total["flights"].as_u64().unwrap(), total["delayed"].as_u64().unwrap()) == truth {
            break;
        }
        let waited = stored.elapsed().as_millis() as u64;
        assert!(waited <= FRESHNESS_MS + SLACK_MS, "statistics still without the new flight after {waited} ms");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("a stored flight was in the statistics {} ms after a FINAL read counted it", stored.elapsed().as_millis());
    assert_eq!(before["total"]["flights"].as_u64(), Some(ROWS));
    let (status, answer) = http("POST", &ingest, "/v1/flights", &[("Content-Type", "text/csv")], body.as_bytes()).await;
    assert_eq!(status, 202, "{answer}");
    tokio::time::sleep(Duration::from_millis(FRESHNESS_MS + SLACK_MS)).await;
    let truth = final_counts(&stack, &ns.database).await;
    assert_eq!(truth.0, ROWS + 1, "a retry is stored once");
    let after = stats(&query, "by=airline").await;
    assert_eq!((after["total"]["flights"].as_u64().unwrap(), after["total"]["delayed"].as_u64().unwrap()), truth);
    let groups: u64 = after["groups"].as_array().unwrap().iter().map(|g| g["flights"].as_u64().unwrap()).sum();
    assert_eq!(groups, truth.0, "the groups add up to the FINAL count");
}
