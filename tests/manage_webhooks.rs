//! `serve --manage-webhooks` against the fake API server, whose server-side apply keeps field
//! ownership as upstream does: the configurations are applied once the replica is ready, once
//! more per policy change and once per resync period; a refused write is retried and counted; an
//! Event records each apply; edits by hand (changed, added or deleted) are undone at the next
//! apply, while a `caBundle` another manager set is kept unless a bundle is configured. With
//! `--native-policies` the native policies go in before the webhooks are narrowed and out only
//! after the full webhooks are back (the order of writes is asserted), only where the API server
//! serves them, and a refused native policy leaves the full webhooks.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::fake_apiserver::FakeApiServer;
use tokengate::metrics::Metrics;
use tokengate::source::{Offer, PolicyPublisher};
use tokengate::webhooks::conditions::names as condition;
use tokengate::webhooks::manage::native::{CONFIGURATION_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL};
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

/// Waits for `condition`, up to a ceiling generous for a machine busy with builds.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
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
    // No caBundle is written without --webhook-ca-bundle.
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
    // The namespace may appear as a regular expression (`team\-a`).
    let unescaped = condition.expression.replace('\\', "");
    assert!(unescaped.contains("team-a"), "follows the new policy: {}", condition.expression);

    let events = server.events();
    let applied: Vec<&Value> = events.iter().filter(|e| e["reason"] == "WebhooksApplied").collect();
    assert_eq!(applied.len(), 2, "one Event per apply: {events:?}");
    assert!(applied[1]["note"].as_str().is_some_and(|n| n.contains("policy generation 2")), "{:?}", applied[1]);
    assert_eq!(applied[0]["regarding"]["name"], "tokengate-policy");

    drop(publisher);
    tokio::time::timeout(Duration::from_secs(30), task).await.expect("ends when the policy source ends").expect("task");
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
    let failing = support::eventually(Duration::from_secs(30), async || {
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
    let applied = support::eventually(Duration::from_secs(30), async || {
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

/// Starts the manager, ready at once, applying the first policy again every `resync`.
fn start_manager(
    server: &FakeApiServer,
    resync: Duration,
    ca_bundle: Option<&str>,
) -> (PolicyPublisher, Arc<Metrics>, tokio::task::JoinHandle<()>) {
    let metrics = Arc::new(Metrics::new());
    let (mut publisher, policy) = PolicyPublisher::new(metrics.clone());
    assert!(matches!(publisher.offer("test", POLICY), Offer::Loaded { generation: 1 }));
    let mut options = options();
    options.resync = resync;
    options.webhooks.ca_bundle = ca_bundle.map(str::to_string);
    let task = tokio::spawn(manage::run(server.client(), policy, || true, options, metrics.clone()));
    (publisher, metrics, task)
}

fn validating_api(server: &FakeApiServer) -> kube::Api<kube::api::DynamicObject> {
    let gvk = kube::api::GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration");
    kube::Api::all_with(server.client(), &kube::api::ApiResource::from_gvk(&gvk))
}

fn mutating_api(server: &FakeApiServer) -> kube::Api<kube::api::DynamicObject> {
    let gvk = kube::api::GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration");
    kube::Api::all_with(server.client(), &kube::api::ApiResource::from_gvk(&gvk))
}

fn stored(server: &FakeApiServer, kind: &str) -> Value {
    server.object("admissionregistration.k8s.io/v1", kind, None, "tokengate").unwrap_or(Value::Null)
}

fn stored_webhook(server: &FakeApiServer, kind: &str, name: &str) -> Value {
    let object = stored(server, kind);
    object["webhooks"].as_array().into_iter().flatten().find(|w| w["name"] == name).cloned().unwrap_or(Value::Null)
}

/// The managers owning something in the stored object.
fn managers(object: &Value) -> Vec<String> {
    let entries = object["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
    entries
        .iter()
        .map(|e| format!("{}/{}", e["manager"].as_str().unwrap_or(""), e["operation"].as_str().unwrap_or("")))
        .collect()
}

/// A hand edit: a JSON patch sent as `kubectl edit` does (an Update by manager `kubectl-edit`).
async fn edit_by_hand(api: &kube::Api<kube::api::DynamicObject>, operations: Value) {
    let patch: json_patch::Patch = serde_json::from_value(operations).expect("a JSON patch");
    let params = kube::api::PatchParams { field_manager: Some("kubectl-edit".into()), ..Default::default() };
    api.patch("tokengate", &params, &kube::api::Patch::<()>::Json(patch)).await.expect("edited by hand");
}

/// Index of a webhook in the stored configuration.
fn index_of(server: &FakeApiServer, kind: &str, name: &str) -> usize {
    let object = stored(server, kind);
    object["webhooks"].as_array().expect("webhooks").iter().position(|w| w["name"] == name).expect("webhook")
}

#[tokio::test]
async fn a_hand_edit_of_an_applied_field_or_a_deletion_is_undone_at_the_next_resync() {
    let server = FakeApiServer::start().await;
    let (_publisher, _metrics, _task) = start_manager(&server, Duration::from_millis(200), None);
    eventually("the first apply", || server.patches() >= 2).await;
    let validating = "ValidatingWebhookConfiguration";
    assert_eq!(stored_webhook(&server, validating, names::PODS_VALIDATE)["timeoutSeconds"], 3);
    assert!(managers(&stored(&server, validating)).contains(&"tokengate-webhooks/Apply".to_string()));

    let i = index_of(&server, validating, names::PODS_VALIDATE);
    edit_by_hand(
        &validating_api(&server),
        json!([{"op": "replace", "path": format!("/webhooks/{i}/timeoutSeconds"), "value": 30},
               {"op": "replace", "path": format!("/webhooks/{i}/failurePolicy"), "value": "Ignore"}]),
    )
    .await;
    assert!(
        managers(&stored(&server, validating)).contains(&"kubectl-edit/Update".to_string()),
        "the edit owns what it changed"
    );
    let edited_at = server.patches();
    eventually("the edit undone", || {
        let webhook = stored_webhook(&server, validating, names::PODS_VALIDATE);
        webhook["timeoutSeconds"] == 3 && webhook["failurePolicy"] == "Fail"
    })
    .await;
    assert!(server.patches() > edited_at, "undone by a later apply");
    assert!(
        !managers(&stored(&server, validating)).contains(&"kubectl-edit/Update".to_string()),
        "tokengate took its fields back (force): {:?}",
        managers(&stored(&server, validating))
    );

    // Deleted by hand: created again.
    server.delete("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", None, "tokengate");
    assert_eq!(stored(&server, "MutatingWebhookConfiguration"), Value::Null);
    eventually("the deleted configuration recreated", || {
        stored(&server, "MutatingWebhookConfiguration") != Value::Null
    })
    .await;
}

/// A field added by hand to a webhook tokengate manages (an `objectSelector` that exempts
/// labelled pods, a match condition that exempts everything) would switch enforcement off: the
/// next apply removes it, as the configurations are kept equal to what the policy computes.
#[tokio::test]
async fn fields_added_by_hand_to_a_managed_webhook_are_removed_at_the_next_resync() {
    let server = FakeApiServer::start().await;
    let (_publisher, _metrics, _task) = start_manager(&server, Duration::from_millis(200), None);
    eventually("the first apply", || server.patches() >= 2).await;
    let validating = "ValidatingWebhookConfiguration";
    let before = stored_webhook(&server, validating, names::PODS_VALIDATE);
    let i = index_of(&server, validating, names::PODS_VALIDATE);
    edit_by_hand(
        &validating_api(&server),
        json!([
            {"op": "add", "path": format!("/webhooks/{i}/objectSelector"), "value": {"matchExpressions": [{"key": "escape", "operator": "DoesNotExist"}]}},
            {"op": "add", "path": format!("/webhooks/{i}/matchConditions/-"), "value": {"name": "escape", "expression": "false"}},
        ]),
    )
    .await;
    let edited = stored_webhook(&server, validating, names::PODS_VALIDATE);
    assert!(edited.get("objectSelector").is_some());
    eventually("the added fields removed", || {
        let webhook = stored_webhook(&server, validating, names::PODS_VALIDATE);
        webhook.get("objectSelector").is_none()
            && webhook["matchConditions"].as_array().is_some_and(|c| c.iter().all(|c| c["name"] != "escape"))
    })
    .await;
    assert_eq!(stored_webhook(&server, validating, names::PODS_VALIDATE), before, "exactly as applied before the edit");
}

/// cert-manager's cainjector writes `caBundle` under its own manager (an Update, or an apply with
/// the `ServerSideApply` feature): tokengate, configured without a bundle, never touches it.
#[tokio::test]
async fn a_ca_bundle_set_by_another_manager_is_kept_through_resyncs() {
    let server = FakeApiServer::start().await;
    let (_publisher, metrics, _task) = start_manager(&server, Duration::from_millis(200), None);
    eventually("the first apply", || server.patches() >= 2).await;

    // An Update (PUT) of every validating webhook's caBundle.
    let api = validating_api(&server);
    let mut current = api.get("tokengate").await.expect("applied");
    for webhook in current.data["webhooks"].as_array_mut().expect("webhooks") {
        webhook["clientConfig"]["caBundle"] = json!("Q0EgYnkgY2FpbmplY3Rvcg==");
    }
    let params = kube::api::PostParams { field_manager: Some("cainjector".into()), ..Default::default() };
    api.replace("tokengate", &params, &current).await.expect("caBundle updated");
    // An apply of the mutating webhook's caBundle under the injector's own manager.
    let bundle = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                        "metadata": {"name": "tokengate"},
                        "webhooks": [{"name": names::PODS_MUTATE, "clientConfig": {"caBundle": "Q0EgYnkgY2FpbmplY3Rvcg=="}}]});
    let params = kube::api::PatchParams::apply("cert-manager-cainjector");
    mutating_api(&server).patch("tokengate", &params, &kube::api::Patch::Apply(&bundle)).await.expect("no conflict");

    // Two more resyncs (four applies) later, every bundle is still there.
    let applies = |m: &Metrics| {
        let text = m.encode();
        text.lines()
            .find(|l| l.starts_with(r#"tokengate_webhook_configuration_applies_total{result="success"}"#))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let seen = applies(&metrics);
    eventually("two more resyncs", || applies(&metrics) >= seen + 2).await;
    let validating = stored(&server, "ValidatingWebhookConfiguration");
    for webhook in validating["webhooks"].as_array().expect("webhooks") {
        assert_eq!(webhook["clientConfig"]["caBundle"], "Q0EgYnkgY2FpbmplY3Rvcg==", "{webhook}");
    }
    assert_eq!(
        stored_webhook(&server, "MutatingWebhookConfiguration", names::PODS_MUTATE)["clientConfig"]["caBundle"],
        "Q0EgYnkgY2FpbmplY3Rvcg=="
    );
    assert!(managers(&validating).contains(&"cainjector/Update".to_string()), "{:?}", managers(&validating));
    let mutating = stored(&server, "MutatingWebhookConfiguration");
    assert!(managers(&mutating).contains(&"cert-manager-cainjector/Apply".to_string()), "{:?}", managers(&mutating));
}

/// With `--webhook-ca-bundle` tokengate owns `caBundle`: its apply (forced) replaces the
/// injector's.
#[tokio::test]
async fn a_configured_ca_bundle_takes_over_from_another_manager() {
    let server = FakeApiServer::start().await;
    let bundle = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                        "metadata": {"name": "tokengate"},
                        "webhooks": [{"name": names::PODS_MUTATE, "clientConfig": {"caBundle": "b2xk"}}]});
    let params = kube::api::PatchParams::apply("cert-manager-cainjector");
    mutating_api(&server).patch("tokengate", &params, &kube::api::Patch::Apply(&bundle)).await.expect("created");
    let (_publisher, _metrics, _task) = start_manager(&server, Duration::from_secs(600), Some("bmV3"));
    eventually("the configured bundle", || {
        stored_webhook(&server, "MutatingWebhookConfiguration", names::PODS_MUTATE)["clientConfig"]["caBundle"]
            == "bmV3"
    })
    .await;
}

/// The periodic re-apply happens once per resync period, not more often: three periods take at
/// least three times the period however slow the machine is (the figure is printed).
#[tokio::test]
async fn the_configurations_are_applied_again_every_resync_period() {
    let server = FakeApiServer::start().await;
    let resync = Duration::from_millis(300);
    // Measured from before the start: the first apply and three resyncs cannot take less than
    // three periods, however the machine schedules this test.
    let started = tokio::time::Instant::now();
    let (_publisher, metrics, _task) = start_manager(&server, resync, None);
    eventually("three resyncs", || server.patches() >= 2 + 3 * 2).await;
    let elapsed = started.elapsed();
    println!("the first apply and three resyncs of {resync:?} took {elapsed:?}");
    assert!(elapsed >= resync * 3, "not more often than the period: {elapsed:?}");
    assert!(
        metrics.encode().contains("tokengate_webhook_configurations_policy_generation 1"),
        "the same policy each time"
    );
}

/// Policy changes that leave the configurations as they are (a new expiration bound) do not put
/// the periodic re-apply off: with such a change every third of a period, the configurations
/// are still applied again once per period.
#[tokio::test]
async fn policy_changes_that_leave_the_configurations_alone_do_not_put_the_resync_off() {
    let server = FakeApiServer::start().await;
    let resync = Duration::from_millis(600);
    let (mut publisher, _metrics, _task) = start_manager(&server, resync, None);
    eventually("the first apply", || server.patches() >= 2).await;
    let started = tokio::time::Instant::now();
    let mut generation = 1;
    while server.patches() < 2 + 2 * 2 {
        assert!(started.elapsed() < Duration::from_secs(30), "no resync in 30 s while the policy kept changing");
        generation += 1;
        let text = format!("{POLICY}  expiration: {{maxSeconds: {}}}\n", 3600 + generation);
        assert!(matches!(publisher.offer("test", &text), Offer::Loaded { .. }), "{text}");
        tokio::time::sleep(resync / 3).await;
    }
    println!("two resyncs of {resync:?} took {:?} with {} policy changes", started.elapsed(), generation - 1);
}

/// Starts the manager with `--native-policies` (or without), ready at once, on `text`.
fn start_native_manager(
    server: &FakeApiServer,
    text: &str,
    native_policies: bool,
    resync: Duration,
) -> (PolicyPublisher, Arc<Metrics>, tokio::task::JoinHandle<()>) {
    let metrics = Arc::new(Metrics::new());
    let (mut publisher, policy) = PolicyPublisher::new(metrics.clone());
    assert!(matches!(publisher.offer("test", text), Offer::Loaded { generation: 1 }));
    let mut options = options();
    options.resync = resync;
    options.native_policies = native_policies;
    let task = tokio::spawn(manage::run(server.client(), policy, || true, options, metrics.clone()));
    (publisher, metrics, task)
}

/// The native objects of every admission-policy kind in the server, as `Kind/name`, sorted.
fn native_objects(server: &FakeApiServer) -> Vec<String> {
    let kinds = ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"];
    let subjects = ["tokenrequests", "pods", "csidrivers", "legacy-token-secrets", "other"];
    let mut found = Vec::new();
    for kind in kinds {
        for subject in subjects {
            let name = format!("tokengate-{subject}");
            if server.object("admissionregistration.k8s.io/v1", kind, None, &name).is_some() {
                found.push(format!("{kind}/{name}"));
            }
        }
    }
    found.sort();
    found
}

/// The native objects the shipped-style [`POLICY`] gets: a policy and a binding per subject.
fn every_native_object() -> Vec<String> {
    let mut all: Vec<String> = ["tokenrequests", "pods", "csidrivers", "legacy-token-secrets"]
        .iter()
        .flat_map(|s| {
            [
                format!("ValidatingAdmissionPolicy/tokengate-{s}"),
                format!("ValidatingAdmissionPolicyBinding/tokengate-{s}"),
            ]
        })
        .collect();
    all.sort();
    all
}

/// The names of the validating webhooks in the server.
fn validating_webhooks(server: &FakeApiServer) -> Vec<String> {
    let object = stored(server, "ValidatingWebhookConfiguration");
    let webhooks = object["webhooks"].as_array().cloned().unwrap_or_default();
    webhooks.iter().filter_map(|w| w["name"].as_str().map(str::to_string)).collect()
}

fn has_condition(webhook: &Value, name: &str) -> bool {
    webhook["matchConditions"].as_array().is_some_and(|c| c.iter().any(|c| c["name"] == name))
}

/// Narrowed beside the native policies: no CSIDriver or Secret webhook, pods and TokenRequests
/// only for what the native side leaves.
fn is_narrowed(server: &FakeApiServer) -> bool {
    let webhooks = validating_webhooks(server);
    let validating = "ValidatingWebhookConfiguration";
    !webhooks.is_empty()
        && !webhooks.iter().any(|w| w == names::CSI_DRIVERS || w == names::SECRETS)
        && has_condition(&stored_webhook(server, validating, names::PODS_VALIDATE), condition::NATIVE_PODS)
        && has_condition(&stored_webhook(server, validating, names::TOKEN_REQUESTS), condition::NATIVE_TOKEN_REQUESTS)
}

/// The full configurations: every validating webhook, none narrowed.
fn is_full(server: &FakeApiServer) -> bool {
    let webhooks = validating_webhooks(server);
    let validating = "ValidatingWebhookConfiguration";
    [names::PODS_VALIDATE, names::TOKEN_REQUESTS, names::CSI_DRIVERS, names::SECRETS]
        .iter()
        .all(|name| webhooks.iter().any(|w| w == name))
        && !has_condition(&stored_webhook(server, validating, names::PODS_VALIDATE), condition::NATIVE_PODS)
        && !has_condition(&stored_webhook(server, validating, names::TOKEN_REQUESTS), condition::NATIVE_TOKEN_REQUESTS)
}

/// Where `entry` first appears in `writes`, failing when it does not.
fn position(writes: &[String], entry: &str) -> usize {
    writes.iter().position(|w| w == entry).unwrap_or_else(|| panic!("{entry} in {writes:#?}"))
}

/// A policy whose pod and TokenRequest rules are over the CEL limits (1 000 allow-list entries,
/// each with its own maximum): those stay in the webhooks; CSIDrivers and Secrets stay native.
fn policy_over_budget() -> String {
    let mut text = String::from("apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec:\n  audiences:\n");
    for i in 0..1000 {
        text.push_str(&format!(
            "    - {{audience: aud-{i}.example.com, namespaces: [\"team-{i}\", \"team-{i}-*\"], serviceAccounts: [web, \"app-*\"], maxExpirationSeconds: {}}}\n",
            3600 + i
        ));
    }
    text
}

fn metric(metrics: &Metrics, line_start: &str) -> Option<u64> {
    let text = metrics.encode();
    let line = text.lines().find(|l| l.starts_with(line_start))?;
    line.rsplit(' ').next()?.parse().ok()
}

#[tokio::test]
async fn native_policies_are_applied_and_accepted_before_the_webhooks_are_narrowed() {
    let server = FakeApiServer::start().await;
    let (_publisher, metrics, _task) = start_native_manager(&server, POLICY, true, Duration::from_secs(600));
    eventually("the narrowed webhooks", || is_narrowed(&server)).await;
    assert_eq!(native_objects(&server), every_native_object());
    let policy = server
        .object("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy", None, "tokengate-pods")
        .expect("applied");
    assert_eq!(policy["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
    assert_eq!(policy["metadata"]["annotations"][CONFIGURATION_ANNOTATION], "tokengate");
    assert!(managers(&policy).contains(&"tokengate-webhooks/Apply".to_string()), "{:?}", managers(&policy));
    let binding = server
        .object("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding", None, "tokengate-pods")
        .expect("applied");
    assert_eq!(binding["spec"]["policyName"], "tokengate-pods");

    // Every native object went in before the first write of the validating webhooks.
    let writes = server.writes();
    let webhooks = position(&writes, "PATCH validatingwebhookconfigurations/tokengate");
    for object in every_native_object() {
        let (kind, name) = object.split_once('/').expect("Kind/name");
        let plural =
            if kind.ends_with("Binding") { "validatingadmissionpolicybindings" } else { "validatingadmissionpolicies" };
        assert!(
            position(&writes, &format!("PATCH {plural}/{name}")) < webhooks,
            "{object} before the webhooks: {writes:#?}"
        );
    }
    assert!(!writes.iter().any(|w| w.starts_with("DELETE")), "nothing removed: {writes:#?}");
    eventually("the metrics", || metric(&metrics, "tokengate_native_policies ") == Some(4)).await;
    assert_eq!(metric(&metrics, r#"tokengate_native_policy_applies_total{result="success"}"#), Some(1));
    let events = server.events();
    assert!(
        events.iter().any(|e| e["note"].as_str().is_some_and(|n| n.contains("narrowed beside 4 native policies"))),
        "{events:?}"
    );
}

/// A match condition added by hand to a native policy, or a `matchResources` narrowing its
/// binding, would switch enforcement off inside the API server: the next round removes both, as
/// it removes additions to the webhook configurations.
#[tokio::test]
async fn fields_added_by_hand_to_a_native_policy_or_its_binding_are_removed_at_the_next_resync() {
    let server = FakeApiServer::start().await;
    let (_publisher, _metrics, _task) = start_native_manager(&server, POLICY, true, Duration::from_millis(200));
    eventually("the narrowed webhooks", || is_narrowed(&server)).await;
    let stored_native =
        |kind: &str| server.object("admissionregistration.k8s.io/v1", kind, None, "tokengate-pods").expect("applied");
    let (policy_before, binding_before) =
        (stored_native("ValidatingAdmissionPolicy"), stored_native("ValidatingAdmissionPolicyBinding"));
    let edit = |kind: &str, operations: Value| {
        let gvk = kube::api::GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
        let api: kube::Api<kube::api::DynamicObject> =
            kube::Api::all_with(server.client(), &kube::api::ApiResource::from_gvk(&gvk));
        let patch: json_patch::Patch = serde_json::from_value(operations).expect("a JSON patch");
        let params = kube::api::PatchParams { field_manager: Some("kubectl-edit".into()), ..Default::default() };
        async move { api.patch("tokengate-pods", &params, &kube::api::Patch::<()>::Json(patch)).await.expect("edited") }
    };
    edit(
        "ValidatingAdmissionPolicy",
        json!([{"op": "add", "path": "/spec/matchConditions/-", "value": {"name": "escape", "expression": "false"}}]),
    )
    .await;
    edit(
        "ValidatingAdmissionPolicyBinding",
        json!([{"op": "add", "path": "/spec/matchResources", "value": {"objectSelector": {"matchLabels": {"escape": "yes"}}}}]),
    )
    .await;
    assert!(has_condition(&stored_native("ValidatingAdmissionPolicy")["spec"], "escape"));
    eventually("the additions removed", || {
        !has_condition(&stored_native("ValidatingAdmissionPolicy")["spec"], "escape")
            && stored_native("ValidatingAdmissionPolicyBinding")["spec"].get("matchResources").is_none()
    })
    .await;
    assert_eq!(stored_native("ValidatingAdmissionPolicy")["spec"], policy_before["spec"], "exactly as applied");
    assert_eq!(stored_native("ValidatingAdmissionPolicyBinding")["spec"], binding_before["spec"], "exactly as applied");
}

#[tokio::test]
async fn a_subject_pushed_over_the_cost_budget_gets_its_full_webhook_back_before_its_native_policy_goes() {
    let server = FakeApiServer::start().await;
    let (mut publisher, metrics, _task) = start_native_manager(&server, POLICY, true, Duration::from_secs(600));
    eventually("the narrowed webhooks", || is_narrowed(&server)).await;
    let before = server.writes().len();

    assert!(matches!(publisher.offer("test", &policy_over_budget()), Offer::Loaded { generation: 2 }));
    let remaining = [
        "ValidatingAdmissionPolicy/tokengate-csidrivers",
        "ValidatingAdmissionPolicy/tokengate-legacy-token-secrets",
        "ValidatingAdmissionPolicyBinding/tokengate-csidrivers",
        "ValidatingAdmissionPolicyBinding/tokengate-legacy-token-secrets",
    ];
    eventually("the pod and TokenRequest policies removed", || native_objects(&server) == remaining).await;
    let validating = "ValidatingWebhookConfiguration";
    let pods = stored_webhook(&server, validating, names::PODS_VALIDATE);
    let token_requests = stored_webhook(&server, validating, names::TOKEN_REQUESTS);
    assert!(!has_condition(&pods, condition::NATIVE_PODS), "pods back in full: {pods}");
    assert!(!has_condition(&token_requests, condition::NATIVE_TOKEN_REQUESTS), "{token_requests}");
    let webhooks = validating_webhooks(&server);
    assert!(!webhooks.iter().any(|w| w == names::CSI_DRIVERS || w == names::SECRETS), "still native: {webhooks:?}");

    // The order of the writes of that round: the webhooks, then the bindings, then the policies.
    let writes = server.writes()[before..].to_vec();
    let restored = position(&writes, "PATCH validatingwebhookconfigurations/tokengate");
    let binding_gone = position(&writes, "DELETE validatingadmissionpolicybindings/tokengate-pods");
    let policy_gone = position(&writes, "DELETE validatingadmissionpolicies/tokengate-pods");
    assert!(restored < binding_gone && binding_gone < policy_gone, "{writes:#?}");
    assert!(restored < position(&writes, "DELETE validatingadmissionpolicies/tokengate-tokenrequests"), "{writes:#?}");
    assert_eq!(writes.iter().filter(|w| w.starts_with("DELETE")).count(), 4, "only what left: {writes:#?}");
    eventually("the gauge", || metric(&metrics, "tokengate_native_policies ") == Some(2)).await;
}

#[tokio::test]
async fn an_api_server_without_admission_policies_gets_the_full_webhooks_until_an_upgrade_serves_them() {
    let server = FakeApiServer::start().await;
    for plural in ["validatingadmissionpolicies", "validatingadmissionpolicybindings"] {
        server.stop_serving(plural);
    }
    let (_publisher, metrics, _task) = start_native_manager(&server, POLICY, true, Duration::from_millis(300));
    eventually("the first apply", || metrics.encode().contains("tokengate_webhook_configurations_policy_generation 1"))
        .await;
    assert!(is_full(&server), "{:?}", validating_webhooks(&server));
    assert!(native_objects(&server).is_empty());
    let writes = server.writes();
    assert!(writes.iter().all(|w| w.contains("webhookconfigurations/")), "nothing native: {writes:#?}");
    assert_eq!(metric(&metrics, r#"tokengate_native_policy_applies_total{result="error"}"#), None, "not an error");

    // The API server is upgraded: the next resync finds the kinds served.
    server.serve_all();
    eventually("the native policies after the upgrade", || {
        native_objects(&server) == every_native_object() && is_narrowed(&server)
    })
    .await;
}

#[tokio::test]
async fn without_the_flag_native_policies_applied_earlier_are_removed_after_the_full_webhooks_are_back() {
    let server = FakeApiServer::start().await;
    // Labelled objects of another installation (another name) and an unlabelled one: never removed.
    let others = [
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
               "metadata": {"name": "tokengate-other", "labels": {MANAGED_BY_LABEL: MANAGED_BY},
                            "annotations": {CONFIGURATION_ANNOTATION: "tokengate-staging"}}}),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": "tokengate-other"}}),
    ];
    for object in others {
        server.apply(object);
    }
    let (_publisher, _metrics, task) = start_native_manager(&server, POLICY, true, Duration::from_secs(600));
    eventually("the narrowed webhooks", || is_narrowed(&server)).await;
    task.abort();
    let _ = task.await;
    let before = server.writes().len();

    let (_publisher, _metrics, _task) = start_native_manager(&server, POLICY, false, Duration::from_secs(600));
    let left = ["ValidatingAdmissionPolicy/tokengate-other", "ValidatingAdmissionPolicyBinding/tokengate-other"];
    eventually("the native policies removed", || native_objects(&server) == left).await;
    assert!(is_full(&server), "{:?}", validating_webhooks(&server));
    let writes = server.writes()[before..].to_vec();
    let restored = position(&writes, "PATCH validatingwebhookconfigurations/tokengate");
    let first_delete = writes.iter().position(|w| w.starts_with("DELETE")).expect("deletions");
    assert!(restored < first_delete, "the full webhooks before any deletion: {writes:#?}");
    assert_eq!(writes.iter().filter(|w| w.starts_with("DELETE")).count(), 8, "{writes:#?}");
}

#[tokio::test]
async fn a_refused_native_policy_leaves_the_full_webhooks() {
    let server = FakeApiServer::start().await;
    server.refuse_writes("validatingadmissionpolicies");
    let (mut publisher, metrics, _task) = start_native_manager(&server, POLICY, true, Duration::from_secs(600));
    eventually("a refused native apply counted", || {
        metric(&metrics, r#"tokengate_native_policy_applies_total{result="error"}"#).is_some_and(|n| n >= 2)
    })
    .await;
    assert!(is_full(&server), "the full webhooks: {:?}", validating_webhooks(&server));
    assert!(native_objects(&server).is_empty());
    assert_eq!(metric(&metrics, r#"tokengate_webhook_configuration_applies_total{result="success"}"#), None);

    // Accepted again: narrowed on the next retry.
    server.accept_writes();
    eventually("the narrowed webhooks", || is_narrowed(&server)).await;
    assert_eq!(native_objects(&server), every_native_object());

    // Narrowed, then a policy change whose native policies are refused: the full webhooks are put
    // back (the native policies in place stay: the webhooks decide everything anyway).
    server.refuse_writes("validatingadmissionpolicies");
    assert!(matches!(publisher.offer("test", POLICY_WITH_INJECTION), Offer::Loaded { generation: 2 }));
    eventually("the full webhooks back", || is_full(&server)).await;
    assert_eq!(native_objects(&server), every_native_object(), "nothing deleted while refused");
}
