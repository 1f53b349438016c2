//! The CEL `matchConditions`: policy in, expressions out. A webhook is called only when every
//! condition of it is true, so each condition is true for every request tokengate could deny or
//! patch, and false only for requests it allows unchanged; its name says what it skips.
//!
//! Every expression is total over what the API server passes: optional fields are tested with
//! `has()` first, and list fields that the API serialises as `null` when empty (a projected
//! volume's `sources`, a TokenRequest's `audiences` and `boundObjectRef`) are compared with
//! `null` before use. An expression that fails to evaluate counts as a webhook failure
//! (`failurePolicy`), so an error would refuse the request instead of skipping it. Upstream:
//! `ForInput` in `k8s.io/apiserver/pkg/admission/plugin/cel/filter.go` turns the object into
//! unstructured JSON with `runtime.DefaultUnstructuredConverter.ToUnstructured`, which keeps a
//! `nil` slice without `omitempty` as `null`; and `Match` in
//! `k8s.io/apiserver/pkg/admission/plugin/webhook/matchconditions/matcher.go` applies the
//! failure policy to evaluation errors.
//!
//! CEL functions used: `has`, `in`, `exists`, `exists_one`, `all`, `size`, `startsWith` and
//! `matches` (RE2): all in CEL's standard definitions, which matchConditions have since they
//! exist (Kubernetes 1.27 alpha, 1.28 beta, 1.30 GA).

use serde::{Deserialize, Serialize};

use crate::k8s::names::{MIRROR_ANNOTATION, SERVICE_ACCOUNT_NAME_ANNOTATION, SERVICE_ACCOUNT_TOKEN_TYPE};
use crate::k8s::tokens::{
    AUTOMOUNT_EXPIRATION_SECONDS, AUTOMOUNT_TOKEN_PATH, AUTOMOUNT_VOLUME_PREFIX, NODES_GROUP, NODE_USER_PREFIX,
};
use crate::k8s::volumes::IN_TREE_VOLUME_DRIVERS;
use crate::policy::globs::{Globs, SelectorTerm};
use crate::policy::{Injection, Policy};

/// The group whose members bypass every webhook (an emergency tool for cluster admins).
pub const BREAKGLASS_GROUP: &str = "tokengate:breakglass";

/// One entry of a webhook's `matchConditions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchCondition {
    pub name: String,
    pub expression: String,
}

impl MatchCondition {
    fn new(name: &str, expression: String) -> Self {
        MatchCondition { name: name.to_string(), expression }
    }
}

/// The conditions' names.
pub mod names {
    pub const BREAKGLASS: &str = "skip-breakglass";
    pub const EXEMPT_USERS: &str = "skip-exempt-users";
    pub const EXEMPT_GROUPS: &str = "skip-exempt-groups";
    pub const EXEMPT_NAMESPACES: &str = "skip-exempt-namespaces";
    pub const EXEMPT_POD_NAMESPACES: &str = "skip-exempt-pod-namespaces";
    pub const MIRROR_PODS: &str = "skip-mirror-pods";
    pub const NO_INJECTION_MATCHES: &str = "skip-pods-no-injection-matches";
    pub const AUTOMOUNT_ONLY_PODS: &str = "skip-automount-only-pods-no-injection-matches";
    pub const KUBELET_AUTOMOUNT_TOKENS: &str = "skip-kubelet-automount-tokens";
    pub const NATIVE_PODS: &str = "skip-pods-the-native-policy-decides";
    pub const NATIVE_TOKEN_REQUESTS: &str = "skip-token-requests-the-native-policy-decides";
    pub const NATIVE_INJECTIONS: &str = "skip-pods-the-native-injections-cover";
    pub const DRIVERS_WITHOUT_TOKENS: &str = "skip-csidrivers-without-token-requests";
    pub const OTHER_SECRET_TYPES: &str = "skip-other-secret-types";
    pub const SECRET_UPDATES_KEEPING_THE_ACCOUNT: &str = "skip-secret-updates-keeping-the-service-account";
    pub const WORKLOADS_BEING_DELETED: &str = "skip-workloads-being-deleted";
    pub const WORKLOAD_UPDATES_KEEPING_THE_TEMPLATE: &str = "skip-workload-updates-keeping-the-pod-template";
}

/// The conditions of every webhook: the break-glass group and the policy's exemptions (the
/// namespace exemptions only where requests have a namespace).
pub fn common(policy: &Policy, namespaced: bool) -> Vec<MatchCondition> {
    let mut conditions = vec![MatchCondition::new(
        names::BREAKGLASS,
        format!("!has(request.userInfo.groups) || !({} in request.userInfo.groups)", cel_string(BREAKGLASS_GROUP)),
    )];
    let users = policy.exempt_users();
    if !users.is_empty() {
        conditions.push(MatchCondition::new(
            names::EXEMPT_USERS,
            format!("!has(request.userInfo.username) || !(request.userInfo.username in {})", cel_list(&users)),
        ));
    }
    let groups = policy.exempt_groups();
    if !groups.is_empty() {
        conditions.push(MatchCondition::new(
            names::EXEMPT_GROUPS,
            format!("!has(request.userInfo.groups) || !request.userInfo.groups.exists(g, g in {})", cel_list(&groups)),
        ));
    }
    if let Some(regex) = policy.exempt_namespaces().and_then(Globs::re2).filter(|_| namespaced) {
        conditions.push(MatchCondition::new(
            names::EXEMPT_NAMESPACES,
            format!("!has(request.namespace) || !request.namespace.matches({})", cel_string(&regex)),
        ));
    }
    conditions
}

/// Pods and workload templates: not in `exemptions.podNamespaces` (none when it is empty).
pub fn not_exempt_pod_namespace(policy: &Policy) -> Option<MatchCondition> {
    let regex = policy.exempt_pod_namespaces().re2()?;
    Some(MatchCondition::new(
        names::EXEMPT_POD_NAMESPACES,
        format!("!has(request.namespace) || !request.namespace.matches({})", cel_string(&regex)),
    ))
}

/// Mirror pods (of static pods) are never mutated.
pub fn not_mirror_pod() -> MatchCondition {
    MatchCondition::new(
        names::MIRROR_PODS,
        format!(
            "!has(object.metadata.annotations) || !({} in object.metadata.annotations)",
            cel_string(MIRROR_ANNOTATION)
        ),
    )
}

/// A CEL condition known to be always true or always false, or an expression to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cel {
    Always,
    Never,
    Expression(String),
}

impl Cel {
    /// The expression text.
    fn render(self) -> String {
        match self {
            Cel::Always => "true".to_string(),
            Cel::Never => "false".to_string(),
            Cel::Expression(expression) => expression,
        }
    }

    /// Whether any of `terms` holds.
    fn any(terms: impl IntoIterator<Item = Cel>) -> Cel {
        let mut expressions = Vec::new();
        for term in terms {
            match term {
                Cel::Always => return Cel::Always,
                Cel::Never => {}
                Cel::Expression(expression) => expressions.push(expression),
            }
        }
        match expressions.len() {
            0 => Cel::Never,
            1 => Cel::Expression(expressions.remove(0)),
            _ => Cel::Expression(expressions.iter().map(|t| format!("({t})")).collect::<Vec<_>>().join("\n|| ")),
        }
    }
}

/// Pod mutation: only pods some injection may match (namespace globs and pod selector; a
/// service-account annotation is invisible to CEL and counts as a match).
pub fn pod_injection_may_match(policy: &Policy) -> MatchCondition {
    MatchCondition::new(names::NO_INJECTION_MATCHES, any_injection_may_match(policy).render())
}

/// Pod validation: pods with a token or CSI volume to check, or that some injection may match.
pub fn pod_needs_checks(policy: &Policy) -> MatchCondition {
    MatchCondition::new(names::AUTOMOUNT_ONLY_PODS, pod_volumes_or_injections(policy, true))
}

/// Pod validation beside the native policies, which judge projected tokens: pods with a CSI
/// volume (inline, or an in-tree type CSI migration serves), or that some injection may match.
pub fn pod_needs_lookups(policy: &Policy) -> MatchCondition {
    MatchCondition::new(names::NATIVE_PODS, pod_volumes_or_injections(policy, false))
}

/// Pod validation beside the native policies and the native injections: pods with a CSI volume,
/// or for which `injections` (what the native injections leave to tokengate) holds.
pub fn pod_needs_lookups_or(injections: &str) -> MatchCondition {
    MatchCondition::new(names::NATIVE_PODS, format!("({})\n|| ({injections})", pod_volumes(false)))
}

/// Whether the pod has a CSI volume (and, with `tokens`, a projected token other than the
/// automount volume), or some injection may match it.
fn pod_volumes_or_injections(policy: &Policy, tokens: bool) -> String {
    let volumes = pod_volumes(tokens);
    match any_injection_may_match(policy) {
        Cel::Never => volumes,
        Cel::Always => "true".to_string(),
        Cel::Expression(injections) => format!("({volumes})\n|| ({injections})"),
    }
}

/// Whether the pod has a CSI volume (inline, or an in-tree type CSI migration serves) and, with
/// `tokens`, a projected token other than the automount volume.
fn pod_volumes(tokens: bool) -> String {
    let volume = |v: &str| {
        let mut kinds: Vec<String> = vec![format!("has({v}.csi)")];
        kinds.extend(IN_TREE_VOLUME_DRIVERS.iter().map(|(field, _)| format!("has({v}.{field})")));
        let token = if tokens { format!("\n  || ({})", token_other_than_automount(v)) } else { String::new() };
        format!("{}{token}", kinds.join(" || "))
    };
    format!("has(object.spec.volumes) && object.spec.volumes.exists(v,\n  {})", volume("v"))
}

/// Whether volume `v` has a projected token source and is not the automount volume.
fn token_other_than_automount(v: &str) -> String {
    let sources = format!("{v}.projected.sources");
    format!(
        "has({v}.projected) && has({sources}) && {sources} != null\n    && {sources}.exists(s, has(s.serviceAccountToken))\n    && !({})",
        automount_volume(v)
    )
}

/// Whether volume `v`, known to have projected sources, is the automount volume: the name prefix
/// and exactly one token source, without audience, at path `token`, for 3607 s (the reading of
/// `k8s::tokens::has_automount_shape`).
pub fn automount_volume(v: &str) -> String {
    let sources = format!("{v}.projected.sources");
    let token = "s.serviceAccountToken";
    format!(
        "{v}.name.startsWith({prefix})\n      && {sources}.exists_one(s, has({token}))\n      && {sources}.all(s, !has({token})\n        || ((!has({token}.audience) || {token}.audience == '')\n          && {token}.path == {path}\n          && has({token}.expirationSeconds) && {token}.expirationSeconds == {seconds}))",
        prefix = cel_string(AUTOMOUNT_VOLUME_PREFIX),
        path = cel_string(AUTOMOUNT_TOKEN_PATH),
        seconds = AUTOMOUNT_EXPIRATION_SECONDS,
    )
}

/// Whether some injection may match the pod: one disjunct per injection.
fn any_injection_may_match(policy: &Policy) -> Cel {
    Cel::any(policy.injections().iter().map(injection_may_match))
}

/// Whether one of `injections` may match the pod (a service-account annotation counts as a
/// match): `true`, `false` or an expression.
pub fn any_of_may_match<'a>(injections: impl IntoIterator<Item = &'a Injection>) -> String {
    Cel::any(injections.into_iter().map(injection_may_match)).render()
}

/// Whether `injection` may match the pod by its namespaces and pod selector (exactly, for one
/// without a service-account annotation): `true`, `false` or an expression.
pub fn injection_matches(injection: &Injection) -> String {
    injection_may_match(injection).render()
}

fn injection_may_match(injection: &Injection) -> Cel {
    let mut parts = Vec::new();
    if !injection.namespaces.matches_all() {
        let Some(regex) = injection.namespaces.re2() else { return Cel::Never };
        parts.push(format!("has(request.namespace) && request.namespace.matches({})", cel_string(&regex)));
    }
    parts.extend(injection.pod_selector.terms().into_iter().map(selector_term));
    if parts.is_empty() {
        Cel::Always
    } else {
        Cel::Expression(parts.join(" && "))
    }
}

/// One label-selector requirement on the pod's labels.
fn selector_term(term: SelectorTerm<'_>) -> String {
    const LABELS: &str = "object.metadata.labels";
    let present = |key: &str| format!("has({LABELS}) && {} in {LABELS}", cel_string(key));
    let value = |key: &str| format!("{LABELS}[{}]", cel_string(key));
    let strings = |values: &[String]| cel_list(&values.iter().map(String::as_str).collect::<Vec<_>>());
    match term {
        SelectorTerm::Equals(key, wanted) => format!("{} && {} == {}", present(key), value(key), cel_string(wanted)),
        SelectorTerm::In(key, values) => format!("{} && {} in {}", present(key), value(key), strings(values)),
        SelectorTerm::NotIn(key, values) => {
            format!("(!({}) || !({} in {}))", present(key), value(key), strings(values))
        }
        SelectorTerm::Exists(key) => present(key),
        SelectorTerm::DoesNotExist(key) => format!("!({})", present(key)),
    }
}

/// TokenRequests: everything but a kubelet's request for the automount token: a node user
/// (`system:node:<name>` in `system:nodes`), 3607 s, bound to a v1 Pod with a uid, and every
/// audience an API server audience (absent or empty audiences are the API server audience).
/// NodeRestriction has already tied the node to the pod and the pod to the service account.
pub fn not_kubelet_automount_token(api_server_audiences: &[String]) -> MatchCondition {
    let mut audiences: Vec<&str> = vec![""];
    audiences.extend(api_server_audiences.iter().map(String::as_str).filter(|a| !a.is_empty()));
    audiences.sort_unstable();
    audiences.dedup();
    let user = "request.userInfo";
    let bound = "object.spec.boundObjectRef";
    let automount = [
        format!(
            "has({user}.username) && {user}.username.startsWith({prefix}) && size({user}.username) > {}",
            NODE_USER_PREFIX.len(),
            prefix = cel_string(NODE_USER_PREFIX)
        ),
        format!("has({user}.groups) && {} in {user}.groups", cel_string(NODES_GROUP)),
        format!(
            "has(object.spec.expirationSeconds) && object.spec.expirationSeconds == {AUTOMOUNT_EXPIRATION_SECONDS}"
        ),
        format!("has({bound}) && {bound} != null && has({bound}.kind) && {bound}.kind == 'Pod'"),
        format!("has({bound}.apiVersion) && {bound}.apiVersion == 'v1' && has({bound}.uid) && {bound}.uid != ''"),
        format!(
            "(!has(object.spec.audiences) || object.spec.audiences == null || object.spec.audiences.all(a, a in {}))",
            cel_list(&audiences)
        ),
    ];
    MatchCondition::new(names::KUBELET_AUTOMOUNT_TOKENS, format!("!(\n  {}\n)", automount.join("\n  && ")))
}

/// CSIDrivers: only drivers that declare `tokenRequests` (every check is about them).
pub fn csi_driver_has_token_requests() -> MatchCondition {
    MatchCondition::new(
        names::DRIVERS_WITHOUT_TOKENS,
        "has(object.spec.tokenRequests) && object.spec.tokenRequests != null && size(object.spec.tokenRequests) > 0"
            .to_string(),
    )
}

/// Secrets: only `kubernetes.io/service-account-token` (its `type` is immutable), and on UPDATE
/// only when the service-account annotation appears, disappears or changes.
pub fn service_account_token_secret() -> Vec<MatchCondition> {
    let key = cel_string(SERVICE_ACCOUNT_NAME_ANNOTATION);
    let has_key = |o: &str| format!("(has({o}.metadata.annotations) && {key} in {o}.metadata.annotations)");
    vec![
        MatchCondition::new(
            names::OTHER_SECRET_TYPES,
            format!("has(object.type) && object.type == {}", cel_string(SERVICE_ACCOUNT_TOKEN_TYPE)),
        ),
        MatchCondition::new(
            names::SECRET_UPDATES_KEEPING_THE_ACCOUNT,
            format!(
                "request.operation != 'UPDATE'\n|| {new} != {old}\n|| ({new} && object.metadata.annotations[{key}] != oldObject.metadata.annotations[{key}])",
                new = has_key("object"),
                old = has_key("oldObject"),
            ),
        ),
    ]
}

/// Workloads: not an object being deleted (its template is not judged), and on UPDATE only when
/// the pod template changed (controllers scale and garbage-collect workloads by UPDATE without
/// touching it). The template sits at `spec.jobTemplate.spec.template` in a CronJob, `template`
/// in a PodTemplate and `spec.template` elsewhere.
pub fn workload_template_changes() -> Vec<MatchCondition> {
    let changed = |path: &str| {
        // `has()` on every step: each may be absent.
        let has = |o: &str| {
            let segments: Vec<&str> = path.split('.').collect();
            let steps: Vec<String> =
                (1..=segments.len()).map(|n| format!("has({o}.{})", segments[..n].join("."))).collect();
            steps.join(" && ")
        };
        format!(
            "({new}) != ({old}) || (({new}) && object.{path} != oldObject.{path})",
            new = has("object"),
            old = has("oldObject"),
        )
    };
    vec![
        MatchCondition::new(
            names::WORKLOADS_BEING_DELETED,
            "!has(object.metadata.deletionTimestamp)".to_string(),
        ),
        MatchCondition::new(
            names::WORKLOAD_UPDATES_KEEPING_THE_TEMPLATE,
            format!(
                "request.operation != 'UPDATE'\n|| (request.kind.kind == 'CronJob'\n  ? {}\n  : request.kind.kind == 'PodTemplate'\n  ? {}\n  : {})",
                changed("spec.jobTemplate.spec.template"),
                changed("template"),
                changed("spec.template"),
            ),
        ),
    ]
}

/// A CEL string literal: single-quoted, with `\` and `'` escaped.
pub fn cel_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A CEL list of string literals.
pub fn cel_list(items: &[&str]) -> String {
    format!("[{}]", items.iter().map(|s| cel_string(s)).collect::<Vec<_>>().join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cel_strings_escape_quotes_and_backslashes() {
        assert_eq!(cel_string("a'b\\c"), "'a\\'b\\\\c'");
    }
}
