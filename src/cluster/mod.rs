//! What decisions need to know about the cluster, behind one small trait.
//!
//! Decisions read service accounts, CSI drivers, pods, PVCs and PVs through [`Cluster`]; each
//! object is reduced to the few fields a decision reads, so caches of them stay small.

pub mod audiences;
mod deadline;
mod live;
mod objects;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount};
use k8s_openapi::api::storage::v1::CSIDriver;

pub use deadline::{timeout_from_query, WithDeadline};
pub use live::{LiveCluster, LiveOptions};
pub use objects::{ObjectStore, ObjectsError};

use crate::review::automount;

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

impl From<&ServiceAccount> for ServiceAccountInfo {
    fn from(sa: &ServiceAccount) -> Self {
        Self { annotations: sa.metadata.annotations.clone().unwrap_or_default() }
    }
}

impl From<&kube::api::PartialObjectMeta<ServiceAccount>> for ServiceAccountInfo {
    fn from(sa: &kube::api::PartialObjectMeta<ServiceAccount>) -> Self {
        Self { annotations: sa.metadata.annotations.clone().unwrap_or_default() }
    }
}

impl From<&CSIDriver> for CsiDriverInfo {
    fn from(driver: &CSIDriver) -> Self {
        let token_requests =
            driver.spec.token_requests.iter().flatten().map(|t| (t.audience.clone(), t.expiration_seconds)).collect();
        Self { token_requests }
    }
}

impl From<&Pod> for PodInfo {
    fn from(pod: &Pod) -> Self {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let mut info = PodInfo { uid: pod.metadata.uid.clone().unwrap_or_default(), ..Default::default() };
        let Some(spec) = &pod.spec else { return info };
        info.node_name = spec.node_name.clone().filter(|n| !n.is_empty());
        info.service_account =
            service_account_named(spec.service_account_name.as_deref(), spec.service_account.as_deref()).to_string();
        for volume in spec.volumes.iter().flatten() {
            let token_sources = volume.projected.iter().flat_map(|p| p.sources.iter().flatten());
            let tokens: Vec<_> = token_sources.filter_map(|s| s.service_account_token.as_ref()).collect();
            let shape = tokens.iter().map(|t| (t.audience.as_deref(), t.path.as_str(), t.expiration_seconds));
            info.has_automount_volume |= automount::has_automount_shape(&volume.name, shape);
            info.token_audiences.extend(tokens.iter().map(|t| t.audience.clone().unwrap_or_default()));
            let in_tree = automount::in_tree_driver([
                volume.aws_elastic_block_store.is_some(),
                volume.gce_persistent_disk.is_some(),
                volume.azure_disk.is_some(),
                volume.azure_file.is_some(),
                volume.cinder.is_some(),
                volume.vsphere_volume.is_some(),
                volume.portworx_volume.is_some(),
            ]);
            match (&volume.csi, in_tree) {
                (Some(csi), _) => info.csi_drivers.push(csi.driver.clone()),
                (None, Some((_, driver))) => info.csi_drivers.push(driver.to_string()),
                (None, None) => {}
            }
            if let Some(claim) = &volume.persistent_volume_claim {
                info.claim_names.push(claim.claim_name.clone());
            }
            if volume.ephemeral.is_some() {
                info.claim_names.push(format!("{pod_name}-{}", volume.name));
            }
        }
        info
    }
}

impl From<&PersistentVolumeClaim> for ClaimInfo {
    fn from(claim: &PersistentVolumeClaim) -> Self {
        Self { volume_name: claim.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|n| !n.is_empty()) }
    }
}

impl From<&PersistentVolume> for VolumeInfo {
    /// The PV's `csi.driver`, or the driver CSI migration serves its in-tree type with.
    fn from(volume: &PersistentVolume) -> Self {
        let Some(spec) = &volume.spec else { return Self::default() };
        let in_tree = automount::in_tree_driver([
            spec.aws_elastic_block_store.is_some(),
            spec.gce_persistent_disk.is_some(),
            spec.azure_disk.is_some(),
            spec.azure_file.is_some(),
            spec.cinder.is_some(),
            spec.vsphere_volume.is_some(),
            spec.portworx_volume.is_some(),
        ]);
        let driver = spec.csi.as_ref().map(|c| c.driver.clone()).or(in_tree.map(|(_, driver)| driver.to_string()));
        Self { csi_driver: driver }
    }
}

/// The service account a pod (or template) runs as: `serviceAccountName`, then the deprecated
/// `serviceAccount`, then `default`.
pub fn service_account_named<'a>(name: Option<&'a str>, deprecated: Option<&'a str>) -> &'a str {
    [name, deprecated].into_iter().flatten().find(|name| !name.is_empty()).unwrap_or("default")
}
