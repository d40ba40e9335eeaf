//! Kafka I/O: read a topic back from the broker, carry out a `TopicPlan`, delete topics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::{
    AlterConfigsRequest, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, MetadataRequest, MetadataResponse, TopicName, alter_configs_request,
    create_partitions_request::CreatePartitionsTopic,
    create_topics_request::{CreatableTopic, CreatableTopicConfig},
    delete_topics_request::DeleteTopicState,
    describe_configs_request::DescribeConfigsResource,
    incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig},
    metadata_request::MetadataRequestTopic,
};
use kafka_protocol::protocol::StrBytes;

use flightline_service::connect::KafkaSecurity;

use super::batch::{Batcher, NoAnswer, Settings};
use super::kafka_wire::{Connection, Security, WireError, error_text};
use crate::desired::topic::{ObservedTopic, TopicPlan, TopicSpec};

const TOPIC_RESOURCE: i8 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const OPERATION_TIMEOUT_MS: i32 = 30_000;

#[derive(Debug, Clone, thiserror::Error)]
pub enum KafkaError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("Kafka refused to {action} topic {topic}: {detail}")]
    Refused { action: &'static str, topic: String, code: i16, detail: String },
    /// A create found the topic there: someone else made it since it was described.
    #[error("topic {topic} was created by someone else meanwhile")]
    Exists { topic: String },
    /// A Secret of `spec.kafka.tls`/`sasl` is missing or lacks a key.
    #[error("Kafka TLS/SASL settings: {0}")]
    Secret(String),
}

impl From<NoAnswer> for KafkaError {
    /// Transient: the next reconcile asks again.
    fn from(e: NoAnswer) -> Self {
        Self::Wire(WireError::Io { addr: "(batched call)".into(), source: std::io::Error::other(e.to_string()) })
    }
}

/// Error codes a retry can cure: leadership moving, a controller change, a slow broker.
const RETRIABLE_CODES: [i16; 5] = [
    5,  /* LEADER_NOT_AVAILABLE */
    6,  /* NOT_LEADER */
    7,  /* REQUEST_TIMED_OUT */
    15, /* COORDINATOR_NOT_AVAILABLE */
    41, /* NOT_CONTROLLER */
];

impl KafkaError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Wire(e) => e.is_transient(),
            Self::Refused { code, .. } => RETRIABLE_CODES.contains(code),
            Self::Exists { .. } | Self::Secret(_) => false,
        }
    }
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::Wire(WireError::Unsupported { .. }))
    }
    /// A TLS handshake or TLS settings failure: the CA, a certificate or the listener is wrong.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Wire(WireError::Tls { .. } | WireError::Settings(_)))
    }
    /// The broker refused the SASL mechanism or the credentials.
    pub fn is_authentication(&self) -> bool {
        matches!(self, Self::Wire(WireError::Authentication { .. }))
    }
}

/// What makes two admin sessions interchangeable: the same bootstrap servers, security and timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolKey {
    pub bootstrap_servers: String,
    pub security: KafkaSecurity,
    pub timeout: Duration,
}

/// Idle sessions per cluster, reused across reconciles: at most `per_key` kept per cluster and
/// `keys` clusters (the oldest cluster is forgotten first). A session that failed is not put back.
pub struct SessionPool<T> {
    idle: Mutex<Vec<(PoolKey, Vec<T>)>>,
    per_key: usize,
    keys: usize,
}

impl<T> SessionPool<T> {
    pub fn new(per_key: usize, keys: usize) -> Self {
        Self { idle: Mutex::new(Vec::new()), per_key, keys }
    }

    /// An idle session for `key`, the most recently used first.
    pub fn take(&self, key: &PoolKey) -> Option<T> {
        let mut idle = self.idle.lock().expect("pool lock");
        idle.iter_mut().find(|(k, _)| k == key).and_then(|(_, sessions)| sessions.pop())
    }

    /// Keeps a session that worked for the next reconcile (dropped when the pool is full).
    pub fn put(&self, key: PoolKey, session: T) {
        let mut idle = self.idle.lock().expect("pool lock");
        if let Some((_, sessions)) = idle.iter_mut().find(|(k, _)| *k == key) {
            if sessions.len() < self.per_key {
                sessions.push(session);
            }
            return;
        }
        if idle.len() >= self.keys {
            idle.remove(0);
        }
        idle.push((key, vec![session]));
    }

    /// Idle sessions kept, over all clusters.
    pub fn idle(&self) -> usize {
        self.idle.lock().expect("pool lock").iter().map(|(_, s)| s.len()).sum()
    }
}

impl<T> Default for SessionPool<T> {
    /// 16 idle sessions per cluster (the default reconcile concurrency), 64 clusters.
    fn default() -> Self {
        Self::new(16, 64)
    }
}

/// An admin session: a connection to a bootstrap server and, when it is another broker, to the
/// controller (topic creation and deletion go to the controller on ZooKeeper-mode clusters).
pub struct KafkaAdmin {
    bootstrap: Connection,
    controller: Option<Connection>,
    security: Security,
    timeout: Duration,
}

impl KafkaAdmin {
    /// A PLAINTEXT session.
    pub async fn connect(bootstrap_servers: &str, timeout: Duration) -> Result<Self, KafkaError> {
        Self::connect_with(bootstrap_servers, &KafkaSecurity::default(), timeout).await
    }

    /// A session with TLS and/or SASL as `security` says. A TLS or authentication failure ends the
    /// attempt at once: another bootstrap server of the same cluster would refuse the same way.
    #[tracing::instrument(name = "kafka_connect", skip_all, fields(cluster = %bootstrap_servers))]
    pub async fn connect_with(
        bootstrap_servers: &str,
        security: &KafkaSecurity,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let security = Security::new(security)?;
        let mut last_error = None;
        for server in bootstrap_servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match Connection::connect(server, &security, timeout).await {
                Ok(bootstrap) => {
                    return Ok(Self { bootstrap, controller: None, security, timeout });
                }
                Err(e @ (WireError::Tls { .. } | WireError::Authentication { .. })) => return Err(e.into()),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or(WireError::Protocol { addr: bootstrap_servers.into(), message: "no bootstrap servers".into() })
            .into())
    }

    async fn metadata(&mut self, topics: &[&str]) -> Result<MetadataResponse, KafkaError> {
        let mut request = MetadataRequest::default();
        request.topics = Some(
            topics
                .iter()
                .map(|t| {
                    let mut topic = MetadataRequestTopic::default();
                    topic.name = Some(topic_name(t));
                    topic
                })
                .collect(),
        );
        request.allow_auto_topic_creation = false;
        Ok(self.bootstrap.call(request, 12).await?.0)
    }

    /// The connection admin writes go to: the controller when metadata names another broker.
    async fn controller(&mut self) -> Result<&mut Connection, KafkaError> {
        if self.controller.is_none() {
            let metadata = self.metadata(&[]).await?;
            let address = metadata
                .brokers
                .iter()
                .find(|b| b.node_id == metadata.controller_id)
                .map(|b| format!("{}:{}", b.host.as_str(), b.port));
            if let Some(address) = address.filter(|a| a != self.bootstrap.addr()) {
                match Connection::connect(&address, &self.security, self.timeout).await {
                    Ok(conn) => self.controller = Some(conn),
                    // An advertised address we cannot reach (e.g. outside the cluster): KRaft brokers
                    // forward admin writes, so the bootstrap connection is the fallback.
                    Err(e) => {
                        tracing::debug!(%address, error = %e, "controller unreachable; using bootstrap broker")
                    }
                }
            }
        }
        Ok(self.controller.as_mut().unwrap_or(&mut self.bootstrap))
    }

    /// The topic as the broker has it, or `None` when it does not exist.
    #[tracing::instrument(name = "kafka_describe", skip_all, fields(cluster = %self.bootstrap.addr(), topic = %name))]
    pub async fn describe(&mut self, name: &str) -> Result<Option<ObservedTopic>, KafkaError> {
        let metadata = self.metadata(&[name]).await?;
        let Some(topic) = metadata.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == name)) else {
            return Ok(None);
        };
        match topic.error_code {
            0 => {}
            UNKNOWN_TOPIC_OR_PARTITION => return Ok(None),
            code => {
                return Err(KafkaError::Refused {
                    action: "describe",
                    topic: name.into(),
                    code,
                    detail: error_text(code, None),
                });
            }
        }
        let replication_factor = topic.partitions.iter().map(|p| p.replica_nodes.len()).max().unwrap_or(0) as i16;
        Ok(Some(ObservedTopic {
            partitions: topic.partitions.len() as i32,
            replication_factor,
            configs: self.describe_configs(name).await?,
        }))
    }

    /// Many topics in one Metadata request and one DescribeConfigs request (of the topics that
    /// exist): one answer per name, in order; a topic's own error code answers that topic alone.
    #[tracing::instrument(name = "kafka_describe_batch", skip_all, fields(cluster = %self.bootstrap.addr(), topics = names.len()))]
    pub async fn describe_many(
        &mut self,
        names: &[String],
    ) -> Result<Vec<Result<Option<ObservedTopic>, KafkaError>>, KafkaError> {
        let unique: Vec<&str> = {
            let mut seen = HashSet::new();
            names.iter().map(String::as_str).filter(|n| seen.insert(*n)).collect()
        };
        let metadata = self.metadata(&unique).await?;
        // Per topic: (partitions, replication factor) when it exists.
        let mut shapes: HashMap<&str, Result<Option<Shape>, KafkaError>> = HashMap::new();
        for name in &unique {
            let topic = metadata.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == *name));
            let shape = match topic.map(|t| (t.error_code, t)) {
                None | Some((UNKNOWN_TOPIC_OR_PARTITION, _)) => Ok(None),
                Some((0, topic)) => {
                    let replicas = topic.partitions.iter().map(|p| p.replica_nodes.len()).max().unwrap_or(0);
                    Ok(Some((topic.partitions.len() as i32, replicas as i16)))
                }
                Some((code, _)) => Err(KafkaError::Refused {
                    action: "describe",
                    topic: (*name).into(),
                    code,
                    detail: error_text(code, None),
                }),
            };
            shapes.insert(name, shape);
        }
        let existing: Vec<&str> =
            unique.iter().copied().filter(|n| matches!(shapes.get(n), Some(Ok(Some(_))))).collect();
        let mut configs = self.describe_configs_many(&existing).await?;
        Ok(names
            .iter()
            .map(|name| match &shapes[name.as_str()] {
                Err(e) => Err(e.clone()),
                Ok(None) => Ok(None),
                Ok(Some((partitions, replication_factor))) => {
                    let configs = configs.remove(name.as_str()).unwrap_or(Ok(None));
                    configs.map(|configs| {
                        Some(ObservedTopic {
                            partitions: *partitions,
                            replication_factor: *replication_factor,
                            configs,
                        })
                    })
                }
            })
            .collect())
    }

    /// The configs of many topics in one request, by topic (`None` on a broker without the API).
    async fn describe_configs_many<'a>(
        &mut self,
        names: &[&'a str],
    ) -> Result<HashMap<&'a str, Result<Option<BTreeMap<String, String>>, KafkaError>>, KafkaError> {
        if names.is_empty() || !self.bootstrap.supports::<DescribeConfigsRequest>() {
            return Ok(names.iter().map(|n| (*n, Ok(None))).collect());
        }
        let mut request = DescribeConfigsRequest::default();
        request.resources = names
            .iter()
            .map(|name| {
                let mut resource = DescribeConfigsResource::default();
                resource.resource_type = TOPIC_RESOURCE;
                resource.resource_name = StrBytes::from_string((*name).into());
                resource
            })
            .collect();
        let (response, _) = self.bootstrap.call(request, 4).await?;
        Ok(names
            .iter()
            .map(|name| {
                let result = response.results.iter().find(|r| r.resource_name.as_str() == *name);
                let answer = match result {
                    None => Ok(None),
                    Some(r) if r.error_code != 0 => Err(KafkaError::Refused {
                        action: "describe the configs of",
                        topic: (*name).into(),
                        code: r.error_code,
                        detail: error_text(r.error_code, r.error_message.as_ref()),
                    }),
                    Some(r) => Ok(Some(
                        r.configs
                            .iter()
                            .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
                            .collect(),
                    )),
                };
                (*name, answer)
            })
            .collect())
    }

    /// Many topics in one CreateTopics request: one answer per spec, in order. A name asked for
    /// twice is created once; the second asker finds it made by someone else (`Exists`).
    #[tracing::instrument(name = "kafka_create_batch", skip_all, fields(cluster = %self.bootstrap.addr(), topics = wants.len()))]
    pub async fn create_many(&mut self, wants: &[TopicSpec]) -> Result<Vec<Result<(), KafkaError>>, KafkaError> {
        let mut seen = HashSet::new();
        let first: Vec<bool> = wants.iter().map(|w| seen.insert(w.name.as_str())).collect();
        let mut request = CreateTopicsRequest::default();
        request.topics = wants.iter().zip(&first).filter(|(_, first)| **first).map(|(w, _)| creatable(w)).collect();
        request.timeout_ms = OPERATION_TIMEOUT_MS;
        let (response, _) = self.controller().await?.call(request, 7).await?;
        Ok(wants
            .iter()
            .zip(first)
            .map(|(want, first)| {
                if !first {
                    return Err(KafkaError::Exists { topic: want.name.clone() });
                }
                let result = response.topics.iter().find(|r| r.name.0.as_str() == want.name);
                match result.map(|r| (r.error_code, r)) {
                    None | Some((0, _)) => Ok(()),
                    // Another writer won the race: the topic is not this pipeline's.
                    Some((TOPIC_ALREADY_EXISTS, _)) => Err(KafkaError::Exists { topic: want.name.clone() }),
                    Some((code, r)) => Err(KafkaError::Refused {
                        action: "create",
                        topic: want.name.clone(),
                        code,
                        detail: error_text(code, r.error_message.as_ref()),
                    }),
                }
            })
            .collect())
    }

    async fn describe_configs(&mut self, name: &str) -> Result<Option<BTreeMap<String, String>>, KafkaError> {
        if !self.bootstrap.supports::<DescribeConfigsRequest>() {
            return Ok(None);
        }
        let mut resource = DescribeConfigsResource::default();
        resource.resource_type = TOPIC_RESOURCE;
        resource.resource_name = StrBytes::from_string(name.into());
        let mut request = DescribeConfigsRequest::default();
        request.resources = vec![resource];
        let (response, _) = self.bootstrap.call(request, 4).await?;
        let Some(result) = response.results.first() else {
            return Ok(None);
        };
        if result.error_code != 0 {
            return Err(KafkaError::Refused {
                action: "describe the configs of",
                topic: name.into(),
                code: result.error_code,
                detail: error_text(result.error_code, result.error_message.as_ref()),
            });
        }
        Ok(Some(
            result
                .configs
                .iter()
                .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
                .collect(),
        ))
    }

    /// Carries out a plan. Partition growth on a broker without `CreatePartitions` comes back as
    /// `Unsupported`; the caller reports it and does not retry.
    pub async fn apply(&mut self, want: &TopicSpec, plan: &TopicPlan) -> Result<(), KafkaError> {
        if plan.create {
            self.create(want).await?;
            return Ok(());
        }
        if !plan.set_configs.is_empty() {
            self.set_configs(&want.name, &plan.set_configs, &want.configs).await?;
        }
        if let Some(count) = plan.grow_partitions_to {
            self.grow(&want.name, count).await?;
        }
        Ok(())
    }

    #[tracing::instrument(name = "kafka_create", skip_all, fields(cluster = %self.bootstrap.addr(), topic = %want.name))]
    async fn create(&mut self, want: &TopicSpec) -> Result<(), KafkaError> {
        let mut request = CreateTopicsRequest::default();
        request.topics = vec![creatable(want)];
        request.timeout_ms = OPERATION_TIMEOUT_MS;
        let (response, _) = self.controller().await?.call(request, 7).await?;
        for result in &response.topics {
            // Another writer won the race: the topic is not this pipeline's.
            if result.error_code == TOPIC_ALREADY_EXISTS {
                return Err(KafkaError::Exists { topic: want.name.clone() });
            }
            if result.error_code != 0 {
                return Err(KafkaError::Refused {
                    action: "create",
                    topic: want.name.clone(),
                    code: result.error_code,
                    detail: error_text(result.error_code, result.error_message.as_ref()),
                });
            }
        }
        Ok(())
    }

    /// Sets `changed` with IncrementalAlterConfigs; brokers older than 2.3 only have AlterConfigs,
    /// which replaces the whole set, so they get every managed config (`all`).
    #[tracing::instrument(name = "kafka_set_configs", skip_all, fields(cluster = %self.bootstrap.addr(), topic = %topic))]
    async fn set_configs(
        &mut self,
        topic: &str,
        changed: &BTreeMap<String, String>,
        all: &BTreeMap<String, String>,
    ) -> Result<(), KafkaError> {
        let controller = self.controller().await?;
        let (code, message) = if controller.supports::<IncrementalAlterConfigsRequest>() {
            let mut resource = AlterConfigsResource::default();
            resource.resource_type = TOPIC_RESOURCE;
            resource.resource_name = StrBytes::from_string(topic.into());
            resource.configs = changed
                .iter()
                .map(|(k, v)| {
                    let mut config = AlterableConfig::default();
                    config.name = StrBytes::from_string(k.clone());
                    config.config_operation = 0; // SET
                    config.value = Some(StrBytes::from_string(v.clone()));
                    config
                })
                .collect();
            let mut request = IncrementalAlterConfigsRequest::default();
            request.resources = vec![resource];
            let (response, _) = controller.call(request, 1).await?;
            response.responses.first().map(|r| (r.error_code, r.error_message.clone())).unwrap_or((0, None))
        } else {
            let mut resource = alter_configs_request::AlterConfigsResource::default();
            resource.resource_type = TOPIC_RESOURCE;
            resource.resource_name = StrBytes::from_string(topic.into());
            resource.configs = all
                .iter()
                .map(|(k, v)| {
                    let mut config = alter_configs_request::AlterableConfig::default();
                    config.name = StrBytes::from_string(k.clone());
                    config.value = Some(StrBytes::from_string(v.clone()));
                    config
                })
                .collect();
            let mut request = AlterConfigsRequest::default();
            request.resources = vec![resource];
            let (response, _) = controller.call(request, 2).await?;
            response.responses.first().map(|r| (r.error_code, r.error_message.clone())).unwrap_or((0, None))
        };
        if code != 0 {
            return Err(KafkaError::Refused {
                action: "change the configs of",
                topic: topic.into(),
                code,
                detail: error_text(code, message.as_ref()),
            });
        }
        Ok(())
    }

    #[tracing::instrument(name = "kafka_grow", skip_all, fields(cluster = %self.bootstrap.addr(), topic = %topic))]
    async fn grow(&mut self, topic: &str, count: i32) -> Result<(), KafkaError> {
        let mut entry = CreatePartitionsTopic::default();
        entry.name = topic_name(topic);
        entry.count = count;
        entry.assignments = None;
        let mut request = CreatePartitionsRequest::default();
        request.topics = vec![entry];
        request.timeout_ms = OPERATION_TIMEOUT_MS;
        let (response, _) = self.controller().await?.call(request, 3).await?;
        for result in &response.results {
            if result.error_code != 0 {
                return Err(KafkaError::Refused {
                    action: "add partitions to",
                    topic: topic.into(),
                    code: result.error_code,
                    detail: error_text(result.error_code, result.error_message.as_ref()),
                });
            }
        }
        Ok(())
    }

    /// Deletes topics; topics that do not exist count as deleted.
    #[tracing::instrument(name = "kafka_delete", skip_all, fields(cluster = %self.bootstrap.addr(), topics = topics.len()))]
    pub async fn delete(&mut self, topics: &[String]) -> Result<(), KafkaError> {
        self.delete_many(topics).await?.into_iter().collect()
    }

    /// Deletes topics in one request: one answer per name, in order.
    pub async fn delete_many(&mut self, topics: &[String]) -> Result<Vec<Result<(), KafkaError>>, KafkaError> {
        if topics.is_empty() {
            return Ok(Vec::new());
        }
        let unique: Vec<&String> = {
            let mut seen = HashSet::new();
            topics.iter().filter(|t| seen.insert(t.as_str())).collect()
        };
        let controller = self.controller().await?;
        let version = controller.version::<DeleteTopicsRequest>(6)?;
        let mut request = DeleteTopicsRequest::default();
        request.timeout_ms = OPERATION_TIMEOUT_MS;
        if version >= 6 {
            request.topics = unique
                .iter()
                .map(|t| {
                    let mut state = DeleteTopicState::default();
                    state.name = Some(topic_name(t));
                    state
                })
                .collect();
        } else {
            request.topic_names = unique.iter().map(|t| topic_name(t)).collect();
        }
        let (response, _) = controller.call(request, version).await?;
        Ok(topics
            .iter()
            .map(|topic| {
                let result = response.responses.iter().find(|r| r.name.as_ref().is_some_and(|n| n.0.as_str() == topic));
                match result {
                    Some(r) if r.error_code != 0 && r.error_code != UNKNOWN_TOPIC_OR_PARTITION => {
                        Err(KafkaError::Refused {
                            action: "delete",
                            topic: topic.clone(),
                            code: r.error_code,
                            detail: error_text(r.error_code, r.error_message.as_ref()),
                        })
                    }
                    _ => Ok(()),
                }
            })
            .collect())
    }
}

/// The Kafka clusters of the fleet: idle admin sessions per cluster, and per cluster a batcher of
/// topic reads (Metadata + DescribeConfigs), one of creates and one of deletes, so concurrent
/// reconciles share one request. Each cluster has its own workers and bound on requests in
/// flight: a slow cluster holds up only its own pipelines.
pub struct Clusters {
    sessions: Arc<SessionPool<KafkaAdmin>>,
    describes: Batcher<PoolKey, String, Option<ObservedTopic>, KafkaError>,
    creates: Batcher<PoolKey, TopicSpec, (), KafkaError>,
    deletes: Batcher<PoolKey, String, (), KafkaError>,
}

impl Default for Clusters {
    fn default() -> Self {
        Self::new(Settings::default())
    }
}

impl Clusters {
    pub fn new(settings: Settings) -> Self {
        let sessions: Arc<SessionPool<KafkaAdmin>> = Arc::new(SessionPool::default());
        let pool = sessions.clone();
        let describes = Batcher::new(settings, move |key: PoolKey, names: Vec<String>| {
            let pool = pool.clone();
            async move {
                // Reads may be sent again: a pooled session the broker closed is replaced once.
                let (mut admin, pooled) = session(&pool, &key).await?;
                let answers = match admin.describe_many(&names).await {
                    Ok(answers) => answers,
                    Err(e) if pooled => {
                        tracing::debug!(error = %e, "pooled Kafka session failed; connecting afresh");
                        admin = KafkaAdmin::connect_with(&key.bootstrap_servers, &key.security, key.timeout).await?;
                        admin.describe_many(&names).await?
                    }
                    Err(e) => return Err(e),
                };
                pool.put(key, admin);
                Ok(answers)
            }
        });
        let pool = sessions.clone();
        let creates = Batcher::new(settings, move |key: PoolKey, wants: Vec<TopicSpec>| {
            let pool = pool.clone();
            async move {
                // Not sent twice: a create that failed on the wire is retried by the next
                // reconcile, which finds the topic there and recorded as this pipeline's.
                let (mut admin, _) = session(&pool, &key).await?;
                let answers = admin.create_many(&wants).await?;
                pool.put(key, admin);
                Ok(answers)
            }
        });
        let pool = sessions.clone();
        let deletes = Batcher::new(settings, move |key: PoolKey, names: Vec<String>| {
            let pool = pool.clone();
            async move {
                let (mut admin, _) = session(&pool, &key).await?;
                let answers = admin.delete_many(&names).await?;
                pool.put(key, admin);
                Ok(answers)
            }
        });
        Self { sessions, describes, creates, deletes }
    }

    /// The topic as the broker has it, read in one batch with the other reconciles' topics.
    pub async fn describe(&self, key: &PoolKey, topic: &str) -> Result<Option<ObservedTopic>, KafkaError> {
        self.describes.call(key.clone(), topic.to_string()).await
    }

    /// Carries out a plan: a create in one CreateTopics request with the other reconciles'
    /// creates; config changes and partition growth (rare) over a session of the cluster.
    pub async fn apply(&self, key: &PoolKey, want: &TopicSpec, plan: &TopicPlan) -> Result<(), KafkaError> {
        if plan.create {
            return self.creates.call(key.clone(), want.clone()).await;
        }
        let (mut admin, _) = session(&self.sessions, key).await?;
        admin.apply(want, plan).await?;
        self.sessions.put(key.clone(), admin);
        Ok(())
    }

    /// Deletes topics (batched with other pipelines' deletes); topics that do not exist count as deleted.
    pub async fn delete(&self, key: &PoolKey, topics: &[String]) -> Result<(), KafkaError> {
        let answers = futures::future::join_all(topics.iter().map(|t| self.deletes.call(key.clone(), t.clone()))).await;
        answers.into_iter().collect()
    }

    /// Idle sessions kept, over all clusters.
    pub fn idle_sessions(&self) -> usize {
        self.sessions.idle()
    }
}

/// An idle session of the cluster, or a new one; `true` when it came from the pool.
async fn session(pool: &SessionPool<KafkaAdmin>, key: &PoolKey) -> Result<(KafkaAdmin, bool), KafkaError> {
    match pool.take(key) {
        Some(admin) => Ok((admin, true)),
        None => Ok((KafkaAdmin::connect_with(&key.bootstrap_servers, &key.security, key.timeout).await?, false)),
    }
}

/// A topic's partitions and replication factor.
type Shape = (i32, i16);

fn creatable(want: &TopicSpec) -> CreatableTopic {
    let mut topic = CreatableTopic::default();
    topic.name = topic_name(&want.name);
    topic.num_partitions = want.partitions;
    topic.replication_factor = want.replication_factor;
    topic.configs = want
        .configs
        .iter()
        .map(|(k, v)| {
            let mut config = CreatableTopicConfig::default();
            config.name = StrBytes::from_string(k.clone());
            config.value = Some(StrBytes::from_string(v.clone()));
            config
        })
        .collect();
    topic
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::{PoolKey, SessionPool};

    #[test]
    fn the_pool_hands_back_sessions_of_the_same_cluster_and_stays_bounded() {
        let key = |servers: &str| PoolKey {
            bootstrap_servers: servers.into(),
            security: Default::default(),
            timeout: std::time::Duration::from_secs(3),
        };
        let pool: SessionPool<u32> = SessionPool::new(2, 2);
        assert_eq!(pool.take(&key("a:9092")), None);
        pool.put(key("a:9092"), 1);
        pool.put(key("a:9092"), 2);
        pool.put(key("a:9092"), 3);
        assert_eq!(pool.idle(), 2, "two per cluster");
        let tls = PoolKey {
            security: flightline_service::connect::KafkaSecurity { ca_pem: Some("CA".into()), ..Default::default() },
            ..key("a:9092")
        };
        assert_eq!(pool.take(&tls), None, "other security, other sessions");
        assert_eq!(pool.take(&key("a:9092")), Some(2));
        pool.put(key("b:9092"), 10);
        pool.put(key("c:9092"), 20);
        assert_eq!(pool.take(&key("a:9092")), None, "the oldest cluster was forgotten");
        assert_eq!(pool.take(&key("c:9092")), Some(20));
    }
}
