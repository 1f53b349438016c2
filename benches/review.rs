//! Benchmarks of admission reviews: whole reviews (decode, decide, encode) of a realistic Pod
//! CREATE and of a kubelet's TokenRequest, and the decision alone (on a review decoded once,
//! which decodes its Pod too) as the audience allow-list (allowed and denied) and the pod's
//! token volumes grow.
//!
//! `cargo bench --bench review` runs everything; add `-- --quick` for a rough pass, or a
//! filter such as `-- allow_list_size`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use serde_json::{json, Value};
use tokengate::cluster::ObjectStore;
use tokengate::policy::Policy;
use tokengate::review::admission::AdmissionReviewIn;
use tokengate::review::{decide, review, Decision, Reply, Webhook};

/// A 3.2 KB Pod CREATE review: a Deployment's pod in team-a running as `web`, with the
/// automount volume and a `vault` token (7200 s).
const POD_CREATE: &[u8] = include_bytes!("../tests/fixtures/pod-create-review.json");
/// The example policy of the README; the golden-test policy stands in if it stops parsing.
const EXAMPLE_POLICY: &str = include_str!("../examples/policy.yaml");
const FIXTURE_POLICY: &str = include_str!("../tests/fixtures/policy.yaml");

/// Runs a future that is ready at once (the in-memory cluster never waits).
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a review against the in-memory cluster is never pending"),
    }
}

fn policy() -> Policy {
    Policy::parse(EXAMPLE_POLICY)
        .or_else(|err| {
            eprintln!("examples/policy.yaml does not parse ({err}); using tests/fixtures/policy.yaml");
            Policy::parse(FIXTURE_POLICY)
        })
        .expect("tests/fixtures/policy.yaml is valid")
}

fn cluster(objects: &[Value]) -> ObjectStore {
    let mut store = ObjectStore::default();
    for object in objects {
        assert!(store.insert(object).expect("a well-formed object"), "the object is one decisions read");
    }
    store
}

fn service_account_web() -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": "team-a"}})
}

/// The response of a whole review, decoded.
fn respond(body: &[u8], webhook: Webhook, policy: &Policy, cluster: &ObjectStore) -> Value {
    match now(review(body, webhook, policy, cluster)) {
        Reply::Review { body, .. } => serde_json::from_slice(&body).expect("the response is JSON"),
        Reply::BadRequest(message) => panic!("answered 400: {message}"),
    }
}

/// The decision alone, on a review decoded once.
fn decision(body: &[u8], webhook: Webhook, policy: &Policy, cluster: &ObjectStore) -> Decision {
    let envelope = AdmissionReviewIn::from_slice(body).expect("an AdmissionReview");
    let request = envelope.request.expect("a request");
    now(decide(&request, webhook, policy, cluster)).decision
}

fn full_review(c: &mut Criterion) {
    let policy = policy();
    let cluster = cluster(&[service_account_web()]);
    for webhook in [Webhook::Validate, Webhook::Mutate] {
        let response = respond(POD_CREATE, webhook, &policy, &cluster);
        assert_eq!(response["response"]["allowed"], true, "the fixture pod is allowed: {response}");
    }
    let mut group = c.benchmark_group("full_review");
    group.throughput(Throughput::Bytes(POD_CREATE.len() as u64));
    group.bench_function("pod_create", |b| {
        b.iter(|| now(review(black_box(POD_CREATE), Webhook::Validate, &policy, &cluster)))
    });
    group.bench_function("pod_mutate", |b| {
        b.iter(|| now(review(black_box(POD_CREATE), Webhook::Mutate, &policy, &cluster)))
    });
    group.finish();
}

/// A policy whose allow-list has `entries` entries: one for `vault` (in `team-*` when
/// `allow_vault`, else only in `ops`, up to 7200 s) and distinct audiences with namespace and
/// service-account globs, all of which match the fixture pod's team-a/web.
fn policy_with_allow_list(entries: usize, allow_vault: bool) -> Policy {
    let vault_namespace = if allow_vault { "team-*" } else { "ops" };
    let mut audiences =
        vec![json!({"audience": "vault", "namespaces": [vault_namespace], "maxExpirationSeconds": 7200})];
    audiences.extend((1..entries).map(|i| {
        json!({
            "audience": format!("aud-{i}.example.com"),
            "namespaces": [format!("ns-{}-*", i % 100), "team-*", format!("prod-{i}")],
            "serviceAccounts": [format!("sa-{i}"), "web", "*-reader"],
            "maxExpirationSeconds": 3600 + i as u64 % 7200,
        })
    }));
    let document = json!({
        "apiVersion": "tokengate.dev/v1alpha1",
        "kind": "TokenPolicy",
        "spec": {"apiServerAudiences": ["https://kubernetes.default.svc.cluster.local"], "audiences": audiences},
    });
    Policy::parse(&document.to_string()).expect("the generated policy is valid")
}

const ALLOW_LIST_SIZES: [usize; 3] = [1, 100, 10_000];

/// The fixture pod's decision (Validate) as the allow-list grows. Every policy of the group is
/// built before any is measured, so all sizes run against the same heap: merely holding a
/// 10 000-entry policy in memory slows the allocator down for everything else.
fn allow_list_size(c: &mut Criterion) {
    let cluster = cluster(&[service_account_web()]);
    let envelope = AdmissionReviewIn::from_slice(POD_CREATE).expect("an AdmissionReview");
    let request = envelope.request.expect("a request");
    let policies: Vec<(usize, Policy)> =
        ALLOW_LIST_SIZES.into_iter().map(|entries| (entries, policy_with_allow_list(entries, true))).collect();
    let mut group = c.benchmark_group("allow_list_size");
    for (entries, policy) in &policies {
        assert_eq!(decision(POD_CREATE, Webhook::Validate, policy, &cluster), Decision::Allowed);
        group.bench_with_input(BenchmarkId::from_parameter(entries), policy, |b, policy| {
            b.iter(|| now(decide(black_box(&request), Webhook::Validate, policy, &cluster)))
        });
    }
    group.finish();
}

/// The same pod denied (its `vault` audience is not allowed in team-a): the denial message
/// names a few audiences that would be allowed there; the walk is bounded, so this stays flat.
fn allow_list_size_denied(c: &mut Criterion) {
    let cluster = cluster(&[service_account_web()]);
    let envelope = AdmissionReviewIn::from_slice(POD_CREATE).expect("an AdmissionReview");
    let request = envelope.request.expect("a request");
    let policies: Vec<(usize, Policy)> =
        ALLOW_LIST_SIZES.into_iter().map(|entries| (entries, policy_with_allow_list(entries, false))).collect();
    let mut group = c.benchmark_group("allow_list_size_denied");
    // A denial against 10 000 entries takes milliseconds: few, equal samples keep this short.
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    for (entries, policy) in &policies {
        assert_eq!(decision(POD_CREATE, Webhook::Validate, policy, &cluster), Decision::Denied);
        group.bench_with_input(BenchmarkId::from_parameter(entries), policy, |b, policy| {
            b.iter(|| now(decide(black_box(&request), Webhook::Validate, policy, &cluster)))
        });
    }
    group.finish();
}

/// The fixture review with `count` projected token volumes (allowed audiences, 3600 s) besides
/// the automount volume, each mounted into the first container.
fn pod_with_token_volumes(count: usize) -> Vec<u8> {
    const AUDIENCES: [&str; 3] = ["vault", "sts.amazonaws.com", "api://AzureADTokenExchange"];
    let mut review: Value = serde_json::from_slice(POD_CREATE).expect("the fixture is JSON");
    let spec = &mut review["request"]["object"]["spec"];
    let automount = spec["volumes"][1].clone();
    let mut volumes: Vec<Value> = (0..count)
        .map(|i| {
            json!({"name": format!("token-{i}"), "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {
                "audience": AUDIENCES[i % AUDIENCES.len()],
                "expirationSeconds": 3600,
                "path": "token",
            }}]}})
        })
        .collect();
    volumes.push(automount);
    let mut mounts: Vec<Value> = (0..count)
        .map(|i| json!({"name": format!("token-{i}"), "mountPath": format!("/var/run/secrets/tokens/{i}"), "readOnly": true}))
        .collect();
    mounts.push(spec["containers"][0]["volumeMounts"][1].clone());
    spec["volumes"] = json!(volumes);
    spec["containers"][0]["volumeMounts"] = json!(mounts);
    serde_json::to_vec(&review).expect("a JSON value serialises")
}

fn pod_volumes(c: &mut Criterion) {
    let policy = policy();
    let cluster = cluster(&[service_account_web()]);
    let mut group = c.benchmark_group("pod_volumes");
    for count in [1, 10, 50] {
        let body = pod_with_token_volumes(count);
        assert_eq!(decision(&body, Webhook::Validate, &policy, &cluster), Decision::Allowed);
        let envelope = AdmissionReviewIn::from_slice(&body).expect("an AdmissionReview");
        let request = envelope.request.expect("a request");
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(BenchmarkId::from_parameter(count), &request, |b, request| {
            b.iter(|| now(decide(black_box(request), Webhook::Validate, &policy, &cluster)))
        });
    }
    group.finish();
}

/// A kubelet on node-1 asking for a `vault` token bound to pod team-a/web-abc, as a 1.36 API
/// server passes it to a validating webhook.
fn node_token_request() -> Vec<u8> {
    let review = json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "1979e776-5ffe-4d27-9c58-3647454d419f",
            "kind": {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"},
            "resource": {"group": "", "version": "v1", "resource": "serviceaccounts"},
            "subResource": "token",
            "requestKind": {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"},
            "requestResource": {"group": "", "version": "v1", "resource": "serviceaccounts"},
            "requestSubResource": "token",
            "name": "web",
            "namespace": "team-a",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:node:node-1",
                "groups": ["system:nodes", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/credential-id": ["X509SHA256=261823a0adb00e5ba5c33487d6fd812dea7a444aeb869ec241da30de80d295ea"]},
            },
            "object": {
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": "web", "namespace": "team-a", "creationTimestamp": "2026-11-22T06:02:34Z"},
                "spec": {
                    "audiences": ["vault"],
                    "expirationSeconds": 3600,
                    "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web-abc", "uid": "39d08f92-6eab-4aa1-8a33-345cb41b40ac"},
                },
                "status": {"token": "", "expirationTimestamp": null},
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    });
    serde_json::to_vec(&review).expect("a JSON value serialises")
}

/// The pod the TokenRequest is bound to: on node-1, as `web`, with a `vault` token volume.
fn bound_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-abc", "namespace": "team-a", "uid": "39d08f92-6eab-4aa1-8a33-345cb41b40ac"},
        "spec": {
            "nodeName": "node-1",
            "serviceAccountName": "web",
            "containers": [{"name": "app", "image": "registry.example.com/web:1"}],
            "volumes": [
                {"name": "vault-token", "projected": {"sources": [{"serviceAccountToken": {"audience": "vault", "expirationSeconds": 7200, "path": "vault-token"}}]}},
                {"name": "kube-api-access-jg92r", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}},
            ],
        },
    })
}

fn token_request(c: &mut Criterion) {
    let policy = policy();
    let cluster = cluster(&[service_account_web(), bound_pod()]);
    let body = node_token_request();
    let response = respond(&body, Webhook::Validate, &policy, &cluster);
    assert_eq!(response["response"]["allowed"], true, "the kubelet's request is allowed: {response}");
    let mut group = c.benchmark_group("token_request");
    group.bench_function("node_vault", |b| {
        b.iter(|| now(review(black_box(&body), Webhook::Validate, &policy, &cluster)))
    });
    group.finish();
}

fn config() -> Criterion {
    // About 4 s per benchmark, so the whole file runs in well under 3 minutes on 2 cores.
    Criterion::default().sample_size(50).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = full_review, allow_list_size, allow_list_size_denied, pod_volumes, token_request
}
criterion_main!(benches);
