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
        stdout.lines().any(|l| l.starts_with(
            "error: examples/manifests/bad/pod-forbidden-audience.yaml:5: Pod team-a/gcs-sync: spec.volumes[0]"
        )),
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
    for key in ["file", "kind", "name", "field", "message", "decidedBy"] {
        assert!(violations.iter().all(|v| v[key].is_string()), "every violation has {key}");
    }
    assert!(violations.iter().all(|v| v["rules"].as_array().is_some_and(|r| !r.is_empty())));
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

/// The example policy in Warn mode, in a fresh directory; the directory and the policy's path.
fn warn_policy(label: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let policy = std::fs::read_to_string(root().join("examples/policy.yaml")).expect("policy");
    let dir = scratch(label, &[("warn.yaml", &policy.replace("mode: Enforce", "mode: Warn"))]);
    let warn = dir.join("warn.yaml");
    (dir, warn)
}

#[test]
fn fail_on_warn_gates_a_warn_mode_policy() {
    let (dir, warn) = warn_policy("warn-gate");
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
    for format in FORMATS {
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
            "sarif" => {
                let results = sarif_results(&stdout);
                assert_eq!(results.iter().filter(|r| r["ruleId"] == "invalid-policy").count(), 5, "{stdout}");
            }
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
    assert!(text(&output.stdout).starts_with("error: -:5: Pod team-a/gcs-sync"), "{}", text(&output.stdout));
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

/// Every output format of `check`.
const FORMATS: [&str; 5] = ["text", "json", "junit", "github", "sarif"];

/// Runs `check` with `args` in every format.
fn check_all(args: &[&str], stdin: &[u8]) -> Vec<(&'static str, Output)> {
    FORMATS
        .iter()
        .map(|format| {
            let mut all = vec!["check", "--policy", "examples/policy.yaml", "-o", format];
            all.extend_from_slice(args);
            (*format, tokengate(&all, stdin))
        })
        .collect()
}

/// Checks a SARIF log against what the SARIF 2.1.0 schema requires (version, runs, tool.driver
/// name, rules with ids, results with a message text, a ruleId matching ruleIndex, a level, and
/// locations with an artifactLocation uri and a startLine of at least 1); returns its results.
fn sarif_results(stdout: &str) -> Vec<Value> {
    let log: Value = serde_json::from_str(stdout).expect("SARIF is JSON");
    assert_eq!(log["version"], "2.1.0");
    assert!(log["$schema"].as_str().is_some_and(|s| s.ends_with("sarif-2.1.0.json")), "{log}");
    let runs = log["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1);
    let driver = &runs[0]["tool"]["driver"];
    assert_eq!(driver["name"], "tokengate");
    let ids: Vec<&str> =
        driver["rules"].as_array().expect("rules").iter().map(|r| r["id"].as_str().expect("a rule id")).collect();
    assert!(runs[0]["invocations"][0]["executionSuccessful"].is_boolean());
    let results = runs[0]["results"].as_array().expect("results").clone();
    for result in &results {
        assert!(result["message"]["text"].is_string(), "{result}");
        let index = result["ruleIndex"].as_u64().expect("ruleIndex") as usize;
        assert_eq!(result["ruleId"].as_str(), Some(ids[index]), "{result}");
        assert!(["error", "warning", "note"].contains(&result["level"].as_str().expect("level")), "{result}");
        for location in result["locations"].as_array().into_iter().flatten() {
            if let Some(physical) = location.get("physicalLocation") {
                assert!(physical["artifactLocation"]["uri"].is_string(), "{result}");
                if let Some(region) = physical.get("region") {
                    assert!(region["startLine"].as_u64().is_some_and(|line| line >= 1), "{result}");
                }
            }
        }
    }
    results
}

/// `helm template` output: a ServiceAccount and a Pod with a forbidden audience, each under its
/// `# Source:` comment. The Pod starts on line 10 of the stream, line 1 of its document.
const HELM_STREAM: &str = "---\n# Source: chart/templates/serviceaccount.yaml\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: web\n  namespace: team-a\n---\n# Source: chart/templates/pod.yaml\napiVersion: v1\nkind: Pod\nmetadata:\n  name: gcs-sync\n  namespace: team-a\nspec:\n  serviceAccountName: web\n  containers: [{name: app, image: app}]\n  volumes:\n    - name: gcp-token\n      projected:\n        sources:\n          - serviceAccountToken: {audience: my-project.svc.id.goog, expirationSeconds: 3600, path: token}\n";

#[test]
fn helm_output_is_reported_against_each_template_at_an_approximate_line() {
    for (format, output) in check_all(&["-"], HELM_STREAM.as_bytes()) {
        assert_eq!(code(&output), 1, "{format}: {}", text(&output.stderr));
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        let approximate =
            "approximate line: counted from the start of the document rendered from this template; line 10 of -";
        assert!(stderr.contains("in 1 file(s): 1 violation(s)"), "{format}: {stderr}");
        match format {
            "text" => {
                assert!(
                    stdout.starts_with("error: chart/templates/pod.yaml:1: Pod team-a/gcs-sync: spec.volumes[0]"),
                    "{stdout}"
                );
                assert!(stdout.contains(approximate), "{stdout}");
            }
            "json" => {
                let report: Value = serde_json::from_str(&stdout).expect("JSON");
                let violation = &report["violations"][0];
                assert_eq!(
                    (violation["file"].as_str(), violation["line"].as_u64()),
                    (Some("chart/templates/pod.yaml"), Some(1))
                );
                assert_eq!(violation["rendered"], serde_json::json!({"stream": "-", "line": 10}));
            }
            "junit" => assert!(
                stdout.contains(r#"<testcase classname="chart/templates/pod.yaml" name="Pod team-a/gcs-sync">"#),
                "{stdout}"
            ),
            "github" => {
                let line = stdout.lines().next().expect("an annotation");
                assert!(
                    line.starts_with(
                        "::error file=chart/templates/pod.yaml,line=1,title=tokengate%3A Pod team-a/gcs-sync::"
                    ),
                    "{line}"
                );
                assert!(line.contains(approximate) && !stdout.contains("file=-"), "{stdout}");
            }
            _ => {
                let results = sarif_results(&stdout);
                let physical = &results[0]["locations"][0]["physicalLocation"];
                assert_eq!(physical["artifactLocation"]["uri"], "chart/templates/pod.yaml");
                assert_eq!(physical["region"]["startLine"], 1);
                assert!(results[0]["message"]["text"].as_str().is_some_and(|m| m.contains(approximate)));
            }
        }
    }
}

#[test]
fn other_streams_are_named_with_stdin_filename_and_unnamed_stdin_is_annotated_on_no_file() {
    let pod = std::fs::read(root().join("examples/manifests/bad/pod-forbidden-audience.yaml")).expect("read");
    for (format, output) in check_all(&["--stdin-filename", "rendered/app.yaml", "-"], &pod) {
        assert_eq!(code(&output), 1, "{format}");
        let stdout = text(&output.stdout);
        let expected = match format {
            "text" => "error: rendered/app.yaml:5: Pod team-a/gcs-sync",
            "json" => "\"file\": \"rendered/app.yaml\"",
            "junit" => "classname=\"rendered/app.yaml\"",
            "github" => "::error file=rendered/app.yaml,line=5,",
            _ => "\"uri\": \"rendered/app.yaml\"",
        };
        assert!(stdout.contains(expected), "{format}: {stdout}");
        assert!(!stdout.contains("approximate"), "{format}: exact lines are not called approximate");
    }
    let github = tokengate(&["check", "--policy", "examples/policy.yaml", "-o", "github", "-"], &pod);
    let stdout = text(&github.stdout);
    assert!(!stdout.contains("file="), "standard input is no file to annotate: {stdout}");
    assert!(stdout.contains("(standard input, line 5; name it with --stdin-filename)"), "{stdout}");
    let sarif = tokengate(&["check", "--policy", "examples/policy.yaml", "-o", "sarif", "-"], &pod);
    let results = sarif_results(&text(&sarif.stdout));
    assert!(results.iter().all(|r| r["locations"][0].get("physicalLocation").is_none()), "{results:?}");
}

/// A Pod whose token audience is misspelt (line 12), a Pod whose expiration is a string (line
/// 28), a CSIDriver with both mistakes (lines 35 and 36).
const MISREAD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: team-a}\nspec:\n  serviceAccountName: web\n  containers: [{name: app, image: app}]\n  volumes:\n    - name: t\n      projected:\n        sources:\n          - serviceAccountToken:\n              audiance: vault\n              expirationSeconds: 3600\n              path: token\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: q, namespace: team-a}\nspec:\n  serviceAccountName: web\n  containers: [{name: app, image: app}]\n  volumes:\n    - name: t\n      projected:\n        sources:\n          - serviceAccountToken:\n              audience: vault\n              expirationSeconds: \"3600\"\n              path: token\n---\napiVersion: storage.k8s.io/v1\nkind: CSIDriver\nmetadata: {name: secrets-store.csi.k8s.io}\nspec:\n  tokenRequests: [{audience: vault, expirationSecond: 3600}]\n  requiresRepublish: \"yes\"\n";

#[test]
fn misread_fields_are_errors_at_the_users_line_in_kubernetes_words() {
    let dir = scratch("misread", &[("objects.yaml", MISREAD)]);
    let file = dir.join("objects.yaml");
    let file = file.to_str().expect("utf-8");
    let unknown =
        "strict decoding error: unknown field \"spec.volumes[0].projected.sources[0].serviceAccountToken.audiance\"";
    let mistyped = "spec.volumes[0].projected.sources[0].serviceAccountToken.expirationSeconds: expected integer, got string \"3600\"";
    for (format, output) in check_all(&[file], b"") {
        assert_eq!(code(&output), 2, "{format}: refused objects are unreadable input");
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(stderr.contains(&format!("error: {file}:12: Pod team-a/p: {unknown}")), "{format}: {stderr}");
        assert!(stderr.contains(&format!("error: {file}:28: Pod team-a/q: {mistyped}")), "{stderr}");
        assert!(stderr.contains(&format!("error: {file}:35: CSIDriver secrets-store.csi.k8s.io: strict decoding error: unknown field \"spec.tokenRequests[0].expirationSecond\"")), "{stderr}");
        assert!(
            stderr.contains("checked 0 object(s) in 1 file(s): 0 violation(s)") && stderr.contains("4 error(s)"),
            "{stderr}"
        );
        for internal in ["i64", "struct ", "column", "could not decode"] {
            assert!(!stdout.contains(internal) && !stderr.contains(internal), "{format}: {internal}: {stdout}{stderr}");
        }
        match format {
            "text" => assert_eq!(stdout, "", "nothing was judged"),
            "json" => {
                let report: Value = serde_json::from_str(&stdout).expect("JSON");
                let errors = report["errors"].as_array().expect("errors");
                assert_eq!(errors.len(), 4);
                assert!(errors.iter().all(|e| e["reason"] == "invalidObject"), "{report}");
                assert_eq!(errors[0]["line"], 12);
                assert!(errors[0]["message"].as_str().is_some_and(|m| m.contains(unknown)));
            }
            "junit" => assert!(
                stdout.contains("errors=\"4\"")
                    && stdout.contains("type=\"invalid-object\"")
                    && stdout.contains(":28: Pod team-a/q"),
                "{stdout}"
            ),
            "github" => assert!(
                stdout.contains(&format!(
                    "::error file={file},line=12,title=tokengate%3A invalid object::Pod team-a/p: {unknown}"
                )),
                "{stdout}"
            ),
            _ => {
                let results = sarif_results(&stdout);
                assert_eq!(results.iter().filter(|r| r["ruleId"] == "invalid-object").count(), 4);
                assert_eq!(results[1]["locations"][0]["physicalLocation"]["region"]["startLine"], 28);
            }
        }
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn strict_names_the_notes_that_fail_it_and_assume_present_declares_what_is_elsewhere() {
    for (format, output) in check_all(&["--strict", "examples/manifests/good"], b"") {
        assert_eq!(code(&output), 0, "{format}: the shipped good examples pass --strict: {}", text(&output.stderr));
        assert!(text(&output.stderr).contains("0 violation(s) (policy mode Enforce: denied at admission), 0 note(s)"));
    }
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: team-a}\nspec:\n  serviceAccountName: web\n  containers: [{name: app, image: app}]\n";
    let dir = scratch("strict-notes", &[("pod.yaml", pod)]);
    let file = dir.join("pod.yaml");
    let file = file.to_str().expect("utf-8");
    let missing = "ServiceAccount team-a/web is not among the objects";
    for (format, output) in check_all(&["--strict", file], b"") {
        assert_eq!(code(&output), 1, "{format}");
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(stderr.contains(&format!("error: {file}:1: Pod team-a/p: {missing}")), "{stderr}");
        assert!(stderr.contains(&format!("--strict fails on 1 note(s), about {file}:1 (Pod team-a/p)")), "{stderr}");
        let expected = match format {
            "text" => String::new(),
            "json" => "\"notes\": [".to_string(),
            "junit" => format!("<failure message=\"{missing}\" type=\"note\">"),
            "github" => format!("::error file={file},line=1,title=tokengate%3A Pod team-a/p::{missing}"),
            _ => "\"ruleId\": \"unverified\"".to_string(),
        };
        assert!(stdout.contains(&expected), "{format}: {stdout}");
        if format == "sarif" {
            assert!(sarif_results(&stdout).iter().all(|r| r["level"] == "error"));
        }
    }
    for (format, output) in check_all(&[file], b"") {
        assert_eq!(code(&output), 0, "{format}: notes alone do not fail");
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(stderr.contains(&format!("note: {file}:1: Pod team-a/p: {missing}")), "{stderr}");
        let expected = match format {
            "junit" => format!("<system-out>note: {file}:1: Pod team-a/p: {missing}"),
            "github" => format!("::notice file={file},line=1,title=tokengate%3A Pod team-a/p::{missing}"),
            "sarif" => "\"level\": \"note\"".to_string(),
            _ => String::new(),
        };
        assert!(stdout.contains(&expected), "{format}: {stdout}");
    }
    for (format, output) in check_all(&["--strict", "--assume-present", "ServiceAccount/team-*/web", file], b"") {
        assert_eq!(code(&output), 0, "{format}: {}", text(&output.stderr));
        assert!(text(&output.stderr).contains("0 note(s)") && !text(&output.stdout).contains(missing), "{format}");
    }
    let bad = tokengate(&["check", "--policy", "examples/policy.yaml", "--assume-present", "web", file], b"");
    assert_eq!(code(&bad), 2);
    assert!(text(&bad.stderr).contains("is not KIND/NAMESPACE/NAME"), "{}", text(&bad.stderr));
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn a_violation_says_whether_it_fails_the_run() {
    let (dir, warn) = warn_policy("severity");
    let bad = "examples/manifests/bad/pod-forbidden-audience.yaml";
    for (policy, gate, level) in [
        ("examples/policy.yaml", None, "error"),
        (warn.to_str().expect("utf-8"), None, "warning"),
        (warn.to_str().expect("utf-8"), Some("--fail-on-warn"), "error"),
    ] {
        for format in FORMATS {
            let mut args = vec!["check", "--policy", policy, "-o", format, bad];
            args.extend(gate);
            let output = tokengate(&args, b"");
            assert_eq!(code(&output), if level == "error" { 1 } else { 0 }, "{policy} {format}");
            let stdout = text(&output.stdout);
            let expected = match format {
                "text" => format!("{level}: {bad}:5: Pod team-a/gcs-sync: spec.volumes[0]"),
                "json" => format!("\"mode\": \"{}\"", if policy.ends_with("warn.yaml") { "Warn" } else { "Enforce" }),
                "junit" => format!("<failure message=\"spec.volumes[0].projected.sources[0].serviceAccountToken.audience\" type=\"{}\">{level}: ", if policy.ends_with("warn.yaml") { "Warn" } else { "Enforce" }),
                "github" => format!("::{level} file={bad},line=5,"),
                _ => format!("\"level\": \"{level}\""),
            };
            assert!(stdout.contains(&expected), "{policy} {format}: {stdout}");
        }
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn an_exclude_that_matches_nothing_is_a_warning_in_every_format() {
    let pod = "examples/manifests/bad/pod-forbidden-audience.yaml";
    let warning = "--exclude \\\"**/tests/**\\\" matched no file";
    for (format, output) in check_all(
        &["--exclude", "**/tests/**", "--exclude", "**/bad/*.yaml", pod, "examples/manifests/good/irsa.yaml"],
        b"",
    ) {
        assert_eq!(
            code(&output),
            0,
            "{format}: a warning does not fail the run, and the other glob excluded the bad file"
        );
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(stderr.contains("warning: --exclude \"**/tests/**\" matched no file\n"), "{stderr}");
        assert!(!stderr.contains("bad/*.yaml"), "the glob that matched is not reported: {stderr}");
        let expected = match format {
            "text" => String::new(),
            "json" => format!("\"warnings\": [\n    \"{warning}\""),
            "junit" => "<system-err>warning: --exclude &quot;**/tests/**&quot; matched no file".to_string(),
            "github" => "::warning title=tokengate::--exclude \"**/tests/**\" matched no file".to_string(),
            _ => "\"ruleId\": \"invocation\"".to_string(),
        };
        assert!(stdout.contains(&expected), "{format}: {stdout}");
    }
}

#[test]
fn a_custom_resource_named_deployment_is_not_a_deployment() {
    let custom = "apiVersion: example.com/v1\nkind: Deployment\nmetadata: {name: d, namespace: team-a}\nspec:\n  template:\n    spec:\n      volumes: [{name: t, projected: {sources: [{serviceAccountToken: {audience: forbidden, path: t}}]}}]\n";
    let skipped = "not governed, skipped: 1 Deployment (example.com/v1); nothing was checked";
    for (format, output) in check_all(&["-"], custom.as_bytes()) {
        assert_eq!(code(&output), 0, "{format}");
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(stderr.contains(&format!("checked 0 object(s) in 1 file(s): 0 violation(s) (policy mode Enforce: denied at admission), 0 note(s); {skipped}")), "{stderr}");
        let expected = match format {
            "text" => String::new(),
            "json" => "\"Deployment (example.com/v1)\": 1".to_string(),
            "junit" => "<system-out>checked 0 object(s) in 1 file(s)".to_string(),
            "github" => "::notice title=tokengate summary::checked 0 object(s)".to_string(),
            _ => "\"Deployment (example.com/v1)\": 1".to_string(),
        };
        assert!(stdout.contains(&expected) && !stdout.contains("forbidden"), "{format}: {stdout}");
    }
}

#[test]
fn sarif_lists_its_rules_and_a_result_per_violation_and_note() {
    let output = tokengate(&["check", "--policy", "examples/policy.yaml", "-o", "sarif", "examples/manifests"], b"");
    assert_eq!(code(&output), 1);
    let json = tokengate(&["check", "--policy", "examples/policy.yaml", "-o", "json", "examples/manifests"], b"");
    let report: Value = serde_json::from_slice(&json.stdout).expect("JSON");
    let results = sarif_results(&text(&output.stdout));
    let count = |key: &str| report[key].as_array().map_or(0, Vec::len);
    assert_eq!(results.iter().filter(|r| r["ruleId"] == "violation").count(), count("violations"));
    assert_eq!(results.iter().filter(|r| r["ruleId"] == "unverified").count(), count("notes"));
    let log: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let summary = &log["runs"][0]["invocations"][0]["toolExecutionNotifications"][0]["message"]["text"];
    assert!(summary.as_str().is_some_and(|s| s.starts_with("checked ")), "{log}");
}

/// `check --help` with its lines joined, so claims can be read across line breaks.
fn check_help() -> String {
    let help = text(&tokengate(&["check", "--help"], b"").stdout);
    help.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The top-level names of a `{a, b: {..}, c: [{..}]}` claim.
fn claimed_keys(claim: &str) -> Vec<String> {
    let (mut depth, mut keys, mut current) = (0, Vec::new(), String::new());
    for c in claim.chars() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            ',' if depth == 0 => keys.push(std::mem::take(&mut current)),
            _ if depth == 0 => current.push(c),
            _ => {}
        }
    }
    keys.push(current);
    keys.iter().map(|k| k.split(':').next().unwrap_or_default().trim().to_string()).collect()
}

/// Each line of text output reads `error: FILE:LINE: KIND [NAMESPACE/]NAME: FIELD: MESSAGE`.
fn assert_text_lines_as_helped(stdout: &str) {
    for line in stdout.lines() {
        let rest = line.strip_prefix("error: ").expect("a severity word");
        let (at, rest) = rest.split_once(": ").expect("FILE:LINE");
        assert!(at.rsplit_once(':').is_some_and(|(_, n)| n.parse::<usize>().is_ok()), "{line}");
        let (object, rest) = rest.split_once(": ").expect("KIND NAMESPACE/NAME");
        assert!(object.contains(' '), "{line}");
        let (field, message) = rest.split_once(": ").expect("FIELD: MESSAGE");
        assert!(!field.contains(' ') && !message.is_empty(), "{line}");
    }
}

#[test]
fn check_help_says_what_each_format_prints() {
    let help = check_help();
    let dir = scratch("help", &[("broken.yaml", "kind: [")]);
    let broken = dir.join("broken.yaml");
    let args = ["--strict", "--exclude", "**/none/**", "examples/manifests", broken.to_str().expect("utf-8")];
    let runs = check_all(&args, b"");
    let stdout = |format: &str| text(&runs.iter().find(|(f, _)| *f == format).expect("ran").1.stdout);
    // text: `error: FILE:LINE: KIND [NAMESPACE/]NAME: FIELD: MESSAGE`
    assert!(
        help.contains(
            "- text: stdout: a line per violation, `error: FILE:LINE: KIND [NAMESPACE/]NAME: FIELD: MESSAGE`"
        ),
        "{help}"
    );
    assert_text_lines_as_helped(&stdout("text"));
    // json: the keys the help lists are the keys printed, and a violation's too.
    let claim = help.split("one JSON document: `{").nth(1).and_then(|c| c.split("}`").next()).expect("a JSON claim");
    let report: Value = serde_json::from_str(&stdout("json")).expect("JSON");
    let mut printed: Vec<String> = report.as_object().expect("object").keys().cloned().collect();
    let mut claimed = claimed_keys(claim);
    printed.sort();
    claimed.sort();
    assert_eq!(claimed, printed, "{claim}");
    let violation_claim = claim.split("violations: [{").nth(1).and_then(|c| c.split("}]").next()).expect("violations");
    let mut violation_keys: Vec<String> = report["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .flat_map(|v| v.as_object().expect("a violation").keys().cloned())
        .collect();
    violation_keys.dedup();
    violation_keys.sort();
    violation_keys.dedup();
    // `a|b`: one of the two, as the violation has it (who decides: a native policy's name, or
    // why the webhook decides).
    let alternatives: Vec<Vec<String>> =
        claimed_keys(violation_claim).iter().map(|k| k.split('|').map(str::to_string).collect()).collect();
    let mut claimed: Vec<String> = alternatives
        .iter()
        .filter_map(|one_of| one_of.iter().find(|k| violation_keys.contains(k)).or(one_of.first()).cloned())
        .collect();
    violation_keys.sort();
    claimed.sort();
    assert_eq!(claimed, violation_keys);
    // junit, github, sarif: each element the help names is there.
    for (format, tags) in [
        ("junit", &["<failure", "<failure type=\"note\">", "<system-out>", "<error", "<system-err>"][..]),
        ("github", &["::error", "::warning", "::notice"][..]),
        ("sarif", &["\"version\": \"2.1.0\""][..]),
    ] {
        let out = stdout(format);
        for tag in tags {
            let said = tag.replace(" type=\"note\"", "").replace("<failure>", "<failure");
            assert!(
                help.contains(tag.trim_start_matches('"').split('"').next().unwrap_or(tag)) || help.contains(&said),
                "{format}: {tag}"
            );
            let printed = tag.replace("<failure type=\"note\">", "type=\"note\">");
            assert!(out.contains(&printed), "{format} prints {tag}: {out}");
        }
    }
    assert!(help.contains("SARIF 2.1.0") && help.contains("then the summary as a `::notice`"));
    assert!(stdout("github").lines().last().is_some_and(|l| l.starts_with("::notice title=tokengate summary::")));
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn explain_shows_every_note_check_prints_for_the_same_files() {
    for path in ["examples/manifests", "tests/fixtures/explain/manifests.yaml"] {
        let check = tokengate(&["check", "--policy", "examples/policy.yaml", "-o", "json", path], b"");
        let explain = tokengate(&["explain", "--policy", "examples/policy.yaml", "-o", "json", path], b"");
        let check: Value = serde_json::from_slice(&check.stdout).expect("check JSON");
        let explain: Value = serde_json::from_slice(&explain.stdout).expect("explain JSON");
        let mut checked: Vec<String> = check["notes"]
            .as_array()
            .expect("notes")
            .iter()
            .map(|n| format!("{} {}: {}", n["kind"], n["name"], n["message"]))
            .collect();
        let mut explained: Vec<String> = explain["objects"]
            .as_array()
            .expect("objects")
            .iter()
            .flat_map(|o| {
                let object = format!("{} {}", o["kind"], o["name"]);
                o["notes"].as_array().into_iter().flatten().map(move |n| format!("{object}: {n}"))
            })
            .collect();
        checked.sort();
        explained.sort();
        assert!(!checked.is_empty(), "{path}");
        assert_eq!(checked, explained, "{path}");
    }
}
