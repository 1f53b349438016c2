//! The policy document as users write it: serde types that reject unknown fields.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The `apiVersion` every policy document must carry.
pub const API_VERSION: &str = "tokengate.dev/v1alpha1";
/// The `kind` every policy document must carry.
pub const KIND: &str = "TokenPolicy";

/// One whole policy document (`kind: TokenPolicy`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDocument {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    pub spec: PolicySpec,
}

/// `spec` of a policy document.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub api_server_audiences: Vec<String>,
    #[serde(default)]
    pub expiration: ExpirationSpec,
    #[serde(default)]
    pub legacy_tokens: Vec<LegacyTokenEntry>,
    #[serde(default)]
    pub audiences: Vec<AudienceEntry>,
    #[serde(default)]
    pub csi_drivers: Vec<CsiDriverEntry>,
    #[serde(default)]
    pub node_restriction: NodeRestrictionSpec,
    #[serde(default)]
    pub injections: Vec<InjectionSpec>,
    #[serde(default)]
    pub exemptions: ExemptionsSpec,
}

/// What happens to a request that violates the policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Mode {
    /// Deny the request (HTTP 200, `allowed: false`, status 403).
    #[default]
    Enforce,
    /// Allow it, returning each violation as a warning to the client.
    Warn,
    /// Allow it, recording the violations in the audit log only.
    Audit,
}

impl Mode {
    /// The name users write in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "Enforce",
            Mode::Warn => "Warn",
            Mode::Audit => "Audit",
        }
    }
}

/// `spec.expiration`: the cluster-wide lifetime bounds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExpirationSpec {
    pub min_seconds: Option<u64>,
    pub max_seconds: Option<u64>,
    /// What the API server turns a pod-bound 3607 s API-server-audience token into.
    pub extended_seconds: Option<u64>,
}

/// Who may have legacy Secret-based tokens (`type: kubernetes.io/service-account-token`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LegacyTokenEntry {
    pub namespaces: Option<Vec<String>>,
    pub service_accounts: Option<Vec<String>>,
}

/// One entry of the audience allow-list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AudienceEntry {
    pub audience: String,
    pub namespaces: Option<Vec<String>>,
    pub service_accounts: Option<Vec<String>>,
    pub max_expiration_seconds: Option<u64>,
}

/// One CSI driver allowed to declare `tokenRequests`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CsiDriverEntry {
    pub name: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub require_republish: bool,
    #[serde(default)]
    pub require_token_in_secrets: bool,
}

/// `spec.nodeRestriction`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeRestrictionSpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub extra_audiences: Vec<ExtraAudience>,
}

impl Default for NodeRestrictionSpec {
    fn default() -> Self {
        Self { enabled: true, extra_audiences: Vec::new() }
    }
}

/// An audience a node may request although no pod volume references it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtraAudience {
    pub audience: String,
    pub namespaces: Option<Vec<String>>,
}

/// A projected-token volume that policy requires on matching pods.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InjectionSpec {
    pub name: String,
    #[serde(default = "default_true")]
    pub required: bool,
    #[serde(default, rename = "match")]
    pub match_: MatchSpec,
    pub volume: VolumeSpec,
    pub mount: MountSpec,
    #[serde(default)]
    pub env: Vec<EnvSpec>,
}

/// Which pods an injection applies to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchSpec {
    pub namespaces: Option<Vec<String>>,
    pub pod_selector: Option<LabelSelectorSpec>,
    pub service_account_annotation: Option<String>,
}

/// A standard Kubernetes label selector.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelectorSpec {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` requirement.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

/// The projected volume an injection adds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeSpec {
    pub name: String,
    pub audience: String,
    pub expiration_seconds: Option<u64>,
    pub path: Option<String>,
}

/// Where an injection mounts its volume.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MountSpec {
    pub mount_path: String,
    pub containers: Option<Vec<String>>,
    #[serde(default)]
    pub init_containers: bool,
}

/// One environment variable an injection sets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvSpec {
    pub name: String,
    pub value: Option<String>,
    pub value_from_service_account_annotation: Option<String>,
}

/// The default of `exemptions.podNamespaces`: the control plane's namespaces, so that system
/// pods still start while tokengate is down.
pub const DEFAULT_POD_NAMESPACES: [&str; 2] = ["kube-system", "kube-node-lease"];

/// Requests that are allowed without checks.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExemptionsSpec {
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Namespaces whose Pods and workload templates are neither checked nor mutated; absent =
    /// [`DEFAULT_POD_NAMESPACES`]. TokenRequests, Secrets and CSIDrivers stay governed there.
    #[serde(default)]
    pub pod_namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

fn default_true() -> bool {
    true
}
