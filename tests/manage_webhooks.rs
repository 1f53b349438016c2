//! `serve --manage-webhooks` against the fake API server: the configurations are applied once
//! the replica is ready, once more per policy change, a refused write is retried and counted,
//! and an Event records each apply.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::fake_apiserver::FakeApiServer;
use tokengate::metrics::Metrics;
use tokengate::source::{Offer, PolicyPublisher};
use tokengate::webhooks::manage::{self, ManageOptions};
use tokengate::webhooks::{names, Endpoint, Options};

const POLICY: &str =
    "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec:\n  audiences: [{audience: sts.amazonaws.com}]\n";

/// The policy with an injection for namespace `team-a`: the mutating webhook's condition changes.
const POLICY_WITH_INJECTION: &str = "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec:\n  audiences: [{audience: sts.amazonaws.com}]\n  injections:\n    - name: aws\n      match: {namespaces: [team-a]}\n      volume: {name: aws-iam-token, audience: sts.amazonaws.com, expirationSeconds: 3600}\n      mount: {mountPath: /var/run/aws}\n";

fn options() -> ManageOptions {
    let mut options = ManageOptions::new(Options {
        annotations: [("cert-manager.io/inject-ca-from".to_string(), "tokengate-system/tokengate-serving".to_string())]
            .into(),
        ..Options::new(Endpoint::Service("tokengate-system/tokengate".parse().expect("service")))
    });
    options.initial_backoff = Duration::from_millis(50);
    options.max_backoff = Duration::from_millis(200);
    options.readiness_poll = Duration::from_millis(20);
    options.event_target = Some(k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ConfigMap".into()),
        namespace: Some("tokengate-system".into()),
        name: Some("tokengate-policy".into()),
        ..Default::default()
    });
    options
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn applies_once_ready_once_per_policy_change_and_retries_refused_writes() {
    let server = FakeApiServer::start().await;
    let metrics = Arc::new(Metrics::new());
    let (mut publisher, policy) = PolicyPublisher::new(metrics.clone());
    let ready = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(manage::run(
        server.client(),
        policy,
        {
            let ready = ready.clone();
            move || ready.load(Ordering::SeqCst)
        },
        options(),
        metrics.clone(),
    ));

    // Not ready (no policy, then caches not synced): nothing is written.
    assert!(matches!(publisher.offer("test", POLICY), Offer::Loaded { generation: 1 }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.patches(), 0, "no write before the replica is ready");

    ready.store(true, Ordering::SeqCst);
    eventually("the first apply", || server.patches() == 2).await;
    eventually("the metric", || metrics.encode().contains("tokengate_webhook_configurations_policy_generation 1"))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.patches(), 2, "one apply of each configuration, then nothing while the policy stays");

    // A policy change: the first write is refused, retried with backoff, then both are applied.
    server.refuse_patches(1);
    assert!(matches!(publisher.offer("test", POLICY_WITH_INJECTION), Offer::Loaded { generation: 2 }));
    eventually("the retried apply", || {
        metrics.encode().contains("tokengate_webhook_configurations_policy_generation 2")
    })
    .await;
    let text = metrics.encode();
    assert!(text.contains(r#"tokengate_webhook_configuration_applies_total{result="error"} 1"#), "{text}");
    assert!(text.contains(r#"tokengate_webhook_configuration_applies_total{result="success"} 2"#), "{text}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.patches(), 2 + 1 + 2, "the refused write, then one apply of each");

    // The same text again is no change: no write.
    assert_eq!(publisher.offer("test", POLICY_WITH_INJECTION), Offer::Unchanged);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.patches(), 5);

    let client = server.client();
    let api: kube::Api<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration> =
        kube::Api::all(client.clone());
    let validating = api.get("tokengate").await.expect("validating configuration");
    let webhooks = validating.webhooks.expect("webhooks");
    // No caBundle is written without --webhook-ca-bundle (the fake treats apply as a merge
    // patch, so keeping someone else's caBundle is upstream's field ownership, not tested here).
    assert!(webhooks.iter().all(|w| w.client_config.ca_bundle.is_none()));
    assert!(webhooks.iter().any(|w| w.name == names::SECRETS));
    let annotations = validating.metadata.annotations.expect("annotations");
    assert_eq!(annotations["cert-manager.io/inject-ca-from"], "tokengate-system/tokengate-serving");
    let mutating: kube::Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        kube::Api::all(client);
    let mutating = mutating.get("tokengate").await.expect("mutating configuration");
    let condition = mutating.webhooks.expect("webhooks")[0]
        .match_conditions
        .clone()
        .expect("conditions")
        .into_iter()
        .find(|c| c.name == "skip-pods-no-injection-matches")
        .expect("condition");
    assert!(condition.expression.contains("team-a"), "follows the new policy: {}", condition.expression);

    let events = server.events();
    let applied: Vec<&Value> = events.iter().filter(|e| e["reason"] == "WebhooksApplied").collect();
    assert_eq!(applied.len(), 2, "one Event per apply: {events:?}");
    assert!(applied[1]["note"].as_str().is_some_and(|n| n.contains("policy generation 2")), "{:?}", applied[1]);
    assert_eq!(applied[0]["regarding"]["name"], "tokengate-policy");

    drop(publisher);
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("ends when the policy source ends").expect("task");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The binary: `serve --manage-webhooks` becomes ready although every write is refused, counts
/// the failures, and applies once the API server accepts writes again.
#[tokio::test]
async fn refused_writes_never_make_the_server_unready() {
    let server = FakeApiServer::start().await;
    server.refuse_patches(usize::MAX);
    let pki = support::Pki::new("manage-ca");
    let dir = support::TempDir::new("manage");
    let issued = pki.server(&[support::SERVER_NAME]);
    let cert = dir.write("tls.crt", &issued.cert_pem);
    let key = dir.write("tls.key", &issued.key_pem);
    let policy = dir.write("policy.yaml", POLICY);
    let kubeconfig = dir.write("kubeconfig", server.kubeconfig());
    let (port, admin_port) = (free_port(), free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .arg("serve")
        .arg("--policy")
        .arg(&policy)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .arg("--objects")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/objects.yaml"))
        .args(["--manage-webhooks", "--webhook-url", &format!("https://127.0.0.1:{port}")])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "tokengate-test")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tokengate starts");
    let admin = |path: &str| format!("http://127.0.0.1:{admin_port}{path}");
    let get = async |path: &str| -> Option<(u16, String)> {
        let response = reqwest::get(admin(path)).await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    };
    let failing = support::eventually(Duration::from_secs(10), async || {
        get("/metrics").await.is_some_and(|(_, text)| {
            text.lines().any(|l| {
                l.starts_with(r#"tokengate_webhook_configuration_applies_total{result="error"}"#) && !l.ends_with(" 0")
            })
        })
    })
    .await;
    assert!(failing, "refused applies are counted");
    assert_eq!(get("/readyz").await.map(|(status, _)| status), Some(200), "ready while every apply fails");

    server.refuse_patches(0);
    let applied = support::eventually(Duration::from_secs(10), async || {
        get("/metrics")
            .await
            .is_some_and(|(_, text)| text.contains("tokengate_webhook_configurations_policy_generation 1"))
    })
    .await;
    assert!(applied, "applied once writes are accepted again (retried with backoff)");
    let api: kube::Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        kube::Api::all(server.client());
    let mutating = api.get("tokengate").await.expect("applied");
    let url = mutating.webhooks.expect("webhooks")[0].client_config.url.clone();
    assert_eq!(url, Some(format!("https://127.0.0.1:{port}/mutate")));
    let events = server.events();
    assert!(
        events.iter().any(|e| e["reason"] == "WebhooksApplied" && e["regarding"]["name"] == "tokengate-test"),
        "an Event on the replica's Pod: {events:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
