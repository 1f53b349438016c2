//! The live cluster: watch caches of the objects decisions read, each reduced to the fields
//! decisions need, with a bounded, timed-out API fallback when a cache has not seen an object
//! yet (a pod created a moment ago).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount};
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::api::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{OnceCell, Semaphore};

use super::*;

/// How the live cluster is tuned.
#[derive(Debug, Clone, Copy)]
pub struct LiveOptions {
    /// Longest wait for an API call made on a cache miss; after it the lookup fails.
    pub fallback_timeout: Duration,
    /// API calls on cache misses in flight at once; more wait (within the timeout).
    pub fallback_concurrency: usize,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self { fallback_timeout: Duration::from_secs(2), fallback_concurrency: 16 }
    }
}

/// How long an API answer "not found" is reused, so that a storm of requests for an object
/// that does not exist costs one API call.
const NOT_FOUND_TTL: Duration = Duration::from_secs(3);

/// One watch cache: key `(namespace, name)` (namespace empty for cluster-scoped objects).
struct Cache<T> {
    objects: RwLock<HashMap<(String, String), Arc<T>>>,
    synced: AtomicBool,
    /// API lookups made on cache misses: in flight (shared by every request for the same
    /// object), or answered "not found" within [`NOT_FOUND_TTL`].
    fetches: Mutex<HashMap<(String, String), Fetch<T>>>,
}

/// One API lookup, shared by the requests that wait for it.
type Fetch<T> = (Instant, Arc<OnceCell<Lookup<T>>>);

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Self { objects: RwLock::new(HashMap::new()), synced: AtomicBool::new(false), fetches: Mutex::default() }
    }
}

impl<T> Cache<T> {
    fn get(&self, namespace: &str, name: &str) -> Option<Arc<T>> {
        let objects = self.objects.read().expect("cache lock is never poisoned");
        objects.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    fn len(&self) -> usize {
        self.objects.read().expect("cache lock is never poisoned").len()
    }

    /// Applies watch events until the stream ends; a restarted watch rebuilds the cache
    /// from its initial list, then swaps it in.
    async fn follow<K, S>(&self, kind: &'static str, events: S)
    where
        K: Resource + ResourceExt,
        T: for<'a> From<&'a K>,
        S: Stream<Item = Result<Event<K>, watcher::Error>>,
    {
        let key = |object: &K| (object.namespace().unwrap_or_default(), object.name_any());
        let mut fresh: Option<HashMap<(String, String), Arc<T>>> = None;
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Init) => fresh = Some(HashMap::new()),
                Ok(Event::InitApply(object)) => {
                    if let Some(fresh) = fresh.as_mut() {
                        fresh.insert(key(&object), Arc::new(T::from(&object)));
                    }
                }
                Ok(Event::InitDone) => {
                    if let Some(fresh) = fresh.take() {
                        *self.objects.write().expect("cache lock is never poisoned") = fresh;
                    }
                    if !self.synced.swap(true, Ordering::SeqCst) {
                        tracing::info!(kind, objects = self.len(), "cache synced");
                    }
                }
                Ok(Event::Apply(object)) => {
                    let reduced = Arc::new(T::from(&object));
                    self.objects.write().expect("cache lock is never poisoned").insert(key(&object), reduced);
                }
                Ok(Event::Delete(object)) => {
                    self.objects.write().expect("cache lock is never poisoned").remove(&key(&object));
                }
                Err(err) => tracing::warn!(kind, error = %err, "watch failed; retrying"),
            }
        }
    }
}

/// The objects of a live cluster, kept in watch caches.
pub struct LiveCluster {
    client: Client,
    options: LiveOptions,
    fallbacks: Semaphore,
    service_accounts: Cache<ServiceAccountInfo>,
    csi_drivers: Cache<CsiDriverInfo>,
    pods: Cache<PodInfo>,
    claims: Cache<ClaimInfo>,
    volumes: Cache<VolumeInfo>,
}

impl Debug for LiveCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCluster").field("options", &self.options).finish_non_exhaustive()
    }
}

impl LiveCluster {
    /// Starts watching; the returned cluster answers from its caches once they have synced
    /// ([`Cluster::is_ready`]) and from the API before that.
    pub fn start(client: Client, options: LiveOptions) -> Arc<Self> {
        let cluster = Arc::new(Self {
            client: client.clone(),
            options,
            fallbacks: Semaphore::new(options.fallback_concurrency),
            service_accounts: Cache::default(),
            csi_drivers: Cache::default(),
            pods: Cache::default(),
            claims: Cache::default(),
            volumes: Cache::default(),
        });
        let config = watcher::Config::default;
        // Service accounts: metadata only (annotations are all decisions read).
        let accounts = Api::<PartialObjectMeta<ServiceAccount>>::all(client.clone());
        tokio::spawn(follow(
            cluster.clone(),
            |c| &c.service_accounts,
            "ServiceAccount",
            watcher::watcher(accounts, config()),
        ));
        let drivers = Api::<CSIDriver>::all(client.clone());
        tokio::spawn(follow(cluster.clone(), |c| &c.csi_drivers, "CSIDriver", watcher::watcher(drivers, config())));
        let pods = Api::<Pod>::all(client.clone());
        tokio::spawn(follow(cluster.clone(), |c| &c.pods, "Pod", watcher::watcher(pods, config())));
        let claims = Api::<PersistentVolumeClaim>::all(client.clone());
        tokio::spawn(follow(
            cluster.clone(),
            |c| &c.claims,
            "PersistentVolumeClaim",
            watcher::watcher(claims, config()),
        ));
        let volumes = Api::<PersistentVolume>::all(client);
        tokio::spawn(follow(cluster.clone(), |c| &c.volumes, "PersistentVolume", watcher::watcher(volumes, config())));
        cluster
    }

    /// How many objects each cache holds: service accounts, CSI drivers, pods, PVCs, PVs.
    pub fn sizes(&self) -> [usize; 5] {
        [self.service_accounts.len(), self.csi_drivers.len(), self.pods.len(), self.claims.len(), self.volumes.len()]
    }

    /// The cache's answer, or on a miss one bounded, timed-out API call.
    async fn lookup<K, T>(&self, cache: &Cache<T>, api: Api<K>, namespace: &str, name: &str) -> Lookup<T>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
        T: for<'a> From<&'a K>,
    {
        if let Some(found) = cache.get(namespace, name) {
            return Ok(Some(found));
        }
        let key = (namespace.to_string(), name.to_string());
        let fetch = {
            let mut fetches = cache.fetches.lock().expect("fetch lock is never poisoned");
            fetches.retain(|_, (started, cell)| cell.get().is_none() || started.elapsed() < NOT_FOUND_TTL);
            fetches.entry(key.clone()).or_insert_with(|| (Instant::now(), Arc::new(OnceCell::new()))).1.clone()
        };
        let kind = std::any::type_name::<K>().rsplit("::").next().unwrap_or("object");
        let call = async {
            let _permit = self.fallbacks.acquire().await.map_err(|_| LookupError("shutting down".to_string()))?;
            api.get_opt(name).await.map_err(|err| LookupError(format!("API error reading {kind} {name}: {err}")))
        };
        let answer = fetch
            .get_or_init(|| async {
                match tokio::time::timeout(self.options.fallback_timeout, call).await {
                    Ok(Ok(found)) => Ok(found.map(|object| Arc::new(T::from(&object)))),
                    Ok(Err(err)) => Err(err),
                    Err(_) => Err(LookupError(format!(
                        "timed out after {:?} reading {kind} {name} from the API server",
                        self.options.fallback_timeout
                    ))),
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

/// Feeds one cache from its watch, retrying with backoff for as long as the process runs.
async fn follow<K, T, S>(cluster: Arc<LiveCluster>, cache: fn(&LiveCluster) -> &Cache<T>, kind: &'static str, events: S)
where
    K: Resource + ResourceExt + Clone + Send + 'static,
    T: for<'a> From<&'a K>,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    cache(&cluster).follow(kind, events.default_backoff()).await;
}

impl Cluster for LiveCluster {
    async fn service_account(&self, namespace: &str, name: &str) -> Lookup<ServiceAccountInfo> {
        let api = Api::<ServiceAccount>::namespaced(self.client.clone(), namespace);
        self.lookup(&self.service_accounts, api, namespace, name).await
    }

    async fn csi_driver(&self, name: &str) -> Lookup<CsiDriverInfo> {
        let api = Api::<CSIDriver>::all(self.client.clone());
        self.lookup(&self.csi_drivers, api, "", name).await
    }

    async fn pod(&self, namespace: &str, name: &str) -> Lookup<PodInfo> {
        let api = Api::<Pod>::namespaced(self.client.clone(), namespace);
        self.lookup(&self.pods, api, namespace, name).await
    }

    async fn persistent_volume_claim(&self, namespace: &str, name: &str) -> Lookup<ClaimInfo> {
        let api = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), namespace);
        self.lookup(&self.claims, api, namespace, name).await
    }

    async fn persistent_volume(&self, name: &str) -> Lookup<VolumeInfo> {
        let api = Api::<PersistentVolume>::all(self.client.clone());
        self.lookup(&self.volumes, api, "", name).await
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
