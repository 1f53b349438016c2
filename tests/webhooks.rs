//! The webhook configurations' CEL match conditions, evaluated with a CEL interpreter (the `cel`
//! crate) on AdmissionReview requests, against the decisions of `tokengate::review::review`.
//!
//! The property: a request that the conditions skip (one evaluates to false) is one tokengate
//! allows without a patch, and no condition fails to evaluate (an evaluation error counts as a
//! webhook failure and would refuse the request). The one documented exception, a kubelet's
//! automount-shaped TokenRequest for a pod without an automount volume, is kept out of the
//! generated cluster: every bound pod here carries an automount volume, and every kubelet
//! request satisfies what NodeRestriction enforces before any webhook (the pod exists, runs on
//! that node, has that uid and that service account).
//!
//! Requests are written as the API server passes them to CEL: `ToUnstructured` of the typed
//! object, so a projected volume without sources has `sources: null` and a TokenRequest without
//! audiences or bound object has `audiences: null` / `boundObjectRef: null`.

mod admission_cel;

use std::collections::HashMap;

use admission_cel::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use tokengate::cluster::ObjectStore;
use tokengate::policy::Policy;
use tokengate::review::Webhook as Endpoint;
use tokengate::webhooks::conditions::names as condition;
use tokengate::webhooks::{self, configurations, names, Configurations, Options, Webhook};

/// The policy the checked-in configurations are generated from; one const so it can move.
const SHIPPED_POLICY: &str = "manifests/policy/policy.yaml";
/// The checked-in configurations.
const SHIPPED_WEBHOOKS: &str = "manifests/webhooks/webhooks.yaml";
/// The Service they point at.
const SHIPPED_SERVICE: &str = "tokengate-system/tokengate";

// ---------------------------------------------------------------------------------------------
// Evaluating conditions
// ---------------------------------------------------------------------------------------------

/// Evaluates one expression with the variables matchConditions have.
fn evaluate(expression: &str, request: &Value) -> Result<bool, String> {
    let program = cel::Program::compile(expression).map_err(|e| format!("does not compile: {e:?}"))?;
    let mut context = cel::Context::default();
    context.add_variable_from_value("request", to_cel(request));
    context.add_variable_from_value("object", to_cel(&request["object"]));
    context.add_variable_from_value("oldObject", to_cel(&request["oldObject"]));
    match program.execute(&context) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("evaluated to {other:?}, not a bool")),
        Err(err) => Err(format!("failed to evaluate: {err:?}")),
    }
}

/// Whether the API server would call `webhook` for `request`: every condition true. An error
/// is returned as such (it would refuse the request under failurePolicy Fail).
fn called(webhook: &Webhook, request: &Value) -> Result<bool, String> {
    Ok(skipped_by(webhook, request)?.is_none())
}

/// The first condition that is false for `request`, if any. Every condition is evaluated, so
/// an evaluation error anywhere is found.
fn skipped_by<'a>(webhook: &'a Webhook, request: &Value) -> Result<Option<&'a str>, String> {
    let mut first = None;
    for condition in &webhook.match_conditions {
        let result = evaluate(&condition.expression, request)
            .map_err(|e| format!("{} / {}: {e}\nrequest: {request}", webhook.name, condition.name))?;
        if !result && first.is_none() {
            first = Some(condition.name.as_str());
        }
    }
    Ok(first)
}

/// Whether the webhook's `namespaceSelector` lets a request in its namespace through, for the
/// `NotIn` on `kubernetes.io/metadata.name` the configurations use; cluster-scoped requests are
/// never excluded by it.
fn namespace_selected(webhook: &Webhook, request: &Value) -> bool {
    let Some(namespace) = request["namespace"].as_str().filter(|n| !n.is_empty()) else { return true };
    let Some(selector) = &webhook.namespace_selector else { return true };
    let expressions = selector["matchExpressions"].as_array().expect("matchExpressions only");
    assert!(selector.get("matchLabels").is_none(), "matchLabels are not modelled here");
    expressions.iter().all(|expression| {
        assert_eq!(expression["key"], "kubernetes.io/metadata.name", "only the name label is modelled");
        assert_eq!(expression["operator"], "NotIn", "only NotIn is modelled");
        !expression["values"].as_array().expect("values").iter().any(|v| v == namespace)
    })
}

/// The webhooks whose rules cover the request, with the endpoint tokengate answers them on (from
/// the webhook's path): read from the configuration, never from a table of our own.
fn webhooks_for<'a>(configurations: &'a Configurations, request: &Value) -> Vec<(&'a Webhook, Endpoint)> {
    let all = configurations.mutating.webhooks.iter().chain(configurations.validating.webhooks.iter());
    all.filter(|webhook| webhook.rules.iter().any(|rule| rule_covers(rule, request)))
        .map(|webhook| {
            let path = webhook.client_config.service.as_ref().map(|s| s.path.as_str()).unwrap_or_default();
            let endpoint = if path == "/mutate" { Endpoint::Mutate } else { Endpoint::Validate };
            (webhook, endpoint)
        })
        .collect()
}

/// Checks the property for one request: whatever a generated configuration keeps from
/// tokengate (rules that cover nothing, the namespaceSelector, a false matchCondition) is what
/// tokengate allows unchanged. Returns whether some webhook was skipped.
fn check(policy: &Policy, cluster: &ObjectStore, request: &Value) -> Result<bool, TestCaseError> {
    let configurations = configurations(policy, &Options::new(shipped_endpoint()));
    let covering = webhooks_for(&configurations, request);
    let own_namespace = request["namespace"] == OWN_NAMESPACE;
    if covering.is_empty() {
        for endpoint in [Endpoint::Validate, Endpoint::Mutate] {
            let (allowed, patched) = answer(request, endpoint, policy, cluster);
            prop_assert!(
                allowed && !patched,
                "no rule covers a request tokengate answers allowed={allowed} patched={patched}: {request}"
            );
        }
        return Ok(true);
    }
    let mut skipped_any = false;
    for (webhook, endpoint) in covering {
        let skipped = if namespace_selected(webhook, request) {
            skipped_by(webhook, request).map_err(TestCaseError::fail)?
        } else {
            Some("namespaceSelector")
        };
        // The break-glass group is a deliberate bypass, and tokengate's own namespace the one
        // namespace left out whatever the policy says; neither is something tokengate allows.
        if skipped.is_some_and(|name| name != condition::BREAKGLASS) && !own_namespace {
            skipped_any = true;
            let (allowed, patched) = answer(request, endpoint, policy, cluster);
            prop_assert!(
                allowed && !patched,
                "{} skipped ({:?}) a request tokengate answers allowed={allowed} patched={patched}: {request}",
                webhook.name,
                skipped
            );
        }
    }
    Ok(skipped_any)
}

fn shipped_endpoint() -> webhooks::Endpoint {
    webhooks::Endpoint::Service(SHIPPED_SERVICE.parse().expect("service"))
}

// ---------------------------------------------------------------------------------------------
// Requests and objects
// ---------------------------------------------------------------------------------------------

/// Where each generated workload kind keeps its pod template.
const WORKLOAD_KINDS: [(&str, &str, &str, &str); 4] = [
    ("apps", "Deployment", "deployments", "spec.template"),
    ("batch", "CronJob", "cronjobs", "spec.jobTemplate.spec.template"),
    ("", "PodTemplate", "podtemplates", "template"),
    ("", "ReplicationController", "replicationcontrollers", "spec.template"),
];

/// A workload of `WORKLOAD_KINDS[kind]` with `template` (none when `None`) and `replicas`.
fn workload(kind: usize, namespace: &str, template: Option<&Value>, replicas: i64, deleting: bool) -> Value {
    let (group, kind_name, _, path) = WORKLOAD_KINDS[kind];
    let api_version = if group.is_empty() { "v1".to_string() } else { format!("{group}/v1") };
    let mut object =
        json!({"apiVersion": api_version, "kind": kind_name, "metadata": {"name": "w", "namespace": namespace}});
    if deleting {
        object["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        object["metadata"]["finalizers"] = json!(["example.com/hold"]);
    }
    if kind_name != "PodTemplate" {
        object["spec"] = json!({"replicas": replicas});
    }
    if let Some(template) = template {
        let mut at = &mut object;
        let segments: Vec<&str> = path.split('.').collect();
        for segment in &segments[..segments.len() - 1] {
            if at.get(*segment).is_none() {
                at[*segment] = json!({});
            }
            at = &mut at[*segment];
        }
        at[segments[segments.len() - 1]] = template.clone();
    }
    object
}

fn template(labels: Option<Value>, volumes: Vec<Value>) -> Value {
    let pod = pod("ignored", "ignored", labels, None, volumes);
    json!({"metadata": pod["metadata"].get("labels").map(|l| json!({"labels": l})).unwrap_or_else(|| json!({})), "spec": pod["spec"]})
}

fn workload_request(kind: usize, namespace: &str, object: Value, old: Option<Value>, user_info: Value) -> Value {
    let (group, kind_name, resource, _) = WORKLOAD_KINDS[kind];
    let operation = if old.is_some() { "UPDATE" } else { "CREATE" };
    json!({
        "uid": "req-workload", "kind": {"group": group, "version": "v1", "kind": kind_name},
        "resource": {"group": group, "version": "v1", "resource": resource},
        "name": "w", "namespace": namespace, "operation": operation, "userInfo": user_info,
        "object": object, "oldObject": old.unwrap_or(Value::Null), "dryRun": false,
    })
}

// ---------------------------------------------------------------------------------------------
// Hand-written cases
// ---------------------------------------------------------------------------------------------

const POLICY: &str = r#"
apiVersion: tokengate.dev/v1alpha1
kind: TokenPolicy
spec:
  apiServerAudiences: [https://kubernetes.default.svc.cluster.local]
  audiences:
    - audience: vault
      namespaces: ["team-*"]
    - audience: "api://AzureADTokenExchange"
  injections:
    - name: azure
      required: true
      match:
        namespaces: ["team-*"]
        podSelector: {matchLabels: {azure.workload.identity/use: "true"}}
      volume: {name: azure-identity-token, audience: "api://AzureADTokenExchange", expirationSeconds: 3600}
      mount: {mountPath: /var/run/secrets/azure/tokens}
  exemptions:
    namespaces: [legacy-*]
    users: [ops-admin]
    groups: [platform:exempt]
"#;

fn hand_policy() -> Policy {
    Policy::parse(POLICY).expect("policy")
}

/// The outcome of each covering webhook for one request: `true` = called.
fn outcomes(policy: &Policy, request: &Value) -> Vec<(String, bool)> {
    let configurations = configurations(policy, &Options::new(shipped_endpoint()));
    webhooks_for(&configurations, request)
        .into_iter()
        .map(|(webhook, _)| {
            (webhook.name.clone(), namespace_selected(webhook, request) && called(webhook, request).expect("evaluates"))
        })
        .collect()
}

fn was_called(policy: &Policy, request: &Value, webhook: &str) -> bool {
    outcomes(policy, request).into_iter().find(|(name, _)| name == webhook).map(|(_, c)| c).expect("covered")
}

#[test]
fn automount_only_pods_outside_injections_skip_both_pod_webhooks() {
    let policy = hand_policy();
    let plain = pod_request("prod", pod("web", "prod", None, None, vec![automount()]), alice());
    assert_eq!(outcomes(&policy, &plain), [(names::PODS_MUTATE.into(), false), (names::PODS_VALIDATE.into(), false)]);
    // OpenShift's fourth source and an explicit empty audience do not change the shape.
    let openshift = projected(
        "kube-api-access-abcde",
        json!([token(Some(""), 3607, "token"), ca_source(), namespace_source(), {"configMap": {"name": "openshift-service-ca.crt"}}]),
    );
    let request = pod_request("prod", pod("web", "prod", None, None, vec![openshift]), alice());
    assert!(!was_called(&policy, &request, names::PODS_VALIDATE));
    // No volumes at all (automountServiceAccountToken: false), ordinary volumes, sources: null.
    let others =
        vec![json!({"name": "data", "emptyDir": {}}), json!({"name": "empty", "projected": {"sources": null}})];
    let request = pod_request("prod", pod("web", "prod", None, None, others), alice());
    assert!(!was_called(&policy, &request, names::PODS_VALIDATE));
    let request = pod_request("prod", pod("web", "prod", None, None, vec![]), alice());
    assert!(!was_called(&policy, &request, names::PODS_VALIDATE));
    check(&policy, &cluster(&["prod"], false), &plain).expect("property");
}

#[test]
fn pods_with_tokens_csi_or_in_tree_volumes_are_validated() {
    let policy = hand_policy();
    let cases = [
        projected("vault-token", json!([token(Some("vault"), 3600, "token")])),
        projected("kube-api-access-x", json!([token(Some("vault"), 3607, "token")])),
        projected("kube-api-access-x", json!([token(None, 3600, "token")])),
        projected("kube-api-access-x", json!([token(None, 3607, "other")])),
        projected("kube-api-access-x", json!([token(None, 3607, "token"), token(None, 3607, "token2")])),
        projected("api-access-x", json!([token(None, 3607, "token")])),
        json!({"name": "secrets", "csi": {"driver": "d.example.com"}}),
        json!({"name": "ebs", "awsElasticBlockStore": {"volumeID": "vol-1"}}),
        json!({"name": "disk", "azureDisk": {"diskName": "d", "diskURI": "u"}}),
    ];
    for volume in cases {
        let request = pod_request("prod", pod("web", "prod", None, None, vec![automount(), volume.clone()]), alice());
        assert!(was_called(&policy, &request, names::PODS_VALIDATE), "{volume}");
        assert!(!was_called(&policy, &request, names::PODS_MUTATE), "no injection matches prod: {volume}");
    }
}

#[test]
fn pods_an_injection_matches_go_to_both_webhooks() {
    let policy = hand_policy();
    let labels = json!({"azure.workload.identity/use": "true"});
    let request = pod_request("team-a", pod("web", "team-a", Some(labels.clone()), None, vec![automount()]), alice());
    assert_eq!(outcomes(&policy, &request), [(names::PODS_MUTATE.into(), true), (names::PODS_VALIDATE.into(), true)]);
    // The same labels outside the injection's namespaces, or other labels inside: skipped.
    let request = pod_request("prod", pod("web", "prod", Some(labels), None, vec![automount()]), alice());
    assert!(!was_called(&policy, &request, names::PODS_MUTATE));
    let request =
        pod_request("team-a", pod("web", "team-a", Some(json!({"app": "web"})), None, vec![automount()]), alice());
    assert!(!was_called(&policy, &request, names::PODS_MUTATE));
}

#[test]
fn mirror_pods_breakglass_and_exemptions_are_skipped() {
    let policy = hand_policy();
    let labels = json!({"azure.workload.identity/use": "true"});
    let mirror = json!({"kubernetes.io/config.mirror": "abc"});
    let request =
        pod_request("team-a", pod("web", "team-a", Some(labels.clone()), Some(mirror), vec![automount()]), alice());
    assert!(!was_called(&policy, &request, names::PODS_MUTATE));
    let vault = projected("vault-token", json!([token(Some("vault"), 3600, "token")]));
    for (namespace, user_info) in [
        ("team-a", user("bob", &["system:authenticated", "tokengate:breakglass"])),
        ("team-a", user("ops-admin", &["system:authenticated"])),
        ("team-a", user("carol", &["platform:exempt"])),
        ("legacy-1", alice()),
    ] {
        let request =
            pod_request(namespace, pod("web", namespace, Some(labels.clone()), None, vec![vault.clone()]), user_info);
        assert_eq!(
            outcomes(&policy, &request),
            [(names::PODS_MUTATE.into(), false), (names::PODS_VALIDATE.into(), false)]
        );
    }
    // A user without groups (omitted when empty) is no error.
    let mut anonymous = alice();
    anonymous.as_object_mut().expect("object").remove("groups");
    let request = pod_request("team-a", pod("web", "team-a", None, None, vec![vault]), anonymous);
    assert!(was_called(&policy, &request, names::PODS_VALIDATE));
}

#[test]
fn kubelet_automount_token_requests_are_skipped_and_nothing_else() {
    let policy = hand_policy();
    let store = cluster(&["team-a"], false);
    let spec = |audiences: Value, seconds: i64, bound: Value| json!({"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": bound});
    let pod_ref = || bound_pod("Pod", Some("v1"), Some(POD_UID));
    let skipped = [
        (kubelet(), spec(json!([API_AUDIENCE]), 3607, pod_ref())),
        (kubelet(), spec(Value::Null, 3607, pod_ref())),
        (kubelet(), spec(json!([]), 3607, pod_ref())),
    ];
    for (user_info, spec) in skipped {
        let request = token_request("team-a", "web", user_info, spec);
        assert!(!was_called(&policy, &request, names::TOKEN_REQUESTS), "{request}");
        check(&policy, &store, &request).expect("property");
    }
    let sent = [
        (alice(), spec(json!([API_AUDIENCE]), 3607, pod_ref())),
        (kubelet(), spec(json!(["vault"]), 3607, pod_ref())),
        (kubelet(), spec(json!([API_AUDIENCE]), 3600, pod_ref())),
        (kubelet(), spec(json!([OTHER_API_AUDIENCE]), 3607, pod_ref())),
        (kubelet(), spec(json!([API_AUDIENCE]), 3607, bound_pod("Secret", Some("v1"), Some(POD_UID)))),
        (kubelet(), spec(json!([API_AUDIENCE]), 3607, bound_pod("Pod", None, Some(POD_UID)))),
        (kubelet(), spec(json!([API_AUDIENCE]), 3607, bound_pod("Pod", Some("v1"), None))),
        (kubelet(), spec(json!([API_AUDIENCE]), 3607, Value::Null)),
        (user("system:node:", &["system:nodes"]), spec(json!([API_AUDIENCE]), 3607, pod_ref())),
        (user("system:node:n", &["system:authenticated"]), spec(json!([API_AUDIENCE]), 3607, pod_ref())),
    ];
    for (user_info, spec) in sent {
        let request = token_request("team-a", "web", user_info, spec);
        assert!(was_called(&policy, &request, names::TOKEN_REQUESTS), "{request}");
    }
}

#[test]
fn without_api_server_audiences_only_absent_or_empty_audiences_are_skipped() {
    let policy = Policy::parse("apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec: {}\n").expect("policy");
    let spec = |audiences: Value| json!({"audiences": audiences, "expirationSeconds": 3607, "boundObjectRef": bound_pod("Pod", Some("v1"), Some(POD_UID))});
    assert!(!was_called(&policy, &token_request("ns", "web", kubelet(), spec(Value::Null)), names::TOKEN_REQUESTS));
    assert!(!was_called(&policy, &token_request("ns", "web", kubelet(), spec(json!([""]))), names::TOKEN_REQUESTS));
    assert!(was_called(
        &policy,
        &token_request("ns", "web", kubelet(), spec(json!([API_AUDIENCE]))),
        names::TOKEN_REQUESTS
    ));
    // The server's learned audiences widen the skip through the same function.
    let learned = [API_AUDIENCE.to_string()];
    let configurations = webhooks::configurations_for_audiences(&policy, &Options::new(shipped_endpoint()), &learned);
    let webhook = configurations.validating.webhooks.iter().find(|w| w.name == names::TOKEN_REQUESTS).expect("webhook");
    let condition =
        webhook.match_conditions.iter().find(|c| c.name == condition::KUBELET_AUTOMOUNT_TOKENS).expect("condition");
    assert!(!evaluate(&condition.expression, &token_request("ns", "web", kubelet(), spec(json!([API_AUDIENCE]))))
        .expect("evaluates"));
}

#[test]
fn only_service_account_token_secrets_and_their_account_changes_are_sent() {
    let policy = hand_policy();
    let sa = "kubernetes.io/service-account-token";
    let cases = [
        (secret_request("team-a", "CREATE", secret("Opaque", None), None), false),
        (secret_request("team-a", "CREATE", secret("kubernetes.io/tls", Some("web")), None), false),
        (secret_request("team-a", "CREATE", secret(sa, Some("web")), None), true),
        (secret_request("team-a", "CREATE", secret(sa, None), None), true),
        (secret_request("team-a", "UPDATE", secret(sa, Some("web")), Some(secret(sa, Some("web")))), false),
        (secret_request("team-a", "UPDATE", secret(sa, Some("admin")), Some(secret(sa, Some("web")))), true),
        (secret_request("team-a", "UPDATE", secret(sa, Some("web")), Some(secret(sa, None))), true),
        (secret_request("team-a", "UPDATE", secret(sa, None), Some(secret(sa, Some("web")))), true),
        (secret_request("team-a", "UPDATE", secret(sa, None), Some(secret(sa, None))), false),
    ];
    for (request, expected) in cases {
        assert_eq!(was_called(&policy, &request, names::SECRETS), expected, "{request}");
    }
}

#[test]
fn only_csi_drivers_with_token_requests_are_sent() {
    let policy = hand_policy();
    assert!(!was_called(&policy, &csi_driver_request(None), names::CSI_DRIVERS));
    assert!(!was_called(&policy, &csi_driver_request(Some(json!([]))), names::CSI_DRIVERS));
    let vault = csi_driver_request(Some(json!([{"audience": "vault"}])));
    assert!(was_called(&policy, &vault, names::CSI_DRIVERS));
    check(&policy, &cluster(&[], false), &csi_driver_request(None)).expect("property");
}

#[test]
fn only_workload_changes_of_the_pod_template_are_sent() {
    let policy = hand_policy();
    let store = cluster(&["team-a"], false);
    let vault = template(None, vec![projected("vault", json!([token(Some("vault"), 3600, "token")]))]);
    let plain = template(None, vec![]);
    for (kind, (_, name, _, _)) in WORKLOAD_KINDS.iter().enumerate() {
        let create = workload_request(kind, "prod", workload(kind, "prod", Some(&vault), 1, false), None, alice());
        assert!(was_called(&policy, &create, names::WORKLOADS), "{name} CREATE");
        let scale = workload_request(
            kind,
            "prod",
            workload(kind, "prod", Some(&vault), 3, false),
            Some(workload(kind, "prod", Some(&vault), 1, false)),
            alice(),
        );
        assert!(!was_called(&policy, &scale, names::WORKLOADS), "{name}: a scale keeps the template");
        check(&policy, &store, &scale).expect("property");
        let changed = workload_request(
            kind,
            "prod",
            workload(kind, "prod", Some(&vault), 1, false),
            Some(workload(kind, "prod", Some(&plain), 1, false)),
            alice(),
        );
        assert!(was_called(&policy, &changed, names::WORKLOADS), "{name}: a new template");
        let deleting = workload_request(
            kind,
            "prod",
            workload(kind, "prod", Some(&vault), 1, true),
            Some(workload(kind, "prod", Some(&plain), 1, false)),
            alice(),
        );
        assert!(!was_called(&policy, &deleting, names::WORKLOADS), "{name}: being deleted");
        check(&policy, &store, &deleting).expect("property");
    }
    // A ReplicationController may have no template at all, before and after.
    let bare = workload_request(
        3,
        "prod",
        workload(3, "prod", None, 2, false),
        Some(workload(3, "prod", None, 1, false)),
        alice(),
    );
    assert!(!was_called(&policy, &bare, names::WORKLOADS));
}

#[test]
fn the_checked_in_configurations_are_generated_from_the_shipped_policy() {
    let root = env!("CARGO_MANIFEST_DIR");
    let policy =
        Policy::parse(&std::fs::read_to_string(format!("{root}/{SHIPPED_POLICY}")).expect("policy")).expect("valid");
    let expected =
        webhooks::render_yaml(&policy, &configurations(&policy, &Options::new(shipped_endpoint()))).expect("yaml");
    let actual = std::fs::read_to_string(format!("{root}/{SHIPPED_WEBHOOKS}")).unwrap_or_default();
    assert!(
        actual == expected,
        "{SHIPPED_WEBHOOKS} is not what the policy computes; regenerate it with\n  cargo run -- webhooks --policy {SHIPPED_POLICY} --service {SHIPPED_SERVICE} > {SHIPPED_WEBHOOKS}"
    );
}

// ---------------------------------------------------------------------------------------------
// The property over generated policies and requests
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// One glob semantics: the CEL expression the configurations carry for a list of globs
    /// matches exactly the names the policy's own matcher matches.
    #[test]
    fn cel_and_the_policy_read_every_glob_alike(
        patterns in prop::collection::vec(glob_strategy(), 1..3),
        names in prop::collection::vec(name_strategy(), 8),
    ) {
        let Ok(globs) = tokengate::policy::globs::Globs::compile(Some(&patterns)) else {
            return Ok(());
        };
        let regex = globs.re2().expect("a non-empty list matches something");
        let expression = format!("request.namespace.matches({})", webhooks::conditions::cel_string(&regex));
        for name in &names {
            let cel = evaluate(&expression, &json!({"namespace": name})).map_err(TestCaseError::fail)?;
            prop_assert_eq!(cel, globs.is_match(name), "globs {:?} ({}) on {:?}", patterns, regex, name);
        }
    }
}

#[test]
fn globs_with_an_empty_alternative_or_a_leading_double_star_read_alike() {
    for (pattern, name, expected) in [
        ("istio-system{,-*}", "istio-system", true),
        ("istio-system{,-*}", "istio-system-canary", true),
        ("istio-system{,-*}", "istio-systemx", false),
        ("**/team-a", "team-a", true),
        ("**/team-a", "xteam-a", false),
    ] {
        let globs = tokengate::policy::globs::Globs::compile(Some(&[pattern.to_string()])).expect("valid");
        assert_eq!(globs.is_match(name), expected, "policy: {pattern} on {name}");
        let regex = globs.re2().expect("regex");
        let expression = format!("request.namespace.matches({})", webhooks::conditions::cel_string(&regex));
        assert_eq!(evaluate(&expression, &json!({"namespace": name})), Ok(expected), "CEL: {pattern} on {name}");
    }
}

#[derive(Debug, Clone)]
struct Generated {
    api_audiences: Vec<&'static str>,
    injections: Vec<(Option<String>, Option<u8>, bool)>,
    exempt_namespaces: Vec<String>,
    /// `exemptions.podNamespaces`: `None` leaves the default.
    pod_namespaces: Option<Vec<String>>,
    /// Whether the user `ops-admin` and the group `platform:exempt` are exempt.
    exempt_people: bool,
}

fn policy_strategy() -> impl Strategy<Value = Generated> {
    let audiences = prop::sample::subsequence(vec![API_AUDIENCE, OTHER_API_AUDIENCE], 0..=2);
    let injection = (prop::option::of(namespace_glob()), prop::option::of(0u8..6), any::<bool>());
    let injections = prop::collection::vec(injection, 0..=2);
    let exempt = prop::collection::vec(namespace_glob(), 0..=2);
    let pod_namespaces = prop::option::of(prop::collection::vec(namespace_glob(), 0..=2));
    (audiences, injections, exempt, pod_namespaces, any::<bool>()).prop_map(
        |(api_audiences, injections, exempt_namespaces, pod_namespaces, exempt_people)| Generated {
            api_audiences,
            injections,
            exempt_namespaces,
            pod_namespaces,
            exempt_people,
        },
    )
}

fn selector(kind: u8) -> &'static str {
    match kind {
        0 => r#"{matchLabels: {app: web}}"#,
        1 => r#"{matchExpressions: [{key: tier, operator: In, values: [a, b]}]}"#,
        2 => r#"{matchExpressions: [{key: tier, operator: NotIn, values: [a]}]}"#,
        3 => r#"{matchExpressions: [{key: app, operator: Exists}]}"#,
        4 => r#"{matchExpressions: [{key: app, operator: DoesNotExist}]}"#,
        _ => r#"{matchLabels: {app: web}, matchExpressions: [{key: tier, operator: NotIn, values: [c]}]}"#,
    }
}

impl Generated {
    /// The policy, or `None` when a generated glob does not compile (globset refuses it).
    fn policy(&self) -> Option<Policy> {
        let mut text = String::from("apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec:\n");
        text.push_str(&format!("  apiServerAudiences: {:?}\n", self.api_audiences));
        text.push_str(
            "  audiences:\n    - audience: sts.amazonaws.com\n    - audience: vault\n      namespaces: [\"team-*\"]\n",
        );
        text.push_str("  injections:\n");
        for (i, (namespaces, selector_kind, by_annotation)) in self.injections.iter().enumerate() {
            text.push_str(&format!("    - name: i{i}\n      match:\n"));
            if let Some(glob) = namespaces {
                text.push_str(&format!("        namespaces: [{glob:?}]\n"));
            }
            if let Some(kind) = selector_kind {
                text.push_str(&format!("        podSelector: {}\n", selector(*kind)));
            }
            if *by_annotation {
                text.push_str("        serviceAccountAnnotation: eks.amazonaws.com/role-arn\n");
            }
            text.push_str(&format!(
                "      volume: {{name: tok-{i}, audience: sts.amazonaws.com, expirationSeconds: 3600}}\n      mount: {{mountPath: /var/run/t{i}}}\n"
            ));
        }
        if self.injections.is_empty() {
            text.push_str("    []\n");
        }
        let (users, groups) =
            if self.exempt_people { (vec!["ops-admin"], vec!["platform:exempt"]) } else { (vec![], vec![]) };
        let pod_namespaces =
            self.pod_namespaces.as_ref().map(|n| format!(", podNamespaces: {n:?}")).unwrap_or_default();
        text.push_str(&format!(
            "  exemptions: {{namespaces: {:?}, users: {users:?}, groups: {groups:?}{pod_namespaces}}}\n",
            self.exempt_namespaces
        ));
        match Policy::parse(&text) {
            Ok(policy) => Some(policy),
            Err(e) if text.contains("invalid glob") || e.to_string().contains("invalid glob") => None,
            Err(e) => panic!("generated policy is invalid: {e}\n{text}"),
        }
    }
}

fn volume_strategy() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => Just(automount()),
        1 => Just(projected("kube-api-access-q", json!([token(Some(API_AUDIENCE), 3607, "token"), ca_source()]))),
        1 => Just(projected("kube-api-access-q", json!([token(None, 3600, "token")]))),
        1 => Just(projected("kube-api-access-q", json!([token(Some("vault"), 3607, "token")]))),
        1 => Just(projected("kube-api-access-q", json!([token(None, 3607, "token"), token(None, 3607, "other")]))),
        1 => Just(projected("vault", json!([token(Some("vault"), 3600, "token")]))),
        1 => Just(projected("sts", json!([token(Some("sts.amazonaws.com"), 3600, "token")]))),
        1 => Just(projected("empty", Value::Null)),
        1 => Just(projected("config", json!([ca_source()]))),
        1 => Just(json!({"name": "secrets", "csi": {"driver": "d.example.com"}})),
        1 => Just(json!({"name": "ebs", "awsElasticBlockStore": {"volumeID": "vol-1"}})),
        2 => Just(json!({"name": "data", "emptyDir": {}})),
    ]
}

fn labels_strategy() -> impl Strategy<Value = Option<Value>> {
    let app = prop::option::of(prop::sample::select(vec!["web", "db"]));
    let tier = prop::option::of(prop::sample::select(vec!["a", "b", "c"]));
    (app, tier).prop_map(|(app, tier)| {
        let mut labels = serde_json::Map::new();
        if let Some(app) = app {
            labels.insert("app".into(), json!(app));
        }
        if let Some(tier) = tier {
            labels.insert("tier".into(), json!(tier));
        }
        (!labels.is_empty()).then_some(Value::Object(labels))
    })
}

/// A requester: mostly an ordinary user, sometimes the break-glass group or a user or group the
/// generated policy may exempt.
fn someone(who: u8) -> Value {
    match who {
        0 => user("bob", &["system:authenticated", "tokengate:breakglass"]),
        1 => user("ops-admin", &["system:authenticated"]),
        2 => user("carol", &["system:authenticated", "platform:exempt"]),
        _ => alice(),
    }
}

/// The cluster's own API server audiences: what it fills into a TokenRequest that named none.
const CLUSTER_API_AUDIENCES: [&str; 2] = [API_AUDIENCE, OTHER_API_AUDIENCE];

/// Spellings of `boundObjectRef.apiVersion` the API server accepts (it does not validate them).
const API_VERSION_SPELLINGS: [&str; 7] = ["v1", "/v1", "/", "", "a/b/c", "apps/v1", "v2"];

/// A TokenRequest as sent (`audiences` raw) and as validating webhooks then see it: the API
/// server fills in all of its audiences when the caller named none.
fn token_requests() -> impl Strategy<Value = Value> {
    let audiences = prop_oneof![
        Just(Value::Null),
        Just(json!([])),
        Just(json!([""])),
        Just(json!([API_AUDIENCE])),
        Just(json!([OTHER_API_AUDIENCE])),
        Just(json!(["vault"])),
        Just(json!(["vault", "vault"])),
        Just(json!(["sts.amazonaws.com"])),
        Just(json!([API_AUDIENCE, "vault"])),
        Just(json!([API_AUDIENCE, API_AUDIENCE])),
        Just(json!([API_AUDIENCE, OTHER_API_AUDIENCE])),
    ];
    let varied = (
        prop::sample::select(vec!["Pod", "Pod", "Pod", "Secret", ""]),
        prop::option::of(prop::sample::select(API_VERSION_SPELLINGS.to_vec())),
        prop::sample::select(vec!["p1", "p1", "p1", "p2", ""]),
        prop::option::of(prop::sample::select(vec![POD_UID, POD_UID, POD_UID, "0000-other", ""])),
    )
        .prop_map(|(kind, api_version, name, uid)| {
            if kind.is_empty() {
                return Value::Null;
            }
            let mut bound = bound_pod(kind, api_version, uid);
            bound["name"] = json!(name);
            bound
        });
    let bound = prop_oneof![3 => Just(bound_pod("Pod", Some("v1"), Some(POD_UID))), 2 => varied];
    let node = prop::sample::select(vec![NODE, NODE, "node-2", ""]);
    let namespace = prop::sample::select(NAMESPACES.to_vec());
    let seconds = prop::sample::select(vec![3607i64, 3600, 86400]);
    (namespace, prop::option::of(node), audiences, seconds, bound, 0u8..6).prop_map(
        |(namespace, node, audiences, seconds, bound, who)| {
            let user_info = match node {
                Some(node) => user(&format!("system:node:{node}"), &["system:nodes", "system:authenticated"]),
                None => someone(who),
            };
            let seen = match audiences.as_array() {
                Some(list) if !list.is_empty() => audiences.clone(),
                _ => json!(CLUSTER_API_AUDIENCES),
            };
            let mut request = token_request(
                namespace,
                "web",
                user_info,
                json!({"audiences": seen, "expirationSeconds": seconds, "boundObjectRef": bound}),
            );
            request["rawAudiences"] = audiences;
            request
        },
    )
}

/// Requests no webhook rule covers, or covers only in part: other operations and subresources.
fn uncovered_requests() -> impl Strategy<Value = Value> {
    let namespace = prop::sample::select(NAMESPACES.to_vec());
    (namespace, prop::sample::select(vec!["UPDATE", "DELETE", "CONNECT"]), prop::sample::select(vec![0u8, 1, 2, 3]))
        .prop_map(|(namespace, operation, shape)| {
            let mut request = match shape {
                0 => pod_request(
                    namespace,
                    pod(
                        "web",
                        namespace,
                        None,
                        None,
                        vec![projected("vault", json!([token(Some("forbidden"), 3600, "token")]))],
                    ),
                    alice(),
                ),
                1 => token_request(
                    namespace,
                    "web",
                    alice(),
                    json!({"audiences": ["forbidden"], "expirationSeconds": 600}),
                ),
                2 => secret_request(
                    namespace,
                    "CREATE",
                    secret("kubernetes.io/service-account-token", Some("admin")),
                    None,
                ),
                _ => pod_request(namespace, pod("web", namespace, None, None, vec![]), alice()),
            };
            request["operation"] = json!(operation);
            if shape == 3 {
                request["subResource"] = json!("ephemeralcontainers");
            }
            if shape == 2 {
                request["operation"] = json!("DELETE");
                request["oldObject"] = request["object"].clone();
                request["object"] = Value::Null;
            }
            request
        })
}

fn request_strategy() -> impl Strategy<Value = Value> {
    let namespace = prop::sample::select(NAMESPACES.to_vec());
    let pods =
        (namespace.clone(), labels_strategy(), any::<bool>(), prop::collection::vec(volume_strategy(), 0..4), 0u8..6)
            .prop_map(|(namespace, labels, mirror, mut volumes, who)| {
                // Unique volume names, as the API server requires.
                let mut seen = std::collections::HashSet::new();
                volumes.retain(|v| seen.insert(v["name"].as_str().unwrap_or_default().to_string()));
                let annotations = mirror.then(|| json!({"kubernetes.io/config.mirror": "x"}));
                let user_info = someone(who);
                pod_request(namespace, pod("web", namespace, labels, annotations, volumes), user_info)
            });
    let sa = "kubernetes.io/service-account-token";
    let secrets = (
        prop::sample::select(vec!["Opaque", sa]),
        prop::option::of(prop::sample::select(vec!["web", "admin"])),
        prop::option::of(prop::option::of(prop::sample::select(vec!["web", "admin"]))),
        namespace,
        0u8..6,
    )
        .prop_map(move |(type_, account, old, namespace, who)| {
            let mut request = match old {
                None => secret_request(namespace, "CREATE", secret(type_, account), None),
                Some(old) => secret_request(namespace, "UPDATE", secret(type_, account), Some(secret(type_, old))),
            };
            request["userInfo"] = someone(who);
            for object in ["object", "oldObject"] {
                if request[object].is_object() {
                    request[object]["metadata"]["namespace"] = json!(namespace);
                }
            }
            request
        });
    let driver_specs = prop_oneof![
        Just(None),
        Just(Some(json!([]))),
        Just(Some(json!([{"audience": "vault", "expirationSeconds": 3600}])))
    ];
    let drivers = (driver_specs, 0u8..6).prop_map(|(token_requests, who)| {
        let mut request = csi_driver_request(token_requests);
        request["userInfo"] = someone(who);
        request
    });
    let templates = || {
        (labels_strategy(), prop::collection::vec(volume_strategy(), 0..3)).prop_map(|(labels, mut volumes)| {
            let mut seen = std::collections::HashSet::new();
            volumes.retain(|v| seen.insert(v["name"].as_str().unwrap_or_default().to_string()));
            template(labels, volumes)
        })
    };
    let workloads = (
        0..WORKLOAD_KINDS.len(),
        prop::sample::select(NAMESPACES.to_vec()),
        templates(),
        prop::option::of(prop::option::of(templates())),
        any::<bool>(),
        0u8..6,
    )
        .prop_map(|(kind, namespace, new, old, deleting, who)| {
            // old: None = CREATE; Some(None) = UPDATE keeping the template; Some(Some(t)) = UPDATE to it.
            let object = workload(kind, namespace, Some(&new), 2, deleting);
            let old = old.map(|old| workload(kind, namespace, Some(old.as_ref().unwrap_or(&new)), 1, false));
            workload_request(kind, namespace, object, old, someone(who))
        });
    prop_oneof![4 => pods, 4 => token_requests(), 1 => secrets, 1 => drivers, 2 => workloads, 1 => uncovered_requests()]
}

/// What NodeRestriction has refused, in every version, before any webhook sees a kubelet's
/// TokenRequest (upstream `admitServiceAccount` in
/// `plugin/pkg/admission/noderestriction/admission.go`), restated: a node name, a binding to a
/// `v1` Pod with a name and a uid, a pod that exists, runs on that node and has that uid. Since
/// 1.33 it also refuses more than one audience entry as sent (`rawAudiences`) and audiences
/// the pod does not reference; those are left to reach tokengate here, as on older clusters,
/// where tokengate's own node check is what stands. Requests it refuses are not checked.
fn node_restriction_admits(request: &Value) -> bool {
    let Some(node) = request["userInfo"]["username"].as_str().and_then(|u| u.strip_prefix("system:node:")) else {
        return true;
    };
    let bound = &request["object"]["spec"]["boundObjectRef"];
    let namespace = request["namespace"].as_str().unwrap_or_default();
    // Every namespace's p1 runs on NODE with POD_UID; nothing else exists.
    let pod_exists = bound["name"] == "p1" && NAMESPACES.contains(&namespace);
    !node.is_empty()
        && bound["kind"] == "Pod"
        && bound["apiVersion"] == "v1"
        && bound["uid"].as_str().is_some_and(|uid| !uid.is_empty())
        && pod_exists
        && node == NODE
        && bound["uid"] == POD_UID
}

/// The request as the API server sends it: without the generator's own bookkeeping.
fn as_sent(mut request: Value) -> Value {
    if let Some(object) = request.as_object_mut() {
        object.remove("rawAudiences");
    }
    request
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_request_the_configurations_keep_from_tokengate_is_allowed_unchanged(generated in policy_strategy(), request in request_strategy()) {
        prop_assume!(node_restriction_admits(&request));
        let Some(policy) = generated.policy() else { return Ok(()) };
        let store = cluster(&NAMESPACES, true);
        check(&policy, &store, &as_sent(request))?;
    }
}

/// The generators reach both outcomes of every webhook, and every match condition is seen both
/// true and false (the property is not vacuous).
#[test]
fn generated_requests_reach_both_outcomes_of_every_webhook_and_condition() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen: HashMap<(String, bool), usize> = HashMap::new();
    let mut conditions_seen: HashMap<(String, bool), usize> = HashMap::new();
    let mut all_conditions = std::collections::BTreeSet::new();
    for _ in 0..1500 {
        let generated = policy_strategy().new_tree(&mut runner).expect("tree").current();
        let request = request_strategy().new_tree(&mut runner).expect("tree").current();
        if !node_restriction_admits(&request) {
            continue;
        }
        let Some(policy) = generated.policy() else { continue };
        let request = as_sent(request);
        for (name, is_called) in outcomes(&policy, &request) {
            *seen.entry((name, is_called)).or_default() += 1;
        }
        let configurations = configurations(&policy, &Options::new(shipped_endpoint()));
        for (webhook, _) in webhooks_for(&configurations, &request) {
            for condition in &webhook.match_conditions {
                let name = format!("{} / {}", webhook.name, condition.name);
                all_conditions.insert(name.clone());
                let value = evaluate(&condition.expression, &request).expect("evaluates");
                *conditions_seen.entry((name, value)).or_default() += 1;
            }
        }
    }
    for name in [
        names::PODS_MUTATE,
        names::PODS_VALIDATE,
        names::TOKEN_REQUESTS,
        names::CSI_DRIVERS,
        names::SECRETS,
        names::WORKLOADS,
    ] {
        for is_called in [true, false] {
            assert!(
                seen.contains_key(&(name.to_string(), is_called)),
                "{name} never {}: {seen:?}",
                if is_called { "called" } else { "skipped" }
            );
        }
    }
    for name in &all_conditions {
        // The break-glass condition is false only for the break-glass group, which `someone`
        // generates; every other condition must be seen both ways too.
        for value in [true, false] {
            assert!(
                conditions_seen.contains_key(&(name.clone(), value)),
                "condition {name} never {value}: {conditions_seen:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------------

fn run_webhooks(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .arg("webhooks")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("tokengate runs")
}

#[test]
fn the_command_prints_both_configurations_for_a_url_or_service() {
    let dir = std::env::temp_dir().join(format!("tokengate-webhooks-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").expect("write");
    let ca_path = ca.to_str().expect("utf-8 path");
    let output = run_webhooks(&[
        "--policy",
        SHIPPED_POLICY,
        "--url",
        "https://127.0.0.1:8443",
        "--ca-bundle",
        ca_path,
        "--annotation",
        "example.com/owner=platform",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let documents: Vec<webhooks::WebhookConfiguration> =
        text.split("\n---\n").map(|doc| serde_yaml_ng::from_str(doc).expect("YAML")).collect();
    let kinds: Vec<&str> = documents.iter().map(|d| d.kind.as_str()).collect();
    assert_eq!(kinds, ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]);
    let expected_bundle = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUIKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=";
    for webhook in documents.iter().flat_map(|d| d.webhooks.iter()) {
        let url = webhook.client_config.url.as_deref().expect("url");
        assert!(url == "https://127.0.0.1:8443/validate" || url == "https://127.0.0.1:8443/mutate", "{url}");
        assert_eq!(webhook.client_config.ca_bundle.as_deref(), Some(expected_bundle));
    }
    assert_eq!(documents[0].metadata.annotations["example.com/owner"], "platform");

    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello").expect("write");
    let output = run_webhooks(&[
        "--policy",
        SHIPPED_POLICY,
        "--url",
        "https://x",
        "--ca-bundle",
        not_pem.to_str().expect("path"),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a PEM file"));
    for bad in [
        vec!["--policy", SHIPPED_POLICY],
        vec!["--policy", SHIPPED_POLICY, "--service", "no-slash"],
        vec!["--policy", SHIPPED_POLICY, "--service", "a/b", "--url", "https://x"],
        vec!["--policy", "does/not/exist.yaml", "--service", "a/b"],
    ] {
        assert_eq!(run_webhooks(&bad).status.code(), Some(2), "{bad:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
