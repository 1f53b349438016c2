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
