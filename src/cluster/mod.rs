//! What decisions need to know about the cluster, behind one small trait.
//!
//! Decisions read service accounts, CSI drivers, pods, PVCs and PVs through [`Cluster`]; each
//! object is reduced to the few fields a decision reads, so caches of them stay small.

pub mod audiences;
mod deadline;
pub mod kubeconfig;
mod live;
mod objects;
pub mod views;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

pub use deadline::{timeout_from_query, WithDeadline};
pub use live::{LiveCluster, LiveOptions};
pub use objects::{ObjectStore, ObjectsError};

/// The outcome of a lookup: the object, `None` when it does not exist, or why it is unknown.
pub type Lookup<T> = Result<Option<Arc<T>>, LookupError>;

/// Why the cluster could not say whether an object exists.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct LookupError(pub String);

/// Read access to the objects decisions depend on. Implementations answer from files
/// ([`ObjectStore`]) or from watch caches of a live cluster.
pub trait Cluster: Sync {
    /// The service account `namespace/name`.
    fn service_account(&self, namespace: &str, name: &str) -> impl Future<Output = Lookup<ServiceAccountInfo>> + Send;
    /// The CSIDriver object named `name`.
    fn csi_driver(&self, name: &str) -> impl Future<Output = Lookup<CsiDriverInfo>> + Send;
    /// The pod `namespace/name`.
    fn pod(&self, namespace: &str, name: &str) -> impl Future<Output = Lookup<PodInfo>> + Send;
    /// The PersistentVolumeClaim `namespace/name`.
    fn persistent_volume_claim(&self, namespace: &str, name: &str) -> impl Future<Output = Lookup<ClaimInfo>> + Send;
    /// The PersistentVolume `name`.
    fn persistent_volume(&self, name: &str) -> impl Future<Output = Lookup<VolumeInfo>> + Send;
    /// Whether lookups can be answered (watch caches have synced); readiness waits for it.
    fn is_ready(&self) -> bool {
        true
    }
}

/// A shared cluster answers as the cluster it shares.
impl<C: Cluster + Send + Sync> Cluster for Arc<C> {
    fn service_account(&self, namespace: &str, name: &str) -> impl Future<Output = Lookup<ServiceAccountInfo>> + Send {
        self.as_ref().service_account(namespace, name)
    }
    fn csi_driver(&self, name: &str) -> impl Future<Output = Lookup<CsiDriverInfo>> + Send {
        self.as_ref().csi_driver(name)
    }
    fn pod(&self, namespace: &str, name: &str) -> impl Future<Output = Lookup<PodInfo>> + Send {
        self.as_ref().pod(namespace, name)
    }
    fn persistent_volume_claim(&self, namespace: &str, name: &str) -> impl Future<Output = Lookup<ClaimInfo>> + Send {
        self.as_ref().persistent_volume_claim(namespace, name)
    }
    fn persistent_volume(&self, name: &str) -> impl Future<Output = Lookup<VolumeInfo>> + Send {
        self.as_ref().persistent_volume(name)
    }
    fn is_ready(&self) -> bool {
        self.as_ref().is_ready()
    }
}

/// A service account, as far as decisions care: its annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceAccountInfo {
    pub annotations: BTreeMap<String, String>,
}

/// A CSIDriver's token requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsiDriverInfo {
    /// `(audience, expirationSeconds)` of each `spec.tokenRequests` entry; `""` is the API server.
    pub token_requests: Vec<(String, Option<i64>)>,
}

/// A pod, as far as the node-audience restriction cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub node_name: Option<String>,
    pub service_account: String,
    /// Whether it has the automount volume (`kube-api-access-*`).
    pub has_automount_volume: bool,
    /// Audiences of its projected token volumes (`""` where none is set).
    pub token_audiences: Vec<String>,
    /// Drivers of its inline CSI volumes, and of in-tree volumes CSI migration serves.
    pub csi_drivers: Vec<String>,
    /// Claims it mounts: `persistentVolumeClaim` volumes and `<pod>-<volume>` for generic
    /// ephemeral volumes.
    pub claim_names: Vec<String>,
}

/// A PersistentVolumeClaim: the volume it is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimInfo {
    pub volume_name: Option<String>,
}

/// A PersistentVolume: its CSI driver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeInfo {
    pub csi_driver: Option<String>,
}

/// The service account a pod (or template) runs as: `serviceAccountName`, then the deprecated
/// `serviceAccount`, then `default`.
pub fn service_account_named<'a>(name: Option<&'a str>, deprecated: Option<&'a str>) -> &'a str {
    [name, deprecated].into_iter().flatten().find(|name| !name.is_empty()).unwrap_or("default")
}
