//! The names of tokengate's rules: every violation names the one it breaks, the native policies
//! name them in their messages, and `webhooks::native::split` places each one.

pub const TOKEN_REQUEST_AUDIENCES: &str = "tokenrequest-audiences";
pub const TOKEN_REQUEST_LIFETIMES: &str = "tokenrequest-lifetimes";
pub const TOKEN_REQUEST_KUBELETS: &str = "tokenrequest-kubelets";
pub const POD_TOKEN_AUDIENCES: &str = "pod-token-audiences";
pub const POD_TOKEN_LIFETIMES: &str = "pod-token-lifetimes";
pub const POD_CSI_DRIVERS: &str = "pod-csi-drivers";
/// Injections matched by namespace and pod labels only, added by a MutatingAdmissionPolicy
/// where the API server serves one; no violation names it (a mutation refuses nothing).
pub const POD_NATIVE_INJECTIONS: &str = "pod-injections-by-namespace-and-labels";
pub const POD_INJECTIONS: &str = "pod-injections";
pub const CSI_DRIVER_LISTED: &str = "csidriver-listed";
pub const CSI_DRIVER_AUDIENCES: &str = "csidriver-audiences";
pub const CSI_DRIVER_LIFETIMES: &str = "csidriver-lifetimes";
pub const CSI_DRIVER_REPUBLISH: &str = "csidriver-republish";
pub const CSI_DRIVER_TOKEN_IN_SECRETS: &str = "csidriver-token-in-secrets";
pub const LEGACY_TOKENS: &str = "legacy-token-secrets";
pub const WORKLOAD_TEMPLATES: &str = "workload-templates";

/// Not a policy rule: the request itself could not be read (undecodable, or not what its
/// resource says), so nothing in it could be judged. Only the webhook answers it.
pub const READABLE_REQUEST: &str = "readable-request";
