//! End-to-end: nothing taken. Pipelines of careless or hostile teams cannot change, expire or drop
//! a topic or table they did not create or adopt; claims between pipelines go to the oldest; default
//! names never collide; Delete removes only what a pipeline created, where it created it.

mod support;

use std::time::Duration;

use clickhouse::Row;
use flightline_operator::crd::{DeletionPolicy, ExtraColumnType, FlightPipeline, StorageKind};
use flightline_operator::desired::topic::{TopicPlan, TopicSpec};
use flightline_operator::reconcile::kafka::KafkaAdmin;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde::Deserialize;
use support::*;

/// A pipeline with no workloads (storage is what these tests are about), deleted with `Delete`.
fn storage_only(ns: &TestNamespace, name: &str, topic: &str, database: &str, table: &str) -> FlightPipeline {
    let mut fp = example_pipeline(ns);
    fp.metadata.name = Some(name.into());
    fp.spec.kafka.topic = topic.into();
    fp.spec.clickhouse.database = database.into();
    fp.spec.clickhouse.table = table.into();
    fp.spec.deletion_policy = DeletionPolicy::Delete;
    for workload in [
        &mut fp.spec.ingest.workload,
        &mut fp.spec.sink.workload,
        &mut fp.spec.query.workload,
        &mut fp.spec.predict.workload,
    ] {
        workload.enabled = false;
    }
    fp
}

async fn rows(stack: &Stack, database: &str, table: &str) -> u64 {
    #[derive(Row, Deserialize)]
    struct Count {
        n: u64,
    }
    let sql = format!("SELECT count() AS n FROM `{database}`.`{table}`");
    stack.clickhouse().query(&sql).fetch_one::<Count>().await.expect("count rows").n
}

async fn execute(stack: &Stack, sql: &str) {
    stack.clickhouse().query(sql).execute().await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A topic made by hand, as another team would.
async fn create_topic(stack: &Stack, name: &str, retention_ms: &str) {
    let mut admin = KafkaAdmin::connect(&stack.bootstrap, Duration::from_secs(10)).await.expect("broker");
    let spec = TopicSpec {
        name: name.into(),
        partitions: 1,
        replication_factor: 1,
        configs: [("retention.ms".to_string(), retention_ms.to_string())].into(),
    };
    admin.apply(&spec, &TopicPlan { create: true, ..TopicPlan::default() }).await.expect("create topic");
}

async fn deployments(stack: &Stack, namespace: &str) -> usize {
    let api: Api<Deployment> = Api::namespaced(stack.client.clone(), namespace);
    api.list(&ListParams::default()).await.unwrap().items.len()
}

fn message<'a>(fp: &'a FlightPipeline, type_: &str) -> &'a str {
    &condition(fp, type_).unwrap_or_else(|| panic!("no {type_} condition")).message
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn two_teams_in_two_namespaces_on_one_table_and_one_topic_the_first_keeps_them() {
    let stack = Stack::connect().await;
    let team_a = stack.namespace("team-a").await;
    let team_b = stack.namespace("team-b").await;
    // One operator per namespace, as two namespaced installations would run.
    let _operator_a = Operator::start(&stack, &OperatorOptions::new(&team_a.name));
    let _operator_b = Operator::start(&stack, &OperatorOptions::new(&team_b.name));
    let (api_a, api_b) = (pipelines(&stack, &team_a), pipelines(&stack, &team_b));
    let topic = format!("{}.shared", team_a.name);
    let database = team_a.database.clone();

    let first = storage_only(&team_a, "flights", &topic, &database, "shared");
    apply(&api_a, &first).await.unwrap();
    wait_condition(&api_a, "flights", "Ready", "True", None).await;
    execute(&stack, &format!("INSERT INTO `{database}`.shared (scheduled_at, source_topic) VALUES (now(), 'a')")).await;

    // Team B names the same topic and table, with the sink on: refused, nothing started.
    let mut second = storage_only(&team_b, "flights", &topic, &database, "shared");
    second.spec.sink.workload.enabled = true;
    apply(&api_b, &second).await.unwrap();
    let refused = wait_condition(&api_b, "flights", "Ready", "False", Some("ResourceConflict")).await;
    assert_eq!(condition(&refused, "KafkaReady").unwrap().reason, "ResourceConflict");
    assert_eq!(condition(&refused, "ClickHouseReady").unwrap().reason, "ResourceConflict");
    let owner = format!("{}/flights", team_a.name);
    assert!(message(&refused, "ClickHouseReady").contains(&owner), "{}", message(&refused, "ClickHouseReady"));
    assert!(message(&refused, "KafkaReady").contains("spec.kafka.adoptExisting"));
    assert_eq!(deployments(&stack, &team_b.name).await, 0, "the loser starts no workloads");
    let storage = refused.status.unwrap().storage.unwrap_or_default();
    assert!(storage.iter().all(|r| !r.created_by_flightline), "the loser records nothing as its own: {storage:?}");

    // Team B deletes with Delete: team A's topic, table and row stay.
    api_b.delete("flights", &DeleteParams::default()).await.unwrap();
    wait_gone(&api_b, "flights").await;
    assert!(stack.topic(&topic).await.is_some());
    assert!(stack.topic(&format!("{topic}.dlq")).await.is_some());
    assert_eq!(rows(&stack, &database, "shared").await, 1);
    wait_condition(&api_a, "flights", "Ready", "True", None).await;

    // Team B again; then team A deletes its pipeline (Delete): the names are free, B gets them.
    apply(&api_b, &second).await.unwrap();
    wait_condition(&api_b, "flights", "Ready", "False", Some("ResourceConflict")).await;
    api_a.delete("flights", &DeleteParams::default()).await.unwrap();
    wait_gone(&api_a, "flights").await;
    let freed = wait_condition(&api_b, "flights", "Ready", "True", None).await;
    assert_eq!(rows(&stack, &database, "shared").await, 0, "B has a table of its own, not A's rows");
    let storage = freed.status.unwrap().storage.unwrap();
    assert_eq!(storage.iter().filter(|r| r.created_by_flightline).count(), 3, "{storage:?}");
    assert_eq!(deployments(&stack, &team_b.name).await, 1, "the sink runs now");
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn in_one_namespace_the_older_pipeline_wins_a_table_and_the_younger_follows_when_it_goes() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("claims").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let older = storage_only(&ns, "older", "", &ns.database, "shared");
    apply(&api, &older).await.unwrap();
    wait_condition(&api, "older", "Ready", "True", None).await;
    // Both claim one table; their own topics differ.
    apply(&api, &storage_only(&ns, "younger", "", &ns.database, "shared")).await.unwrap();
    let lost = wait_condition(&api, "younger", "ClickHouseReady", "False", Some("ResourceConflict")).await;
    let text = message(&lost, "ClickHouseReady");
    assert!(text.contains(&format!("claimed by FlightPipeline {}/older", ns.name)), "{text}");
    assert_eq!(condition(&lost, "Ready").unwrap().reason, "ResourceConflict");
    // The loser altered nothing, not even its own topic.
    assert!(stack.topic(&format!("{}.younger.flights", ns.name)).await.is_none());

    api.delete("older", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "older").await;
    wait_condition(&api, "younger", "Ready", "True", None).await;
    assert!(stack.topic(&format!("{}.younger.flights", ns.name)).await.is_some());
}

#[derive(Row, Deserialize)]
struct TableFacts {
    engine_full: String,
    comment: String,
}

async fn table_facts(stack: &Stack, database: &str, table: &str) -> TableFacts {
    let sql = "SELECT engine_full, comment FROM system.tables WHERE database = ? AND name = ?";
    stack.clickhouse().query(sql).bind(database).bind(table).fetch_one().await.expect("table exists")
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn a_hand_made_table_is_left_as_it_is_adopted_or_not_and_never_dropped() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("victim").await;
    let victim = format!("{}_victim", ns.database);
    execute(&stack, &format!("CREATE DATABASE IF NOT EXISTS `{victim}`")).await;
    execute(&stack, &format!("CREATE TABLE `{victim}`.t (id UInt64) ENGINE = MergeTree ORDER BY id")).await;
    execute(&stack, &format!("INSERT INTO `{victim}`.t VALUES (1), (2), (3)")).await;
    let untouched = async || {
        let columns = stack.columns(&victim, "t").await;
        assert_eq!(columns.keys().collect::<Vec<_>>(), ["id"], "no column added");
        assert!(!table_facts(&stack, &victim, "t").await.engine_full.contains("TTL"), "no TTL set");
        assert_eq!(rows(&stack, &victim, "t").await, 3);
    };

    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let mut fp = storage_only(&ns, "taker", "", &victim, "t");
    fp.spec.clickhouse.ttl = "1d".into();
    fp.spec.sink.workload.enabled = true;
    apply(&api, &fp).await.unwrap();
    let refused = wait_condition(&api, "taker", "ClickHouseReady", "False", Some("ResourceConflict")).await;
    let text = message(&refused, "ClickHouseReady");
    assert!(text.contains(&format!("{victim}.t")) && text.contains("spec.clickhouse.adoptExisting: true"), "{text}");
    assert_eq!(condition(&refused, "Ready").unwrap().reason, "ResourceConflict");
    // Conflict anywhere: the pipeline's own (missing) topics are not created either.
    assert!(stack.topic(&format!("{}.taker.flights", ns.name)).await.is_none());
    assert_eq!(deployments(&stack, &ns.name).await, 0);
    tokio::time::sleep(Duration::from_secs(5)).await; // resyncs every 2 s
    untouched().await;

    // Adopted, its shape is still not Flightline's: NotSupported, and still nothing altered.
    fp.spec.clickhouse.adopt_existing = true;
    apply(&api, &fp).await.unwrap();
    let blocked = wait_condition(&api, "taker", "ClickHouseReady", "False", Some("NotSupported")).await;
    assert!(message(&blocked, "ClickHouseReady").contains("nothing was changed"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    untouched().await;

    // Deleted with Delete: the table stays.
    api.delete("taker", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "taker").await;
    untouched().await;
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn an_adopted_topic_and_table_are_used_and_survive_delete() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("adopt").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let topic = format!("{}.kept", ns.name);

    // An earlier pipeline made them and was deleted with Retain.
    let mut earlier = storage_only(&ns, "earlier", &topic, &ns.database, "kept");
    earlier.spec.deletion_policy = DeletionPolicy::Retain;
    apply(&api, &earlier).await.unwrap();
    wait_condition(&api, "earlier", "Ready", "True", None).await;
    execute(&stack, &format!("INSERT INTO `{}`.kept (scheduled_at) VALUES (now())", ns.database)).await;
    api.delete("earlier", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "earlier").await;
    let marker = table_facts(&stack, &ns.database, "kept").await.comment;
    assert!(marker.starts_with(&format!("flightline.dev/owner={}/earlier/", ns.name)), "{marker}");

    // A new pipeline on them: refused until it adopts; the table's marker names who made it.
    let mut later = storage_only(&ns, "later", &topic, &ns.database, "kept");
    later.spec.kafka.retention = "36h".into();
    apply(&api, &later).await.unwrap();
    let refused = wait_condition(&api, "later", "ClickHouseReady", "False", Some("ResourceConflict")).await;
    assert!(message(&refused, "ClickHouseReady").contains(&format!("{}/earlier", ns.name)));
    let retention = async || stack.topic(&topic).await.unwrap().configs.unwrap()["retention.ms"].clone();
    assert_eq!(retention().await, "604800000", "not changed while refused");

    later.spec.kafka.adopt_existing = true;
    later.spec.clickhouse.adopt_existing = true;
    apply(&api, &later).await.unwrap();
    let ready = wait_condition(&api, "later", "Ready", "True", None).await;
    assert_eq!(retention().await, "129600000", "an adopted topic is managed");
    let storage = ready.status.unwrap().storage.unwrap();
    assert_eq!(storage.len(), 3, "{storage:?}");
    assert!(storage.iter().all(|r| !r.created_by_flightline), "{storage:?}");

    api.delete("later", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "later").await;
    assert!(stack.topic(&topic).await.is_some());
    assert!(stack.topic(&format!("{topic}.dlq")).await.is_some());
    assert_eq!(rows(&stack, &ns.database, "kept").await, 1);
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn delete_removes_only_what_the_pipeline_created_where_it_created_it() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("recorded").await;
    let mut operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let topic = format!("{}.mine", ns.name);
    // Another team's dead-letter topic, adopted on purpose.
    create_topic(&stack, &format!("{topic}.dlq"), "86400000").await;
    let mut fp = storage_only(&ns, "mine", &topic, &ns.database, "mine");
    fp.spec.kafka.adopt_existing = true;
    apply(&api, &fp).await.unwrap();
    let ready = wait_condition(&api, "mine", "Ready", "True", None).await;
    let storage = ready.status.unwrap().storage.unwrap();
    let created = |kind: StorageKind, name: &str| {
        storage.iter().find(|r| r.kind == kind && r.name == name).map(|r| (r.created_by_flightline, r.location.clone()))
    };
    assert_eq!(created(StorageKind::Topic, &topic), Some((true, stack.bootstrap.clone())));
    assert_eq!(created(StorageKind::Topic, &format!("{topic}.dlq")), Some((false, stack.bootstrap.clone())));
    let table = format!("{}.mine", ns.database);
    assert_eq!(created(StorageKind::Table, &table), Some((true, stack.clickhouse_url.clone())));

    // The operator comes back without defaults: the spec no longer resolves to any location, and
    // Delete still removes what it created, at the recorded location.
    operator.kill();
    let mut options = OperatorOptions::new(&ns.name);
    options.with_defaults = false;
    let _operator = Operator::start(&stack, &options);
    wait_condition(&api, "mine", "Ready", "False", Some("InvalidSpec")).await;
    api.delete("mine", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "mine").await;
    assert!(stack.topic(&topic).await.is_none(), "the created topic is deleted");
    assert!(stack.columns(&ns.database, "mine").await.is_empty(), "the created table is dropped");
    assert!(stack.topic(&format!("{topic}.dlq")).await.is_some(), "the adopted topic stays");
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn pipeline_c_in_a_b_and_pipeline_b_c_in_a_get_different_topics_and_tables() {
    let stack = Stack::connect().await;
    let a = stack.namespace("names").await;
    // `<a>-b`: the namespace whose name with the pipeline's once made the same table.
    let a_b = TestNamespace { name: format!("{}-b", a.name), database: a.database.clone() };
    let namespace = Namespace {
        metadata: kube::api::ObjectMeta { name: Some(a_b.name.clone()), ..Default::default() },
        ..Default::default()
    };
    Api::<Namespace>::all(stack.client.clone()).create(&PostParams::default(), &namespace).await.unwrap();
    let _operator_a = Operator::start(&stack, &OperatorOptions::new(&a.name));
    let _operator_a_b = Operator::start(&stack, &OperatorOptions::new(&a_b.name));
    let mut ready = Vec::new();
    for (ns, name) in [(&a_b, "c"), (&a, "b-c")] {
        let api = pipelines(&stack, ns);
        let fp = storage_only(ns, name, "", &a.database, "");
        apply(&api, &fp).await.unwrap();
        let fp = wait_condition(&api, name, "Ready", "True", None).await;
        let status = fp.status.clone().unwrap();
        ready.push((status.topic.unwrap(), status.table.unwrap(), fp.uid().unwrap()));
    }
    let [(topic_1, table_1, _), (topic_2, table_2, _)] = &ready[..] else { unreachable!() };
    assert_ne!(topic_1, topic_2);
    assert_ne!(table_1, table_2);
    assert_eq!(*topic_1, format!("{}.c.flights", a_b.name));
    assert_eq!(*topic_2, format!("{}.b-c.flights", a.name));
    for (_, table, uid) in &ready {
        let (database, table) = table.split_once('.').unwrap();
        let comment = table_facts(&stack, database, table).await.comment;
        let owner = flightline_operator::desired::table::TableOwner::from_comment(&comment);
        assert_eq!(owner.map(|o| o.uid).as_deref(), Some(uid.as_str()), "{table} is marked: {comment}");
    }
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn a_table_of_the_kafka_position_shape_is_refused_by_name_and_keeps_its_rows() {
    use flightline_operator::desired::table::BASE_COLUMNS;
    let stack = Stack::connect().await;
    let ns = stack.namespace("old-shape").await;
    // The table as Flightline made it before record ids: sorted by Kafka position, no identity.
    let columns: Vec<String> = BASE_COLUMNS
        .iter()
        .filter(|(n, _)| !["record_id", "version"].contains(n))
        .map(|(n, t)| format!("`{n}` {t}"))
        .collect();
    execute(&stack, &format!("CREATE DATABASE IF NOT EXISTS `{}`", ns.database)).await;
    execute(
        &stack,
        &format!(
            "CREATE TABLE `{}`.old ({}) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(scheduled_at) \
             ORDER BY (scheduled_at, source_partition, source_offset, source_topic)",
            ns.database,
            columns.join(", ")
        ),
    )
    .await;
    execute(&stack, &format!("INSERT INTO `{}`.old (scheduled_at, source_offset) VALUES (now(), 1)", ns.database))
        .await;

    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let mut fp = storage_only(&ns, "old", "", &ns.database, "old");
    fp.spec.clickhouse.adopt_existing = true;
    apply(&api, &fp).await.unwrap();
    let refused = wait_condition(&api, "old", "ClickHouseReady", "False", Some("NotSupported")).await;
    assert!(
        message(&refused, "ClickHouseReady").contains("name a new table"),
        "{}",
        message(&refused, "ClickHouseReady")
    );
    // Nothing was changed: no identity columns added to a table that cannot use them, the row kept.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!stack.columns(&ns.database, "old").await.contains_key("record_id"));
    assert_eq!(rows(&stack, &ns.database, "old").await, 1);
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn a_plan_with_a_part_that_cannot_be_made_changes_nothing_at_all() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("blocked").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let mut fp = storage_only(&ns, "six", "", &ns.database, "six");
    fp.spec.kafka.partitions = 6;
    apply(&api, &fp).await.unwrap();
    wait_condition(&api, "six", "Ready", "True", None).await;
    let topic = format!("{}.six.flights", ns.name);

    // Fewer partitions (impossible), a new retention, a TTL and a column (possible): none of it runs.
    fp.spec.kafka.partitions = 3;
    fp.spec.kafka.retention = "36h".into();
    fp.spec.clickhouse.ttl = "30d".into();
    fp.spec.clickhouse.extra_columns =
        vec![flightline_operator::crd::ExtraColumn { name: "gate".into(), column_type: ExtraColumnType::String }];
    apply(&api, &fp).await.unwrap();
    let blocked = wait_condition(&api, "six", "KafkaReady", "False", Some("NotSupported")).await;
    assert!(message(&blocked, "KafkaReady").contains("nothing was changed"), "{}", message(&blocked, "KafkaReady"));
    assert_eq!(condition(&blocked, "ClickHouseReady").unwrap().reason, "WaitingForStorage");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(stack.topic(&topic).await.unwrap().configs.unwrap()["retention.ms"], "604800000");
    assert!(!stack.columns(&ns.database, "six").await.contains_key("gate"));
    assert!(!table_facts(&stack, &ns.database, "six").await.engine_full.contains("TTL"));

    // Back to 6 partitions: the rest goes through.
    fp.spec.kafka.partitions = 6;
    apply(&api, &fp).await.unwrap();
    wait_condition(&api, "six", "Ready", "True", None).await;
    assert_eq!(stack.topic(&topic).await.unwrap().configs.unwrap()["retention.ms"], "129600000");
    assert_eq!(stack.columns(&ns.database, "six").await["gate"], "String");
    assert!(table_facts(&stack, &ns.database, "six").await.engine_full.contains("TTL"));
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn a_forged_status_record_does_not_get_a_hand_made_table_dropped() {
    use kube::api::{Patch, PatchParams};
    let stack = Stack::connect().await;
    let ns = stack.namespace("forged").await;
    let victim = format!("{}_victim", ns.database);
    execute(&stack, &format!("CREATE DATABASE IF NOT EXISTS `{victim}`")).await;
    execute(&stack, &format!("CREATE TABLE `{victim}`.t (id UInt64) ENGINE = MergeTree ORDER BY id")).await;
    execute(&stack, &format!("INSERT INTO `{victim}`.t VALUES (1), (2), (3)")).await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    apply(&api, &storage_only(&ns, "liar", "", &ns.database, "own")).await.unwrap();
    let ready = wait_condition(&api, "liar", "Ready", "True", None).await;

    // Someone with write access to the status claims the pipeline created the victim's table.
    let mut storage = ready.status.unwrap().storage.unwrap();
    let forged = serde_json::json!({
        "kind": "Table", "name": format!("{victim}.t"), "location": stack.clickhouse_url, "createdByFlightline": true
    });
    storage.push(serde_json::from_value(forged).unwrap());
    let patch = serde_json::json!({"status": {"storage": storage}});
    api.patch_status("liar", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    api.delete("liar", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "liar").await;
    assert!(stack.columns(&ns.database, "own").await.is_empty(), "its own table is dropped");
    assert_eq!(rows(&stack, &victim, "t").await, 3, "the hand-made table is not");
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn an_older_pipeline_cannot_adopt_the_table_and_topic_a_younger_one_created() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("creator").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let mut older = storage_only(&ns, "older", &format!("{}.older-own", ns.name), &ns.database, "older_own");
    apply(&api, &older).await.unwrap();
    wait_condition(&api, "older", "Ready", "True", None).await;
    let topic = format!("{}.younger-own", ns.name);
    apply(&api, &storage_only(&ns, "younger", &topic, &ns.database, "younger_own")).await.unwrap();
    wait_condition(&api, "younger", "Ready", "True", None).await;
    // A row a one-day TTL would expire.
    let insert = format!("INSERT INTO `{}`.younger_own (scheduled_at) VALUES (now() - INTERVAL 3 DAY)", ns.database);
    execute(&stack, &insert).await;

    // The older pipeline names both, adopting, with a TTL and a short retention: it is older, but
    // the younger one created them, so they stay the younger one's and nothing changes.
    older.spec.kafka.topic = topic.clone();
    older.spec.kafka.adopt_existing = true;
    older.spec.kafka.retention = "1h".into();
    older.spec.clickhouse.table = "younger_own".into();
    older.spec.clickhouse.adopt_existing = true;
    older.spec.clickhouse.ttl = "1d".into();
    apply(&api, &older).await.unwrap();
    let refused = wait_condition(&api, "older", "Ready", "False", Some("ResourceConflict")).await;
    for type_ in ["KafkaReady", "ClickHouseReady"] {
        let text = message(&refused, type_);
        assert!(text.contains(&format!("{}/younger, which created it", ns.name)), "{type_}: {text}");
    }
    tokio::time::sleep(Duration::from_secs(5)).await; // resyncs every 2 s
    assert!(!table_facts(&stack, &ns.database, "younger_own").await.engine_full.contains("TTL"));
    execute(&stack, &format!("OPTIMIZE TABLE `{}`.younger_own FINAL", ns.database)).await;
    assert_eq!(rows(&stack, &ns.database, "younger_own").await, 1);
    assert_eq!(stack.topic(&topic).await.unwrap().configs.unwrap()["retention.ms"], "604800000");
    wait_condition(&api, "younger", "Ready", "True", None).await;
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn internal_topics_and_another_pipelines_default_names_are_refused_and_leave_it_free() {
    use flightline_operator::desired::table::default_table_name;
    let stack = Stack::connect().await;
    let ns = stack.namespace("squat").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let victim_table = default_table_name(&ns.name, "victim").unwrap();
    let victim_topic = format!("{}.victim.flights", ns.name);
    // Kafka's own topics are refused at admission (the CRD's CEL rule), adopted or not.
    let mut offsets = storage_only(&ns, "offsets", "__consumer_offsets", &ns.database, "offsets");
    offsets.spec.kafka.adopt_existing = true;
    offsets.spec.kafka.retention = "1ms".into();
    let error = apply(&api, &offsets).await.expect_err("__consumer_offsets is refused").to_string();
    assert!(error.contains("spec.kafka.topic") && error.contains("reserved"), "{error}");
    let cases = [
        (
            storage_only(&ns, "by-topic", &victim_topic, &ns.database, "by_topic"),
            format!("spec.kafka.topic: {victim_topic:?} is the default name of pipeline {}/victim", ns.name),
        ),
        (
            storage_only(&ns, "by-table", "", &ns.database, &victim_table),
            format!("spec.clickhouse.table: {victim_table:?} is the default name of pipeline {}/victim", ns.name),
        ),
    ];
    for (fp, _) in &cases {
        apply(&api, fp).await.unwrap();
    }
    for (fp, text) in &cases {
        let refused = wait_condition(&api, &fp.name_any(), "Ready", "False", Some("InvalidSpec")).await;
        assert!(message(&refused, "Ready").contains(text), "{text:?} in {:?}", message(&refused, "Ready"));
    }
    // The pipeline whose names they are gets them.
    apply(&api, &storage_only(&ns, "victim", "", &ns.database, "")).await.unwrap();
    let ready = wait_condition(&api, "victim", "Ready", "True", None).await;
    let storage = ready.status.unwrap().storage.unwrap();
    assert!(storage.iter().any(|r| r.name == format!("{}.{victim_table}", ns.database) && r.created_by_flightline));
    assert!(storage.iter().any(|r| r.name == victim_topic && r.created_by_flightline), "{storage:?}");
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn an_adopted_compacted_topic_is_never_turned_into_a_delete_topic() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("compact").await;
    let topic = format!("{}.state", ns.name);
    let mut admin = KafkaAdmin::connect(&stack.bootstrap, Duration::from_secs(10)).await.expect("broker");
    let spec = TopicSpec {
        name: topic.clone(),
        partitions: 1,
        replication_factor: 1,
        configs: [("cleanup.policy".to_string(), "compact".to_string())].into(),
    };
    admin.apply(&spec, &TopicPlan { create: true, ..TopicPlan::default() }).await.expect("create topic");
    let policy = async || stack.topic(&topic).await.unwrap().configs.unwrap()["cleanup.policy"].clone();
    assert_eq!(policy().await, "compact");

    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let mut fp = storage_only(&ns, "state", &topic, &ns.database, "state");
    fp.spec.kafka.adopt_existing = true;
    fp.spec.kafka.partitions = 1; // as the topic has: the policy is the only difference that cannot be made
    fp.spec.kafka.retention = "1h".into();
    apply(&api, &fp).await.unwrap();
    let blocked = wait_condition(&api, "state", "KafkaReady", "False", Some("NotSupported")).await;
    let text = message(&blocked, "KafkaReady");
    assert!(text.contains("cleanup.policy=compact") && text.contains("nothing was changed"), "{text}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(policy().await, "compact");
    assert_ne!(
        stack.topic(&topic).await.unwrap().configs.unwrap().get("retention.ms").map(String::as_str),
        Some("3600000")
    );
}
