//! What reviewing one hostile body costs in memory, body shape by body shape: each body is
//! reviewed in a child process (this test binary run again on one test), which reports how far
//! its resident memory rose above what it held with the body read. The limit is twice the body.

mod support;

use std::path::Path;

use serde_json::{json, Value};

use support::TempDir;
use tokengate::cluster::ObjectStore;
use tokengate::manifest;
use tokengate::policy::Policy;
use tokengate::review::{self, Webhook};
use tokengate::server::MAX_BODY_BYTES;

/// Set in the child: the body to review, and which webhook reviews it.
const BODY_VAR: &str = "TOKENGATE_TEST_REVIEW_BODY";
const WEBHOOK_VAR: &str = "TOKENGATE_TEST_REVIEW_WEBHOOK";
/// What the child prints: its resident memory's rise during the review, in KiB.
const GROWTH: &str = "review-growth-kib=";

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn kib(field: &str) -> u64 {
    support::memory_kib(std::process::id(), field)
}

/// The child: reviews the body named by [`BODY_VAR`] once and prints how far its peak resident
/// memory rose above what it held just before. Does nothing in an ordinary run.
#[test]
fn child_reviews_one_body() {
    let Ok(path) = std::env::var(BODY_VAR) else { return };
    let webhook = match std::env::var(WEBHOOK_VAR).as_deref() {
        Ok("mutate") => Webhook::Mutate,
        _ => Webhook::Validate,
    };
    let policy = Policy::parse(&std::fs::read_to_string(fixture("policy.yaml")).expect("policy")).expect("valid");
    let mut cluster = ObjectStore::default();
    for document in manifest::load_file(&fixture("objects.yaml")).expect("objects") {
        cluster.insert(&document.object).expect("decodes");
    }
    let body = std::fs::read(path).expect("body");
    // The peak is reset to what is resident now: the body, the policy, the objects.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak (Linux 4.0 and later)");
    let before = kib("VmRSS");
    let reply = futures::executor::block_on(review::review(&body, webhook, &policy, &cluster));
    let peak = kib("VmHWM");
    let review::Reply::Review { summary, .. } = reply else { panic!("no review") };
    println!("{GROWTH}{} decision={}", peak.saturating_sub(before), summary.decision.as_str());
}

/// Reviews `body` in a child process: its resident memory's rise, in KiB, and the decision.
fn growth_kib(dir: &TempDir, name: &str, body: &[u8], webhook: &str) -> (u64, String) {
    let path = dir.write(name, body);
    let output = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args(["child_reviews_one_body", "--exact", "--nocapture", "--test-threads", "1"])
        .env(BODY_VAR, path)
        .env(WEBHOOK_VAR, webhook)
        .output()
        .expect("the child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{name}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    let line = stdout.lines().find_map(|line| Some(line.split_once(GROWTH)?.1)).unwrap_or_else(|| panic!("{stdout}"));
    let (growth, decision) = line.split_once(" decision=").expect("growth and decision");
    (growth.parse().expect("KiB"), decision.to_string())
}

/// The fixture review with its Pod filled by `fill` to just under the largest body.
fn pod_body(fill: impl FnOnce(&mut Value, usize)) -> Vec<u8> {
    let mut review: Value =
        serde_json::from_slice(&std::fs::read(fixture("reviews/pod-captured-1.21.json")).expect("fixture"))
            .expect("JSON");
    let room = MAX_BODY_BYTES - serde_json::to_vec(&review).expect("JSON").len() - 4096;
    fill(&mut review["request"]["object"], room);
    serde_json::to_vec(&review).expect("JSON")
}

/// A Deployment UPDATE whose template and old template are both filled by `fill`, each to
/// half the largest body.
fn deployment_body(fill: impl Fn(&mut Value, usize)) -> Vec<u8> {
    let template = |fill: &dyn Fn(&mut Value, usize)| {
        let mut pod = json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "web:1"}], "volumes": []}});
        fill(&mut pod, MAX_BODY_BYTES / 2 - 8192);
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "team-a"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": pod}})
    };
    let mut old = template(&fill);
    old["spec"]["template"]["metadata"]["labels"]["revision"] = json!("1");
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u-1", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
                    "namespace": "team-a", "operation": "UPDATE", "userInfo": {"username": "alice"},
                    "object": template(&fill), "oldObject": old}});
    serde_json::to_vec(&review).expect("JSON")
}

/// The fixture review, its requester in `size`-byte groups named by `name`, to the largest body.
fn group_body(name: impl Fn(usize) -> String, size: usize) -> Vec<u8> {
    let mut review: Value =
        serde_json::from_slice(&std::fs::read(fixture("reviews/pod-captured-1.21.json")).expect("fixture"))
            .expect("JSON");
    let groups = (0..(MAX_BODY_BYTES - 16384) / size).map(|i| Value::String(name(i))).collect();
    review["request"]["userInfo"]["groups"] = Value::Array(groups);
    serde_json::to_vec(&review).expect("JSON")
}

fn volumes(object: &mut Value) -> &mut Vec<Value> {
    object["spec"]["volumes"].as_array_mut().expect("volumes")
}

fn token_sources(object: &mut Value, room: usize) {
    let source = json!({"serviceAccountToken": {"audience": "x", "path": "t"}});
    volumes(object).push(json!({"name": "many", "projected": {"sources": vec![source; room / 52]}}));
}

fn empty_sources(object: &mut Value, room: usize) {
    let sources = vec![json!({}); room / 3];
    volumes(object).push(json!({"name": "many", "projected": {"sources": sources}}));
}

fn minimal_token_sources(object: &mut Value, room: usize) {
    let sources = vec![json!({"serviceAccountToken": {}}); room / 27];
    volumes(object).push(json!({"name": "many", "projected": {"sources": sources}}));
}

fn many_volumes(object: &mut Value, room: usize) {
    volumes(object).extend((0..room / 21).map(|i| json!({"name": format!("v{i:07}")})));
}

fn many_containers(object: &mut Value, room: usize) {
    let containers = object["spec"]["containers"].as_array_mut().expect("containers");
    containers.extend((0..room / 21).map(|i| json!({"name": format!("c{i:07}")})));
}

fn unnamed_volumes(object: &mut Value, room: usize) {
    volumes(object).extend((0..room / 13).map(|_| json!({"name": ""})));
}

fn unnamed_containers(object: &mut Value, room: usize) {
    let containers = object["spec"]["containers"].as_array_mut().expect("containers");
    containers.extend((0..room / 13).map(|_| json!({"name": ""})));
}

fn many_env(object: &mut Value, room: usize) {
    let env = (0..room / 21).map(|i| json!({"name": format!("e{i:07}")})).collect();
    object["spec"]["containers"][0]["env"] = Value::Array(env);
}

fn many_mounts(object: &mut Value, room: usize) {
    let mounts = (0..room / 37).map(|i| json!({"name": "m", "mountPath": format!("/m{i:07}")})).collect();
    object["spec"]["containers"][0]["volumeMounts"] = Value::Array(mounts);
}

fn one_annotation(object: &mut Value, room: usize) {
    object["metadata"]["annotations"]["padding"] = Value::String("x".repeat(room));
}

fn labels(object: &mut Value, room: usize) {
    let labels = (0..room / 14).map(|i| (format!("k{i:07}"), Value::String(String::new()))).collect();
    object["metadata"]["labels"] = Value::Object(labels);
}

fn annotations(object: &mut Value, room: usize) {
    let annotations = (0..room / 14).map(|i| (format!("a{i:07}"), Value::String(String::new()))).collect();
    object["metadata"]["annotations"] = Value::Object(annotations);
}

/// Every shape of body found to cost the most per byte, each reviewed alone: its growth must
/// stay under twice its size (plus 1 MiB for the allocator's own bookkeeping). Volumes,
/// containers and their variables and mounts are stored flat (a few bytes each beside their
/// names), so even entries of 13 bytes of JSON (`{"name":""},`) stay within it.
#[test]
fn reviewing_a_hostile_body_takes_at_most_twice_its_size() {
    let dir = TempDir::new("review-memory");
    let shapes: Vec<(&str, Vec<u8>, &str)> = vec![
        ("2 400 000 empty groups of the requester", group_body(|_| String::new(), 3), "validate"),
        ("640 000 groups of the requester", group_body(|i| format!("g{i:07}"), 11), "validate"),
        ("one long annotation", pod_body(one_annotation), "validate"),
        ("520 000 labels", pod_body(labels), "validate"),
        ("520 000 labels, mutate", pod_body(labels), "mutate"),
        ("520 000 annotations", pod_body(annotations), "validate"),
        ("2 400 000 empty projected sources", pod_body(empty_sources), "validate"),
        ("141 000 forbidden token sources", pod_body(token_sources), "validate"),
        ("141 000 forbidden token sources, mutate", pod_body(token_sources), "mutate"),
        ("270 000 minimal token sources", pod_body(minimal_token_sources), "validate"),
        ("350 000 volumes", pod_body(many_volumes), "validate"),
        ("350 000 containers", pod_body(many_containers), "mutate"),
        ("540 000 unnamed volumes", pod_body(unnamed_volumes), "validate"),
        ("540 000 unnamed containers", pod_body(unnamed_containers), "mutate"),
        ("350 000 env variables", pod_body(many_env), "mutate"),
        ("200 000 volume mounts", pod_body(many_mounts), "mutate"),
        ("Deployment UPDATE, 2 x 70 000 forbidden token sources", deployment_body(token_sources), "validate"),
        ("Deployment UPDATE, 2 x 1 200 000 empty sources", deployment_body(empty_sources), "validate"),
        ("Deployment UPDATE, 2 x 260 000 labels", deployment_body(labels), "validate"),
    ];
    let mut over = Vec::new();
    for (name, body, webhook) in &shapes {
        let (growth, decision) = growth_kib(&dir, "body.json", body, webhook);
        let ratio = growth as f64 * 1024.0 / body.len() as f64;
        println!(
            "{name} ({webhook}): body {:.2} MiB, review +{:.1} MiB ({ratio:.2} x the body), {decision}",
            body.len() as f64 / 1048576.0,
            growth as f64 / 1024.0
        );
        if growth * 1024 > 2 * body.len() as u64 + 1024 * 1024 {
            over.push(format!("{name}: {ratio:.2} x"));
        }
    }
    assert!(over.is_empty(), "reviews that take more than their bound: {over:?}");
}

/// A review keeps only the violations its response can show, yet counts every one: the denial
/// says how many it does not list, and the summary logged and counted has them all.
#[test]
fn violations_beyond_those_shown_are_counted_not_kept() {
    let policy = Policy::parse(&std::fs::read_to_string(fixture("policy.yaml")).expect("policy")).expect("valid");
    let cluster = ObjectStore::default();
    let body = pod_body(|object, _| {
        let source = json!({"serviceAccountToken": {"audience": "x", "path": "t"}});
        volumes(object).push(json!({"name": "many", "projected": {"sources": vec![source; 1000]}}));
    });
    let reply = futures::executor::block_on(review::review(&body, Webhook::Validate, &policy, &cluster));
    let review::Reply::Review { body, summary } = reply else { panic!("no review") };
    assert_eq!(summary.violations, 1000);
    let answer: Value = serde_json::from_slice(&body).expect("JSON");
    let message = answer["response"]["status"]["message"].as_str().expect("a denial");
    assert_eq!(message.matches("serviceAccountToken.audience: ").count(), review::MAX_LISTED_VIOLATIONS);
    assert!(message.ends_with("; and 950 more violations"), "{message}");
    assert_eq!(answer["response"]["auditAnnotations"]["violations"].as_str(), Some(&message["tokengate: ".len()..]));
}

/// Of the requester's groups a review keeps only those decisions read, yet an exempt group
/// among many others still exempts the request, written once or many times.
#[test]
fn an_exempt_group_among_many_still_exempts() {
    let policy = Policy::parse(&std::fs::read_to_string(fixture("policy.yaml")).expect("policy")).expect("valid");
    let cluster = ObjectStore::default();
    for exempt in [true, false] {
        let body = group_body(
            |i| if exempt && i % 1000 == 999 { "system:masters-breakglass".to_string() } else { format!("g{i}") },
            20,
        );
        let reply = futures::executor::block_on(review::review(&body, Webhook::Validate, &policy, &cluster));
        let review::Reply::Review { summary, .. } = reply else { panic!("no review") };
        assert_eq!(summary.decision == review::Decision::Exempt, exempt, "{:?}", summary.decision);
    }
}
