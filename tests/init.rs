//! `tokengate init`: the drafted policy is valid, admits everything it was drafted from (`check`
//! and `audit` find nothing) and is minimal (removing any entry refuses something), for
//! generated sets of pods, workloads, CSIDrivers and legacy token Secrets; and it drafts from a
//! fake API server without reading any Secret's data.

mod support;

use std::path::Path;
use std::process::Output;

use base64::Engine as _;
use proptest::prelude::*;
use serde_json::{json, Value};
use support::fake_apiserver::FakeApiServer;
use tokengate::cluster::ObjectStore;
use tokengate::init::{draft, Draft, InitOptions};
use tokengate::manifest::Document;
use tokengate::policy::Policy;
use tokengate::simulate::{self, Extras};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tokengate(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("tokengate runs")
}

const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
const NAMESPACES: [&str; 4] = ["team-a", "team-b", "payments", "ci"];
const ACCOUNTS: [&str; 3] = ["default", "web", "api"];
const AUDIENCES: [Option<&str>; 6] =
    [Some("vault"), Some("sts.amazonaws.com"), Some("spire-server"), Some(""), None, Some(API_AUDIENCE)];
const LIFETIMES: [Option<i64>; 6] = [None, Some(600), Some(3600), Some(3607), Some(7200), Some(86_400)];
const DRIVERS: [&str; 3] = ["d1.example.com", "d2.example.com", "unknown.example.com"];

/// A generated token volume of a pod.
#[derive(Debug, Clone)]
enum VolumeSpec {
    Projected { audience: usize, lifetime: usize },
    Csi { driver: usize },
    Automount,
}

fn volume_strategy() -> impl Strategy<Value = VolumeSpec> {
    prop_oneof![
        3 => (0..AUDIENCES.len(), 0..LIFETIMES.len()).prop_map(|(audience, lifetime)| VolumeSpec::Projected { audience, lifetime }),
        1 => (0..DRIVERS.len()).prop_map(|driver| VolumeSpec::Csi { driver }),
        1 => Just(VolumeSpec::Automount),
    ]
}

fn volume(index: usize, spec: &VolumeSpec) -> Value {
    match spec {
        VolumeSpec::Projected { audience, lifetime } => {
            let mut token = json!({"path": "token"});
            if let Some(audience) = AUDIENCES[*audience] {
                token["audience"] = json!(audience);
            }
            if let Some(seconds) = LIFETIMES[*lifetime] {
                token["expirationSeconds"] = json!(seconds);
            }
            json!({"name": format!("token-{index}"), "projected": {"sources": [{"serviceAccountToken": token}]}})
        }
        VolumeSpec::Csi { driver } => json!({"name": format!("csi-{index}"), "csi": {"driver": DRIVERS[*driver]}}),
        VolumeSpec::Automount => json!({"name": format!("kube-api-access-{index:05}"), "projected": {"sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}),
    }
}

/// A generated Pod or workload.
fn workload_strategy() -> impl Strategy<Value = Value> {
    (0..3usize, 0..NAMESPACES.len(), 0..ACCOUNTS.len(), prop::collection::vec(volume_strategy(), 0..4), 0..1000u32).prop_map(
        |(kind, namespace, account, volumes, id)| {
            let volumes: Vec<Value> = volumes.iter().enumerate().map(|(i, v)| volume(i, v)).collect();
            let spec = json!({"serviceAccountName": ACCOUNTS[account], "containers": [{"name": "app", "image": "app"}], "volumes": volumes});
            let metadata = json!({"name": format!("w{id}"), "namespace": NAMESPACES[namespace]});
            match kind {
                0 => json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}),
                1 => json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
                            "spec": {"selector": {}, "template": {"metadata": {"labels": {"app": "x"}}, "spec": spec}}}),
                _ => json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": metadata,
                            "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {"spec": spec}}}}}),
            }
        },
    )
}

/// A generated CSIDriver (only the first two names; the third stays unknown).
fn driver_strategy(name: usize) -> impl Strategy<Value = Value> {
    (prop::collection::btree_set(0..4usize, 0..3), 0..LIFETIMES.len(), any::<bool>(), any::<bool>()).prop_map(
        move |(audiences, lifetime, republish, in_secrets)| {
            let requests: Vec<Value> = audiences
                .into_iter()
                .map(|a| {
                    let mut request = json!({"audience": AUDIENCES[a].unwrap_or_default()});
                    if let Some(seconds) = LIFETIMES[lifetime] {
                        request["expirationSeconds"] = json!(seconds);
                    }
                    request
                })
                .collect();
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": DRIVERS[name]},
                   "spec": {"tokenRequests": requests, "requiresRepublish": republish, "serviceAccountTokenInSecrets": in_secrets}})
        },
    )
}

fn secret_strategy() -> impl Strategy<Value = Value> {
    (0..NAMESPACES.len(), 0..ACCOUNTS.len(), 0..100u32).prop_map(|(namespace, account, id)| {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
               "metadata": {"name": format!("s{id}"), "namespace": NAMESPACES[namespace],
                            "annotations": {"kubernetes.io/service-account.name": ACCOUNTS[account]}}})
    })
}

fn inputs() -> impl Strategy<Value = (Vec<Value>, bool, bool)> {
    (
        prop::collection::vec(workload_strategy(), 1..8),
        driver_strategy(0),
        driver_strategy(1),
        prop::collection::vec(secret_strategy(), 0..3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(mut objects, d1, d2, secrets, api_audience_known, globs)| {
            objects.push(d1);
            objects.push(d2);
            objects.extend(secrets);
            (objects, api_audience_known, globs)
        })
}

fn block<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(future)
}

/// How many violations `check` finds in `documents` under the policy `text`.
fn violations(text: &str, documents: &[Document]) -> Vec<String> {
    let policy = Policy::parse(text).unwrap_or_else(|err| panic!("drafted policy is invalid: {err}\n{text}"));
    let mut store = ObjectStore::default();
    for document in documents {
        store.insert(&document.object).expect("generated objects decode");
    }
    let options = simulate::Options { default_namespace: "default", mutate_pods_first: true, assume_present: &[] };
    let extras = Extras::from_documents(documents, "default");
    let report = block(simulate::judge(&policy, documents, &store, &extras, options));
    report
        .violations
        .iter()
        .map(|v| format!("{} {}: {}: {}", v.object.describe(), v.object.name, v.field, v.message))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_drafted_policy_admits_its_inputs_and_no_entry_can_be_removed((objects, api_audience_known, globs) in inputs()) {
        let documents: Vec<Document> = objects.into_iter().map(Document::from_cluster).collect();
        let api = [API_AUDIENCE.to_string()];
        let options = InitOptions {
            default_namespace: "default",
            namespace_globs: globs,
            api_server_audiences: if api_audience_known { &api } else { &[] },
        };
        let drafted: Draft = block(draft(&documents, options)).expect("drafts");
        let text = drafted.to_yaml("--from-files generated");
        let policy = Policy::parse(&text).expect("valid");
        prop_assert_eq!(policy.mode().as_str(), "Audit");
        let found = violations(&text, &documents);
        prop_assert!(found.is_empty(), "{:?}\n{}", found, text);

        for i in 0..drafted.audiences.len() {
            let mut smaller = drafted.clone();
            smaller.audiences.remove(i);
            prop_assert!(!violations(&smaller.to_yaml("x"), &documents).is_empty(), "audiences[{}] is not needed:\n{}", i, text);
        }
        for i in 0..drafted.csi_drivers.len() {
            let mut smaller = drafted.clone();
            smaller.csi_drivers.remove(i);
            prop_assert!(!violations(&smaller.to_yaml("x"), &documents).is_empty(), "csiDrivers[{}] is not needed", i);
        }
        for i in 0..drafted.legacy_tokens.len() {
            let mut smaller = drafted.clone();
            smaller.legacy_tokens.remove(i);
            prop_assert!(!violations(&smaller.to_yaml("x"), &documents).is_empty(), "legacyTokens[{}] is not needed", i);
        }
    }
}

#[test]
fn namespace_globs_merge_entries_that_differ_only_by_namespace() {
    let pod = |namespace: &str, name: &str| {
        Document::from_cluster(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"serviceAccountName": "web", "containers": [{"name": "app"}], "volumes": [
                {"name": "v", "projected": {"sources": [{"serviceAccountToken": {"audience": "vault", "path": "t"}}]}}]}}),
        )
    };
    let documents =
        vec![pod("team-a", "a"), pod("team-b", "b"), pod("team-c", "c"), pod("payments", "p"), pod("ops", "o")];
    let options =
        |namespace_globs| InitOptions { default_namespace: "default", namespace_globs, api_server_audiences: &[] };
    let exact = block(draft(&documents, options(false))).expect("drafts");
    assert_eq!(exact.audiences.len(), 5);
    let merged = block(draft(&documents, options(true))).expect("drafts");
    let namespaces: Vec<Vec<String>> = merged.audiences.iter().map(|e| e.namespaces.clone()).collect();
    assert_eq!(namespaces, vec![vec!["ops".to_string()], vec!["payments".to_string()], vec!["team-*".to_string()]]);
    let text = merged.to_yaml("--from-files x --namespace-globs");
    assert!(text.contains("# needed by Pod team-a/a, Pod team-b/b, Pod team-c/c\n"), "{text}");
    assert!(violations(&text, &documents).is_empty());
}

#[test]
fn init_from_files_writes_a_policy_that_validates_and_check_accepts() {
    let output = tokengate(&[
        "init",
        "--from-files",
        "examples/manifests",
        "tests/fixtures/explain",
        "--api-audience",
        API_AUDIENCE,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    assert!(text.contains(&format!("  apiServerAudiences: [\"{API_AUDIENCE}\"]\n")), "{text}");
    assert!(text.contains("  mode: Audit\n"));
    let dir = support::TempDir::new("init-files");
    let policy = dir.write("policy.yaml", &text);
    let policy = policy.to_str().expect("UTF-8 path");
    let validated = tokengate(&["policy", "validate", policy]);
    assert_eq!(validated.status.code(), Some(0));
    assert!(validated.stderr.is_empty(), "no warning: {}", String::from_utf8_lossy(&validated.stderr));
    let checked =
        tokengate(&["check", "--policy", policy, "--output", "json", "examples/manifests", "tests/fixtures/explain"]);
    let report: Value = serde_json::from_slice(&checked.stdout).expect("JSON");
    assert_eq!(report["violations"], json!([]), "{text}");
    let explained = tokengate(&["explain", "--policy", policy, "--output", "json", "examples/manifests"]);
    let report: Value = serde_json::from_slice(&explained.stdout).expect("JSON");
    assert_eq!(report["violations"], 0);

    // Without --api-audience or a token file, the field is left out with instructions.
    let unknown =
        tokengate(&["init", "--from-files", "examples/manifests", "--service-account-token", "no/such/token"]);
    let text = String::from_utf8(unknown.stdout).expect("UTF-8");
    assert!(text.contains("# apiServerAudiences: not known.") && !text.contains("  apiServerAudiences:"), "{text}");
    assert_eq!(tokengate(&["init", "--from-files", "no/such/dir"]).status.code(), Some(2));
}

fn jwt(claims: &Value) -> String {
    let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!("{}.{}.c2lnbmF0dXJl", encode(r#"{"alg":"RS256"}"#), encode(&claims.to_string()))
}

#[tokio::test]
async fn init_from_cluster_drafts_what_runs_and_audit_then_finds_nothing() {
    let api = FakeApiServer::start().await;
    let template = |audience: &str| {
        json!({"metadata": {"labels": {"app": "x"}}, "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "app"}],
               "volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"audience": audience, "path": "t", "expirationSeconds": 7200}}]}}]}})
    };
    api.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "team-a", "uid": "d1"},
                     "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template("vault")}}));
    api.apply(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web-1", "namespace": "team-a",
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d1", "controller": true}]},
                     "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template("vault")}}));
    api.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1-abc", "namespace": "team-a"},
                     "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "app"}],
                              "volumes": [{"name": "kube-api-access-abcde", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}},
                                          {"name": "c", "csi": {"driver": "secrets-store.csi.k8s.io"}}]}}));
    api.apply(json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": "secrets-store.csi.k8s.io"},
                     "spec": {"tokenRequests": [{"audience": "vault"}, {"audience": API_AUDIENCE}], "requiresRepublish": true}}));
    api.apply(
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": "team-a"}}),
    );
    api.apply(
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "uploader", "namespace": "team-b",
                     "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/uploader",
                                     "eks.amazonaws.com/token-expiration": "7200", "note": "not listed"}}}),
    );
    api.apply(json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token", "data": {"token": "c2VjcmV0LWRhdGE="},
                     "metadata": {"name": "deployer-token", "namespace": "ci", "annotations": {"kubernetes.io/service-account.name": "deployer"}}}));
    api.apply(json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": {"x": "c2VjcmV0LWRhdGE="},
                     "metadata": {"name": "other", "namespace": "ci"}}));
    let dir = support::TempDir::new("init-cluster");
    let kubeconfig = dir.write("kubeconfig", api.kubeconfig());
    let token = dir.write(
        "token",
        jwt(&json!({"aud": [API_AUDIENCE], "sub": "system:serviceaccount:tokengate-system:tokengate"})),
    );
    let run = |args: Vec<String>| {
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
    let args = ["init", "--from-cluster", "--service-account-token", token.to_str().expect("UTF-8 path")];
    let output = run(args.iter().map(|a| a.to_string()).collect()).await.expect("task");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(0), "{text}\n{stderr}");
    assert!(text.contains(&format!("  apiServerAudiences: [\"{API_AUDIENCE}\"]\n")), "{text}");
    assert!(text.contains("    # needed by Pod team-a/web-1-abc, Deployment team-a/web\n    - audience: \"vault\"\n      namespaces: [\"team-a\"]\n      serviceAccounts: [\"web\"]\n      maxExpirationSeconds: 7200\n"), "{text}");
    assert!(
        text.contains("    - audience: \"\"\n      namespaces: [\"team-a\"]"),
        "the driver's API server token: {text}"
    );
    assert!(
        text.contains(
            "    # Secret ci/deployer-token\n    - namespaces: [\"ci\"]\n      serviceAccounts: [\"deployer\"]\n"
        ),
        "{text}"
    );
    assert!(text.contains("      audiences: [\"vault\", \"https://kubernetes.default.svc.cluster.local\"]\n      requireRepublish: true\n"), "{text}");
    assert!(
        !text.contains("web-1\n") && !text.contains("ReplicaSet"),
        "controller-owned workloads are drafted through their owner: {text}"
    );
    assert!(!text.contains("c2VjcmV0") && !stderr.contains("c2VjcmV0"), "a Secret's data is never shown");
    assert!(stderr.contains("listed 1 Secret (legacy token) object(s)"), "{stderr}");
    assert!(
        text.contains(
            "    # needed by ServiceAccount team-b/uploader\n    # added to pods by the EKS pod identity webhook"
        ),
        "an IRSA ServiceAccount: {text}"
    );
    assert!(text.contains("    - audience: \"sts.amazonaws.com\"\n      namespaces: [\"team-b\"]\n      serviceAccounts: [\"uploader\"]\n      maxExpirationSeconds: 7200\n"), "{text}");
    assert!(
        stderr.contains("listed 1 ServiceAccount (annotated for IRSA or Azure workload identity) object(s)"),
        "{stderr}"
    );

    let policy = dir.write("policy.yaml", &text);
    let audited = run(vec!["audit".into(), "--policy".into(), policy.display().to_string()]).await.expect("task");
    let audit_err = String::from_utf8_lossy(&audited.stderr);
    assert_eq!(audited.status.code(), Some(0), "{audit_err}");
    assert!(audited.stdout.is_empty(), "{}", String::from_utf8_lossy(&audited.stdout));
    assert!(audit_err.contains("0 violation(s)"), "{audit_err}");
}
