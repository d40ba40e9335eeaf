//! End-to-end tests of secure connections: Kafka over SASL_SSL (SCRAM-SHA-512/256, PLAIN, mutual
//! TLS) and ClickHouse over HTTPS, against the local stack's TLS ports (dev/stack: the broker's
//! SASL_SSL listener and the ClickHouse front end's HTTPS port, both with the stack's own CA).
//!
//! Reads, besides the usual KAFKA_BOOTSTRAP_SERVERS/CLICKHOUSE_URL/KUBECONFIG, what dev/stack
//! writes to .flightline/env: KAFKA_SASL_SSL_BOOTSTRAP_SERVERS, KAFKA_SCRAM_USERNAME,
//! KAFKA_SCRAM_PASSWORD, FLIGHTLINE_TLS_CA_FILE, FLIGHTLINE_TLS_CLIENT_CERT_FILE,
//! FLIGHTLINE_TLS_CLIENT_KEY_FILE and CLICKHOUSE_HTTPS_URL.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use flightline_operator::crd::FlightPipeline;
use flightline_operator::reconcile::kafka::KafkaAdmin;
use flightline_service::connect::{
    ClientCertificate, KafkaSecurity, SaslCredentials, SaslMechanism, SecurityProtocol, clickhouse_client, tls_failure,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use serde_json::{Value, json};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(5);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: source .flightline/env (dev/stack writes it)"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the stack's TLS endpoints need.
struct Tls {
    bootstrap: String,
    username: String,
    password: String,
    ca: String,
    client: ClientCertificate,
    clickhouse_url: String,
}

impl Tls {
    fn from_env() -> Self {
        Self {
            bootstrap: env("KAFKA_SASL_SSL_BOOTSTRAP_SERVERS"),
            username: env("KAFKA_SCRAM_USERNAME"),
            password: env("KAFKA_SCRAM_PASSWORD"),
            ca: read(&env("FLIGHTLINE_TLS_CA_FILE")),
            client: ClientCertificate {
                certificate_pem: read(&env("FLIGHTLINE_TLS_CLIENT_CERT_FILE")),
                key_pem: read(&env("FLIGHTLINE_TLS_CLIENT_KEY_FILE")),
            },
            clickhouse_url: env("CLICKHOUSE_HTTPS_URL"),
        }
    }

    fn security(&self, mechanism: SaslMechanism, password: &str) -> KafkaSecurity {
        KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl: Some(SaslCredentials { mechanism, username: self.username.clone(), password: password.into() }),
            ca_pem: Some(self.ca.clone()),
            client_certificate: None,
        }
    }
}

/// A CA of nobody's: a certificate the stack's servers were not signed by.
fn other_ca() -> String {
    let dir = std::env::temp_dir().join(format!("flightline-other-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    if !crt.exists() {
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-subj", "/CN=not-the-stack-ca", "-days", "1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success());
    }
    std::fs::read_to_string(crt).unwrap()
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn the_operators_admin_client_speaks_scram_plain_and_mutual_tls() {
    let tls = Tls::from_env();
    let topic = format!("e2e.secure.admin-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let want = flightline_operator::desired::topic::TopicSpec {
        name: topic.clone(),
        partitions: 2,
        replication_factor: 1,
        configs: [("retention.ms".to_string(), "3600000".to_string())].into(),
    };
    let plan = flightline_operator::desired::topic::TopicPlan { create: true, ..Default::default() };
    // Create over SCRAM-SHA-512, then read it back over each other mechanism, and with a client
    // certificate: one broker, one topic, every way in.
    let mut admin =
        KafkaAdmin::connect_with(&tls.bootstrap, &tls.security(SaslMechanism::ScramSha512, &tls.password), TIMEOUT)
            .await
            .expect("SCRAM-SHA-512 over TLS");
    admin.apply(&want, &plan).await.expect("create the topic over SASL_SSL");
    let mut mutual = tls.security(SaslMechanism::ScramSha256, &tls.password);
    mutual.client_certificate = Some(tls.client.clone());
    for (what, security) in [
        ("SCRAM-SHA-256", tls.security(SaslMechanism::ScramSha256, &tls.password)),
        ("PLAIN", tls.security(SaslMechanism::Plain, &tls.password)),
        ("SCRAM-SHA-256 with a client certificate", mutual),
    ] {
        let mut admin = KafkaAdmin::connect_with(&tls.bootstrap, &security, TIMEOUT).await.expect(what);
        let observed = admin.describe(&topic).await.expect(what).expect("the topic exists");
        assert_eq!(observed.partitions, 2, "{what}");
        assert_eq!(observed.configs.unwrap()["retention.ms"], "3600000", "{what}");
    }
    admin.delete(std::slice::from_ref(&topic)).await.expect("delete over SASL_SSL");
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn a_wrong_password_a_wrong_ca_or_a_plaintext_port_fails_at_once_and_by_name() {
    let tls = Tls::from_env();
    for mechanism in [SaslMechanism::ScramSha512, SaslMechanism::ScramSha256, SaslMechanism::Plain] {
        let started = Instant::now();
        let error = KafkaAdmin::connect_with(&tls.bootstrap, &tls.security(mechanism, "not-the-password"), TIMEOUT)
            .await
            .err()
            .expect("a wrong password is refused");
        assert!(error.is_authentication() && !error.is_transient(), "{mechanism:?}: {error}");
        assert!(error.to_string().contains("SASL_AUTHENTICATION_FAILED"), "{error}");
        assert!(started.elapsed() < TIMEOUT, "the refusal took {:?}", started.elapsed());
    }
    let mut wrong_ca = tls.security(SaslMechanism::ScramSha512, &tls.password);
    wrong_ca.ca_pem = Some(other_ca());
    let error = KafkaAdmin::connect_with(&tls.bootstrap, &wrong_ca, TIMEOUT).await.err().expect("untrusted broker");
    assert!(error.is_tls() && !error.is_transient(), "{error}");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    // TLS to the PLAINTEXT listener: the handshake fails, it does not wait for an answer forever.
    let started = Instant::now();
    let plaintext = env("KAFKA_BOOTSTRAP_SERVERS");
    let error = KafkaAdmin::connect_with(&plaintext, &tls.security(SaslMechanism::ScramSha512, &tls.password), TIMEOUT)
        .await
        .err()
        .expect("TLS to a plaintext listener");
    assert!(error.is_tls(), "{error}");
    assert!(started.elapsed() < TIMEOUT + Duration::from_secs(1), "took {:?}", started.elapsed());
    // Plaintext to the TLS listener: the broker's TLS alert is recognised, not read as a huge size.
    let error = KafkaAdmin::connect(&tls.bootstrap, TIMEOUT).await.err().expect("plaintext to a TLS listener");
    assert!(error.is_tls() && error.to_string().contains("set spec.kafka.tls"), "{error}");
    // A CA that is not PEM is a settings error before any connection.
    let mut garbage = tls.security(SaslMechanism::ScramSha512, &tls.password);
    garbage.ca_pem = Some("not a certificate".into());
    let error = KafkaAdmin::connect_with(&tls.bootstrap, &garbage, TIMEOUT).await.err().expect("bad CA");
    assert!(error.is_tls() && error.to_string().contains("no certificate"), "{error}");
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn the_services_clients_produce_consume_and_query_over_tls() {
    let tls = Tls::from_env();
    let topic = format!("e2e.secure.clients-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut admin =
        KafkaAdmin::connect_with(&tls.bootstrap, &tls.security(SaslMechanism::ScramSha512, &tls.password), TIMEOUT)
            .await
            .unwrap();
    let want = flightline_operator::desired::topic::TopicSpec {
        name: topic.clone(),
        partitions: 1,
        replication_factor: 1,
        configs: Default::default(),
    };
    admin
        .apply(&want, &flightline_operator::desired::topic::TopicPlan { create: true, ..Default::default() })
        .await
        .unwrap();

    // librdkafka with the settings the services derive from their environment (ssl.ca.pem etc.).
    let config = |security: &KafkaSecurity| {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &tls.bootstrap);
        for (key, value) in security.rdkafka_settings() {
            config.set(key, value);
        }
        config
    };
    let mut mutual = tls.security(SaslMechanism::ScramSha512, &tls.password);
    mutual.client_certificate = Some(tls.client.clone());
    let producer: FutureProducer = config(&mutual).set("enable.idempotence", "true").create().unwrap();
    for i in 0..3 {
        let payload = format!("record {i}");
        producer
            .send(FutureRecord::<str, str>::to(&topic).key("k").payload(&payload), Duration::from_secs(20))
            .await
            .expect("delivered over SASL_SSL");
    }
    let consumer: BaseConsumer = config(&tls.security(SaslMechanism::Plain, &tls.password))
        .set("group.id", format!("e2e-secure-{topic}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 3 && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            got.push(String::from_utf8(message.unwrap().payload().unwrap().to_vec()).unwrap());
        }
    }
    assert_eq!(got, ["record 0", "record 1", "record 2"]);

    // A wrong password: librdkafka reports an authentication error instead of retrying silently.
    let refused: FutureProducer = config(&tls.security(SaslMechanism::ScramSha512, "not-the-password"))
        .set("message.timeout.ms", "5000")
        .create()
        .unwrap();
    let error = refused
        .send(FutureRecord::<str, str>::to(&topic).payload("x"), Duration::from_secs(10))
        .await
        .expect_err("a wrong password delivers nothing");
    assert!(
        format!("{:?}", error.0).contains("Authentication") || format!("{:?}", error.0).contains("MessageTimedOut"),
        "{:?}",
        error.0
    );
    admin.delete(std::slice::from_ref(&topic)).await.unwrap();

    // ClickHouse over HTTPS with the stack's CA; with another CA the handshake fails, named.
    let client = clickhouse_client(&tls.clickhouse_url, Some(&tls.ca)).unwrap();
    let answer: u8 = client.query("SELECT 42").fetch_one().await.expect("a query over HTTPS");
    assert_eq!(answer, 42);
    let untrusting = clickhouse_client(&tls.clickhouse_url, Some(&other_ca())).unwrap();
    let error = untrusting.query("SELECT 1").fetch_one::<u8>().await.expect_err("untrusted server");
    let why = tls_failure(&error).unwrap_or_else(|| panic!("not a TLS failure: {error:?}"));
    assert!(why.contains("UnknownIssuer"), "{why}");
}

/// Creates or replaces a Secret of string data (server-side apply).
async fn secret(stack: &Stack, ns: &TestNamespace, name: &str, data: Value) {
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), &ns.name);
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data});
    secrets.patch(name, &PatchParams::apply("e2e-user").force(), &Patch::Apply(&secret)).await.expect("apply Secret");
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn a_pipeline_runs_over_sasl_ssl_kafka_and_https_clickhouse_and_names_what_is_wrong() {
    let tls = Tls::from_env();
    let plain = Stack::connect().await;
    // The operator may use both the plaintext and the TLS endpoints; it has no defaults, so the
    // pipeline names the TLS ones.
    let stack = Stack {
        client: plain.client.clone(),
        bootstrap: format!("{},{}", plain.bootstrap, tls.bootstrap),
        clickhouse_url: format!("{},{}", plain.clickhouse_url, tls.clickhouse_url),
    };
    let ns = plain.namespace("secure").await;
    let mut options = OperatorOptions::new(&ns.name);
    options.with_defaults = false;
    let _operator = Operator::start(&stack, &options);

    secret(&plain, &ns, "kafka-user", json!({"username": tls.username, "password": tls.password})).await;
    secret(&plain, &ns, "kafka-ca", json!({"ca.crt": tls.ca})).await;
    secret(&plain, &ns, "kafka-client", json!({"tls.crt": tls.client.certificate_pem, "tls.key": tls.client.key_pem}))
        .await;
    secret(&plain, &ns, "clickhouse-ca", json!({"ca.crt": tls.ca})).await;

    let mut fp: FlightPipeline = example_pipeline(&ns);
    let spec: Value = json!({
        "bootstrapServers": tls.bootstrap,
        "tls": {"caSecret": {"name": "kafka-ca"}, "clientCertificateSecret": {"name": "kafka-client"}},
        "sasl": {"mechanism": "SCRAM-SHA-512", "credentialsSecret": {"name": "kafka-user"}},
    });
    let security: FlightPipeline = serde_json::from_value(json!({
        "apiVersion": "flightline.dev/v1alpha1", "kind": "FlightPipeline", "metadata": {"name": "x"},
        "spec": {"kafka": spec, "clickhouse": {"url": tls.clickhouse_url, "tls": {"caSecret": {"name": "clickhouse-ca"}}}},
    }))
    .unwrap();
    fp.spec.kafka.bootstrap_servers = security.spec.kafka.bootstrap_servers.clone();
    fp.spec.kafka.tls = security.spec.kafka.tls.clone();
    fp.spec.kafka.sasl = security.spec.kafka.sasl.clone();
    fp.spec.clickhouse.url = tls.clickhouse_url.clone();
    fp.spec.clickhouse.tls = security.spec.clickhouse.tls.clone();
    let api = pipelines(&plain, &ns);
    apply(&api, &fp).await.unwrap();
    wait_condition(&api, "scl", "Ready", "True", None).await;

    // Records in through ingest (SASL_SSL producer), through the sink (SASL_SSL consumer, HTTPS
    // inserts) and back out of query (HTTPS reads).
    let ingest = service_addr(&plain, &ns, "scl", "ingest").await;
    let query = service_addr(&plain, &ns, "scl", "query").await;
    let csv = data_set_csv();
    let first_rows: Vec<&[u8]> = csv.split(|b| *b == b'\n').take(51).collect();
    let body = first_rows.join(&b'\n');
    let (status, answer) = http("POST", &ingest, "/v1/flights", &[("Content-Type", "text/csv")], &body).await;
    assert_eq!(status, 202, "{answer}");
    let stored = async || {
        let (status, body) = http("GET", &query, "/v1/stats/delays?by=type", &[], b"").await;
        if status != 200 {
            return 0;
        }
        serde_json::from_str::<Value>(&body).unwrap()["total"]["flights"].as_u64().unwrap_or(0)
    };
    eventually("50 records are queryable over HTTPS", async || stored().await == 50).await;
    let (status, page) = http("GET", &query, "/v1/flights?limit=5", &[], b"").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(serde_json::from_str::<Value>(&page).unwrap()["flights"].as_array().map(Vec::len), Some(5), "{page}");

    // What is wrong is a condition with a reason of its own, soon, not a hang.
    secret(&plain, &ns, "kafka-user", json!({"username": tls.username, "password": "not-the-password"})).await;
    let failed = wait_condition(&api, "scl", "KafkaReady", "False", Some("KafkaAuthenticationFailed")).await;
    let message = &condition(&failed, "KafkaReady").unwrap().message;
    assert!(message.contains("SASL SCRAM-SHA-512") && message.contains("SASL_AUTHENTICATION_FAILED"), "{message}");
    secret(&plain, &ns, "kafka-user", json!({"username": tls.username, "password": tls.password})).await;
    secret(&plain, &ns, "kafka-ca", json!({"ca.crt": other_ca()})).await;
    let failed = wait_condition(&api, "scl", "KafkaReady", "False", Some("KafkaTLSFailed")).await;
    assert!(condition(&failed, "KafkaReady").unwrap().message.contains("UnknownIssuer"));
    secret(&plain, &ns, "kafka-ca", json!({"ca.crt": tls.ca})).await;
    wait_condition(&api, "scl", "KafkaReady", "True", None).await;
    secret(&plain, &ns, "clickhouse-ca", json!({"ca.crt": other_ca()})).await;
    let failed = wait_condition(&api, "scl", "ClickHouseReady", "False", Some("ClickHouseTLSFailed")).await;
    assert!(condition(&failed, "ClickHouseReady").unwrap().message.contains("UnknownIssuer"));
    secret(&plain, &ns, "clickhouse-ca", json!({"ca.crt": tls.ca})).await;
    wait_condition(&api, "scl", "Ready", "True", None).await;

    // SASL without TLS is refused at admission unless asked for (the CRD's CEL rule; the operator
    // checks the same for servers without CEL: spec::security's unit tests).
    fp.spec.kafka.tls = None;
    let refused = apply(&api, &fp).await.expect_err("SASL without TLS is refused");
    assert!(refused.to_string().contains("sasl.allowPlaintext"), "{refused}");
    fp.spec.kafka.sasl.as_mut().unwrap().allow_plaintext = true;
    apply(&api, &fp).await.expect("SASL_PLAINTEXT when asked for");
    // The operator then speaks plaintext to the TLS listener, which cannot work: said, not hung.
    let failed = wait_condition(&api, "scl", "KafkaReady", "False", Some("KafkaTLSFailed")).await;
    let message = &condition(&failed, "KafkaReady").unwrap().message;
    assert!(message.contains("set spec.kafka.tls"), "{message}");
}
