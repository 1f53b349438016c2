//! The parts of a Pod or pod template that decisions read, decoded straight from the request.
//!
//! Fields tokengate does not read are skipped, not built: a Pod decodes in about a third of the
//! time a full `k8s_openapi` Pod takes, which is most of the cost of a review. The object was
//! validated by the API server before any webhook sees it, so skipping fields loses nothing.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::WorkloadKind;
use crate::k8s::names::service_account_named;
use crate::k8s::{tokens, volumes};

/// A Pod, or the pod template of a workload: the same `metadata` and `spec`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: Option<PodSpec>,
}

/// `metadata` of a Pod or template.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Metadata {
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
}

/// `spec` of a Pod.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub volumes: Option<Vec<Volume>>,
    pub containers: Option<Vec<Container>>,
    pub init_containers: Option<Vec<Container>>,
    pub service_account_name: Option<String>,
    pub service_account: Option<String>,
}

impl PodSpec {
    /// The service account the pod runs as: `serviceAccountName`, then the deprecated
    /// `serviceAccount`, then `default`.
    pub fn service_account(&self) -> &str {
        service_account_named(self.service_account_name.as_deref(), self.service_account.as_deref())
    }

    pub fn volumes(&self) -> &[Volume] {
        self.volumes.as_deref().unwrap_or_default()
    }

    pub fn containers(&self) -> &[Container] {
        self.containers.as_deref().unwrap_or_default()
    }

    pub fn init_containers(&self) -> &[Container] {
        self.init_containers.as_deref().unwrap_or_default()
    }
}

/// One entry of `spec.volumes`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    pub projected: Option<ProjectedVolume>,
    pub csi: Option<CsiVolume>,
    /// In-tree types that CSI migration serves through a CSI driver: only whether they are set
    /// matters (see `k8s::volumes::IN_TREE_VOLUME_DRIVERS`, same order).
    pub aws_elastic_block_store: Option<IgnoredAny>,
    pub gce_persistent_disk: Option<IgnoredAny>,
    pub azure_disk: Option<IgnoredAny>,
    pub azure_file: Option<IgnoredAny>,
    pub cinder: Option<IgnoredAny>,
    pub vsphere_volume: Option<IgnoredAny>,
    pub portworx_volume: Option<IgnoredAny>,
}

impl Volume {
    /// The CSI driver the volume reaches inline, with the field that names it: `csi.driver`, or
    /// an in-tree type that CSI migration serves through its driver (`azureFile`, ...).
    pub fn csi_driver(&self) -> Option<(&'static str, &str)> {
        if let Some(csi) = &self.csi {
            return Some(("csi.driver", &csi.driver));
        }
        volumes::in_tree_driver(crate::in_tree_types_set!(self))
    }

    /// Whether this is the ServiceAccount admission plugin's volume (`k8s::tokens::has_automount_shape`).
    pub fn is_automount(&self) -> bool {
        let tokens = self.token_sources().map(|(_, t)| (t.audience.as_deref(), t.path.as_str(), t.expiration_seconds));
        tokens::has_automount_shape(&self.name, tokens)
    }

    /// The `serviceAccountToken` sources of a projected volume, with their index in `sources`.
    pub fn token_sources(&self) -> impl Iterator<Item = (usize, &TokenProjection)> {
        self.sources().iter().enumerate().filter_map(|(j, source)| Some((j, source.service_account_token.as_ref()?)))
    }

    /// Every source of a projected volume, of any kind.
    pub fn sources(&self) -> &[VolumeProjection] {
        self.projected.as_ref().and_then(|p| p.sources.as_deref()).unwrap_or_default()
    }
}

/// `projected` of a volume.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ProjectedVolume {
    pub sources: Option<Vec<VolumeProjection>>,
}

/// One source of a projected volume; only token sources are read, the others only counted.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeProjection {
    pub service_account_token: Option<TokenProjection>,
}

/// A `serviceAccountToken` projection.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenProjection {
    pub audience: Option<String>,
    pub expiration_seconds: Option<i64>,
    #[serde(default)]
    pub path: String,
}

/// An inline `csi` volume.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CsiVolume {
    pub driver: String,
}

/// One entry of `containers` or `initContainers`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub env: Option<Vec<EnvVar>>,
    pub volume_mounts: Option<Vec<VolumeMount>>,
}

/// One entry of a container's `env`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    pub value: Option<String>,
    /// Only whether it is set matters.
    pub value_from: Option<IgnoredAny>,
}

/// One entry of a container's `volumeMounts`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
}

/// Any workload kind, reduced to where its pod template can be.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Workload {
    #[serde(default)]
    metadata: WorkloadMetadata,
    spec: Option<WorkloadSpec>,
    /// A PodTemplate's template.
    template: Option<Pod>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkloadSpec {
    template: Option<Pod>,
    /// A CronJob's `spec.jobTemplate`, whose `spec` is a Job's.
    job_template: Option<Box<Workload>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkloadMetadata {
    deletion_timestamp: Option<IgnoredAny>,
}

impl Workload {
    /// Whether the object is being deleted (`metadata.deletionTimestamp` is set).
    pub fn is_being_deleted(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }

    /// The pod template of a workload of `kind`, at [`WorkloadKind::template_path`].
    pub fn into_template(self, kind: WorkloadKind) -> Option<Pod> {
        match kind {
            WorkloadKind::PodTemplate => self.template,
            WorkloadKind::CronJob => self.spec?.job_template?.spec?.template,
            _ => self.spec?.template,
        }
    }
}

/// What planning and checks read of one pod (or template), and where it sits in the object.
pub struct PodView<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub labels: Option<&'a BTreeMap<String, String>>,
    pub annotations: Option<&'a BTreeMap<String, String>>,
    pub spec: &'a PodSpec,
    /// The field path of the pod spec in messages: `spec`, `spec.template.spec`, ...
    pub field: String,
}

impl<'a> PodView<'a> {
    /// The view of `pod` in `namespace`; `None` when it has no spec.
    pub fn new(pod: &'a Pod, namespace: &'a str, field: String) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        Some(PodView {
            namespace,
            service_account: spec.service_account(),
            labels: pod.metadata.labels.as_ref(),
            annotations: pod.metadata.annotations.as_ref(),
            spec,
            field,
        })
    }
}
