//! Token semantics as the API server applies them: effective lifetimes, legacy token Secrets,
//! several API server audiences, in-tree volumes, workload UPDATEs. Reviews are shaped like the
//! ones a real API server sends (see tests/fixtures/reviews) and go through the same `review`
//! the server answers with.

use proptest::prelude::*;
use serde_json::{json, Value};
use tokengate::cluster::ObjectStore;
use tokengate::policy::Policy;
use tokengate::review::{review, Reply, Webhook};

const API: &str = "https://kubernetes.default.svc.cluster.local";
const API_2: &str = "https://oidc.example.com/cluster-1";
const API_3: &str = "kubernetes";

fn policy_text(extra_expiration: &str, api_server_audiences: &[&str]) -> String {
    format!(
        r#"
apiVersion: tokengate.dev/v1alpha1
kind: TokenPolicy
spec:
  apiServerAudiences: {api_server_audiences:?}
  expiration: {{maxSeconds: 86400{extra_expiration}}}
  legacyTokens:
    - {{namespaces: [ci], serviceAccounts: [deployer]}}
  audiences:
    - {{audience: "", namespaces: [team-a]}}
    - {{audience: vault, namespaces: [team-a]}}
  csiDrivers:
    - {{name: csi.cert-manager.io, audiences: [""], requireRepublish: true}}
    - {{name: file.csi.azure.com, audiences: [vault]}}
    - {{name: secrets-store.csi.k8s.io, audiences: [vault], requireTokenInSecrets: true}}
"#
    )
}

fn policy() -> Policy {
    Policy::parse(&policy_text("", &[API])).expect("valid")
}

fn automount_volume() -> Value {
    json!({"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}})
}

fn pod(name: &str, uid: &str, volumes: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "team-a", "uid": uid},
           "spec": {"nodeName": "node-1", "serviceAccountName": "web", "containers": [{"name": "app", "image": "app"}],
                    "volumes": volumes}})
}

fn cluster() -> ObjectStore {
    let objects = [
        pod("with-automount", "u1", json!([automount_volume()])),
        pod("no-automount", "u2", json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}])),
        pod(
            "azure",
            "u3",
            json!([automount_volume(), {"name": "share", "azureFile": {"secretName": "s", "shareName": "x"}}]),
        ),
        pod(
            "missing-pvc",
            "u4",
            json!([automount_volume(), {"name": "gone", "persistentVolumeClaim": {"claimName": "gone"}}]),
        ),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "team-a"},
               "spec": {"volumeName": "pv-data"}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-data"},
               "spec": {"csi": {"driver": "csi.cert-manager.io", "volumeHandle": "h"}}}),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": "csi.cert-manager.io"},
               "spec": {"tokenRequests": [{"audience": "", "expirationSeconds": 3607}], "requiresRepublish": true}}),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": "file.csi.azure.com"},
               "spec": {"tokenRequests": [{"audience": "vault", "expirationSeconds": 3600}]}}),
    ];
    let mut store = ObjectStore::default();
    for object in objects {
        store.insert(&object).expect("decodes");
    }
    store
}

/// An AdmissionReview as the API server sends it.
struct Review {
    request: Value,
}

impl Review {
    fn new(group: &str, kind: &str, resource: &str, namespace: Option<&str>, object: Value) -> Self {
        let version = "v1";
        let name = object.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
        Review {
            request: json!({
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": group, "version": version, "kind": kind},
                "resource": {"group": group, "version": version, "resource": resource},
                "requestKind": {"group": group, "version": version, "kind": kind},
                "name": name, "namespace": namespace, "operation": "CREATE",
                "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
                "object": object, "oldObject": null, "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
            }),
        }
    }

    fn token_request(service_account: &str, audiences: Value, seconds: i64, bound: Value) -> Self {
        let object = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "metadata": {"name": service_account, "namespace": "team-a", "creationTimestamp": null},
            "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": bound}, "status": {"token": ""}});
        let mut review =
            Review::new("authentication.k8s.io", "TokenRequest", "serviceaccounts", Some("team-a"), object);
        review.request["resource"] = json!({"group": "", "version": "v1", "resource": "serviceaccounts"});
        review.request["subResource"] = json!("token");
        review.request["name"] = json!(service_account);
        review
    }

    fn by_node(mut self, node: &str) -> Self {
        self.request["userInfo"] =
            json!({"username": format!("system:node:{node}"), "groups": ["system:nodes", "system:authenticated"]});
        self
    }

    fn update(mut self, old: Value) -> Self {
        self.request["operation"] = json!("UPDATE");
        self.request["oldObject"] = old;
        self
    }

    async fn answer(&self, policy: &Policy) -> Value {
        let body = serde_json::to_vec(
            &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": self.request}),
        )
        .expect("JSON");
        match review(&body, Webhook::Validate, policy, &cluster()).await {
            Reply::Review { body, .. } => serde_json::from_slice::<Value>(&body).expect("JSON")["response"].clone(),
            Reply::BadRequest(message) => panic!("bad request: {message}"),
        }
    }
}

fn message(response: &Value) -> &str {
    response.pointer("/status/message").and_then(Value::as_str).unwrap_or_default()
}

fn bound(name: &str, uid: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid})
}

/// The four ways to ask for 3607 s of the API server audience that become one-year tokens.
fn extended_shapes() -> Vec<(&'static str, Review)> {
    vec![
        (
            "a user's pod-bound TokenRequest",
            Review::token_request("web", json!([API]), 3607, bound("with-automount", "u1")),
        ),
        (
            "a CSIDriver asking for the API server audience",
            Review::new(
                "storage.k8s.io",
                "CSIDriver",
                "csidrivers",
                None,
                json!({
                "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": "csi.cert-manager.io"},
                "spec": {"tokenRequests": [{"audience": "", "expirationSeconds": 3607}], "requiresRepublish": true}}),
            ),
        ),
        (
            "a pod's own projected volume without an audience",
            Review::new(
                "",
                "Pod",
                "pods",
                Some("team-a"),
                pod(
                    "own",
                    "",
                    json!([automount_volume(),
                {"name": "my-token", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}]),
                ),
            ),
        ),
        (
            "a kubelet's request for a pod without an automount volume",
            Review::token_request("web", json!([API]), 3607, bound("no-automount", "u2")).by_node("node-1"),
        ),
    ]
}

#[tokio::test]
async fn the_four_3607_second_shapes_are_judged_as_the_one_year_tokens_they_become() {
    let one_day = policy();
    let no_extension = Policy::parse(&policy_text(", extendedSeconds: 3607", &[API])).expect("valid");
    for (what, review) in extended_shapes() {
        let denied = review.answer(&one_day).await;
        assert_eq!(denied["allowed"], json!(false), "{what}: {denied}");
        let text = message(&denied);
        assert!(text.contains("3607") && text.contains("extended by the API server to 31536000 s"), "{what}: {text}");
        assert!(text.contains("above the maximum of 86400"), "{what}: {text}");
        let allowed = review.answer(&no_extension).await;
        assert_eq!(allowed["allowed"], json!(true), "{what} with extendedSeconds 3607: {allowed}");
    }
}

#[tokio::test]
async fn the_automount_token_is_admitted_with_one_two_or_three_api_server_audiences() {
    let audiences = [API, API_2, API_3];
    for count in 1..=3 {
        let listed = &audiences[..count];
        let policy = Policy::parse(&policy_text("", listed)).expect("valid");
        let review = Review::token_request("web", json!(listed), 3607, bound("with-automount", "u1")).by_node("node-1");
        let response = review.answer(&policy).await;
        assert_eq!(response["allowed"], json!(true), "{count} audiences: {response}");
        assert!(response.get("warnings").is_none(), "{response}");
        // The API server fills absent audiences before validating webhooks; older ones do not.
        let absent = Review::token_request("web", Value::Null, 3607, bound("with-automount", "u1")).by_node("node-1");
        assert_eq!(absent.answer(&policy).await["allowed"], json!(true));
    }
}

#[tokio::test]
async fn the_automount_token_is_recognised_by_its_shape_when_api_server_audiences_are_missing() {
    let unlisted = Policy::parse(&policy_text("", &[])).expect("valid");
    let review =
        Review::token_request("web", json!([API, API_2]), 3607, bound("with-automount", "u1")).by_node("node-1");
    let response = review.answer(&unlisted).await;
    assert_eq!(response["allowed"], json!(true), "{response}");
    let warnings = response["warnings"].to_string();
    assert!(warnings.contains("apiServerAudiences"), "the warning says the list looks wrong: {warnings}");
    // Not for a pod without the automount volume, nor for a user.
    let other = Review::token_request("web", json!([API]), 3607, bound("no-automount", "u2")).by_node("node-1");
    assert_eq!(other.answer(&unlisted).await["allowed"], json!(false));
    let user = Review::token_request("web", json!([API]), 3607, bound("with-automount", "u1"));
    assert_eq!(user.answer(&unlisted).await["allowed"], json!(false));
}

#[tokio::test]
async fn node_requests_need_a_v1_pod_binding_with_a_uid() {
    let policy = policy();
    let cases = [
        (json!({"apiVersion": "v1", "kind": "Pod", "name": "with-automount"}), "spec.boundObjectRef.uid"),
        (
            json!({"apiVersion": "v2", "kind": "Pod", "name": "with-automount", "uid": "u1"}),
            "spec.boundObjectRef.apiVersion",
        ),
    ];
    for (bound, field) in cases {
        let response =
            Review::token_request("web", json!(["vault"]), 3600, bound).by_node("node-1").answer(&policy).await;
        assert_eq!(response["allowed"], json!(false));
        assert!(message(&response).contains(field), "{response}");
    }
    let nameless = Review::token_request("web", json!(["vault"]), 3600, bound("azure", "u3")).by_node("");
    assert!(message(&nameless.answer(&policy).await).contains("names no node"));
}

#[tokio::test]
async fn in_tree_volumes_reach_the_csi_driver_that_migration_serves_them_with() {
    let policy = policy();
    let kubelet = Review::token_request("web", json!(["vault"]), 3600, bound("azure", "u3")).by_node("node-1");
    assert_eq!(kubelet.answer(&policy).await["allowed"], json!(true), "azureFile reaches file.csi.azure.com");
    let mut outside =
        pod("azure-b", "", json!([{"name": "share", "azureFile": {"secretName": "s", "shareName": "x"}}]));
    outside["metadata"]["namespace"] = json!("team-b");
    let response = Review::new("", "Pod", "pods", Some("team-b"), outside).answer(&policy).await;
    assert_eq!(response["allowed"], json!(false));
    assert!(message(&response).contains("spec.volumes[0].azureFile: CSI driver \"file.csi.azure.com\""), "{response}");
}

#[tokio::test]
async fn a_denial_names_the_object_that_does_not_exist() {
    let response = Review::token_request("web", json!(["vault"]), 3600, bound("missing-pvc", "u4"))
        .by_node("node-1")
        .answer(&policy())
        .await;
    assert_eq!(response["allowed"], json!(false));
    assert!(message(&response).contains("not found: PVC team-a/gone"), "{response}");
}

fn secret(namespace: &str, name: &str, service_account: &str, kind: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": namespace, "annotations": {"kubernetes.io/service-account.name": service_account}},
           "type": kind, "data": {"token": "c2VjcmV0"}})
}

#[tokio::test]
async fn legacy_token_secrets_are_allowed_only_where_listed() {
    let policy = policy();
    let sa_token = "kubernetes.io/service-account-token";
    let create =
        |ns: &str, sa: &str, kind: &str| Review::new("", "Secret", "secrets", Some(ns), secret(ns, "t", sa, kind));
    assert_eq!(create("ci", "deployer", sa_token).answer(&policy).await["allowed"], json!(true));
    let denied = create("team-a", "web", sa_token).answer(&policy).await;
    assert_eq!(denied["allowed"], json!(false));
    assert!(message(&denied).contains("never expires") && message(&denied).contains("team-a/web"), "{denied}");
    assert!(!denied.to_string().contains("c2VjcmV0"), "the Secret's data never appears in an answer");
    assert_eq!(create("team-a", "web", "Opaque").answer(&policy).await["allowed"], json!(true));
    let unchanged = create("team-a", "web", sa_token).update(secret("team-a", "t", "web", sa_token));
    assert_eq!(unchanged.answer(&policy).await["allowed"], json!(true), "an UPDATE that keeps the service account");
    let renamed = create("team-a", "web", sa_token).update(secret("team-a", "t", "other", sa_token));
    assert_eq!(renamed.answer(&policy).await["allowed"], json!(false), "an UPDATE that changes it");
}

fn replica_set(replicas: u32, audience: &str, deleting: bool) -> Value {
    let mut object = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-5d8f", "namespace": "team-a", "finalizers": ["foregroundDeletion"]},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"serviceAccountName": "web",
                   "containers": [{"name": "app", "image": "app"}],
                   "volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"audience": audience, "expirationSeconds": 3600, "path": "t"}}]}}]}}}});
    if deleting {
        object["metadata"]["deletionTimestamp"] = json!("2026-11-30T12:00:00Z");
    }
    object
}

#[tokio::test]
async fn workload_updates_are_judged_only_on_what_they_change_in_the_template() {
    let policy = policy();
    let update =
        |new: Value, old: Value| Review::new("apps", "ReplicaSet", "replicasets", Some("team-a"), new).update(old);
    let scale_down = update(replica_set(1, "gcp", false), replica_set(3, "gcp", false));
    assert_eq!(scale_down.answer(&policy).await["allowed"], json!(true), "scaling a violating template");
    let finalizer = update(replica_set(0, "gcp", true), replica_set(0, "gcp", true));
    assert_eq!(finalizer.answer(&policy).await["allowed"], json!(true), "removing a finalizer while deleting");
    let adds = update(replica_set(3, "gcp", false), replica_set(3, "vault", false));
    let response = adds.answer(&policy).await;
    assert_eq!(response["allowed"], json!(false), "a template change that adds a violation");
    assert!(message(&response).contains("\"gcp\""), "{response}");
    let fixes = update(replica_set(3, "vault", false), replica_set(3, "gcp", false));
    assert_eq!(fixes.answer(&policy).await["allowed"], json!(true), "a rollout that fixes the template");
    let create = Review::new("apps", "ReplicaSet", "replicasets", Some("team-a"), replica_set(1, "gcp", false));
    assert_eq!(create.answer(&policy).await["allowed"], json!(false), "CREATE is judged whole");
}

#[tokio::test]
async fn a_grandfathered_token_that_changes_is_judged_as_new() {
    let policy = policy();
    let with_seconds = |seconds: u64| {
        let mut object = replica_set(3, "gcp", false);
        object["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]
            ["expirationSeconds"] = json!(seconds);
        object
    };
    // The disallowed audience was there before: its message is the same whatever the lifetime,
    // but a token that now lives 2^32 s is not the token that was grandfathered.
    let longer = Review::new("apps", "ReplicaSet", "replicasets", Some("team-a"), with_seconds(4_294_967_296))
        .update(with_seconds(3600));
    let response = longer.answer(&policy).await;
    assert_eq!(response["allowed"], json!(false), "{response}");
    assert!(message(&response).contains("\"gcp\""), "{response}");
    let path = Review::new("apps", "ReplicaSet", "replicasets", Some("team-a"), {
        let mut object = with_seconds(3600);
        object["spec"]["template"]["spec"]["containers"][0]["image"] = json!("app:2");
        object
    })
    .update(with_seconds(3600));
    assert_eq!(path.answer(&policy).await["allowed"], json!(true), "an unchanged token stays grandfathered");
}

#[tokio::test]
async fn csi_drivers_must_send_tokens_in_secrets_where_the_policy_says_so() {
    let policy = policy();
    let driver = |in_secrets: Option<bool>| {
        let mut spec =
            json!({"tokenRequests": [{"audience": "vault", "expirationSeconds": 3600}], "requiresRepublish": true});
        if let Some(value) = in_secrets {
            spec["serviceAccountTokenInSecrets"] = json!(value);
        }
        Review::new(
            "storage.k8s.io",
            "CSIDriver",
            "csidrivers",
            None,
            json!({"apiVersion": "storage.k8s.io/v1",
            "kind": "CSIDriver", "metadata": {"name": "secrets-store.csi.k8s.io"}, "spec": spec}),
        )
    };
    let missing = driver(None).answer(&policy).await;
    assert!(message(&missing).contains("spec.serviceAccountTokenInSecrets: must be true"), "{missing}");
    assert_eq!(driver(Some(false)).answer(&policy).await["allowed"], json!(false));
    assert_eq!(driver(Some(true)).answer(&policy).await["allowed"], json!(true));
}

/// Spellings of `boundObjectRef.apiVersion` the API server accepts (it does not validate the
/// field): core, core with an empty group, unparsable, and other groups.
const API_VERSION_SPELLINGS: [&str; 9] = ["v1", "/v1", "/", "", "a/b/c", "//", "v2", "apps/v1", "x/"];

/// The group `schema.FromAPIVersionAndKind` reads from an apiVersion, restated from
/// `ParseGroupVersion` (k8s.io/apimachinery/pkg/runtime/schema/group_version.go): `""` and `"/"`
/// are the core group, no `/` is a core version, one `/` splits group and version, more is an
/// error after which only the kind is kept (core group).
fn upstream_group(api_version: &str) -> &str {
    if api_version.is_empty() || api_version == "/" {
        return "";
    }
    match api_version.matches('/').count() {
        1 => api_version.split('/').next().unwrap_or_default(),
        _ => "",
    }
}

#[tokio::test]
async fn a_pod_binding_is_read_as_the_api_server_reads_its_api_version() {
    // A user's request for the API server audience, 3607 s, bound to a pod: a one-year token
    // whenever the API server reads the binding as a core Pod, however apiVersion is spelled.
    for api_version in API_VERSION_SPELLINGS {
        let bound = json!({"apiVersion": api_version, "kind": "Pod", "name": "with-automount", "uid": "u1"});
        let response = Review::token_request("web", json!([API]), 3607, bound).answer(&policy()).await;
        let pod_binding = upstream_group(api_version).is_empty();
        assert_eq!(response["allowed"], json!(!pod_binding), "apiVersion {api_version:?}: {response}");
        if pod_binding {
            assert!(message(&response).contains("extended by the API server to 31536000 s"), "{response}");
        }
    }
}

#[tokio::test]
async fn a_kubelet_gets_no_unlisted_audience_on_the_automount_shape_once_api_server_audiences_are_known() {
    let listed = policy();
    let learned = Policy::parse_with_api_server_audiences(&policy_text("", &[]), &[API.to_string()]).expect("valid");
    for (what, policy) in [("listed", &listed), ("learned", &learned)] {
        for audience in ["sts.amazonaws.com", "https://attacker.example.com"] {
            let review =
                Review::token_request("web", json!([audience]), 3607, bound("with-automount", "u1")).by_node("node-1");
            let response = review.answer(policy).await;
            assert_eq!(response["allowed"], json!(false), "{what} {audience}: {response}");
            assert!(message(&response).contains("is not referenced by pod team-a/with-automount"), "{response}");
        }
        // The automount token itself is still admitted.
        let automount =
            Review::token_request("web", json!([API]), 3607, bound("with-automount", "u1")).by_node("node-1");
        assert_eq!(automount.answer(policy).await["allowed"], json!(true), "{what}");
    }
}

#[tokio::test]
async fn a_node_asks_for_one_audience_entry_as_node_restriction_counts_them() {
    let policy = policy();
    // Pod "azure" reaches file.csi.azure.com, whose tokenRequests list vault.
    let one = Review::token_request("web", json!(["vault"]), 3600, bound("azure", "u3")).by_node("node-1");
    assert_eq!(one.answer(&policy).await["allowed"], json!(true));
    for audiences in [json!(["vault", "vault"]), json!([API, API]), json!(["vault", API])] {
        let review = Review::token_request("web", audiences.clone(), 3600, bound("azure", "u3")).by_node("node-1");
        let response = review.answer(&policy).await;
        assert_eq!(response["allowed"], json!(false), "{audiences}: {response}");
        assert!(message(&response).contains("may request one audience per token, not 2"), "{response}");
    }
}

proptest! {
    /// The lifetime tokengate judges equals upstream's rule, restated: `TokenREST.Create`
    /// extends a request when extension is on, the token is bound to a pod, it asks for exactly
    /// 3607 s, and every audience is an API server audience.
    #[test]
    fn the_judged_lifetime_is_the_api_servers(
        seconds in prop_oneof![Just(3607i64), Just(3600i64), 600i64..200_000],
        audiences in proptest::collection::vec(prop_oneof![Just(API), Just(API_2), Just("vault"), Just("")], 0..3),
        bound_kind in prop_oneof![Just("Pod"), Just("Secret"), Just("")],
        api_version in proptest::sample::select(API_VERSION_SPELLINGS.to_vec()),
        extension_on in any::<bool>(),
    ) {
        let extended = if extension_on { 31_536_000 } else { 3607 };
        // A policy whose maximum is the effective lifetime upstream would issue: allowed at it,
        // denied one second below it.
        let upstream_effective = {
            let api_only = audiences.iter().all(|a| *a == API || *a == API_2 || a.is_empty());
            let pod = bound_kind == "Pod" && upstream_group(api_version).is_empty();
            if extension_on && pod && seconds == 3607 && api_only { 31_536_000 } else { seconds as u64 }
        };
        let bound = if bound_kind.is_empty() { Value::Null } else {
            json!({"apiVersion": api_version, "kind": bound_kind, "name": "with-automount", "uid": "u1"})
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        for (max, expect_allowed) in [(upstream_effective, true), (upstream_effective - 1, false)] {
            let text = format!(r#"
apiVersion: tokengate.dev/v1alpha1
kind: TokenPolicy
spec:
  apiServerAudiences: ["{API}", "{API_2}"]
  expiration: {{maxSeconds: {max}, extendedSeconds: {extended}}}
  audiences: [{{audience: ""}}, {{audience: vault}}]
"#);
            let policy = Policy::parse(&text).expect("valid");
            let review = Review::token_request("web", json!(audiences), seconds, bound.clone());
            let response = runtime.block_on(review.answer(&policy));
            prop_assert_eq!(response["allowed"].as_bool(), Some(expect_allowed), "max {}: {}", max, response);
        }
    }
}
