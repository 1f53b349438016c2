//! The webhook configurations for a policy: policy in, a MutatingWebhookConfiguration and a
//! ValidatingWebhookConfiguration out, with CEL `matchConditions` that keep every request
//! tokengate would certainly allow unchanged inside the API server. Pure: no I/O.
//!
//! `tokengate webhooks` prints them ([`render_yaml`]); `serve --manage-webhooks` applies them
//! ([`manage`]).

pub mod conditions;
pub mod manage;
pub mod native;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::policy::Policy;
use crate::review::{self, Subject, WorkloadKind};
use conditions::MatchCondition;

/// The default name of both configurations.
pub const DEFAULT_CONFIGURATION_NAME: &str = "tokengate";
/// The namespace tokengate runs in when the configurations point at a URL.
pub const DEFAULT_NAMESPACE: &str = "tokengate-system";
/// The port of the Service when `--service` names none.
pub const DEFAULT_SERVICE_PORT: u16 = 443;

/// Where the API server reaches tokengate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Service in the cluster (`clientConfig.service`).
    Service(ServiceRef),
    /// A URL (`clientConfig.url`); `/validate` and `/mutate` are appended.
    Url(String),
}

/// `--service NAMESPACE/NAME[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

/// A `--service` value that is not `NAMESPACE/NAME[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not NAMESPACE/NAME[:PORT]")]
pub struct NotServiceRef(pub String);

impl FromStr for ServiceRef {
    type Err = NotServiceRef;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || NotServiceRef(text.to_string());
        let (namespace, rest) = text.split_once('/').ok_or_else(invalid)?;
        let (name, port) = match rest.split_once(':') {
            Some((name, port)) => (name, port.parse::<u16>().map_err(|_| invalid())?),
            None => (rest, DEFAULT_SERVICE_PORT),
        };
        if namespace.is_empty() || name.is_empty() || name.contains('/') || port == 0 {
            return Err(invalid());
        }
        Ok(ServiceRef { namespace: namespace.to_string(), name: name.to_string(), port })
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// Everything besides the policy that shapes the configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `metadata.name` of both configurations.
    pub name: String,
    pub endpoint: Endpoint,
    /// Base64 PEM bundle for `clientConfig.caBundle`; `None` leaves the field out (for
    /// cert-manager's cainjector or whoever manages it).
    pub ca_bundle: Option<String>,
    /// `metadata.annotations` of both configurations, e.g. `cert-manager.io/inject-ca-from`.
    pub annotations: BTreeMap<String, String>,
}

impl Options {
    /// Options for `endpoint` with the default name, no CA bundle and no annotations.
    pub fn new(endpoint: Endpoint) -> Self {
        Options {
            name: DEFAULT_CONFIGURATION_NAME.to_string(),
            endpoint,
            ca_bundle: None,
            annotations: BTreeMap::new(),
        }
    }

    /// tokengate's own namespace, which no webhook sees: the Service's, or the default one.
    fn own_namespace(&self) -> &str {
        match &self.endpoint {
            Endpoint::Service(service) => &service.namespace,
            Endpoint::Url(_) => DEFAULT_NAMESPACE,
        }
    }

    fn client_config(&self, path: &str) -> ClientConfig {
        let (url, service) = match &self.endpoint {
            Endpoint::Url(base) => (Some(format!("{}{path}", base.trim_end_matches('/'))), None),
            Endpoint::Service(s) => (
                None,
                Some(ServiceClient {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    path: path.to_string(),
                    port: s.port,
                }),
            ),
        };
        ClientConfig { url, service, ca_bundle: self.ca_bundle.clone() }
    }

    /// The webhook `shape` describes, at this endpoint, with the conditions every webhook has
    /// before its own.
    fn webhook(&self, policy: &Policy, shape: WebhookShape) -> Webhook {
        let (path, timeout_seconds) = match shape.endpoint {
            review::Webhook::Mutate => ("/mutate", 2),
            review::Webhook::Validate => ("/validate", 3),
        };
        let mut match_conditions = conditions::common(policy, shape.namespaced);
        match_conditions.extend(shape.conditions);
        Webhook {
            name: shape.name.to_string(),
            admission_review_versions: vec!["v1".to_string()],
            side_effects: "None".to_string(),
            timeout_seconds,
            failure_policy: shape.failure_policy,
            reinvocation_policy: shape.reinvocation_policy,
            match_policy: "Equivalent".to_string(),
            client_config: self.client_config(path),
            rules: Rule::for_subjects(shape.endpoint, &shape.subjects),
            namespace_selector: shape.namespaced.then(|| namespace_selector(self.own_namespace())),
            match_conditions,
        }
    }

    /// A configuration of `kind` holding `webhooks`, named and annotated as the options say.
    fn configuration(&self, kind: &str, webhooks: Vec<Webhook>) -> WebhookConfiguration {
        WebhookConfiguration {
            api_version: "admissionregistration.k8s.io/v1".to_string(),
            kind: kind.to_string(),
            metadata: Metadata { name: self.name.clone(), annotations: self.annotations.clone() },
            webhooks,
        }
    }
}

/// Why the API server would refuse configurations built from [`Options`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// The configurations' `metadata.name` is not a DNS subdomain.
    #[error("--name {0:?}: a configuration's name must be a DNS subdomain (lower-case letters, digits, '-' and '.', at most 253 characters, starting and ending with a letter or digit)")]
    Name(String),
    /// The Service's namespace or name is not a DNS label.
    #[error("--service {0}: the namespace and name must be DNS labels (lower-case letters, digits and '-', at most 63 characters)")]
    Service(String),
    /// The URL is one the API server refuses.
    #[error("--url {url:?}: {why}")]
    Url { url: String, why: &'static str },
}

impl Options {
    /// What the API server would refuse, as `ValidateWebhookURL`
    /// (k8s.io/apiserver/pkg/util/webhook/validation.go) and the object-meta and Service
    /// reference validations of admissionregistration (pkg/apis/admissionregistration/validation)
    /// check them: a DNS subdomain name, DNS label Service namespace and name, and an `https`
    /// URL with a host and without user information, query or fragment.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if !is_dns_subdomain(&self.name) {
            return Err(OptionsError::Name(self.name.clone()));
        }
        match &self.endpoint {
            Endpoint::Service(service) if !is_dns_label(&service.namespace) || !is_dns_label(&service.name) => {
                Err(OptionsError::Service(service.to_string()))
            }
            Endpoint::Service(_) => Ok(()),
            Endpoint::Url(url) => {
                url_problem(url).map_or(Ok(()), |why| Err(OptionsError::Url { url: url.clone(), why }))
            }
        }
    }
}

/// What `ValidateWebhookURL` (with https forced, as for webhooks) refuses in `url`.
fn url_problem(url: &str) -> Option<&'static str> {
    let Some(rest) = url.strip_prefix("https://") else { return Some("'https' is the only allowed URL scheme") };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        Some("user information is not permitted in the URL")
    } else if authority.is_empty() || authority.starts_with(':') {
        Some("host must be specified")
    } else if rest.contains('#') {
        Some("fragments are not permitted in the URL")
    } else if rest.contains('?') {
        Some("query parameters are not permitted in the URL")
    } else {
        None
    }
}

/// A DNS-1123 label (`IsDNS1123Label` in k8s.io/apimachinery/pkg/util/validation).
fn is_dns_label(text: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !text.is_empty()
        && text.len() <= 63
        && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && edge(text.chars().next())
        && edge(text.chars().last())
}

/// A DNS-1123 subdomain (`IsDNS1123Subdomain`): DNS labels joined by dots, at most 253 characters.
fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

/// A MutatingWebhookConfiguration or ValidatingWebhookConfiguration
/// (admissionregistration.k8s.io/v1), with the fields tokengate sets, in a readable order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookConfiguration {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub webhooks: Vec<Webhook>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// One webhook of a configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub name: String,
    pub admission_review_versions: Vec<String>,
    pub side_effects: String,
    pub timeout_seconds: u32,
    pub failure_policy: FailurePolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reinvocation_policy: Option<String>,
    pub match_policy: String,
    pub client_config: ClientConfig,
    pub rules: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<serde_json::Value>,
    pub match_conditions: Vec<MatchCondition>,
}

/// What the API server does when the webhook cannot be reached or a condition fails to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailurePolicy {
    Fail,
    Ignore,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceClient>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceClient {
    pub namespace: String,
    pub name: String,
    pub path: String,
    pub port: u16,
}

/// One entry of `rules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub api_groups: Vec<String>,
    pub api_versions: Vec<String>,
    pub resources: Vec<String>,
    pub operations: Vec<String>,
    pub scope: String,
}

impl Rule {
    /// The rules that send `endpoint` what it judges of `subjects`, from the one table of what
    /// each endpoint governs (`review::governed_operations`): one rule per API group, resources
    /// in the order given.
    pub fn for_subjects(endpoint: review::Webhook, subjects: &[Subject]) -> Vec<Rule> {
        let mut rules: Vec<Rule> = Vec::new();
        for &subject in subjects {
            let Some(resource) = subject.resource() else { continue };
            let operations: Vec<String> =
                review::governed_operations(endpoint, subject).iter().map(|o| o.as_str().to_string()).collect();
            if operations.is_empty() {
                continue;
            }
            let scope = if resource.namespaced { "Namespaced" } else { "Cluster" };
            let same_group = rules
                .iter_mut()
                .find(|r| r.api_groups == [resource.group] && r.operations == operations && r.scope == scope);
            match same_group {
                Some(rule) => rule.resources.push(resource.resource.to_string()),
                None => rules.push(Rule {
                    api_groups: vec![resource.group.to_string()],
                    api_versions: vec!["v1".to_string()],
                    resources: vec![resource.resource.to_string()],
                    operations,
                    scope: scope.to_string(),
                }),
            }
        }
        rules
    }
}

/// The two configurations.
#[derive(Debug, Clone, PartialEq)]
pub struct Configurations {
    pub mutating: WebhookConfiguration,
    pub validating: WebhookConfiguration,
}

/// The webhook names, for tests and the README.
pub mod names {
    pub const PODS_MUTATE: &str = "pods.mutate.tokengate.dev";
    pub const PODS_VALIDATE: &str = "pods.validate.tokengate.dev";
    pub const TOKEN_REQUESTS: &str = "tokenrequests.validate.tokengate.dev";
    pub const CSI_DRIVERS: &str = "csidrivers.validate.tokengate.dev";
    pub const WORKLOADS: &str = "workloads.validate.tokengate.dev";
    pub const SECRETS: &str = "secrets.validate.tokengate.dev";
}

/// The configurations for `policy`, with match conditions from the audiences it lists.
pub fn configurations(policy: &Policy, options: &Options) -> Configurations {
    let audiences: Vec<String> = policy.api_server_audiences().into_iter().map(str::to_string).collect();
    configurations_for_audiences(policy, options, &audiences)
}

/// The configurations for `policy`, treating `api_server_audiences` (the policy's list, plus any
/// the server learned from the cluster) as the API server's audiences in match conditions.
pub fn configurations_for_audiences(
    policy: &Policy,
    options: &Options,
    api_server_audiences: &[String],
) -> Configurations {
    let webhook = |shape| options.webhook(policy, shape);
    let mutating = mutating_webhooks(policy).into_iter().map(webhook).collect();
    let validating = validating_webhooks(policy, api_server_audiences).into_iter().map(webhook).collect();
    Configurations {
        mutating: options.configuration("MutatingWebhookConfiguration", mutating),
        validating: options.configuration("ValidatingWebhookConfiguration", validating),
    }
}

/// What sets one webhook apart from the others; [`Options::webhook`] fills in the rest.
struct WebhookShape {
    name: &'static str,
    endpoint: review::Webhook,
    failure_policy: FailurePolicy,
    subjects: Vec<Subject>,
    /// Whether it sees namespaced objects, and so skips tokengate's own namespace.
    namespaced: bool,
    /// Match conditions after the common ones.
    conditions: Vec<MatchCondition>,
    /// `reinvocationPolicy`, for a mutating webhook.
    reinvocation_policy: Option<String>,
}

impl WebhookShape {
    /// A namespaced webhook at `endpoint` for `subjects`, without conditions of its own.
    fn new(
        name: &'static str,
        endpoint: review::Webhook,
        failure_policy: FailurePolicy,
        subjects: Vec<Subject>,
    ) -> Self {
        WebhookShape {
            name,
            endpoint,
            failure_policy,
            subjects,
            namespaced: true,
            conditions: Vec::new(),
            reinvocation_policy: None,
        }
    }
}

/// The mutating webhook, `pods.mutate`: pods some injection may match, reinvoked when later
/// webhooks change the pod.
fn mutating_webhooks(policy: &Policy) -> Vec<WebhookShape> {
    vec![WebhookShape {
        conditions: for_pods(policy, vec![conditions::not_mirror_pod(), conditions::pod_injection_may_match(policy)]),
        reinvocation_policy: Some("IfNeeded".to_string()),
        ..WebhookShape::new(names::PODS_MUTATE, review::Webhook::Mutate, FailurePolicy::Fail, vec![Subject::Pod])
    }]
}

/// The validating webhooks, one per kind of object judged, in the order they are printed.
fn validating_webhooks(policy: &Policy, api_server_audiences: &[String]) -> Vec<WebhookShape> {
    let validate =
        |name, failure_policy, subjects| WebhookShape::new(name, review::Webhook::Validate, failure_policy, subjects);
    let workloads: Vec<Subject> = WorkloadKind::ALL.into_iter().map(Subject::Workload).collect();
    vec![
        WebhookShape {
            conditions: for_pods(policy, vec![conditions::pod_needs_checks(policy)]),
            ..validate(names::PODS_VALIDATE, FailurePolicy::Fail, vec![Subject::Pod])
        },
        WebhookShape {
            conditions: vec![conditions::not_kubelet_automount_token(api_server_audiences)],
            ..validate(names::TOKEN_REQUESTS, FailurePolicy::Fail, vec![Subject::TokenRequest])
        },
        WebhookShape {
            namespaced: false,
            conditions: vec![conditions::csi_driver_has_token_requests()],
            ..validate(names::CSI_DRIVERS, FailurePolicy::Fail, vec![Subject::CsiDriver])
        },
        WebhookShape {
            conditions: for_pods(policy, conditions::workload_template_changes()),
            ..validate(names::WORKLOADS, FailurePolicy::Ignore, workloads)
        },
        WebhookShape {
            conditions: conditions::service_account_token_secret(),
            ..validate(names::SECRETS, FailurePolicy::Fail, vec![Subject::Secret])
        },
    ]
}

/// The conditions of a webhook that sees pods or their templates: outside the exempt pod
/// namespaces, then `extra`.
fn for_pods(policy: &Policy, extra: Vec<MatchCondition>) -> Vec<MatchCondition> {
    conditions::not_exempt_pod_namespace(policy).into_iter().chain(extra).collect()
}

/// Skips tokengate's own namespace, and only it, by `kubernetes.io/metadata.name`, which the API
/// server sets and a namespace cannot fake: tokengate's pods must start while it is down. Every
/// other namespace the configurations leave out is one the policy exempts, in matchConditions.
fn namespace_selector(own_namespace: &str) -> serde_json::Value {
    serde_json::json!({
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [own_namespace]}]
    })
}

/// Why the configurations could not be printed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The configurations did not serialise to YAML.
    #[error("the webhook configurations do not serialise to YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
}

/// The configurations as one YAML stream for `kubectl apply -f -`, with comments saying what
/// each webhook does, what the match conditions skip, and what they cannot skip.
pub fn render_yaml(policy: &Policy, configurations: &Configurations) -> Result<String, RenderError> {
    let mut out = String::new();
    for line in header_comments(policy) {
        out.push_str(if line.is_empty() { "#" } else { "# " });
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&serde_yaml_ng::to_string(&configurations.mutating)?);
    out.push_str("---\n");
    out.push_str(&serde_yaml_ng::to_string(&configurations.validating)?);
    Ok(out)
}

/// The comment block at the top of the printed configurations.
fn header_comments(policy: &Policy) -> Vec<String> {
    let mut lines: Vec<String> = [
        "tokengate's webhooks, computed from the policy by `tokengate webhooks`: do not edit by hand.",
        "Every webhook:",
        "- skips tokengate's own namespace by `kubernetes.io/metadata.name` (set by the control plane; a",
        "  namespace cannot fake it), so that tokengate's own pods start while it is down;",
        "- skips requests from the group `tokengate:breakglass` and the policy's exemptions (matchConditions),",
        "  usable also for cluster-scoped CSIDrivers that no namespaceSelector covers;",
        "- the pod and workload webhooks also skip `exemptions.podNamespaces` (default kube-system and",
        "  kube-node-lease: system pods start while tokengate is down); TokenRequests and legacy token",
        "  Secrets there stay governed;",
        "- has no side effects, speaks admission.k8s.io/v1 only, and answers within a small timeout.",
        "The matchConditions keep every request tokengate would allow unchanged inside the API server, so",
        "while tokengate is down only requests whose answer it could change fail (failurePolicy: Fail):",
        "- pods.mutate: only pods in namespaces, and with labels, that some injection matches;",
        "- pods.validate: only pods with a projected token other than the automount volume",
        "  (kube-api-access-*), an inline csi volume or an in-tree volume that CSI migration serves,",
        "  or that some injection may match;",
        "- tokenrequests.validate: not a kubelet's request for the automount token (3607 s, bound to a",
        "  Pod, API server audiences only). One exception to \"skipped means tokengate allows it\": tokengate",
        "  judges such a request for a pod WITHOUT an automount volume as a one-year token and may deny it;",
        "  CEL cannot see the pod, so the API server lets it through. The pod (or CSIDriver) that makes a",
        "  kubelet ask for it was itself judged at its creation.",
        "- csidrivers.validate: only drivers that declare tokenRequests;",
        "- secrets.validate: only Secrets of type kubernetes.io/service-account-token (on UPDATE only when",
        "  the kubernetes.io/service-account.name annotation changes);",
        "- workloads.validate (failurePolicy: Ignore): an early warning at `kubectl apply` time only; not",
        "  for objects being deleted, and on UPDATE only when the pod template changes.",
        "Why Fail elsewhere: a pod that must carry an identity token never starts without it, and one with a",
        "forbidden token never slips through; kubelets refresh tokens at 80% of their lifetime, so a short",
        "outage expires no running pod's token; CSIDriver and legacy token Secret changes are rare and",
        "admin-driven.",
        "In an emergency: `kubectl delete mutatingwebhookconfiguration tokengate` and",
        "`kubectl delete validatingwebhookconfiguration tokengate` (see the README).",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let by_annotation: Vec<&str> = policy
        .injections()
        .iter()
        .filter(|i| i.service_account_annotation.is_some())
        .map(|i| i.name.as_str())
        .collect();
    if !by_annotation.is_empty() {
        lines.push(String::new());
        lines.push(format!(
            "NOTE: injection(s) {} match by a service-account annotation, which CEL cannot see: every pod",
            by_annotation.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
        ));
        lines.push(
            "of the namespaces (and pod labels) they cover is sent to tokengate. Narrow such injections by".into(),
        );
        lines.push("match.namespaces or match.podSelector so that fewer pods depend on tokengate.".into());
    }
    lines
}

#[cfg(test)]
mod tests;
