//! `tokengate webhooks --native`: the policy's lookup-free rules as ValidatingAdmissionPolicies,
//! and its lookup-free injections as a MutatingAdmissionPolicy, that the API server evaluates
//! in-process, and which rule stays in the webhook, and why. Pure.
//!
//! Built from the same compiled policy, glob reading and CEL helpers as the webhooks' match
//! conditions; the exemptions are the webhooks' own conditions. Upstream:
//! `k8s.io/apiserver/pkg/admission/plugin/policy/validating` (`validator.go` `Validate`
//! evaluates `validations` with the per-expression limit `PerCallLimit` and one
//! `RuntimeCELCostBudget` per policy and binding, both in `k8s.io/apiserver/pkg/apis/cel/config.go`).

pub mod cost;
pub mod expressions;
pub mod injections;
pub mod narrow;
pub mod objects;
pub mod render;
pub mod split;

use crate::k8s::names::SERVICE_ACCOUNT_NAME_ANNOTATION;
use crate::k8s::tokens::{NODES_GROUP, NODE_USER_PREFIX};
use crate::policy::Policy;
use crate::review::{self, Subject};
use crate::webhooks::conditions::{self, cel_list, cel_string, MatchCondition};
use crate::webhooks::{FailurePolicy, Rule};
use expressions as cel;
use objects::{MatchResources, PolicySpec, ValidatingAdmissionPolicy, Validation, Variable};
use split::{rules, Placement};

/// One native policy: what it judges, and the policy and binding objects.
#[derive(Debug, Clone, PartialEq)]
pub struct NativePolicy {
    pub subject: Subject,
    pub policy: ValidatingAdmissionPolicy,
    pub binding: objects::ValidatingAdmissionPolicyBinding,
}

/// The native injections: the MutatingAdmissionPolicy adding them and its binding.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeMutation {
    pub policy: objects::MutatingAdmissionPolicy,
    pub binding: objects::MutatingAdmissionPolicyBinding,
}

/// The native policies of one tokengate policy, and where every rule and injection went.
#[derive(Debug, Clone, PartialEq)]
pub struct Native {
    pub policies: Vec<NativePolicy>,
    /// The MutatingAdmissionPolicies (at most one: the injections that need no lookup).
    pub mutating: Vec<NativeMutation>,
    pub split: Vec<Placement>,
    /// Every injection, and why the webhook adds it when the MutatingAdmissionPolicy does not.
    pub injections: Vec<injections::InjectionPlacement>,
}

/// Why every rule stays in the webhook on an API server without ValidatingAdmissionPolicy v1.
pub const NOT_SERVED: &str = "the API server does not serve ValidatingAdmissionPolicy v1 (Kubernetes 1.30+)";

/// Why the injections stay in the webhook on an API server without MutatingAdmissionPolicy v1.
pub const MUTATING_NOT_SERVED: &str = "the API server does not serve MutatingAdmissionPolicy v1 (Kubernetes 1.36+)";

/// Why the native-injection rule is in the webhook when no injection can be native.
pub const NO_NATIVE_INJECTION: &str =
    "no injection of the policy is matched by namespaces and pod labels alone with fixed values (see the injections below)";

/// Which admission-policy APIs the API server serves (`admissionregistration.k8s.io/v1`):
/// ValidatingAdmissionPolicy from Kubernetes 1.30, MutatingAdmissionPolicy from 1.36.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedApis {
    pub validating: bool,
    pub mutating: bool,
}

impl ServedApis {
    /// Both kinds: what a current API server serves.
    pub const ALL: ServedApis = ServedApis { validating: true, mutating: true };

    /// What Kubernetes `major.minor` serves; `None` below 1.30, which serves neither.
    pub fn of_version(major: u32, minor: u32) -> Option<ServedApis> {
        let at_least = |wanted: u32| major > 1 || (major == 1 && minor >= wanted);
        at_least(30).then(|| ServedApis { validating: true, mutating: at_least(36) })
    }
}

impl Native {
    /// Every object to apply, as JSON with its apiVersion and kind: each policy followed by its
    /// binding, the ValidatingAdmissionPolicies first, then the MutatingAdmissionPolicies.
    pub fn objects(&self) -> Vec<serde_json::Value> {
        let validating =
            self.policies.iter().flat_map(|p| [serde_json::to_value(&p.policy), serde_json::to_value(&p.binding)]);
        let mutating =
            self.mutating.iter().flat_map(|m| [serde_json::to_value(&m.policy), serde_json::to_value(&m.binding)]);
        validating.chain(mutating).map(|object| object.expect("the native objects serialise to JSON")).collect()
    }
}

/// The name of the matchCondition that leaves kubelets' TokenRequests to the webhook.
pub const KUBELETS_CONDITION: &str = "skip-kubelets";

/// The native policies for `policy`, named `<name>-<subject>`; a subject whose CEL is over the
/// API server's cost limits is left out, its rules placed in the webhook.
pub fn native(policy: &Policy, name: &str) -> Native {
    native_for(policy, name, ServedApis::ALL)
}

/// The native policies for `policy` that an API server serving `served` accepts; what it does
/// not serve stays in the webhook.
pub fn native_for(policy: &Policy, name: &str, served: ServedApis) -> Native {
    let injection_placements = injections::placements(policy);
    if !served.validating {
        return Native {
            policies: Vec::new(),
            mutating: Vec::new(),
            split: split::split(|_, _| Some(NOT_SERVED.to_string())),
            injections: injection_placements,
        };
    }
    let candidates = [
        (Subject::TokenRequest, "tokenrequests", token_requests(policy)),
        (Subject::Pod, "pods", pods(policy)),
        (Subject::CsiDriver, "csidrivers", csi_drivers(policy)),
        (Subject::Secret, "legacy-token-secrets", legacy_tokens(policy)),
    ];
    let mut policies = Vec::new();
    let mut over_budget = Vec::new();
    for (subject, suffix, spec) in candidates {
        if let Some(why) = cost::over_budget(&spec) {
            over_budget.push((subject, why));
            continue;
        }
        let object = ValidatingAdmissionPolicy::new(&format!("{name}-{suffix}"), spec);
        let binding = object.binding(policy.mode());
        policies.push(NativePolicy { subject, policy: object, binding });
    }
    let (mutating, injections_why) = if served.mutating {
        let (native, webhook) = injections::partition(policy);
        let built = injections::policy(policy, &format!("{name}-pod-injections"), &native, &webhook)
            .and_then(|policy| cost::mutating_over_budget(&policy.spec).map_or(Ok(policy), Err));
        match built {
            Ok(policy) => (vec![NativeMutation { binding: policy.binding(), policy }], None),
            Err(why) => (Vec::new(), Some(why)),
        }
    } else {
        (Vec::new(), Some(MUTATING_NOT_SERVED.to_string()))
    };
    let split = split::split(|rule, subject| {
        if rule == split::rules::POD_NATIVE_INJECTIONS {
            return injections_why.clone();
        }
        over_budget.iter().find(|(s, _)| *s == subject).map(|(_, why)| why.clone())
    });
    Native { policies, mutating, split, injections: injection_placements }
}

/// Whether `name` can prefix the objects' names: a DNS subdomain, as for the webhook
/// configurations.
pub fn check_name(name: &str) -> Result<(), super::OptionsError> {
    if super::is_dns_subdomain(name) {
        Ok(())
    } else {
        Err(super::OptionsError::Name(name.to_string()))
    }
}

/// The spec every native policy shares: `Fail` on an evaluation error (as the webhooks), the
/// rules of `subject` from `review::governed_operations`, the webhooks' exemption conditions.
fn spec(
    policy: &Policy,
    subject: Subject,
    extra: Vec<MatchCondition>,
    variables: Vec<Variable>,
    validations: Vec<Validation>,
) -> PolicySpec {
    let namespaced = subject.resource().is_some_and(|r| r.namespaced);
    let mut match_conditions = conditions::common(policy, namespaced);
    match_conditions.extend(extra);
    PolicySpec {
        failure_policy: FailurePolicy::Fail,
        match_constraints: MatchResources {
            resource_rules: Rule::for_subjects(review::Webhook::Validate, &[subject]),
            match_policy: "Equivalent".to_string(),
        },
        match_conditions,
        variables,
        validations,
    }
}

/// Whether the requester is a kubelet as decisions recognise one (`UserInfo::node_name`):
/// `system:node:<name>` in `system:nodes`.
pub fn kubelet() -> String {
    format!(
        "has(request.userInfo.username) && request.userInfo.username.startsWith({})\n  && has(request.userInfo.groups) && {} in request.userInfo.groups",
        cel_string(NODE_USER_PREFIX),
        cel_string(NODES_GROUP)
    )
}

/// TokenRequests of users and controllers: every audience allowed for `request.namespace` /
/// `request.name`, within the lifetime bounds. Kubelets' requests stay in the webhook.
fn token_requests(policy: &Policy) -> PolicySpec {
    let not_kubelet = MatchCondition { name: KUBELETS_CONDITION.to_string(), expression: format!("!({})", kubelet()) };
    let effective = cel::effective_seconds(
        policy,
        "variables.boundToPod && variables.audiences.all(a, a == '')",
        "variables.requested",
    );
    let variables = vec![
        Variable::new("audiences", cel::token_request_audiences(policy)),
        Variable::new("grants", cel::grants(policy, "request.namespace", "request.name")),
        Variable::new("requested", cel::requested_seconds("object.spec")),
        Variable::new("boundToPod", cel::token_request_bound_to_pod()),
        Variable::new("effective", effective),
    ];
    let who = " + ' for service account ' + request.namespace + '/' + request.name";
    let validations = vec![
        Validation::new(
            rules::TOKEN_REQUEST_AUDIENCES,
            format!("variables.audiences.all(a, {})", cel::audience_passes(policy, "a", "variables.effective")),
            "spec.audiences: an audience is not allowed for this service account",
            format!(
                "'spec.audiences: audience \"' + variables.audiences.filter(a, !{}).join('\", \"') + '\" is not allowed'{who} + ' (allowed there: ' + {} + ')'",
                cel::granted("a"),
                cel::allowed_there()
            ),
        ),
        Validation::new(
            rules::TOKEN_REQUEST_LIFETIMES,
            format!("variables.audiences.all(a, {})", cel::within_grant(policy, "a", "variables.effective")),
            "spec.expirationSeconds: the token's lifetime is outside the bounds for this service account",
            lifetime_message(policy, "variables.audiences", "variables.requested", "variables.effective", who),
        ),
    ];
    spec(policy, Subject::TokenRequest, vec![not_kubelet], variables, validations)
}

/// The message of a lifetime outside the bounds: asked, effective, and what is allowed.
fn lifetime_message(policy: &Policy, audiences: &str, requested: &str, effective: &str, who: &str) -> String {
    format!(
        "'spec.expirationSeconds: expirationSeconds ' + string({requested}) + ({effective} != {requested} ? ' is extended by the API server to ' + string({effective}) + ' s (ask for any other lifetime than 3607 s, or set spec.expiration.extendedSeconds to 3607 if the extension is off),' : ' is') + ' outside {min}..max seconds'{who} + ' (max per audience: ' + {audiences}.filter(a, {granted}).map(a, a + ': ' + {maxima}).join(', ') + ')'",
        min = policy.min_seconds(),
        granted = cel::granted("a"),
        maxima = cel::maxima("a"),
    )
}

/// Pod CREATE: every projected `serviceAccountToken` but the automount volume's, allowed for the
/// pod's namespace and service account within the lifetime bounds. CSI volumes and injections
/// stay in the webhook.
fn pods(policy: &Policy) -> PolicySpec {
    let token = "s.serviceAccountToken";
    let audience = cel::normalized_audience(policy, token);
    let requested = cel::requested_seconds(token);
    let effective = cel::effective_seconds(policy, &format!("{audience} == ''"), &requested);
    let variables = vec![
        Variable::new("serviceAccount", cel::pod_service_account()),
        Variable::new("grants", cel::grants(policy, "request.namespace", "variables.serviceAccount")),
        Variable::new(
            "deniedAudiences",
            cel::pod_volumes_failing(&format!("!{}", cel::audience_passes(policy, &audience, &effective))),
        ),
        Variable::new(
            "deniedLifetimes",
            cel::pod_volumes_failing(&format!("!{}", cel::within_grant(policy, &audience, &effective))),
        ),
    ];
    let who = " + ' for service account ' + request.namespace + '/' + variables.serviceAccount";
    let validations = vec![
        Validation::new(
            rules::POD_TOKEN_AUDIENCES,
            "size(variables.deniedAudiences) == 0".to_string(),
            "spec.volumes: a projected serviceAccountToken asks for an audience not allowed for the pod's service account",
            format!(
                "'spec.volumes[' + variables.deniedAudiences.join(', ') + '].projected.sources: a serviceAccountToken audience is not allowed'{who} + ' (allowed there: ' + {} + ')'",
                cel::allowed_there()
            ),
        ),
        Validation::new(
            rules::POD_TOKEN_LIFETIMES,
            "size(variables.deniedLifetimes) == 0".to_string(),
            "spec.volumes: a projected serviceAccountToken's lifetime is outside the bounds for the pod's service account",
            format!(
                "'spec.volumes[' + variables.deniedLifetimes.join(', ') + '].projected.sources: a serviceAccountToken lifetime (3607 s for the API server audience counts as {} s) is outside {}..max seconds'{who} + ' (max per audience: ' + variables.grants.filter(a, {}).map(a, a + ': ' + {}).join(', ') + ')'",
                policy.extended_seconds(),
                policy.min_seconds(),
                cel::granted("a"),
                cel::maxima("a")
            ),
        ),
    ];
    let exempt_pods = conditions::not_exempt_pod_namespace(policy).into_iter().collect();
    spec(policy, Subject::Pod, exempt_pods, variables, validations)
}

/// Secrets of type `kubernetes.io/service-account-token` (the webhooks' own conditions select
/// them, and their UPDATEs that change the service account): the account must be listed in
/// `legacyTokens` for the namespace.
fn legacy_tokens(policy: &Policy) -> PolicySpec {
    let key = cel_string(SERVICE_ACCOUNT_NAME_ANNOTATION);
    let account = format!("object.metadata.annotations[{key}]");
    let expression = format!(
        "!has(object.metadata.annotations) || !({key} in object.metadata.annotations)\n|| {}",
        cel::legacy_token_allowed(policy, "request.namespace", &account)
    );
    let validations = vec![Validation::new(
        rules::LEGACY_TOKENS,
        expression,
        "a Secret of type kubernetes.io/service-account-token receives a token that never expires, and spec.legacyTokens does not list its service account",
        format!(
            "'metadata.annotations[\"{SERVICE_ACCOUNT_NAME_ANNOTATION}\"]: a Secret of type kubernetes.io/service-account-token receives a token for service account ' + request.namespace + '/' + {account} + ' that never expires, and spec.legacyTokens does not list it; use `kubectl create token` or a projected token volume instead, or ask a cluster admin to list it in spec.legacyTokens'"
        ),
    )];
    spec(policy, Subject::Secret, conditions::service_account_token_secret(), Vec::new(), validations)
}

/// CSIDriver CREATE/UPDATE with `tokenRequests` (the webhook's own condition): listed in
/// `csiDrivers`, its audiences and lifetimes, `requiresRepublish` and
/// `serviceAccountTokenInSecrets` as the entry requires.
fn csi_drivers(policy: &Policy) -> PolicySpec {
    let drivers = policy.csi_driver_rules();
    let names: Vec<&str> = drivers.iter().map(|(name, _)| *name).collect();
    let requiring = |pick: fn(&crate::policy::CsiDriverRule) -> bool| -> Vec<&str> {
        drivers.iter().filter(|(_, rule)| pick(rule)).map(|(name, _)| *name).collect()
    };
    let audiences: Vec<String> = drivers
        .iter()
        .map(|(name, rule)| {
            let mut allowed: Vec<&str> = rule.audiences.iter().map(String::as_str).collect();
            allowed.sort_unstable();
            format!("{}: {}", cel_string(name), cel_list(&allowed))
        })
        .collect();
    let variables = vec![
        Variable::new("listed", format!("object.metadata.name in {}", cel_list(&names))),
        Variable::new("driverAudiences", format!("{{{}}}", audiences.join(",\n  "))),
    ];
    let validations = csi_driver_validations(
        policy,
        &requiring(|rule| rule.require_republish),
        &requiring(|rule| rule.require_token_in_secrets),
    );
    spec(policy, Subject::CsiDriver, vec![conditions::csi_driver_has_token_requests()], variables, validations)
}

/// The CSIDriver validations; `republish` and `in_secrets` name the drivers whose entry requires
/// `requiresRepublish` and `serviceAccountTokenInSecrets`.
fn csi_driver_validations(policy: &Policy, republish: &[&str], in_secrets: &[&str]) -> Vec<Validation> {
    let token = "t";
    let audience = cel::normalized_audience(policy, token);
    let requested = cel::requested_seconds(token);
    let effective = cel::effective_seconds(policy, &format!("{audience} == ''"), &requested);
    let max = policy.max_seconds().min(crate::policy::API_MAX_EXPIRATION_SECONDS);
    let min = policy.min_seconds();
    let allowed_audience = format!("({audience} in variables.driverAudiences[object.metadata.name])");
    let driver = "'CSI driver \"' + object.metadata.name + '\"'";
    let must_be_true = |field: &str, drivers: &[&str], why: &str| {
        (
            format!(
                "!(object.metadata.name in {}) || (has(object.spec.{field}) && object.spec.{field} == true)",
                cel_list(drivers)
            ),
            format!("'spec.{field}: must be true: ' + {driver} + ' declares tokenRequests, and {why}'"),
        )
    };
    let (republish, republish_message) =
        must_be_true("requiresRepublish", republish, "without republish its tokens expire under mounted volumes");
    let (secrets, secrets_message) = must_be_true(
        "serviceAccountTokenInSecrets",
        in_secrets,
        "the policy requires its tokens to travel in the NodePublishVolume secrets field rather than the volume context, which drivers have leaked into logs",
    );
    vec![
        Validation::new(
            rules::CSI_DRIVER_LISTED,
            "variables.listed".to_string(),
            "spec.tokenRequests: this CSI driver is not listed in the policy's csiDrivers, so it may not declare tokenRequests",
            format!("'spec.tokenRequests: ' + {driver} + ' is not listed in the policy\\'s csiDrivers, so it may not declare tokenRequests; ask a cluster admin to add it or remove tokenRequests'"),
        ),
        Validation::new(
            rules::CSI_DRIVER_AUDIENCES,
            format!("!variables.listed || object.spec.tokenRequests.all({token}, {allowed_audience})"),
            "spec.tokenRequests: an audience is not allowed for this CSI driver",
            format!("'spec.tokenRequests: audience \"' + object.spec.tokenRequests.filter({token}, !{allowed_audience}).map({token}, {audience}).join('\", \"') + '\" is not allowed for ' + {driver} + ' (allowed: \"' + variables.driverAudiences[object.metadata.name].join('\", \"') + '\")'"),
        ),
        Validation::new(
            rules::CSI_DRIVER_LIFETIMES,
            format!("!variables.listed || object.spec.tokenRequests.all({token}, {effective} >= {min} && {effective} <= {max})"),
            "spec.tokenRequests: a token's lifetime is outside the policy's bounds",
            format!("'spec.tokenRequests: expirationSeconds ' + object.spec.tokenRequests.filter({token}, !({effective} >= {min} && {effective} <= {max})).map({token}, string({requested})).join(', ') + ' (3607 s for the API server audience counts as {} s) outside {min}..{max} seconds for ' + {driver}", policy.extended_seconds()),
        ),
        Validation::new(rules::CSI_DRIVER_REPUBLISH, republish, "spec.requiresRepublish: must be true for this CSI driver", republish_message),
        Validation::new(rules::CSI_DRIVER_TOKEN_IN_SECRETS, secrets, "spec.serviceAccountTokenInSecrets: must be true for this CSI driver", secrets_message),
    ]
}
