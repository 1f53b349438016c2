//! The live cluster: watch caches of the objects decisions read, each reduced to the fields
//! decisions need, with a bounded, timed-out API fallback when a cache has not seen an object
//! yet (a pod created a moment ago).
//!
//! Each cache is kube's reflector store (`kube::runtime::reflector`) fed by a watcher of a
//! reduced view ([`super::views`]) wrapped in kube's `DeserializeGuard`: every object of a list
//! page or watch event decodes on its own, so one object that does not decode is kept as
//! "undecodable" (its lookups fail with that reason, it is logged once and counted in
//! `tokengate_cache_undecodable_objects`) while the rest of the cache syncs and serves.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, Lookup as StoreLookup, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{OnceCell, Semaphore};

use super::views::{ClaimView, CsiDriverView, PersistentVolumeView, PodView, ServiceAccountView};
use super::*;
use crate::metrics::{CachedKind, Metrics};

/// How the live cluster is tuned: built from the command line (`cli::ServeArgs::live_options`).
#[derive(Debug, Clone, Copy)]
pub struct LiveOptions {
    /// Longest wait for an API call made on a cache miss; after it the lookup fails.
    pub fallback_timeout: Duration,
    /// API calls on cache misses in flight at once; more wait (within the timeout).
    pub fallback_concurrency: usize,
}

/// How long an API answer "not found" is reused, so that a storm of requests for an object
/// that does not exist costs one API call.
const NOT_FOUND_TTL: Duration = Duration::from_secs(3);

/// Objects per page of a watch's initial list (and of its re-lists). Pages are decoded one at a
/// time into reduced views, so the peak while syncing is one page of JSON plus the caches. The
/// list uses the default "most recent" semantic: a `resourceVersion=0` list is served from the
/// API server's watch cache, which ignores `limit` on older servers and would return every pod
/// at once. Streaming lists (`sendInitialEvents`) are not used: an API server without the
/// WatchList feature never sends the bookmark that ends them, and the cache would never sync.
const PAGE_SIZE: u32 = 250;

/// A reduced view a cache keeps, and the `*Info` lookups answer with.
trait Cached: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    type Info: Debug + Send + Sync + 'static;
    const KIND: CachedKind;
    fn info(&self) -> Self::Info;
    /// The API for a single object in `namespace` (empty for cluster-scoped kinds).
    fn api(client: Client, namespace: &str) -> Api<DeserializeGuard<Self>>;
}

macro_rules! cached {
    ($view:ty, $info:ty, $kind:expr, |$client:ident, $namespace:ident| $api:expr) => {
        impl Cached for $view {
            type Info = $info;
            const KIND: CachedKind = $kind;
            fn info(&self) -> $info {
                <$info>::from(self)
            }
            fn api($client: Client, $namespace: &str) -> Api<DeserializeGuard<Self>> {
                $api
            }
        }
    };
}
cached!(ServiceAccountView, ServiceAccountInfo, CachedKind::ServiceAccount, |c, ns| Api::namespaced(c, ns));
cached!(CsiDriverView, CsiDriverInfo, CachedKind::CsiDriver, |c, _ns| Api::all(c));
cached!(PodView, PodInfo, CachedKind::Pod, |c, ns| Api::namespaced(c, ns));
cached!(ClaimView, ClaimInfo, CachedKind::PersistentVolumeClaim, |c, ns| Api::namespaced(c, ns));
cached!(PersistentVolumeView, VolumeInfo, CachedKind::PersistentVolume, |c, _ns| Api::all(c));

/// What a cache keeps per object: its key and what decisions read, or why it did not decode.
struct Entry<V: Cached> {
    namespace: Option<String>,
    name: String,
    info: Result<Arc<V::Info>, Arc<str>>,
}

impl<V: Cached> Clone for Entry<V> {
    fn clone(&self) -> Self {
        Self { namespace: self.namespace.clone(), name: self.name.clone(), info: self.info.clone() }
    }
}

impl<V: Cached> From<DeserializeGuard<V>> for Entry<V> {
    fn from(object: DeserializeGuard<V>) -> Self {
        let (namespace, name) = (ResourceExt::namespace(&object), object.name_any());
        let info = match object.0 {
            Ok(view) => Ok(Arc::new(view.info())),
            Err(invalid) => Err(Arc::from(invalid.error)),
        };
        Self { namespace, name, info }
    }
}

/// The reflector store keys entries by kind, namespace and name; resource version and uid are
/// not kept (no decision reads them from the key).
impl<V: Cached> StoreLookup for Entry<V> {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        V::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        V::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        V::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        V::plural(&())
    }
    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }
    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.namespace.as_deref().map(Cow::Borrowed)
    }
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }
    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

/// A watch event of guarded views, as the entries the store keeps.
fn entries<V: Cached>(event: Event<DeserializeGuard<V>>) -> Event<Entry<V>> {
    match event {
        Event::Apply(object) => Event::Apply(object.into()),
        Event::Delete(object) => Event::Delete(object.into()),
        Event::Init => Event::Init,
        Event::InitApply(object) => Event::InitApply(object.into()),
        Event::InitDone => Event::InitDone,
    }
}

/// One watch cache.
struct Cache<V: Cached> {
    store: Store<Entry<V>>,
    synced: AtomicBool,
    /// API lookups made on cache misses: in flight (shared by every request for the same
    /// object), or answered "not found" within [`NOT_FOUND_TTL`].
    fetches: Fetches<V::Info>,
    /// `(namespace, name)` of the objects that do not decode, each logged and counted once.
    undecodable: Mutex<HashSet<(String, String)>>,
}

/// One API lookup, shared by the requests that wait for it.
type Fetch<T> = (Instant, Arc<OnceCell<Lookup<T>>>);

/// The API lookups of one cache, by `(namespace, name)`.
type Fetches<T> = Mutex<HashMap<(String, String), Fetch<T>>>;

/// A cached object's answer: its info, or why it could not be decoded.
type Found<T> = Result<Arc<T>, Arc<str>>;

impl<V: Cached> Cache<V> {
    fn new(store: Store<Entry<V>>) -> Self {
        Self { store, synced: AtomicBool::new(false), fetches: Mutex::default(), undecodable: Mutex::default() }
    }

    fn get(&self, namespace: &str, name: &str) -> Option<Found<V::Info>> {
        let key = ObjectRef::<Entry<V>>::new(name);
        let key = if namespace.is_empty() { key } else { key.within(namespace) };
        self.store.get(&key).map(|entry| entry.info.clone())
    }

    fn len(&self) -> usize {
        self.store.len()
    }

    /// Logs and counts an object the first time it is seen not to decode, and forgets it when it
    /// decodes again or is deleted.
    fn note(&self, event: &Event<Entry<V>>, metrics: &Metrics) {
        let (entry, deleted) = match event {
            Event::Apply(entry) | Event::InitApply(entry) => (entry, false),
            Event::Delete(entry) => (entry, true),
            Event::Init | Event::InitDone => return,
        };
        let key = (entry.namespace.clone().unwrap_or_default(), entry.name.clone());
        let mut undecodable = self.undecodable.lock().expect("undecodable lock is never poisoned");
        match &entry.info {
            Err(error) if !deleted => {
                if undecodable.insert(key) {
                    let (namespace, name) = (entry.namespace.as_deref().unwrap_or_default(), entry.name.as_str());
                    tracing::warn!(
                        kind = V::KIND.as_str(),
                        namespace,
                        name,
                        error = %error,
                        "skipping an object that does not decode; lookups of it fail until it changes"
                    );
                    metrics.cache_decode_failed(V::KIND);
                }
            }
            _ => {
                undecodable.remove(&key);
            }
        }
        metrics.cache_undecodable(V::KIND, undecodable.len());
    }

    /// After a (re-)list: forgets undecodable objects that are gone.
    fn prune(&self, metrics: &Metrics) {
        let mut undecodable = self.undecodable.lock().expect("undecodable lock is never poisoned");
        undecodable.retain(|(namespace, name)| self.get(namespace, name).is_some_and(|found| found.is_err()));
        metrics.cache_undecodable(V::KIND, undecodable.len());
    }

    /// Feeds the store from its watch, retrying with backoff for as long as the process runs.
    async fn follow(
        &self,
        writer: reflector::store::Writer<Entry<V>>,
        api: Api<DeserializeGuard<V>>,
        metrics: &Metrics,
    ) {
        let config = watcher::Config::default().page_size(PAGE_SIZE);
        let events = watcher::watcher(api, config)
            .default_backoff()
            .map_ok(entries::<V>)
            .inspect_ok(|event| self.note(event, metrics));
        let mut events = std::pin::pin!(reflector::reflector(writer, events));
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::InitDone) => {
                    self.prune(metrics);
                    if !self.synced.swap(true, Ordering::SeqCst) {
                        tracing::info!(kind = V::KIND.as_str(), objects = self.len(), "cache synced");
                    }
                }
                Ok(_) => {}
                // The API server compacted its history past the watch's version (a watch that was
                // down for a while): routine, kube's watcher lists again and the store keeps
                // answering from the last list until the new one is complete.
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                    tracing::info!(kind = V::KIND.as_str(), "watch expired (410); listing again")
                }
                Err(err) => tracing::warn!(kind = V::KIND.as_str(), error = %err, "watch failed; retrying"),
            }
        }
    }
}

/// The objects of a live cluster, kept in watch caches.
pub struct LiveCluster {
    client: Client,
    options: LiveOptions,
    fallbacks: Semaphore,
    service_accounts: Cache<ServiceAccountView>,
    csi_drivers: Cache<CsiDriverView>,
    pods: Cache<PodView>,
    claims: Cache<ClaimView>,
    volumes: Cache<PersistentVolumeView>,
}

impl Debug for LiveCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCluster").field("options", &self.options).finish_non_exhaustive()
    }
}

impl LiveCluster {
    /// Starts watching; the returned cluster answers from its caches once they have synced
    /// ([`Cluster::is_ready`]) and from the API before that. Objects that do not decode are
    /// counted in `metrics`.
    pub fn start(client: Client, options: LiveOptions, metrics: Arc<Metrics>) -> Arc<Self> {
        let (accounts, accounts_writer) = reflector::store();
        let (drivers, drivers_writer) = reflector::store();
        let (pods, pods_writer) = reflector::store();
        let (claims, claims_writer) = reflector::store();
        let (volumes, volumes_writer) = reflector::store();
        let cluster = Arc::new(Self {
            client: client.clone(),
            options,
            fallbacks: Semaphore::new(options.fallback_concurrency),
            service_accounts: Cache::new(accounts),
            csi_drivers: Cache::new(drivers),
            pods: Cache::new(pods),
            claims: Cache::new(claims),
            volumes: Cache::new(volumes),
        });
        spawn_follow(&cluster, |c| &c.service_accounts, accounts_writer, &metrics);
        spawn_follow(&cluster, |c| &c.csi_drivers, drivers_writer, &metrics);
        spawn_follow(&cluster, |c| &c.pods, pods_writer, &metrics);
        spawn_follow(&cluster, |c| &c.claims, claims_writer, &metrics);
        spawn_follow(&cluster, |c| &c.volumes, volumes_writer, &metrics);
        cluster
    }

    /// How many objects each cache holds: service accounts, CSI drivers, pods, PVCs, PVs.
    pub fn sizes(&self) -> [usize; 5] {
        [self.service_accounts.len(), self.csi_drivers.len(), self.pods.len(), self.claims.len(), self.volumes.len()]
    }

    /// The cache's answer, or on a miss one bounded, timed-out API call.
    async fn lookup<V: Cached>(&self, cache: &Cache<V>, namespace: &str, name: &str) -> Lookup<V::Info> {
        let kind = V::KIND.as_str();
        let object = if namespace.is_empty() { name.to_string() } else { format!("{namespace}/{name}") };
        let undecodable =
            |error: &str| LookupError::Undecodable { object: format!("{kind} {object}"), reason: error.to_string() };
        match cache.get(namespace, name) {
            Some(Ok(found)) => return Ok(Some(found)),
            Some(Err(error)) => return Err(undecodable(&error)),
            None => {}
        }
        let api = V::api(self.client.clone(), namespace);
        let key = (namespace.to_string(), name.to_string());
        let fetch = {
            let mut fetches = cache.fetches.lock().expect("fetch lock is never poisoned");
            fetches.retain(|_, (started, cell)| cell.get().is_none() || started.elapsed() < NOT_FOUND_TTL);
            fetches.entry(key.clone()).or_insert_with(|| (Instant::now(), Arc::new(OnceCell::new()))).1.clone()
        };
        let call = async {
            let _permit = self.fallbacks.acquire().await.map_err(|_| LookupError::ShuttingDown)?;
            api.get_opt(name)
                .await
                .map_err(|err| LookupError::Api { object: format!("{kind} {name}"), message: err.to_string() })
        };
        let answer = fetch
            .get_or_init(|| async {
                match tokio::time::timeout(self.options.fallback_timeout, call).await {
                    Ok(Ok(None)) => Ok(None),
                    Ok(Ok(Some(object))) => match Entry::from(object).info {
                        Ok(found) => Ok(Some(found)),
                        Err(error) => Err(undecodable(&error)),
                    },
                    Ok(Err(err)) => Err(err),
                    Err(_) => Err(LookupError::TimedOut {
                        object: format!("{kind} {name}"),
                        after: self.options.fallback_timeout,
                    }),
                }
            })
            .await
            .clone();
        // Only "not found" is worth keeping: a found object reaches the watch cache, an error
        // is retried by the next request.
        if !matches!(answer, Ok(None)) {
            let mut fetches = cache.fetches.lock().expect("fetch lock is never poisoned");
            if fetches.get(&key).is_some_and(|(_, cell)| Arc::ptr_eq(cell, &fetch)) {
                fetches.remove(&key);
            }
        }
        answer
    }
}

/// Feeds one cache of `cluster` from a watch of every namespace.
fn spawn_follow<V: Cached>(
    cluster: &Arc<LiveCluster>,
    cache: fn(&LiveCluster) -> &Cache<V>,
    writer: reflector::store::Writer<Entry<V>>,
    metrics: &Arc<Metrics>,
) {
    let (cluster, metrics) = (cluster.clone(), metrics.clone());
    tokio::spawn(async move {
        let api = Api::<DeserializeGuard<V>>::all_with(cluster.client.clone(), &());
        cache(&cluster).follow(writer, api, &metrics).await;
    });
}

impl Cluster for LiveCluster {
    async fn service_account(&self, namespace: &str, name: &str) -> Lookup<ServiceAccountInfo> {
        self.lookup(&self.service_accounts, namespace, name).await
    }

    async fn csi_driver(&self, name: &str) -> Lookup<CsiDriverInfo> {
        self.lookup(&self.csi_drivers, "", name).await
    }

    async fn pod(&self, namespace: &str, name: &str) -> Lookup<PodInfo> {
        self.lookup(&self.pods, namespace, name).await
    }

    async fn persistent_volume_claim(&self, namespace: &str, name: &str) -> Lookup<ClaimInfo> {
        self.lookup(&self.claims, namespace, name).await
    }

    async fn persistent_volume(&self, name: &str) -> Lookup<VolumeInfo> {
        self.lookup(&self.volumes, "", name).await
    }

    fn is_ready(&self) -> bool {
        [
            &self.service_accounts.synced,
            &self.csi_drivers.synced,
            &self.pods.synced,
            &self.claims.synced,
            &self.volumes.synced,
        ]
        .iter()
        .all(|synced| synced.load(Ordering::SeqCst))
    }
}
