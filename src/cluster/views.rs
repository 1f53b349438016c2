//! Reduced views of the objects lookups read, decoded straight from the API's JSON.
//!
//! Each view reads only the fields a decision needs and skips the rest, so an object with a
//! field from a newer API server (or a type k8s-openapi does not expect in a field nobody reads)
//! still decodes, and a watch cache or `audit` never builds a whole Pod. Each view is a
//! [`kube::Resource`] with its kind's API coordinates, so `Api<DeserializeGuard<View>>` lists,
//! watches and gets it. The one conversion to the `*Info` types lives here.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

use super::{service_account_named, ClaimInfo, CsiDriverInfo, PodInfo, ServiceAccountInfo, Uid, VolumeInfo};
use crate::k8s::{tokens, volumes};

/// `kube::Resource` for a view, with the API coordinates of the k8s-openapi type it reduces.
macro_rules! view_of {
    ($view:ty, $full:ty, $scope:ty) => {
        impl kube::Resource for $view {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(<$full as k8s_openapi::Resource>::KIND)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(<$full as k8s_openapi::Resource>::GROUP)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(<$full as k8s_openapi::Resource>::VERSION)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(<$full as k8s_openapi::Resource>::URL_PATH_SEGMENT)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// The annotation `kubectl apply` keeps the whole last applied object in; no decision reads it,
/// and on a ServiceAccount it is most of the object, so caches drop it.
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The metadata fields a view keeps, as an `ObjectMeta` (what `kube::Resource` hands out): the
/// key, the uid, and the `resourceVersion` kube's watcher resumes from; with `annotations` for
/// ServiceAccounts. Labels, managed fields, timestamps and owner references are skipped, so an odd
/// value there cannot make an object undecodable.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataView {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
}

impl From<MetadataView> for ObjectMeta {
    fn from(view: MetadataView) -> Self {
        let MetadataView { name, namespace, uid, resource_version } = view;
        ObjectMeta { name, namespace, uid, resource_version, ..ObjectMeta::default() }
    }
}

fn metadata<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    MetadataView::deserialize(deserializer).map(ObjectMeta::from)
}

fn metadata_with_annotations<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    struct WithAnnotations {
        #[serde(flatten)]
        metadata: MetadataView,
        annotations: Option<std::collections::BTreeMap<String, String>>,
    }
    let view = WithAnnotations::deserialize(deserializer)?;
    Ok(ObjectMeta { annotations: view.annotations, ..view.metadata.into() })
}

/// A ServiceAccount: its metadata (decisions read the annotations).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceAccountView {
    #[serde(default, deserialize_with = "metadata_with_annotations")]
    pub metadata: ObjectMeta,
}
view_of!(ServiceAccountView, k8s_openapi::api::core::v1::ServiceAccount, NamespaceResourceScope);

impl From<&ServiceAccountView> for ServiceAccountInfo {
    fn from(view: &ServiceAccountView) -> Self {
        let annotations = view.metadata.annotations.iter().flatten();
        let kept = annotations.filter(|(key, _)| *key != LAST_APPLIED_ANNOTATION);
        Self { annotations: kept.map(|(key, value)| (key.clone(), value.clone())).collect() }
    }
}

/// A CSIDriver: `spec.tokenRequests`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CsiDriverView {
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: CsiDriverSpecView,
}
view_of!(CsiDriverView, k8s_openapi::api::storage::v1::CSIDriver, ClusterResourceScope);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CsiDriverSpecView {
    pub token_requests: Option<Vec<TokenRequestView>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequestView {
    #[serde(default)]
    pub audience: String,
    pub expiration_seconds: Option<i64>,
}

impl From<&CsiDriverView> for CsiDriverInfo {
    fn from(view: &CsiDriverView) -> Self {
        let requests = view.spec.token_requests.iter().flatten();
        Self { token_requests: requests.map(|t| (t.audience.clone(), t.expiration_seconds)).collect() }
    }
}

/// A Pod: the node, service account and volumes (containers, status and the rest are skipped).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodView {
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: ObjectMeta,
    pub spec: Option<PodSpecView>,
}
view_of!(PodView, k8s_openapi::api::core::v1::Pod, NamespaceResourceScope);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecView {
    pub node_name: Option<String>,
    pub service_account_name: Option<String>,
    pub service_account: Option<String>,
    pub volumes: Option<Vec<VolumeView>>,
}

/// One entry of `spec.volumes`: token sources, CSI drivers and claims.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeView {
    pub name: String,
    pub projected: Option<ProjectedView>,
    pub csi: Option<DriverView>,
    pub persistent_volume_claim: Option<ClaimSourceView>,
    pub ephemeral: Option<IgnoredAny>,
    #[serde(flatten)]
    pub in_tree: InTreeView,
}

/// In-tree volume types CSI migration serves through a CSI driver: only whether each is set
/// matters (same order as `k8s::volumes::IN_TREE_VOLUME_DRIVERS`). Shared by Pod volumes and PVs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InTreeView {
    pub aws_elastic_block_store: Option<IgnoredAny>,
    pub gce_persistent_disk: Option<IgnoredAny>,
    pub azure_disk: Option<IgnoredAny>,
    pub azure_file: Option<IgnoredAny>,
    pub cinder: Option<IgnoredAny>,
    pub vsphere_volume: Option<IgnoredAny>,
    pub portworx_volume: Option<IgnoredAny>,
}

impl InTreeView {
    /// The CSI driver CSI migration serves this in-tree volume with, if it is one.
    fn driver(&self) -> Option<&'static str> {
        volumes::in_tree_driver(crate::in_tree_types_set!(self)).map(|(_, driver)| driver)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProjectedView {
    pub sources: Option<Vec<ProjectionView>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionView {
    pub service_account_token: Option<TokenProjectionView>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenProjectionView {
    pub audience: Option<String>,
    pub expiration_seconds: Option<i64>,
    #[serde(default)]
    pub path: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct DriverView {
    pub driver: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimSourceView {
    pub claim_name: String,
}

impl From<&PodView> for PodInfo {
    fn from(pod: &PodView) -> Self {
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        let uid = Uid::from(pod.metadata.uid.as_deref().unwrap_or_default());
        let Some(spec) = &pod.spec else { return PodInfo { uid, ..Default::default() } };
        let (mut audiences, mut drivers, mut claims) = (Vec::new(), Vec::new(), Vec::new());
        let mut has_automount_volume = false;
        for volume in spec.volumes.iter().flatten() {
            let sources = volume.projected.iter().flat_map(|p| p.sources.iter().flatten());
            let tokens: Vec<_> = sources.filter_map(|s| s.service_account_token.as_ref()).collect();
            let shape = tokens.iter().map(|t| (t.audience.as_deref(), t.path.as_str(), t.expiration_seconds));
            has_automount_volume |= tokens::has_automount_shape(&volume.name, shape);
            audiences.extend(tokens.iter().map(|t| shared(t.audience.as_deref().unwrap_or_default())));
            match (&volume.csi, volume.in_tree.driver()) {
                (Some(csi), _) => drivers.push(shared(&csi.driver)),
                (None, Some(driver)) => drivers.push(shared(driver)),
                (None, None) => {}
            }
            if let Some(claim) = &volume.persistent_volume_claim {
                claims.push(claim.claim_name.as_str().into());
            }
            if volume.ephemeral.is_some() {
                claims.push(format!("{pod_name}-{}", volume.name).into());
            }
        }
        let service_account =
            service_account_named(spec.service_account_name.as_deref(), spec.service_account.as_deref());
        PodInfo {
            uid,
            node_name: spec.node_name.as_deref().filter(|n| !n.is_empty()).map(shared),
            service_account: shared(service_account),
            has_automount_volume,
            token_audiences: audiences.into(),
            csi_drivers: drivers.into(),
            claim_names: claims.into(),
        }
    }
}

/// The one shared copy of a name many cached objects carry (a node, a service account, an
/// audience, a driver): each pod holds a pointer to it, not its own copy. Copies no object
/// holds any more are dropped whenever the table has doubled since it was last swept.
pub fn shared(name: &str) -> Arc<str> {
    static NAMES: LazyLock<Mutex<(HashSet<Arc<str>>, usize)>> = LazyLock::new(Mutex::default);
    let mut names = NAMES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (table, swept) = &mut *names;
    if let Some(found) = table.get(name) {
        return found.clone();
    }
    if table.len() >= 2 * (*swept).max(1024) {
        table.retain(|name| Arc::strong_count(name) > 1);
        *swept = table.len();
    }
    let name: Arc<str> = Arc::from(name);
    table.insert(name.clone());
    name
}

/// A PersistentVolumeClaim: `spec.volumeName`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClaimView {
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: ObjectMeta,
    pub spec: Option<ClaimSpecView>,
}
view_of!(ClaimView, k8s_openapi::api::core::v1::PersistentVolumeClaim, NamespaceResourceScope);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimSpecView {
    pub volume_name: Option<String>,
}

impl From<&ClaimView> for ClaimInfo {
    fn from(claim: &ClaimView) -> Self {
        Self { volume_name: claim.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|n| !n.is_empty()) }
    }
}

/// A PersistentVolume: `spec.csi.driver` and its in-tree type.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PersistentVolumeView {
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: ObjectMeta,
    pub spec: Option<PersistentVolumeSpecView>,
}
view_of!(PersistentVolumeView, k8s_openapi::api::core::v1::PersistentVolume, ClusterResourceScope);

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PersistentVolumeSpecView {
    pub csi: Option<DriverView>,
    #[serde(flatten)]
    pub in_tree: InTreeView,
}

impl From<&PersistentVolumeView> for VolumeInfo {
    /// The PV's `csi.driver`, or the driver CSI migration serves its in-tree type with.
    fn from(volume: &PersistentVolumeView) -> Self {
        let Some(spec) = &volume.spec else { return Self::default() };
        let driver = spec.csi.as_ref().map(|c| c.driver.clone()).or(spec.in_tree.driver().map(str::to_string));
        Self { csi_driver: driver }
    }
}

/// Annotations of a reduced ServiceAccount, for tests.
#[cfg(test)]
fn annotations(view: &ServiceAccountView) -> Vec<String> {
    ServiceAccountInfo::from(view).annotations.iter().map(|(key, _)| key.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_with_fields_nobody_reads_in_unexpected_shapes_still_decodes() {
        let pod: PodView = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "creationTimestamp": "yesterday", "managedFields": 5, "labels": [1]},
            "spec": {"containers": "from a newer API server", "nodeName": "n", "futureField": {"x": 1},
                     "volumes": [{"name": "kube-api-access-x1y2z", "projected": {"sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt"}}]}},
                        {"name": "ebs", "awsElasticBlockStore": {"volumeID": "v"}},
                        {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {}}}]},
            "status": 42,
        }))
        .expect("decodes");
        let info = PodInfo::from(&pod);
        assert!(info.has_automount_volume);
        assert_eq!(info.node_name.as_deref(), Some("n"));
        assert_eq!(&*info.service_account, "default");
        assert_eq!(info.csi_drivers, [Arc::from("ebs.csi.aws.com")].into());
        assert_eq!(info.claim_names, [Box::from("p-scratch")].into());
    }

    #[test]
    fn a_pod_whose_volumes_are_mistyped_does_not_decode() {
        let bad = serde_json::from_value::<PodView>(json!({"metadata": {"name": "p"}, "spec": {"volumes": "x"}}));
        assert!(bad.is_err());
    }

    #[test]
    fn service_accounts_drop_the_last_applied_configuration() {
        let view: ServiceAccountView = serde_json::from_value(json!({"metadata": {"name": "sa", "annotations": {
            LAST_APPLIED_ANNOTATION: "{\"big\": true}", "eks.amazonaws.com/role-arn": "arn"}}}))
        .expect("decodes");
        assert_eq!(annotations(&view), vec!["eks.amazonaws.com/role-arn".to_string()]);
        let info = ServiceAccountInfo::from(&view);
        assert_eq!(info.annotations.get("eks.amazonaws.com/role-arn").map(String::as_str), Some("arn"));
        assert!(!info.annotations.contains_key(LAST_APPLIED_ANNOTATION));
    }

    #[test]
    fn persistent_volumes_name_their_driver() {
        let csi: PersistentVolumeView =
            serde_json::from_value(json!({"spec": {"csi": {"driver": "d"}}})).expect("decodes");
        assert_eq!(VolumeInfo::from(&csi).csi_driver.as_deref(), Some("d"));
        let gce: PersistentVolumeView =
            serde_json::from_value(json!({"spec": {"gcePersistentDisk": {"pdName": "x"}}})).expect("decodes");
        assert_eq!(VolumeInfo::from(&gce).csi_driver.as_deref(), Some("pd.csi.storage.gke.io"));
        let claim: ClaimView = serde_json::from_value(json!({"spec": {"volumeName": ""}})).expect("decodes");
        assert_eq!(ClaimInfo::from(&claim).volume_name, None);
    }
}
