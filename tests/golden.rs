//! Golden tests: real-shaped AdmissionReviews through the same `review` the server and CLI use.
//!
//! Each case in `tests/fixtures/reviews/cases.yaml` states the expected outcome; the whole
//! response is also compared with `tests/fixtures/reviews/expected/<name>.<webhook>.json`
//! (where the base64 patch is shown decoded).
//! Regenerate those snapshots with `TOKENGATE_BLESS=1 cargo test --test golden` and review
//! the diff.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokengate::cluster::ObjectStore;
use tokengate::manifest;
use tokengate::policy::Policy;
use tokengate::review::{review, Reply, Webhook, MAX_WARNING_CHARS};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Case {
    name: String,
    webhook: String,
    allowed: bool,
    patched: bool,
    /// The object cannot be decoded: refused with code 400 in every mode.
    #[serde(default)]
    invalid: bool,
    #[serde(default)]
    message_contains: Vec<String>,
    why: String,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("reviews/cases.yaml")).expect("cases.yaml");
    serde_yaml_ng::from_str(&text).expect("cases.yaml parses")
}

fn policy_in_mode(mode: &str) -> Policy {
    let text = std::fs::read_to_string(fixtures().join("policy.yaml")).expect("policy.yaml");
    Policy::parse(&text.replace("mode: Enforce", &format!("mode: {mode}"))).expect("test policy is valid")
}

fn objects() -> ObjectStore {
    let mut store = ObjectStore::default();
    for document in manifest::load_file(&fixtures().join("objects.yaml")).expect("objects.yaml") {
        store.insert(&document.object).expect("objects decode");
    }
    store
}

fn webhook(name: &str) -> Webhook {
    match name {
        "validate" => Webhook::Validate,
        "mutate" => Webhook::Mutate,
        other => panic!("unknown webhook {other}"),
    }
}

fn input(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(format!("reviews/{name}.json"))).unwrap_or_else(|e| panic!("{name}.json: {e}"))
}

async fn respond(body: &[u8], webhook: Webhook, policy: &Policy, cluster: &ObjectStore) -> Value {
    match review(body, webhook, policy, cluster).await {
        Reply::Review { body, .. } => serde_json::from_slice(&body).expect("response is JSON"),
        Reply::BadRequest(message) => panic!("unexpected bad request: {message}"),
    }
}

/// The JSON patch of a response, decoded.
fn patch_of(response: &Value) -> Option<json_patch::Patch> {
    let encoded = response.pointer("/response/patch")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).expect("patch is base64");
    Some(serde_json::from_slice(&bytes).expect("patch is a JSON patch"))
}

/// The request body with `request.object` replaced.
fn with_object(body: &[u8], object: &Value) -> Vec<u8> {
    let mut review: Value = serde_json::from_slice(body).expect("input is JSON");
    review["request"]["object"] = object.clone();
    serde_json::to_vec(&review).expect("serialises")
}

#[tokio::test]
async fn every_case_gets_the_expected_answer_and_matches_its_snapshot() {
    let policy = policy_in_mode("Enforce");
    let cluster = objects();
    let bless = std::env::var_os("TOKENGATE_BLESS").is_some();
    let mut failures = Vec::new();
    for case in cases() {
        let body = input(&case.name);
        let response = respond(&body, webhook(&case.webhook), &policy, &cluster).await;
        let label = format!("{} ({}): {}", case.name, case.webhook, case.why);
        let request: Value = serde_json::from_slice(&body).expect("input is JSON");
        assert_eq!(response["response"]["uid"], request["request"]["uid"], "{label}: uid echoed");
        assert_eq!(response["apiVersion"], "admission.k8s.io/v1", "{label}");
        if response["response"]["allowed"] != json!(case.allowed) {
            failures.push(format!("{label}: allowed should be {}; got {}", case.allowed, response["response"]));
            continue;
        }
        let patch = patch_of(&response);
        if patch.is_some() != case.patched {
            failures.push(format!("{label}: patched should be {}; got {}", case.patched, response["response"]));
        }
        let message = response.pointer("/response/status/message").and_then(Value::as_str).unwrap_or_default();
        if !case.allowed {
            let code = if case.invalid { 400 } else { 403 };
            assert_eq!(response.pointer("/response/status/code"), Some(&json!(code)), "{label}");
        }
        for fragment in &case.message_contains {
            if !message.contains(fragment.as_str()) {
                failures.push(format!("{label}: message should contain {fragment:?}; got {message:?}"));
            }
        }
        let snapshot = fixtures().join(format!("reviews/expected/{}.{}.json", case.name, case.webhook));
        // Snapshots show the patch decoded, so a reviewer can read it.
        let mut readable = response.clone();
        if let Some(patch) = &patch {
            readable["response"]["patch"] = serde_json::to_value(patch).expect("serialises");
        }
        let pretty = serde_json::to_string_pretty(&readable).expect("serialises") + "\n";
        if bless {
            std::fs::create_dir_all(snapshot.parent().expect("has a parent")).expect("mkdir");
            std::fs::write(&snapshot, &pretty).expect("write snapshot");
        } else {
            match std::fs::read_to_string(&snapshot) {
                Ok(expected) if expected == pretty => {}
                Ok(expected) => failures.push(format!(
                    "{label}: response differs from {}:\n{}",
                    snapshot.display(),
                    pretty_assertions::StrComparison::new(&expected, &pretty)
                )),
                Err(_) => {
                    failures.push(format!("{label}: no snapshot {} (run with TOKENGATE_BLESS=1)", snapshot.display()))
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n\n"));
}

#[tokio::test]
async fn every_patch_applies_is_add_only_idempotent_and_passes_validation() {
    let policy = policy_in_mode("Enforce");
    let cluster = objects();
    for case in cases().into_iter().filter(|c| c.patched) {
        let body = input(&case.name);
        let response = respond(&body, Webhook::Mutate, &policy, &cluster).await;
        let patch = patch_of(&response).expect("patched case has a patch");
        assert_eq!(response.pointer("/response/patchType"), Some(&json!("JSONPatch")));
        assert!(patch.0.iter().all(|op| matches!(op, json_patch::PatchOperation::Add(_))), "{}: only add", case.name);
        let request: Value = serde_json::from_slice(&body).expect("JSON");
        let mut pod = request["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).unwrap_or_else(|e| panic!("{}: patch applies: {e}", case.name));

        let again = respond(&with_object(&body, &pod), Webhook::Mutate, &policy, &cluster).await;
        assert!(patch_of(&again).is_none(), "{}: mutating the patched pod yields no patch: {again}", case.name);
        let validated = respond(&with_object(&body, &pod), Webhook::Validate, &policy, &cluster).await;
        assert_eq!(validated["response"]["allowed"], json!(true), "{}: patched pod is valid: {validated}", case.name);
    }
}

/// Mutates a fixture and returns the patched pod.
async fn mutated(name: &str) -> Value {
    let policy = policy_in_mode("Enforce");
    let body = input(name);
    let response = respond(&body, Webhook::Mutate, &policy, &objects()).await;
    let patch = patch_of(&response).unwrap_or_else(|| panic!("{name}: expected a patch, got {response}"));
    let request: Value = serde_json::from_slice(&body).expect("JSON");
    let mut pod = request["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).expect("patch applies");
    pod
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"].as_array()?.iter().find(|e| e["name"] == name)?.get("value")?.as_str()
}

fn mount_path_of<'a>(container: &'a Value, volume: &str) -> Option<&'a str> {
    container["volumeMounts"].as_array()?.iter().find(|m| m["name"] == volume)?.get("mountPath")?.as_str()
}

#[tokio::test]
async fn irsa_injection_creates_missing_arrays_and_reads_the_role_from_the_service_account() {
    let pod = mutated("pod-irsa-mutate").await;
    let volumes = pod["spec"]["volumes"].as_array().expect("volumes created");
    let volume = volumes.iter().find(|v| v["name"] == "aws-iam-token").expect("token volume added");
    assert_eq!(
        volume["projected"]["sources"][0]["serviceAccountToken"],
        json!({"audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"})
    );
    for container in pod["spec"]["containers"].as_array().expect("containers") {
        assert_eq!(
            mount_path_of(container, "aws-iam-token"),
            Some("/var/run/secrets/eks.amazonaws.com/serviceaccount")
        );
        assert_eq!(env_value(container, "AWS_ROLE_ARN"), Some("arn:aws:iam::111122223333:role/web"));
        assert_eq!(
            env_value(container, "AWS_WEB_IDENTITY_TOKEN_FILE"),
            Some("/var/run/secrets/eks.amazonaws.com/serviceaccount/token")
        );
    }
}

#[tokio::test]
async fn injection_reaches_init_containers_and_native_sidecars_and_keeps_unknown_fields() {
    let body = input("pod-irsa-mutate-sidecar");
    let original: Value = serde_json::from_slice::<Value>(&body).expect("JSON")["request"]["object"].clone();
    let pod = mutated("pod-irsa-mutate-sidecar").await;
    let init = pod["spec"]["initContainers"].as_array().expect("init containers");
    let sidecar = init.iter().find(|c| c["restartPolicy"] == "Always").expect("native sidecar kept");
    assert!(sidecar.get("startupProbe").is_some(), "startupProbe survives");
    for container in init.iter().chain(pod["spec"]["containers"].as_array().expect("containers")) {
        assert!(mount_path_of(container, "aws-iam-token").is_some(), "{} mounts the token", container["name"]);
        assert!(env_value(container, "AWS_ROLE_ARN").is_some(), "{} has the role", container["name"]);
    }
    // Everything the pod had is still there, unchanged, ahead of what was added.
    let app = &pod["spec"]["containers"][0];
    let original_app = &original["spec"]["containers"][0];
    assert_eq!(app["env"][0], original_app["env"][0]);
    assert_eq!(app["volumeMounts"][0], original_app["volumeMounts"][0]);
    assert_eq!(app["x-tokengate-test"], original_app["x-tokengate-test"]);
    assert_eq!(pod["spec"]["x-tokengate-test"], original["spec"]["x-tokengate-test"]);
    assert_eq!(pod["spec"]["volumes"][0], original["spec"]["volumes"][0]);
}

#[tokio::test]
async fn optional_injection_follows_the_pod_label_and_the_skip_annotation() {
    let pod = mutated("pod-azure-mutate").await;
    let app = &pod["spec"]["containers"][0];
    assert_eq!(mount_path_of(app, "azure-identity-token"), Some("/var/run/secrets/azure/tokens"));
    assert_eq!(
        env_value(app, "AZURE_FEDERATED_TOKEN_FILE"),
        Some("/var/run/secrets/azure/tokens/azure-identity-token")
    );
}

#[tokio::test]
async fn warn_mode_allows_with_warnings_and_audit_mode_records_annotations() {
    let cluster = objects();
    let warn = policy_in_mode("Warn");
    let audit = policy_in_mode("Audit");
    let mut denied_cases = 0;
    for case in cases().into_iter().filter(|c| !c.allowed) {
        let body = input(&case.name);
        if case.invalid {
            for policy in [&warn, &audit] {
                let answer = respond(&body, webhook(&case.webhook), policy, &cluster).await;
                assert_eq!(answer["response"]["allowed"], json!(false), "{} is refused in every mode", case.name);
                assert_eq!(answer["response"]["auditAnnotations"]["decision"], "invalid");
            }
            continue;
        }
        denied_cases += 1;
        let warned = respond(&body, webhook(&case.webhook), &warn, &cluster).await;
        let response = &warned["response"];
        assert_eq!(response["allowed"], json!(true), "{} in Warn mode is allowed", case.name);
        assert!(response.get("status").is_none(), "{}", case.name);
        let warnings = response["warnings"].as_array().expect("warnings");
        assert!(!warnings.is_empty(), "{} warns", case.name);
        // Within the API server's 256 (longer ones may be cut), and field path first.
        assert!(
            warnings.iter().all(|w| w.as_str().expect("string").chars().count() <= MAX_WARNING_CHARS),
            "{}: <= {MAX_WARNING_CHARS} chars",
            case.name
        );
        let field_first = |w: &Value| {
            let rest = w.as_str().and_then(|w| w.strip_prefix("tokengate: ")).unwrap_or_default();
            rest.split_once(": ").is_some_and(|(field, _)| !field.contains(' '))
        };
        assert!(warnings.iter().all(field_first), "{}: each warning starts with its field: {warnings:?}", case.name);
        assert_eq!(response["auditAnnotations"]["decision"], "warned");

        let audited = respond(&body, webhook(&case.webhook), &audit, &cluster).await;
        let response = &audited["response"];
        assert_eq!(response["allowed"], json!(true), "{} in Audit mode is allowed", case.name);
        assert_eq!(response["auditAnnotations"]["decision"], "audited");
        let violations = response["auditAnnotations"]["violations"].as_str().expect("violations recorded");
        for fragment in &case.message_contains {
            assert!(violations.contains(fragment.as_str()), "{}: {violations}", case.name);
        }
    }
    assert!(denied_cases >= 10, "the cases cover denials");
}

#[tokio::test]
async fn dry_run_gets_the_same_answer() {
    let policy = policy_in_mode("Enforce");
    let cluster = objects();
    let dry = respond(&input("pod-dry-run-denied"), Webhook::Validate, &policy, &cluster).await;
    let real = respond(&input("pod-forbidden-audience"), Webhook::Validate, &policy, &cluster).await;
    assert_eq!(dry["response"]["status"], real["response"]["status"]);
    assert_eq!(dry["response"]["allowed"], real["response"]["allowed"]);
}

#[tokio::test]
async fn undecodable_bodies_get_a_clear_answer() {
    let policy = policy_in_mode("Enforce");
    let cluster = objects();
    let cases: [(&[u8], Option<&str>); 7] = [
        (b"", None),
        (b"{not json", None),
        (b"[]", None),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, None),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","object":7,"userInfo":"x"}}"#, Some("u1")),
        (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u2"}}"#, Some("u2")),
        (&[0xff, 0xfe, 0x00], None),
    ];
    for (body, uid) in cases {
        match (review(body, Webhook::Validate, &policy, &cluster).await, uid) {
            (Reply::BadRequest(message), None) => assert!(!message.is_empty()),
            (Reply::Review { body, .. }, Some(uid)) => {
                let response: Value = serde_json::from_slice(&body).expect("JSON");
                assert_eq!(response["response"]["uid"], uid);
                assert_eq!(response["response"]["allowed"], json!(false));
                assert_eq!(response["response"]["status"]["code"], json!(400));
            }
            (reply, _) => panic!("unexpected reply {reply:?} for {:?}", String::from_utf8_lossy(body)),
        }
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let body = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u3","object":{deep}}}}}"#
    );
    assert!(matches!(review(body.as_bytes(), Webhook::Validate, &policy, &cluster).await, Reply::Review { .. }));
}
