//! `tokengate explain`: golden text and JSON on the fixtures (automount token, IRSA injection,
//! a CSI driver reached through a PVC, a legacy token Secret, violations), its agreement with
//! `check`, its exit status, and `--pod` against a fake API server.
//!
//! Regenerate the snapshots with `TOKENGATE_BLESS=1 cargo test --test explain` and review the diff.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{json, Value};
use support::fake_apiserver::FakeApiServer;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/explain").join(name)
}

fn tokengate(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("tokengate runs")
}

const POLICY: &str = "examples/policy.yaml";
const OBJECTS: &str = "tests/fixtures/explain/objects.yaml";
const MANIFESTS: &str = "tests/fixtures/explain/manifests.yaml";

/// Compares `actual` with the snapshot `name`, or writes it when blessing.
fn assert_snapshot(name: &str, actual: &str) {
    let path = fixture(name);
    if std::env::var_os("TOKENGATE_BLESS").is_some() {
        std::fs::write(&path, actual).expect("write the snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("no snapshot {} (run with TOKENGATE_BLESS=1)", path.display()));
    pretty_assertions::assert_eq!(expected, actual, "snapshot {name}");
}

#[test]
fn text_output_matches_the_golden_file_and_exits_1_on_a_denied_violation() {
    let output = tokengate(&["explain", "--policy", POLICY, "--objects", OBJECTS, MANIFESTS]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_snapshot("expected.txt", &stdout);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("explained 4 object(s): 2 violation(s), policy mode Enforce")
    );
}

#[test]
fn json_output_matches_the_golden_file() {
    let output = tokengate(&["explain", "--policy", POLICY, "--objects", OBJECTS, "--output", "json", MANIFESTS]);
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_snapshot("expected.json", &format!("{}\n", serde_json::to_string_pretty(&report).expect("encode")));

    let objects = report["objects"].as_array().expect("objects");
    let rows = |name: &str| -> Vec<Value> {
        let object = objects.iter().find(|o| o["name"] == name).expect("object explained");
        object["credentials"].as_array().expect("rows").clone()
    };
    // The automount token comes first, with the API server's extension and the kubelet's refresh.
    let web = rows("web-5d8f7");
    assert_eq!(web[0]["source"], "automount");
    assert_eq!(
        (web[0]["requestedSeconds"].as_u64(), web[0]["effectiveSeconds"].as_u64()),
        (Some(3607), Some(31_536_000))
    );
    assert_eq!(web[0]["refreshAfterSeconds"], 2886);
    assert_eq!(
        web[1]["verdict"],
        json!({"result": "allowed", "entry": 2, "namespaces": ["team-*"], "serviceAccounts": ["*"], "maxExpirationSeconds": 7200})
    );
    // The injection, with the role ARN resolved from the service account's annotation.
    let uploader = rows("uploader");
    let irsa = uploader.iter().find(|r| r["injection"]["name"] == "aws-web-identity").expect("injected row");
    assert_eq!(irsa["injection"]["addedByWebhook"], true);
    assert!(irsa["injection"]["env"].as_array().expect("env").contains(
        &json!({"container": "app", "name": "AWS_ROLE_ARN", "value": "arn:aws:iam::111122223333:role/uploader"})
    ));
    // The CSI driver reached through a claim, and the legacy Secret (its data never shown).
    let reports = rows("reports");
    let csi = reports.iter().find(|r| r["source"] == "csiDriver").expect("CSI row");
    assert_eq!(
        csi["driver"]["reachedThrough"],
        "PersistentVolumeClaim reports-secrets -> PersistentVolume pv-reports-secrets"
    );
    assert_eq!(csi["driver"]["requiresRepublish"], true);
    let legacy = reports.iter().find(|r| r["source"] == "legacySecret").expect("legacy row");
    assert_eq!(legacy["verdict"]["result"], "secretRefused", "the Secret's verdict is not the pod's");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("bm90LWEtcmVhbC10b2tlbg"));
}

#[test]
fn explain_and_check_report_the_same_violations_notes_and_exit_status() {
    let explained = tokengate(&["explain", "--policy", POLICY, "--objects", OBJECTS, "--output", "json", MANIFESTS]);
    let checked = tokengate(&["check", "--policy", POLICY, "--objects", OBJECTS, "--output", "json", MANIFESTS]);
    assert_eq!(explained.status.code(), checked.status.code(), "one engine, one exit status");
    let explained: Value = serde_json::from_slice(&explained.stdout).expect("explain JSON");
    let checked: Value = serde_json::from_slice(&checked.stdout).expect("check JSON");
    let mut from_explain = Vec::new();
    let mut notes_explain = Vec::new();
    for object in explained["objects"].as_array().expect("objects") {
        let name = object["name"].clone();
        for row in object["credentials"].as_array().expect("rows") {
            if row["verdict"]["result"] == "violation" {
                from_explain.push((name.clone(), row["verdict"]["field"].clone(), row["verdict"]["message"].clone()));
            }
        }
        for violation in object["otherViolations"].as_array().expect("others") {
            from_explain.push((name.clone(), violation["field"].clone(), violation["message"].clone()));
        }
        for note in object["notes"].as_array().expect("notes") {
            notes_explain.push((name.clone(), note.clone()));
        }
    }
    let from_check: Vec<_> = checked["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|v| (v["name"].clone(), v["field"].clone(), v["message"].clone()))
        .collect();
    let notes_check: Vec<_> =
        checked["notes"].as_array().expect("notes").iter().map(|n| (n["name"].clone(), n["message"].clone())).collect();
    assert!(!from_check.is_empty() && !notes_check.is_empty());
    let sorted = |mut v: Vec<(Value, Value, Value)>| {
        v.sort_by_key(|t| t.1.to_string());
        v.sort_by_key(|t| t.0.to_string());
        v
    };
    assert_eq!(sorted(from_explain), sorted(from_check), "the same violations, worded the same");
    assert_eq!(notes_explain, notes_check, "the same notes");
    assert_eq!(explained["violations"].as_u64(), Some(checked["violations"].as_array().expect("list").len() as u64));
}

#[test]
fn a_dash_reads_the_manifests_from_standard_input() {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["explain", "--policy", POLICY, "--objects", OBJECTS, "-"])
        .current_dir(root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tokengate runs");
    let manifests = std::fs::read(root().join(MANIFESTS)).expect("manifests");
    child.stdin.take().expect("stdin").write_all(&manifests).expect("write stdin");
    let output = child.wait_with_output().expect("tokengate ends");
    let from_file = tokengate(&["explain", "--policy", POLICY, "--objects", OBJECTS, MANIFESTS]);
    assert_eq!(output.status.code(), from_file.status.code(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Pod payments/ledger (-)"), "{stdout}");
    assert_eq!(
        stdout.replace(" (-)", ""),
        String::from_utf8_lossy(&from_file.stdout).replace(&format!(" ({MANIFESTS})"), "")
    );
}

#[test]
fn exit_status_is_0_in_audit_mode_and_2_on_unreadable_input() {
    let dir = support::TempDir::new("explain-exit");
    let policy = std::fs::read_to_string(root().join(POLICY)).expect("policy").replace("mode: Enforce", "mode: Audit");
    let audit = dir.write("policy.yaml", policy);
    let audit = audit.to_str().expect("utf-8 path");
    let output = tokengate(&["explain", "--policy", audit, "--objects", OBJECTS, MANIFESTS]);
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("AUDITED spec.volumes[0]"));
    assert_eq!(tokengate(&["explain", "--policy", POLICY, "no/such/file.yaml"]).status.code(), Some(2));
    assert_eq!(tokengate(&["explain", "--policy", "no/such/policy.yaml", MANIFESTS]).status.code(), Some(2));
    // Neither manifests nor --pod: a usage error.
    assert_eq!(tokengate(&["explain", "--policy", POLICY]).status.code(), Some(2));
}

#[tokio::test]
async fn explains_a_live_pod_of_the_current_kubeconfig() {
    let api = FakeApiServer::start().await;
    api.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "web", "namespace": "team-a", "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/web"}}}));
    api.apply(json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": "secrets-store.csi.k8s.io"},
        "spec": {"tokenRequests": [{"audience": "vault"}], "requiresRepublish": true, "serviceAccountTokenInSecrets": true}}));
    api.apply(
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "team-a"},
        "spec": {"volumeName": "pv-data"}}),
    );
    api.apply(json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-data"},
        "spec": {"csi": {"driver": "secrets-store.csi.k8s.io", "volumeHandle": "h"}}}));
    api.apply(json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": "web-token", "namespace": "team-a", "annotations": {"kubernetes.io/service-account.name": "web"}},
        "data": {"token": "c2VjcmV0LWRhdGE="}}));
    api.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "team-a"},
        "spec": {"serviceAccountName": "web", "nodeName": "node-1",
            "containers": [{"name": "app", "image": "app", "volumeMounts": [
                {"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
                {"name": "data", "mountPath": "/data"}, {"name": "old", "mountPath": "/old"}]}],
            "volumes": [
                {"name": "kube-api-access-abcde", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "old", "secret": {"secretName": "web-token"}}]}}));
    let dir = support::TempDir::new("explain-pod");
    let kubeconfig = dir.write("kubeconfig", api.kubeconfig());
    let run = |args: Vec<&'static str>| {
        let kubeconfig = kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
                .args(args)
                .current_dir(root())
                .env("KUBECONFIG", &kubeconfig)
                .output()
                .expect("tokengate runs")
        })
    };
    let output = run(vec!["explain", "--policy", POLICY, "--pod", "team-a/web"]).await.expect("task");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    // The running pod lacks its required IRSA injection, and its legacy Secret is not listed.
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("automount token: volume kube-api-access-abcde"), "{stdout}");
    assert!(stdout.contains("driver secrets-store.csi.k8s.io through volume data (PersistentVolumeClaim data -> PersistentVolume pv-data)"), "{stdout}");
    assert!(stdout.contains("requiresRepublish true, token in the secrets field true"), "{stdout}");
    assert!(stdout.contains("DENIED spec.volumes: injection \"aws-web-identity\" is required"), "{stdout}");
    assert!(stdout.contains("legacy Secret token: Secret web-token through volume old"), "{stdout}");
    assert!(!stdout.contains("c2VjcmV0") && !stderr.contains("c2VjcmV0"), "a Secret's data is never shown");

    let missing = run(vec!["explain", "--policy", POLICY, "--pod", "team-a/nope"]).await.expect("task");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("pod team-a/nope not found"));
}

/// The rows of the object `name` in an `explain --output json` report.
fn rows_of(report: &Value, name: &str) -> Vec<Value> {
    let objects = report["objects"].as_array().expect("objects");
    let object = objects.iter().find(|o| o["name"] == name).expect("object explained");
    object["credentials"].as_array().expect("rows").clone()
}

#[test]
fn each_credential_says_whether_the_api_server_or_the_webhook_decides_it() {
    // Text: a plain projected token is decided by the pods' native policy once applied; a CSI
    // volume's token by the webhook, with why.
    let text = tokengate(&["explain", "--policy", POLICY, "--objects", OBJECTS, MANIFESTS]);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    let ledger = text.split("\n\n").find(|block| block.starts_with("Pod payments/ledger")).expect("ledger's block");
    assert!(
        ledger.contains("\n    decided by the API server (ValidatingAdmissionPolicy tokengate-pods, rules pod-token-audiences, pod-token-lifetimes) when the native policies are applied (tokengate webhooks --native); the webhook otherwise\n"),
        "{ledger}"
    );
    assert!(
        ledger.contains("\n    decided by the webhook, even beside the native policies (rule pod-csi-drivers): the tokens a CSI driver mints for the pod are listed in the CSIDriver object, which CEL cannot look up"),
        "{ledger}"
    );
    // JSON: the same, as fields of each row; the native policy named after --native-name.
    let args = ["--policy", POLICY, "--objects", OBJECTS, "--native-name", "tg", "--output", "json", MANIFESTS];
    let json = tokengate(&[&["explain"][..], &args[..]].concat());
    let report: Value = serde_json::from_slice(&json.stdout).expect("JSON report");
    let ledger = rows_of(&report, "ledger");
    let projected = ledger.iter().find(|r| r["source"] == "projected").expect("projected row");
    assert_eq!(projected["decidedBy"], "native");
    assert_eq!(projected["nativePolicy"], "tg-pods");
    assert_eq!(projected["rules"], json!(["pod-token-audiences", "pod-token-lifetimes"]));
    assert!(projected.get("webhookReason").is_none());
    let csi = ledger.iter().find(|r| r["source"] == "csiDriver").expect("CSI row");
    assert_eq!(csi["decidedBy"], "webhook");
    assert_eq!(csi["rules"], json!(["pod-csi-drivers"]));
    assert!(csi["webhookReason"].as_str().is_some_and(|why| why.contains("CEL cannot look up")), "{csi}");
    assert!(csi.get("nativePolicy").is_none());
    // A token an injection adds needs the webhook; a CSI driver reached through a claim is the
    // kubelet's TokenRequest, which the webhook decides; a legacy token Secret is native.
    let uploader = rows_of(&report, "uploader");
    let injected = uploader.iter().find(|r| r["injection"]["name"] == "aws-web-identity").expect("injected row");
    assert_eq!((&injected["decidedBy"], &injected["rules"]), (&json!("webhook"), &json!(["pod-injections"])));
    let reports = rows_of(&report, "reports");
    let claimed = reports.iter().find(|r| r["source"] == "csiDriver").expect("CSI row");
    assert_eq!(claimed["rules"], json!(["tokenrequest-kubelets"]));
    let legacy = reports.iter().find(|r| r["source"] == "legacySecret").expect("legacy row");
    assert_eq!((&legacy["decidedBy"], &legacy["nativePolicy"]), (&json!("native"), &json!("tg-legacy-token-secrets")));
}

#[test]
fn check_says_who_decides_each_violation_in_json_sarif_and_its_summary() {
    let json = tokengate(&["check", "--policy", POLICY, "--objects", OBJECTS, "--output", "json", MANIFESTS]);
    let report: Value = serde_json::from_slice(&json.stdout).expect("check JSON");
    let violations = report["violations"].as_array().expect("violations");
    let at = |field: &str| violations.iter().find(|v| v["field"] == field).expect("the violation").clone();
    let audience = at("spec.volumes[0].projected.sources[0].serviceAccountToken.audience");
    assert_eq!(
        (&audience["decidedBy"], &audience["rules"], &audience["nativePolicy"]),
        (&json!("native"), &json!(["pod-token-audiences"]), &json!("tokengate-pods"))
    );
    let csi = at("spec.volumes[1].csi.driver");
    assert_eq!((&csi["decidedBy"], &csi["rules"]), (&json!("webhook"), &json!(["pod-csi-drivers"])));
    assert!(csi["webhookReason"].as_str().is_some_and(|why| why.contains("CSIDriver object")), "{csi}");
    // The default text output stays one line per violation; the summary counts the native share.
    let summary = String::from_utf8_lossy(&json.stderr).to_string();
    assert!(
        summary.contains("; 1 of 2 violation(s) can be decided inside the API server (tokengate webhooks --native)"),
        "{summary}"
    );
    let text = tokengate(&["check", "--policy", POLICY, "--objects", OBJECTS, MANIFESTS]);
    assert!(!String::from_utf8_lossy(&text.stdout).contains("decided"));
    // SARIF: a property bag per violation.
    let sarif = tokengate(&["check", "--policy", POLICY, "--objects", OBJECTS, "--output", "sarif", MANIFESTS]);
    let log: Value = serde_json::from_slice(&sarif.stdout).expect("SARIF");
    let results = log["runs"][0]["results"].as_array().expect("results");
    let deciders: Vec<&Value> =
        results.iter().filter(|r| r["ruleId"] == "violation").map(|r| &r["properties"]["decidedBy"]).collect();
    assert_eq!(deciders, [&json!("native"), &json!("webhook")]);
}

/// An injection matched by namespace is added by the MutatingAdmissionPolicy: its token row names
/// it, and the pods' ValidatingAdmissionPolicy that judges the token. The shipped policy's
/// annotation-matched `aws-web-identity` stays with the webhook (above).
#[test]
fn a_token_the_native_injections_add_names_the_mutating_admission_policy() {
    let dir = std::env::temp_dir().join(format!("tokengate-explain-map-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec:\n  audiences:\n  - {audience: vault, namespaces: ['team-*']}\n  injections:\n  - {name: vault, match: {namespaces: ['team-*']}, volume: {name: vault-token, audience: vault, expirationSeconds: 3600, path: token}, mount: {mountPath: /var/run/secrets/vault}, env: [{name: VAULT_ADDR, value: 'https://vault:8200'}]}\n",
    )
    .expect("policy written");
    let pod = dir.join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: team-a}\nspec:\n  automountServiceAccountToken: false\n  containers: [{name: app, image: app}]\n",
    )
    .expect("pod written");
    let (policy, pod) = (policy.to_str().expect("UTF-8"), pod.to_str().expect("UTF-8"));
    let json = tokengate(&["explain", "--policy", policy, "--native-name", "tg", "--output", "json", pod]);
    let report: Value = serde_json::from_slice(&json.stdout).expect("JSON report");
    let rows = rows_of(&report, "web");
    let injected = rows.iter().find(|r| r["injection"]["name"] == "vault").expect("injected row");
    assert_eq!(injected["decidedBy"], "native", "{injected}");
    assert_eq!(injected["mutatingPolicy"], "tg-pod-injections");
    assert_eq!(injected["nativePolicy"], "tg-pods");
    assert_eq!(
        injected["rules"],
        json!(["pod-injections-by-namespace-and-labels", "pod-token-audiences", "pod-token-lifetimes"])
    );
    let text = tokengate(&["explain", "--policy", policy, "--native-name", "tg", pod]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("decided by the API server (added by MutatingAdmissionPolicy tg-pod-injections, rule pod-injections-by-namespace-and-labels; judged by ValidatingAdmissionPolicy tg-pods, rules pod-token-audiences, pod-token-lifetimes) when the native policies are applied (tokengate webhooks --native); the webhook otherwise"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).expect("temporary directory removed");
}
