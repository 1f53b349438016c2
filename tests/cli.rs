//! The `tokengate` binary as users run it: exit codes, output formats, and `review` parity.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tokengate::cluster::ObjectStore;
use tokengate::manifest;
use tokengate::policy::Policy;
use tokengate::review::{review, Reply, Webhook};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tokengate(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tokengate starts");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
    child.wait_with_output().expect("tokengate finishes")
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited normally")
}

#[tokio::test]
async fn review_answers_byte_for_byte_what_the_library_answers() {
    let policy_path = "tests/fixtures/policy.yaml";
    let policy = Policy::parse(&std::fs::read_to_string(root().join(policy_path)).expect("policy")).expect("valid");
    let mut cluster = ObjectStore::default();
    for document in manifest::load_file(&root().join("tests/fixtures/objects.yaml")).expect("objects") {
        cluster.insert(&document.object).expect("decodes");
    }
    for (fixture, webhook, flag) in [
        ("pod-irsa-mutate", Webhook::Mutate, "mutate"),
        ("pod-forbidden-audience", Webhook::Validate, "validate"),
        ("tokenrequest-node-pvc", Webhook::Validate, "validate"),
    ] {
        let body = std::fs::read(root().join(format!("tests/fixtures/reviews/{fixture}.json"))).expect("fixture");
        let Reply::Review { body: expected, .. } = review(&body, webhook, &policy, &cluster).await else {
            panic!("{fixture} has a uid");
        };
        let output = tokengate(
            &["review", "--policy", policy_path, "--objects", "tests/fixtures/objects.yaml", "--webhook", flag],
            &body,
        );
        assert_eq!(code(&output), 0, "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(output.stdout, [expected, b"\n".to_vec()].concat(), "{fixture}");
    }
}

#[test]
fn review_without_a_uid_exits_1_with_a_message() {
    let output = tokengate(&["review", "--policy", "tests/fixtures/policy.yaml"], b"{not json");
    assert_eq!(code(&output), 1);
    assert!(String::from_utf8_lossy(&output.stderr).contains("not an AdmissionReview"));
}

#[test]
fn check_reports_each_violation_with_file_and_object() {
    let output = tokengate(&["check", "--policy", "examples/policy.yaml", "examples/manifests"], b"");
    assert_eq!(code(&output), 1, "violations in Enforce mode fail the check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.lines().any(|l| l
            .starts_with("examples/manifests/bad/pod-forbidden-audience.yaml: Pod team-a/gcs-sync: spec.volumes[0]")),
        "{stdout}"
    );
    assert!(stdout.lines().all(|l| l.contains("/bad/")), "good manifests pass: {stdout}");
    let good = tokengate(&["check", "--policy", "examples/policy.yaml", "examples/manifests/good"], b"");
    assert_eq!(code(&good), 0, "{}", String::from_utf8_lossy(&good.stdout));
}

#[test]
fn check_speaks_json() {
    let output =
        tokengate(&["check", "--policy", "examples/policy.yaml", "--output", "json", "examples/manifests"], b"");
    assert_eq!(code(&output), 1);
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["mode"], "Enforce");
    let violations = report["violations"].as_array().expect("violations");
    assert!(!violations.is_empty());
    for key in ["file", "kind", "name", "field", "message"] {
        assert!(violations.iter().all(|v| v[key].is_string()), "every violation has {key}");
    }
}

#[test]
fn check_passes_in_warn_mode_and_fails_on_unreadable_input() {
    let dir = std::env::temp_dir().join(format!("tokengate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let warn = dir.join("warn.yaml");
    let text = std::fs::read_to_string(root().join("examples/policy.yaml")).expect("policy");
    std::fs::write(&warn, text.replace("mode: Enforce", "mode: Warn")).expect("write");
    let warn = warn.to_str().expect("utf-8 path");
    assert_eq!(code(&tokengate(&["check", "--policy", warn, "examples/manifests"], b"")), 0);
    assert_eq!(code(&tokengate(&["check", "--policy", warn, "no/such/dir"], b"")), 2);
    let broken = dir.join("broken.yaml");
    std::fs::write(&broken, "kind: [").expect("write");
    assert_eq!(code(&tokengate(&["check", "--policy", warn, broken.to_str().expect("utf-8")], b"")), 2);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn policy_validate_lists_every_problem() {
    assert_eq!(code(&tokengate(&["policy", "validate", "examples/policy.yaml"], b"")), 0);
    let dir = std::env::temp_dir().join(format!("tokengate-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec:\n  expiration: {minSeconds: 60, maxSeconds: 30}\n  csiDrivers: [{name: a}, {name: a}]\n",
    )
    .expect("write");
    let output = tokengate(&["policy", "validate", bad.to_str().expect("utf-8")], b"");
    assert_eq!(code(&output), 1);
    let stdout = String::from_utf8_lossy(&output.stdout);
    for path in ["spec.expiration.minSeconds", "spec.expiration.maxSeconds", "spec.csiDrivers[1].name"] {
        assert!(stdout.contains(path), "{path} reported: {stdout}");
    }
    assert_eq!(code(&tokengate(&["policy", "validate", "no/such/file.yaml"], b"")), 2);
    // Valid, but without apiServerAudiences: a warning on stderr, exit 0.
    let unlisted = dir.join("unlisted.yaml");
    std::fs::write(&unlisted, "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec: {}\n").expect("write");
    let output = tokengate(&["policy", "validate", unlisted.to_str().expect("utf-8")], b"");
    assert_eq!(code(&output), 0);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("warning: spec.apiServerAudiences: absent"), "{stderr}");
    let listed = tokengate(&["policy", "validate", "examples/policy.yaml"], b"");
    assert!(!String::from_utf8_lossy(&listed.stderr).contains("warning"), "no warning when the list is there");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn help_explains_every_subcommand() {
    let output = tokengate(&["--help"], b"");
    let help = String::from_utf8_lossy(&output.stdout);
    for word in ["review", "check", "policy"] {
        assert!(help.contains(word), "{help}");
    }
    let check = String::from_utf8_lossy(&tokengate(&["check", "--help"], b"").stdout).to_string();
    for flag in ["--policy", "--objects", "--output", "--namespace"] {
        assert!(check.contains(flag), "{check}");
    }
}
