//! The topics and the table of a pipeline: claims first, then read everything, decide ownership
//! and plan in full, and only then change anything (or nothing, when any part is a conflict or
//! not supported). Creates are recorded in the status before they run; Delete removes only what
//! was recorded as created, where it was created.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::clickhouse::{ClickHouseAdmin, ClickHouseError};
use super::kafka::{KafkaError, PoolKey};
use super::security;
use super::{Context, Error};
use crate::conditions::{ConditionType, Finding, reason};
use crate::crd::{CaSecretRef, FlightPipeline, SecretKeyRefs, StorageKind, StorageRecord};
use crate::desired::table::{ObservedTable, TableOwner, TablePlan, plan_table};
use crate::desired::topic::{ObservedTopic, TopicPlan, TopicSpec, plan_topic};
use crate::ownership::claims::{Claimant, ResourceKey, conflicts, resource_keys};
use crate::ownership::{self, Found, Ownership};
use crate::spec::resolve::{Resolved, resolve};

/// What the storage step found and did.
pub struct Storage {
    pub kafka: Finding,
    pub clickhouse: Finding,
    /// Every resource exists and is this pipeline's to use: the workloads may run.
    pub usable: bool,
    pub topic_changed: bool,
    pub table_changed: bool,
    pub partitions: Option<i32>,
    /// `status.storage` after this step; `None` keeps what is there.
    pub records: Option<Vec<StorageRecord>>,
    /// A transient error to retry with backoff.
    pub error: Option<Error>,
}

/// The pipeline as the owner of what it creates.
pub fn owner_of(fp: &FlightPipeline) -> TableOwner {
    TableOwner { namespace: fp.namespace().unwrap_or_default(), name: fp.name_any(), uid: fp.uid().unwrap_or_default() }
}

/// The records to decide with: the status's, or for a pipeline reconciled before they existed,
/// what its status names (as adopted).
fn current_records(fp: &FlightPipeline, resolved: &Resolved) -> Vec<StorageRecord> {
    let status = fp.status.clone().unwrap_or_default();
    match status.storage {
        Some(records) => records,
        None => {
            let topics: Vec<String> = status.topic.into_iter().chain(status.dead_letter_topic).collect();
            ownership::legacy_records(
                &topics,
                status.table.as_deref(),
                &resolved.bootstrap_servers,
                &resolved.clickhouse_url,
            )
        }
    }
}

/// The claimants naming any of `keys`, from the index of every pipeline the controller knows,
/// brought up to date first.
pub async fn claimants_naming(ctx: &Context, keys: &[ResourceKey]) -> Vec<Claimant> {
    // Before the first full list the store may lack an older claimant: wait for it.
    let _ = ctx.pipelines.wait_until_ready().await;
    let mut cache = ctx.claims.lock().expect("claims lock");
    // Read under the lock: a reconcile holding an older copy of the store must not take the
    // index back to it.
    cache.refresh(&ctx.pipelines.state(), &ctx.defaults);
    cache.index.naming(keys)
}

/// Whether the pipeline a table's marker names is in the store now, with the marker's uid.
fn pipeline_is_live(ctx: &Context, owner: &TableOwner) -> bool {
    let key = kube::runtime::reflector::ObjectRef::new(&owner.name).within(&owner.namespace);
    ctx.pipelines.get(&key).is_some_and(|fp| fp.metadata.uid.as_deref() == Some(owner.uid.as_str()))
}

/// The claim index and what it was built from. Each check compares the store's pipelines with
/// what the index holds (uid and resourceVersion, no copy) and re-indexes only those that changed:
/// at 1,000 pipelines being created, rebuilding the whole index whenever any pipeline changed
/// was most of the operator's CPU (it grew with the square of the fleet).
#[derive(Default)]
pub struct ClaimIndexCache {
    keys: KeyCache,
    /// The resourceVersion each indexed pipeline had, by uid, and the refresh that last saw it.
    versions: HashMap<String, (String, u64)>,
    refreshes: u64,
    index: ClaimIndex,
}

impl ClaimIndexCache {
    fn refresh(&mut self, pipelines: &[Arc<FlightPipeline>], defaults: &crate::spec::resolve::Defaults) {
        self.refreshes += 1;
        let stamp = self.refreshes;
        for fp in pipelines {
            let (Some(uid), version) = (fp.metadata.uid.as_deref(), fp.metadata.resource_version.as_deref()) else {
                continue;
            };
            let version = version.unwrap_or_default();
            match self.versions.get_mut(uid) {
                Some((seen, at)) if seen == version => *at = stamp,
                _ => {
                    let claimant = claimant(fp, defaults, &mut self.keys);
                    self.index.insert(claimant);
                    self.versions.insert(uid.to_string(), (version.to_string(), stamp));
                }
            }
        }
        // Pipelines gone from the store: any not seen by this refresh.
        if self.versions.values().any(|(_, at)| *at != stamp) {
            let gone: Vec<String> =
                self.versions.iter().filter(|(_, (_, at))| *at != stamp).map(|(uid, _)| uid.clone()).collect();
            for uid in gone {
                self.versions.remove(&uid);
                self.keys.remove(&uid);
                self.index.remove(&uid);
            }
        }
    }
}

/// Every claimant by uid, and which of them name a resource (kind and name; locations are compared
/// by `conflicts`), so a check looks only at the pipelines that can conflict with it.
#[derive(Default)]
pub struct ClaimIndex {
    claimants: HashMap<String, Claimant>,
    by_name: HashMap<(StorageKind, String), HashSet<String>>,
}

impl ClaimIndex {
    pub fn new(claimants: Vec<Claimant>) -> Self {
        let mut index = Self::default();
        for claimant in claimants {
            index.insert(claimant);
        }
        index
    }

    /// Adds a claimant, or replaces the one of its uid.
    pub fn insert(&mut self, claimant: Claimant) {
        self.remove(&claimant.uid);
        for key in claimant.keys.iter().chain(&claimant.creator_of) {
            self.by_name.entry((key.kind, key.name.clone())).or_default().insert(claimant.uid.clone());
        }
        self.claimants.insert(claimant.uid.clone(), claimant);
    }

    pub fn remove(&mut self, uid: &str) {
        let Some(claimant) = self.claimants.remove(uid) else { return };
        for key in claimant.keys.iter().chain(&claimant.creator_of) {
            let name = (key.kind, key.name.clone());
            if let Some(uids) = self.by_name.get_mut(&name) {
                uids.remove(uid);
                if uids.is_empty() {
                    self.by_name.remove(&name);
                }
            }
        }
    }

    /// The claimants naming any of `keys`: all that `conflicts` could find a winner among.
    pub fn naming(&self, keys: &[ResourceKey]) -> Vec<Claimant> {
        let mut found: Vec<&String> =
            keys.iter().filter_map(|k| self.by_name.get(&(k.kind, k.name.clone()))).flatten().collect();
        found.sort_unstable();
        found.dedup();
        found.into_iter().filter_map(|uid| self.claimants.get(uid)).cloned().collect()
    }

    /// Whether a pipeline of this uid is in the store.
    pub fn has_uid(&self, uid: &str) -> bool {
        self.claimants.contains_key(uid)
    }

    pub fn len(&self) -> usize {
        self.claimants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.claimants.is_empty()
    }
}

/// Resource keys of each pipeline's spec, by uid, with the generation they were resolved at.
pub type KeyCache = HashMap<String, (Option<i64>, Vec<ResourceKey>)>;

fn claimant(fp: &FlightPipeline, defaults: &crate::spec::resolve::Defaults, cache: &mut KeyCache) -> Claimant {
    let uid = fp.uid().unwrap_or_default();
    let namespace = fp.namespace().unwrap_or_default();
    let generation = fp.metadata.generation;
    let spec_keys = match cache.get(&uid) {
        Some((g, keys)) if *g == generation => keys.clone(),
        _ => {
            let keys =
                resolve(&namespace, &fp.name_any(), &fp.spec, defaults).map(|r| resource_keys(&r)).unwrap_or_default();
            cache.insert(uid.clone(), (generation, keys.clone()));
            keys
        }
    };
    let recorded: Vec<&StorageRecord> =
        fp.status.as_ref().and_then(|s| s.storage.as_ref()).into_iter().flatten().collect();
    Claimant {
        pipeline: format!("{namespace}/{}", fp.name_any()),
        uid,
        created: fp.creation_timestamp().map(|t| t.0),
        keys: spec_keys.into_iter().chain(recorded.iter().map(|r| ResourceKey::from(*r))).collect(),
        creator_of: created_keys(recorded.iter().copied()),
    }
}

/// The keys of the records that say this pipeline created them.
fn created_keys<'a>(records: impl IntoIterator<Item = &'a StorageRecord>) -> Vec<ResourceKey> {
    records.into_iter().filter(|r| r.created_by_flightline).map(ResourceKey::from).collect()
}

/// One topic, read and decided.
struct TopicPart {
    spec: TopicSpec,
    key: ResourceKey,
    observed: Option<ObservedTopic>,
    ownership: Ownership,
    plan: TopicPlan,
}

struct TablePart {
    key: ResourceKey,
    ownership: Ownership,
    plan: TablePlan,
}

/// Brings the topics and the table to the spec. A conflict (a resource this pipeline may not use)
/// is decided again on the pipeline as the API server has it now when that differs from the cached
/// copy: a reconcile can run before the watch delivers this operator's own `status.storage` write
/// (the record of a create it just made), and deciding on the stale copy would call the pipeline's
/// own topic someone else's and, writing the stale records back, forget for good that it made it.
pub async fn ensure(fp: &FlightPipeline, resolved: &Resolved, ctx: &Context) -> Storage {
    let storage = ensure_as_cached(fp, resolved, ctx).await;
    let conflict = [&storage.kafka, &storage.clickhouse].iter().any(|f| f.reason == reason::RESOURCE_CONFLICT);
    if !conflict {
        return storage;
    }
    let api: Api<FlightPipeline> = Api::namespaced(ctx.client.clone(), &fp.namespace().unwrap_or_default());
    let records = |fp: &FlightPipeline| fp.status.as_ref().and_then(|s| s.storage.clone());
    match api.get(&fp.name_any()).await {
        Ok(fresh) if fresh.uid() == fp.uid() && records(&fresh) != records(fp) => {
            tracing::info!(pipeline = %fp.name_any(), "storage records changed since the cached copy: deciding again");
            ensure_as_cached(&fresh, resolved, ctx).await
        }
        _ => storage,
    }
}

#[tracing::instrument(name = "storage", skip_all)]
async fn ensure_as_cached(fp: &FlightPipeline, resolved: &Resolved, ctx: &Context) -> Storage {
    let me = owner_of(fp);
    let keys = resource_keys(resolved);

    // 1. Claims of older pipelines: change nothing, contact nothing.
    let mine = Claimant {
        pipeline: format!("{}/{}", me.namespace, me.name),
        uid: me.uid.clone(),
        created: fp.creation_timestamp().map(|t| t.0),
        keys: keys.clone(),
        creator_of: created_keys(fp.status.as_ref().and_then(|s| s.storage.as_ref()).into_iter().flatten()),
    };
    let lost = conflicts(&mine, &claimants_naming(ctx, &mine.keys).await);
    if !lost.is_empty() {
        let finding = |type_, kind| {
            let messages: Vec<String> = lost.iter().filter(|c| c.key.kind == kind).map(|c| c.message()).collect();
            if messages.is_empty() {
                Finding::failed(type_, reason::RESOURCE_CONFLICT, "left as it is while another resource is in conflict")
            } else {
                Finding::failed(type_, reason::RESOURCE_CONFLICT, messages.join("; "))
            }
        };
        return Storage {
            kafka: finding(ConditionType::KafkaReady, StorageKind::Topic),
            clickhouse: finding(ConditionType::ClickHouseReady, StorageKind::Table),
            records: Some(current_records(fp, resolved)),
            ..Storage::nothing()
        };
    }

    // 2. Read both systems. One unreachable: the other still goes on, by its own plan.
    let records = current_records(fp, resolved);
    let topics = [Some(&resolved.topic), resolved.dead_letter.as_ref()];
    // Both at once; each read is batched with other reconciles' reads of the same cluster.
    let clickhouse = async {
        let admin = clickhouse_admin(
            &resolved.namespace,
            resolved.credentials.as_ref(),
            resolved.clickhouse_ca.as_ref(),
            &resolved.clickhouse_url,
            ctx,
        )
        .await?;
        let observed = ctx.clickhouse.describe(&admin, &resolved.table).await?;
        Ok::<_, Error>((admin, observed))
    };
    let (kafka, clickhouse) = tokio::join!(observe_topics(resolved, ctx, topics.into_iter().flatten()), clickhouse);

    // 3. Decide and plan everything before changing anything.
    let kafka = kafka.map(|(admin, observed)| {
        let parts: Vec<TopicPart> = observed
            .into_iter()
            .map(|(spec, observed)| {
                let key = ResourceKey::topic(&spec.name, &resolved.bootstrap_servers);
                let found = observed.as_ref().map(|_| Found { marker: None, marker_is_live: false });
                let ownership = ownership::decide(&key, found, &me, &records, fp.spec.kafka.adopt_existing);
                let plan = plan_topic(&spec, observed.as_ref(), ownership == Ownership::Adopted);
                TopicPart { spec, key, observed, ownership, plan }
            })
            .collect();
        (admin, parts)
    });
    let clickhouse = clickhouse.map(|(admin, observed): (ClickHouseAdmin, Option<ObservedTable>)| {
        let key = ResourceKey::table(&resolved.table.qualified(), &resolved.clickhouse_url);
        let marker = observed.as_ref().and_then(|t| TableOwner::from_comment(&t.comment));
        let marker_is_live = marker.as_ref().is_some_and(|m| pipeline_is_live(ctx, m));
        let found = observed.as_ref().map(|_| Found { marker: marker.as_ref(), marker_is_live });
        let ownership = ownership::decide(&key, found, &me, &records, fp.spec.clickhouse.adopt_existing);
        let plan = plan_table(&resolved.table, observed.as_ref(), &me);
        (admin, TablePart { key, ownership, plan })
    });

    let topic_conflicts: Vec<String> = match &kafka {
        Ok((_, parts)) => parts.iter().filter_map(|p| conflict_message(&p.ownership)).collect(),
        Err(_) => vec![],
    };
    let topic_blocks: Vec<String> = match &kafka {
        Ok((_, parts)) => parts.iter().flat_map(|p| p.plan.not_supported.iter().cloned()).collect(),
        Err(_) => vec![],
    };
    let table_conflicts: Vec<String> = match &clickhouse {
        Ok((_, part)) => conflict_message(&part.ownership).into_iter().collect(),
        Err(_) => vec![],
    };
    let table_blocks: Vec<String> = match &clickhouse {
        Ok((_, part)) => part.plan.not_supported.clone(),
        Err(_) => vec![],
    };
    // A conflict anywhere stops everything; so does a difference that cannot be made.
    let conflict = !topic_conflicts.is_empty() || !table_conflicts.is_empty();
    let blocked = conflict || !topic_blocks.is_empty() || !table_blocks.is_empty();

    // 4. Record what is about to be created, then carry the plans out.
    // A missing resource becomes this pipeline's only when it is about to be created.
    let use_of = |key: &ResourceKey, ownership: &Ownership| match ownership {
        Ownership::Created => Some((key.clone(), true)),
        Ownership::Missing if !blocked => Some((key.clone(), true)),
        Ownership::Adopted => Some((key.clone(), false)),
        Ownership::Missing | Ownership::Conflict(_) => None,
    };
    let mut in_use: Vec<(ResourceKey, bool)> = Vec::new();
    match &kafka {
        Ok((_, parts)) => in_use.extend(parts.iter().filter_map(|p| use_of(&p.key, &p.ownership))),
        Err(_) => in_use.extend(records_for(&records, &keys, StorageKind::Topic)),
    }
    match &clickhouse {
        Ok((_, part)) => in_use.extend(use_of(&part.key, &part.ownership)),
        Err(_) => in_use.extend(records_for(&records, &keys, StorageKind::Table)),
    }
    // In a conflict nothing is this pipeline's that was not before.
    let next = if conflict { records.clone() } else { ownership::next_records(&records, &in_use) };
    let creates = !blocked
        && (kafka.as_ref().is_ok_and(|(_, parts)| parts.iter().any(|p| p.ownership == Ownership::Missing))
            || clickhouse.as_ref().is_ok_and(|(_, part)| part.ownership == Ownership::Missing));
    if creates && let Err(e) = write_records(fp, ctx, &next).await {
        let message = format!("could not record the resources about to be created ({e}); nothing was created");
        return Storage {
            kafka: Finding::failed(ConditionType::KafkaReady, reason::WAITING, message.clone()),
            clickhouse: Finding::failed(ConditionType::ClickHouseReady, reason::WAITING, message),
            error: Some(e.into()),
            records: Some(records),
            ..Storage::nothing()
        };
    }
    let held_back = "changes wait: another part of the plan is a conflict or cannot be made, so nothing was changed";

    let mut storage = Storage { records: Some(next), ..Storage::nothing() };
    let mut lost_races: Vec<ResourceKey> = Vec::new();
    let mut topics_exist = false;
    storage.kafka = match kafka {
        Err(e) => kafka_failure(e, &mut storage.error),
        Ok(_) if !topic_conflicts.is_empty() => {
            Finding::failed(ConditionType::KafkaReady, reason::RESOURCE_CONFLICT, topic_conflicts.join("; "))
        }
        Ok((_, parts)) if !topic_blocks.is_empty() => {
            topics_exist = parts.iter().all(|p| p.observed.is_some());
            Finding::failed(
                ConditionType::KafkaReady,
                reason::NOT_SUPPORTED,
                format!("{}; nothing was changed", topic_blocks.join("; ")),
            )
        }
        Ok((_, parts)) if blocked && !parts.iter().all(|p| p.plan.is_noop()) => {
            topics_exist = parts.iter().all(|p| p.observed.is_some());
            Finding::failed(ConditionType::KafkaReady, reason::WAITING, held_back)
        }
        Ok((pool_key, parts)) => {
            let mut failure = None;
            // The topics at once: creates share a CreateTopics request with other reconciles'.
            let changes: Vec<&TopicPart> = parts.iter().filter(|p| !p.plan.is_noop()).collect();
            let results = futures::future::join_all(changes.iter().map(|part| {
                tracing::info!(topic = %part.spec.name, plan = ?part.plan, "changing Kafka topic");
                ctx.kafka.apply(&pool_key, &part.spec, &part.plan)
            }))
            .await;
            for (part, result) in changes.into_iter().zip(results) {
                match result {
                    Ok(()) => storage.topic_changed = true,
                    Err(KafkaError::Exists { .. }) => lost_races.push(part.key.clone()),
                    Err(e) if failure.is_none() => failure = Some((e, part.plan.create)),
                    Err(e) => tracing::warn!(topic = %part.spec.name, error = %e, "Kafka topic change failed"),
                }
            }
            let main = parts.iter().find(|p| p.spec.name == resolved.topic.name);
            storage.partitions = main.map(|p| {
                let had = p.observed.as_ref().map(|o| o.partitions).unwrap_or(p.spec.partitions);
                if failure.is_none() { p.plan.grow_partitions_to.unwrap_or(had) } else { had }
            });
            match failure {
                // A broker without CreatePartitions (or config APIs): report, do not retry. Without
                // CreateTopics there is no topic, so the workloads cannot start either.
                Some((e, create)) if e.is_unsupported() => {
                    topics_exist = !create;
                    let mut finding = kafka_failure(e, &mut storage.error);
                    finding.reason = reason::NOT_SUPPORTED;
                    finding
                }
                Some((e, _)) => kafka_failure(e, &mut storage.error),
                None => {
                    topics_exist = true;
                    let dlq = resolved
                        .dead_letter
                        .as_ref()
                        .map(|t| format!(" and dead-letter topic {}", t.name))
                        .unwrap_or_default();
                    let partitions = storage.partitions.unwrap_or_default();
                    let message = format!("topic {} ({partitions} partitions){dlq} ready", resolved.topic.name);
                    Finding::ok(ConditionType::KafkaReady, reason::TOPIC_READY, message)
                }
            }
        }
    };
    let mut table_exists = false;
    storage.clickhouse = match clickhouse {
        Err(e) => clickhouse_failure(e, &mut storage.error),
        Ok(_) if !table_conflicts.is_empty() => {
            Finding::failed(ConditionType::ClickHouseReady, reason::RESOURCE_CONFLICT, table_conflicts.join("; "))
        }
        Ok((_, part)) if !table_blocks.is_empty() => {
            table_exists = !part.plan.create;
            Finding::failed(
                ConditionType::ClickHouseReady,
                reason::NOT_SUPPORTED,
                format!("{}; nothing was changed", table_blocks.join("; ")),
            )
        }
        Ok((_, part)) if blocked && !part.plan.statements.is_empty() => {
            table_exists = !part.plan.create;
            Finding::failed(ConditionType::ClickHouseReady, reason::WAITING, held_back)
        }
        Ok((admin, part)) => match admin.apply(&resolved.table, &part.plan).await {
            Err(ClickHouseError::Exists { .. }) => {
                lost_races.push(part.key.clone());
                Finding::failed(ConditionType::ClickHouseReady, reason::RESOURCE_CONFLICT, "")
            }
            Err(e) => clickhouse_failure(e.into(), &mut storage.error),
            Ok(()) => {
                table_exists = true;
                storage.table_changed = !part.plan.statements.is_empty();
                let message = format!("table {} ready", resolved.table.qualified());
                Finding::ok(ConditionType::ClickHouseReady, reason::TABLE_READY, message)
            }
        },
    };

    // 5. A create that found the resource there lost a race: it is not this pipeline's.
    if !lost_races.is_empty() {
        let kept: Vec<StorageRecord> = storage
            .records
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| !lost_races.iter().any(|k| k.same_as(&ResourceKey::from(r))))
            .collect();
        if let Err(e) = write_records(fp, ctx, &kept).await {
            storage.error = Some(e.into());
        }
        for key in &lost_races {
            let finding = match key.kind {
                StorageKind::Topic => &mut storage.kafka,
                StorageKind::Table => &mut storage.clickhouse,
            };
            let message = format!(
                "{} was created by someone else while this pipeline was creating it; it is left as it is",
                key.describe()
            );
            *finding = Finding::failed(finding.type_, reason::RESOURCE_CONFLICT, message);
        }
        storage.records = Some(kept);
        topics_exist = false;
    }
    storage.usable = topics_exist && table_exists && !conflict && storage.error.is_none();
    storage
}

fn conflict_message(ownership: &Ownership) -> Option<String> {
    match ownership {
        Ownership::Conflict(message) => Some(message.clone()),
        _ => None,
    }
}

/// The recorded resources of one kind that are still wanted, when their system could not be read.
fn records_for(records: &[StorageRecord], keys: &[ResourceKey], kind: StorageKind) -> Vec<(ResourceKey, bool)> {
    records
        .iter()
        .filter(|r| r.kind == kind)
        .map(|r| (ResourceKey::from(r), r.created_by_flightline))
        .filter(|(k, _)| keys.iter().any(|want| want.same_as(k)))
        .collect()
}

impl Storage {
    fn nothing() -> Self {
        Storage {
            kafka: Finding::failed(ConditionType::KafkaReady, reason::WAITING, ""),
            clickhouse: Finding::failed(ConditionType::ClickHouseReady, reason::WAITING, ""),
            usable: false,
            topic_changed: false,
            table_changed: false,
            partitions: None,
            records: None,
            error: None,
        }
    }
}

/// The condition for a Kafka failure (`outcome::kafka`); a transient one is kept to retry.
fn kafka_failure(e: KafkaError, error: &mut Option<Error>) -> Finding {
    let outcome = super::outcome::kafka(&e);
    if outcome.transient {
        *error = Some(e.into());
    }
    outcome.finding
}

/// The condition for a ClickHouse failure (`outcome::clickhouse`); a transient one is kept to retry.
fn clickhouse_failure(e: Error, error: &mut Option<Error>) -> Finding {
    let outcome = super::outcome::clickhouse(&e);
    if outcome.transient && error.is_none() {
        *error = Some(e);
    }
    outcome.finding
}

/// Describes the topics, each in the cluster's next batched Metadata and DescribeConfigs
/// requests (shared with other reconciles); the key names the cluster for the plan's changes.
async fn observe_topics<'a>(
    resolved: &Resolved,
    ctx: &Context,
    topics: impl Iterator<Item = &'a TopicSpec>,
) -> Result<(PoolKey, Vec<(TopicSpec, Option<ObservedTopic>)>), KafkaError> {
    let security = security::kafka(&resolved.namespace, &resolved.kafka_security, ctx).await?;
    let topics: Vec<&TopicSpec> = topics.collect();
    let key = PoolKey { bootstrap_servers: resolved.bootstrap_servers.clone(), security, timeout: ctx.io_timeout };
    let observed = futures::future::join_all(topics.iter().map(|t| ctx.kafka.describe(&key, &t.name))).await;
    let observed =
        topics.into_iter().cloned().zip(observed).map(|(t, o)| o.map(|o| (t, o))).collect::<Result<_, _>>()?;
    Ok((key, observed))
}

/// Writes `status.storage` at once (a merge patch of that field alone), before a create runs, so a
/// crash between create and the status update cannot forget who created the resource.
#[tracing::instrument(name = "write_records", skip_all)]
async fn write_records(fp: &FlightPipeline, ctx: &Context, records: &[StorageRecord]) -> Result<(), kube::Error> {
    let api: Api<FlightPipeline> = Api::namespaced(ctx.client.clone(), &fp.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": FlightPipeline::api_version(&()),
        "kind": FlightPipeline::kind(&()),
        "status": { "storage": records },
    });
    api.patch_status(&fp.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

pub async fn clickhouse_admin(
    namespace: &str,
    credentials: Option<&SecretKeyRefs>,
    ca: Option<&CaSecretRef>,
    url: &str,
    ctx: &Context,
) -> Result<ClickHouseAdmin, Error> {
    let ca_pem = security::clickhouse_ca(namespace, ca, ctx).await?;
    let credentials = match credentials {
        None => None,
        Some(refs) => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
            let secret = secrets
                .get_opt(&refs.name)
                .await?
                .ok_or_else(|| Error::Credentials(format!("Secret {} not found", refs.name)))?;
            let read = |key: &str| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                    .ok_or_else(|| Error::Credentials(format!("Secret {} has no key {key}", refs.name)))
            };
            Some((read(&refs.username_key)?, read(&refs.password_key)?))
        }
    };
    Ok(ctx.clickhouse.get(url, credentials, ca_pem.as_deref(), ctx.io_timeout)?)
}

/// Deletes what this pipeline created, where it created it, except what another pipeline uses now
/// (has in its `status.storage`, i.e. adopted). Returns what was deleted, in words.
pub async fn delete_created(fp: &FlightPipeline, ctx: &Context) -> Result<Vec<String>, Error> {
    let me = owner_of(fp);
    let records = fp.status.as_ref().and_then(|s| s.storage.clone()).unwrap_or_default();
    let _ = ctx.pipelines.wait_until_ready().await;
    let pipelines = ctx.pipelines.state();
    let users = pipelines.iter().filter(|other| other.uid().as_deref() != Some(me.uid.as_str()));
    let others: Vec<(String, Vec<ResourceKey>)> = users
        .map(|other| {
            let recorded = other.status.as_ref().and_then(|s| s.storage.as_ref()).into_iter().flatten();
            let name = format!("{}/{}", other.namespace().unwrap_or_default(), other.name_any());
            (name, recorded.map(ResourceKey::from).collect())
        })
        .collect();
    let mut deletable = Vec::new();
    for record in ownership::to_delete(&records) {
        let key = ResourceKey::from(record);
        match others.iter().find(|(_, keys)| keys.iter().any(|k| k.same_as(&key))) {
            Some((other, _)) => {
                tracing::warn!(resource = %key.describe(), user = %other, "not deleting a resource another pipeline uses")
            }
            None => deletable.push(key),
        }
    }
    // Credentials first: if their Secret is gone, fail before deleting anything.
    let credentials = fp.spec.clickhouse.credentials_secret.as_ref();
    let ca = fp.spec.clickhouse.tls.as_ref().and_then(|t| t.ca_secret.as_ref());
    let mut tables = Vec::new();
    for key in deletable.iter().filter(|k| k.kind == StorageKind::Table) {
        tables.push((key, clickhouse_admin(&me.namespace, credentials, ca, &key.location, ctx).await?));
    }
    // The topics were made with the spec's TLS and SASL; a spec made invalid since falls back to
    // plaintext, and the broker's refusal then says what is wrong.
    let refs = crate::spec::security::kafka(&fp.spec.kafka).unwrap_or_default();
    let kafka_security = security::kafka(&me.namespace, &refs, ctx).await?;
    let mut deleted = Vec::new();
    let mut by_cluster: Vec<(&str, Vec<String>)> = Vec::new();
    for key in deletable.iter().filter(|k| k.kind == StorageKind::Topic) {
        match by_cluster.iter_mut().find(|(location, _)| *location == key.location) {
            Some((_, names)) => names.push(key.name.clone()),
            None => by_cluster.push((&key.location, vec![key.name.clone()])),
        }
    }
    for (location, names) in by_cluster {
        let key =
            PoolKey { bootstrap_servers: location.into(), security: kafka_security.clone(), timeout: ctx.io_timeout };
        ctx.kafka.delete(&key, &names).await?;
        deleted.extend(names.iter().map(|n| format!("topic {n} at {location}")));
    }
    for (key, admin) in tables {
        let (database, table) = key.name.split_once('.').unwrap_or(("", &key.name));
        if admin.drop_created(database, table, &me).await? {
            deleted.push(key.describe());
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ownership::claims::Conflict;

    fn claimant(pipeline: &str, created: &str, keys: Vec<ResourceKey>) -> Claimant {
        Claimant {
            pipeline: pipeline.into(),
            uid: format!("uid-{pipeline}"),
            created: created.parse().ok(),
            keys,
            creator_of: vec![],
        }
    }

    fn topic(name: &str, servers: &str) -> ResourceKey {
        ResourceKey::topic(name, servers)
    }

    /// The index hands `conflicts` only the pipelines naming one of the keys, and the answer is the
    /// one a check against every pipeline gives.
    #[test]
    fn the_index_finds_the_same_conflicts_as_a_check_against_all() {
        let mut all = vec![
            claimant("a/old", "2026-01-01T00:00:00Z", vec![topic("shared", "k-0:9092,k-1:9092")]),
            claimant("b/other-cluster", "2025-01-01T00:00:00Z", vec![topic("shared", "elsewhere:9092")]),
            claimant("c/new", "2026-02-01T00:00:00Z", vec![topic("shared", "k-1:9092"), topic("c-own", "k-0:9092")]),
            claimant("d/creator", "2026-03-01T00:00:00Z", vec![]),
        ];
        all[3].creator_of = vec![topic("c-own", "k-0:9092")];
        for i in 0..1000 {
            all.push(claimant(
                &format!("fleet/p{i}"),
                "2026-01-01T00:00:00Z",
                vec![topic(&format!("t{i}"), "k-0:9092")],
            ));
        }
        let index = ClaimIndex::new(all.clone());
        assert_eq!(index.len(), 1004);
        for me in &all {
            let naming = index.naming(&me.keys);
            assert!(naming.len() <= 4, "{}: {}", me.pipeline, naming.len());
            assert_eq!(conflicts(me, &naming), conflicts(me, &all), "{}", me.pipeline);
        }
        let lost: Vec<Conflict> = conflicts(&all[2], &index.naming(&all[2].keys));
        let winners: Vec<&str> = lost.iter().map(|c| c.winner.as_str()).collect();
        assert_eq!(winners, ["a/old", "d/creator"]);
        assert!(index.has_uid("uid-a/old") && !index.has_uid("uid-gone"));
    }

    /// The index follows the store pipeline by pipeline: a changed one is indexed again, a gone one
    /// leaves, and an unchanged store costs no re-indexing.
    #[test]
    fn the_index_follows_each_pipelines_changes_and_removal() {
        use crate::spec::resolve::Defaults;
        let defaults = Defaults {
            kafka_bootstrap_servers: Some("k-0:9092".into()),
            clickhouse_url: Some("http://ch:8123".into()),
            ..Defaults::default()
        };
        let fp = |name: &str, topic: &str, version: &str| -> Arc<FlightPipeline> {
            Arc::new(
                serde_json::from_value(json!({
                    "apiVersion": "flightline.dev/v1alpha1", "kind": "FlightPipeline",
                    "metadata": {"name": name, "namespace": "air", "uid": format!("uid-{name}"),
                                 "generation": version.parse::<i64>().unwrap(),
                                 "resourceVersion": version, "creationTimestamp": "2026-01-01T00:00:00Z"},
                    "spec": {"kafka": {"topic": topic}},
                }))
                .unwrap(),
            )
        };
        let names = |cache: &ClaimIndexCache, topic_name: &str| -> Vec<String> {
            cache.index.naming(&[topic(topic_name, "k-0:9092")]).into_iter().map(|c| c.pipeline).collect()
        };
        let mut cache = ClaimIndexCache::default();
        cache.refresh(&[fp("a", "shared", "1"), fp("b", "b-own", "1")], &defaults);
        assert_eq!(names(&cache, "shared"), ["air/a"]);
        assert_eq!(cache.keys.len(), 2);
        // b's spec now names the shared topic too (a new generation and resourceVersion): indexed again.
        cache.refresh(&[fp("a", "shared", "1"), fp("b", "shared", "2")], &defaults);
        assert_eq!(names(&cache, "shared"), ["air/a", "air/b"]);
        assert!(names(&cache, "b-own").is_empty(), "its old key is gone");
        // The same resourceVersion is not looked at again (the spec is not even resolved).
        cache.keys.clear();
        cache.refresh(&[fp("a", "shared", "1"), fp("b", "shared", "2")], &defaults);
        assert!(cache.keys.is_empty(), "nothing re-indexed");
        // a deleted: it leaves the index.
        cache.refresh(&[fp("b", "shared", "2")], &defaults);
        assert_eq!(names(&cache, "shared"), ["air/b"]);
        assert!(!cache.index.has_uid("uid-a") && cache.index.has_uid("uid-b"));
        assert_eq!((cache.index.len(), cache.versions.len()), (1, 1));
    }
}
