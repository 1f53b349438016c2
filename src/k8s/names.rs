//! Well-known annotations, labels and Secret types, Kubernetes' and tokengate's own.

/// The annotation the kubelet puts on mirror pods of static pods.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The annotation naming the service account of a legacy token Secret.
pub const SERVICE_ACCOUNT_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
/// The Secret type the token controller fills with a token that never expires.
pub const SERVICE_ACCOUNT_TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
/// The pod annotation listing injections (comma-separated) that the pod opts out of; honoured
/// only for injections with `required: false`.
pub const SKIP_ANNOTATION: &str = "tokengate.dev/skip-injection";
/// The label the control plane sets on every namespace to its name (it cannot be spoofed).
pub const METADATA_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The service account a pod (or template) runs as: `serviceAccountName`, then the deprecated
/// `serviceAccount`, then `default` (the ServiceAccount admission plugin fills it in for Pods;
/// `DefaultServiceAccountName` in plugin/pkg/admission/serviceaccount/admission.go).
pub fn service_account_named<'a>(name: Option<&'a str>, deprecated: Option<&'a str>) -> &'a str {
    [name, deprecated].into_iter().flatten().find(|name| !name.is_empty()).unwrap_or("default")
}
