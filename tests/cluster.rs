//! Cluster integration against a fake API server spoken to by a real kube-rs client: the policy
//! ConfigMap, the watch caches behind decisions, the cache-miss fallback, and `tokengate audit`.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::eventually;
use support::fake_apiserver::FakeApiServer;
use tokengate::cluster::{Cluster, LiveCluster, LiveOptions, ObjectStore};
use tokengate::manifest;
use tokengate::metrics::Metrics;
use tokengate::policy::{Mode, Policy};
use tokengate::review::{review, Reply, Webhook};
use tokengate::source::{watch_configmap, ConfigMapRef, PolicyPublisher};

const POLICY: &str = include_str!("fixtures/policy.yaml");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(root().join(format!("tests/fixtures/reviews/{name}.json"))).expect("fixture")
}

fn fixture_objects() -> Vec<Value> {
    manifest::load_file(&root().join("tests/fixtures/objects.yaml"))
        .expect("objects")
        .into_iter()
        .map(|d| d.object)
        .collect()
}

fn configmap(data: Option<&str>) -> Value {
    let mut object = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tokengate-policy", "namespace": "tokengate-system"}});
    if let Some(text) = data {
        object["data"] = json!({"policy.yaml": text});
    }
    object
}

fn event_reasons(api: &FakeApiServer) -> Vec<String> {
    api.events().iter().filter_map(|e| e["reason"].as_str().map(str::to_string)).collect()
}

#[tokio::test]
async fn policy_configmap_created_updated_broken_deleted_and_recreated() {
    let _no_build = BUILDING.read().await;
    let api = FakeApiServer::start().await;
    let metrics = Arc::new(Metrics::new());
    let (publisher, mut policy) = PolicyPublisher::new(metrics.clone());
    let target: ConfigMapRef = "tokengate-system/tokengate-policy".parse().expect("ref");
    tokio::spawn(watch_configmap(api.client(), target, publisher));
    let mode = |policy: &tokengate::source::PolicyReceiver| policy.borrow().as_ref().map(|p| p.mode());
    // A ceiling for each step, generous for a machine busy with builds; each wait ends as soon as
    // its condition holds.
    let within = Duration::from_secs(20);

    // Cold start without the ConfigMap: no policy (not ready), counted, no crash.
    assert!(eventually(within, async || metrics.encode().contains(r#"policy_reloads_total{result="error"} 1"#)).await);
    assert_eq!(mode(&policy), None);

    api.apply(configmap(Some(POLICY)));
    let started = Instant::now();
    tokio::time::timeout(within, policy.wait_for(Option::is_some)).await.expect("applied in time").expect("open");
    println!("the created ConfigMap's policy applied after {:?}", started.elapsed());
    assert_eq!(mode(&policy), Some(Mode::Enforce));
    assert!(eventually(within, async || event_reasons(&api).contains(&"PolicyLoaded".to_string())).await);

    api.apply(configmap(Some(
        "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec:\n  expiration: {minSeconds: 5}\n",
    )));
    assert!(eventually(within, async || event_reasons(&api).contains(&"InvalidPolicy".to_string())).await);
    let invalid = api.events().into_iter().find(|e| e["reason"] == "InvalidPolicy").expect("event");
    assert_eq!(invalid["type"], "Warning");
    assert_eq!(invalid["regarding"]["name"], "tokengate-policy");
    assert!(invalid["note"].as_str().expect("note").contains("spec.expiration.minSeconds"), "{invalid}");
    assert_eq!(mode(&policy), Some(Mode::Enforce), "the last good policy stays");

    api.apply(configmap(Some(&POLICY.replace("mode: Enforce", "mode: Warn"))));
    assert!(eventually(within, async || mode(&policy) == Some(Mode::Warn)).await, "a valid update applies");

    api.apply(configmap(None));
    let found = eventually(within, async || {
        api.events().iter().any(|e| e["note"].as_str().is_some_and(|n| n.contains("has no key policy.yaml")))
    })
    .await;
    assert!(found, "{:#?}", api.events());
    assert_eq!(mode(&policy), Some(Mode::Warn));

    api.delete("v1", "ConfigMap", Some("tokengate-system"), "tokengate-policy");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mode(&policy), Some(Mode::Warn), "deleting the ConfigMap keeps the last good policy");

    api.apply(configmap(Some(&POLICY.replace("mode: Enforce", "mode: Audit"))));
    assert!(eventually(within, async || mode(&policy) == Some(Mode::Audit)).await, "a recreated ConfigMap applies");
    let text = metrics.encode();
    assert!(text.contains("tokengate_policy_generation 3"), "{text}");
}

/// A fake cluster holding the golden fixtures' objects, and a synced live cluster over it.
async fn live(options: LiveOptions) -> (FakeApiServer, Arc<LiveCluster>) {
    let api = FakeApiServer::start().await;
    for object in fixture_objects() {
        api.apply(object);
    }
    let cluster = LiveCluster::start(api.client(), options, Arc::new(Metrics::new()));
    assert!(eventually(Duration::from_secs(20), async || cluster.is_ready()).await, "caches sync");
    (api, cluster)
}

async fn respond<C: Cluster>(name: &str, webhook: Webhook, policy: &Policy, cluster: &C) -> Value {
    let Reply::Review { body, .. } = review(&fixture(name), webhook, policy, cluster).await else { panic!("{name}") };
    serde_json::from_slice(&body).expect("JSON")
}

#[tokio::test]
async fn live_caches_answer_decisions_exactly_like_the_objects_files() {
    let (api, cluster) = live(support::live_defaults()).await;
    // Every namespace has a `default` service account; the fixtures name only some.
    api.apply(
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "prod"}}),
    );
    assert!(eventually(Duration::from_secs(20), async || cluster.sizes()[0] >= 4).await);
    let policy = Policy::parse(POLICY).expect("valid");
    let mut offline = ObjectStore::default();
    for object in fixture_objects() {
        offline.insert(&object).expect("decodes");
    }
    let cases = [
        ("pod-irsa-mutate", Webhook::Mutate),
        ("pod-irsa-validate-missing", Webhook::Validate),
        ("pod-csi-inline-allowed", Webhook::Validate),
        ("pod-csi-inline-denied", Webhook::Validate),
        ("tokenrequest-node-csi-inline", Webhook::Validate),
        ("tokenrequest-node-pvc", Webhook::Validate),
        ("tokenrequest-node-ephemeral", Webhook::Validate),
        ("tokenrequest-node-other-node", Webhook::Validate),
        ("tokenrequest-node-wrong-uid", Webhook::Validate),
        ("tokenrequest-node-vault-1.36", Webhook::Validate),
    ];
    for (name, webhook) in cases {
        let live = respond(name, webhook, &policy, cluster.as_ref()).await;
        let files = respond(name, webhook, &policy, &offline).await;
        assert_eq!(live, files, "{name}");
    }
    let patched = respond("pod-irsa-mutate", Webhook::Mutate, &policy, cluster.as_ref()).await;
    assert!(patched["response"]["patch"].is_string(), "service-account annotation read from the cache");
    assert_eq!(api.single_gets(), 0, "every lookup was answered by a cache");
    let [accounts, drivers, pods, claims, volumes] = cluster.sizes();
    assert!(accounts >= 3 && drivers == 3 && pods >= 6 && claims == 2 && volumes == 2);
}

/// A pod whose `spec.volumes` is not a list: neither k8s-openapi nor the reduced view decodes it.
fn undecodable_pod(name: &str, generation: u32) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "team-a", "labels": {"generation": generation.to_string()}},
           "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "app"}], "volumes": "not a list"}})
}

#[tokio::test]
async fn one_undecodable_object_is_skipped_and_counted_and_the_caches_stay_ready() {
    let api = FakeApiServer::start().await;
    for object in fixture_objects() {
        api.apply(object);
    }
    api.apply(undecodable_pod("broken", 1));
    // Fields no decision reads may take shapes k8s-openapi refuses: the reduced views skip them.
    api.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "from-the-future", "namespace": "team-a", "uid": "u-future", "creationTimestamp": "not a time"},
                     "spec": {"nodeName": "node-1", "containers": "a newer shape", "volumes": []}, "status": 7}));
    api.apply(json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "odd"}, "spec": {"csi": "not an object"}}));
    let metrics = Arc::new(Metrics::new());
    let cluster = LiveCluster::start(api.client(), support::live_defaults(), metrics.clone());
    assert!(
        eventually(Duration::from_secs(20), async || cluster.is_ready()).await,
        "caches sync around the bad objects"
    );

    // Decisions that need the good objects are the same as from the files.
    let policy = Policy::parse(POLICY).expect("valid");
    let mut offline = ObjectStore::default();
    for object in fixture_objects() {
        offline.insert(&object).expect("decodes");
    }
    for name in [
        "tokenrequest-node-csi-inline",
        "tokenrequest-node-pvc",
        "tokenrequest-node-ephemeral",
        "pod-csi-inline-allowed",
    ] {
        let live = respond(name, Webhook::Validate, &policy, cluster.as_ref()).await;
        let files = respond(name, Webhook::Validate, &policy, &offline).await;
        assert_eq!(live, files, "{name}");
    }
    let future = cluster.pod("team-a", "from-the-future").await.expect("decodes").expect("cached");
    assert_eq!(future.uid.to_string(), "u-future");

    // The bad objects answer with the reason, without an API call.
    let before = api.single_gets();
    let err = cluster.pod("team-a", "broken").await.expect_err("cannot be judged");
    assert!(err.to_string().contains("Pod team-a/broken exists but does not decode"), "{err}");
    let err = cluster.persistent_volume("odd").await.expect_err("cannot be judged");
    assert!(err.to_string().contains("PersistentVolume odd exists but does not decode"), "{err}");
    assert_eq!(api.single_gets(), before, "answered from the cache");
    let text = metrics.encode();
    assert!(text.contains(r#"tokengate_cache_undecodable_objects{kind="Pod"} 1"#), "{text}");
    assert!(text.contains(r#"tokengate_cache_undecodable_objects{kind="PersistentVolume"} 1"#), "{text}");

    // Counted once per object, not once per event (the watch delivers in order: once the
    // repaired pod below is cached, both events before it were seen).
    api.apply(undecodable_pod("broken", 2));
    api.apply(undecodable_pod("broken", 3));

    // Fixed: decodes again and leaves the count of skipped objects.
    api.apply(fresh_pod("broken", "0b7c8a57-0000-4000-8000-000000000042"));
    let fixed =
        eventually(Duration::from_secs(20), async || cluster.pod("team-a", "broken").await.is_ok_and(|p| p.is_some()))
            .await;
    assert!(fixed, "the repaired pod is cached");
    assert!(
        metrics.encode().contains(r#"tokengate_cache_decode_failures_total{kind="Pod"} 1"#),
        "{}",
        metrics.encode()
    );
    assert!(metrics.encode().contains(r#"tokengate_cache_undecodable_objects{kind="Pod"} 0"#));
    assert!(cluster.is_ready());
}

fn fresh_pod(name: &str, uid: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "team-a", "uid": uid},
           "spec": {"nodeName": "node-1", "serviceAccountName": "web", "containers": [{"name": "app", "image": "app"}],
                    "volumes": [{"name": "vault", "projected": {"sources": [{"serviceAccountToken": {"audience": "vault", "path": "t"}}]}}]}})
}

fn node_token_request(pod: &str, uid: &str) -> Vec<u8> {
    let mut review: Value = serde_json::from_slice(&fixture("tokenrequest-node-vault-1.36")).expect("JSON");
    review["request"]["object"]["spec"]["boundObjectRef"] =
        json!({"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": uid});
    serde_json::to_vec(&review).expect("JSON")
}

#[tokio::test]
async fn a_pod_the_cache_has_not_seen_is_fetched_from_the_api() {
    let (api, cluster) = live(support::live_defaults()).await;
    let policy = Policy::parse(POLICY).expect("valid");
    api.set_watch_delay(Duration::from_secs(3));
    api.apply(fresh_pod("just-created", "0b7c8a57-0000-4000-8000-000000000001"));
    let body = node_token_request("just-created", "0b7c8a57-0000-4000-8000-000000000001");
    let Reply::Review { body, .. } = review(&body, Webhook::Validate, &policy, cluster.as_ref()).await else {
        panic!()
    };
    let response: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(response["response"]["allowed"], json!(true), "{response}");
    assert!(api.single_gets() >= 1, "answered by the fallback");
}

#[tokio::test]
async fn a_slow_api_fails_the_lookup_in_time_with_a_clear_reason() {
    let _no_build = BUILDING.read().await;
    let options = LiveOptions { fallback_timeout: Duration::from_millis(300), ..support::live_defaults() };
    let (api, cluster) = live(options).await;
    let policy = Policy::parse(POLICY).expect("valid");
    // The control: without the fallback timeout the lookup would wait for the API's 20 s.
    api.set_watch_delay(Duration::from_secs(20));
    api.set_get_delay(Duration::from_secs(20));
    api.apply(fresh_pod("slow", "0b7c8a57-0000-4000-8000-000000000002"));
    let started = Instant::now();
    let body = node_token_request("slow", "0b7c8a57-0000-4000-8000-000000000002");
    let Reply::Review { body, .. } = review(&body, Webhook::Validate, &policy, cluster.as_ref()).await else {
        panic!()
    };
    let elapsed = started.elapsed();
    println!("the lookup failed after {elapsed:?} (fallback timeout 300 ms, API delay 20 s)");
    assert!(elapsed >= Duration::from_millis(300), "waited for the API: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "bounded by the fallback timeout, not the API: {elapsed:?}");
    let response: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(response["response"]["allowed"], json!(false));
    let message = response["response"]["status"]["message"].as_str().expect("message");
    assert!(message.contains("could not look up pod team-a/slow") && message.contains("timed out"), "{message}");
}

#[tokio::test]
async fn a_review_needing_lookups_answers_with_its_reason_before_the_api_servers_timeout() {
    let _no_build = BUILDING.read().await;
    // The fallback alone would wait 30 s; the API server gives the webhook 4 s (`?timeout=4s`), of
    // which lookups may take 3 s: the answer comes between 3 s and 4 s, with a second to spare
    // for a machine busy with builds.
    let options = LiveOptions { fallback_timeout: Duration::from_secs(30), ..support::live_defaults() };
    let (api, cluster) = live(options).await;
    api.set_watch_delay(Duration::from_secs(10));
    api.set_get_delay(Duration::from_secs(10));
    api.apply(fresh_pod("slow", "0b7c8a57-0000-4000-8000-000000000003"));
    let pki = support::Pki::new("deadline");
    let server = support::start(&pki, cluster, support::Options::default()).await;
    let client = support::client(&pki.ca_pem(), &server, None);
    let started = Instant::now();
    let response = client
        .post(server.url("/validate?timeout=4s"))
        .header("content-type", "application/json")
        .body(node_token_request("slow", "0b7c8a57-0000-4000-8000-000000000003"))
        .send()
        .await
        .expect("answered over TLS");
    let elapsed = started.elapsed();
    println!("answered after {elapsed:?} (lookup budget 3 s, API server timeout 4 s)");
    assert!(elapsed >= Duration::from_secs(3), "the lookups had their budget: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "answered before the API server gives up: {elapsed:?}");
    let review: Value = response.json().await.expect("an AdmissionReview");
    assert_eq!(review["response"]["allowed"], json!(false));
    let message = review["response"]["status"]["message"].as_str().expect("message");
    assert!(message.contains("could not look up pod team-a/slow") && message.contains("in time"), "{message}");
}

#[tokio::test]
async fn a_storm_of_requests_for_a_missing_pod_costs_one_api_call() {
    let (api, cluster) = live(support::live_defaults()).await;
    let policy = Policy::parse(POLICY).expect("valid");
    api.set_get_delay(Duration::from_millis(200));
    let before = api.single_gets();
    let body = node_token_request("ghost", "0b7c8a57-0000-4000-8000-000000000009");
    let storm = (0..20).map(|_| review(&body, Webhook::Validate, &policy, cluster.as_ref()));
    for reply in futures::future::join_all(storm).await {
        let Reply::Review { body, .. } = reply else { panic!("a review") };
        let response: Value = serde_json::from_slice(&body).expect("JSON");
        let message = response["response"]["status"]["message"].as_str().expect("denied");
        assert!(message.contains("pod team-a/ghost does not exist"), "{message}");
    }
    let Reply::Review { .. } = review(&body, Webhook::Validate, &policy, cluster.as_ref()).await else { panic!() };
    assert_eq!(api.single_gets() - before, 1, "one API call for 21 reviews within a few seconds");
}

/// The caches' watches are cut, objects change while no watch is open, and the history is
/// compacted before the watches come back: each watch from its last version gets a 410 Expired
/// ERROR event, and the cache lists again (kube's watcher), sees what changed in the gap, and
/// answers from the cache all along (readiness never drops).
#[tokio::test]
async fn the_caches_list_again_after_410_expired_and_see_what_changed_in_the_gap() {
    let (api, cluster) = live(support::live_defaults()).await;
    let pods_before = cluster.sizes()[2] + 1;
    api.apply(fresh_pod("doomed", "0b7c8a57-0000-4000-8000-000000000010"));
    let cached = eventually(Duration::from_secs(10), async || cluster.sizes()[2] == pods_before).await;
    assert!(cached, "the pod reaches the cache");
    let (lists, expired) = (api.lists(), api.expired_answers());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (cluster, stop) = (cluster.clone(), stop.clone());
        async move {
            let mut unready = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                unready += usize::from(!cluster.is_ready());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            unready
        }
    });

    api.pause_watches();
    api.drop_watches();
    api.apply(fresh_pod("born-in-the-gap", "0b7c8a57-0000-4000-8000-000000000011"));
    api.apply(fresh_pod("also-born-in-the-gap", "0b7c8a57-0000-4000-8000-000000000012"));
    api.delete("v1", "Pod", Some("team-a"), "doomed");
    api.compact();
    api.resume_watches();

    // Two pods more, one less: only a new list shows that (no watch saw those writes).
    let relisted = eventually(Duration::from_secs(20), async || cluster.sizes()[2] == pods_before + 1).await;
    let gets = api.single_gets();
    let born = cluster.pod("team-a", "born-in-the-gap").await.expect("a lookup").is_some();
    assert!(relisted && born, "the new pod is cached, the deleted one gone: {:?}", cluster.sizes());
    assert_eq!(api.single_gets(), gets, "answered by the cache, not the API fallback");
    assert!(api.expired_answers() > expired, "the watches were told 410 Expired");
    assert!(api.lists() > lists, "and listed again");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(sampler.await.expect("sampler"), 0, "ready throughout");
    assert!(cluster.pod("team-a", "doomed").await.expect("a lookup").is_none(), "the deleted pod is gone");
}

/// A pod the test policy finds in violation: it lacks the `aws-web-identity` injection its
/// service account asks for.
fn unidentified_pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "team-a"},
           "spec": {"serviceAccountName": "irsa", "containers": [{"name": "app", "image": "app"}]}})
}

/// How many findings each unidentified pod got.
fn findings_per_pod(audit: &tokengate::audit::Audit) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for finding in &audit.report.violations {
        let name = &finding.object.name;
        if finding.object.kind == "Pod" && (name.starts_with("unidentified-") || name == "created-mid-list") {
            *counts.entry(name.clone()).or_default() += 1;
        }
    }
    counts
}

/// More pods than one page of `audit`: the continue token expires after the first page (the
/// history compacted, a pod created meanwhile). `audit` lists the kind again from the start and
/// judges every pod exactly once, the new one included; never a partial cluster as complete.
#[tokio::test]
async fn audit_lists_a_kind_again_when_its_continue_token_expires() {
    let api = FakeApiServer::start().await;
    for object in fixture_objects() {
        api.apply(object);
    }
    for i in 0..300 {
        api.apply(unidentified_pod(&format!("unidentified-{i:03}")));
    }
    api.compact_during_lists("pods", vec![unidentified_pod("created-mid-list")]);
    let policy = Policy::parse(POLICY).expect("valid");
    let audit = tokengate::audit::audit(api.client(), &policy, None, |_, _| {}).await.expect("a complete audit");
    assert_eq!(api.expired_answers(), 1, "the second page was refused once");
    let counts = findings_per_pod(&audit);
    assert_eq!(counts.len(), 301, "every pod, the one created mid-list too");
    assert!(counts.values().all(|n| *n == 1), "each judged once: {counts:?}");
    assert!(audit.unread.is_empty(), "{:?}", audit.unread);
}

/// When the token expires on every attempt, `audit` fails and says why, naming the kind.
#[tokio::test]
async fn audit_fails_clearly_when_a_kind_cannot_be_listed_before_its_token_expires() {
    let api = FakeApiServer::start().await;
    for object in fixture_objects() {
        api.apply(object);
    }
    for i in 0..300 {
        api.apply(unidentified_pod(&format!("unidentified-{i:03}")));
    }
    let interruptions = (0..10).map(|i| unidentified_pod(&format!("created-mid-list-{i}"))).collect();
    api.compact_during_lists("pods", interruptions);
    let policy = Policy::parse(POLICY).expect("valid");
    let err = tokengate::audit::audit(api.client(), &policy, None, |_, _| {}).await.expect_err("no partial audit");
    assert_eq!(err.kind, "Pod");
    assert!(err.message.contains("expired"), "{err}");
}

fn workload_objects() -> Vec<Value> {
    let template = |audience: &str| {
        json!({"metadata": {"labels": {"app": "x"}}, "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "app"}],
               "volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"audience": audience, "path": "t"}}]}}]}})
    };
    vec![
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bad-deploy", "namespace": "team-a"},
               "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template("gcp.example.svc.id.goog")}}),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "bad-deploy-1", "namespace": "team-a",
                   "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "bad-deploy", "uid": "d1", "controller": true}]},
               "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template("gcp.example.svc.id.goog")}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "good-deploy", "namespace": "team-a"},
               "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template("vault")}}),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": "evil.example.com"},
               "spec": {"tokenRequests": [{"audience": "vault"}]}}),
    ]
}

#[tokio::test]
async fn audit_reports_existing_violations_and_exits_1() {
    let api = FakeApiServer::start().await;
    for object in fixture_objects().into_iter().chain(workload_objects()) {
        api.apply(object);
    }
    // A running pod lacking its required injection, and one in an exempt namespace.
    api.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "no-identity", "namespace": "team-a"},
                     "spec": {"serviceAccountName": "irsa", "containers": [{"name": "app", "image": "app"}]}}));
    // Legacy token Secrets: one the policy lists, one it does not; and a Secret of another type.
    let secret = |namespace: &str, name: &str, service_account: &str, kind: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "type": kind, "data": {"token": "c2VjcmV0LWRhdGE="},
               "metadata": {"name": name, "namespace": namespace,
                            "annotations": {"kubernetes.io/service-account.name": service_account}}})
    };
    api.apply(secret("ci", "deployer-token", "deployer", "kubernetes.io/service-account-token"));
    api.apply(secret("team-a", "web-token", "web", "kubernetes.io/service-account-token"));
    api.apply(secret("team-a", "opaque", "web", "Opaque"));
    api.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "system", "namespace": "kube-system"},
                     "spec": {"containers": [{"name": "app", "image": "app"}],
                              "volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"audience": "x", "path": "t"}}]}}]}}));
    let dir = support::TempDir::new("audit");
    let kubeconfig = dir.write("kubeconfig", api.kubeconfig());
    let run = |output: &str| {
        let kubeconfig = kubeconfig.clone();
        let output = output.to_string();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
                .args(["audit", "--policy", "tests/fixtures/policy.yaml", "--output", &output])
                .current_dir(root())
                .env("KUBECONFIG", &kubeconfig)
                .output()
                .expect("tokengate runs")
        })
    };
    let text = run("text").await.expect("task");
    let stdout = String::from_utf8_lossy(&text.stdout).to_string();
    let stderr = String::from_utf8_lossy(&text.stderr).to_string();
    assert_eq!(text.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("Deployment team-a/bad-deploy: spec.template.spec.volumes[0]"), "{stdout}");
    assert!(stdout.contains("CSIDriver evil.example.com: spec.tokenRequests"), "{stdout}");
    assert!(stdout.contains("Pod team-a/no-identity: spec.volumes: injection \"aws-web-identity\""), "{stdout}");
    assert!(!stdout.contains("bad-deploy-1"), "controller-owned ReplicaSets are judged through their Deployment");
    assert!(stdout.contains("Secret team-a/web-token: metadata.annotations"), "{stdout}");
    assert!(!stdout.contains("deployer-token") && !stdout.contains("opaque"), "{stdout}");
    assert!(!stdout.contains("c2VjcmV0") && !stderr.contains("c2VjcmV0"), "a Secret's data is never shown");
    assert!(!stdout.contains("good-deploy") && !stdout.contains("kube-system"), "{stdout}");
    assert!(stderr.contains("listed") && stderr.contains("Pod"), "progress on stderr: {stderr}");
    let json = run("json").await.expect("task");
    let report: Value = serde_json::from_slice(&json.stdout).expect("JSON report");
    assert_eq!(report["violations"].as_array().expect("array").len(), stdout.lines().count());
    assert!(report["violations"][0].get("file").is_none());
}

#[tokio::test]
async fn audit_without_a_cluster_exits_2() {
    let dir = support::TempDir::new("audit-none");
    let kubeconfig = dir.write("kubeconfig", "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'http://127.0.0.1:9'}\ncontexts:\n- name: c\n  context: {cluster: c}\ncurrent-context: c\n");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["audit", "--policy", "tests/fixtures/policy.yaml"])
        .current_dir(root())
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("tokengate runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("listing the cluster"));
}

/// Runs `tokengate audit` with `args` (after `--policy`) and `KUBECONFIG` set to `kubeconfig`.
async fn run_audit(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    let kubeconfig = kubeconfig.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["audit", "--policy", "tests/fixtures/policy.yaml"])
            .args(&args)
            .current_dir(root())
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .expect("tokengate runs")
    })
    .await
    .expect("task")
}

fn texts(output: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn audit_reports_what_it_read_names_a_forbidden_kind_and_exits_2() {
    let api = FakeApiServer::start().await;
    for object in fixture_objects().into_iter().chain(workload_objects()) {
        api.apply(object);
    }
    api.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "no-identity", "namespace": "team-a"},
                     "spec": {"serviceAccountName": "irsa", "containers": [{"name": "app", "image": "app"}]}}));
    // Metadata that does not decode (labels must be a map), and a pod spec that does not.
    api.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mislabelled", "namespace": "team-a", "labels": "app=x"},
                     "spec": {"containers": [{"name": "app", "image": "app"}]}}));
    api.apply(undecodable_pod("broken", 1));
    api.forbid("deployments");
    let dir = support::TempDir::new("audit-403");
    let kubeconfig = dir.write("kubeconfig", api.kubeconfig());
    let output = run_audit(&kubeconfig, &[]).await;
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("CSIDriver evil.example.com: spec.tokenRequests"),
        "what was read is reported: {stdout}\n{stderr}"
    );
    assert!(stdout.contains("Pod team-a/no-identity: spec.volumes"), "{stdout}");
    assert!(stdout.contains("Pod team-a/mislabelled: object: does not decode"), "{stdout}");
    assert!(stdout.contains("Pod team-a/broken: "), "{stdout}");
    assert!(!stdout.contains("bad-deploy"), "{stdout}");
    assert!(stderr.contains("could not list Deployment: forbidden: deployments is forbidden"), "{stderr}");
    assert!(stderr.contains("listed") && stderr.contains("StatefulSet"), "the kinds after it are listed: {stderr}");
    assert!(stderr.contains("the audit is incomplete: 1 kind(s)"), "{stderr}");
    assert!(!stderr.contains("listed 0 Deployment"), "{stderr}");
    let json = run_audit(&kubeconfig, &["--output", "json"]).await;
    assert_eq!(json.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&json.stdout).expect("a JSON report of what was read");
    assert!(report["violations"].as_array().is_some_and(|v| v.len() >= 4), "{report}");
    assert_eq!(report["unread"][0]["kind"], "Deployment", "the JSON names what could not be read: {report}");
    assert!(report["unread"][0]["reason"].as_str().is_some_and(|r| r.contains("forbidden")), "{report}");
}

#[tokio::test]
async fn audit_takes_a_kubeconfig_a_context_and_a_namespace_like_kubectl() {
    let api = FakeApiServer::start().await;
    for object in fixture_objects().into_iter().chain(workload_objects()) {
        api.apply(object);
    }
    let elsewhere = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "team-b"},
        "spec": {"containers": [{"name": "app", "image": "app"}],
                 "volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"audience": "gcp.example.svc.id.goog", "path": "t"}}]}}]}})
    };
    api.apply(elsewhere("other-team"));
    // The current context points at no server; --context picks the fake one.
    let kubeconfig = api.kubeconfig().replace("current-context: fake-apiserver", "current-context: nowhere") + "---\n";
    let kubeconfig = kubeconfig
        .replace("---\n", "")
        .replace(
            "contexts:\n",
            "contexts:\n- name: nowhere\n  context:\n    cluster: nowhere\n    user: fake-apiserver\n",
        )
        .replace("clusters:\n", "clusters:\n- name: nowhere\n  cluster:\n    server: http://127.0.0.1:9\n");
    let dir = support::TempDir::new("audit-flags");
    let file = dir.write("config", kubeconfig);
    let missing = dir.path("missing");
    let everything =
        run_audit(&missing, &["--kubeconfig", file.to_str().expect("path"), "--context", "fake-apiserver"]).await;
    let (stdout, stderr) = texts(&everything);
    assert_eq!(everything.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("Pod team-b/other-team") && stdout.contains("Deployment team-a/bad-deploy"), "{stdout}");
    let one = run_audit(
        &missing,
        &["--kubeconfig", file.to_str().expect("path"), "--context", "fake-apiserver", "-n", "team-a"],
    )
    .await;
    let (stdout, stderr) = texts(&one);
    assert_eq!(one.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("Deployment team-a/bad-deploy"), "{stdout}");
    assert!(stdout.contains("CSIDriver evil.example.com"), "CSIDrivers are cluster-scoped: {stdout}");
    assert!(!stdout.contains("team-b"), "{stdout}");
    // The same file through KUBECONFIG, with its current context: no server there.
    let current = run_audit(&file, &[]).await;
    assert_eq!(current.status.code(), Some(2));
    assert!(texts(&current).1.contains("listing the cluster"));
}

#[tokio::test]
async fn a_kubeconfig_problem_is_reported_once() {
    let dir = support::TempDir::new("audit-kubeconfig");
    let missing = dir.path("no-such-kubeconfig");
    let output = run_audit(&missing, &[]).await;
    let (_, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.matches("no-such-kubeconfig").count(), 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let broken = dir.write("broken", "apiVersion: v1\nkind: Config\nclusters: [oops\n");
    let output = run_audit(&missing, &["--kubeconfig", broken.to_str().expect("path")]).await;
    let (_, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.matches("failed to parse kubeconfig").count(), 1, "{stderr}");
    let api = FakeApiServer::start().await;
    let file = dir.write("config", api.kubeconfig());
    let output = run_audit(&file, &["--context", "nope"]).await;
    let (_, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.matches("nope").count(), 1, "{stderr}");
}

/// Makes a CA and a client certificate with `openssl x509 -req` and no extensions: X.509
/// version 1. `None` when openssl is not installed (a failure under CI: see `skip_or_fail`).
fn version_one_client_certificate(dir: &support::TempDir) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let openssl = |args: &[&str]| {
        std::process::Command::new("openssl").args(args).current_dir(&dir.0).output().map(|o| o.status.success())
    };
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=admin/O=system:masters",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            "client.crt",
        ],
    ];
    for step in steps {
        match openssl(step) {
            Ok(true) => {}
            Ok(false) => panic!("openssl {step:?} failed"),
            Err(_) => return None,
        }
    }
    Some((dir.path("client.crt"), dir.path("client.key")))
}

#[tokio::test]
async fn a_version_one_client_certificate_is_explained_by_every_command_that_reads_a_kubeconfig() {
    let dir = support::TempDir::new("v1-cert");
    let Some((cert, key)) = version_one_client_certificate(&dir) else {
        support::skip_or_fail("openssl is not installed");
        return;
    };
    let pem = std::fs::read(&cert).expect("certificate");
    assert!(tokengate::cluster::kubeconfig::is_version_one(&pem), "openssl x509 -req without extensions makes v1");
    let api = FakeApiServer::start().await;
    let kubeconfig = api.kubeconfig().replace(
        "user: {}",
        &format!("user:\n    client-certificate: {}\n    client-key: {}", cert.display(), key.display()),
    );
    let file = dir.write("config", kubeconfig);
    let check = |stderr: &str| {
        assert!(stderr.contains("X.509 version 1"), "{stderr}");
        assert!(stderr.contains(&cert.display().to_string()), "names the file: {stderr}");
        assert!(stderr.contains("extendedKeyUsage=clientAuth"), "says how to reissue it: {stderr}");
        assert!(!stderr.contains("UnsupportedCertVersion"), "{stderr}");
    };
    let audit = run_audit(&file, &[]).await;
    assert_eq!(audit.status.code(), Some(2));
    check(&texts(&audit).1);
    let serve = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["serve", "--policy", "tests/fixtures/policy.yaml", "--tls-cert", "none.crt", "--tls-key", "none.key"])
        .current_dir(root())
        .env("KUBECONFIG", &file)
        .output()
        .expect("tokengate runs");
    assert_eq!(serve.status.code(), Some(2));
    check(&texts(&serve).1);
}

use support::memory_kib;

/// Holds the optimised build: written while it is built, read by every test that runs a clock,
/// so that no clock runs beside the build (it takes minutes on a small machine).
static BUILDING: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The optimised server, built while no clock runs.
async fn optimised_server() -> std::path::PathBuf {
    let _building = BUILDING.write().await;
    tokio::task::spawn_blocking(support::optimised_server).await.expect("build task")
}

/// What `serve` took with the caches of a large cluster.
struct Served {
    /// From starting the process to `/readyz` answering 200 (printed with the processor time
    /// the process had used by then: the rest of the wait is the fake API server, which runs in
    /// the test's unoptimised build).
    ready: Duration,
    /// Resident memory once the lookups were answered, and its peak, in MiB.
    now_mib: f64,
    peak_mib: f64,
}

/// Starts `serve` (optimised build, two runtime threads) against a fake cluster of `count` pods
/// and as many service accounts, waits until it is ready (at most `ready_within`), has it answer
/// 200 kubelet TokenRequests that need a pod from the caches, and measures (and prints) its
/// memory.
async fn serve_with_a_cluster_of(count: usize, ready_within: Duration) -> Served {
    let server = optimised_server().await;
    let api = FakeApiServer::start().await;
    support::cluster_of(&api, count);
    api.apply(configmap(Some(POLICY)));
    let pki = support::Pki::new("memory-ca");
    let dir = support::TempDir::new("memory");
    let issued = pki.server(&[support::SERVER_NAME]);
    let (cert, key) = (dir.write("tls.crt", &issued.cert_pem), dir.write("tls.key", &issued.key_pem));
    let kubeconfig = dir.write("kubeconfig", api.kubeconfig());
    let port = |_: ()| std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let (webhook_port, admin_port) = (port(()), port(()));
    let started = Instant::now();
    let child = support::KillOnDrop(
        std::process::Command::new(&server)
            .args(["serve", "--policy-configmap", "tokengate-system/tokengate-policy", "--log", "warn"])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args([
                "--listen",
                &format!("127.0.0.1:{webhook_port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin_port}"),
            ])
            .env("KUBECONFIG", &kubeconfig)
            // Two runtime threads, as on a two-CPU node, whatever machine runs the test.
            .env("TOKIO_WORKER_THREADS", std::env::var("TOKIO_WORKER_THREADS").unwrap_or_else(|_| "2".into()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tokengate starts"),
    );
    let readyz = format!("http://127.0.0.1:{admin_port}/readyz");
    let ready = eventually(ready_within, async || {
        reqwest::get(&readyz).await.is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
    })
    .await;
    let (ready_after, ready_cpu) = (started.elapsed(), support::cpu_time(child.0.id()));
    assert!(ready, "ready once the policy loaded and the caches synced, within {ready_within:?}");
    answer_token_requests_from_the_caches(&pki, webhook_port, count).await;
    assert_eq!(api.single_gets(), 0, "no API call on the hot path");
    let mib = |field: &str| memory_kib(child.0.id(), field) as f64 / 1024.0;
    let (now, peak) = (mib("VmRSS"), mib("VmHWM"));
    eprintln!(
        "tokengate serve with {count} pods and {count} service accounts cached: ready after {:.2} s ({:.2} s of processor time), RSS {now:.1} MiB, peak {peak:.1} MiB",
        ready_after.as_secs_f64(),
        ready_cpu.as_secs_f64()
    );
    Served { ready: ready_after, now_mib: now, peak_mib: peak }
}

/// 200 kubelet TokenRequests for pods spread over a cluster of `count`, each denied for its
/// audience (found in the cache, not "does not exist").
async fn answer_token_requests_from_the_caches(pki: &support::Pki, webhook_port: u16, count: usize) {
    let client = support::client_for(&pki.ca_pem(), webhook_port);
    let url = format!("https://{}:{webhook_port}/validate", support::SERVER_NAME);
    for n in 0..200 {
        let i = n * (count / 200) + 7;
        let mut review_body: Value = serde_json::from_slice(&fixture("tokenrequest-node-vault-1.36")).expect("JSON");
        let request = &mut review_body["request"];
        request["namespace"] = json!(format!("ns-{}", i % 100));
        request["name"] = json!(format!("sa-{i}"));
        request["userInfo"]["username"] = json!(format!("system:node:node-{}", i % 50));
        request["object"]["spec"]["boundObjectRef"] = json!({"kind": "Pod", "name": format!("web-{i}-7d9f8b6c5d-x2x4q"),
            "uid": format!("10000000-0000-4000-8000-{i:012}")});
        let response = client
            .post(&url)
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&review_body).expect("JSON"))
            .send()
            .await
            .expect("request");
        let answer: Value = response.json().await.expect("JSON");
        assert_eq!(answer["response"]["allowed"], json!(false), "vault is not allowed in ns-*: {answer}");
        let message = answer["response"]["status"]["message"].as_str().unwrap_or_default();
        let expected = format!("is not allowed for service account ns-{}/sa-{i}", i % 100);
        assert!(message.contains(&expected), "{message}");
        assert!(
            !message.contains("does not exist") && !message.contains("could not look up"),
            "found in the cache: {message}"
        );
    }
}

/// `serve` (optimised build) against a cluster of 10 000 pods and 10 000 service accounts: ready
/// only after the caches sync, lookups answered from them, and the peak resident memory (initial
/// sync included) and the steady state both under 40 MiB (docs/growth.md reports the figures).
#[tokio::test]
async fn serve_with_ten_thousand_pods_and_service_accounts_stays_under_40_mib() {
    let Served { now_mib: now, peak_mib: peak, .. } = serve_with_a_cluster_of(10_000, Duration::from_secs(60)).await;
    assert!(peak < 40.0 && now < 40.0, "RSS {now:.1} MiB, peak {peak:.1} MiB");
}

/// The same with 100 000 pods and 100 000 service accounts: the peak under 100 MiB and ready
/// within seconds of starting (docs/growth.md reports the figures and the cost per object).
#[tokio::test]
async fn serve_with_a_hundred_thousand_pods_and_service_accounts_stays_under_100_mib() {
    let Served { ready, now_mib: now, peak_mib: peak } =
        serve_with_a_cluster_of(100_000, Duration::from_secs(120)).await;
    assert!(peak < 100.0, "RSS {now:.1} MiB, peak {peak:.1} MiB");
    // Measured about 4.3 s on a two-core machine; the ceiling leaves room for a loaded one.
    assert!(ready < Duration::from_secs(10), "ready after {ready:?}");
}

/// `count` running pods (and a service account for each) in 100 `team-*` namespaces, as a
/// Deployment makes them; one in ten carries a token for an audience its namespace may not use.
fn audited_objects(api: &FakeApiServer, count: usize) {
    for i in 0..count {
        let namespace = format!("team-{}", i % 100);
        let audience = if i % 10 == 0 { "gcp.example.svc.id.goog" } else { "vault" };
        for object in support::deployed_pod(i, &namespace, audience, json!({"example.com/owner": namespace})) {
            api.apply(object);
        }
    }
}

/// Runs `audit` (optimised build) against a fake cluster of `pods` pods and as many service
/// accounts, and returns its peak resident memory in KiB (the last `VmHWM` read before it exits)
/// and its exit status.
async fn audit_peak_kib(server: &Path, pods: usize) -> (u64, Option<i32>) {
    let api = FakeApiServer::start().await;
    audited_objects(&api, pods);
    let dir = support::TempDir::new("audit-memory");
    let kubeconfig = dir.write("kubeconfig", api.kubeconfig());
    let mut child = std::process::Command::new(server)
        .args(["audit", "--policy", "tests/fixtures/policy.yaml", "--output", "json"])
        .current_dir(root())
        .env("KUBECONFIG", &kubeconfig)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tokengate runs");
    let pid = child.id();
    let mut peak = 0;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (peak, status.code());
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:"));
            if let Some(kib) = hwm.and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok()) {
                peak = peak.max(kib);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `audit` keeps only reduced ServiceAccounts and findings, judging pods a page at a time: its
/// peak memory grows by well under a kilobyte per pod (with its service account, and a finding
/// for one pod in ten), so 100 000 pods stay under 100 MiB.
#[tokio::test]
async fn audit_memory_grows_by_less_than_a_kilobyte_per_pod() {
    let server = optimised_server().await;
    let (small, large) = (2_000, 12_000);
    let (small_kib, small_status) = audit_peak_kib(&server, small).await;
    let (large_kib, large_status) = audit_peak_kib(&server, large).await;
    assert_eq!((small_status, large_status), (Some(1), Some(1)), "one pod in ten is reported");
    let per_pod = (large_kib.saturating_sub(small_kib) * 1024) as f64 / (large - small) as f64;
    let at_100k_mib = (small_kib as f64 * 1024.0 + per_pod * (100_000 - small) as f64) / (1024.0 * 1024.0);
    eprintln!(
        "tokengate audit peak RSS: {:.1} MiB with {small} pods, {:.1} MiB with {large}: {per_pod:.0} bytes per pod, about {at_100k_mib:.0} MiB at 100 000",
        small_kib as f64 / 1024.0,
        large_kib as f64 / 1024.0
    );
    assert!(per_pod < 1024.0 && at_100k_mib < 100.0, "{per_pod:.0} bytes per pod, {at_100k_mib:.0} MiB at 100 000");
}

/// `audit` of 100 000 pods (and as many service accounts) measured, not extrapolated: its peak
/// resident memory stays under 100 MiB (docs/growth.md reports the figure).
#[tokio::test]
async fn audit_of_a_hundred_thousand_pods_stays_under_100_mib() {
    let server = optimised_server().await;
    let pods = 100_000;
    let (kib, status) = audit_peak_kib(&server, pods).await;
    assert_eq!(status, Some(1), "one pod in ten is reported");
    let mib = kib as f64 / 1024.0;
    eprintln!("tokengate audit peak RSS with {pods} pods: {mib:.1} MiB");
    assert!(mib < 100.0, "{mib:.1} MiB");
}
