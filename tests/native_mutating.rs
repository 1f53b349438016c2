//! The native injections (`tokengate webhooks --native`'s MutatingAdmissionPolicy), evaluated
//! with a CEL interpreter (the `cel` crate) as the API server evaluates a MutatingAdmissionPolicy
//! (`k8s.io/apiserver/pkg/admission/plugin/policy/mutating`): `matchConstraints`, then
//! `matchConditions`, then `variables`, then every mutation in order, each on the object the ones
//! before it patched, its JSON patch applied with the `json-patch` crate.
//!
//! The property: for generated policies (injections matched by namespaces, pod labels or a
//! service-account annotation; required or optional; into init containers or not; overlapping
//! ones) and pods (existing volumes, mounts and variables, equal or colliding; the skip
//! annotation; mirror pods; exempt namespaces and requesters; several containers), a pod the
//! policy mutates is one the webhook allows, and the policy's pod is the webhook's (`review`'s
//! patch applied); the narrowed `pods.validate` skips the mutated pod only when `review` finds
//! nothing missing there. A pod the policy skips is one the webhook leaves alone, one the narrowed
//! `pods.mutate` still sends to tokengate, or the break-glass group's (which no webhook sees).

mod admission_cel;

use std::collections::{BTreeSet, HashMap};

use admission_cel::*;
use base64::Engine;
use proptest::prelude::*;
use serde_json::{json, Value};
use tokengate::cluster::ObjectStore;
use tokengate::policy::Policy;
use tokengate::review::Webhook as Endpoint;
use tokengate::webhooks::conditions::names::BREAKGLASS;
use tokengate::webhooks::native::objects::MutatingAdmissionPolicy;
use tokengate::webhooks::native::{self, native_for, ServedApis};
use tokengate::webhooks::{configurations, names, Configurations, Endpoint as Service, Options};

// ---------------------------------------------------------------------------------------------
// Evaluating the MutatingAdmissionPolicy
// ---------------------------------------------------------------------------------------------

/// The `cel` crate has no typed object construction (`JSONPatch{op: 'add', ...}`,
/// `Object.spec.volumes{name: ...}`): this rewrites each into the map literal with the same fields
/// (`{'op': 'add', ...}`), which is what the API server turns the typed value into when it builds
/// the patch (the value's JSON: the fields set, nothing else). String literals are copied as they
/// are; a type name is an identifier path right before `{`, and inside such braces every field
/// name (an identifier right after `{` or `,`, followed by `:`) is quoted. Map literals the
/// generated CEL writes have quoted keys already.
fn without_typed_objects(expression: &str) -> String {
    let chars: Vec<char> = expression.chars().collect();
    let mut out = String::new();
    // For each open brace: whether it constructs a typed object.
    let mut braces: Vec<bool> = Vec::new();
    let mut i = 0;
    let field_start = |out: &str| out.trim_end().ends_with('{') || out.trim_end().ends_with(',');
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' {
            let quote = c;
            out.push(c);
            i += 1;
            while i < chars.len() && chars[i] != quote {
                if chars[i] == '\\' {
                    out.push(chars[i]);
                    i += 1;
                }
                out.push(chars[i]);
                i += 1;
            }
            out.push(quote);
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let typed =
                (word == "JSONPatch" || word == "Object" || word.starts_with("Object.")) && chars.get(i) == Some(&'{');
            if typed {
                continue; // the `{` that follows opens a typed object
            }
            if braces.last() == Some(&true) && chars.get(i) == Some(&':') && field_start(&out) {
                out.push_str(&format!("'{word}'"));
            } else {
                out.push_str(&word);
            }
            continue;
        }
        if c == '{' {
            let typed = out.ends_with(|p: char| p.is_ascii_alphanumeric() || p == '_')
                || chars[..i]
                    .iter()
                    .rev()
                    .take_while(|p| p.is_ascii_alphanumeric() || **p == '_' || **p == '.')
                    .count()
                    > 0;
            braces.push(typed);
        } else if c == '}' {
            braces.pop();
        }
        out.push(c);
        i += 1;
    }
    out
}

/// A CEL value as JSON (what a JSONPatch value becomes).
fn to_json(value: &cel::Value) -> Result<Value, String> {
    Ok(match value {
        cel::Value::Null => Value::Null,
        cel::Value::Bool(b) => json!(b),
        cel::Value::Int(i) => json!(i),
        cel::Value::UInt(u) => json!(u),
        cel::Value::String(s) => json!(s.as_str()),
        cel::Value::List(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        cel::Value::Map(map) => {
            let mut object = serde_json::Map::new();
            for (key, value) in map.map.iter() {
                let cel::objects::Key::String(key) = key else { return Err(format!("a map key {key:?}")) };
                object.insert(key.to_string(), to_json(value)?);
            }
            Value::Object(object)
        }
        other => return Err(format!("a value JSON has not: {other:?}")),
    })
}

/// What the API server makes of the policy for one request.
#[derive(Debug)]
enum Outcome {
    NotCovered,
    /// The first match condition that is false.
    Skipped(String),
    /// The pod after every mutation.
    Mutated(Value),
}

fn evaluate(policy: &MutatingAdmissionPolicy, request: &Value) -> Result<Outcome, String> {
    let spec = &policy.spec;
    if !spec.match_constraints.resource_rules.iter().any(|rule| rule_covers(rule, request)) {
        return Ok(Outcome::NotCovered);
    }
    let none = HashMap::new();
    for condition in &spec.match_conditions {
        match run(&condition.expression, request, &none).map_err(|e| format!("{}: {e}", condition.name))? {
            cel::Value::Bool(true) => {}
            cel::Value::Bool(false) => return Ok(Outcome::Skipped(condition.name.clone())),
            other => return Err(format!("{} is {other:?}", condition.name)),
        }
    }
    let mut variables = HashMap::new();
    for variable in &spec.variables {
        let value = run(&variable.expression, request, &variables).map_err(|e| format!("{}: {e}", variable.name))?;
        variables.insert(variable.name.clone(), value);
    }
    let mut current = request.clone();
    for mutation in &spec.mutations {
        assert_eq!(mutation.patch_type, "JSONPatch");
        let expression = without_typed_objects(&mutation.json_patch.expression);
        let operations = to_json(&run(&expression, &current, &variables)?)?;
        let patch: json_patch::Patch =
            serde_json::from_value(operations.clone()).map_err(|e| format!("not a JSON patch: {e}: {operations}"))?;
        json_patch::patch(&mut current["object"], &patch).map_err(|e| format!("does not apply: {e}: {operations}"))?;
    }
    Ok(Outcome::Mutated(current["object"].clone()))
}

/// The webhook's answer on `/mutate`: whether it allows the pod, the pod after its patch, and
/// whether it found violations.
fn webhook_mutation(request: &Value, policy: &Policy, cluster: &ObjectStore) -> (bool, Value, bool) {
    let response = response(request, Endpoint::Mutate, policy, cluster);
    let mut pod = request["object"].clone();
    if let Some(patch) = response["patch"].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD.decode(patch).expect("base64");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("JSON patch");
        json_patch::patch(&mut pod, &patch).expect("the webhook's patch applies");
    }
    let violations = response["auditAnnotations"]["violations"].is_string();
    (response["allowed"].as_bool().expect("allowed"), pod, violations)
}

/// Whether `webhook` calls tokengate for `request`; a condition that fails to evaluate counts
/// as calling it (`failurePolicy: Fail` refuses the pod).
fn calls(webhook: &tokengate::webhooks::Webhook, request: &Value) -> bool {
    webhook_calls(webhook, request).unwrap_or(true)
}

/// The full webhook configurations and the narrowed ones.
fn full_and_narrowed(policy: &Policy, native: &native::Native) -> (Configurations, Configurations) {
    let options = Options::new(Service::Service("tokengate-system/tokengate".parse().expect("service")));
    let full = configurations(policy, &options);
    (full.clone(), native::narrow::narrow(policy, full, native))
}

fn webhook_named<'a>(configurations: &'a Configurations, name: &str) -> Option<&'a tokengate::webhooks::Webhook> {
    configurations.mutating.webhooks.iter().chain(&configurations.validating.webhooks).find(|w| w.name == name)
}

// ---------------------------------------------------------------------------------------------
// Generated policies and pods
// ---------------------------------------------------------------------------------------------

const ROLE_ANNOTATION: &str = "eks.amazonaws.com/role-arn";

/// The injections a generated policy picks from.
fn injection(which: u8, namespaces: &str, required: bool) -> String {
    let required = format!("required: {required}");
    match which {
        0 => format!("- {{name: azure, {required}, match: {{podSelector: {{matchLabels: {{azure.workload.identity/use: 'true'}}}}}},\n    volume: {{name: azure-identity-token, audience: 'api://AzureADTokenExchange', expirationSeconds: 3600, path: azure-identity-token}},\n    mount: {{mountPath: /var/run/secrets/azure/tokens}},\n    env: [{{name: AZURE_FEDERATED_TOKEN_FILE, value: /var/run/secrets/azure/tokens/azure-identity-token}}]}}"),
        1 => format!("- {{name: vault, {required}, match: {{namespaces: {namespaces}}},\n    volume: {{name: vault-token, audience: vault, expirationSeconds: 3600, path: token}},\n    mount: {{mountPath: /var/run/secrets/vault, containers: [app, 'side*'], initContainers: true}},\n    env: [{{name: VAULT_TOKEN_FILE, value: /var/run/secrets/vault/token}}, {{name: VAULT_ADDR, value: 'https://vault:8200'}}]}}"),
        2 => format!("- {{name: aws, {required}, match: {{namespaces: {namespaces}, serviceAccountAnnotation: {ROLE_ANNOTATION}}},\n    volume: {{name: aws-iam-token, audience: sts.amazonaws.com, expirationSeconds: 86400, path: token}},\n    mount: {{mountPath: /var/run/secrets/eks.amazonaws.com/serviceaccount, initContainers: true}},\n    env: [{{name: AWS_ROLE_ARN, valueFromServiceAccountAnnotation: {ROLE_ANNOTATION}}}]}}"),
        3 => format!("- {{name: spire, {required}, match: {{namespaces: {namespaces}, podSelector: {{matchExpressions: [{{key: tier, operator: In, values: [web, api]}}]}}}},\n    volume: {{name: spire-token, audience: spire-server, expirationSeconds: 600, path: token}},\n    mount: {{mountPath: /run/spire, containers: ['*']}}}}"),
        4 => format!("- {{name: vault-other, {required}, match: {{namespaces: {namespaces}}},\n    volume: {{name: vault-other-token, audience: vault, expirationSeconds: 3600, path: token}},\n    mount: {{mountPath: /var/run/secrets/vault-other}},\n    env: [{{name: VAULT_ADDR, value: 'https://other:8200'}}]}}"),
        _ => format!("- {{name: unclean, {required}, match: {{namespaces: {namespaces}}},\n    volume: {{name: unclean-token, audience: vault, expirationSeconds: 3600, path: token}},\n    mount: {{mountPath: /var/run/unclean/}}}}"),
    }
}

#[derive(Debug, Clone)]
struct Generated {
    mode: &'static str,
    injections: Vec<(u8, &'static str, bool)>,
    exempt_namespaces: Vec<&'static str>,
}

impl Generated {
    fn policy(&self) -> Policy {
        let injections: Vec<String> =
            self.injections.iter().map(|(w, n, r)| injection(*w, n, *r).replace("\n    ", " ")).collect();
        let text = format!(
            "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec:\n  mode: {}\n  apiServerAudiences: [{API_AUDIENCE}]\n  expiration: {{minSeconds: 600, maxSeconds: 86400}}\n  audiences:\n  - {{audience: vault}}\n  - {{audience: 'api://AzureADTokenExchange'}}\n  - {{audience: sts.amazonaws.com}}\n  - {{audience: spire-server}}\n  exemptions: {{namespaces: {:?}, users: [ops-admin]}}\n  injections:\n  {}\n",
            self.mode,
            self.exempt_namespaces,
            injections.join("\n  ")
        );
        Policy::parse(&text).unwrap_or_else(|e| panic!("generated policy is invalid: {e}\n{text}"))
    }
}

fn policy_strategy() -> impl Strategy<Value = Generated> {
    let namespaces = prop::sample::select(vec!["['team-*']", "['*']", "[prod, 'team-a']", "[ci]"]);
    let one = (prop::sample::select(vec![0u8, 0, 1, 1, 2, 3, 3, 4, 5]), namespaces, any::<bool>());
    (
        prop::sample::select(vec!["Enforce", "Warn", "Audit"]),
        prop::collection::vec(one, 1..4),
        prop::collection::vec(prop::sample::select(vec!["ci", "legacy-*"]), 0..=1),
    )
        .prop_map(|(mode, mut injections, exempt_namespaces)| {
            let mut seen = BTreeSet::new();
            injections.retain(|(which, _, _)| seen.insert(*which));
            Generated { mode, injections, exempt_namespaces }
        })
}

/// A container with some of the mounts and variables that make injections present or collide.
fn container_strategy(name: &'static str) -> impl Strategy<Value = Value> {
    let mounts = prop::sample::subsequence(
        vec![
            json!({"name": "vault-token", "mountPath": "/var/run/secrets/vault", "readOnly": true}),
            json!({"name": "cache", "mountPath": "/var/run/secrets/vault/token"}),
            json!({"name": "data", "mountPath": "/data"}),
            json!({"name": "azure-identity-token", "mountPath": "/var/run/secrets/azure/tokens/"}),
            json!({"name": "spire-token", "mountPath": "/run/spire", "readOnly": true}),
            json!({"name": "cache", "mountPath": "/run"}),
        ],
        0..=2,
    );
    let env = prop::sample::subsequence(
        vec![
            json!({"name": "VAULT_ADDR", "value": "https://vault:8200"}),
            json!({"name": "VAULT_ADDR", "value": "https://elsewhere"}),
            json!({"name": "VAULT_TOKEN_FILE", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
            json!({"name": "FOO", "value": "bar"}),
            json!({"name": "AZURE_FEDERATED_TOKEN_FILE", "value": "/var/run/secrets/azure/tokens/azure-identity-token"}),
        ],
        0..=2,
    );
    (prop::option::of(mounts), prop::option::of(env)).prop_map(move |(mounts, env)| {
        let mut container = json!({"name": name, "image": "example.com/app:1"});
        if let Some(mounts) = mounts {
            container["volumeMounts"] = json!(mounts);
        }
        if let Some(env) = env {
            container["env"] = json!(env);
        }
        container
    })
}

fn containers_strategy(
    names: Vec<&'static str>,
    range: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = Vec<Value>> {
    prop::sample::subsequence(names, range)
        .prop_flat_map(|names| names.into_iter().map(container_strategy).collect::<Vec<_>>())
}

fn pod_strategy() -> impl Strategy<Value = Value> {
    let labels = prop::option::of(prop::sample::subsequence(
        vec![("azure.workload.identity/use", "true"), ("tier", "web"), ("tier2", "db")],
        0..=3,
    ));
    let annotations = prop::option::of(prop::sample::select(vec![
        json!({"tokengate.dev/skip-injection": "azure"}),
        json!({"tokengate.dev/skip-injection": " spire , azure"}),
        json!({"tokengate.dev/skip-injection": "vault,spire"}),
        json!({"kubernetes.io/config.mirror": "x"}),
        json!({"other": "azure"}),
    ]));
    let volumes = prop::option::of(prop::sample::subsequence(
        vec![
            automount(),
            projected("vault-token", json!([token(Some("vault"), 3600, "token")])),
            projected("vault-token", json!([token(Some("vault"), 7200, "token")])),
            json!({"name": "data", "emptyDir": {}}),
            projected("spire-token", json!([token(Some("spire-server"), 600, "token")])),
            json!({"name": "azure-identity-token", "emptyDir": {}}),
        ],
        0..=3,
    ));
    (
        prop::sample::select(NAMESPACES.to_vec()),
        labels,
        annotations,
        volumes,
        containers_strategy(vec!["app", "sidecar", "db"], 1..=3),
        prop::option::of(containers_strategy(vec!["init", "side-init"], 1..=2)),
        prop::sample::select(vec!["web", "default"]),
        prop::sample::select(vec![0u8, 1, 2, 2, 2, 2, 2, 2]),
    )
        .prop_map(|(namespace, labels, annotations, volumes, containers, init, account, who)| {
            let mut metadata = json!({"name": "p", "namespace": namespace});
            if let Some(labels) = labels {
                metadata["labels"] = labels.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            }
            if let Some(annotations) = annotations {
                metadata["annotations"] = annotations;
            }
            let mut spec = json!({"serviceAccountName": account, "containers": containers});
            if let Some(volumes) = volumes {
                spec["volumes"] = json!(volumes);
            }
            if let Some(init) = init {
                spec["initContainers"] = json!(init);
            }
            let user = match who {
                0 => user("bob", &["system:authenticated", "tokengate:breakglass"]),
                1 => user("ops-admin", &["system:authenticated"]),
                _ => alice(),
            };
            pod_request(namespace, json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}), user)
        })
}

// ---------------------------------------------------------------------------------------------
// The property
// ---------------------------------------------------------------------------------------------

/// What one pod showed, for the check that the generators reach every outcome.
#[derive(Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    #[default]
    Nothing,
    /// Mutated, and the mutation changed the pod.
    Injected,
    /// Mutated, nothing to add.
    Unchanged,
    Skipped(String),
}

/// [`check_here`] on a thread with a large stack: the `cel` crate's parser recurses deeply on the
/// long expressions in a debug build.
fn check(policy: &Policy, cluster: &ObjectStore, request: &Value) -> Result<Seen, TestCaseError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn_scoped(scope, || check_here(policy, cluster, request))
            .expect("thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn check_here(policy: &Policy, cluster: &ObjectStore, request: &Value) -> Result<Seen, TestCaseError> {
    let native = native_for(policy, "tokengate", ServedApis::ALL);
    let Some(mutating) = native.mutating.first() else { return Ok(Seen::Nothing) };
    let (full, narrowed) = full_and_narrowed(policy, &native);
    let outcome = evaluate(&mutating.policy, request).map_err(TestCaseError::fail)?;
    let (allowed, webhook_pod, violations) = webhook_mutation(request, policy, cluster);
    match outcome {
        Outcome::NotCovered => Ok(Seen::Nothing),
        Outcome::Skipped(name) if name == BREAKGLASS => Ok(Seen::Skipped(name)),
        Outcome::Skipped(name) => {
            let untouched = allowed && !violations && webhook_pod == request["object"];
            let called = |c: &Configurations| webhook_named(c, names::PODS_MUTATE).is_some_and(|w| calls(w, request));
            prop_assert!(
                untouched || called(&narrowed) || !called(&full),
                "skipped ({name}) a pod the webhook changes or refuses and the narrowed webhook no longer receives: {request}"
            );
            Ok(Seen::Skipped(name))
        }
        Outcome::Mutated(pod) => {
            prop_assert!(allowed && !violations, "mutated a pod the webhook refuses or warns about: {request}");
            prop_assert_eq!(&pod, &webhook_pod, "the policy's pod is not the webhook's: {}", request);
            let still_mutated = webhook_named(&narrowed, names::PODS_MUTATE).is_some_and(|w| calls(w, request));
            prop_assert!(!still_mutated, "the narrowed pods.mutate still receives a pod the policy mutates: {request}");
            let mut after = request.clone();
            after["object"] = pod.clone();
            // Reinvoked (`reinvocationPolicy: IfNeeded`), it adds nothing more.
            let again = evaluate(&mutating.policy, &after).map_err(TestCaseError::fail)?;
            prop_assert!(matches!(&again, Outcome::Mutated(p) if *p == pod), "not idempotent: {again:?} on {after}");
            let validated = webhook_named(&narrowed, names::PODS_VALIDATE).is_some_and(|w| calls(w, &after));
            if !validated {
                let response = response(&after, Endpoint::Validate, policy, cluster);
                prop_assert!(
                    response["allowed"] == json!(true) && !response["auditAnnotations"]["violations"].is_string(),
                    "the narrowed pods.validate skips a mutated pod review refuses: {after} {response}"
                );
            }
            Ok(if pod == request["object"] { Seen::Unchanged } else { Seen::Injected })
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_native_injections_are_the_webhooks(generated in policy_strategy(), request in pod_strategy()) {
        let store = cluster(&NAMESPACES, true);
        check(&generated.policy(), &store, &request)?;
    }
}

/// The generators reach every outcome: pods injected (each then re-evaluated: nothing more to
/// add) and pods skipped for each reason (the property is not vacuous).
#[test]
fn generated_pods_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let store = cluster(&NAMESPACES, true);
    let mut seen = BTreeSet::new();
    for _ in 0..1500 {
        let generated = policy_strategy().new_tree(&mut runner).expect("tree").current();
        let request = pod_strategy().new_tree(&mut runner).expect("tree").current();
        seen.insert(check(&generated.policy(), &store, &request).expect("property"));
    }
    use native::injections::names as skip;
    for expected in [
        Seen::Injected,
        Seen::Skipped(skip::NO_NATIVE_INJECTION_APPLIES.to_string()),
        Seen::Skipped(skip::WEBHOOK_INJECTION_MAY_MATCH.to_string()),
        Seen::Skipped(skip::LEFT_TO_THE_WEBHOOK.to_string()),
        Seen::Skipped(BREAKGLASS.to_string()),
    ] {
        assert!(seen.contains(&expected), "never {expected:?}: {seen:?}");
    }
}

/// An injection is native only without lookups, in clean form and sharing nothing with another.
#[test]
fn injections_needing_the_webhook_say_why() {
    let generated = Generated {
        mode: "Enforce",
        injections: vec![
            (0, "['*']", false),
            (1, "['team-*']", true),
            (2, "['team-*']", true),
            (4, "[ci]", true),
            (5, "[ci]", true),
        ],
        exempt_namespaces: Vec::new(),
    };
    let native = native_for(&generated.policy(), "tg", ServedApis::ALL);
    let why: Vec<(&str, Option<&str>)> =
        native.injections.iter().map(|i| (i.name.as_str(), i.webhook_because.as_deref())).collect();
    assert_eq!(why[0], ("azure", None));
    assert!(why[1].1.is_some_and(|w| w.contains("vault-other")), "{why:?}");
    assert!(why[2].1.is_some_and(|w| w.contains("ServiceAccount is a lookup")), "{why:?}");
    assert!(why[4].1.is_some_and(|w| w.contains("clean form")), "{why:?}");
    assert_eq!(native.mutating.len(), 1);
    let kinds: Vec<String> = native.objects().iter().map(|o| o["kind"].as_str().expect("kind").to_string()).collect();
    assert_eq!(kinds[kinds.len() - 2..], ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"]);
    let older = native_for(&generated.policy(), "tg", ServedApis { validating: true, mutating: false });
    assert!(older.mutating.is_empty());
    let placed = older.split.iter().find(|p| p.rule == native::split::rules::POD_NATIVE_INJECTIONS).expect("placed");
    assert_eq!(placed.why, native::MUTATING_NOT_SERVED);
    let everywhere = Generated { injections: vec![(0, "['*']", false), (2, "['*']", true)], ..generated };
    let native = native_for(&everywhere.policy(), "tg", ServedApis::ALL);
    assert!(native.mutating.is_empty());
    let placed = native.split.iter().find(|p| p.rule == native::split::rules::POD_NATIVE_INJECTIONS).expect("placed");
    assert!(placed.why.contains("may match every pod"), "{placed:?}");
}

// ---------------------------------------------------------------------------------------------
// Figures (docs/native.md "Cost"): `cargo test --test native_mutating figures -- --nocapture`
// ---------------------------------------------------------------------------------------------

/// A policy with `count` lookup-free injections sharing nothing, optional, each into every
/// container and init container with two variables, in `team-*` namespaces or by a pod label.
fn lookup_free_injections(count: usize) -> Policy {
    let injections: Vec<String> = (0..count)
        .map(|i| {
            let matched = if i % 2 == 0 { "namespaces: ['team-*']".to_string() } else { format!("podSelector: {{matchLabels: {{use-{i}: 'true'}}}}") };
            format!("  - {{name: inject-{i}, match: {{{matched}}}, volume: {{name: token-{i}, audience: aud-{i}, expirationSeconds: 3600, path: token}}, mount: {{mountPath: /var/run/secrets/inject-{i}, initContainers: true}}, env: [{{name: TOKEN_FILE_{i}, value: /var/run/secrets/inject-{i}/token}}, {{name: ADDR_{i}, value: 'https://service-{i}:8200'}}]}}")
        })
        .collect();
    let audiences: Vec<String> = (0..count).map(|i| format!("  - {{audience: aud-{i}}}")).collect();
    let text = format!(
        "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec:\n  audiences:\n{}\n  injections:\n{}\n",
        audiences.join("\n"),
        injections.join("\n")
    );
    Policy::parse(&text).unwrap_or_else(|e| panic!("invalid: {e}\n{text}"))
}

/// The MutatingAdmissionPolicy's cost bound and size for 1, 5 and 20 lookup-free injections, and
/// where the injections go past its limits.
#[test]
fn figures_cost_of_native_injections() {
    use tokengate::webhooks::native::cost::{estimate_mutating, MUTATING_MIN_ITEMS};
    for count in [1usize, 5, 20, 40] {
        let native = native_for(&lookup_free_injections(count), "tokengate", ServedApis::ALL);
        let Some(mutating) = native.mutating.first() else {
            let placed =
                native.split.iter().find(|p| p.rule == native::split::rules::POD_NATIVE_INJECTIONS).expect("placed");
            println!("{count} injections: left to the webhook: {}", placed.why);
            assert!(count > 5, "{count} injections: {}", placed.why);
            continue;
        };
        let bytes = serde_yaml_ng::to_string(&mutating.policy).expect("YAML").len();
        let bound = estimate_mutating(&mutating.policy.spec);
        println!(
            "{count} injections: {bytes} bytes, cost <= {} + {} per list entry ({} entries within the limits)",
            bound.total.fixed, bound.total.per_item, bound.items_within_limits
        );
        assert!(bound.items_within_limits >= MUTATING_MIN_ITEMS);
    }
}

/// Past the cost limits there is no MutatingAdmissionPolicy: the webhook adds the injections and
/// the header says why; within them the header prints the policy's bound.
#[test]
fn injections_over_the_cost_limits_stay_in_the_webhook() {
    let native = native_for(&lookup_free_injections(20), "tg", ServedApis::ALL);
    assert!(native.mutating.is_empty());
    let placed = native.split.iter().find(|p| p.rule == native::split::rules::POD_NATIVE_INJECTIONS).expect("placed");
    assert_eq!(placed.side, native::split::Side::Webhook);
    assert!(placed.why.contains("fewer than") && placed.why.contains("per mutation"), "{placed:?}");
    let header = native::render::header(&native).join("\n");
    assert!(header.contains(&format!("- inject-0: webhook: {}", placed.why)), "{header}");

    let native = native_for(&lookup_free_injections(1), "tg", ServedApis::ALL);
    let header = native::render::header(&native).join("\n");
    let bound = native::cost::estimate_mutating(&native.mutating[0].policy.spec);
    let line = format!(
        "- tg-pod-injections: at most {} per request plus {} per container",
        bound.total.fixed, bound.total.per_item
    );
    assert!(header.contains(&line), "{header}");
    assert!(header.contains(&format!("({} fit;", bound.items_within_limits)), "{header}");
}
