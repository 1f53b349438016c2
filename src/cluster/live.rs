//! The live cluster: watch caches of the objects decisions read, each reduced to the fields
//! decisions need, with a bounded, timed-out API fallback when a cache has not seen an object
//! yet (a pod created a moment ago).
//!
//! Each cache is fed by a kube-rs watcher of a reduced view ([`super::views`]) wrapped in kube's
//! `DeserializeGuard`: every object of a list page or watch event decodes on its own, so one
//! object that does not decode is kept as "undecodable" (its lookups fail with that reason, it
//! is logged once and counted in `tokengate_cache_undecodable_objects`) while the rest of the
//! cache syncs and serves. A cache keeps, per object, its name and what decisions read, under
//! its namespace's one copy of the namespace's name (kube's reflector store would keep a key of
//! four strings and the whole view).

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::core::DeserializeGuard;
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
/// time into reduced views, so the peak while syncing is one page of JSON plus the caches. 500
/// (client-go's and kube-rs's default) measured best of 250, 500 and 1 000 with 100 000 pods:
/// 250 takes about a quarter longer to sync, 1 000 adds 5 MiB to the peak (docs/growth.md).
/// The list uses the default "most recent" semantic: a `resourceVersion=0` list is served from
/// the API server's watch cache, which ignores `limit` on older servers and would return every
/// pod at once. Streaming lists (`sendInitialEvents`) are not used: kube-rs's watcher does not
/// fall back to a list when the API server does not serve them (the WatchList feature off, or
/// an API server older than 1.27, which never sends the bookmark that ends them), so the cache
/// would never sync there.
const PAGE_SIZE: u32 = 500;

/// A reduced view a cache keeps, and the `*Info` lookups answer with.
trait Cached: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    type Info: Debug + Default + PartialEq + Send + Sync + 'static;
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

/// One object of a watch event: its key and what decisions read, or why it did not decode.
struct Entry<V: Cached> {
    namespace: Option<String>,
    name: String,
    info: Result<V::Info, Arc<str>>,
}

impl<V: Cached> From<DeserializeGuard<V>> for Entry<V> {
    fn from(object: DeserializeGuard<V>) -> Self {
        let (namespace, name) = (ResourceExt::namespace(&object), object.name_any());
        let info = match object.0 {
            Ok(view) => Ok(view.info()),
            Err(invalid) => Err(Arc::from(invalid.error)),
        };
        Self { namespace, name, info }
    }
}

/// A cache's objects by namespace (`""` for cluster-scoped kinds) and name.
type Objects<T> = HashMap<Arc<str>, HashMap<Box<str>, Found<T>>>;

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
    objects: RwLock<Objects<V::Info>>,
    /// The one copy of the empty answer (a service account without annotations decisions read,
    /// an unbound claim), shared by every object that has it.
    empty: Arc<V::Info>,
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
    fn new() -> Self {
        Self {
            objects: RwLock::default(),
            empty: Arc::default(),
            synced: AtomicBool::new(false),
            fetches: Mutex::default(),
            undecodable: Mutex::default(),
        }
    }

    fn get(&self, namespace: &str, name: &str) -> Option<Found<V::Info>> {
        let objects = self.objects.read().expect("cache lock is never poisoned");
        objects.get(namespace)?.get(name).cloned()
    }

    fn len(&self) -> usize {
        self.objects.read().expect("cache lock is never poisoned").values().map(HashMap::len).sum()
    }

    /// What an entry's lookups answer: the shared empty answer when it is that.
    fn found(&self, info: Result<V::Info, Arc<str>>) -> Found<V::Info> {
        info.map(|info| if info == V::Info::default() { self.empty.clone() } else { Arc::new(info) })
    }

    /// Applies one watch event; a (re-)list is gathered in `listing` and replaces the objects
    /// when complete, so lookups keep the last complete list until then.
    fn apply(&self, event: Event<Entry<V>>, listing: &mut Option<Objects<V::Info>>, metrics: &Metrics) {
        match event {
            Event::Init => *listing = Some(Objects::default()),
            Event::InitApply(entry) => {
                let found = self.found(entry.info);
                insert(listing.get_or_insert_with(Objects::default), entry.namespace, entry.name, found);
            }
            Event::InitDone => {
                *self.objects.write().expect("cache lock is never poisoned") = listing.take().unwrap_or_default();
                self.prune(metrics);
                if !self.synced.swap(true, Ordering::SeqCst) {
                    tracing::info!(kind = V::KIND.as_str(), objects = self.len(), "cache synced");
                }
            }
            Event::Apply(entry) => {
                let found = self.found(entry.info);
                let mut objects = self.objects.write().expect("cache lock is never poisoned");
                insert(&mut objects, entry.namespace, entry.name, found);
            }
            Event::Delete(entry) => {
                let mut objects = self.objects.write().expect("cache lock is never poisoned");
                let namespace = entry.namespace.unwrap_or_default();
                if let Some(names) = objects.get_mut(namespace.as_str()) {
                    names.remove(entry.name.as_str());
                    if names.is_empty() {
                        objects.remove(namespace.as_str());
                    }
                }
            }
        }
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

    /// Feeds the cache from its watch, retrying with backoff for as long as the process runs.
    async fn follow(&self, api: Api<DeserializeGuard<V>>, metrics: &Metrics) {
        let config = watcher::Config::default().page_size(PAGE_SIZE);
        let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
        let mut listing = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    let event = entries::<V>(event);
                    self.note(&event, metrics);
                    self.apply(event, &mut listing, metrics);
                }
                // The API server compacted its history past the watch's version (a watch that was
                // down for a while): routine, kube's watcher lists again and the cache keeps
                // answering from the last list until the new one is complete.
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                    tracing::info!(kind = V::KIND.as_str(), "watch expired (410); listing again")
                }
                Err(err) => tracing::warn!(kind = V::KIND.as_str(), error = %err, "watch failed; retrying"),
            }
        }
    }
}

/// Adds an object to `objects`, under its namespace's one copy of the namespace's name.
fn insert<T>(objects: &mut Objects<T>, namespace: Option<String>, name: String, found: Found<T>) {
    let namespace = namespace.unwrap_or_default();
    match objects.get_mut(namespace.as_str()) {
        Some(names) => {
            names.insert(name.into(), found);
        }
        None => {
            objects.insert(namespace.into(), HashMap::from([(name.into(), found)]));
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
        let cluster = Arc::new(Self {
            client: client.clone(),
            options,
            fallbacks: Semaphore::new(options.fallback_concurrency),
            service_accounts: Cache::new(),
            csi_drivers: Cache::new(),
            pods: Cache::new(),
            claims: Cache::new(),
            volumes: Cache::new(),
        });
        spawn_follow(&cluster, |c| &c.service_accounts, &metrics);
        spawn_follow(&cluster, |c| &c.csi_drivers, &metrics);
        spawn_follow(&cluster, |c| &c.pods, &metrics);
        spawn_follow(&cluster, |c| &c.claims, &metrics);
        spawn_follow(&cluster, |c| &c.volumes, &metrics);
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
                        Ok(found) => Ok(Some(Arc::new(found))),
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
fn spawn_follow<V: Cached>(cluster: &Arc<LiveCluster>, cache: fn(&LiveCluster) -> &Cache<V>, metrics: &Arc<Metrics>) {
    let (cluster, metrics) = (cluster.clone(), metrics.clone());
    tokio::spawn(async move {
        let api = Api::<DeserializeGuard<V>>::all_with(cluster.client.clone(), &());
        cache(&cluster).follow(api, &metrics).await;
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
