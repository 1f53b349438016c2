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
            .starts_with("examples/manifests/bad/pod-forbidden-audience.yaml:5: Pod team-a/gcs-sync: spec.volumes[0]")),
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

/// Writes `files` into a fresh temporary directory.
fn scratch(label: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tokengate-ci-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    dir
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// A Helm-rendered IRSA workload: no namespace anywhere, and an env that collides with the
/// injection's AWS_ROLE_ARN.
const HELM_IRSA: &str = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: app\n  annotations: {eks.amazonaws.com/role-arn: 'arn:aws:iam::1:role/real'}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: app}\nspec:\n  serviceAccountName: app\n  containers:\n    - name: app\n      image: app\n      env: [{name: AWS_ROLE_ARN, value: 'arn:aws:iam::1:role/other'}]\n";

#[test]
fn check_namespace_applies_to_every_namespace_less_object() {
    let dir = scratch("ns", &[("chart.yaml", HELM_IRSA)]);
    let path = dir.to_str().expect("utf-8");
    let output = tokengate(&["check", "--policy", "examples/policy.yaml", "-n", "payments", path], b"");
    assert_eq!(code(&output), 1, "the collision is found with -n as without it: {}", text(&output.stdout));
    assert!(text(&output.stdout).contains("Pod payments/app") && text(&output.stdout).contains("AWS_ROLE_ARN"));
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn lookups_that_find_nothing_are_noted_and_fail_under_strict() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: team-a}\nspec:\n  containers: [{name: app, image: app}]\n  volumes: [{name: s, csi: {driver: secrets-store.csi.k8s.io}}]\n";
    let account = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: team-a}\n";
    let dir = scratch("miss", &[("pod.yaml", pod), ("sa.yaml", account)]);
    let path = dir.to_str().expect("utf-8");
    let output = tokengate(&["check", "--policy", "examples/policy.yaml", path], b"");
    assert_eq!(code(&output), 0, "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("note: ")
            && text(&output.stderr).contains(
                "CSIDriver secrets-store.csi.k8s.io is not among the objects: its token requests were not checked"
            ),
        "{}",
        text(&output.stderr)
    );
    let strict = tokengate(&["check", "--policy", "examples/policy.yaml", "--strict", path], b"");
    assert_eq!(code(&strict), 1);
    let with_driver = tokengate(
        &[
            "check",
            "--policy",
            "examples/policy.yaml",
            "--strict",
            "--objects",
            "examples/manifests/good/csidriver-secrets-store.yaml",
            path,
        ],
        b"",
    );
    assert_eq!(code(&with_driver), 0, "{}", text(&with_driver.stderr));
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn nothing_checked_is_said_and_fails_under_strict() {
    let rollout = "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: r}\nspec: {}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n";
    let dir = scratch("none", &[("rollout.yaml", rollout), ("empty/.keep", "")]);
    let path = dir.to_str().expect("utf-8");
    let output = tokengate(&["check", "--policy", "examples/policy.yaml", path], b"");
    assert_eq!(code(&output), 0);
    let stderr = text(&output.stderr);
    assert!(stderr.contains("checked 0 object(s)") && stderr.contains("1 ConfigMap, 1 Rollout"), "{stderr}");
    assert!(stderr.contains("nothing was checked"), "{stderr}");
    assert_eq!(code(&tokengate(&["check", "--policy", "examples/policy.yaml", "--strict", path], b"")), 1);
    let empty = dir.join("empty");
    let empty =
        tokengate(&["check", "--policy", "examples/policy.yaml", "--strict", empty.to_str().expect("utf-8")], b"");
    assert_eq!(code(&empty), 1, "an empty directory fails under --strict");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn fail_on_warn_gates_a_warn_mode_policy() {
    let policy = std::fs::read_to_string(root().join("examples/policy.yaml")).expect("policy");
    let dir = scratch("warn-gate", &[("warn.yaml", &policy.replace("mode: Enforce", "mode: Warn"))]);
    let warn = dir.join("warn.yaml");
    let warn = warn.to_str().expect("utf-8");
    assert_eq!(code(&tokengate(&["check", "--policy", warn, "examples/manifests"], b"")), 0);
    assert_eq!(code(&tokengate(&["check", "--policy", warn, "--fail-on-warn", "examples/manifests"], b"")), 1);
    assert_eq!(code(&tokengate(&["check", "--policy", warn, "--fail-on-warn", "examples/manifests/good"], b"")), 0);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn policy_validate_reports_every_problem_in_one_run_at_its_line() {
    let typos = "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec:\n  moed: Warn\n  expiraton: {}\n  audiences:\n    - audiense: vault\n      audience: vault\n      namespace: [a]\n  csiDrivers: [{name: a, audiences: 3}]\n  injections: []\n  exemptons: {}\n";
    let dir = scratch("typos", &[("policy.yaml", typos)]);
    let file = dir.join("policy.yaml");
    let file = file.to_str().expect("utf-8");
    let output = tokengate(&["policy", "validate", file], b"");
    assert_eq!(code(&output), 1);
    let stdout = text(&output.stdout);
    for expected in [
        format!("{file}:4:3: spec.moed: unknown field `moed`"),
        format!("{file}:5:3: spec.expiraton: unknown field"),
        format!("{file}:7:7: spec.audiences[0].audiense: unknown field"),
        format!("{file}:9:7: spec.audiences[0].namespace: unknown field"),
        format!("{file}:10:26: spec.csiDrivers[0].audiences: invalid type"),
        format!("{file}:12:3: spec.exemptons: unknown field"),
    ] {
        assert!(stdout.contains(&expected), "{expected}\nin\n{stdout}");
    }
    let from_stdin = tokengate(&["policy", "validate", "-"], typos.as_bytes());
    assert!(text(&from_stdin.stdout).contains("-:4:3: spec.moed"), "{}", text(&from_stdin.stdout));
    let kyverno =
        tokengate(&["policy", "validate", "-"], b"apiVersion: kyverno.io/v1\nkind: ClusterPolicy\nspec: {rules: []}\n");
    assert!(text(&kyverno.stdout).contains("this is a ClusterPolicy (kyverno.io/v1), not a TokenPolicy"));
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// A policy whose first mistake is a missing required field, then mistakes after it.
const BROKEN_POLICY: &str = "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec:\n  mode: Enforcee\n  expiration: {minSeconds: \"x\"}\n  audiences:\n    - audiance: vault\n    - audience: sts.amazonaws.com\n      maxExpirationSeconds: []\n";

#[test]
fn a_missing_field_or_a_type_error_hides_no_other_problem() {
    let dir = scratch("broken", &[("policy.yaml", BROKEN_POLICY)]);
    let file = dir.join("policy.yaml");
    let file = file.to_str().expect("utf-8");
    let output = tokengate(&["policy", "validate", file], b"");
    assert_eq!(code(&output), 1);
    let stdout = text(&output.stdout);
    for expected in [
        format!("{file}:4:3: spec.mode: unknown variant `Enforcee`"),
        format!("{file}:5:16: spec.expiration.minSeconds: invalid type: string \"x\", expected an integer"),
        format!("{file}:7:7: spec.audiences[0].audiance: unknown field"),
        "spec.audiences[0]: missing field `audience`".to_string(),
        // The element after the one taken out keeps its index and its line.
        format!("{file}:9:7: spec.audiences[1].maxExpirationSeconds: invalid type: sequence, expected an integer"),
    ] {
        assert!(stdout.contains(&expected), "{expected}\nin\n{stdout}");
    }
    assert!(!stdout.contains("u64") && !stdout.contains("struct "), "Rust's type names: {stdout}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn every_output_format_carries_an_invalid_policys_problems() {
    let dir = scratch("broken-formats", &[("policy.yaml", BROKEN_POLICY)]);
    let file = dir.join("policy.yaml");
    let file = file.to_str().expect("utf-8");
    for format in ["text", "json", "junit", "github"] {
        let output = tokengate(&["check", "--policy", file, "-o", format, "examples/manifests"], b"");
        assert_eq!(code(&output), 2, "{format}");
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(stderr.contains("spec.mode: unknown variant"), "{format}: {stderr}");
        match format {
            "json" => {
                let report: Value = serde_json::from_str(&stdout).expect("a JSON report");
                let errors = report["errors"].as_array().expect("errors");
                assert_eq!(errors.len(), 5, "{report}");
                assert!(errors.iter().all(|e| e["reason"] == "invalidPolicy" && e["line"].is_u64()), "{report}");
            }
            "junit" => assert!(stdout.contains("errors=\"5\"") && stdout.contains("spec.mode"), "{stdout}"),
            "github" => assert!(
                stdout.contains(&format!("::error file={file},line=4,title=tokengate%3A invalid policy::")),
                "{stdout}"
            ),
            _ => {}
        }
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn one_unreadable_file_does_not_hide_the_others() {
    let good =
        std::fs::read_to_string(root().join("examples/manifests/bad/pod-forbidden-audience.yaml")).expect("read");
    let dir = scratch("partial", &[("a-template.yaml", "{{ .Values.x }}: [\n"), ("b-pod.yaml", &good)]);
    let path = dir.to_str().expect("utf-8");
    let output = tokengate(&["check", "--policy", "examples/policy.yaml", path], b"");
    assert_eq!(code(&output), 2, "exit 2 at the end");
    assert!(
        text(&output.stdout).contains("Pod team-a/gcs-sync"),
        "the other file is checked: {}",
        text(&output.stdout)
    );
    assert!(text(&output.stderr).contains("a-template.yaml"), "{}", text(&output.stderr));
    let json = tokengate(&["check", "--policy", "examples/policy.yaml", "-o", "json", path], b"");
    let report: Value = serde_json::from_slice(&json.stdout).expect("JSON even so");
    assert_eq!(report["errors"].as_array().map(Vec::len), Some(1));
    assert_eq!(report["violations"].as_array().map(Vec::len), Some(1));
    let excluded =
        tokengate(&["check", "--policy", "examples/policy.yaml", "--exclude", "**/a-template.yaml", path], b"");
    assert_eq!(code(&excluded), 1, "{}", text(&excluded.stderr));
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn check_reads_standard_input() {
    let pod = std::fs::read(root().join("examples/manifests/bad/pod-forbidden-audience.yaml")).expect("read");
    let output = tokengate(&["check", "--policy", "examples/policy.yaml", "-"], &pod);
    assert_eq!(code(&output), 1);
    assert!(text(&output.stdout).starts_with("-:5: Pod team-a/gcs-sync"), "{}", text(&output.stdout));
}

#[test]
fn check_speaks_junit_and_github_annotations() {
    let junit = tokengate(&["check", "--policy", "examples/policy.yaml", "-o", "junit", "examples/manifests"], b"");
    assert_eq!(code(&junit), 1);
    let xml = text(&junit.stdout);
    assert!(xml.starts_with("<?xml") && xml.contains("<testsuite name=\"tokengate check\""), "{xml}");
    assert!(
        xml.contains(
            r#"<testcase classname="examples/manifests/bad/pod-forbidden-audience.yaml" name="Pod team-a/gcs-sync">"#
        ),
        "{xml}"
    );
    assert_eq!(
        xml.matches("<failure ").count(),
        text(&tokengate(&["check", "--policy", "examples/policy.yaml", "examples/manifests"], b"").stdout)
            .lines()
            .count()
    );
    let github = tokengate(&["check", "--policy", "examples/policy.yaml", "-o", "github", "examples/manifests"], b"");
    let annotations = text(&github.stdout);
    assert!(
        annotations.lines().any(|l| l.starts_with("::error file=examples/manifests/bad/pod-forbidden-audience.yaml,line=5,title=tokengate%3A Pod team-a/gcs-sync::spec.volumes[0]")),
        "{annotations}"
    );
}
