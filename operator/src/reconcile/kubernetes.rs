//! Kubernetes I/O for child objects: server-side apply that skips objects already as wanted and
//! never takes over an object the pipeline does not control, deletion of what the pipeline
//! controls, and Deployment availability. The reflector stores (objects labelled as managed by the
//! operator, `managedFields` and ConfigMap data stripped) answer first: the API server is asked
//! only for what a store does not show as this pipeline's.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use futures::FutureExt;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions, PropagationPolicy,
    TypeMeta,
};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ChildStores;
use crate::desired::children::same_kind;
use crate::desired::labels::{INSTANCE, MANAGED_BY, MANAGER};

/// What `apply` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The live object already had every field: nothing written.
    Unchanged,
    Written,
    /// An object of that name exists and is not controlled by the desired object's controller:
    /// left as it is. Says whose it is.
    NotOurs(String),
}

/// Annotation on the cached copy of a ConfigMap (never written to the cluster): the SHA-256 of the
/// data the store dropped, so a 100 KB dashboard is compared without being held.
pub const CACHED_DATA_SHA256: &str = "flightline.dev/cached-data-sha256";

/// What the reflector keeps of an owned object: no `managedFields` (about half of it).
pub fn strip_for_cache<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// What the reflector keeps of an object of a discovered kind: no `managedFields`, and its
/// apiVersion and kind (items of a list of a built-in kind, such as HPAs, come without them, and
/// the compare with the wanted object needs them).
pub fn strip_dynamic(object: &mut DynamicObject, resource: &ApiResource) {
    strip_for_cache(object);
    if object.types.is_none() {
        object.types = Some(TypeMeta { api_version: resource.api_version.clone(), kind: resource.kind.clone() });
    }
}

/// What the reflector keeps of a ConfigMap: no `managedFields`, and its data as a hash.
pub fn strip_config_map(object: &mut ConfigMap) {
    strip_for_cache(object);
    if let Some(data) = object.data.take() {
        object.annotations_mut().insert(CACHED_DATA_SHA256.into(), data_sha256(&data));
    }
}

/// SHA-256 (hex) of a ConfigMap's data, each key and value length-prefixed.
pub fn data_sha256(data: &BTreeMap<String, String>) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for (key, value) in data {
        for part in [key, value] {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part.as_bytes());
        }
    }
    context.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `is_subset` against a cached copy: a ConfigMap whose data the store dropped matches when the
/// wanted data hashes to what the copy records.
pub fn matches_cached(want: &Value, cached: &Value) -> bool {
    let recorded = cached.pointer("/metadata/annotations").and_then(|a| a.get(CACHED_DATA_SHA256));
    let Some(recorded) = recorded.and_then(Value::as_str) else {
        return is_subset(want, cached);
    };
    let mut want = want.clone();
    let data = want.as_object_mut().and_then(|o| o.remove("data")).unwrap_or(Value::Null);
    let data: BTreeMap<String, String> = match data {
        Value::Null => BTreeMap::new(),
        other => match serde_json::from_value(other) {
            Ok(data) => data,
            Err(_) => return false,
        },
    };
    data_sha256(&data) == recorded && is_subset(&want, cached)
}

/// A reflector store of a child kind, with the kind's dynamic type (`()` for typed kinds).
pub struct Cached<K: Resource + 'static>
where
    K::DynamicType: Eq + std::hash::Hash,
{
    /// A handle on the reflector's store (shared, not a copy).
    pub store: Store<K>,
    pub dyntype: K::DynamicType,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Cached<K> {
    pub fn typed(store: &Store<K>) -> Option<Self> {
        Some(Self { store: store.clone(), dyntype: () })
    }
}

/// The store's answer for `namespace/name`: `None` while the store has no full list yet (then
/// the caller asks the API server), else the cached copy if there is one.
fn cached<K>(cache: &Option<Cached<K>>, namespace: &str, name: &str) -> Option<Option<Arc<K>>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let cache = cache.as_ref()?;
    cache.store.wait_until_ready().now_or_never()?.ok()?;
    Some(cache.store.get(&ObjectRef::new_with(name, cache.dyntype.clone()).within(namespace)))
}

/// A reflector store of one child kind, seen as JSON: what `apply_child` compares with and the
/// orphan scan lists.
pub trait ChildCache: Send + Sync {
    /// The store's copy of `namespace/name` when it is controlled by `owner_uid`.
    fn ours(&self, namespace: &str, name: &str, owner_uid: &str) -> Option<Value>;
    /// Which of `names` are objects in `namespace` labelled as pipeline `instance`'s and controlled
    /// by `owner_uid`; `None` while the store has no full list yet. Looked up by name: a walk of
    /// every object would make each reconcile cost the size of the fleet.
    fn owned(&self, namespace: &str, instance: &str, owner_uid: &str, names: &[String]) -> Option<Vec<String>>;
}

impl<K> ChildCache for Cached<K>
where
    K: Resource + Clone + Serialize + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    fn ours(&self, namespace: &str, name: &str, owner_uid: &str) -> Option<Value> {
        let key = ObjectRef::new_with(name, self.dyntype.clone()).within(namespace);
        let live = self.store.get(&key).filter(|live| is_controlled_by(live.as_ref(), owner_uid))?;
        serde_json::to_value(live.as_ref()).ok()
    }

    fn owned(&self, namespace: &str, instance: &str, owner_uid: &str, names: &[String]) -> Option<Vec<String>> {
        self.store.wait_until_ready().now_or_never()?.ok()?;
        let ours = names.iter().filter(|name| {
            let key = ObjectRef::new_with(name, self.dyntype.clone()).within(namespace);
            self.store.get(&key).is_some_and(|o| {
                o.labels().get(INSTANCE).is_some_and(|i| i == instance) && is_controlled_by(o.as_ref(), owner_uid)
            })
        });
        Some(ours.cloned().collect())
    }
}

impl ChildStores {
    /// The store of a child kind, where the operator watches it.
    pub fn cache(&self, resource: &ApiResource) -> Option<Box<dyn ChildCache + '_>> {
        let is = |other: ApiResource| same_kind(resource, &other);
        if is(ApiResource::erase::<Deployment>(&())) {
            return Some(Box::new(Cached::typed(&self.deployments)?));
        }
        if is(ApiResource::erase::<Service>(&())) {
            return Some(Box::new(Cached::typed(&self.services)?));
        }
        if is(ApiResource::erase::<ConfigMap>(&())) {
            return Some(Box::new(Cached::typed(&self.config_maps)?));
        }
        Some(Box::new(self.dynamic(resource)?))
    }
}

/// `apply`, deciding from the store when it holds the object as this pipeline's: unchanged costs
/// no request. Anything else (absent from the store, someone else's) is read from the API server.
pub async fn apply_child(
    api: &Api<DynamicObject>,
    cache: Option<&dyn ChildCache>,
    desired: &DynamicObject,
) -> Result<Applied, kube::Error> {
    let name = desired.name_any();
    let namespace = desired.metadata.namespace.as_deref().unwrap_or_default();
    let controller = desired.owner_references().iter().find(|o| o.controller == Some(true)).map(|o| o.uid.as_str());
    let live = cache.zip(controller).and_then(|(cache, uid)| cache.ours(namespace, &name, uid));
    let Some(have) = live else {
        return apply(api, desired).await;
    };
    let want = serde_json::to_value(desired).map_err(kube::Error::SerdeError)?;
    if matches_cached(&want, &have) {
        return Ok(Applied::Unchanged);
    }
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(desired)).await?;
    Ok(Applied::Written)
}

/// Names of the objects of a kind in `namespace` labelled as pipeline `instance`'s and controlled
/// by `owner_uid`: from the store when it has a full list (which of `names`, the names its
/// children may have), else listed by label.
pub async fn owned_names(
    api: &Api<DynamicObject>,
    cache: Option<&dyn ChildCache>,
    (namespace, instance, owner_uid): (&str, &str, &str),
    names: &[String],
) -> Result<Vec<String>, kube::Error> {
    if let Some(names) = cache.and_then(|c| c.owned(namespace, instance, owner_uid, names)) {
        return Ok(names);
    }
    let selector = format!("{INSTANCE}={instance},{MANAGED_BY}={MANAGER}");
    let listed = match api.list(&ListParams::default().labels(&selector)).await {
        Ok(listed) => listed.items,
        // The kind is no longer served (its CRD deleted since discovery asked): nothing of it is left.
        Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(listed.iter().filter(|o| is_controlled_by(*o, owner_uid)).map(|o| o.name_any()).collect())
}

/// `availability` from the store when it holds the Deployment, else from the API server.
pub async fn availability_cached(
    api: &Api<Deployment>,
    store: &Store<Deployment>,
    namespace: &str,
    name: &str,
) -> Result<(i32, i32), kube::Error> {
    match cached(&Cached::typed(store), namespace, name) {
        Some(Some(deployment)) => Ok(replicas_of(&deployment)),
        _ => availability(api, name).await,
    }
}

/// Applies `desired` with server-side apply unless the live object already has every field it
/// sets, so an unchanged pipeline writes nothing.
///
/// When `desired` names a controller (its owner reference with `controller: true`), an existing
/// object without that controller is someone else's: it is reported, not taken over. A forced apply
/// (which repairs drift made by others) only ever touches objects the controller already holds; a
/// new object is applied unforced, so one created by someone else in the meantime conflicts instead.
pub async fn apply<K>(api: &Api<K>, desired: &K) -> Result<Applied, kube::Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    let as_json = |o: &K| serde_json::to_value(o).map_err(kube::Error::SerdeError);
    let want = as_json(desired)?;
    let controller = desired.owner_references().iter().find(|o| o.controller == Some(true)).map(|o| o.uid.clone());
    let params = match api.get_opt(&name).await? {
        Some(live) => {
            if let Some(uid) = &controller
                && !is_controlled_by(&live, uid)
            {
                return Ok(Applied::NotOurs(holder(&want, &live)));
            }
            if is_subset(&want, &as_json(&live)?) {
                return Ok(Applied::Unchanged);
            }
            PatchParams::apply(MANAGER).force()
        }
        None if controller.is_some() => PatchParams::apply(MANAGER),
        None => PatchParams::apply(MANAGER).force(),
    };
    match api.patch(&name, &params, &Patch::Apply(desired)).await {
        Ok(_) => Ok(Applied::Written),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Applied::NotOurs(format!(
            "{} {name} was created by someone else meanwhile ({})",
            kind(&want),
            e.message
        ))),
        Err(e) => Err(e),
    }
}

fn is_controlled_by<K: Resource>(live: &K, uid: &str) -> bool {
    live.owner_references().iter().any(|o| o.uid == uid && o.controller == Some(true))
}

fn kind(object: &Value) -> &str {
    object.get("kind").and_then(Value::as_str).unwrap_or("object")
}

/// "Deployment x exists and is not controlled by this pipeline (controller: none; managers: kubectl)".
fn holder<K: Resource>(want: &Value, live: &K) -> String {
    let controller = live
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| format!("{} {}", o.kind, o.name))
        .unwrap_or_else(|| "none".into());
    let mut managers: Vec<&str> =
        live.meta().managed_fields.iter().flatten().filter_map(|m| m.manager.as_deref()).collect();
    managers.sort_unstable();
    managers.dedup();
    let managers = if managers.is_empty() { "none".to_string() } else { managers.join(", ") };
    format!(
        "{} {} exists and is not controlled by this pipeline (controller: {controller}; field managers: {managers}); \
         left as it is",
        kind(want),
        live.name_any()
    )
}

/// Deletes an object if it exists and is controlled by `owner_uid` (never someone else's). The
/// delete carries the object's uid and resourceVersion as preconditions: one deleted and recreated
/// by someone else, or released by us meanwhile (its controller reference changed), between the
/// read and the delete is left alone (409) instead of being taken.
pub async fn delete_owned<K>(api: &Api<K>, name: &str, owner_uid: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let Some(live) = api.get_opt(name).await? else {
        return Ok(false);
    };
    if !is_controlled_by(&live, owner_uid) {
        return Ok(false);
    }
    let preconditions =
        Preconditions { uid: live.meta().uid.clone(), resource_version: live.meta().resource_version.clone() };
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: Some(preconditions),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        // Gone already, or changed since it was read: the next reconcile decides again.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// `(available, wanted)` replicas of a Deployment; available counts only once the Deployment
/// controller has seen the latest spec.
pub async fn availability(api: &Api<Deployment>, name: &str) -> Result<(i32, i32), kube::Error> {
    let Some(deployment) = api.get_opt(name).await? else {
        return Ok((0, 0));
    };
    Ok(replicas_of(&deployment))
}

fn replicas_of(deployment: &Deployment) -> (i32, i32) {
    let wanted = deployment.spec.replicas.unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let current = status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
    let available =
        if current { status.available_replicas.unwrap_or(0).min(status.updated_replicas.unwrap_or(0)) } else { 0 };
    (available, wanted)
}

/// True when every field of `want` is present with the same value in `have`. Arrays must have the
/// same length and match element by element; fields only `have` carries (defaults, status) are fine.
pub fn is_subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w.iter().all(|(k, v)| h.get(k).is_some_and(|hv| is_subset(v, hv))),
        (Value::Array(w), Value::Array(h)) => w.len() == h.len() && w.iter().zip(h).all(|(a, b)| is_subset(a, b)),
        _ => want == have,
    }
}

#[cfg(test)]
mod tests {
    use super::{
        CACHED_DATA_SHA256, data_sha256, holder, is_controlled_by, is_subset, matches_cached, strip_config_map,
    };
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta, OwnerReference};
    use serde_json::json;

    fn deployment(owners: Vec<(&str, Option<bool>)>, managers: &[&str]) -> Deployment {
        let owner_references = owners
            .into_iter()
            .map(|(uid, controller)| OwnerReference {
                api_version: "flightline.dev/v1alpha1".into(),
                kind: "FlightPipeline".into(),
                name: format!("pipeline-{uid}"),
                uid: uid.into(),
                controller,
                block_owner_deletion: None,
            })
            .collect();
        let managed_fields = managers
            .iter()
            .map(|m| ManagedFieldsEntry { manager: Some(m.to_string()), ..ManagedFieldsEntry::default() })
            .collect();
        Deployment {
            metadata: ObjectMeta {
                name: Some("scl-query".into()),
                owner_references: Some(owner_references),
                managed_fields: Some(managed_fields),
                ..ObjectMeta::default()
            },
            ..Deployment::default()
        }
    }

    #[test]
    fn only_a_controller_reference_with_the_pipelines_uid_makes_an_object_its_own() {
        assert!(is_controlled_by(&deployment(vec![("uid-1", Some(true))], &[]), "uid-1"));
        assert!(!is_controlled_by(&deployment(vec![], &[]), "uid-1"));
        assert!(!is_controlled_by(&deployment(vec![("uid-1", None)], &[]), "uid-1"));
        assert!(!is_controlled_by(&deployment(vec![("uid-1", Some(false))], &[]), "uid-1"));
        assert!(!is_controlled_by(&deployment(vec![("uid-2", Some(true))], &[]), "uid-1"));
    }

    #[test]
    fn a_conflict_names_the_object_its_controller_and_its_field_managers() {
        let want = json!({"kind": "Deployment"});
        let theirs = deployment(vec![("uid-2", Some(true))], &["kubectl", "kube-controller-manager", "kubectl"]);
        assert_eq!(
            holder(&want, &theirs),
            "Deployment scl-query exists and is not controlled by this pipeline (controller: FlightPipeline \
             pipeline-uid-2; field managers: kube-controller-manager, kubectl); left as it is"
        );
        let by_hand = deployment(vec![], &[]);
        assert!(holder(&want, &by_hand).contains("(controller: none; field managers: none)"));
    }

    #[test]
    fn defaults_on_the_live_object_do_not_count_as_drift() {
        let want = json!({"spec": {"replicas": 1, "ports": [{"port": 80}]}});
        let have =
            json!({"spec": {"replicas": 1, "ports": [{"port": 80, "protocol": "TCP"}], "clusterIP": "10.0.0.9"}});
        assert!(is_subset(&want, &have));
    }

    #[test]
    fn changed_values_and_list_lengths_are_drift() {
        let have = json!({"spec": {"replicas": 1, "env": [{"name": "A"}, {"name": "B"}]}});
        assert!(!is_subset(&json!({"spec": {"replicas": 2}}), &have));
        assert!(!is_subset(&json!({"spec": {"env": [{"name": "A"}]}}), &have));
        assert!(!is_subset(&json!({"spec": {"missing": true}}), &have));
    }

    #[test]
    fn a_cached_config_map_keeps_a_hash_of_its_data_and_matches_by_it() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let data: std::collections::BTreeMap<String, String> =
            [("dashboard.json".to_string(), "{\"panels\": []}".to_string())].into();
        let mut live = ConfigMap { data: Some(data.clone()), ..ConfigMap::default() };
        live.metadata.name = Some("scl-dashboard".into());
        live.metadata.managed_fields = Some(vec![Default::default()]);
        strip_config_map(&mut live);
        assert_eq!(live.data, None);
        assert_eq!(live.metadata.managed_fields, None);
        assert_eq!(live.metadata.annotations.as_ref().unwrap()[CACHED_DATA_SHA256], data_sha256(&data));
        let cached = serde_json::to_value(&live).unwrap();
        let want = json!({"metadata": {"name": "scl-dashboard"}, "data": {"dashboard.json": "{\"panels\": []}"}});
        assert!(matches_cached(&want, &cached));
        let changed = json!({"metadata": {"name": "scl-dashboard"}, "data": {"dashboard.json": "{}"}});
        assert!(!matches_cached(&changed, &cached));
        let renamed = json!({"metadata": {"name": "other"}, "data": {"dashboard.json": "{\"panels\": []}"}});
        assert!(!matches_cached(&renamed, &cached));
        // Without the hash (nothing stripped) it is the plain subset check.
        assert!(matches_cached(&json!({"spec": {"replicas": 1}}), &json!({"spec": {"replicas": 1, "x": 2}})));
    }

    #[test]
    fn a_cached_object_of_a_list_gets_its_kind_back_and_compares_equal() {
        use kube::api::{ApiResource, DynamicObject};
        let resource = ApiResource {
            group: "autoscaling".into(),
            version: "v2".into(),
            api_version: "autoscaling/v2".into(),
            kind: "HorizontalPodAutoscaler".into(),
            plural: "horizontalpodautoscalers".into(),
        };
        let want = DynamicObject::new("scl-query", &resource).data(json!({"spec": {"maxReplicas": 5}}));
        // As a list item: no apiVersion and kind, with managedFields.
        let mut live: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "scl-query", "managedFields": [{"manager": "flightline-operator"}]},
            "spec": {"maxReplicas": 5, "minReplicas": 1},
        }))
        .unwrap();
        let as_json = |o: &DynamicObject| serde_json::to_value(o).unwrap();
        assert!(!matches_cached(&as_json(&want), &as_json(&live)));
        super::strip_dynamic(&mut live, &resource);
        assert_eq!(live.metadata.managed_fields, None);
        assert!(matches_cached(&as_json(&want), &as_json(&live)));
    }

    #[test]
    fn the_data_hash_separates_keys_from_values() {
        let a: std::collections::BTreeMap<String, String> = [("ab".to_string(), "c".to_string())].into();
        let b: std::collections::BTreeMap<String, String> = [("a".to_string(), "bc".to_string())].into();
        assert_ne!(data_sha256(&a), data_sha256(&b));
    }
}
