//! Unit tests of the decisions, built from small object helpers.

use serde_json::{json, Value};

use super::admission::{AdmissionRequest, GroupVersionKind, Operation, RequestObject, UserInfo};
use super::*;
use crate::cluster::ObjectStore;

const POLICY: &str = r#"
apiVersion: tokengate.dev/v1alpha1
kind: TokenPolicy
spec:
  apiServerAudiences: [https://kubernetes.default.svc.cluster.local]
  audiences:
    - audience: vault
      namespaces: ["team-*"]
    - audience: sts.amazonaws.com
  csiDrivers:
    - {name: secrets-store.csi.k8s.io, audiences: [vault]}
  injections:
    - name: aws
      match: {namespaces: ["team-*"], serviceAccountAnnotation: eks.amazonaws.com/role-arn}
      volume: {name: aws-iam-token, audience: sts.amazonaws.com, expirationSeconds: 86400}
      mount: {mountPath: /var/run/aws}
      env:
        - {name: AWS_ROLE_ARN, valueFromServiceAccountAnnotation: eks.amazonaws.com/role-arn}
    - name: extra
      required: false
      match: {namespaces: ["team-*"], podSelector: {matchLabels: {extra: "yes"}}}
      volume: {name: extra-token, audience: sts.amazonaws.com}
      mount: {mountPath: /var/run/extra}
      env:
        - {name: REGION, valueFromServiceAccountAnnotation: example.com/region}
  exemptions: {users: ["system:admin"]}
"#;

fn policy() -> Policy {
    Policy::parse(POLICY).expect("test policy is valid")
}

fn cluster() -> ObjectStore {
    let mut store = ObjectStore::default();
    let sa = |name: &str, annotations: Value| json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": "team-a", "annotations": annotations}});
    store.insert(&sa("irsa", json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/r"}))).expect("sa");
    store.insert(&sa("web", json!({}))).expect("sa");
    store
        .insert(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team-a", "uid": "u1"},
            "spec": {"nodeName": "node-1", "serviceAccountName": "web", "containers": [],
                     "volumes": [{"name": "v", "projected": {"sources": [{"serviceAccountToken": {"audience": "vault", "path": "t"}}]}}]}}))
        .expect("pod");
    store
}

fn mk_pod(service_account: &str, volumes: Value, containers: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team-a"},
           "spec": {"serviceAccountName": service_account, "volumes": volumes, "containers": containers}})
}

fn token_volume(name: &str, audience: &str, seconds: i64) -> Value {
    json!({"name": name, "projected": {"sources": [{"serviceAccountToken": {"audience": audience, "expirationSeconds": seconds, "path": "token"}}]}})
}

fn request<'a>(kind: (&str, &str), namespace: &str, user: &str, object: &'a RawValue) -> AdmissionRequest<'a> {
    AdmissionRequest {
        uid: "uid-1".to_string(),
        kind: GroupVersionKind { group: kind.0.to_string(), version: "v1".to_string(), kind: kind.1.to_string() },
        sub_resource: (kind.1 == "TokenRequest").then(|| "token".to_string()),
        name: Some("web".to_string()),
        namespace: Some(namespace.to_string()),
        operation: Operation::Create,
        user_info: UserInfo {
            username: user.to_string(),
            groups: if user.starts_with("system:node:") { vec!["system:nodes".to_string()] } else { vec![] },
        },
        object: Some(RequestObject::Raw(object)),
        old_object: None,
        dry_run: None,
    }
}

use serde_json::value::RawValue;

fn run(kind: (&str, &str), user: &str, webhook: Webhook, object: &Value) -> Verdict {
    let raw = serde_json::value::to_raw_value(object).expect("raw");
    let req = request(kind, "team-a", user, &raw);
    let policy = policy();
    let cluster = cluster();
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(decide(&req, webhook, &policy, &cluster))
}

fn pod(webhook: Webhook, object: &Value) -> Verdict {
    run(("", "Pod"), "alice", webhook, object)
}

fn fields(verdict: &Verdict) -> Vec<&str> {
    verdict.violations.iter().map(|v| v.field.as_str()).collect()
}

#[test]
fn classifies_requests_by_kind_and_subresource() {
    let cases = [
        (("", "Pod", None), Subject::Pod),
        (("", "Pod", Some("ephemeralcontainers")), Subject::Other),
        (("", "Binding", Some("binding")), Subject::Other),
        (("apps", "Deployment", None), Subject::Workload(WorkloadKind::Deployment)),
        (("batch", "CronJob", None), Subject::Workload(WorkloadKind::CronJob)),
        (("", "PodTemplate", None), Subject::Workload(WorkloadKind::PodTemplate)),
        (("apps", "Scale", Some("scale")), Subject::Other),
        (("storage.k8s.io", "CSIDriver", None), Subject::CsiDriver),
        (("authentication.k8s.io", "TokenRequest", Some("token")), Subject::TokenRequest),
        (("", "ConfigMap", None), Subject::Other),
    ];
    for ((group, kind, sub), expected) in cases {
        assert_eq!(Subject::of(group, kind, sub), expected, "{group}/{kind} {sub:?}");
    }
}

#[test]
fn recognises_kubelets_by_name_and_group() {
    let user = |name: &str, groups: &[&str]| UserInfo {
        username: name.to_string(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    };
    assert_eq!(user("system:node:n1", &["system:nodes"]).node_name(), Some("n1"));
    assert_eq!(user("system:node:n1", &["system:authenticated"]).node_name(), None);
    assert_eq!(user("system:node:", &["system:nodes"]).node_name(), Some(""), "refused later, not taken for a user");
    assert_eq!(user("alice", &["system:nodes"]).node_name(), None);
}

#[test]
fn warnings_fit_the_api_server_limits() {
    let long = "x".repeat(500);
    let fitted = fit_warnings(vec![long.clone(), "short".to_string()]);
    assert_eq!(fitted[0].chars().count(), MAX_WARNING_CHARS);
    assert!(fitted[0].ends_with('…'));
    assert_eq!(fitted[1], "tokengate: short");
    let many = fit_warnings(vec![long; 100]);
    assert!(many.iter().map(String::len).sum::<usize>() <= 4096);
}

#[test]
fn automount_volume_is_recognised_by_shape_not_by_its_source_list() {
    let automount = |name: &str, token: Value, extra: usize| {
        let mut sources = vec![json!({"serviceAccountToken": token})];
        sources.extend((0..extra).map(|i| json!({"configMap": {"name": format!("cm-{i}")}})));
        serde_json::from_value::<pod_view::Volumes>(json!([{"name": name, "projected": {"sources": sources}}]))
            .expect("volume")
    };
    let standard = json!({"expirationSeconds": 3607, "path": "token"});
    let cases = [
        (automount("kube-api-access-abcde", standard.clone(), 2), true),
        (automount("kube-api-access-abcde", standard.clone(), 3), true),
        (automount("my-volume", standard.clone(), 2), false),
        (automount("kube-api-access-x", json!({"expirationSeconds": 3600, "path": "token"}), 2), false),
        (
            automount("kube-api-access-x", json!({"audience": "vault", "expirationSeconds": 3607, "path": "token"}), 2),
            false,
        ),
        (automount("kube-api-access-x", json!({"expirationSeconds": 3607, "path": "other"}), 2), false),
    ];
    for (volume, expected) in cases {
        let volume = volume.get(0).expect("one volume");
        assert_eq!(volume.is_automount(), expected, "{volume:?}");
    }
}

#[test]
fn validates_every_projected_token_of_a_pod() {
    let object = mk_pod(
        "web",
        json!([token_volume("a", "vault", 3600), token_volume("b", "gcp", 3600), token_volume("c", "vault", 300)]),
        json!([{"name": "app"}]),
    );
    let verdict = pod(Webhook::Validate, &object);
    assert_eq!(verdict.decision, Decision::Denied);
    assert_eq!(
        fields(&verdict),
        [
            "spec.volumes[1].projected.sources[0].serviceAccountToken.audience",
            "spec.volumes[2].projected.sources[0].serviceAccountToken.expirationSeconds"
        ]
    );
}

#[test]
fn api_server_audience_by_url_is_the_empty_audience() {
    let object = mk_pod(
        "web",
        json!([token_volume("a", "https://kubernetes.default.svc.cluster.local", 3600)]),
        json!([{"name": "app"}]),
    );
    let verdict = pod(Webhook::Validate, &object);
    assert!(verdict.violations[0].message.contains("the API server audience"), "{:?}", verdict.violations);
}

#[test]
fn inline_csi_volume_of_an_unknown_driver_mints_nothing() {
    let object =
        mk_pod("web", json!([{"name": "c", "csi": {"driver": "unknown.example.com"}}]), json!([{"name": "app"}]));
    assert_eq!(pod(Webhook::Validate, &object).decision, Decision::Allowed);
}

#[test]
fn mutation_appends_to_existing_arrays_and_creates_missing_ones() {
    let object = mk_pod(
        "irsa",
        json!([{"name": "data", "emptyDir": {}}]),
        json!([{"name": "app", "env": [{"name": "A", "value": "1"}]}, {"name": "side"}]),
    );
    let verdict = pod(Webhook::Mutate, &object);
    assert_eq!(verdict.decision, Decision::Patched);
    let paths: Vec<String> = verdict
        .patch
        .0
        .iter()
        .map(|op| match op {
            json_patch::PatchOperation::Add(add) => add.path.to_string(),
            other => panic!("only add operations, got {other:?}"),
        })
        .collect();
    assert_eq!(
        paths,
        [
            "/spec/volumes/-",
            "/spec/containers/0/volumeMounts",
            "/spec/containers/1/volumeMounts",
            "/spec/containers/0/env/-",
            "/spec/containers/1/env"
        ]
    );
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &verdict.patch).expect("applies");
    assert_eq!(
        patched["spec"]["containers"][0]["env"][1],
        json!({"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::1:role/r"})
    );
    assert_eq!(pod(Webhook::Mutate, &patched).decision, Decision::Allowed, "idempotent");
    assert_eq!(pod(Webhook::Validate, &patched).decision, Decision::Allowed);
}

#[test]
fn collisions_are_denied_and_never_patched() {
    let cases = [
        (
            mk_pod("irsa", json!([{"name": "aws-iam-token", "emptyDir": {}}]), json!([{"name": "app"}])),
            "spec.volumes[0].name",
        ),
        (
            mk_pod(
                "irsa",
                json!([]),
                json!([{"name": "app", "volumeMounts": [{"name": "x", "mountPath": "/var/run/aws"}]}]),
            ),
            "spec.containers[0].volumeMounts[0].mountPath",
        ),
        (
            mk_pod(
                "irsa",
                json!([]),
                json!([{"name": "app", "env": [{"name": "AWS_ROLE_ARN", "value": "arn:other"}]}]),
            ),
            "spec.containers[0].env[0]",
        ),
    ];
    for (object, field) in cases {
        let verdict = pod(Webhook::Mutate, &object);
        assert_eq!(verdict.decision, Decision::Denied, "{field}");
        assert_eq!(fields(&verdict), [field]);
        assert!(verdict.patch.0.is_empty());
        assert!(verdict.response("u").patch.is_none());
    }
}

#[test]
fn an_existing_variable_with_the_same_value_is_no_collision() {
    let env = json!([{"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::1:role/r"}]);
    let object = mk_pod(
        "irsa",
        json!([token_volume("aws-iam-token", "sts.amazonaws.com", 86400)]),
        json!([{"name": "app", "env": env, "volumeMounts": [{"name": "aws-iam-token", "mountPath": "/var/run/aws"}]}]),
    );
    assert_eq!(pod(Webhook::Mutate, &object).decision, Decision::Allowed);
}

#[test]
fn an_injection_is_present_only_as_the_kubelet_and_the_runtime_see_it() {
    let volumes = json!([token_volume("aws-iam-token", "sts.amazonaws.com", 86400), {"name": "mine", "emptyDir": {}}]);
    let right = json!({"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::1:role/r"});
    let wrong = json!({"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::2:role/attacker"});
    let mount = json!({"name": "aws-iam-token", "mountPath": "/var/run/aws"});
    let cases = [
        // The kubelet keeps the last of two entries of one variable.
        (json!([{"name": "app", "env": [right, wrong], "volumeMounts": [mount]}]), "spec.containers[0].env[1]"),
        // `/var/run/aws/` is where the token is mounted, and the later mount wins there.
        (
            json!([{"name": "app", "env": [right],
                    "volumeMounts": [mount, {"name": "mine", "mountPath": "/var/run/aws/"}]}]),
            "spec.containers[0].volumeMounts[1].mountPath",
        ),
        // A mount beneath the injected path hides the token file.
        (
            json!([{"name": "app", "env": [right],
                    "volumeMounts": [mount, {"name": "mine", "mountPath": "/var/run/aws/token"}]}]),
            "spec.containers[0].volumeMounts[1].mountPath",
        ),
    ];
    for (containers, field) in cases {
        let object = mk_pod("irsa", volumes.clone(), containers);
        for webhook in [Webhook::Mutate, Webhook::Validate] {
            let verdict = pod(webhook, &object);
            assert_eq!(verdict.decision, Decision::Denied, "{field} on {webhook:?}");
            assert_eq!(fields(&verdict), [field]);
        }
    }
    // The injected mount written with a trailing slash is the same mount.
    let object = mk_pod(
        "irsa",
        volumes,
        json!([{"name": "app", "env": [wrong, right], "volumeMounts": [{"name": "aws-iam-token", "mountPath": "/var/run/aws/"}]}]),
    );
    assert_eq!(pod(Webhook::Validate, &object).decision, Decision::Allowed);
    assert_eq!(pod(Webhook::Mutate, &object).decision, Decision::Allowed);
}

#[test]
fn pod_authors_cannot_skip_required_injections() {
    let mut object = mk_pod("irsa", json!([]), json!([{"name": "app"}]));
    object["metadata"]["annotations"] = json!({SKIP_ANNOTATION: "aws"});
    let verdict = pod(Webhook::Mutate, &object);
    assert_eq!(verdict.decision, Decision::Patched);
    assert!(verdict.notes[0].contains("cannot be skipped"), "{:?}", verdict.notes);
}

#[test]
fn optional_injection_is_skipped_by_annotation_and_notes_missing_annotations() {
    let mut object = mk_pod("web", json!([]), json!([{"name": "app"}]));
    object["metadata"]["labels"] = json!({"extra": "yes"});
    let verdict = pod(Webhook::Mutate, &object);
    assert_eq!(verdict.decision, Decision::Patched);
    assert!(verdict.notes.iter().any(|n| n.contains("REGION not set")), "{:?}", verdict.notes);
    object["metadata"]["annotations"] = json!({SKIP_ANNOTATION: "other, extra"});
    assert_eq!(pod(Webhook::Mutate, &object).decision, Decision::Allowed);
}

#[test]
fn missing_required_injection_fails_validation_but_not_on_mirror_pods() {
    let mut object = mk_pod("irsa", json!([]), json!([{"name": "app"}]));
    let verdict = pod(Webhook::Validate, &object);
    assert_eq!(fields(&verdict), ["spec.volumes"]);
    assert!(verdict.violations[0].message.contains("mutating webhook"));
    object["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "abc"});
    assert_eq!(pod(Webhook::Validate, &object).decision, Decision::Allowed);
    assert_eq!(pod(Webhook::Mutate, &object).decision, Decision::Allowed);
}

#[test]
fn templates_report_collisions_but_not_missing_injections() {
    let deployment = |volumes: Value| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
               "spec": {"template": {"spec": {"serviceAccountName": "irsa", "containers": [{"name": "app"}], "volumes": volumes}}}})
    };
    let deploy = |object: &Value| run(("apps", "Deployment"), "alice", Webhook::Validate, object);
    assert_eq!(deploy(&deployment(json!([]))).decision, Decision::Allowed);
    let collision = deploy(&deployment(json!([{"name": "aws-iam-token", "emptyDir": {}}])));
    assert_eq!(fields(&collision), ["spec.template.spec.volumes[0].name"]);
    let mutate = run(("apps", "Deployment"), "alice", Webhook::Mutate, &deployment(json!([])));
    assert_eq!(mutate.decision, Decision::Ignored, "templates are never mutated");
}

fn token_request(audiences: Value, seconds: i64, bound: Value) -> Value {
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
           "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": bound}})
}

#[test]
fn node_token_requests_must_match_the_bound_pod() {
    let node = "system:node:node-1";
    let tr = |audiences: Value, bound: Value| {
        run(("authentication.k8s.io", "TokenRequest"), node, Webhook::Validate, &token_request(audiences, 3600, bound))
    };
    let bound = json!({"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u1"});
    assert_eq!(tr(json!(["vault"]), bound.clone()).decision, Decision::Allowed);
    assert_eq!(fields(&tr(json!(["vault", "sts.amazonaws.com"]), bound.clone()))[0], "spec.audiences");
    assert_eq!(fields(&tr(json!(["sts.amazonaws.com"]), bound.clone())), ["spec.audiences[0]"]);
    assert_eq!(fields(&tr(json!(["vault"]), json!({"kind": "Secret", "name": "s"}))), ["spec.boundObjectRef.kind"]);
    assert_eq!(
        fields(&tr(json!(["vault"]), json!({"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u2"}))),
        ["spec.boundObjectRef.uid"]
    );
    assert_eq!(
        fields(&tr(json!(["vault"]), json!({"apiVersion": "v1", "kind": "Pod", "name": "p"}))),
        ["spec.boundObjectRef.uid"],
        "upstream NodeRestriction refuses a pod binding without a uid"
    );
    assert_eq!(
        fields(&tr(json!(["vault"]), json!({"apiVersion": "v2", "kind": "Pod", "name": "p", "uid": "u1"}))),
        ["spec.boundObjectRef.apiVersion"]
    );
    let nameless = run(
        ("authentication.k8s.io", "TokenRequest"),
        "system:node:",
        Webhook::Validate,
        &token_request(json!(["vault"]), 3600, bound.clone()),
    );
    assert_eq!(fields(&nameless), ["userInfo.username"]);
    let other_node = run(
        ("authentication.k8s.io", "TokenRequest"),
        "system:node:node-2",
        Webhook::Validate,
        &token_request(json!(["vault"]), 3600, bound.clone()),
    );
    assert!(other_node.violations[0].message.contains("runs on node node-1, not on node node-2"));
}

#[test]
fn automount_token_requests_from_nodes_need_no_allow_list_entry() {
    let bound = json!({"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u1"});
    let request = |user: &str, audiences: Value, seconds: i64| {
        run(
            ("authentication.k8s.io", "TokenRequest"),
            user,
            Webhook::Validate,
            &token_request(audiences, seconds, bound.clone()),
        )
    };
    // Pod "p" has no automount volume: the automount-shaped request is a one-year token that
    // no entry allows, and no volume of the pod references.
    let verdict = request("system:node:node-1", json!(null), 3607);
    assert_eq!(fields(&verdict), ["spec.audiences", "spec.audiences"], "pod p has no API server token volume");
    assert!(request("alice", json!(null), 3607).violations[0].message.contains("is not allowed"));
    assert!(request("alice", json!(["https://kubernetes.default.svc.cluster.local"]), 3607).violations[0]
        .message
        .contains("the API server audience"));
}

#[test]
fn exempt_users_are_not_checked() {
    let object = mk_pod("web", json!([token_volume("a", "gcp", 3600)]), json!([{"name": "app"}]));
    assert_eq!(run(("", "Pod"), "system:admin", Webhook::Validate, &object).decision, Decision::Exempt);
}

#[test]
fn verdict_response_carries_status_warnings_and_annotations() {
    let denied = Verdict {
        subject: Subject::Pod,
        decision: Decision::Denied,
        violations: vec![
            Violation::new(rules::POD_TOKEN_AUDIENCES, "spec.volumes[0]", "bad"),
            Violation::new(rules::POD_TOKEN_AUDIENCES, "spec.volumes[1]", "worse"),
        ],
        notes: vec![],
        patch: json_patch::Patch(vec![]),
    };
    let response = denied.response("u");
    assert!(!response.allowed);
    let status = response.status.expect("status");
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(status.message, "tokengate: spec.volumes[0]: bad; spec.volumes[1]: worse");
    assert_eq!(response.audit_annotations["decision"], "denied");
}

/// A Pod CREATE review with `request.kind` before or after the object.
fn pod_review(object: &Value, kind_first: bool) -> String {
    let kind = r#""kind":{"group":"","version":"v1","kind":"Pod"}"#;
    let object = format!(r#""object":{object}"#);
    let (first, second) = if kind_first { (kind, object.as_str()) } else { (object.as_str(), kind) };
    format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u-1",{first},"namespace":"team-a","operation":"CREATE",{second},"userInfo":{{"username":"alice"}}}}}}"#
    )
}

fn answer(body: &str, webhook: Webhook) -> Vec<u8> {
    let (policy, cluster) = (policy(), cluster());
    let reply = tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(review(
        body.as_bytes(),
        webhook,
        &policy,
        &cluster,
    ));
    match reply {
        Reply::Review { body, .. } => body,
        Reply::BadRequest(message) => panic!("answered 400: {message}"),
    }
}

#[test]
fn a_pod_is_decoded_with_the_envelope_when_its_kind_comes_first() {
    let object = mk_pod("web", json!([token_volume("t", "gcp.example", 3600)]), json!([{"name": "app"}]));
    let in_order = pod_review(&object, true);
    let reordered = pod_review(&object, false);
    let decoded = |body: &str| {
        let envelope = AdmissionReviewIn::from_slice(body.as_bytes()).expect("decodes");
        matches!(envelope.request.expect("request").object, Some(RequestObject::Pod(_)))
    };
    assert!(decoded(&in_order), "kind before object: decoded in one pass");
    assert!(!decoded(&reordered), "object before kind: kept raw");
    for webhook in [Webhook::Validate, Webhook::Mutate] {
        assert_eq!(answer(&in_order, webhook), answer(&reordered, webhook), "the order of fields changes nothing");
    }
}

#[test]
fn a_pod_that_does_not_decode_is_refused_naming_the_field() {
    let object = mk_pod("web", json!("not-a-list"), json!([{"name": "app"}]));
    for kind_first in [true, false] {
        let response: Value =
            serde_json::from_slice(&answer(&pod_review(&object, kind_first), Webhook::Validate)).expect("JSON");
        assert_eq!(response["response"]["allowed"], false);
        assert_eq!(response["response"]["status"]["code"], 400);
        let message = response["response"]["status"]["message"].as_str().expect("message");
        assert!(message.contains("could not decode the Pod: spec.volumes: invalid type"), "{message}");
    }
}

#[test]
fn the_request_kind_may_not_change_after_the_object() {
    let body = pod_review(&mk_pod("web", json!([]), json!([])), true)
        .replace(r#""userInfo""#, r#""kind":{"group":"apps","version":"v1","kind":"Deployment"},"userInfo""#);
    let error = AdmissionReviewIn::from_slice(body.as_bytes()).expect_err("a second kind is refused");
    assert!(error.to_string().contains("duplicate field `kind`"), "{error}");
}

#[test]
fn null_request_fields_read_as_absent() {
    let body = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-2","kind":null,"operation":null,"userInfo":null,"name":null,"object":null}}"#;
    let request = AdmissionReviewIn::from_slice(body.as_bytes()).expect("decodes").request.expect("request");
    assert_eq!((request.uid.as_str(), request.operation.as_str(), request.kind.kind.as_str()), ("u-2", "", ""));
    assert!(request.object.is_none() && request.name.is_none());
}

#[test]
fn a_denial_lists_a_bounded_number_of_violations() {
    let volumes: Vec<Value> = (0..500).map(|i| token_volume(&format!("t{i}"), "gcp", 3600)).collect();
    let verdict = pod(Webhook::Validate, &mk_pod("web", json!(volumes), json!([{"name": "app"}])));
    assert_eq!(verdict.violations.len(), 500);
    let response = verdict.response("u");
    let message = response.status.expect("denied").message;
    assert_eq!(message.matches("is not allowed").count(), MAX_LISTED_VIOLATIONS);
    assert!(message.ends_with("; and 450 more violations"), "{}", &message[message.len() - 60..]);
    assert!(response.audit_annotations["violations"].len() < 20_000);
}
