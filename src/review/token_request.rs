//! TokenRequest CREATE (`serviceaccounts/token`): audiences, lifetimes, and what nodes may ask for.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::admission::AdmissionRequest;
use super::lookup::{Cluster, PodInfo};
use super::{decode_object, rules, Findings, Violation};
use crate::k8s;
use crate::k8s::tokens::AUTOMOUNT_EXPIRATION_SECONDS;
use crate::policy::{describe_audience, expiration_or_default, Lifetime, Policy, Token};

/// The fields of a TokenRequest that decisions read; everything else (new bound kinds,
/// attestations) is ignored, so newer API servers still decode.
#[derive(Debug, Default, Deserialize)]
struct TokenRequest {
    #[serde(default)]
    spec: TokenRequestSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRequestSpec {
    #[serde(default)]
    audiences: Option<Vec<String>>,
    #[serde(default)]
    expiration_seconds: Option<i64>,
    #[serde(default)]
    bound_object_ref: Option<BoundObjectRef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BoundObjectRef {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uid: Option<String>,
}

impl BoundObjectRef {
    /// Whether it names a core Pod, as `TokenREST.Create` reads it (group `""` and kind `Pod`
    /// after `schema.FromAPIVersionAndKind`, so `v1`, `/v1`, `/` and `a/b/c` all do): only then
    /// does the API server bind the token to a pod and may extend it.
    fn is_pod(&self) -> bool {
        let api_version = self.api_version.as_deref().unwrap_or_default();
        self.kind.as_deref() == Some("Pod") && k8s::api_group(api_version).is_empty()
    }
}

/// What decisions read of a TokenRequest: its audiences (normalised, with their field paths)
/// and the lifetime the API server will issue.
struct Request<'a> {
    namespace: &'a str,
    service_account: &'a str,
    audiences: Vec<(String, &'a str)>,
    /// How many audiences the request asked for as NodeRestriction counts them: the entries of
    /// `spec.audiences`, except that distinct API server audiences count as one (the API server
    /// fills all of them in, before validating webhooks, for a request that named none).
    node_audience_count: usize,
    lifetime: Lifetime,
    bound: Option<&'a BoundObjectRef>,
}

impl<'a> Request<'a> {
    fn token(&self, audience: &'a str) -> Token<'a> {
        Token { audience, namespace: self.namespace, service_account: self.service_account, lifetime: self.lifetime }
    }

    /// The audiences as one token holds them: each once, in request order.
    fn distinct_audiences(&self) -> Vec<&'a str> {
        let mut seen = BTreeSet::new();
        self.audiences.iter().map(|(_, a)| *a).filter(|a| seen.insert(*a)).collect()
    }
}

/// Checks a TokenRequest for the service account `request.namespace/request.name`.
pub async fn validate<C: Cluster>(
    object: &RawValue,
    admission: &AdmissionRequest<'_>,
    policy: &Policy,
    cluster: &C,
) -> Findings {
    let token: TokenRequest = match decode_object(object, "TokenRequest") {
        Ok(token) => token,
        Err(findings) => return findings,
    };
    let spec = &token.spec;
    let requested = spec.audiences.as_deref().unwrap_or_default();
    // Absent or empty audiences mean the API server audience; keep the field path of each.
    let audiences: Vec<(String, &str)> = if requested.is_empty() {
        vec![("spec.audiences".to_string(), "")]
    } else {
        requested.iter().enumerate().map(|(i, a)| (format!("spec.audiences[{i}]"), policy.normalize(Some(a)))).collect()
    };
    let bound = spec.bound_object_ref.as_ref();
    let bound_to_pod = bound.is_some_and(BoundObjectRef::is_pod);
    let api_server_only = audiences.iter().all(|(_, audience)| audience.is_empty());
    let distinct_entries = requested.iter().collect::<BTreeSet<_>>().len() == requested.len();
    let node_audience_count = if api_server_only && distinct_entries { 1 } else { requested.len() };
    let seconds = expiration_or_default(spec.expiration_seconds);
    let request = Request {
        namespace: admission.namespace.as_deref().unwrap_or_default(),
        service_account: admission.name.as_deref().unwrap_or_default(),
        audiences,
        node_audience_count,
        lifetime: policy.lifetime(seconds, bound_to_pod, api_server_only),
        bound,
    };

    let mut findings = Findings::default();
    let kubelet = admission.user_info.node_name().is_some();
    let automount_token = match admission.user_info.node_name() {
        Some(node) => NodeCheck { node, request: &request, policy, cluster }.run(&mut findings).await,
        None => false,
    };
    if automount_token {
        return findings;
    }
    for audience in request.distinct_audiences() {
        let token = request.token(audience);
        if let Err(denial) = policy.check_token(&token) {
            let (rule, field) = if denial.is_about_expiration() {
                (rules::TOKEN_REQUEST_LIFETIMES, "spec.expirationSeconds")
            } else {
                let field = request.audiences.iter().find(|(_, a)| *a == audience).map_or("spec.audiences", |(f, _)| f);
                (rules::TOKEN_REQUEST_AUDIENCES, field)
            };
            // A kubelet's request is judged whole by the webhook, its allow-list too.
            let rule = if kubelet { rules::TOKEN_REQUEST_KUBELETS } else { rule };
            findings.violations.push(Violation::new(rule, field, denial.explain(&token)));
        }
    }
    findings
}

/// A kubelet's request, checked against the pod it is bound to. Upstream NodeRestriction does
/// the same in `admitServiceAccount` (plugin/pkg/admission/noderestriction/admission.go), on the
/// raw request in the mutating phase; tokengate repeats it with the policy's extra audiences,
/// and where NodeRestriction is older than the node-audience restriction (before 1.33).
struct NodeCheck<'a, C> {
    node: &'a str,
    request: &'a Request<'a>,
    policy: &'a Policy,
    cluster: &'a C,
}

impl<C: Cluster> NodeCheck<'_, C> {
    /// Records what the node may not ask for; returns whether the request is the kubelet's
    /// request for its bound pod's automount token, which is admitted without the allow-list.
    async fn run(&self, findings: &mut Findings) -> bool {
        let enforce = self.policy.node_restriction().enabled;
        if !self.names_node_and_binding(enforce, &mut findings.violations) {
            return false;
        }
        let Some((pod, pod_ref)) = self.bound_pod(enforce, &mut findings.violations).await else { return false };
        let automount_token = self.is_automount_token(&pod, &pod_ref, &mut findings.notes);
        if !enforce {
            return automount_token;
        }
        let violations = &mut findings.violations;
        self.check_audience_count(automount_token, violations);
        self.check_bound_pod(&pod, &pod_ref, violations);
        if !automount_token {
            self.check_references(&pod, &pod_ref, violations).await;
        }
        automount_token
    }

    /// Whether the check goes on: the user names a node and, with the restriction on, the
    /// request is bound as upstream `admitServiceAccount` requires; records why not when the
    /// restriction is on.
    fn names_node_and_binding(&self, enforce: bool, violations: &mut Vec<Violation>) -> bool {
        if self.node.is_empty() {
            if enforce {
                violations.push(Violation::new(
                    rules::TOKEN_REQUEST_KUBELETS,
                    "userInfo.username",
                    "the user system:node: names no node, so it may not request tokens for pods",
                ));
            }
            return false;
        }
        if enforce {
            if let Some(problem) = bound_pod_problem(self.request.bound, self.node) {
                violations.push(problem);
                return false;
            }
        }
        true
    }

    /// The binding, when it is to a core Pod.
    fn pod_binding(&self) -> Option<&BoundObjectRef> {
        self.request.bound.filter(|b| b.is_pod())
    }

    /// Whether the request has the automount token's shape: bound to a pod, for 3607 s.
    fn is_automount_shaped(&self) -> bool {
        self.pod_binding().is_some() && self.request.lifetime.requested == AUTOMOUNT_EXPIRATION_SECONDS
    }

    /// The pod the request is bound to, and its `namespace/name`, looked up when the
    /// restriction is on or the request is automount-shaped; records why there is none when the
    /// restriction is on.
    async fn bound_pod(&self, enforce: bool, violations: &mut Vec<Violation>) -> Option<(Arc<PodInfo>, String)> {
        let (node, request) = (self.node, self.request);
        let pod_name = self.pod_binding().and_then(|b| b.name.as_deref()).filter(|n| !n.is_empty());
        // An automount-shaped request is worth a lookup even when the node-audience restriction
        // is off, to tell the automount token from any other token.
        let pod_name = pod_name.filter(|_| enforce || self.is_automount_shaped())?;
        let pod_ref = format!("{}/{pod_name}", request.namespace);
        let message = match self.cluster.pod(request.namespace, pod_name).await {
            Ok(Some(pod)) => return Some((pod, pod_ref)),
            Ok(None) => {
                format!("pod {pod_ref} does not exist; node {node} may only request tokens for pods bound to it")
            }
            Err(err) => format!("could not look up pod {pod_ref}: {err}"),
        };
        if enforce {
            violations.push(Violation::new(rules::TOKEN_REQUEST_KUBELETS, "spec.boundObjectRef.name", message));
        }
        None
    }

    /// Whether the request is the kubelet's request for `pod`'s automount token: automount-shaped,
    /// for a pod with the automount volume, and for API server audiences only. Notes audiences
    /// that stood for API server audiences on the request's shape.
    fn is_automount_token(&self, pod: &PodInfo, pod_ref: &str, notes: &mut Vec<String>) -> bool {
        // Only while tokengate knows no API server audience (none listed, none learned) may an
        // audience it cannot place stand for one on the request's shape; once it knows them,
        // every other audience is checked like any other (upstream NodeRestriction, 1.33+,
        // refuses a node's request for an audience its pod does not reference).
        let unknown =
            if self.policy.api_server_audiences().is_empty() { self.unknown_audiences(pod) } else { Vec::new() };
        let automount_token = self.is_automount_shaped()
            && pod.has_automount_volume
            && self.request.audiences.iter().all(|(_, audience)| audience.is_empty() || unknown.contains(audience));
        if automount_token && !unknown.is_empty() {
            // The field and the verdict first: the API server may cut warnings at 120 characters.
            notes.push(format!(
                "spec.apiServerAudiences looks incomplete: add {unknown:?} (node {}'s request for the automount token of pod {pod_ref} was admitted by its shape; known: {:?})",
                self.node,
                self.policy.api_server_audiences()
            ));
        }
        automount_token
    }

    /// Upstream `admitServiceAccount` refuses a node's request with more than one entry in
    /// `spec.audiences` ("node may only request 0 or 1 audiences"), duplicates included.
    fn check_audience_count(&self, automount_token: bool, violations: &mut Vec<Violation>) {
        let count = if automount_token { 1 } else { self.request.node_audience_count };
        if count > 1 {
            violations.push(Violation::new(
                rules::TOKEN_REQUEST_KUBELETS,
                "spec.audiences",
                format!("node {} may request one audience per token, not {count}", self.node),
            ));
        }
    }

    /// The bound pod must be the one named (its uid), run on the node, and run as the service
    /// account the token is for.
    fn check_bound_pod(&self, pod: &PodInfo, pod_ref: &str, violations: &mut Vec<Violation>) {
        let (node, request) = (self.node, self.request);
        let bound_uid = self.pod_binding().and_then(|b| b.uid.as_deref()).unwrap_or_default();
        if pod.uid != *bound_uid {
            violations.push(Violation::new(
                rules::TOKEN_REQUEST_KUBELETS,
                "spec.boundObjectRef.uid",
                format!("pod {pod_ref} has uid {}, not {bound_uid}", pod.uid),
            ));
        }
        if pod.node_name.as_deref() != Some(node) {
            let runs_on = pod
                .node_name
                .as_deref()
                .map_or("is not scheduled to a node".to_string(), |n| format!("runs on node {n}"));
            violations.push(Violation::new(
                rules::TOKEN_REQUEST_KUBELETS,
                "spec.boundObjectRef.name",
                format!("pod {pod_ref} {runs_on}, not on node {node}"),
            ));
        }
        if *pod.service_account != *request.service_account {
            violations.push(Violation::new(
                rules::TOKEN_REQUEST_KUBELETS,
                "spec.boundObjectRef.name",
                format!(
                    "pod {pod_ref} runs as service account {}, not {}",
                    pod.service_account, request.service_account
                ),
            ));
        }
    }

    /// Audiences the request names that the policy knows nothing of and the pod does not
    /// reference: on an automount-shaped request these are most likely API server audiences
    /// missing from `spec.apiServerAudiences`.
    fn unknown_audiences<'r>(&self, pod: &PodInfo) -> Vec<&'r str>
    where
        Self: 'r,
    {
        let referenced =
            |audience: &str| pod.token_audiences.iter().any(|a| self.policy.normalize(Some(a.as_ref())) == audience);
        let mut unknown: Vec<&str> = self
            .request
            .distinct_audiences()
            .into_iter()
            .filter(|a| !a.is_empty() && !self.policy.knows_audience(a) && !referenced(a))
            .collect();
        unknown.dedup();
        unknown
    }

    /// Each audience must be referenced by the pod: a projected token volume, a CSI driver it
    /// reaches, or `nodeRestriction.extraAudiences`.
    async fn check_references(&self, pod: &PodInfo, pod_ref: &str, violations: &mut Vec<Violation>) {
        let node = self.node;
        let mut reached: Option<Reached> = None;
        for (field, audience) in &self.request.audiences {
            if self.references_directly(pod, audience) {
                continue;
            }
            let reached = match &reached {
                Some(reached) => reached,
                None => reached.insert(self.csi_audiences(pod).await),
            };
            if reached.audiences.contains(*audience) {
                continue;
            }
            let message = match &reached.unknown {
                Some(err) => format!(
                    "could not tell whether pod {pod_ref} references audience {}: {err}",
                    describe_audience(audience)
                ),
                None => {
                    let missing = if reached.missing.is_empty() {
                        String::new()
                    } else {
                        format!("; not found: {}", reached.missing.join(", "))
                    };
                    format!(
                        "audience {} is not referenced by pod {pod_ref} (no projected token volume or CSI driver of the pod asks for it{missing}), so node {node} may not request it",
                        describe_audience(audience)
                    )
                }
            };
            violations.push(Violation::new(rules::TOKEN_REQUEST_KUBELETS, field.as_str(), message));
        }
    }

    /// Referenced by a projected token volume, or granted by `nodeRestriction.extraAudiences`.
    fn references_directly(&self, pod: &PodInfo, audience: &str) -> bool {
        pod.token_audiences.iter().any(|a| self.policy.normalize(Some(a.as_ref())) == audience)
            || self.policy.node_restriction().is_extra_audience(audience, self.request.namespace)
    }

    /// The audiences of every CSI driver the pod reaches: inline (or an in-tree type CSI
    /// migration serves), through a PVC's PV, or through the PVC of a generic ephemeral volume.
    /// Objects that do not exist are named, so a denial can say what is missing.
    async fn csi_audiences(&self, pod: &PodInfo) -> Reached {
        let namespace = self.request.namespace;
        let mut reached = Reached::default();
        let mut drivers: BTreeSet<String> = pod.csi_drivers.iter().map(|d| d.to_string()).collect();
        for claim_name in &pod.claim_names {
            let claim_ref = format!("PVC {namespace}/{claim_name}");
            let claim = match self.cluster.persistent_volume_claim(namespace, claim_name).await {
                Ok(Some(claim)) => claim,
                Ok(None) => {
                    reached.missing.push(claim_ref);
                    continue;
                }
                Err(err) => return Reached::unknown(format!("{claim_ref}: {err}")),
            };
            let Some(volume_name) = claim.volume_name.as_deref() else {
                reached.missing.push(format!("the PV of {claim_ref}, which is not bound yet"));
                continue;
            };
            match self.cluster.persistent_volume(volume_name).await {
                Ok(Some(volume)) => drivers.extend(volume.csi_driver.clone()),
                Ok(None) => reached.missing.push(format!("PV {volume_name} (of {claim_ref})")),
                Err(err) => return Reached::unknown(format!("PV {volume_name}: {err}")),
            }
        }
        for driver in drivers {
            match self.cluster.csi_driver(&driver).await {
                Ok(Some(info)) => reached.audiences.extend(
                    info.token_requests.iter().map(|(audience, _)| self.policy.normalize(Some(audience)).to_string()),
                ),
                Ok(None) => reached.missing.push(format!("CSIDriver {driver}")),
                Err(err) => return Reached::unknown(format!("CSIDriver {driver}: {err}")),
            }
        }
        reached
    }
}

/// What a pod reaches through CSI drivers.
#[derive(Debug, Default)]
struct Reached {
    audiences: BTreeSet<String>,
    /// Objects on the way that do not exist.
    missing: Vec<String>,
    /// Set when a lookup failed, so nothing can be concluded.
    unknown: Option<String>,
}

impl Reached {
    fn unknown(error: String) -> Self {
        Reached { unknown: Some(error), ..Default::default() }
    }
}

/// Why a node may not request a token bound as `bound`, if it may not: upstream
/// `admitServiceAccount` requires a binding to a `v1` Pod with a uid.
fn bound_pod_problem(bound: Option<&BoundObjectRef>, node: &str) -> Option<Violation> {
    let Some(bound) = bound else {
        return Some(Violation::new(
            rules::TOKEN_REQUEST_KUBELETS,
            "spec.boundObjectRef",
            format!("node {node} may only request tokens bound to a pod it runs, not to nothing"),
        ));
    };
    let kind = bound.kind.as_deref().unwrap_or_default();
    let problem = if kind != "Pod" {
        let kind = if kind.is_empty() { "an object without a kind".to_string() } else { format!("a {kind}") };
        (
            "spec.boundObjectRef.kind",
            format!("node {node} may only request tokens bound to a pod it runs, not to {kind}"),
        )
    } else if bound.api_version.as_deref() != Some("v1") {
        (
            "spec.boundObjectRef.apiVersion",
            format!(
                "node {node} may only request tokens bound to a pod of apiVersion v1, not {:?}",
                bound.api_version.as_deref().unwrap_or_default()
            ),
        )
    } else if bound.name.as_deref().unwrap_or_default().is_empty() {
        ("spec.boundObjectRef.name", format!("node {node} requested a token bound to a pod without a name"))
    } else if bound.uid.as_deref().unwrap_or_default().is_empty() {
        (
            "spec.boundObjectRef.uid",
            format!("node {node} requested a token bound to a pod without a uid; the uid ties the token to one pod"),
        )
    } else {
        return None;
    };
    Some(Violation::new(rules::TOKEN_REQUEST_KUBELETS, problem.0, problem.1))
}
