//! What the CEL property tests share: JSON as CEL sees it, AdmissionReview requests and objects
//! as the API server passes them, tokengate's answer, a small cluster, and generators of globs
//! and names.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};
use tokengate::cluster::ObjectStore;
use tokengate::policy::Policy;
use tokengate::review::{review, Reply, Webhook as Endpoint};

pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
pub const OTHER_API_AUDIENCE: &str = "https://oidc.example.com";
pub const NODE: &str = "node-1";
pub const POD_UID: &str = "0d9f6c1e-6d2b-4c55-9f0e-7a3c1b2d4e5f";

/// JSON as CEL sees unstructured objects: integers stay integers, `null` stays null.
pub fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => cel::Value::Int(i),
            (None, Some(u), _) => cel::Value::UInt(u),
            (_, _, Some(f)) => cel::Value::Float(f),
            _ => cel::Value::Null,
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => {
            let map: HashMap<String, cel::Value> = map.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::from(map)
        }
    }
}

/// tokengate's `response` to `request` on `endpoint`.
pub fn response(request: &Value, endpoint: Endpoint, policy: &Policy, cluster: &ObjectStore) -> Value {
    let body = serde_json::to_vec(
        &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}),
    )
    .expect("encode");
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let reply = runtime.block_on(review(&body, endpoint, policy, cluster));
    let Reply::Review { body, .. } = reply else { panic!("answered 400 for {request}") };
    let answer: Value = serde_json::from_slice(&body).expect("response JSON");
    answer["response"].clone()
}

/// tokengate's answer: (allowed, has a patch).
pub fn answer(request: &Value, endpoint: Endpoint, policy: &Policy, cluster: &ObjectStore) -> (bool, bool) {
    let response = response(request, endpoint, policy, cluster);
    (response["allowed"].as_bool().expect("allowed"), response.get("patch").is_some())
}

/// tokengate's own namespace, the one namespace every configuration leaves out whatever the
/// policy says (its pods must start while it is down).
pub const OWN_NAMESPACE: &str = "tokengate-system";

pub fn user(name: &str, groups: &[&str]) -> Value {
    json!({"username": name, "uid": "u-1", "groups": groups})
}

pub fn alice() -> Value {
    user("alice", &["system:authenticated"])
}

pub fn kubelet() -> Value {
    user(&format!("system:node:{NODE}"), &["system:nodes", "system:authenticated"])
}

pub fn pod_request(namespace: &str, pod: Value, user_info: Value) -> Value {
    json!({
        "uid": "req-pod", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "name": pod["metadata"]["name"], "namespace": namespace, "operation": "CREATE",
        "userInfo": user_info, "object": pod, "oldObject": null, "dryRun": false,
    })
}

pub fn pod(
    name: &str,
    namespace: &str,
    labels: Option<Value>,
    annotations: Option<Value>,
    volumes: Vec<Value>,
) -> Value {
    let mut metadata = json!({"name": name, "namespace": namespace});
    if let Some(labels) = labels {
        metadata["labels"] = labels;
    }
    if let Some(annotations) = annotations {
        metadata["annotations"] = annotations;
    }
    let mut spec = json!({
        "serviceAccountName": "web", "serviceAccount": "web", "nodeName": NODE,
        "containers": [{"name": "app", "image": "example.com/app:1", "resources": {}}],
    });
    if !volumes.is_empty() {
        spec["volumes"] = Value::Array(volumes);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

pub fn token(audience: Option<&str>, seconds: i64, path: &str) -> Value {
    let mut token = json!({"expirationSeconds": seconds, "path": path});
    if let Some(audience) = audience {
        token["audience"] = json!(audience);
    }
    json!({"serviceAccountToken": token})
}

pub fn ca_source() -> Value {
    json!({"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}})
}

pub fn namespace_source() -> Value {
    json!({"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}})
}

pub fn projected(name: &str, sources: Value) -> Value {
    json!({"name": name, "projected": {"sources": sources, "defaultMode": 420}})
}

/// The ServiceAccount admission plugin's volume.
pub fn automount() -> Value {
    projected("kube-api-access-x7k2p", json!([token(None, 3607, "token"), ca_source(), namespace_source()]))
}

pub fn token_request(namespace: &str, account: &str, user_info: Value, spec: Value) -> Value {
    json!({
        "uid": "req-token", "kind": {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"},
        "resource": {"group": "", "version": "v1", "resource": "serviceaccounts"}, "subResource": "token",
        "name": account, "namespace": namespace, "operation": "CREATE", "userInfo": user_info,
        "object": {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "metadata": {"name": account, "namespace": namespace, "creationTimestamp": null},
                   "spec": spec, "status": {"token": "", "expirationTimestamp": null}},
        "oldObject": null, "dryRun": false,
    })
}

pub fn bound_pod(kind: &str, api_version: Option<&str>, uid: Option<&str>) -> Value {
    let mut bound = json!({"kind": kind, "name": "p1"});
    if let Some(api_version) = api_version {
        bound["apiVersion"] = json!(api_version);
    }
    if let Some(uid) = uid {
        bound["uid"] = json!(uid);
    }
    bound
}

pub fn secret_request(namespace: &str, operation: &str, secret: Value, old: Option<Value>) -> Value {
    json!({
        "uid": "req-secret", "kind": {"group": "", "version": "v1", "kind": "Secret"},
        "resource": {"group": "", "version": "v1", "resource": "secrets"},
        "name": secret["metadata"]["name"], "namespace": namespace, "operation": operation,
        "userInfo": alice(), "object": secret, "oldObject": old.unwrap_or(Value::Null), "dryRun": false,
    })
}

pub fn secret(type_: &str, account: Option<&str>) -> Value {
    let mut metadata = json!({"name": "s1", "namespace": "team-a"});
    if let Some(account) = account {
        metadata["annotations"] = json!({"kubernetes.io/service-account.name": account});
    }
    json!({"apiVersion": "v1", "kind": "Secret", "type": type_, "metadata": metadata})
}

pub fn csi_driver_request(token_requests: Option<Value>) -> Value {
    let mut spec = json!({"attachRequired": true, "podInfoOnMount": false});
    if let Some(requests) = token_requests {
        spec["tokenRequests"] = requests;
    }
    json!({
        "uid": "req-csi", "kind": {"group": "storage.k8s.io", "version": "v1", "kind": "CSIDriver"},
        "resource": {"group": "storage.k8s.io", "version": "v1", "resource": "csidrivers"},
        "name": "d.example.com", "operation": "CREATE", "userInfo": alice(),
        "object": {"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": "d.example.com"}, "spec": spec},
        "oldObject": null, "dryRun": false,
    })
}

/// The cluster: the bound pod `p1` (with an automount volume) in every namespace, service
/// accounts, and a CSI driver that mints a `vault` token.
pub fn cluster(namespaces: &[&str], arn_on_web: bool) -> ObjectStore {
    let mut store = ObjectStore::default();
    for namespace in namespaces {
        let mut bound = pod("p1", namespace, None, None, vec![automount()]);
        bound["metadata"]["uid"] = json!(POD_UID);
        store.insert(&bound).expect("pod");
        for account in ["web", "default"] {
            let mut sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": namespace}});
            if arn_on_web && account == "web" {
                sa["metadata"]["annotations"] = json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/web"});
            }
            store.insert(&sa).expect("service account");
        }
    }
    store
        .insert(&json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": "d.example.com"},
                        "spec": {"tokenRequests": [{"audience": "vault", "expirationSeconds": 3600}], "requiresRepublish": true}}))
        .expect("driver");
    store
}

/// Namespaces requests are made in; the cluster has the bound pod and service accounts in each.
pub const NAMESPACES: [&str; 11] = [
    "team-a",
    "team-b",
    "prod",
    "ci",
    "tx",
    "legacy-1",
    "kube-system",
    "kube-node-lease",
    "istio-system",
    "istio-system-canary",
    OWN_NAMESPACE,
];

/// Hand-picked namespace globs that match some of [`NAMESPACES`], including the shapes that once
/// read differently in CEL: an empty alternative and a leading `**/`.
pub const NAMESPACE_GLOBS: [&str; 10] = [
    "team-*",
    "prod",
    "{team,prod}-?",
    "t[!e]*",
    "?i",
    "*",
    "istio-system{,-*}",
    "**/team-a",
    "kube-*",
    "[a-z]*-system",
];

/// A piece of a glob from the grammar globset accepts (besides alternatives): literals, escaped
/// characters, `?`, `*`, `**`, `**/`, and classes with ranges, negation and a leading `]`.
pub fn glob_piece() -> impl Strategy<Value = String> {
    let literal = prop::sample::select(vec!["team", "a", "b", "-", "prod", "istio", "system", "x", "1", ".", "kube"]);
    let special = prop::sample::select(vec![
        "?", "*", "**", "**/", "[a-c]", "[!e]", "[^t]", "[ab]", "[]a]", "[-a]", "[a-]", "\\-", "\\*", "\\a", "\\?",
        "\\[",
    ]);
    prop_oneof![4 => literal.prop_map(str::to_string), 3 => special.prop_map(str::to_string)]
}

/// A glob: pieces and `{...}` alternatives (empty alternatives included), as a user may write.
pub fn glob_strategy() -> impl Strategy<Value = String> {
    let sequence = || prop::collection::vec(glob_piece(), 0..3).prop_map(|pieces| pieces.concat());
    let alternatives = prop::collection::vec(sequence(), 1..4).prop_map(|alts| format!("{{{}}}", alts.join(",")));
    let part = prop_oneof![4 => glob_piece(), 1 => alternatives];
    prop::collection::vec(part, 1..4).prop_map(|parts| parts.concat())
}

/// A name made of the glob literals' characters and a few more that names may hold.
pub fn name_strategy() -> impl Strategy<Value = String> {
    let fragment = prop::sample::select(vec![
        "team", "a", "b", "-", "prod", "istio", "system", "x", "1", ".", "kube", "e", "t", "c",
    ]);
    prop_oneof![
        2 => prop::sample::select(NAMESPACES.to_vec()).prop_map(str::to_string),
        3 => prop::collection::vec(fragment, 0..5).prop_map(|parts| parts.concat()),
    ]
}

/// A namespace glob for a generated policy: a hand-picked one, or one from the grammar.
pub fn namespace_glob() -> impl Strategy<Value = String> {
    prop_oneof![2 => prop::sample::select(NAMESPACE_GLOBS.to_vec()).prop_map(str::to_string), 1 => glob_strategy()]
}

/// Whether `rule` covers the request, as the API server matches rules (`Matches` in
/// k8s.io/apiserver/pkg/admission/plugin/webhook/predicates/rules/rules.go): group, version,
/// `resource` or `resource/subresource`, operation and scope, each with `*`.
pub fn rule_covers(rule: &tokengate::webhooks::Rule, request: &Value) -> bool {
    let has = |list: &[String], value: &str| list.iter().any(|item| item == "*" || item == value);
    let resource = &request["resource"];
    let name = resource["resource"].as_str().unwrap_or_default();
    let full = match request["subResource"].as_str().filter(|s| !s.is_empty()) {
        Some(sub) => format!("{name}/{sub}"),
        None => name.to_string(),
    };
    let namespaced = request["namespace"].as_str().is_some_and(|n| !n.is_empty());
    let scope_ok = match rule.scope.as_str() {
        "Namespaced" => namespaced,
        "Cluster" => !namespaced,
        _ => true,
    };
    has(&rule.api_groups, resource["group"].as_str().unwrap_or_default())
        && has(&rule.api_versions, resource["version"].as_str().unwrap_or_default())
        && has(&rule.resources, &full)
        && has(&rule.operations, request["operation"].as_str().unwrap_or_default())
        && scope_ok
}

/// Whether `webhook` calls tokengate for `request`: a rule covers it, its namespaceSelector (only
/// tokengate's own namespace left out) lets it through, and no match condition is false. `Err`
/// names a condition that fails to evaluate (with `failurePolicy: Fail` the request is refused).
pub fn webhook_calls(webhook: &tokengate::webhooks::Webhook, request: &Value) -> Result<bool, String> {
    let namespace_selected = webhook.namespace_selector.is_none() || request["namespace"] != OWN_NAMESPACE;
    if !namespace_selected || !webhook.rules.iter().any(|rule| rule_covers(rule, request)) {
        return Ok(false);
    }
    for condition in &webhook.match_conditions {
        if !run_bool(&condition.expression, request, &HashMap::new()).map_err(|e| format!("{}: {e}", condition.name))? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A CEL context as the API server's admission policies have it: the request, object and
/// oldObject, no params or namespace object, the variables so far, and the strings extension
/// (`join`).
pub fn context(request: &Value, variables: &HashMap<String, cel::Value>) -> cel::Context<'static, 'static> {
    let mut env = cel::Env::stdlib();
    cel::extensions::strings(&mut env).expect("strings extension");
    let mut context = cel::Context::with_env(Arc::new(env));
    context.add_variable_from_value("request", to_cel(request));
    context.add_variable_from_value("object", to_cel(&request["object"]));
    context.add_variable_from_value("oldObject", to_cel(&request["oldObject"]));
    context.add_variable_from_value("params", cel::Value::Null);
    context.add_variable_from_value("namespaceObject", cel::Value::Null);
    context.add_variable_from_value("variables", cel::Value::from(variables.clone()));
    context
}

/// Compiles and runs `expression` in [`context`].
pub fn run(expression: &str, request: &Value, variables: &HashMap<String, cel::Value>) -> Result<cel::Value, String> {
    let program = cel::Program::compile(expression).map_err(|e| format!("does not compile: {e:?}\n{expression}"))?;
    program.execute(&context(request, variables)).map_err(|e| format!("fails: {e:?}\n{expression}\nrequest: {request}"))
}

/// Runs `expression`, which must be a boolean (a match condition or a validation).
pub fn run_bool(expression: &str, request: &Value, variables: &HashMap<String, cel::Value>) -> Result<bool, String> {
    match run(expression, request, variables)? {
        cel::Value::Bool(b) => Ok(b),
        other => Err(format!("{expression} is {other:?}, not a bool")),
    }
}
