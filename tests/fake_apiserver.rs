//! The fake API server answers a real `kube::Client` the way the cluster integration needs, and
//! as strictly as the real one where tokengate's promises depend on it: server-side apply's field
//! ownership, conflicts and pruning, and `410 Expired` once history is compacted.

mod support;

use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, Pod, ServiceAccount};
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event as RecorderEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, watcher, Event};
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};
use support::fake_apiserver::FakeApiServer;

const STEP: Duration = Duration::from_secs(5);

fn pod(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"serviceAccountName": "default", "containers": [{"name": "main", "image": "busybox"}]},
    })
}

fn config_map(namespace: &str, name: &str, value: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"value": value},
    })
}

fn service_account(namespace: &str, name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
    })
}

/// The next item of a stream, failing the test when none comes within [`STEP`].
async fn next<S: Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(STEP, stream.next()).await.expect("an item in time").expect("the stream goes on")
}

/// The next watcher event, failing on errors.
async fn next_event<K, S>(stream: &mut S) -> Event<K>
where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
{
    next(stream).await.expect("a watcher event")
}

fn names<K: ResourceExt>(objects: &[K]) -> Vec<String> {
    objects.iter().map(ResourceExt::name_any).collect()
}

#[tokio::test]
async fn lists_and_gets_objects() {
    let server = FakeApiServer::start().await;
    server.apply(pod("default", "web"));
    server.apply(pod("team-a", "api"));
    server.apply(json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSIDriver",
        "metadata": {"name": "secrets-store.csi.k8s.io"},
        "spec": {"tokenRequests": [{"audience": "vault"}]},
    }));
    server.apply(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": "pv-1"},
        "spec": {"csi": {"driver": "secrets-store.csi.k8s.io", "volumeHandle": "h"}},
    }));
    let client = server.client();

    let default_pods: Api<Pod> = Api::default_namespaced(client.clone());
    let listed = default_pods.list(&ListParams::default()).await.expect("list");
    assert_eq!(names(&listed.items), ["web"]);
    assert!(listed.metadata.resource_version.is_some_and(|v| !v.is_empty()));
    let all_pods: Api<Pod> = Api::all(client.clone());
    let mut all = names(&all_pods.list(&ListParams::default()).await.expect("list").items);
    all.sort();
    assert_eq!(all, ["api", "web"]);
    let labelled = all_pods.list(&ListParams::default().labels("app in (api,db)")).await.expect("list");
    assert_eq!(names(&labelled.items), ["api"]);
    let unlabelled = all_pods.list(&ListParams::default().labels("!app")).await.expect("list");
    assert!(unlabelled.items.is_empty());

    let found = default_pods.get_opt("web").await.expect("get").expect("found");
    assert_eq!(found.metadata.namespace.as_deref(), Some("default"));
    assert!(found.metadata.uid.is_some() && found.metadata.resource_version.is_some());
    assert_eq!(default_pods.get_opt("missing").await.expect("get"), None);
    let team_a: Api<Pod> = Api::namespaced(client.clone(), "team-a");
    assert!(team_a.get_opt("api").await.expect("get").is_some());
    assert_eq!(team_a.get_opt("web").await.expect("get"), None);

    let drivers: Api<CSIDriver> = Api::all(client.clone());
    let driver = drivers.get_opt("secrets-store.csi.k8s.io").await.expect("get").expect("found");
    assert_eq!(driver.metadata.namespace, None);
    assert_eq!(driver.spec.token_requests.expect("token requests")[0].audience, "vault");
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    assert!(volumes.get_opt("pv-1").await.expect("get").is_some());
    assert_eq!(server.single_gets(), 6);

    // Not found: a Status kube understands.
    let error = default_pods.get("missing").await.expect_err("missing");
    match error {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 404);
            assert_eq!(status.reason, "NotFound");
        }
        other => panic!("unexpected error {other:?}"),
    }
    let unknown = axum::http::Request::get("/apis/example.com/v1/widgets").body(Vec::new()).expect("request");
    match client.request_text(unknown).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
        other => panic!("unexpected answer {other:?}"),
    }

    server.delete("v1", "Pod", Some("default"), "web");
    assert_eq!(default_pods.get_opt("web").await.expect("get"), None);
}

#[tokio::test]
async fn pages_lists() {
    let server = FakeApiServer::start().await;
    for name in ["p1", "p2", "p3", "p4", "p5"] {
        server.apply(pod("default", name));
    }
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    let mut params = ListParams::default().limit(2);
    let mut pages = Vec::new();
    loop {
        let page = pods.list(&params).await.expect("list");
        pages.push(names(&page.items));
        if pages.len() == 1 {
            // Later pages come from the first page's snapshot.
            server.apply(pod("default", "p0"));
            server.delete("v1", "Pod", Some("default"), "p5");
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(pages, [vec!["p1", "p2"], vec!["p3", "p4"], vec!["p5"]]);

    let fresh = pods.list(&ListParams::default()).await.expect("list");
    assert_eq!(names(&fresh.items), ["p0", "p1", "p2", "p3", "p4"]);
}

#[tokio::test]
async fn watcher_sees_objects_before_and_after_it_started_and_deletions() {
    let server = FakeApiServer::start().await;
    server.apply(pod("default", "before"));
    server.apply(pod("other", "elsewhere"));
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    let mut stream = watcher(pods.clone(), watcher::Config::default().page_size(1)).boxed();

    assert!(matches!(next_event(&mut stream).await, Event::Init));
    match next_event(&mut stream).await {
        Event::InitApply(pod) => assert_eq!(pod.name_any(), "before"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(next_event(&mut stream).await, Event::InitDone));

    server.apply(pod("default", "after"));
    match next_event(&mut stream).await {
        Event::Apply(pod) => assert_eq!(pod.name_any(), "after"),
        other => panic!("unexpected {other:?}"),
    }
    let mut changed = pod("default", "after");
    changed["metadata"]["labels"]["app"] = json!("changed");
    server.apply(changed);
    match next_event(&mut stream).await {
        Event::Apply(pod) => assert_eq!(pod.labels()["app"], "changed"),
        other => panic!("unexpected {other:?}"),
    }
    server.apply(pod("other", "ignored"));
    server.delete("v1", "Pod", Some("default"), "before");
    match next_event(&mut stream).await {
        Event::Delete(pod) => assert_eq!(pod.name_any(), "before"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn watch_from_a_list_version_replays_what_happened_in_between() {
    let server = FakeApiServer::start().await;
    server.apply(pod("default", "listed"));
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    let list = pods.list(&ListParams::default()).await.expect("list");
    let version = list.metadata.resource_version.expect("version");
    server.apply(pod("default", "between"));
    server.delete("v1", "Pod", Some("default"), "listed");

    let mut stream = pods.watch(&WatchParams::default().timeout(1), &version).await.expect("watch").boxed();
    match next(&mut stream).await.expect("event") {
        WatchEvent::Added(pod) => assert_eq!(pod.name_any(), "between"),
        other => panic!("unexpected {other:?}"),
    }
    match next(&mut stream).await.expect("event") {
        WatchEvent::Deleted(pod) => {
            assert_eq!(pod.name_any(), "listed");
            assert_ne!(pod.resource_version(), list.items[0].resource_version(), "deletions carry a new version");
        }
        other => panic!("unexpected {other:?}"),
    }
    // timeoutSeconds ends the stream.
    let end = tokio::time::timeout(STEP, stream.next()).await.expect("the watch ends in time");
    assert!(end.is_none());
}

/// Drives a metadata watch of ServiceAccounts in `default` through an initial list and a change.
async fn sees_annotations<S>(server: &FakeApiServer, mut stream: S)
where
    S: Stream<Item = Result<Event<PartialObjectMeta<ServiceAccount>>, watcher::Error>> + Unpin,
{
    assert!(matches!(next_event(&mut stream).await, Event::Init));
    match next_event(&mut stream).await {
        Event::InitApply(meta) => {
            assert_eq!(meta.name_any(), "web");
            assert_eq!(meta.annotations()["eks.amazonaws.com/role-arn"], "arn:aws:iam::1:role/web");
            let types = meta.types.expect("types");
            assert_eq!((types.api_version.as_str(), types.kind.as_str()), ("meta.k8s.io/v1", "PartialObjectMetadata"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(next_event(&mut stream).await, Event::InitDone));

    server.apply(service_account("default", "web", json!({"azure.workload.identity/client-id": "abc"})));
    match next_event(&mut stream).await {
        Event::Apply(meta) => {
            assert_eq!(meta.annotations()["azure.workload.identity/client-id"], "abc");
            assert!(!meta.annotations().contains_key("eks.amazonaws.com/role-arn"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
#[allow(deprecated)] // kube 5 prefers `watcher` over `Api<PartialObjectMeta<K>>`; both are served.
async fn metadata_watcher_sees_annotations() {
    let server = FakeApiServer::start().await;
    server.apply(service_account("default", "web", json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/web"})));
    let accounts: Api<ServiceAccount> = Api::default_namespaced(server.client());
    let stream = kube::runtime::watcher::metadata_watcher(accounts.clone(), watcher::Config::default()).boxed();
    sees_annotations(&server, stream).await;

    let listed = accounts.list_metadata(&ListParams::default()).await.expect("list metadata");
    assert_eq!(listed.types.kind, "PartialObjectMetadataList");
    assert_eq!(names(&listed.items), ["web"]);
    let single = accounts.get_metadata_opt("web").await.expect("get metadata").expect("found");
    assert_eq!(single.annotations()["azure.workload.identity/client-id"], "abc");
}

#[tokio::test]
async fn watcher_over_partial_object_metadata_sees_annotations() {
    let server = FakeApiServer::start().await;
    server.apply(service_account("default", "web", json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/web"})));
    let accounts: Api<PartialObjectMeta<ServiceAccount>> = Api::default_namespaced(server.client());
    let stream = watcher(accounts, watcher::Config::default()).boxed();
    sees_annotations(&server, stream).await;
}

#[tokio::test]
async fn field_selectors_pick_by_name_and_namespace() {
    let server = FakeApiServer::start().await;
    server.apply(config_map("default", "wanted", "1"));
    server.apply(config_map("default", "other", "1"));
    server.apply(config_map("team-a", "wanted", "1"));
    let client = server.client();
    let maps: Api<ConfigMap> = Api::default_namespaced(client.clone());

    let by_name = maps.list(&ListParams::default().fields("metadata.name=wanted")).await.expect("list");
    assert_eq!(names(&by_name.items), ["wanted"]);
    let everywhere: Api<ConfigMap> = Api::all(client.clone());
    let by_both = everywhere
        .list(&ListParams::default().fields("metadata.name=wanted,metadata.namespace=team-a"))
        .await
        .expect("list");
    assert_eq!(by_both.items.len(), 1);
    assert_eq!(by_both.items[0].namespace().as_deref(), Some("team-a"));
    let not_wanted = maps.list(&ListParams::default().fields("metadata.name!=wanted")).await.expect("list");
    assert_eq!(names(&not_wanted.items), ["other"]);

    let mut stream = watcher(maps, watcher::Config::default().fields("metadata.name=wanted")).boxed();
    assert!(matches!(next_event(&mut stream).await, Event::Init));
    match next_event(&mut stream).await {
        Event::InitApply(map) => assert_eq!(map.name_any(), "wanted"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(next_event(&mut stream).await, Event::InitDone));
    server.apply(config_map("default", "other", "2"));
    server.apply(config_map("team-a", "wanted", "2"));
    server.apply(config_map("default", "wanted", "2"));
    match next_event(&mut stream).await {
        Event::Apply(map) => {
            assert_eq!(map.name_any(), "wanted");
            assert_eq!(map.data.expect("data")["value"], "2");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn recorder_publishes_events() {
    let server = FakeApiServer::start().await;
    server.apply(pod("team-a", "web"));
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team-a");
    let web = pods.get("web").await.expect("get");
    let recorder = Recorder::new(client, Reporter { controller: "tokengate".into(), instance: None });
    let event = RecorderEvent {
        type_: EventType::Warning,
        reason: "AudienceDenied".into(),
        note: Some("audience \"vault\" is not allowed".into()),
        action: "Admit".into(),
        secondary: None,
    };
    recorder.publish(&event, &web.object_ref(&())).await.expect("publish");

    let events = server.events();
    assert_eq!(events.len(), 1);
    let recorded = &events[0];
    assert_eq!(recorded["apiVersion"], "events.k8s.io/v1");
    assert_eq!(recorded["kind"], "Event");
    assert_eq!(recorded["metadata"]["namespace"], "team-a");
    assert_eq!(recorded["reason"], "AudienceDenied");
    assert_eq!(recorded["type"], "Warning");
    assert_eq!(recorded["note"], "audience \"vault\" is not allowed");
    assert_eq!(recorded["reportingController"], "tokengate");
    assert_eq!(recorded["regarding"]["kind"], "Pod");
    assert_eq!(recorded["regarding"]["name"], "web");

    // The same event again is a series: a PATCH of the existing event.
    recorder.publish(&event, &web.object_ref(&())).await.expect("publish again");
    let events = server.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["series"]["count"], 2);

    let listed: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(server.client(), "team-a");
    assert_eq!(listed.list(&ListParams::default()).await.expect("list").items.len(), 1);
}

#[tokio::test]
async fn get_delay_outlasts_a_timeout() {
    let server = FakeApiServer::start().await;
    server.apply(service_account("default", "web", json!({})));
    let accounts: Api<ServiceAccount> = Api::default_namespaced(server.client());
    server.set_get_delay(Duration::from_millis(800));

    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(Duration::from_millis(100), accounts.get_opt("web")).await;
    assert!(answer.is_err(), "the GET is slower than the timeout");
    assert!(started.elapsed() < Duration::from_millis(700));
    assert_eq!(server.single_gets(), 1);

    // Lists and watches are not delayed.
    let listed = tokio::time::timeout(Duration::from_millis(500), accounts.list(&ListParams::default())).await;
    assert_eq!(listed.expect("in time").expect("list").items.len(), 1);

    server.set_get_delay(Duration::ZERO);
    let found = tokio::time::timeout(Duration::from_millis(500), accounts.get_opt("web")).await;
    assert!(found.expect("in time").expect("get").is_some());
    assert_eq!(server.single_gets(), 2);
}

#[tokio::test]
async fn kubeconfig_points_at_the_server() {
    let server = FakeApiServer::start().await;
    server.apply(pod("default", "web"));
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig()).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .expect("config");
    assert_eq!(config.default_namespace, "default");
    assert_eq!(config.cluster_url.to_string().trim_end_matches('/'), server.url());
    let client = kube::Client::try_from(config).expect("client");
    let pods: Api<Pod> = Api::default_namespaced(client);
    assert!(pods.get_opt("web").await.expect("get").is_some());
}

#[tokio::test]
async fn dropping_the_server_ends_watches() {
    let server = FakeApiServer::start().await;
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    let mut stream = pods.watch(&WatchParams::default(), "0").await.expect("watch").boxed();
    server.apply(pod("default", "web"));
    match next(&mut stream).await.expect("event") {
        WatchEvent::Added(pod) => assert_eq!(pod.name_any(), "web"),
        other => panic!("unexpected {other:?}"),
    }
    drop(server);
    let end = tokio::time::timeout(STEP, stream.next()).await.expect("the watch ends in time");
    assert!(end.is_none_or(|item| item.is_err()));
}

/// A validating configuration as a field manager applies it: webhooks by name, each with the
/// given fields.
fn configuration(webhooks: Value) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "gate"},
        "webhooks": webhooks,
    })
}

fn configurations(client: kube::Client) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
    ));
    Api::all_with(client, &resource)
}

async fn server_side_apply(
    api: &Api<DynamicObject>,
    manager: &str,
    force: bool,
    body: &Value,
) -> Result<DynamicObject, kube::Error> {
    let params = if force { PatchParams::apply(manager).force() } else { PatchParams::apply(manager) };
    api.patch("gate", &params, &Patch::Apply(body)).await
}

/// `(manager, operation)` of every managed fields entry, and each one's fieldsV1.
fn owners(object: &DynamicObject) -> Vec<(String, String, Value)> {
    let entries = object.metadata.managed_fields.clone().unwrap_or_default();
    entries
        .into_iter()
        .map(|e| {
            let fields = e.fields_v1.map(|f| f.0).unwrap_or(Value::Null);
            (e.manager.unwrap_or_default(), e.operation.unwrap_or_default(), fields)
        })
        .collect()
}

fn webhook<'a>(object: &'a DynamicObject, name: &str) -> &'a Value {
    let webhooks = object.data["webhooks"].as_array().expect("webhooks");
    webhooks.iter().find(|w| w["name"] == name).unwrap_or_else(|| panic!("webhook {name} in {webhooks:?}"))
}

#[tokio::test]
async fn server_side_apply_tracks_owners_refuses_conflicts_and_prunes_what_is_no_longer_applied() {
    let server = FakeApiServer::start().await;
    let api = configurations(server.client());
    let first = configuration(json!([
        {"name": "a.example.com", "timeoutSeconds": 3, "clientConfig": {"url": "https://a"}},
        {"name": "b.example.com", "timeoutSeconds": 5, "sideEffects": "None"},
    ]));
    let created = server_side_apply(&api, "gate-manager", false, &first).await.expect("apply creates");
    let entries = owners(&created);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let (manager, operation, fields) = &entries[0];
    assert_eq!((manager.as_str(), operation.as_str()), ("gate-manager", "Apply"));
    assert_eq!(
        fields["f:webhooks"][r#"k:{"name":"a.example.com"}"#],
        json!({".": {}, "f:name": {}, "f:timeoutSeconds": {}, "f:clientConfig": {"f:url": {}}}),
        "webhooks are a list keyed by name: {fields}"
    );

    // Another manager sets a field nobody owns, in one item only: merged by key, not replacing
    // the list.
    let bundle = configuration(json!([{"name": "a.example.com", "clientConfig": {"caBundle": "Q0E="}}]));
    let merged = server_side_apply(&api, "cainjector", false, &bundle).await.expect("no conflict");
    assert_eq!(webhook(&merged, "a.example.com")["clientConfig"], json!({"url": "https://a", "caBundle": "Q0E="}));
    assert_eq!(webhook(&merged, "b.example.com")["timeoutSeconds"], 5);

    // A different value for a field another manager owns is a conflict, listed field by field;
    // the same value (b's timeout) is none: that field becomes shared.
    let rival = configuration(json!([
        {"name": "a.example.com", "timeoutSeconds": 30},
        {"name": "b.example.com", "timeoutSeconds": 5},
    ]));
    let refused = server_side_apply(&api, "rival", false, &rival).await.expect_err("a conflict");
    let kube::Error::Api(status) = refused else { panic!("an API error: {refused:?}") };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(
        status.message.contains(r#"conflict with "gate-manager": .webhooks[name="a.example.com"].timeoutSeconds"#),
        "{}",
        status.message
    );
    let causes = status.details.map(|d| d.causes).unwrap_or_default();
    assert_eq!(causes.len(), 1, "{causes:?}");
    assert_eq!(causes[0].reason, "FieldManagerConflict");
    assert_eq!(causes[0].field, r#".webhooks[name="a.example.com"].timeoutSeconds"#);

    // Forced, the field changes hands.
    let forced = server_side_apply(&api, "rival", true, &rival).await.expect("forced");
    assert_eq!(webhook(&forced, "a.example.com")["timeoutSeconds"], 30);
    let gate = owners(&forced).into_iter().find(|(m, _, _)| m == "gate-manager").expect("still a manager");
    assert!(gate.2["f:webhooks"][r#"k:{"name":"a.example.com"}"#].get("f:timeoutSeconds").is_none(), "{gate:?}");

    // The first manager stops applying webhook b and a's URL: b stays (the rival shares its
    // name and timeout) with only the shared fields, the URL goes, the other manager's bundle
    // stays.
    let smaller = configuration(json!([{"name": "a.example.com"}]));
    let pruned = server_side_apply(&api, "gate-manager", false, &smaller).await.expect("no conflict");
    assert_eq!(webhook(&pruned, "a.example.com")["clientConfig"], json!({"caBundle": "Q0E="}));
    assert_eq!(webhook(&pruned, "a.example.com")["timeoutSeconds"], 30);
    assert_eq!(webhook(&pruned, "b.example.com"), &json!({"name": "b.example.com", "timeoutSeconds": 5}));

    // Another manager owning only a field inside b keeps b, with its key.
    let inside_b = configuration(json!([{"name": "b.example.com", "clientConfig": {"caBundle": "Q0E="}}]));
    server_side_apply(&api, "cainjector", false, &inside_b).await.expect("no conflict");
    let rival_only_a = configuration(json!([{"name": "a.example.com", "timeoutSeconds": 30}]));
    let kept = server_side_apply(&api, "rival", false, &rival_only_a).await.expect("no conflict");
    assert_eq!(
        webhook(&kept, "b.example.com"),
        &json!({"name": "b.example.com", "clientConfig": {"caBundle": "Q0E="}})
    );

    // The injector lets go of b too: nobody owns it any more, so it is removed.
    let inside_a = configuration(json!([{"name": "a.example.com", "clientConfig": {"caBundle": "Q0E="}}]));
    server_side_apply(&api, "cainjector", false, &inside_a).await.expect("no conflict");
    let gone = api.get("gate").await.expect("get");
    let names: Vec<&Value> = gone.data["webhooks"].as_array().expect("webhooks").iter().map(|w| &w["name"]).collect();
    assert_eq!(names, [&json!("a.example.com")]);
}

#[tokio::test]
async fn an_ordinary_write_takes_ownership_of_what_it_changes() {
    let server = FakeApiServer::start().await;
    let api = configurations(server.client());
    let applied = configuration(json!([{"name": "a.example.com", "timeoutSeconds": 3, "failurePolicy": "Fail"}]));
    server_side_apply(&api, "gate-manager", false, &applied).await.expect("apply creates");

    // A hand edit (a JSON patch by `kubectl-edit`) of an applied field.
    let edit: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/webhooks/0/timeoutSeconds", "value": 9}]))
            .expect("patch");
    let params = PatchParams { field_manager: Some("kubectl-edit".into()), ..PatchParams::default() };
    let edited = api.patch("gate", &params, &Patch::<()>::Json(edit)).await.expect("edited");
    let entries = owners(&edited);
    let edit_entry = entries.iter().find(|(m, _, _)| m == "kubectl-edit").expect("the editor owns what it changed");
    assert_eq!(edit_entry.1, "Update");
    assert_eq!(edit_entry.2, json!({"f:webhooks": {r#"k:{"name":"a.example.com"}"#: {"f:timeoutSeconds": {}}}}));

    // Applying the old value again conflicts with the editor; forced, it is undone.
    let refused = server_side_apply(&api, "gate-manager", false, &applied).await.expect_err("a conflict");
    let kube::Error::Api(status) = refused else { panic!("an API error: {refused:?}") };
    assert_eq!(status.code, 409);
    assert!(
        status.message.contains(r#"conflict with "kubectl-edit" using admissionregistration.k8s.io/v1"#),
        "{}",
        status.message
    );
    let forced = server_side_apply(&api, "gate-manager", true, &applied).await.expect("forced");
    assert_eq!(webhook(&forced, "a.example.com")["timeoutSeconds"], 3);
    assert!(owners(&forced).iter().all(|(m, _, _)| m != "kubectl-edit"), "the editor owns nothing any more");

    // PUT with a stale resourceVersion is refused; with the current one it is an Update.
    let mut current = api.get("gate").await.expect("get");
    let mut stale = current.clone();
    stale.metadata.resource_version = Some("1".into());
    let err = api.replace("gate", &PostParams::default(), &stale).await.expect_err("stale");
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 409), "{err:?}");
    current.data["webhooks"][0]["failurePolicy"] = json!("Ignore");
    let params = PostParams { field_manager: Some("cainjector".into()), ..PostParams::default() };
    let replaced = api.replace("gate", &params, &current).await.expect("replaced");
    let entry = owners(&replaced).into_iter().find(|(m, _, _)| m == "cainjector").expect("the writer owns a field");
    assert_eq!(entry.2, json!({"f:webhooks": {r#"k:{"name":"a.example.com"}"#: {"f:failurePolicy": {}}}}));

    // Apply without a field manager, or force on another patch, is refused as upstream does.
    let params = PatchParams::default();
    let err = api.patch("gate", &params, &Patch::Apply(&applied)).await.expect_err("no field manager");
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 422), "{err:?}");
}

#[tokio::test]
async fn compacted_history_answers_watches_and_continue_tokens_with_410_expired() {
    let server = FakeApiServer::start().await;
    for name in ["p1", "p2", "p3"] {
        server.apply(pod("default", name));
    }
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    let first = pods.list(&ListParams::default().limit(2)).await.expect("first page");
    let version = first.metadata.resource_version.clone().expect("version");
    let token = first.metadata.continue_.clone().expect("a continue token");

    // Before compaction the snapshot is there.
    let second = pods.list(&ListParams::default().limit(2).continue_token(&token)).await.expect("second page");
    assert_eq!(names(&second.items), ["p3"]);

    server.apply(pod("default", "p4"));
    server.compact();
    let err = pods.list(&ListParams::default().limit(2).continue_token(&token)).await.expect_err("expired");
    let kube::Error::Api(status) = err else { panic!("an API error: {err:?}") };
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    assert!(status.message.starts_with("The provided continue parameter is too old"), "{}", status.message);
    // The token in the answer continues inconsistently, from the current state.
    let response = reqwest::get(format!("{}/api/v1/namespaces/default/pods?limit=2&continue={token}", server.url()))
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 410);
    let body: Value = response.json().await.expect("a Status");
    let inconsistent = body["metadata"]["continue"].as_str().expect("an inconsistent continue token");
    let rest = pods.list(&ListParams::default().limit(10).continue_token(inconsistent)).await.expect("rest");
    assert_eq!(names(&rest.items), ["p3", "p4"], "created after the first page, seen by the inconsistent rest");

    // A watch from before the compaction gets one ERROR event with a 410 Expired Status.
    let mut events = pods.watch(&WatchParams::default(), &version).await.expect("watch").boxed();
    match next(&mut events).await.expect("an event") {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(status.message.starts_with("too old resource version"), "{}", status.message);
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(STEP, events.next()).await.expect("ends").is_none(),
        "the stream ends after the error"
    );
    assert_eq!(server.expired_answers(), 3);
}

#[tokio::test]
async fn an_apply_that_changes_nothing_writes_nothing() {
    let server = FakeApiServer::start().await;
    let api = configurations(server.client());
    let applied = configuration(json!([{"name": "a.example.com", "timeoutSeconds": 3}]));
    let first = server_side_apply(&api, "gate-manager", false, &applied).await.expect("apply creates");
    let again = server_side_apply(&api, "gate-manager", true, &applied).await.expect("applied again");
    assert_eq!(again.metadata.resource_version, first.metadata.resource_version, "no new version");
    assert_eq!(again.metadata.managed_fields, first.metadata.managed_fields, "the entry keeps its time");
    let changed = configuration(json!([{"name": "a.example.com", "timeoutSeconds": 4}]));
    let third = server_side_apply(&api, "gate-manager", false, &changed).await.expect("applied");
    assert_ne!(third.metadata.resource_version, first.metadata.resource_version);
}

#[tokio::test]
async fn discovery_lists_served_resources_and_delete_removes_objects() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let served = |list: &k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList| -> Vec<String> {
        list.resources.iter().map(|r| r.name.clone()).collect()
    };
    let list = client.list_api_group_resources("admissionregistration.k8s.io/v1").await.expect("discovery");
    assert_eq!(list.group_version, "admissionregistration.k8s.io/v1");
    assert!(served(&list).contains(&"validatingadmissionpolicies".to_string()), "{:?}", served(&list));

    // An older API server: the resource is neither discovered nor served.
    server.stop_serving("validatingadmissionpolicies");
    let list = client.list_api_group_resources("admissionregistration.k8s.io/v1").await.expect("discovery");
    assert!(!served(&list).contains(&"validatingadmissionpolicies".to_string()));
    assert!(served(&list).contains(&"validatingwebhookconfigurations".to_string()));
    let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicy");
    let policies: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk));
    let err = policies.list(&ListParams::default()).await.expect_err("not served");
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 404), "{err:?}");
    server.serve_all();

    let body = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
                      "metadata": {"name": "p", "labels": {"app.kubernetes.io/managed-by": "tokengate"}}});
    policies.patch("p", &PatchParams::apply("gate-manager"), &Patch::Apply(&body)).await.expect("applied");
    let labelled = policies.list(&ListParams::default().labels("app.kubernetes.io/managed-by=tokengate")).await;
    assert_eq!(names(&labelled.expect("list").items), ["p"]);
    policies.delete("p", &Default::default()).await.expect("deleted");
    assert!(policies.get_opt("p").await.expect("get").is_none());
    let err = policies.delete("p", &Default::default()).await.expect_err("gone");
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 404), "{err:?}");
    assert_eq!(
        server.writes(),
        [
            "PATCH validatingadmissionpolicies/p",
            "DELETE validatingadmissionpolicies/p",
            "DELETE validatingadmissionpolicies/p"
        ]
    );
}
