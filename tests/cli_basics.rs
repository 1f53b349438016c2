//! The command line's own conveniences and its words about itself: `init --from-files` on a real
//! repository (unparsable files, --exclude, wrong paths, standard input, tokens that IRSA and
//! Azure workload identity add), errors that name the missing flag, help that matches the code,
//! completions, manual pages and `version`.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use clap::CommandFactory;
use support::TempDir;
use tokengate::cli::Cli;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the binary with `stdin`, without the environment variables that would stand for flags.
fn tokengate(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(args)
        .current_dir(root())
        .env_remove("TOKENGATE_POLICY")
        .env_remove("TOKENGATE_POLICY_CONFIGMAP")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tokengate starts");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("tokengate finishes")
}

/// Exit code, stdout and stderr.
fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
    let output = tokengate(args, stdin);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).to_string();
    (output.status.code().expect("exited normally"), text(&output.stdout), text(&output.stderr))
}

const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

const VAULT_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: team-a}\nspec:\n  \
    containers: [{name: app, image: app}]\n  volumes:\n  - name: v\n    projected:\n      sources:\n      \
    - serviceAccountToken: {audience: vault, path: t, expirationSeconds: 3600}\n";

const HELM_TEMPLATE: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Values.name }}\n";

#[test]
fn init_warns_about_a_file_that_does_not_parse_and_drafts_from_the_rest() {
    let dir = TempDir::new("init-partial");
    std::fs::create_dir_all(dir.path("chart/templates")).expect("mkdir");
    dir.write("pod.yaml", VAULT_POD);
    let template = dir.write("chart/templates/deployment.yaml", HELM_TEMPLATE);
    let path = dir.0.to_str().expect("UTF-8 path");
    let (code, stdout, stderr) = run(&["init", "--from-files", path, "--api-audience", API_AUDIENCE], "");
    assert_eq!(code, 0, "{stderr}");
    let warning = format!("warning: {}:4: ", template.display());
    assert!(stderr.contains(&warning) && stderr.contains("(file skipped)"), "{stderr}");
    assert!(stdout.contains("    - audience: \"vault\"\n      namespaces: [\"team-a\"]\n"), "{stdout}");
    assert!(
        stdout.contains(&format!("# NOT READ (did not parse; nothing in it is admitted): {}:4:", template.display()))
    );

    // --exclude leaves the template out, silently, as check's --exclude does.
    let (code, stdout, stderr) =
        run(&["init", "--from-files", path, "--exclude", "**/templates/**", "--api-audience", API_AUDIENCE], "");
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(stdout.contains("--exclude \"**/templates/**\"`") && !stdout.contains("NOT READ"), "{stdout}");
}

#[test]
fn init_refuses_a_path_that_is_empty_missing_or_holds_no_manifest() {
    let dir = TempDir::new("init-paths");
    std::fs::create_dir_all(dir.path("docs")).expect("mkdir");
    dir.write("docs/README.md", "# not a manifest\n");
    dir.write("chart.yaml", HELM_TEMPLATE);
    let (code, stdout, stderr) = run(&["init", "--from-files", "no/such/dir"], "");
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(stderr.starts_with("error: --from-files no/such/dir: No such file or directory"), "{stderr}");

    let docs = dir.path("docs");
    let (code, stdout, stderr) = run(&["init", "--from-files", docs.to_str().expect("UTF-8")], "");
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(stderr.contains(&format!("error: --from-files {}: no Kubernetes manifest found", docs.display())));

    // A file that does not parse and nothing else: its problem, then the error.
    let chart = dir.path("chart.yaml");
    let (code, stdout, stderr) = run(&["init", "--from-files", chart.to_str().expect("UTF-8")], "");
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(stderr.contains(&format!("warning: {}:4:", chart.display())), "{stderr}");
    assert!(stderr.contains("no Kubernetes manifest found"), "{stderr}");

    let (code, stdout, stderr) = run(&["init", "--from-files="], "");
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(stderr.contains("--from-files <PATH>"), "{stderr}");
    let (code, _, stderr) = run(&["init", "--from-files", "-"], "");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("error: --from-files -: no Kubernetes manifest found"), "{stderr}");
}

#[test]
fn init_reads_manifests_from_standard_input() {
    let (code, stdout, stderr) = run(&["init", "--from-files", "-", "--api-audience", API_AUDIENCE], VAULT_POD);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("# Drafted by `tokengate init --from-files -`:"), "{stdout}");
    assert!(stdout.contains("    # needed by Pod team-a/p\n    - audience: \"vault\"\n"), "{stdout}");
}

const IDENTITIES: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
  namespace: team-a
  annotations:
    eks.amazonaws.com/role-arn: arn:aws:iam::111122223333:role/web
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: team-a}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      serviceAccountName: web
      containers: [{name: app, image: app}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reports, namespace: team-b}
spec:
  selector: {matchLabels: {app: reports}}
  template:
    metadata:
      labels: {app: reports, azure.workload.identity/use: "true"}
      annotations: {azure.workload.identity/service-account-token-expiration: "7200"}
    spec:
      serviceAccountName: reports
      containers: [{name: app, image: app}]
"#;

/// The pods as the EKS pod identity and Azure workload identity webhooks leave them.
const MUTATED_PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: team-a}
spec:
  serviceAccountName: web
  containers: [{name: app, image: app}]
  volumes:
  - name: aws-iam-token
    projected:
      sources:
      - serviceAccountToken: {audience: sts.amazonaws.com, expirationSeconds: 86400, path: token}
---
apiVersion: v1
kind: Pod
metadata: {name: reports-1, namespace: team-b, labels: {azure.workload.identity/use: "true"}}
spec:
  serviceAccountName: reports
  containers: [{name: app, image: app}]
  volumes:
  - name: azure-identity-token
    projected:
      sources:
      - serviceAccountToken: {audience: api://AzureADTokenExchange, expirationSeconds: 7200, path: azure-identity-token}
"#;

#[test]
fn init_admits_the_tokens_irsa_and_azure_workload_identity_add_and_says_which_webhook() {
    let dir = TempDir::new("init-identities");
    let manifests = dir.write("apps.yaml", IDENTITIES);
    let args = ["init", "--from-files", manifests.to_str().expect("UTF-8"), "--api-audience", API_AUDIENCE];
    let (code, stdout, stderr) = run(&args, "");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(
            "    # needed by Deployment team-a/web, ServiceAccount team-a/web\n    \
             # added to pods by the EKS pod identity webhook (IRSA; ServiceAccounts annotated \
             eks.amazonaws.com/role-arn)\n    - audience: \"sts.amazonaws.com\"\n      namespaces: [\"team-a\"]\n      \
             serviceAccounts: [\"web\"]\n      maxExpirationSeconds: 86400\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "    # added to pods by the Azure workload identity webhook (pods labelled \
             azure.workload.identity/use: \"true\")\n    - audience: \"api://AzureADTokenExchange\"\n      \
             namespaces: [\"team-b\"]\n      serviceAccounts: [\"reports\"]\n      maxExpirationSeconds: 7200\n"
        ),
        "{stdout}"
    );

    // Taken to Enforce, the policy admits the pods as those webhooks leave them.
    let policy = dir.write("policy.yaml", stdout.replace("  mode: Audit\n", "  mode: Enforce\n"));
    let pods = dir.write("pods.yaml", MUTATED_PODS);
    let (policy, pods) = (policy.to_str().expect("UTF-8"), pods.to_str().expect("UTF-8"));
    let (code, stdout, stderr) = run(&["check", "--policy", policy, pods], "");
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout, "", "no violation");
}

#[test]
fn a_missing_argument_is_named_as_it_must_be_given() {
    let cases: [(&[&str], &str); 6] = [
        (&["explain", "--policy", "p.yaml"], "  <--pod <NAMESPACE/NAME>|PATH>\n"),
        (&["explain"], "  <--policy <FILE>|--policy-configmap <NAMESPACE/NAME>>\n"),
        (&["init"], "  <--from-cluster|--from-files <PATH>...>\n"),
        (&["review"], "  --policy <FILE>\n"),
        (&["check", "--policy", "p.yaml"], "  <PATH>...\n"),
        (&["webhooks", "--policy", "p.yaml"], "  <--service <NAMESPACE/NAME[:PORT]>|--url <URL>|--native>\n"),
    ];
    for (args, named) in cases {
        let (code, stdout, stderr) = run(args, "");
        assert_eq!((code, stdout.as_str()), (2, ""), "{args:?}: {stderr}");
        let missing = stderr
            .strip_prefix("error: the following required arguments were not provided:\n")
            .and_then(|rest| rest.split("\n\n").next())
            .unwrap_or_else(|| panic!("{args:?}: {stderr}"));
        assert!(format!("{missing}\n").contains(named), "{args:?} should name {named:?}: {stderr}");
    }
    let (_, _, stderr) = run(&["explain", "--policy", "p.yaml"], "");
    assert!(!stderr.contains("\n  --pod <NAMESPACE/NAME>\n"), "PATH... is as good as --pod: {stderr}");
}

#[test]
fn help_tells_what_each_command_does_with_its_policy() {
    for command in ["explain", "audit"] {
        let (code, stdout, _) = run(&[command, "--help"], "");
        assert_eq!(code, 0);
        for server_only in ["re-read", "--reload-interval", "watched", "last good policy", "Event"] {
            assert!(!stdout.contains(server_only), "{command} --help describes the server: {server_only}\n{stdout}");
        }
    }
    let (code, stdout, _) = run(&["serve", "--help"], "");
    assert_eq!(code, 0);
    assert!(stdout.contains("re-read every --reload-interval, a") && stdout.contains("watched through the API"));
    let (code, stdout, _) = run(&["init", "--help"], "");
    assert_eq!(code, 0);
    for told in ["--exclude <GLOB>", "`-` reads\n          standard input", "file:line", "IRSA", "Azure"] {
        assert!(stdout.contains(told), "init --help should tell {told:?}\n{stdout}");
    }
}

#[test]
fn every_flag_and_argument_has_help() {
    fn visit(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in command.get_subcommands() {
            if sub.get_about().is_none() {
                missing.push(format!("{path} {}", sub.get_name()));
            }
            visit(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut command = Cli::command();
    command.build();
    let mut missing = Vec::new();
    visit(&command, "tokengate", &mut missing);
    assert!(missing.is_empty(), "without help: {missing:?}");
}

const SUBCOMMANDS: [&str; 11] =
    ["serve", "review", "check", "policy", "audit", "explain", "init", "webhooks", "completions", "man", "version"];

#[test]
fn completions_cover_every_command_and_the_bash_script_parses() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, stdout, stderr) = run(&["completions", shell], "");
        assert_eq!((code, stderr.as_str()), (0, ""), "{shell}");
        for subcommand in SUBCOMMANDS {
            assert!(stdout.contains(subcommand), "{shell} completion lacks {subcommand}");
        }
        assert!(stdout.contains("from-files") && stdout.contains("tls-cert"), "{shell}: flags");
    }
    let (_, script, _) = run(&["completions", "bash"], "");
    let dir = TempDir::new("completions");
    let file = dir.write("tokengate.bash", &script);
    let checked = Command::new("bash").arg("-n").arg(&file).output().expect("bash runs");
    assert!(checked.status.success(), "bash -n: {}", String::from_utf8_lossy(&checked.stderr));
    let (code, _, stderr) = run(&["completions", "tcsh"], "");
    assert_eq!(code, 2);
    assert!(stderr.contains("invalid value 'tcsh'") && stderr.contains("bash"), "{stderr}");
}

#[test]
fn man_writes_a_page_for_the_tool_and_one_per_command() {
    let (code, page, stderr) = run(&["man"], "");
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert!(page.contains(".TH tokengate 1") && page.contains("SUBCOMMANDS"), "{page}");
    for subcommand in SUBCOMMANDS {
        assert!(page.contains(&format!("tokengate\\-{subcommand}(1)")), "the page lists {subcommand}");
    }

    let dir = TempDir::new("man");
    let out = dir.path("man1");
    let (code, stdout, stderr) = run(&["man", "--dir", out.to_str().expect("UTF-8")], "");
    assert_eq!((code, stderr.as_str()), (0, ""));
    let mut pages: Vec<String> = vec!["tokengate".into(), "tokengate-policy-validate".into()];
    pages.extend(SUBCOMMANDS.iter().map(|s| format!("tokengate-{s}")));
    for name in pages {
        let file = out.join(format!("{name}.1"));
        assert!(stdout.lines().any(|line| Path::new(line) == file), "{name}.1 is listed: {stdout}");
        let roff = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(roff.contains(&format!(".TH {name} 1")), "{name}: {roff}");
        assert!(roff.contains(".SH NAME") && roff.contains(".SH SYNOPSIS"), "{name}: {roff}");
    }
    let (code, serve, _) = run(&["man", "--dir", out.to_str().expect("UTF-8")], "");
    assert_eq!(code, 0, "writing again replaces the pages: {serve}");
    let serve = std::fs::read_to_string(out.join("tokengate-serve.1")).expect("serve page");
    assert!(serve.contains("reload\\-interval"), "every flag is in its command's page");

    let blocked = dir.write("file", "");
    let (code, _, stderr) = run(&["man", "--dir", blocked.join("man1").to_str().expect("UTF-8")], "");
    assert_eq!(code, 2);
    assert!(stderr.contains("error: writing manual pages to"), "{stderr}");
}

#[test]
fn version_prints_the_version_and_the_platform() {
    let (code, stdout, stderr) = run(&["version"], "");
    assert_eq!((code, stderr.as_str()), (0, ""));
    let (_, flag, _) = run(&["--version"], "");
    assert_eq!(stdout.lines().next(), flag.lines().next(), "the first line is what --version prints");
    assert_eq!(flag, format!("tokengate {}\n", env!("CARGO_PKG_VERSION")));
    let platform = format!("platform: {}-{}", std::env::consts::ARCH, std::env::consts::OS);
    assert!(stdout.lines().any(|line| line == platform), "{stdout}");
}
