//! A small in-memory Kubernetes API server that a real `kube::Client` talks to over loopback HTTP.
//!
//! It serves what the cluster integration needs and nothing more:
//!
//! - `GET` collections (`/api/v1/{plural}`, `/api/v1/namespaces/{ns}/{plural}`, and the same under
//!   `/apis/{group}/{version}`): a `<Kind>List` with `metadata.resourceVersion`, honouring
//!   `fieldSelector` (`path=value`, `path==value`, `path!=value` on any dotted field, e.g.
//!   `metadata.name`, `metadata.namespace`, `spec.nodeName`), `labelSelector` (`k=v`, `k==v`,
//!   `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`) and `limit`/`continue` pagination (later
//!   pages are served from the snapshot the first page was taken at, as the real server does);
//!   a `continue` token whose snapshot was compacted away ([`FakeApiServer::compact`]) is answered
//!   `410 Gone`, reason `Expired`, with an inconsistent continue token, as upstream does;
//! - the same paths with `watch=true`: newline-delimited watch events for every change after the
//!   requested `resourceVersion` (history is kept until [`FakeApiServer::compact`], so a watch
//!   started from a list's version also sees what happened in between; a watch from a compacted
//!   version gets one `ERROR` event with a `410 Expired` `Status` and ends). Without a `resourceVersion` (or with `0`), or
//!   with `sendInitialEvents=true`, the current objects are sent first as `ADDED` (the latter ends
//!   them with the `k8s.io/initial-events-end` `BOOKMARK`). A watch with selectors sees an object
//!   leaving the selection as `DELETED` and entering it as `ADDED`. The stream stays open until
//!   `timeoutSeconds` passes, [`FakeApiServer::drop_watches`] is called or the server is dropped;
//! - `GET` single objects, or a `404 NotFound` `Status`;
//! - metadata-only requests (an `Accept` header with `as=PartialObjectMetadata` or
//!   `as=PartialObjectMetadataList`, as `Api::list_metadata`, `Api::watch_metadata` and
//!   `metadata_watcher` send) are answered with `meta.k8s.io/v1` `PartialObjectMetadata(List)`;
//! - `POST` to a collection (create; `201`, `409 AlreadyExists`, `dryRun` honoured), `PUT` of a
//!   single object (`409 Conflict` on a stale `resourceVersion`) and `PATCH` of a single object
//!   (`merge`, `strategic-merge` (treated as merge), `json-patch` and `apply`). Server-side apply
//!   is upstream's, with field ownership ([`super::managed_fields`]): `metadata.managedFields` per
//!   manager, `409 Conflict` listing the conflicting fields unless `force=true`, fields a manager
//!   stops applying removed unless another manager owns them; `fieldManager` is required and
//!   `force` refused on other patches (`422`). Create, PUT and the other patches take ownership of
//!   what they change (manager: `fieldManager`, else the user agent up to its first `/`). Objects
//!   seeded with [`FakeApiServer::apply`] have no managed fields, like objects written before
//!   field management. A write that changes nothing (an apply of what is already there) is not
//!   stored: no new `resourceVersion`, no watch event, as upstream. Writes to `events`
//!   (`events.k8s.io/v1` or core `v1`) are also recorded for [`FakeApiServer::events`];
//! - `DELETE` of a single object: the object as it was, or a `404 NotFound` `Status`;
//! - API discovery of a group version (`GET /apis/{group}/{version}`): an `APIResourceList` of
//!   every resource known in it, as `Client::list_api_group_resources` reads it;
//! - a resource made forbidden with [`FakeApiServer::forbid`]: `403 Forbidden` for every request;
//! - a resource no longer served ([`FakeApiServer::stop_serving`], an older API server): left out
//!   of discovery and `404 NotFound` for every request;
//! - anything else: a `404 NotFound` `Status`.
//!
//! Every write through the API but Events is logged for [`FakeApiServer::writes`], in order.
//!
//! Resource versions are one global counter, as in etcd. Objects are stored as JSON; `apply`
//! accepts any kind (unknown kinds get a plural by the usual English rules and are namespaced when
//! they carry `metadata.namespace`).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::managed_fields;

/// Kinds the server knows without having seen an object: (group, version, kind, plural, namespaced).
const KNOWN_RESOURCES: &[(&str, &str, &str, &str, bool)] = &[
    ("", "v1", "Pod", "pods", true),
    ("", "v1", "ServiceAccount", "serviceaccounts", true),
    ("", "v1", "ConfigMap", "configmaps", true),
    ("", "v1", "Secret", "secrets", true),
    ("", "v1", "Service", "services", true),
    ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true),
    ("", "v1", "PersistentVolume", "persistentvolumes", false),
    ("", "v1", "Namespace", "namespaces", false),
    ("", "v1", "Node", "nodes", false),
    ("", "v1", "ReplicationController", "replicationcontrollers", true),
    ("", "v1", "PodTemplate", "podtemplates", true),
    ("", "v1", "Event", "events", true),
    ("events.k8s.io", "v1", "Event", "events", true),
    ("storage.k8s.io", "v1", "CSIDriver", "csidrivers", false),
    ("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations", false),
    ("admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration", "validatingwebhookconfigurations", false),
    ("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicy", "validatingadmissionpolicies", false),
    (
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
        false,
    ),
    ("admissionregistration.k8s.io", "v1", "MutatingAdmissionPolicy", "mutatingadmissionpolicies", false),
    ("admissionregistration.k8s.io", "v1", "MutatingAdmissionPolicyBinding", "mutatingadmissionpolicybindings", false),
    ("apps", "v1", "Deployment", "deployments", true),
    ("apps", "v1", "StatefulSet", "statefulsets", true),
    ("apps", "v1", "DaemonSet", "daemonsets", true),
    ("apps", "v1", "ReplicaSet", "replicasets", true),
    ("batch", "v1", "Job", "jobs", true),
    ("batch", "v1", "CronJob", "cronjobs", true),
];

/// A fake API server on a loopback port; it stops (ending open watches) when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FakeApiServer {
    /// Starts on 127.0.0.1:0 (plain HTTP).
    pub async fn start() -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake API server");
        let addr = listener.local_addr().expect("local address");
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            changed,
            shutdown: CancellationToken::new(),
            single_gets: AtomicUsize::new(0),
            get_delay: Mutex::new(Duration::ZERO),
            watch_delay: Mutex::new(Duration::ZERO),
            patches: AtomicUsize::new(0),
            refuse_patches: AtomicUsize::new(0),
            forbidden: Mutex::new(Vec::new()),
            unserved: Mutex::new(Vec::new()),
            refused_writes: Mutex::new(Vec::new()),
            writes: Mutex::new(Vec::new()),
            expired: AtomicUsize::new(0),
            lists: AtomicUsize::new(0),
            watch_epoch: watch::channel(0).0,
            watches_paused: watch::channel(false).0,
            compact_during_lists: Mutex::new(None),
            snapshots: Mutex::default(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        });
        FakeApiServer { addr, shared }
    }

    /// A `kube::Client` for it (from `kube::Config::new(url)`, default namespace `default`).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("server URL"));
        kube::Client::try_from(config).expect("kube client for the fake API server")
    }

    /// A kubeconfig (YAML) pointing at it, e.g. for a process using `kube::Client::try_default()`
    /// with `KUBECONFIG`. The current context's namespace is `default`; there are no credentials.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake-apiserver\n  cluster:\n    server: {url}\n\
             contexts:\n\
             - name: fake-apiserver\n  context:\n    cluster: fake-apiserver\n    user: fake-apiserver\n    namespace: default\n\
             current-context: fake-apiserver\n\
             users:\n\
             - name: fake-apiserver\n  user: {{}}\n\
             preferences: {{}}\n",
            url = self.url()
        )
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates or replaces an object of any kind (routed by `apiVersion`, `kind` and
    /// `metadata.namespace`, which defaults to `default` for namespaced kinds), giving it a new
    /// `resourceVersion` (and a `uid` when it has none) and notifying watchers (`ADDED` or
    /// `MODIFIED`). Panics when `apiVersion`, `kind` or `metadata.name` is missing.
    pub fn apply(&self, object: Value) {
        let api_version = object["apiVersion"].as_str().expect("apply: the object needs an apiVersion").to_string();
        let kind = object["kind"].as_str().expect("apply: the object needs a kind").to_string();
        let name = object["metadata"]["name"].as_str().expect("apply: the object needs metadata.name").to_string();
        let mut store = self.shared.lock();
        store.seed(&api_version, &kind, name, object);
        self.shared.notify(store);
    }

    /// Each time the first page of a paged list of `plural` is answered (more pages to come),
    /// writes the next of `objects` (as [`apply`](Self::apply) does) and compacts: the list's
    /// continue token has expired before the client asks for the second page.
    pub fn compact_during_lists(&self, plural: &str, objects: Vec<Value>) {
        *self.shared.compact_during_lists.lock().expect("lock") = Some((plural.to_string(), objects.into()));
    }

    /// Deletes an object by `apiVersion`, `kind`, namespace (`None` for cluster-scoped kinds) and
    /// name, notifying watchers (`DELETED`). Deleting what does not exist does nothing.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) {
        let mut store = self.shared.lock();
        let Some(resource) = store.find_kind(api_version, kind) else { return };
        let namespace = if store.resources[resource].namespaced { namespace.unwrap_or("default") } else { "" };
        let key = ObjectKey { resource, namespace: namespace.to_string(), name: name.to_string() };
        if store.remove(&key).is_some() {
            self.shared.notify(store);
        }
    }

    /// Events written through the API so far (`POST .../events`, or `PATCH` of such an event),
    /// in creation order, each as last written.
    pub fn events(&self) -> Vec<Value> {
        self.shared.lock().events.iter().map(|(_, event)| event.clone()).collect()
    }

    /// How many GET requests for single objects arrived (counted on arrival, so a request the
    /// client gave up on during [`set_get_delay`](Self::set_get_delay) counts too).
    pub fn single_gets(&self) -> usize {
        self.shared.single_gets.load(Ordering::SeqCst)
    }

    /// Makes every watch event wait this long before it is sent (a lagging watch cache).
    pub fn set_watch_delay(&self, delay: Duration) {
        *self.shared.watch_delay.lock().expect("delay lock") = delay;
    }

    /// How many PATCH requests (of any kind but events) arrived, refused ones included.
    pub fn patches(&self) -> usize {
        self.shared.patches.load(Ordering::SeqCst)
    }

    /// Refuses the next `count` PATCH requests (of any kind but events) with a 500 `Status`.
    pub fn refuse_patches(&self, count: usize) {
        self.shared.refuse_patches.store(count, Ordering::SeqCst);
    }

    /// Refuses every request for a resource (by plural, e.g. `deployments`) with `403 Forbidden`,
    /// as the real server does for a caller RBAC does not allow.
    pub fn forbid(&self, plural: &str) {
        self.shared.forbidden.lock().expect("forbidden lock").push(plural.to_string());
    }

    /// Stops serving a resource (by plural), as an API server of a version without it: discovery
    /// leaves it out and every request for it is answered `404 NotFound`.
    pub fn stop_serving(&self, plural: &str) {
        self.shared.unserved.lock().expect("unserved lock").push(plural.to_string());
    }

    /// Serves again every resource [`stop_serving`](Self::stop_serving) took away (an upgrade).
    pub fn serve_all(&self) {
        self.shared.unserved.lock().expect("unserved lock").clear();
    }

    /// Refuses every write (PATCH, POST, PUT, DELETE) to a resource (by plural) with a 500
    /// `Status` until [`accept_writes`](Self::accept_writes); reads are answered.
    pub fn refuse_writes(&self, plural: &str) {
        self.shared.refused_writes.lock().expect("refused lock").push(plural.to_string());
    }

    /// Accepts writes to every resource again.
    pub fn accept_writes(&self) {
        self.shared.refused_writes.lock().expect("refused lock").clear();
    }

    /// Every write through the API but Events so far, in arrival order, as `VERB plural/name`
    /// (`PATCH validatingwebhookconfigurations/tokengate`, `DELETE validatingadmissionpolicies/x`);
    /// refused writes included.
    pub fn writes(&self) -> Vec<String> {
        self.shared.writes.lock().expect("writes lock").clone()
    }

    /// Forgets the history up to the current resource version, as etcd's compaction does: a watch
    /// from an older version gets a `410 Expired` `ERROR` event, a `continue` token of an older
    /// list snapshot a `410 Expired` answer. Returns the compacted version.
    pub fn compact(&self) -> u64 {
        self.shared.lock().compact()
    }

    /// Ends every open watch stream at once (what an API server restart does to its clients);
    /// the clients reconnect from the last version they saw.
    pub fn drop_watches(&self) {
        self.shared.watch_epoch.send_modify(|epoch| *epoch += 1);
    }

    /// Holds new watch requests until [`resume_watches`](Self::resume_watches): with
    /// [`drop_watches`](Self::drop_watches), a gap in which writes reach no watch.
    pub fn pause_watches(&self) {
        self.shared.watches_paused.send_replace(true);
    }

    /// Lets held and new watch requests through.
    pub fn resume_watches(&self) {
        self.shared.watches_paused.send_replace(false);
    }

    /// How many `410 Expired` answers were given (watch `ERROR` events and list answers).
    pub fn expired_answers(&self) -> usize {
        self.shared.expired.load(Ordering::SeqCst)
    }

    /// How many list requests (pages included) arrived.
    pub fn lists(&self) -> usize {
        self.shared.lists.load(Ordering::SeqCst)
    }

    /// The stored object (as a GET answers it), by `apiVersion`, `kind`, namespace (`None` for
    /// cluster-scoped kinds) and name.
    pub fn object(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let store = self.shared.lock();
        let resource = store.find_kind(api_version, kind)?;
        let namespace = if store.resources[resource].namespaced { namespace.unwrap_or("default") } else { "" };
        store.objects.get(&ObjectKey { resource, namespace: namespace.to_string(), name: name.to_string() }).cloned()
    }

    /// Make single-object GETs (not list/watch) wait this long before answering.
    pub fn set_get_delay(&self, delay: Duration) {
        *self.shared.get_delay.lock().expect("delay lock") = delay;
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

struct Shared {
    /// Resources (plurals) every request for is refused with `403 Forbidden`.
    forbidden: Mutex<Vec<String>>,
    /// Resources (plurals) not served: absent from discovery, `404` for every request.
    unserved: Mutex<Vec<String>>,
    /// Resources (plurals) every write to is refused with 500.
    refused_writes: Mutex<Vec<String>>,
    /// `VERB plural/name` of every write but Events, in arrival order.
    writes: Mutex<Vec<String>>,
    store: Mutex<Store>,
    /// The latest resource version, to wake watches.
    changed: watch::Sender<u64>,
    shutdown: CancellationToken,
    single_gets: AtomicUsize,
    get_delay: Mutex<Duration>,
    watch_delay: Mutex<Duration>,
    /// PATCH requests to objects other than events, counted on arrival.
    patches: AtomicUsize,
    /// How many more such PATCH requests to refuse with 500.
    refuse_patches: AtomicUsize,
    /// `410 Expired` answers given.
    expired: AtomicUsize,
    /// List requests, counted on arrival.
    lists: AtomicUsize,
    /// Bumped to end every open watch.
    watch_epoch: watch::Sender<u64>,
    /// While true, new watch requests wait.
    watches_paused: watch::Sender<bool>,
    /// A plural whose paged lists are interrupted by a write and a compaction, and the objects
    /// still to write.
    compact_during_lists: Mutex<Option<(String, VecDeque<Value>)>>,
    /// Snapshots of older versions that paged lists are reading, by resource and version.
    snapshots: Mutex<HashMap<(usize, u64), Snapshot>>,
}

/// The objects of one resource at one version.
type Snapshot = Arc<BTreeMap<ObjectKey, Value>>;

impl Shared {
    /// The objects of `resource` at `version` (`None` when compacted away), rebuilt once per
    /// version: the pages of one list all read the snapshot its first page was taken at.
    fn snapshot(&self, store: &Store, resource: usize, version: u64) -> Option<Snapshot> {
        if version < store.compacted {
            return None;
        }
        let mut snapshots = self.snapshots.lock().expect("snapshot lock");
        if let Some(found) = snapshots.get(&(resource, version)) {
            return Some(found.clone());
        }
        let snapshot = Arc::new(store.objects_at(resource, version)?);
        if snapshots.len() >= 16 {
            snapshots.clear();
        }
        snapshots.insert((resource, version), snapshot.clone());
        Some(snapshot)
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Releases the store and wakes watches.
    fn notify(&self, store: MutexGuard<'_, Store>) {
        let version = store.version;
        drop(store);
        self.changed.send_replace(version);
    }
}

#[derive(Clone, Debug)]
struct ResourceType {
    group: String,
    version: String,
    kind: String,
    plural: String,
    namespaced: bool,
}

impl ResourceType {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` (the core group: `plural`), as the API server names a resource in errors.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn is_events(&self) -> bool {
        self.plural == "events" && (self.group.is_empty() || self.group == "events.k8s.io")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct ObjectKey {
    /// Index into `Store::resources`.
    resource: usize,
    /// Empty for cluster-scoped objects.
    namespace: String,
    name: String,
}

/// One write: the object before and after (`None` when absent).
struct Change {
    version: u64,
    key: ObjectKey,
    old: Option<Value>,
    new: Option<Value>,
}

struct Store {
    version: u64,
    resources: Vec<ResourceType>,
    objects: BTreeMap<ObjectKey, Value>,
    /// Each stored object as JSON, with its `resourceVersion`, for lists.
    json: HashMap<ObjectKey, (String, Bytes)>,
    /// Every change since the last compaction, in version order.
    history: Vec<Change>,
    /// The version history was last compacted at (0: never); older versions are gone.
    compacted: u64,
    /// The objects at `compacted`, which `history` starts from.
    base: BTreeMap<ObjectKey, Value>,
    events: Vec<(ObjectKey, Value)>,
    next_id: u64,
}

impl Store {
    fn new() -> Self {
        let resources = KNOWN_RESOURCES
            .iter()
            .map(|&(group, version, kind, plural, namespaced)| ResourceType {
                group: group.into(),
                version: version.into(),
                kind: kind.into(),
                plural: plural.into(),
                namespaced,
            })
            .collect();
        Store {
            version: 1,
            resources,
            objects: BTreeMap::new(),
            json: HashMap::new(),
            history: Vec::new(),
            compacted: 0,
            base: BTreeMap::new(),
            events: Vec::new(),
            next_id: 0,
        }
    }

    fn find_kind(&self, api_version: &str, kind: &str) -> Option<usize> {
        let (group, version) = split_api_version(api_version);
        self.resources.iter().position(|r| r.group == group && r.version == version && r.kind == kind)
    }

    fn find_plural(&self, group: &str, version: &str, plural: &str) -> Option<usize> {
        self.resources.iter().position(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// The resource for a kind, learning it when unknown.
    fn resource_for(&mut self, api_version: &str, kind: &str, namespaced: bool) -> usize {
        if let Some(found) = self.find_kind(api_version, kind) {
            return found;
        }
        let (group, version) = split_api_version(api_version);
        self.resources.push(ResourceType {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural_of(kind),
            namespaced,
        });
        self.resources.len() - 1
    }

    /// `object` (stored under `key`) as JSON: written once when stored, unless it is an older
    /// version of it (from a snapshot).
    fn rendered(&self, key: &ObjectKey, object: &Value) -> Bytes {
        let version = object["metadata"]["resourceVersion"].as_str();
        match self.json.get(key).filter(|(stored, _)| Some(stored.as_str()) == version) {
            Some((_, json)) => json.clone(),
            None => Bytes::from(serde_json::to_vec(object).expect("serialize")),
        }
    }

    /// Forgets the history up to the current version.
    fn compact(&mut self) -> u64 {
        self.base = self.objects.clone();
        self.compacted = self.version;
        self.history.clear();
        self.version
    }

    /// Creates or replaces an object outside the API (no managed fields).
    fn seed(&mut self, api_version: &str, kind: &str, name: String, object: Value) {
        let namespace = object["metadata"]["namespace"].as_str().map(str::to_string);
        let resource = self.resource_for(api_version, kind, namespace.is_some());
        let namespace = if self.resources[resource].namespaced {
            namespace.unwrap_or_else(|| "default".into())
        } else {
            String::new()
        };
        self.put(ObjectKey { resource, namespace, name }, object);
    }

    fn unique_suffix(&mut self) -> String {
        self.next_id += 1;
        format!("{:05x}", self.next_id)
    }

    /// Stores `object` under `key` with a new resource version; returns what was stored.
    fn put(&mut self, key: ObjectKey, mut object: Value) -> Value {
        self.version += 1;
        let resource = self.resources[key.resource].clone();
        let old = self.objects.get(&key).cloned();
        let old_uid = old.as_ref().and_then(|o| o["metadata"]["uid"].as_str().map(str::to_string));
        let uid = old_uid.unwrap_or_else(|| format!("00000000-0000-4000-8000-{:012x}", self.version));
        let fields = object_map(&mut object);
        fields.insert("apiVersion".into(), Value::String(resource.api_version()));
        fields.insert("kind".into(), Value::String(resource.kind.clone()));
        let metadata = object_map(fields.entry("metadata").or_insert_with(|| json!({})));
        metadata.insert("name".into(), Value::String(key.name.clone()));
        if resource.namespaced {
            metadata.insert("namespace".into(), Value::String(key.namespace.clone()));
        } else {
            metadata.remove("namespace");
        }
        metadata.entry("uid").or_insert(Value::String(uid));
        metadata.insert("resourceVersion".into(), Value::String(self.version.to_string()));
        let json = Bytes::from(serde_json::to_vec(&object).expect("serialize"));
        self.json.insert(key.clone(), (self.version.to_string(), json));
        self.objects.insert(key.clone(), object.clone());
        self.history.push(Change { version: self.version, key, old, new: Some(object.clone()) });
        object
    }

    fn remove(&mut self, key: &ObjectKey) -> Option<Value> {
        let old = self.objects.remove(key)?;
        self.json.remove(key);
        self.version += 1;
        self.history.push(Change { version: self.version, key: key.clone(), old: Some(old.clone()), new: None });
        Some(old)
    }

    /// The objects of `resource` as they were at `version`, or `None` when that version was
    /// compacted away.
    fn objects_at(&self, resource: usize, version: u64) -> Option<BTreeMap<ObjectKey, Value>> {
        let of_resource = |key: &ObjectKey| key.resource == resource;
        let copy = |objects: &BTreeMap<ObjectKey, Value>| -> BTreeMap<ObjectKey, Value> {
            objects.iter().filter(|(k, _)| of_resource(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        if version >= self.version {
            return Some(copy(&self.objects));
        }
        if version < self.compacted {
            return None;
        }
        let mut objects = copy(&self.base);
        for change in self.history.iter().take_while(|c| c.version <= version).filter(|c| of_resource(&c.key)) {
            match &change.new {
                Some(object) => objects.insert(change.key.clone(), object.clone()),
                None => objects.remove(&change.key),
            };
        }
        Some(objects)
    }

    /// Remembers an event written through the API.
    fn record_event(&mut self, key: &ObjectKey, event: &Value) {
        match self.events.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = event.clone(),
            None => self.events.push((key.clone(), event.clone())),
        }
    }
}

fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.split_once('/').unwrap_or(("", api_version))
}

fn plural_of(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if let Some(stem) = lower.strip_suffix('y').filter(|s| !s.ends_with(['a', 'e', 'o', 'u'])) {
        format!("{stem}ies")
    } else if lower.ends_with('s') || lower.ends_with('x') || lower.ends_with("ch") || lower.ends_with("sh") {
        format!("{lower}es")
    } else {
        format!("{lower}s")
    }
}

fn object_map(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = json!({});
    }
    value.as_object_mut().expect("an object")
}

/// What a request path names.
struct Route {
    resource: usize,
    /// `Some` for a namespaced path.
    namespace: Option<String>,
    /// `Some` for a single object.
    name: Option<String>,
}

fn route(store: &Store, path: &str) -> Option<Route> {
    let segments: Vec<String> = path.trim_matches('/').split('/').map(percent_decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        ["namespaces", namespace, plural, name @ ..] if name.len() <= 1 => (Some(*namespace), *plural, name.first()),
        [plural, name @ ..] if name.len() <= 1 => (None, *plural, name.first()),
        _ => return None,
    };
    let resource = store.find_plural(group, version, plural)?;
    let namespaced = store.resources[resource].namespaced;
    match (namespaced, namespace, name) {
        // A cluster-scoped kind has no namespaced path; a namespaced object needs its namespace.
        (false, Some(_), _) | (true, None, Some(_)) => None,
        _ => Some(Route { resource, namespace: namespace.map(str::to_string), name: name.map(|n| n.to_string()) }),
    }
}

/// The query string's parameters, decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Self {
        Query(
            query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (form_decode(key), form_decode(value))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn form_decode(text: &str) -> String {
    percent_decode(&text.replace('+', " "))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Field and label selectors.
#[derive(Clone, Default)]
struct Selector {
    fields: Vec<(String, bool, String)>,
    labels: Vec<LabelRequirement>,
}

#[derive(Clone)]
enum LabelRequirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Selector {
    fn parse(query: &Query) -> Result<Self, String> {
        let mut selector = Selector::default();
        for term in split_terms(query.get("fieldSelector").unwrap_or("")) {
            let (path, equal, value) = if let Some((path, value)) = term.split_once("!=") {
                (path, false, value)
            } else if let Some((path, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (path, true, value)
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            selector.fields.push((path.trim().to_string(), equal, value.trim().to_string()));
        }
        for term in split_terms(query.get("labelSelector").unwrap_or("")) {
            let set = |values: &str| -> Result<Vec<String>, String> {
                let inner = values.trim().strip_prefix('(').and_then(|v| v.strip_suffix(')'));
                let inner = inner.ok_or_else(|| format!("invalid label selector term {term:?}"))?;
                Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
            };
            let requirement = if let Some(key) = term.strip_prefix('!') {
                LabelRequirement::NotExists(key.trim().to_string())
            } else if let Some((key, values)) = term.split_once(" notin ") {
                LabelRequirement::NotIn(key.trim().to_string(), set(values)?)
            } else if let Some((key, values)) = term.split_once(" in ") {
                LabelRequirement::In(key.trim().to_string(), set(values)?)
            } else if let Some((key, value)) = term.split_once("!=") {
                LabelRequirement::NotIn(key.trim().to_string(), vec![value.trim().to_string()])
            } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
                LabelRequirement::In(key.trim().to_string(), vec![value.trim().to_string()])
            } else {
                LabelRequirement::Exists(term.trim().to_string())
            };
            selector.labels.push(requirement);
        }
        Ok(selector)
    }

    fn matches(&self, object: &Value) -> bool {
        let fields_match = self.fields.iter().all(|(path, equal, value)| {
            let found = path.split('.').try_fold(object, |v, part| v.get(part));
            let found = match found {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (found == *value) == *equal
        });
        let labels = &object["metadata"]["labels"];
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        fields_match
            && self.labels.iter().all(|requirement| match requirement {
                LabelRequirement::In(key, values) => label(key).is_some_and(|l| values.iter().any(|v| v == l)),
                LabelRequirement::NotIn(key, values) => label(key).is_none_or(|l| values.iter().all(|v| v != l)),
                LabelRequirement::Exists(key) => label(key).is_some(),
                LabelRequirement::NotExists(key) => label(key).is_none(),
            })
    }
}

/// Splits a selector on commas outside parentheses.
fn split_terms(selector: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn partial_metadata(object: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("serialize")))
        .expect("response")
}

fn status(code: StatusCode, reason: &str, message: String, details: Option<Value>) -> Response {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(details) = details {
        body["details"] = details;
    }
    json_response(code, &body)
}

fn not_found_object(resource: &ResourceType, name: &str) -> Response {
    let qualified = resource.qualified();
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{qualified} \"{name}\" not found"),
        Some(json!({"name": name, "group": resource.group, "kind": resource.plural})),
    )
}

fn bad_request(message: String) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message, None)
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let query = Query::parse(parts.uri.query().unwrap_or(""));
    let accept = parts.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let metadata_only = accept.contains("as=PartialObjectMetadata");
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    // The manager of a write: `fieldManager`, else the user agent up to its first `/`
    // (k8s.io/apiserver `endpoints/handlers` `prefixFromUserAgent`).
    let user_agent = parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let manager = match query.get("fieldManager") {
        Some(manager) => manager.to_string(),
        None => user_agent.split('/').next().unwrap_or_default().chars().take(128).collect(),
    };
    if parts.method == Method::GET {
        if let Some(list) = discovery(&shared, parts.uri.path()) {
            return list;
        }
    }
    let found = route(&shared.lock(), parts.uri.path());
    let found = found.filter(|route| {
        let plural = shared.lock().resources[route.resource].plural.clone();
        !shared.unserved.lock().expect("unserved lock").contains(&plural)
    });
    let Some(route) = found else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({} {})", parts.method, parts.uri.path()),
            None,
        );
    };
    let plural = shared.lock().resources[route.resource].plural.clone();
    if shared.forbidden.lock().expect("forbidden lock").contains(&plural) {
        // The message of the real server's authorizer (k8s.io/apiserver forbidden()).
        let verb = if query.flag("watch") { "watch" } else { "list" };
        let message = format!(
            "{plural} is forbidden: User \"system:anonymous\" cannot {verb} resource \"{plural}\" at the cluster scope"
        );
        return status(StatusCode::FORBIDDEN, "Forbidden", message, Some(json!({"kind": plural})));
    }
    let body = match axum::body::to_bytes(body, 16 << 20).await {
        Ok(body) => body,
        Err(error) => return bad_request(format!("reading the body: {error}")),
    };
    if let Some(refused) = log_write(&shared, &parts.method, &plural, route.name.as_deref()) {
        return refused;
    }
    match (&parts.method, &route.name) {
        (&Method::GET, None) if query.flag("watch") => watch(&shared, &route, &query, metadata_only).await,
        (&Method::GET, None) => list(&shared, &route, &query, metadata_only),
        (&Method::GET, Some(name)) => get(&shared, &route, name, metadata_only).await,
        (&Method::POST, None) => create(&shared, &route, &query, &body, &manager),
        (&Method::PUT, Some(name)) => replace(&shared, &route, name, &query, &body, &manager),
        (&Method::DELETE, Some(name)) => delete(&shared, &route, name),
        (&Method::PATCH, Some(name)) => {
            if !shared.lock().resources[route.resource].is_events() {
                shared.patches.fetch_add(1, Ordering::SeqCst);
                let refused =
                    shared.refuse_patches.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                if refused.is_ok() {
                    return status(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalError",
                        "refused for the test".into(),
                        None,
                    );
                }
            }
            patch(&shared, &route, name, &query, &content_type, &body, metadata_only, &manager)
        }
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({} {})", parts.method, parts.uri.path()),
            None,
        ),
    }
}

/// The `APIResourceList` of `/apis/{group}/{version}` when the path names a group version the
/// server knows a served resource of.
fn discovery(shared: &Shared, path: &str) -> Option<Response> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ["apis", group, version] = segments.as_slice() else { return None };
    let unserved = shared.unserved.lock().expect("unserved lock").clone();
    let store = shared.lock();
    let resources: Vec<Value> = store
        .resources
        .iter()
        .filter(|r| r.group == *group && r.version == *version && !unserved.contains(&r.plural))
        .map(|r| {
            json!({
                "name": r.plural,
                "singularName": r.kind.to_ascii_lowercase(),
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            })
        })
        .collect();
    if resources.is_empty() {
        return None;
    }
    let list = json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{group}/{version}"), "resources": resources});
    Some(json_response(StatusCode::OK, &list))
}

/// Logs a write (not to Events) for [`FakeApiServer::writes`]; the refusal when writes to the
/// resource are refused.
fn log_write(shared: &Shared, method: &Method, plural: &str, name: Option<&str>) -> Option<Response> {
    let writes = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
    if !writes.contains(method) || plural == "events" {
        return None;
    }
    let entry = format!("{method} {plural}/{}", name.unwrap_or(""));
    shared.writes.lock().expect("writes lock").push(entry);
    if !shared.refused_writes.lock().expect("refused lock").iter().any(|p| p == plural) {
        return None;
    }
    Some(status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "refused for the test".into(), None))
}

/// `DELETE` of a single object: answered with the object as it was (no finalizers here).
fn delete(shared: &Shared, route: &Route, name: &str) -> Response {
    let mut store = shared.lock();
    let key = ObjectKey {
        resource: route.resource,
        namespace: route.namespace.clone().unwrap_or_default(),
        name: name.to_string(),
    };
    match store.remove(&key) {
        Some(old) => {
            shared.notify(store);
            json_response(StatusCode::OK, &old)
        }
        None => not_found_object(&store.resources[route.resource], name),
    }
}

/// Upstream's message for a continue token whose snapshot was compacted (k8s.io/apiserver
/// `storage/etcd3` `handleCompactedErrorForPaging`).
const EXPIRED_CONTINUE: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

fn in_scope(route: &Route, key: &ObjectKey) -> bool {
    key.resource == route.resource && route.namespace.as_ref().is_none_or(|ns| *ns == key.namespace)
}

fn list(shared: &Shared, route: &Route, query: &Query, metadata_only: bool) -> Response {
    let selector = match Selector::parse(query) {
        Ok(selector) => selector,
        Err(message) => return bad_request(message),
    };
    shared.lists.fetch_add(1, Ordering::SeqCst);
    let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    let store = shared.lock();
    let (version, after) = match continue_from(query.get("continue"), store.version) {
        Ok(found) => found,
        Err(response) => return response,
    };
    // The current state is read in place (also for an older version when nothing of the
    // resource changed since); an older snapshot is rebuilt once per list and kept for its
    // later pages.
    let changed_since = |version: u64| {
        let mut later = store.history.iter().rev().take_while(|change| change.version > version);
        version < store.compacted || later.any(|change| change.key.resource == route.resource)
    };
    let snapshot = match changed_since(version).then(|| shared.snapshot(&store, route.resource, version)) {
        Some(None) => return expired_continue(shared, after),
        Some(Some(objects)) => Some(objects),
        None => None,
    };
    let objects = snapshot.as_deref().unwrap_or(&store.objects);
    // Each page starts after the last item of the previous one: no page reads what came before.
    let (namespace, name) = after.clone().unwrap_or_default();
    let first = ObjectKey { resource: route.resource, namespace, name };
    let start = if after.is_some() { Bound::Excluded(first) } else { Bound::Included(first) };
    let mut matching = objects
        .range((start, Bound::Unbounded))
        .take_while(|(key, _)| key.resource == route.resource)
        .filter(|(key, object)| in_scope(route, key) && selector.matches(object));
    let page: Vec<(&ObjectKey, &Value)> = matching.by_ref().take(limit.unwrap_or(usize::MAX)).collect();
    let remaining = matching.next().is_some();
    let mut metadata = json!({"resourceVersion": version.to_string()});
    if remaining {
        let (last, _) = page.last().expect("a page before the remaining items");
        metadata["continue"] = json!(format!("{version}|{}|{}", last.namespace, last.name));
    }
    let response = list_response(&store, route.resource, page, metadata, metadata_only);
    if after.is_none() && remaining {
        interrupt_after_first_page(shared, store, route.resource);
    }
    response
}

/// The snapshot version and the last key sent of a continue token (none: the current version,
/// from the start). A continue token is "<snapshot version>|<namespace>|<name of the last item
/// sent>"; version -1 continues from the current state (the inconsistent token of a 410 answer),
/// as upstream's etcd3 store encodes it (k8s.io/apiserver storage `EncodeContinue`,
/// `DecodeContinue`).
#[allow(clippy::result_large_err)] // the error is the answer
fn continue_from(token: Option<&str>, current: u64) -> Result<(u64, Option<(String, String)>), Response> {
    let Some(token) = token else { return Ok((current, None)) };
    let mut parts = token.splitn(3, '|');
    match (parts.next().and_then(|v| v.parse::<i64>().ok()), parts.next(), parts.next()) {
        (Some(version), Some(namespace), Some(name)) => {
            let version = u64::try_from(version).unwrap_or(current);
            Ok((version, Some((namespace.to_string(), name.to_string()))))
        }
        _ => Err(bad_request(format!("invalid continue token {token:?}"))),
    }
}

/// The answer to a continue token whose snapshot was compacted: upstream's etcd3 store
/// (`handleCompactedErrorForPaging`) answers 410 Expired with a token that continues from the
/// current state.
fn expired_continue(shared: &Shared, after: Option<(String, String)>) -> Response {
    let (namespace, name) = after.unwrap_or_default();
    shared.expired.fetch_add(1, Ordering::SeqCst);
    let response = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {"continue": format!("-1|{namespace}|{name}")},
        "status": "Failure",
        "message": EXPIRED_CONTINUE,
        "reason": "Expired",
        "code": 410,
    });
    json_response(StatusCode::GONE, &response)
}

/// A `<Kind>List` (or `PartialObjectMetadataList`) of `page`, written piece by piece from each
/// object's stored JSON: large lists are served fast.
fn list_response(
    store: &Store,
    resource: usize,
    page: Vec<(&ObjectKey, &Value)>,
    metadata: Value,
    metadata_only: bool,
) -> Response {
    let resource = &store.resources[resource];
    let (api_version, kind) = if metadata_only {
        ("meta.k8s.io/v1".to_string(), "PartialObjectMetadataList".to_string())
    } else {
        (resource.api_version(), format!("{}List", resource.kind))
    };
    let head = json!({"apiVersion": api_version, "kind": kind, "metadata": metadata}).to_string();
    let mut body = format!("{},\"items\":[", head.strip_suffix('}').expect("an object")).into_bytes();
    for (i, (key, object)) in page.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        match metadata_only {
            true => body.extend(serde_json::to_vec(&partial_metadata(object)).expect("serialize")),
            false => body.extend_from_slice(&store.rendered(key, object)),
        }
    }
    body.extend_from_slice(b"]}");
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("response")
}

/// After the first page of a paged list of `resource`: the write and compaction armed by
/// [`FakeApiServer::compact_during_lists`], if any.
fn interrupt_after_first_page(shared: &Shared, mut store: MutexGuard<'_, Store>, resource: usize) {
    let plural = store.resources[resource].plural.clone();
    let mut interrupt = shared.compact_during_lists.lock().expect("lock");
    let next = interrupt.as_mut().filter(|(armed, _)| *armed == plural).and_then(|(_, objects)| objects.pop_front());
    drop(interrupt);
    if let Some(object) = next {
        let api_version = object["apiVersion"].as_str().expect("an apiVersion").to_string();
        let kind = object["kind"].as_str().expect("a kind").to_string();
        let name = object["metadata"]["name"].as_str().expect("a name").to_string();
        store.seed(&api_version, &kind, name, object);
        store.compact();
        shared.notify(store);
    }
}

async fn get(shared: &Shared, route: &Route, name: &str, metadata_only: bool) -> Response {
    shared.single_gets.fetch_add(1, Ordering::SeqCst);
    let delay = *shared.get_delay.lock().expect("delay lock");
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let store = shared.lock();
    let key = ObjectKey {
        resource: route.resource,
        namespace: route.namespace.clone().unwrap_or_default(),
        name: name.to_string(),
    };
    match store.objects.get(&key) {
        Some(object) if metadata_only => json_response(StatusCode::OK, &partial_metadata(object)),
        Some(object) => json_response(StatusCode::OK, object),
        None => not_found_object(&store.resources[route.resource], name),
    }
}

fn create(shared: &Shared, route: &Route, query: &Query, body: &[u8], manager: &str) -> Response {
    let mut object: Value = match serde_json::from_slice(body) {
        Ok(object @ Value::Object(_)) => object,
        Ok(_) => return bad_request("the body is not a JSON object".into()),
        Err(error) => return bad_request(format!("the body is not JSON: {error}")),
    };
    let mut store = shared.lock();
    let resource = store.resources[route.resource].clone();
    if resource.namespaced && route.namespace.is_none() {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("create {} needs a namespaced path", resource.plural),
            None,
        );
    }
    let namespace = route.namespace.clone().unwrap_or_default();
    if let Some(given) = object["metadata"]["namespace"].as_str().filter(|ns| !ns.is_empty()) {
        if resource.namespaced && given != namespace {
            return bad_request(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            );
        }
    }
    let name = match (object["metadata"]["name"].as_str(), object["metadata"]["generateName"].as_str()) {
        (Some(name), _) if !name.is_empty() => name.to_string(),
        (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", store.unique_suffix()),
        _ => {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name: Required value: name or generateName is required".into(),
                None,
            )
        }
    };
    let key = ObjectKey { resource: route.resource, namespace, name: name.clone() };
    if store.objects.contains_key(&key) {
        let qualified = resource.qualified();
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{qualified} \"{name}\" already exists"),
            Some(json!({"name": name, "group": resource.group, "kind": resource.plural})),
        );
    }
    object_map(&mut object["metadata"]).insert("name".into(), Value::String(name));
    object_map(&mut object).insert("apiVersion".into(), Value::String(resource.api_version()));
    object_map(&mut object).insert("kind".into(), Value::String(resource.kind.clone()));
    let object = managed_fields::update(None, &object, manager, &now());
    if query.get("dryRun").is_some() {
        return json_response(StatusCode::CREATED, &object);
    }
    let stored = store.put(key.clone(), object);
    if resource.is_events() {
        store.record_event(&key, &stored);
    }
    shared.notify(store);
    json_response(StatusCode::CREATED, &stored)
}

/// The time of a managed fields entry, to the second as upstream writes it.
fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second()).expect("now is a valid time").to_string()
}

/// A `422 Invalid` `PatchOptions` (k8s.io/apimachinery `ValidatePatchOptions`).
fn invalid_patch_options(field: &str, detail: &str) -> Response {
    status(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!("PatchOptions.meta.k8s.io \"\" is invalid: {field}: {detail}"),
        Some(
            json!({"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [{"reason": "FieldValueInvalid", "message": detail, "field": field}]}),
        ),
    )
}

/// An apply's conflicts as upstream answers them (k8s.io/apiserver `managedfields/internal/
/// conflict.go`: `NewConflictError`, `getConflictMessage`): `409 Conflict`, one cause of type
/// `FieldManagerConflict` per field.
fn apply_conflict(conflicts: &[managed_fields::Conflict]) -> Response {
    let message = match conflicts {
        [one] => format!("Apply failed with 1 conflict: conflict with {}: {}", one.manager, one.field),
        _ => {
            let mut managers: Vec<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
            managers.sort_unstable();
            managers.dedup();
            let mut lines = Vec::new();
            for manager in managers {
                lines.push(format!("conflicts with {manager}:"));
                lines.extend(conflicts.iter().filter(|c| c.manager == manager).map(|c| format!("- {}", c.field)));
            }
            format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
        }
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {}", c.manager), "field": c.field}))
        .collect();
    status(StatusCode::CONFLICT, "Conflict", message, Some(json!({"causes": causes})))
}

#[allow(clippy::too_many_arguments)]
fn patch(
    shared: &Shared,
    route: &Route,
    name: &str,
    query: &Query,
    content_type: &str,
    body: &[u8],
    metadata_only: bool,
    manager: &str,
) -> Response {
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    let is_apply = media_type == "application/apply-patch+yaml";
    if is_apply && query.get("fieldManager").is_none() {
        return invalid_patch_options("fieldManager", "Required value: is required for apply patch");
    }
    if !is_apply && query.get("force").is_some() {
        return invalid_patch_options("force", "Forbidden: may not be specified for non-apply patch");
    }
    let patch: Value = if is_apply {
        match serde_yaml_ng::from_slice(body) {
            Ok(patch) => patch,
            Err(error) => return bad_request(format!("the apply patch is not YAML: {error}")),
        }
    } else {
        match serde_json::from_slice(body) {
            Ok(patch) => patch,
            Err(error) => return bad_request(format!("the patch is not JSON: {error}")),
        }
    };
    let mut store = shared.lock();
    let resource = store.resources[route.resource].clone();
    let key = ObjectKey {
        resource: route.resource,
        namespace: route.namespace.clone().unwrap_or_default(),
        name: name.to_string(),
    };
    let live = store.objects.get(&key).cloned();
    let object = if is_apply {
        let mut config = patch;
        object_map(&mut config).entry("kind").or_insert_with(|| Value::String(resource.kind.clone()));
        object_map(&mut config["metadata"]).insert("name".into(), Value::String(name.to_string()));
        match managed_fields::apply(live.as_ref(), &config, manager, query.flag("force"), &now()) {
            Ok(object) => object,
            Err(conflicts) => return apply_conflict(&conflicts),
        }
    } else {
        let Some(mut object) = live.clone() else { return not_found_object(&resource, name) };
        match media_type {
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                json_patch::merge(&mut object, &patch)
            }
            "application/json-patch+json" => {
                let operations: json_patch::Patch = match serde_json::from_value(patch) {
                    Ok(operations) => operations,
                    Err(error) => return bad_request(format!("invalid JSON patch: {error}")),
                };
                if let Err(error) = json_patch::patch(&mut object, &operations) {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        format!("the JSON patch failed: {error}"),
                        None,
                    );
                }
            }
            other => {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format ({other:?})"),
                    None,
                )
            }
        }
        managed_fields::update(live.as_ref(), &object, manager, &now())
    };
    if live.as_ref() == Some(&object) {
        // Nothing changed: nothing is written, no new resourceVersion, no watch event.
        let answer = if metadata_only { partial_metadata(&object) } else { object };
        return json_response(StatusCode::OK, &answer);
    }
    if query.get("dryRun").is_some() {
        return json_response(StatusCode::OK, &object);
    }
    let stored = store.put(key.clone(), object);
    if resource.is_events() {
        store.record_event(&key, &stored);
    }
    shared.notify(store);
    let answer = if metadata_only { partial_metadata(&stored) } else { stored };
    json_response(StatusCode::OK, &answer)
}

/// `PUT` of a single object: an Update that replaces it, refused with `409 Conflict` when the
/// body's `resourceVersion` is not the stored one (k8s.io/apiserver `registry/generic/registry`
/// `Store.Update`, `NewConflict`).
fn replace(shared: &Shared, route: &Route, name: &str, query: &Query, body: &[u8], manager: &str) -> Response {
    let object: Value = match serde_json::from_slice(body) {
        Ok(object @ Value::Object(_)) => object,
        Ok(_) => return bad_request("the body is not a JSON object".into()),
        Err(error) => return bad_request(format!("the body is not JSON: {error}")),
    };
    let mut store = shared.lock();
    let resource = store.resources[route.resource].clone();
    let key = ObjectKey {
        resource: route.resource,
        namespace: route.namespace.clone().unwrap_or_default(),
        name: name.to_string(),
    };
    let Some(live) = store.objects.get(&key).cloned() else { return not_found_object(&resource, name) };
    if object["metadata"]["name"].as_str() != Some(name) {
        return bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            object["metadata"]["name"].as_str().unwrap_or_default()
        ));
    }
    let given = object["metadata"]["resourceVersion"].as_str().filter(|v| !v.is_empty());
    if given.is_some_and(|given| Some(given) != live["metadata"]["resourceVersion"].as_str()) {
        let qualified = resource.qualified();
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!("Operation cannot be fulfilled on {qualified} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
            Some(json!({"name": name, "group": resource.group, "kind": resource.plural})),
        );
    }
    let object = managed_fields::update(Some(&live), &object, manager, &now());
    if object == live {
        return json_response(StatusCode::OK, &live);
    }
    if query.get("dryRun").is_some() {
        return json_response(StatusCode::OK, &object);
    }
    let stored = store.put(key, object);
    shared.notify(store);
    json_response(StatusCode::OK, &stored)
}

/// A watch stream's state.
struct Watch {
    shared: Arc<Shared>,
    route: Route,
    selector: Selector,
    metadata_only: bool,
    /// Changes up to this version have been looked at.
    cursor: u64,
    pending: VecDeque<Bytes>,
    changed: watch::Receiver<u64>,
    deadline: tokio::time::Instant,
}

fn watch_line(kind: &str, object: Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("serialize");
    line.push(b'\n');
    Bytes::from(line)
}

impl Watch {
    fn render(&self, object: &Value) -> Value {
        if self.metadata_only {
            partial_metadata(object)
        } else {
            object.clone()
        }
    }

    /// Queues the events for changes after the cursor.
    fn collect(&mut self) {
        let store = self.shared.lock();
        let start = store.history.partition_point(|c| c.version <= self.cursor);
        for change in &store.history[start..] {
            if !in_scope(&self.route, &change.key) {
                continue;
            }
            let was = change.old.as_ref().filter(|o| self.selector.matches(o));
            let is = change.new.as_ref().filter(|o| self.selector.matches(o));
            let line = match (was, is) {
                (Some(_), Some(new)) => watch_line("MODIFIED", self.render(new)),
                (None, Some(new)) => watch_line("ADDED", self.render(new)),
                (Some(old), None) => {
                    // The object as deleted (or as it left the selection), at the version of the change.
                    let mut last = change.new.clone().unwrap_or_else(|| old.clone());
                    object_map(&mut last["metadata"])
                        .insert("resourceVersion".into(), Value::String(change.version.to_string()));
                    watch_line("DELETED", self.render(&last))
                }
                (None, None) => continue,
            };
            self.pending.push_back(line);
        }
        self.cursor = store.version;
    }
}

async fn watch(shared: &Arc<Shared>, route: &Route, query: &Query, metadata_only: bool) -> Response {
    let selector = match Selector::parse(query) {
        Ok(selector) => selector,
        Err(message) => return bad_request(message),
    };
    let send_initial = query.flag("sendInitialEvents");
    let from = match query.get("resourceVersion") {
        None | Some("0") => None,
        Some(version) => match version.parse::<u64>() {
            Ok(version) => Some(version),
            Err(_) => return bad_request(format!("invalid resourceVersion {version:?}")),
        },
    };
    let timeout = query.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).filter(|t| *t > 0);
    // Far enough for any test; the server's drop ends the stream anyway.
    let timeout = Duration::from_secs(timeout.unwrap_or(3600));
    let mut paused = shared.watches_paused.subscribe();
    let _ = paused.wait_for(|paused| !paused).await;
    let mut epoch = shared.watch_epoch.subscribe();
    epoch.borrow_and_update();
    let changed = shared.changed.subscribe();
    let mut state = Watch {
        shared: shared.clone(),
        route: Route { resource: route.resource, namespace: route.namespace.clone(), name: None },
        selector,
        metadata_only,
        cursor: 0,
        pending: VecDeque::new(),
        changed,
        deadline: tokio::time::Instant::now() + timeout,
    };
    {
        let store = shared.lock();
        match from {
            Some(version) if !send_initial && version < store.compacted => {
                // Upstream's watch cache (k8s.io/apiserver `storage/cacher/watch_cache.go`,
                // `getAllEventsSinceLocked`) answers with one ERROR event of a 410 Expired Status.
                shared.expired.fetch_add(1, Ordering::SeqCst);
                let gone = json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": format!("too old resource version: {version} ({})", store.compacted),
                    "reason": "Expired",
                    "code": 410,
                });
                return Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(watch_line("ERROR", gone)))
                    .expect("response");
            }
            Some(version) if !send_initial => state.cursor = version,
            _ => {
                // Start from the current state: every object is ADDED.
                for (key, object) in store.objects.iter() {
                    if in_scope(&state.route, key) && state.selector.matches(object) {
                        state.pending.push_back(watch_line("ADDED", state.render(object)));
                    }
                }
                state.cursor = store.version;
                if send_initial {
                    let resource = &store.resources[route.resource];
                    let (api_version, kind) = if metadata_only {
                        ("meta.k8s.io/v1".to_string(), "PartialObjectMetadata".to_string())
                    } else {
                        (resource.api_version(), resource.kind.clone())
                    };
                    let bookmark = json!({
                        "apiVersion": api_version,
                        "kind": kind,
                        "metadata": {
                            "resourceVersion": store.version.to_string(),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    });
                    state.pending.push_back(watch_line("BOOKMARK", bookmark));
                }
            }
        }
    }
    let shutdown = shared.shutdown.clone();
    let stream = futures::stream::unfold((state, epoch), move |(mut state, mut epoch)| {
        let shutdown = shutdown.clone();
        async move {
            loop {
                if epoch.has_changed().unwrap_or(true) {
                    return None;
                }
                if let Some(line) = state.pending.pop_front() {
                    let delay = *state.shared.watch_delay.lock().expect("delay lock");
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    return Some((Ok::<Bytes, Infallible>(line), (state, epoch)));
                }
                state.changed.borrow_and_update();
                state.collect();
                if !state.pending.is_empty() {
                    continue;
                }
                tokio::select! {
                    changed = state.changed.changed() => if changed.is_err() { return None },
                    () = tokio::time::sleep_until(state.deadline) => return None,
                    () = shutdown.cancelled() => return None,
                    _ = epoch.changed() => return None,
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("response")
}
