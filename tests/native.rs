//! The native policies (`tokengate webhooks --native`), evaluated with a CEL interpreter (the
//! `cel` crate) as the API server evaluates a ValidatingAdmissionPolicy: `matchConstraints`,
//! then `matchConditions`, then `variables` in order, then every validation (and the
//! `messageExpression` of each that fails), against the decisions of `tokengate::review`.
//!
//! The property: for every generated policy and request that a native policy claims (its rules
//! cover it, its conditions hold), all validations are true exactly when `review` finds no
//! violation of the rules the native side claims, and the rules of the failing validations are
//! the rules of those violations (a denial names what `review` names); with the binding's action (Deny / Warn /
//! Audit from the mode) the request is allowed exactly when `review` allows it; nothing fails
//! to evaluate. A request a native policy skips is one `review` exempts, or one it leaves to
//! the webhook (a kubelet's TokenRequest), or the break-glass group's. And every rule is placed
//! once: native rules each have a validation, webhook rules none.

mod admission_cel;

use std::collections::{BTreeSet, HashMap};

use admission_cel::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use tokengate::cluster::ObjectStore;
use tokengate::k8s::api::{api_group, NAMED_GROUP_API_VERSION_RE2};
use tokengate::policy::Policy;
use tokengate::review::admission::AdmissionReviewIn;
use tokengate::review::{decide, Subject, Violation, Webhook as Endpoint};
use tokengate::webhooks::conditions::cel_string;
use tokengate::webhooks::native::split::{Side, RULES};
use tokengate::webhooks::native::{self, NativePolicy, KUBELETS_CONDITION};

// ---------------------------------------------------------------------------------------------
// Evaluating a native policy
// ---------------------------------------------------------------------------------------------

/// What the API server makes of one native policy for one request.
#[derive(Debug)]
enum Outcome {
    /// Its rules do not cover the request.
    NotCovered,
    /// A match condition is false: the first such condition.
    Skipped(String),
    /// Evaluated: the rule of every failed validation, with its message.
    Evaluated(Vec<(&'static str, String)>),
}

/// Evaluates `native` on `request` as the API server does (`validator.go` `Validate`).
fn evaluate_native(native: &NativePolicy, request: &Value) -> Result<Outcome, String> {
    let spec = &native.policy.spec;
    if !spec.match_constraints.resource_rules.iter().any(|rule| rule_covers(rule, request)) {
        return Ok(Outcome::NotCovered);
    }
    let none = HashMap::new();
    for condition in &spec.match_conditions {
        if !run_bool(&condition.expression, request, &none).map_err(|e| format!("{}: {e}", condition.name))? {
            return Ok(Outcome::Skipped(condition.name.clone()));
        }
    }
    let mut variables = HashMap::new();
    for variable in &spec.variables {
        let value = run(&variable.expression, request, &variables).map_err(|e| format!("{}: {e}", variable.name))?;
        variables.insert(variable.name.clone(), value);
    }
    let mut failed = Vec::new();
    for validation in &spec.validations {
        if !run_bool(&validation.expression, request, &variables).map_err(|e| format!("{}: {e}", validation.rule))? {
            let message = match run(&validation.message_expression, request, &variables)? {
                cel::Value::String(message) => message.to_string(),
                other => return Err(format!("{} message is {other:?}", validation.rule)),
            };
            failed.push((validation.rule, message));
        }
    }
    Ok(Outcome::Evaluated(failed))
}

/// `review`'s violations on `request` (validate endpoint), and whether it allows it.
fn decided(request: &Value, policy: &Policy, cluster: &ObjectStore) -> (Vec<Violation>, bool) {
    let body = serde_json::to_vec(
        &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}),
    )
    .expect("encode");
    let envelope = AdmissionReviewIn::from_slice(&body).expect("decodes");
    let admission = envelope.request.expect("request");
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let verdict = runtime.block_on(decide(&admission, Endpoint::Validate, policy, cluster));
    let allowed = verdict.allowed();
    (verdict.violations, allowed)
}

/// Whether `violation` breaks a rule the split places in a native policy.
fn claimed(native: &native::Native, violation: &Violation) -> bool {
    native.split.iter().any(|p| p.rule == violation.rule && p.side == Side::Native)
}

/// A kubelet, as decisions recognise one (`UserInfo::node_name`).
fn is_kubelet(request: &Value) -> bool {
    let user = &request["userInfo"];
    user["username"].as_str().is_some_and(|u| u.starts_with("system:node:"))
        && user["groups"].as_array().is_some_and(|g| g.iter().any(|g| g == "system:nodes"))
}

// ---------------------------------------------------------------------------------------------
// The property
// ---------------------------------------------------------------------------------------------

/// What one request showed, for the check that the generators reach every outcome.
#[derive(Debug, Default)]
struct Seen {
    /// `(policy name, passed)` for every evaluated native policy.
    evaluated: Vec<(String, bool)>,
    /// Rules whose validation failed.
    failed_rules: Vec<&'static str>,
    skipped: Vec<String>,
}

/// Checks the property for one request against every native policy of `policy`.
fn check(policy: &Policy, cluster: &ObjectStore, request: &Value) -> Result<Seen, TestCaseError> {
    let native = native::native(policy, "tokengate");
    let mut seen = Seen::default();
    for native_policy in &native.policies {
        let outcome = evaluate_native(native_policy, request).map_err(TestCaseError::fail)?;
        let (violations, allowed) = decided(request, policy, cluster);
        for violation in &violations {
            prop_assert!(
                RULES.iter().any(|(rule, _, _)| *rule == violation.rule),
                "{violation:?} names no placed rule"
            );
        }
        let claimed_violations: Vec<&Violation> = violations.iter().filter(|v| claimed(&native, v)).collect();
        match outcome {
            Outcome::NotCovered => {}
            Outcome::Skipped(name) if name == tokengate::webhooks::conditions::names::BREAKGLASS => {}
            Outcome::Skipped(name) if name == KUBELETS_CONDITION => {
                prop_assert!(is_kubelet(request), "{name} skipped a request that is not a kubelet's: {request}");
            }
            Outcome::Skipped(name) => {
                prop_assert!(
                    violations.is_empty() && allowed,
                    "{} skipped ({name}) a request review finds {violations:?} in: {request}",
                    native_policy.policy.metadata.name
                );
                seen.skipped.push(name);
            }
            Outcome::Evaluated(failed) => {
                prop_assert_eq!(
                    failed.is_empty(),
                    claimed_violations.is_empty(),
                    "{}: native failed {:?}, review found {:?}: {}",
                    native_policy.policy.metadata.name,
                    failed,
                    violations,
                    request
                );
                let failed_rules: BTreeSet<&str> = failed.iter().map(|(rule, _)| *rule).collect();
                let violated_rules: BTreeSet<&str> = claimed_violations.iter().map(|v| v.rule).collect();
                prop_assert_eq!(
                    &failed_rules,
                    &violated_rules,
                    "{}: the native denial names other rules than review's: {:?} vs {:?}: {}",
                    native_policy.policy.metadata.name,
                    failed,
                    violations,
                    request
                );
                if claimed_violations.len() == violations.len() {
                    let denies = native_policy.binding.spec.validation_actions.iter().any(|a| a == "Deny");
                    let native_allowed = failed.is_empty() || !denies;
                    prop_assert_eq!(native_allowed, allowed, "allowed: native vs review on {}", request);
                }
                seen.evaluated.push((native_policy.policy.metadata.name.clone(), failed.is_empty()));
                seen.failed_rules.extend(failed.iter().map(|(rule, _)| *rule));
            }
        }
    }
    Ok(seen)
}

/// Whether `webhook` calls tokengate for `request`; every condition must evaluate.
fn calls(webhook: &tokengate::webhooks::Webhook, request: &Value) -> bool {
    webhook_calls(webhook, request).expect("evaluates")
}

/// The narrowed webhooks (`native::narrow::narrow`) keep from tokengate only what the native
/// policies decide as `review` does: a request the full configuration sends to a validating
/// webhook and the narrowed one does not gets the same verdict from the native policies.
fn check_narrowed(policy: &Policy, cluster: &ObjectStore, request: &Value) -> Result<bool, TestCaseError> {
    use tokengate::webhooks::{configurations, Endpoint as Service, Options};
    let options = Options::new(Service::Service("tokengate-system/tokengate".parse().expect("service")));
    let full = configurations(policy, &options);
    let native = native::native(policy, "tokengate");
    let narrowed = native::narrow::narrow(policy, full.clone(), &native);
    let called_by = |configurations: &tokengate::webhooks::Configurations| {
        configurations.validating.webhooks.iter().any(|webhook| calls(webhook, request))
    };
    if !called_by(&full) || called_by(&narrowed) {
        return Ok(false);
    }
    let (violations, allowed) = decided(request, policy, cluster);
    let mut failed = Vec::new();
    let mut denies = false;
    for native_policy in &native.policies {
        if let Outcome::Evaluated(rules) = evaluate_native(native_policy, request).map_err(TestCaseError::fail)? {
            denies |= !rules.is_empty() && native_policy.binding.spec.validation_actions.iter().any(|a| a == "Deny");
            failed.extend(rules);
        }
    }
    let failed_rules: BTreeSet<&str> = failed.iter().map(|(rule, _)| *rule).collect();
    let violated_rules: BTreeSet<&str> = violations.iter().map(|v| v.rule).collect();
    prop_assert_eq!(
        failed_rules,
        violated_rules,
        "narrowed away: native {:?}, review {:?}: {}",
        failed,
        violations,
        request
    );
    prop_assert_eq!(!denies, allowed, "narrowed away: allowed differs on {}", request);
    Ok(true)
}

// ---------------------------------------------------------------------------------------------
// Generated policies
// ---------------------------------------------------------------------------------------------

const AUDIENCES: [&str; 6] = ["vault", "sts.amazonaws.com", "", API_AUDIENCE, "api://AzureADTokenExchange", "it's"];
const ACCOUNTS: [&str; 4] = ["web", "default", "db", "system"];
const ACCOUNT_GLOBS: [&str; 5] = ["web", "w*", "*", "default", "{web,db}"];
const DRIVERS: [&str; 3] = ["d.example.com", "secrets-store.csi.k8s.io", "other.example.com"];

/// One `audiences` entry: audience, namespace globs, service-account globs, maximum.
type Entry = (&'static str, Option<Vec<String>>, Option<Vec<&'static str>>, Option<u64>);
/// One `csiDrivers` entry: name, audiences, requireRepublish, requireTokenInSecrets.
type Driver = (&'static str, Vec<&'static str>, bool, bool);

#[derive(Debug, Clone)]
struct Generated {
    mode: &'static str,
    api_audiences: Vec<&'static str>,
    min: u64,
    max: Option<u64>,
    extended: Option<u64>,
    entries: Vec<Entry>,
    legacy: Vec<(Option<String>, Option<&'static str>)>,
    drivers: Vec<Driver>,
    exempt_namespaces: Vec<String>,
    pod_namespaces: Option<Vec<String>>,
}

fn entry_strategy() -> impl Strategy<Value = Entry> {
    (
        prop::sample::select(AUDIENCES.to_vec()),
        prop::option::of(prop::collection::vec(namespace_glob(), 1..3)),
        prop::option::of(prop::collection::vec(prop::sample::select(ACCOUNT_GLOBS.to_vec()), 1..3)),
        prop::option::of(prop::sample::select(vec![3600u64, 7200, 86400, 31_536_000])),
    )
}

fn policy_strategy() -> impl Strategy<Value = Generated> {
    let bounds = (
        prop::sample::select(vec![600u64, 600, 900]),
        prop::option::of(prop::sample::select(vec![7200u64, 86400, 31_536_000])),
        prop::option::of(Just(3607u64)),
    );
    let drivers = prop::collection::vec(
        (
            prop::sample::select(DRIVERS[..2].to_vec()),
            prop::sample::subsequence(vec!["vault", "", API_AUDIENCE], 0..=3),
            any::<bool>(),
            any::<bool>(),
        ),
        0..=2,
    );
    let legacy = prop::collection::vec(
        (prop::option::of(namespace_glob()), prop::option::of(prop::sample::select(ACCOUNT_GLOBS.to_vec()))),
        0..=2,
    );
    (
        prop::sample::select(vec!["Enforce", "Enforce", "Warn", "Audit"]),
        prop::sample::subsequence(vec![API_AUDIENCE, OTHER_API_AUDIENCE], 0..=2),
        bounds,
        prop::collection::vec(entry_strategy(), 0..6),
        legacy,
        drivers,
        prop::collection::vec(namespace_glob(), 0..=1),
        prop::option::of(prop::collection::vec(namespace_glob(), 0..=1)),
    )
        .prop_map(
            |(mode, api_audiences, (min, max, extended), entries, legacy, drivers, exempt, pod_namespaces)| Generated {
                mode,
                api_audiences,
                min,
                max,
                extended,
                entries,
                legacy,
                drivers,
                exempt_namespaces: exempt,
                pod_namespaces,
            },
        )
}

impl Generated {
    /// The policy document.
    fn text(&self) -> String {
        let mut text = format!(
            "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec:\n  mode: {}\n  apiServerAudiences: {:?}\n  expiration: {{minSeconds: {}",
            self.mode, self.api_audiences, self.min
        );
        if let Some(max) = self.max {
            text.push_str(&format!(", maxSeconds: {max}"));
        }
        if let Some(extended) = self.extended {
            text.push_str(&format!(", extendedSeconds: {extended}"));
        }
        text.push_str("}\n  audiences:\n");
        for (audience, namespaces, accounts, max) in &self.entries {
            text.push_str(&format!("    - audience: {audience:?}\n"));
            if let Some(namespaces) = namespaces {
                text.push_str(&format!("      namespaces: {namespaces:?}\n"));
            }
            if let Some(accounts) = accounts {
                text.push_str(&format!("      serviceAccounts: {accounts:?}\n"));
            }
            if let Some(max) = max.filter(|max| *max >= self.min) {
                text.push_str(&format!("      maxExpirationSeconds: {max}\n"));
            }
        }
        if self.entries.is_empty() {
            text.push_str("    []\n");
        }
        text.push_str(&self.rest());
        text
    }

    /// Legacy tokens, CSI drivers and exemptions.
    fn rest(&self) -> String {
        let mut text = String::from("  legacyTokens:\n");
        for (namespace, account) in &self.legacy {
            let namespaces = namespace.as_ref().map(|n| format!("namespaces: [{n:?}], ")).unwrap_or_default();
            let accounts = account.map(|a| format!("serviceAccounts: [{a:?}]")).unwrap_or_default();
            text.push_str(&format!("    - {{{namespaces}{accounts}}}\n"));
        }
        if self.legacy.is_empty() {
            text.push_str("    []\n");
        }
        text.push_str("  csiDrivers:\n");
        let mut names = BTreeSet::new();
        for (name, audiences, republish, secrets) in self.drivers.iter().filter(|d| names.insert(d.0)) {
            text.push_str(&format!(
                "    - {{name: {name}, audiences: {audiences:?}, requireRepublish: {republish}, requireTokenInSecrets: {secrets}}}\n"
            ));
        }
        if names.is_empty() {
            text.push_str("    []\n");
        }
        let pod_namespaces =
            self.pod_namespaces.as_ref().map(|n| format!(", podNamespaces: {n:?}")).unwrap_or_default();
        text.push_str(&format!(
            "  exemptions: {{namespaces: {:?}, users: [ops-admin], groups: [platform:exempt]{pod_namespaces}}}\n",
            self.exempt_namespaces
        ));
        text
    }

    /// The policy, or `None` when a generated glob does not compile (globset refuses it).
    fn policy(&self) -> Option<Policy> {
        let text = self.text();
        match Policy::parse(&text) {
            Ok(policy) => Some(policy),
            Err(e) if e.to_string().contains("invalid glob") || format!("{e:?}").contains("glob") => None,
            Err(e) => panic!("generated policy is invalid: {e}\n{text}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generated requests
// ---------------------------------------------------------------------------------------------

/// A requester: ordinary users, a controller, a kubelet, the break-glass group, exempt ones.
fn requester() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![0u8, 1, 2, 3, 4, 4, 4, 5, 5]).prop_map(|who| match who {
        0 => user("bob", &["system:authenticated", "tokengate:breakglass"]),
        1 => user("ops-admin", &["system:authenticated"]),
        2 => user("carol", &["system:authenticated", "platform:exempt"]),
        3 => kubelet(),
        4 => user("system:serviceaccount:kube-system:cronjob-controller", &["system:serviceaccounts"]),
        _ => alice(),
    })
}

fn seconds() -> impl Strategy<Value = i64> {
    prop::sample::select(vec![600i64, 899, 3600, 3607, 7200, 86400, 31_536_000])
}

/// A TokenRequest as validating admission sees it (`audiences` filled in or not).
fn token_request_strategy() -> impl Strategy<Value = Value> {
    let audiences = prop_oneof![
        Just(Value::Null),
        Just(json!([])),
        prop::collection::vec(
            prop::sample::select(AUDIENCES.iter().copied().chain([OTHER_API_AUDIENCE]).collect::<Vec<_>>()),
            1..3
        )
        .prop_map(|a| json!(a)),
    ];
    let bound = prop_oneof![
        Just(Value::Null),
        Just(bound_pod("Pod", Some("v1"), Some(POD_UID))),
        prop::sample::select(vec!["apps/v1", "/v1", "a/b/c", "", "x/"]).prop_map(|v| bound_pod(
            "Pod",
            Some(v),
            Some(POD_UID)
        )),
        Just(bound_pod("Pod", None, Some(POD_UID))),
        Just(bound_pod("Secret", Some("v1"), Some(POD_UID))),
    ];
    let namespace = prop::sample::select(NAMESPACES.to_vec());
    let account = prop::sample::select(ACCOUNTS.to_vec());
    (namespace, account, requester(), audiences, prop::option::of(seconds()), bound).prop_map(
        |(namespace, account, user_info, audiences, seconds, bound)| {
            let mut spec = json!({"audiences": audiences, "boundObjectRef": bound});
            if let Some(seconds) = seconds {
                spec["expirationSeconds"] = json!(seconds);
            }
            token_request(namespace, account, user_info, spec)
        },
    )
}

/// A projected token volume of one or two sources, or another volume.
fn volume_strategy() -> impl Strategy<Value = Value> {
    let source = (
        prop::option::of(prop::sample::select(
            AUDIENCES.iter().copied().chain([OTHER_API_AUDIENCE]).collect::<Vec<_>>(),
        )),
        prop::option::of(seconds()),
    )
        .prop_map(|(audience, seconds)| {
            let mut token = json!({"path": "token"});
            if let Some(audience) = audience {
                token["audience"] = json!(audience);
            }
            if let Some(seconds) = seconds {
                token["expirationSeconds"] = json!(seconds);
            }
            json!({"serviceAccountToken": token})
        });
    let name = prop::sample::select(vec!["tok-a", "tok-b", "kube-api-access-q"]);
    prop_oneof![
        3 => (name, prop::collection::vec(source, 1..3), any::<bool>()).prop_map(|(name, mut sources, ca)| {
            if ca {
                sources.push(ca_source());
            }
            projected(name, json!(sources))
        }),
        2 => Just(automount()),
        1 => Just(projected("empty", Value::Null)),
        1 => Just(json!({"name": "secrets", "csi": {"driver": "d.example.com"}})),
        1 => Just(json!({"name": "data", "emptyDir": {}})),
    ]
}

fn pod_strategy() -> impl Strategy<Value = Value> {
    let accounts = (
        prop::option::of(prop::sample::select(vec!["web", "db", ""])),
        prop::option::of(prop::sample::select(vec!["web", "default", ""])),
    );
    (prop::sample::select(NAMESPACES.to_vec()), prop::collection::vec(volume_strategy(), 0..4), accounts, requester())
        .prop_map(|(namespace, mut volumes, (name, deprecated), user_info)| {
            let mut seen = BTreeSet::new();
            volumes.retain(|v| seen.insert(v["name"].as_str().unwrap_or_default().to_string()));
            let mut pod = pod("p", namespace, None, None, volumes);
            let spec = pod["spec"].as_object_mut().expect("spec");
            spec.remove("serviceAccountName");
            spec.remove("serviceAccount");
            if let Some(name) = name {
                spec.insert("serviceAccountName".into(), json!(name));
            }
            if let Some(deprecated) = deprecated {
                spec.insert("serviceAccount".into(), json!(deprecated));
            }
            pod_request(namespace, pod, user_info)
        })
}

fn csi_driver_strategy() -> impl Strategy<Value = Value> {
    let request = (
        prop::option::of(prop::sample::select(vec!["vault", "", API_AUDIENCE, "sts.amazonaws.com"])),
        prop::option::of(seconds()),
    )
        .prop_map(|(audience, seconds)| {
            let mut request = json!({});
            if let Some(audience) = audience {
                request["audience"] = json!(audience);
            }
            if let Some(seconds) = seconds {
                request["expirationSeconds"] = json!(seconds);
            }
            request
        });
    let requests = prop::option::of(prop::collection::vec(request, 0..3));
    let flags = (prop::option::of(any::<bool>()), prop::option::of(any::<bool>()));
    (prop::sample::select(DRIVERS.to_vec()), requests, flags, requester(), any::<bool>()).prop_map(
        |(name, requests, (republish, secrets), user_info, update)| {
            let mut request = csi_driver_request(requests.map(|r| json!(r)));
            request["name"] = json!(name);
            request["object"]["metadata"]["name"] = json!(name);
            let spec = &mut request["object"]["spec"];
            if let Some(republish) = republish {
                spec["requiresRepublish"] = json!(republish);
            }
            if let Some(secrets) = secrets {
                spec["serviceAccountTokenInSecrets"] = json!(secrets);
            }
            request["userInfo"] = user_info;
            if update {
                request["operation"] = json!("UPDATE");
                request["oldObject"] = request["object"].clone();
            }
            request
        },
    )
}

fn secret_strategy() -> impl Strategy<Value = Value> {
    let sa = "kubernetes.io/service-account-token";
    let account = || prop::option::of(prop::sample::select(ACCOUNTS.to_vec()));
    (
        prop::sample::select(vec!["Opaque", sa, sa]),
        account(),
        prop::option::of(account()),
        prop::sample::select(NAMESPACES.to_vec()),
        requester(),
    )
        .prop_map(move |(type_, account, old, namespace, user_info)| {
            let mut request = match old {
                None => secret_request(namespace, "CREATE", secret(type_, account), None),
                Some(old) => secret_request(namespace, "UPDATE", secret(type_, account), Some(secret(type_, old))),
            };
            request["userInfo"] = user_info;
            request
        })
}

fn request_strategy() -> impl Strategy<Value = Value> {
    prop_oneof![3 => token_request_strategy(), 3 => pod_strategy(), 2 => csi_driver_strategy(), 1 => secret_strategy()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 768, ..ProptestConfig::default() })]

    #[test]
    fn the_native_verdict_is_reviews_for_every_request_it_claims(generated in policy_strategy(), request in request_strategy()) {
        let Some(policy) = generated.policy() else { return Ok(()) };
        let store = cluster(&NAMESPACES, false);
        check(&policy, &store, &request)?;
        check_narrowed(&policy, &store, &request)?;
    }
}

/// The generators reach both verdicts of every native policy, every validation fails somewhere,
/// and the exemption conditions skip something (the property is not vacuous).
#[test]
fn generated_requests_reach_every_verdict_and_rule() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut verdicts = BTreeSet::new();
    let mut rules = BTreeSet::new();
    let mut skipped = BTreeSet::new();
    let mut narrowed_away = 0;
    let store = cluster(&NAMESPACES, false);
    for _ in 0..1500 {
        let generated = policy_strategy().new_tree(&mut runner).expect("tree").current();
        let request = request_strategy().new_tree(&mut runner).expect("tree").current();
        let Some(policy) = generated.policy() else { continue };
        let seen = check(&policy, &store, &request).expect("property");
        narrowed_away += usize::from(check_narrowed(&policy, &store, &request).expect("narrowed"));
        verdicts.extend(seen.evaluated);
        rules.extend(seen.failed_rules);
        skipped.extend(seen.skipped);
    }
    for name in ["tokenrequests", "pods", "csidrivers", "legacy-token-secrets"] {
        for passed in [true, false] {
            assert!(verdicts.contains(&(format!("tokengate-{name}"), passed)), "{name} never {passed}: {verdicts:?}");
        }
    }
    for (rule, _, never) in RULES {
        // The native injections validate nothing: tests/native_mutating.rs checks them.
        let mutation = rule == native::split::rules::POD_NATIVE_INJECTIONS;
        assert!(never.is_some() || mutation || rules.contains(rule), "rule {rule} never failed: {rules:?}");
    }
    assert!(skipped.len() >= 4, "too few conditions skipped anything: {skipped:?}");
    assert!(narrowed_away > 100, "the narrowed webhooks skip too little: {narrowed_away}");
}

/// Every rule is placed once; a native rule has a validation in its subject's policy and a
/// webhook rule none; every validation enforces a rule of the table.
#[test]
fn the_split_places_every_rule_exactly_once() {
    let policy = Policy::parse(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/policy/policy.yaml")).expect("policy"),
    )
    .expect("valid");
    let native = native::native(&policy, "tokengate");
    let placed: Vec<&str> = native.split.iter().map(|p| p.rule).collect();
    let unique: BTreeSet<&str> = placed.iter().copied().collect();
    assert_eq!(placed.len(), unique.len(), "a rule placed twice: {placed:?}");
    assert_eq!(placed, RULES.iter().map(|(rule, _, _)| *rule).collect::<Vec<_>>());
    let validated: Vec<(Subject, &str)> = native
        .policies
        .iter()
        .flat_map(|p| p.policy.spec.validations.iter().map(move |v| (p.subject, v.rule)))
        .collect();
    for placement in &native.split {
        let validations = validated.iter().filter(|(_, rule)| *rule == placement.rule).count();
        match placement.side {
            Side::Native if placement.rule == native::split::rules::POD_NATIVE_INJECTIONS => {
                assert_eq!(validations, 0, "the native injections validate nothing");
                assert_eq!(native.mutating.len(), 1, "native injections without a MutatingAdmissionPolicy");
            }
            Side::Native => {
                assert_eq!(validations, 1, "{} is native but has {validations} validations", placement.rule);
                assert!(
                    validated.contains(&(placement.subject, placement.rule)),
                    "{} in another policy",
                    placement.rule
                );
            }
            Side::Webhook => {
                assert_eq!(validations, 0, "{} is in the webhook but validated natively", placement.rule);
                assert!(!placement.why.is_empty(), "{} says not why", placement.rule);
            }
        }
    }
    assert!(validated.iter().all(|(_, rule)| unique.contains(rule)), "a validation of no rule: {validated:?}");
}

/// The mode becomes the bindings' action, and each binding names its policy.
#[test]
fn the_mode_is_the_bindings_action() {
    for (mode, action) in [("Enforce", "Deny"), ("Warn", "Warn"), ("Audit", "Audit")] {
        let text = format!("apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec: {{mode: {mode}}}\n");
        let native = native::native(&Policy::parse(&text).expect("policy"), "tg");
        assert_eq!(native.policies.len(), 4);
        for policy in &native.policies {
            assert_eq!(policy.binding.spec.validation_actions, [action]);
            assert_eq!(policy.binding.spec.policy_name, policy.policy.metadata.name);
            assert!(policy.policy.metadata.name.starts_with("tg-"));
        }
    }
}

proptest! {
    /// The CEL reading of a bound object's `apiVersion` is `api_group`'s.
    #[test]
    fn cel_reads_api_versions_as_api_group_does(api_version in "[a/v1.]{0,6}") {
        let expression = format!("request.v.matches({})", cel_string(NAMED_GROUP_API_VERSION_RE2));
        let named = run_bool(&expression, &json!({"v": api_version}), &HashMap::new()).map_err(TestCaseError::fail)?;
        prop_assert_eq!(named, !api_group(&api_version).is_empty(), "{:?}", api_version);
    }
}

fn run_tokengate(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("tokengate runs")
}

/// `webhooks --native` prints each policy and its binding after the header, without an endpoint.
#[test]
fn the_command_prints_the_policies_and_bindings() {
    let output = run_tokengate(&["webhooks", "--native", "--policy", "examples/policy.yaml", "--name", "tg"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("utf-8");
    assert!(text.starts_with("# tokengate's native policies"));
    assert!(text.contains("# - pod-csi-drivers (Pod): webhook: "));
    let kinds: Vec<String> = text
        .split("\n---\n")
        .map(|doc| serde_yaml_ng::from_str::<Value>(doc).expect("YAML")["kind"].as_str().expect("kind").to_string())
        .collect();
    assert_eq!(kinds.len(), 8);
    assert!(kinds.chunks(2).all(|pair| pair == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]));
    assert_eq!(
        run_tokengate(&["webhooks", "--native", "--policy", "examples/policy.yaml", "--name", "Not_A_Name"])
            .status
            .code(),
        Some(2)
    );
    let narrowed = run_tokengate(&[
        "webhooks",
        "--narrowed",
        "--policy",
        "examples/policy.yaml",
        "--service",
        "tokengate-system/tokengate",
    ]);
    assert_eq!(narrowed.status.code(), Some(0), "{}", String::from_utf8_lossy(&narrowed.stderr));
    let text = String::from_utf8(narrowed.stdout).expect("utf-8");
    assert!(text.starts_with("# NARROWED"));
    assert!(
        text.contains(tokengate::webhooks::names::PODS_VALIDATE)
            && !text.contains(tokengate::webhooks::names::CSI_DRIVERS)
    );
}

// ---------------------------------------------------------------------------------------------
// Figures (docs/native.md): `cargo test --test native figures -- --nocapture`
// ---------------------------------------------------------------------------------------------

/// The pods (and workload templates, as the pods they make) of the shipped examples, in
/// `namespace` when they name none, with the automount volume the API server adds.
fn example_pods() -> Vec<Value> {
    let root = env!("CARGO_MANIFEST_DIR");
    let paths =
        ["examples/manifests", "tests/fixtures/objects.yaml"].map(|p| std::path::PathBuf::from(format!("{root}/{p}")));
    let documents = tokengate::manifest::load_paths(&paths).expect("examples load");
    let mut pods = Vec::new();
    for document in documents {
        let object = &document.object;
        let template = match object["kind"].as_str() {
            Some("Pod") => object.clone(),
            Some("CronJob") => object["spec"]["jobTemplate"]["spec"]["template"].clone(),
            Some("PodTemplate") => object["template"].clone(),
            _ if object["spec"]["template"].is_object() => object["spec"]["template"].clone(),
            _ => continue,
        };
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": template["metadata"].clone(), "spec": template["spec"].clone()});
        pod["metadata"]["namespace"] = json!(namespace);
        if pod["spec"]["automountServiceAccountToken"] != json!(false) {
            let volumes = pod["spec"]["volumes"].as_array().cloned().unwrap_or_default();
            pod["spec"]["volumes"] = json!(volumes.into_iter().chain([automount()]).collect::<Vec<_>>());
        }
        pods.push(pod_request(&namespace, pod, alice()));
    }
    pods
}

/// For each example policy, and for it without its injections (the shipped ones match by a
/// service-account annotation, so every pod may match): of the example pod creations that reach
/// tokengate's pod webhooks, how many only need the native policy (no inline CSI or migrated
/// in-tree volume, no injection that may match), so that a narrowed webhook would no longer be
/// called for them.
#[test]
fn figures_share_of_example_pods_decided_natively() {
    let pods = example_pods();
    assert!(pods.len() >= 5, "too few example pods: {}", pods.len());
    for file in ["examples/policy.yaml", "manifests/policy/policy.yaml", "tests/e2e/policy.yaml"] {
        let text = std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).expect("policy");
        let mut document: Value = serde_yaml_ng::from_str(&text).expect("YAML");
        let (today, after) = pods_reaching_webhooks(&Policy::parse(&text).expect("valid"), &pods);
        println!("{file}: {} example pods, {today} reach the pod webhooks, {after} still would with the native policy ({} decided in the API server)", pods.len(), today - after);
        document["spec"].as_object_mut().expect("spec").remove("injections");
        let bare = Policy::parse(&serde_json::to_string(&document).expect("JSON")).expect("valid");
        let (today, after) = pods_reaching_webhooks(&bare, &pods);
        println!("{file} without injections: {today} reach the pod webhooks, {after} still would ({} decided in the API server)", today - after);
        assert!(after <= today);
    }
}

/// How many of `pods` reach the pod webhooks today, and how many the narrowed configurations
/// (`webhooks --narrowed`) still send to tokengate.
fn pods_reaching_webhooks(policy: &Policy, pods: &[Value]) -> (usize, usize) {
    use tokengate::webhooks::{configurations, Configurations, Options};
    let endpoint = tokengate::webhooks::Endpoint::Service("tokengate-system/tokengate".parse().expect("service"));
    let full = configurations(policy, &Options::new(endpoint));
    let narrowed = native::narrow::narrow(policy, full.clone(), &native::native(policy, "tokengate"));
    let reaches = |configurations: &Configurations, pod: &Value| {
        configurations.mutating.webhooks.iter().chain(&configurations.validating.webhooks).any(|w| calls(w, pod))
    };
    let today = pods.iter().filter(|pod| reaches(&full, pod)).count();
    let after = pods.iter().filter(|pod| reaches(&narrowed, pod)).count();
    (today, after)
}

/// The cost bound and size of the native policies for allow-lists of 10, 100 and 1 000
/// entries, one team namespace each (`team-N` and `team-N-*`, service accounts `web` and
/// `app-*`): for one audience or each its own, and with one shared maximum (entries merge) or a
/// maximum each (the worst case: nothing merges).
#[test]
fn figures_cost_of_large_allow_lists() {
    use tokengate::webhooks::native::cost::{estimate, PER_CALL_LIMIT};
    for entries in [10usize, 100, 1000] {
        for (shared, distinct_max) in [(true, false), (false, false), (true, true), (false, true)] {
            let mut text = String::from("apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec:\n  audiences:\n");
            for i in 0..entries {
                let audience = if shared { "vault".to_string() } else { format!("aud-{i}.example.com") };
                let max = if distinct_max { 3600 + i } else { 3600 };
                text.push_str(&format!(
                    "    - {{audience: {audience}, namespaces: [\"team-{i}\", \"team-{i}-*\"], serviceAccounts: [web, \"app-*\"], maxExpirationSeconds: {max}}}\n"
                ));
            }
            let native = native::native(&Policy::parse(&text).expect("policy"), "tokengate");
            let shape = format!(
                "{entries} entries, {}, {}",
                if shared { "one audience" } else { "an audience each" },
                if distinct_max { "a maximum each" } else { "one maximum" }
            );
            for name in ["tokengate-tokenrequests", "tokengate-pods"] {
                let Some(object) = native.policies.iter().find(|p| p.policy.metadata.name == name) else {
                    let rule = if name.ends_with("pods") { "pod-token-audiences" } else { "tokenrequest-audiences" };
                    let placed = native.split.iter().find(|p| p.rule == rule).expect("rule");
                    assert_eq!(placed.side, Side::Webhook, "{rule} is native without its policy");
                    let why = placed.why.clone();
                    println!("{shape}: {name}: left to the webhook: {why}");
                    assert!(!shared || distinct_max, "{shape}: one audience with one maximum stays native");
                    continue;
                };
                let bytes = serde_yaml_ng::to_string(&object.policy).expect("YAML").len();
                let bound = estimate(&object.policy.spec);
                println!(
                    "{shape}: {name}: {bytes} bytes, cost <= {} + {} per item ({} items within {PER_CALL_LIMIT})",
                    bound.fixed,
                    bound.per_item,
                    bound.items_within_limit()
                );
                assert!(bound.fixed < PER_CALL_LIMIT / 4, "{shape}: {bound:?}");
            }
        }
    }
}
