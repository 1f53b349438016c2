//! Property tests of pod injection: generated pods and generated policies go through the
//! mutating and validating webhooks as real AdmissionReview JSON (`review::review`), every
//! patch is applied to the raw pod with `json_patch::patch`, and the result is inspected.
//!
//! The strategies only write globs whose meaning a small matcher here can state on its own
//! (`*`, `?`, one level of `{a,b}`), so the expected additions are computed independently of
//! the crate's own matching.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::pin::pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};

use base64::Engine as _;
use json_patch::{Patch, PatchOperation};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Map, Value};
use tokengate::cluster::ObjectStore;
use tokengate::policy::Policy;
use tokengate::review::{review, Reply, Webhook};

// ---------------------------------------------------------------------------------------------
// The generated cluster
// ---------------------------------------------------------------------------------------------

const NAMESPACES: [&str; 4] = ["team-a", "team-b", "prod", "ci"];
const SERVICE_ACCOUNTS: [&str; 4] = ["default", "web", "irsa", "batch"];
const ROLE_ARN: &str = "eks.amazonaws.com/role-arn";
const TENANT: &str = "example.com/tenant";
/// An annotation no service account carries.
const MISSING: &str = "example.com/missing";
const API_SERVER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
const AUDIENCES: [&str; 7] = [
    "sts.amazonaws.com",
    "vault",
    "api://AzureADTokenExchange",
    "spire-server",
    "istio-ca",
    "my-project.svc.id.goog",
    API_SERVER_AUDIENCE,
];
const CONTAINER_NAMES: [&str; 6] = ["app", "proxy", "sidecar", "worker", "istio-proxy", "init-db"];
const LABEL_KEYS: [&str; 4] = ["app", "tier", "team", "azure.workload.identity/use"];
const LABEL_VALUES: [&str; 5] = ["web", "api", "true", "false", "a"];
const SKIP_ANNOTATION: &str = "tokengate.dev/skip-injection";

/// The annotations of each service account: `irsa` carries both keys, `web` only the role
/// ARN, `batch` none, and `default` does not exist in the cluster.
fn service_account_annotations(namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
    let role = (ROLE_ARN.to_string(), format!("arn:aws:iam::111122223333:role/{namespace}-{name}"));
    match name {
        "irsa" => Some([role, (TENANT.to_string(), format!("tenant {namespace}"))].into()),
        "web" => Some([role].into()),
        "batch" => Some(BTreeMap::new()),
        _ => None,
    }
}

static CLUSTER: LazyLock<ObjectStore> = LazyLock::new(|| {
    let mut store = ObjectStore::default();
    for namespace in NAMESPACES {
        for name in SERVICE_ACCOUNTS {
            let Some(annotations) = service_account_annotations(namespace, name) else { continue };
            let sa = json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
            });
            assert!(store.insert(&sa).expect("a well-formed ServiceAccount"), "ServiceAccounts are kept");
        }
    }
    store
});

// ---------------------------------------------------------------------------------------------
// An independent glob matcher for the patterns the strategies write
// ---------------------------------------------------------------------------------------------

/// `*` (any run), `?` (one character) and one level of `{a,b}` alternatives, on ASCII names.
fn glob_matches(pattern: &str, name: &str) -> bool {
    if let (Some(open), Some(close)) = (pattern.find('{'), pattern.find('}')) {
        let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
        return pattern[open + 1..close].split(',').any(|alt| glob_matches(&format!("{head}{alt}{tail}"), name));
    }
    fn go(pattern: &[u8], name: &[u8]) -> bool {
        match pattern.split_first() {
            None => name.is_empty(),
            Some((b'*', rest)) => (0..=name.len()).any(|i| go(rest, &name[i..])),
            Some((b'?', rest)) => !name.is_empty() && go(rest, &name[1..]),
            Some((c, rest)) => name.first() == Some(c) && go(rest, &name[1..]),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// `None` (the field is absent) matches every name.
fn any_glob_matches(patterns: &Option<Vec<String>>, name: &str) -> bool {
    patterns.as_ref().is_none_or(|patterns| patterns.iter().any(|p| glob_matches(p, name)))
}

#[test]
fn the_reference_glob_matcher_agrees_with_kubernetes_style_globs() {
    let cases = [
        ("*", "anything", true),
        ("team-*", "team-a", true),
        ("team-*", "prod", false),
        ("team-?", "team-b", true),
        ("team-?", "team-bb", false),
        ("{prod,ci}", "ci", true),
        ("{prod,ci}", "team-a", false),
        ("{proxy,worker}*", "worker-2", true),
        ("side?ar*", "sidecar", true),
        ("*-1", "app-1", true),
        ("app", "app-1", false),
    ];
    for (pattern, name, expected) in cases {
        assert_eq!(glob_matches(pattern, name), expected, "{pattern} vs {name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Generated policies
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum EnvValue {
    Value(String),
    FromAnnotation(&'static str),
}

#[derive(Debug, Clone)]
struct EnvGen {
    name: String,
    value: EnvValue,
}

#[derive(Debug, Clone)]
struct InjectionGen {
    name: String,
    /// `None`: the field is left out (default true).
    required: Option<bool>,
    namespaces: Option<Vec<String>>,
    match_labels: Option<BTreeMap<String, String>>,
    sa_annotation: Option<&'static str>,
    volume_name: String,
    audience: &'static str,
    /// `None`: left out (default 3600).
    expiration: Option<u64>,
    /// `None`: left out (default `token`).
    path: Option<&'static str>,
    mount_path: String,
    containers: Option<Vec<String>>,
    /// `None`: left out (default false).
    init_containers: Option<bool>,
    env: Vec<EnvGen>,
    /// `maxExpirationSeconds` of the allow-list entry for this injection: expiration + this.
    entry_headroom: Option<u64>,
}

impl InjectionGen {
    fn required(&self) -> bool {
        self.required.unwrap_or(true)
    }

    fn expiration(&self) -> u64 {
        self.expiration.unwrap_or(3600)
    }

    fn path(&self) -> &str {
        self.path.unwrap_or("token")
    }

    fn to_json(&self) -> Value {
        let mut injection = json!({
            "name": self.name,
            "volume": {"name": self.volume_name, "audience": self.audience},
            "mount": {"mountPath": self.mount_path},
        });
        if let Some(required) = self.required {
            injection["required"] = json!(required);
        }
        let mut matcher = Map::new();
        if let Some(namespaces) = &self.namespaces {
            matcher.insert("namespaces".into(), json!(namespaces));
        }
        if let Some(labels) = &self.match_labels {
            matcher.insert("podSelector".into(), json!({"matchLabels": labels}));
        }
        if let Some(key) = self.sa_annotation {
            matcher.insert("serviceAccountAnnotation".into(), json!(key));
        }
        if !matcher.is_empty() {
            injection["match"] = Value::Object(matcher);
        }
        if let Some(seconds) = self.expiration {
            injection["volume"]["expirationSeconds"] = json!(seconds);
        }
        if let Some(path) = self.path {
            injection["volume"]["path"] = json!(path);
        }
        if let Some(containers) = &self.containers {
            injection["mount"]["containers"] = json!(containers);
        }
        if let Some(init) = self.init_containers {
            injection["mount"]["initContainers"] = json!(init);
        }
        if !self.env.is_empty() {
            let env: Vec<Value> = self
                .env
                .iter()
                .map(|var| match &var.value {
                    EnvValue::Value(value) => json!({"name": var.name, "value": value}),
                    EnvValue::FromAnnotation(key) => {
                        json!({"name": var.name, "valueFromServiceAccountAnnotation": key})
                    }
                })
                .collect();
            injection["env"] = json!(env);
        }
        injection
    }
}

#[derive(Debug, Clone)]
struct PolicyGen {
    api_server_audiences: bool,
    max_seconds: Option<u64>,
    injections: Vec<InjectionGen>,
    /// Unrelated allow-list entries: (audience, namespaces, serviceAccounts).
    unrelated: Vec<(String, Vec<String>, Vec<String>)>,
    yaml: bool,
}

impl PolicyGen {
    fn to_json(&self) -> Value {
        let mut audiences: Vec<Value> = self
            .injections
            .iter()
            .map(|injection| {
                let mut entry = json!({"audience": injection.audience});
                if let Some(headroom) = injection.entry_headroom {
                    entry["maxExpirationSeconds"] = json!(injection.expiration() + headroom);
                }
                entry
            })
            .collect();
        audiences.extend(self.unrelated.iter().map(|(audience, namespaces, service_accounts)| {
            json!({"audience": audience, "namespaces": namespaces, "serviceAccounts": service_accounts})
        }));
        let mut spec = json!({
            "mode": "Enforce",
            "audiences": audiences,
            "injections": self.injections.iter().map(InjectionGen::to_json).collect::<Vec<_>>(),
        });
        if self.api_server_audiences {
            spec["apiServerAudiences"] = json!([API_SERVER_AUDIENCE]);
        }
        if let Some(max) = self.max_seconds {
            spec["expiration"] = json!({"minSeconds": 600, "maxSeconds": max});
        }
        json!({"apiVersion": "tokengate.dev/v1alpha1", "kind": "TokenPolicy", "spec": spec})
    }

    fn text(&self) -> String {
        let document = self.to_json();
        if self.yaml {
            serde_yaml_ng::to_string(&document).expect("a JSON value is always YAML")
        } else {
            serde_json::to_string_pretty(&document).expect("a JSON value serialises")
        }
    }

    fn compile(&self) -> Policy {
        let text = self.text();
        Policy::parse(&text).unwrap_or_else(|err| panic!("the generated policy must be valid: {err}\n{text}"))
    }

    /// The audience as the webhook writes it into a volume: absent for the API server audience.
    fn written_audience<'a>(&self, audience: &'a str) -> Option<&'a str> {
        (!(self.api_server_audiences && audience == API_SERVER_AUDIENCE)).then_some(audience)
    }
}

fn namespace_glob() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*"),
        Just("team-*"),
        prop::sample::select(NAMESPACES.to_vec()),
        Just("{prod,ci}"),
        Just("team-?"),
    ]
    .prop_map(String::from)
}

fn container_glob() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*"),
        Just("app*"),
        prop::sample::select(CONTAINER_NAMES.to_vec()),
        Just("{proxy,worker}*"),
        Just("side?ar*"),
        Just("*-1"),
    ]
    .prop_map(String::from)
}

fn labels(max: usize) -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(LABEL_KEYS.to_vec()).prop_map(String::from),
        prop::sample::select(LABEL_VALUES.to_vec()).prop_map(String::from),
        0..=max,
    )
}

fn env_value() -> impl Strategy<Value = EnvValue> {
    prop_oneof![
        3 => "[ -~]{0,16}".prop_map(EnvValue::Value),
        1 => prop::sample::select(vec![ROLE_ARN, TENANT, MISSING]).prop_map(EnvValue::FromAnnotation),
    ]
}

/// Variables several injections may set, always to the same value (e.g. a region).
const SHARED_ENV: [(&str, &str); 2] = [("TOKEN_DIR", "/var/run/secrets"), ("AWS_REGION", "eu-west-1")];

/// Injection `index` of a policy; names, volume names, mount paths and env names carry the
/// index, so they are distinct across the policy's injections. With `shared_env`, it may also
/// set variables of [`SHARED_ENV`] that other injections set to the same value.
fn injection(index: usize, shared_env: bool) -> impl Strategy<Value = InjectionGen> {
    let identity = (
        prop::sample::select(vec!["aws", "azure", "vault", "spire", "gcp", "istio"]),
        prop::option::of(any::<bool>()),
        prop::option::of(prop::collection::vec(namespace_glob(), 1..=2)),
        prop::option::of(labels(2)),
        prop::option::weighted(0.2, prop::sample::select(vec![ROLE_ARN, TENANT])),
    );
    let token = (
        prop::sample::select(AUDIENCES.to_vec()),
        prop::option::of(600u64..=86_400),
        prop::option::of(prop::sample::select(vec!["token", "tok", "id/token"])),
        prop::option::of(0u64..=7200),
    );
    let mount = (
        prop::option::of(prop::collection::vec(container_glob(), 1..=2)),
        prop::option::of(any::<bool>()),
        prop::collection::vec(env_value(), 0..=3),
        prop::sample::subsequence(SHARED_ENV.to_vec(), 0..=if shared_env { SHARED_ENV.len() } else { 0 }),
    );
    (identity, token, mount).prop_map(
        move |(
            (word, required, namespaces, match_labels, sa_annotation),
            (audience, expiration, path, entry_headroom),
            (containers, init_containers, env, shared),
        )| InjectionGen {
            name: format!("{word}-identity-{index}"),
            required,
            namespaces,
            match_labels,
            sa_annotation,
            volume_name: format!("{word}-token-{index}"),
            audience,
            expiration,
            path,
            mount_path: format!("/var/run/secrets/{word}/{index}"),
            containers,
            init_containers,
            env: env
                .into_iter()
                .enumerate()
                .map(|(j, value)| EnvGen { name: format!("{}_{index}_{j}", word.to_uppercase()), value })
                .chain(
                    shared.into_iter().map(|(name, value)| EnvGen {
                        name: name.to_string(),
                        value: EnvValue::Value(value.to_string()),
                    }),
                )
                .collect(),
            entry_headroom,
        },
    )
}

fn policy(injections: std::ops::RangeInclusive<usize>, shared_env: bool) -> impl Strategy<Value = PolicyGen> {
    let unrelated = prop::collection::vec(
        (
            "[a-z]{1,8}\\.example\\.com",
            prop::collection::vec(namespace_glob(), 1..=2),
            prop::collection::vec(
                prop::sample::select(vec!["*", "web", "irsa", "*-reader"]).prop_map(String::from),
                1..=2,
            ),
        ),
        0..=2,
    );
    (
        injections.prop_flat_map(move |n| (0..n).map(|i| injection(i, shared_env)).collect::<Vec<_>>()),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![86_400u64, 172_800])),
        unrelated,
        any::<bool>(),
    )
        .prop_map(|(injections, api_server_audiences, max_seconds, unrelated, yaml)| PolicyGen {
            api_server_audiences,
            max_seconds,
            injections,
            unrelated,
            yaml,
        })
}

// ---------------------------------------------------------------------------------------------
// Generated pods
// ---------------------------------------------------------------------------------------------

/// Volumes unrelated to any injection: (name, volume, where containers mount it).
fn unrelated_volume(index: usize) -> (&'static str, Value, &'static str) {
    match index {
        0 => ("scratch", json!({"name": "scratch", "emptyDir": {}}), "/scratch"),
        1 => (
            "config",
            json!({"name": "config", "configMap": {"name": "app-config", "defaultMode": 420}}),
            "/etc/config",
        ),
        _ => (
            "kube-api-access-abcde",
            json!({"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]}}),
            "/var/run/secrets/kubernetes.io/serviceaccount",
        ),
    }
}

fn unrelated_env() -> Vec<Value> {
    vec![
        json!({"name": "LOG_LEVEL", "value": "info"}),
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}),
        json!({"name": "TZ", "value": "UTC"}),
        json!({"name": "EMPTY"}),
    ]
}

/// Arbitrary JSON for unknown fields (no floats: they need not round-trip exactly).
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z]{1,5}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn unknown_fields() -> impl Strategy<Value = Vec<Value>> {
    prop::collection::vec(arbitrary_json(), 0..=2)
}

fn insert_unknown(object: &mut Map<String, Value>, fields: Vec<Value>) {
    for (n, value) in fields.into_iter().enumerate() {
        object.insert(format!("x-extra-{n}"), value);
    }
}

#[derive(Debug, Clone)]
struct ContainerGen {
    name: String,
    sidecar: bool,
    /// `None`: no `env` key; otherwise the unrelated entries kept (maybe none).
    env: Option<Vec<Value>>,
    /// `None`: no `volumeMounts` key; otherwise which unrelated volumes to mount.
    mounts: Option<Vec<usize>>,
    unknown: Vec<Value>,
}

fn container() -> impl Strategy<Value = ContainerGen> {
    (
        prop_oneof![
            3 => prop::sample::select(CONTAINER_NAMES.to_vec()).prop_map(String::from),
            1 => "[a-z][a-z0-9]{0,6}",
        ],
        any::<bool>(),
        prop::option::of(prop::sample::subsequence(unrelated_env(), 0..=3)),
        prop::option::of(prop::sample::subsequence(vec![0usize, 1, 2], 0..=3)),
        unknown_fields(),
    )
        .prop_map(|(name, sidecar, env, mounts, unknown)| ContainerGen { name, sidecar, env, mounts, unknown })
}

#[derive(Debug, Clone)]
struct PodGen {
    generate_name: bool,
    metadata_namespace: bool,
    labels: Option<BTreeMap<String, String>>,
    /// Injections (by index into the policy's) the pod opts out of, and whether the list has
    /// spaces after commas.
    skip: Option<(Vec<Index>, bool)>,
    service_account: Option<&'static str>,
    /// `None`: no `initContainers` key; otherwise the init containers (maybe none: `[]`).
    init_containers: Option<Vec<ContainerGen>>,
    containers: Vec<ContainerGen>,
    /// `None`: no `volumes` key; otherwise which unrelated volumes the pod has.
    volumes: Option<Vec<usize>>,
    unknown_pod: Vec<Value>,
    unknown_spec: Vec<Value>,
}

fn pod() -> impl Strategy<Value = PodGen> {
    (
        (
            any::<bool>(),
            any::<bool>(),
            prop::option::of(labels(3)),
            prop::option::weighted(0.3, (prop::collection::vec(any::<Index>(), 1..=2), any::<bool>())),
            prop::option::of(prop::sample::select(SERVICE_ACCOUNTS.to_vec())),
        ),
        (
            prop::option::of(prop::collection::vec(container(), 0..=3)),
            prop::collection::vec(container(), 1..=3),
            prop::option::of(prop::sample::subsequence(vec![0usize, 1, 2], 0..=3)),
            unknown_fields(),
            unknown_fields(),
        ),
    )
        .prop_map(
            |(
                (generate_name, metadata_namespace, labels, skip, service_account),
                (init_containers, containers, volumes, unknown_pod, unknown_spec),
            )| PodGen {
                generate_name,
                metadata_namespace,
                labels,
                skip,
                service_account,
                init_containers,
                containers,
                volumes,
                unknown_pod,
                unknown_spec,
            },
        )
}

impl PodGen {
    /// The pod as the API server would send it, in `namespace`, under `policy`'s injection names.
    fn render(&self, namespace: &str, policy: &PolicyGen) -> Value {
        let mut metadata = Map::new();
        if self.generate_name {
            metadata.insert("generateName".into(), json!("web-7d9f8b6c5d-"));
        } else {
            metadata.insert("name".into(), json!("web-0"));
        }
        if self.metadata_namespace {
            metadata.insert("namespace".into(), json!(namespace));
        }
        if let Some(labels) = &self.labels {
            metadata.insert("labels".into(), json!(labels));
        }
        let mut annotations = Map::new();
        annotations.insert("kubectl.kubernetes.io/restartedAt".into(), json!("2026-11-01T10:00:00Z"));
        if let (Some((picks, spaced)), false) = (&self.skip, policy.injections.is_empty()) {
            let names: BTreeSet<&str> =
                picks.iter().map(|i| policy.injections[i.index(policy.injections.len())].name.as_str()).collect();
            let separator = if *spaced { ", " } else { "," };
            annotations.insert(SKIP_ANNOTATION.into(), json!(names.into_iter().collect::<Vec<_>>().join(separator)));
        }
        metadata.insert("annotations".into(), Value::Object(annotations));

        let volumes: Option<Vec<usize>> = self.volumes.clone();
        let present: Vec<usize> = volumes.clone().unwrap_or_default();
        let mut used_names = HashSet::new();
        let mut render_container = |c: &ContainerGen, init: bool| -> Value {
            let mut name = c.name.clone();
            let mut n = 1;
            while !used_names.insert(name.clone()) {
                name = format!("{}-{n}", c.name);
                n += 1;
            }
            let mut object = Map::new();
            object.insert("name".into(), json!(name));
            object.insert("image".into(), json!(format!("registry.example.com/{}:1.0", c.name)));
            if init && c.sidecar {
                object.insert("restartPolicy".into(), json!("Always"));
            }
            if let Some(env) = &c.env {
                object.insert("env".into(), json!(env));
            }
            if let Some(mounts) = &c.mounts {
                let mounts: Vec<Value> = mounts
                    .iter()
                    .filter(|i| present.contains(i))
                    .map(|&i| {
                        let (volume, _, path) = unrelated_volume(i);
                        json!({"name": volume, "mountPath": path, "readOnly": true})
                    })
                    .collect();
                object.insert("volumeMounts".into(), json!(mounts));
            }
            object.insert("terminationMessagePolicy".into(), json!("File"));
            insert_unknown(&mut object, c.unknown.clone());
            Value::Object(object)
        };
        let init_containers: Option<Vec<Value>> =
            self.init_containers.as_ref().map(|cs| cs.iter().map(|c| render_container(c, true)).collect());
        let containers: Vec<Value> = self.containers.iter().map(|c| render_container(c, false)).collect();

        let mut spec = Map::new();
        if let Some(sa) = self.service_account {
            spec.insert("serviceAccountName".into(), json!(sa));
        }
        if let Some(init) = init_containers {
            spec.insert("initContainers".into(), json!(init));
        }
        spec.insert("containers".into(), json!(containers));
        if let Some(volumes) = volumes {
            spec.insert("volumes".into(), volumes.iter().map(|&i| unrelated_volume(i).1).collect());
        }
        spec.insert("restartPolicy".into(), json!("Always"));
        spec.insert("dnsPolicy".into(), json!("ClusterFirst"));
        insert_unknown(&mut spec, self.unknown_spec.clone());

        let mut pod = Map::new();
        pod.insert("apiVersion".into(), json!("v1"));
        pod.insert("kind".into(), json!("Pod"));
        pod.insert("metadata".into(), Value::Object(metadata));
        pod.insert("spec".into(), Value::Object(spec));
        insert_unknown(&mut pod, self.unknown_pod.clone());
        Value::Object(pod)
    }
}

/// One generated admission: a policy, and a pod created in `namespace`.
#[derive(Debug, Clone)]
struct Case {
    policy: PolicyGen,
    namespace: &'static str,
    pod: Value,
    uid: String,
}

fn uid() -> impl Strategy<Value = String> {
    "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
}

fn case() -> impl Strategy<Value = Case> {
    (policy(0..=3, false), pod(), prop::sample::select(NAMESPACES.to_vec()), uid()).prop_map(
        |(policy, pod, namespace, uid)| {
            let pod = pod.render(namespace, &policy);
            Case { policy, namespace, pod, uid }
        },
    )
}

/// Cases built to reach injections that set the same variable: every injection applies to the
/// pod (no namespace or label restriction, a service account with every annotation), and the
/// pod opts out of some of them.
fn shared_env_case() -> impl Strategy<Value = Case> {
    (policy(2..=3, true), pod(), prop::collection::vec(any::<Index>(), 1..=2), any::<bool>(), uid()).prop_map(
        |(mut policy, mut pod, skip, spaced, uid)| {
            for injection in &mut policy.injections {
                injection.namespaces = None;
                injection.match_labels = None;
            }
            pod.service_account = Some("irsa");
            pod.skip = Some((skip, spaced));
            let namespace = NAMESPACES[0];
            let pod = pod.render(namespace, &policy);
            Case { policy, namespace, pod, uid }
        },
    )
}

/// A pod that matches injection `target` of the policy but already has a different volume
/// under its volume name.
#[derive(Debug, Clone)]
struct CollisionCase {
    case: Case,
    volume_name: String,
}

fn collision_case() -> impl Strategy<Value = CollisionCase> {
    (policy(1..=3, false), pod(), any::<Index>(), any::<Index>(), any::<Index>(), 0usize..3, uid()).prop_map(
        |(policy, mut pod, target, namespace, position, variant, uid)| {
            let injection = policy.injections[target.index(policy.injections.len())].clone();
            // Make the injection match: a namespace its globs select, its labels, and a service
            // account carrying every annotation; and no opt-out.
            let namespaces: Vec<&'static str> =
                NAMESPACES.into_iter().filter(|ns| any_glob_matches(&injection.namespaces, ns)).collect();
            let namespace = namespaces[namespace.index(namespaces.len())];
            let mut labels = pod.labels.take().unwrap_or_default();
            labels.extend(injection.match_labels.clone().unwrap_or_default());
            pod.labels = Some(labels);
            if injection.sa_annotation.is_some() {
                pod.service_account = Some("irsa");
            }
            pod.skip = None;
            let mut rendered = pod.render(namespace, &policy);

            let squatter = match variant {
                0 => json!({"name": injection.volume_name, "emptyDir": {}}),
                1 => json!({"name": injection.volume_name, "secret": {"secretName": "credentials"}}),
                _ => json!({"name": injection.volume_name, "projected": {"sources": [{"serviceAccountToken": {
                    "audience": injection.audience,
                    "expirationSeconds": injection.expiration(),
                    "path": format!("{}-other", injection.path()),
                }}]}}),
            };
            let spec = rendered["spec"].as_object_mut().expect("spec is an object");
            let volumes =
                spec.entry("volumes").or_insert_with(|| json!([])).as_array_mut().expect("volumes is an array");
            let at = position.index(volumes.len() + 1);
            volumes.insert(at, squatter);
            CollisionCase { case: Case { policy, namespace, pod: rendered, uid }, volume_name: injection.volume_name }
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Going through the webhook
// ---------------------------------------------------------------------------------------------

/// Runs a future that is ready at once (the in-memory cluster never waits).
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a review against the in-memory cluster is never pending"),
    }
}

fn admission_review(pod: &Value, namespace: &str, uid: &str) -> Vec<u8> {
    let gvk = json!({"group": "", "version": "v1", "kind": "Pod"});
    let gvr = json!({"group": "", "version": "v1", "resource": "pods"});
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    });
    serde_json::to_vec(&review).expect("a JSON value serialises")
}

/// The parts of an AdmissionReview response the properties look at.
#[derive(Debug)]
struct Answer {
    allowed: bool,
    patch: Option<Patch>,
    message: String,
}

fn ask(case: &Case, pod: &Value, webhook: Webhook, policy: &Policy) -> Result<Answer, TestCaseError> {
    let body = admission_review(pod, case.namespace, &case.uid);
    let body = match now(review(&body, webhook, policy, &*CLUSTER)) {
        Reply::Review { body, .. } => body,
        Reply::BadRequest(message) => return Err(TestCaseError::fail(format!("answered 400: {message}"))),
    };
    let answer: Value =
        serde_json::from_slice(&body).map_err(|e| TestCaseError::fail(format!("response is not JSON: {e}")))?;
    prop_assert_eq!(&answer["apiVersion"], "admission.k8s.io/v1");
    prop_assert_eq!(&answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    prop_assert_eq!(response["uid"].as_str(), Some(case.uid.as_str()), "the uid is echoed");
    let allowed = response["allowed"].as_bool().ok_or_else(|| TestCaseError::fail("response.allowed is not a bool"))?;
    let patch = match response.get("patch") {
        None => {
            prop_assert!(response.get("patchType").is_none(), "patchType without a patch: {}", response);
            None
        }
        Some(encoded) => {
            prop_assert_eq!(&response["patchType"], "JSONPatch");
            let encoded = encoded.as_str().ok_or_else(|| TestCaseError::fail("response.patch is not a string"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| TestCaseError::fail(format!("response.patch is not base64: {e}")))?;
            let patch: Patch = serde_json::from_slice(&bytes)
                .map_err(|e| TestCaseError::fail(format!("response.patch is not a JSON Patch: {e}")))?;
            prop_assert!(!patch.0.is_empty(), "an empty patch is sent as no patch");
            Some(patch)
        }
    };
    let message = response["status"]["message"].as_str().unwrap_or_default().to_string();
    Ok(Answer { allowed, patch, message })
}

/// Mutates the pod, checks the patch holds only `add` operations, and applies it.
fn mutate(case: &Case, pod: &Value, policy: &Policy) -> Result<(Answer, Value), TestCaseError> {
    let answer = ask(case, pod, Webhook::Mutate, policy)?;
    let mut patched = pod.clone();
    if let Some(patch) = &answer.patch {
        for operation in &patch.0 {
            prop_assert!(matches!(operation, PatchOperation::Add(_)), "only add operations, got {:?}", operation);
        }
        json_patch::patch(&mut patched, &patch.0)
            .map_err(|e| TestCaseError::fail(format!("the patch does not apply: {e}")))?;
    }
    Ok((answer, patched))
}

// ---------------------------------------------------------------------------------------------
// Reading pods
// ---------------------------------------------------------------------------------------------

fn array<'a>(object: &'a Value, key: &str) -> &'a [Value] {
    object.get(key).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// Every container: (`initContainers` or `containers`, the container).
fn containers(pod: &Value) -> Vec<(&'static str, &Value)> {
    let spec = &pod["spec"];
    let init = array(spec, "initContainers").iter().map(|c| ("initContainers", c));
    init.chain(array(spec, "containers").iter().map(|c| ("containers", c))).collect()
}

fn name_of(value: &Value) -> &str {
    value["name"].as_str().unwrap_or_default()
}

/// Whether the injection applies to the pod, decided from the raw pod by the model above.
fn matches(injection: &InjectionGen, pod: &Value, namespace: &str) -> bool {
    let labels = pod["metadata"]["labels"].as_object();
    let has_labels =
        injection.match_labels.iter().flatten().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(&json!(v)));
    let annotations = service_account_annotations(namespace, service_account(pod));
    let has_annotation =
        injection.sa_annotation.is_none_or(|key| annotations.as_ref().is_some_and(|a| a.contains_key(key)));
    any_glob_matches(&injection.namespaces, namespace) && has_labels && has_annotation
}

fn service_account(pod: &Value) -> &str {
    pod["spec"]["serviceAccountName"].as_str().filter(|s| !s.is_empty()).unwrap_or("default")
}

fn skipped(pod: &Value) -> Vec<String> {
    pod["metadata"]["annotations"][SKIP_ANNOTATION]
        .as_str()
        .map(|list| list.split(',').map(|n| n.trim().to_string()).collect())
        .unwrap_or_default()
}

/// The injections the mutating webhook should apply to the pod, in policy order.
fn expected_injections<'a>(policy: &'a PolicyGen, pod: &Value, namespace: &str) -> Vec<&'a InjectionGen> {
    let skipped = skipped(pod);
    policy
        .injections
        .iter()
        .filter(|injection| matches(injection, pod, namespace))
        .filter(|injection| injection.required() || !skipped.contains(&injection.name))
        .collect()
}

fn targets(injection: &InjectionGen, array_name: &str, container: &Value) -> bool {
    (array_name == "containers" || injection.init_containers.unwrap_or(false))
        && any_glob_matches(&injection.containers, name_of(container))
}

// ---------------------------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------------------------

/// `after` starts with every entry of `before`, in order (it may have grown at its end).
fn check_prefix(path: &str, before: &[Value], after: &[Value]) -> Result<(), TestCaseError> {
    prop_assert!(after.len() >= before.len(), "{}: {} entries became {}", path, before.len(), after.len());
    prop_assert_eq!(&after[..before.len()], before, "{}: the original entries, in order", path);
    Ok(())
}

/// Every field of the original pod is still there and equal, at every level; arrays the
/// webhook may append to (volumes, each container's env and volumeMounts) only grew at the end.
fn check_preserved(original: &Value, patched: &Value) -> Result<(), TestCaseError> {
    let (Some(before), Some(after)) = (original.as_object(), patched.as_object()) else {
        return Err(TestCaseError::fail("the pod is not an object"));
    };
    for (key, value) in before {
        if key != "spec" {
            prop_assert_eq!(after.get(key), Some(value), "pod field {} is unchanged", key);
        }
    }
    let (before, after) = (&original["spec"], &patched["spec"]);
    for (key, value) in before.as_object().into_iter().flatten() {
        match key.as_str() {
            "volumes" => check_prefix("spec.volumes", array(before, key), array(after, key))?,
            "containers" | "initContainers" => {
                let (cs, ds) = (array(before, key), array(after, key));
                prop_assert_eq!(cs.len(), ds.len(), "spec.{} keeps its length", key);
                for (i, (c, d)) in cs.iter().zip(ds).enumerate() {
                    for (field, value) in c.as_object().into_iter().flatten() {
                        let path = format!("spec.{key}[{i}].{field}");
                        match field.as_str() {
                            "env" | "volumeMounts" => check_prefix(&path, array(c, field), array(d, field))?,
                            _ => prop_assert_eq!(d.get(field), Some(value), "{} is unchanged", path),
                        }
                    }
                }
            }
            _ => prop_assert_eq!(after.get(key), Some(value), "spec.{} is unchanged", key),
        }
    }
    Ok(())
}

fn check_unique(patched: &Value) -> Result<(), TestCaseError> {
    let mut names = HashSet::new();
    for volume in array(&patched["spec"], "volumes") {
        prop_assert!(names.insert(name_of(volume)), "volume {} appears twice", name_of(volume));
    }
    for (array_name, container) in containers(patched) {
        let mut paths = HashSet::new();
        for mount in array(container, "volumeMounts") {
            let path = mount["mountPath"].as_str().unwrap_or_default();
            prop_assert!(paths.insert(path), "{} {} mounts {} twice", array_name, name_of(container), path);
        }
        let mut vars = HashSet::new();
        for var in array(container, "env") {
            prop_assert!(
                vars.insert(name_of(var)),
                "{} {} sets {} twice",
                array_name,
                name_of(container),
                name_of(var)
            );
        }
    }
    Ok(())
}

/// The patch added exactly the volume, mounts and env of each injection that applies.
fn check_additions(case: &Case, original: &Value, patched: &Value) -> Result<(), TestCaseError> {
    let policy = &case.policy;
    let expected = expected_injections(policy, original, case.namespace);

    let old_volumes = array(&original["spec"], "volumes").len();
    let added: BTreeMap<&str, &Value> =
        array(&patched["spec"], "volumes")[old_volumes..].iter().map(|v| (name_of(v), v)).collect();
    let wanted: BTreeSet<&str> = expected.iter().map(|i| i.volume_name.as_str()).collect();
    prop_assert_eq!(added.keys().copied().collect::<BTreeSet<_>>(), wanted, "the volumes added");
    for injection in &expected {
        let volume = added[injection.volume_name.as_str()];
        let sources = array(&volume["projected"], "sources");
        prop_assert_eq!(sources.len(), 1, "one token source in {}", volume);
        let token = &sources[0]["serviceAccountToken"];
        prop_assert_eq!(
            token["audience"].as_str(),
            policy.written_audience(injection.audience),
            "audience in {}",
            volume
        );
        prop_assert_eq!(token["expirationSeconds"].as_u64(), Some(injection.expiration()), "expiration in {}", volume);
        prop_assert_eq!(token["path"].as_str(), Some(injection.path()), "path in {}", volume);
    }

    let sa_annotations = service_account_annotations(case.namespace, service_account(original)).unwrap_or_default();
    for ((array_name, before), (_, after)) in containers(original).into_iter().zip(containers(patched)) {
        let mut mounts = BTreeSet::new();
        let mut env = BTreeSet::new();
        for injection in expected.iter().filter(|i| targets(i, array_name, before)) {
            mounts.insert((injection.volume_name.clone(), injection.mount_path.clone()));
            for var in &injection.env {
                let value = match &var.value {
                    EnvValue::Value(value) => Some(value.clone()),
                    EnvValue::FromAnnotation(key) => sa_annotations.get(*key).cloned(),
                };
                if let Some(value) = value {
                    env.insert((var.name.clone(), value));
                }
            }
        }
        let added_mounts: BTreeSet<(String, String)> = array(after, "volumeMounts")
            [array(before, "volumeMounts").len()..]
            .iter()
            .map(|m| {
                prop_assert_eq!(m["readOnly"].as_bool(), Some(true), "injected mounts are read-only: {}", m);
                Ok((name_of(m).to_string(), m["mountPath"].as_str().unwrap_or_default().to_string()))
            })
            .collect::<Result<_, TestCaseError>>()?;
        prop_assert_eq!(added_mounts, mounts, "mounts added to {} {}", array_name, name_of(before));
        let added_env: BTreeSet<(String, String)> = array(after, "env")[array(before, "env").len()..]
            .iter()
            .map(|e| (name_of(e).to_string(), e["value"].as_str().unwrap_or_default().to_string()))
            .collect();
        prop_assert_eq!(added_env, env, "env added to {} {}", array_name, name_of(before));
    }
    Ok(())
}

proptest! {
    #[test]
    fn every_generated_policy_parses(policy in policy(0..=3, true)) {
        let text = policy.text();
        if let Err(err) = Policy::parse(&text) {
            return Err(TestCaseError::fail(format!("{err}\n{text}")));
        }
    }

    #[test]
    fn mutation_only_adds_and_a_second_mutation_adds_nothing(case in case()) {
        let policy = case.policy.compile();
        let (first, patched) = mutate(&case, &case.pod, &policy)?;
        prop_assert!(first.allowed, "mutation is allowed: {}", first.message);
        let (second, again) = mutate(&case, &patched, &policy)?;
        prop_assert!(second.allowed, "the patched pod is allowed: {}", second.message);
        prop_assert!(second.patch.is_none(), "the patched pod gets another patch: {:?}", second.patch);
        prop_assert_eq!(again, patched);
    }

    #[test]
    fn mutation_keeps_every_field_and_entry_the_pod_had(case in case()) {
        let policy = case.policy.compile();
        let (_, patched) = mutate(&case, &case.pod, &policy)?;
        check_preserved(&case.pod, &patched)?;
    }

    #[test]
    fn patched_pods_have_unique_volume_names_and_mount_paths(case in case()) {
        let policy = case.policy.compile();
        let (_, patched) = mutate(&case, &case.pod, &policy)?;
        check_unique(&patched)?;
    }

    #[test]
    fn mutation_adds_exactly_what_matching_injections_require(case in case()) {
        let policy = case.policy.compile();
        let (_, patched) = mutate(&case, &case.pod, &policy)?;
        check_additions(&case, &case.pod, &patched)?;
    }

    #[test]
    fn patched_pods_pass_validation_and_unpatched_ones_only_without_required_injections(case in case()) {
        let policy = case.policy.compile();
        let (_, patched) = mutate(&case, &case.pod, &policy)?;
        let verdict = ask(&case, &patched, Webhook::Validate, &policy)?;
        prop_assert!(verdict.allowed, "the patched pod is denied: {}", verdict.message);
        prop_assert!(verdict.patch.is_none(), "the validating webhook never patches");

        let missing: Vec<&InjectionGen> = case
            .policy
            .injections
            .iter()
            .filter(|i| i.required() && matches(i, &case.pod, case.namespace))
            .collect();
        let verdict = ask(&case, &case.pod, Webhook::Validate, &policy)?;
        prop_assert_eq!(verdict.allowed, missing.is_empty(), "the unpatched pod: {}", verdict.message);
        for injection in missing {
            let named = format!("injection {:?} is required", injection.name);
            prop_assert!(verdict.message.contains(&named), "{:?} is not in {:?}", named, verdict.message);
        }
    }

    #[test]
    fn injections_setting_the_same_variable_each_get_it_even_when_one_is_skipped(case in shared_env_case()) {
        let policy = case.policy.compile();
        let (first, patched) = mutate(&case, &case.pod, &policy)?;
        prop_assert!(first.allowed, "mutation is allowed: {}", first.message);
        check_additions(&case, &case.pod, &patched)?;
        check_unique(&patched)?;
        let (second, _) = mutate(&case, &patched, &policy)?;
        prop_assert!(second.patch.is_none(), "the patched pod gets another patch: {:?}", second.patch);
    }

    #[test]
    fn a_volume_name_collision_is_denied_by_name_and_never_patched(collision in collision_case()) {
        let case = &collision.case;
        let policy = case.policy.compile();
        let quoted = format!("{:?}", collision.volume_name);
        for webhook in [Webhook::Mutate, Webhook::Validate] {
            let answer = ask(case, &case.pod, webhook, &policy)?;
            prop_assert!(!answer.allowed, "{:?} allows a pod whose volume {} collides", webhook, quoted);
            prop_assert!(answer.patch.is_none(), "{:?} patches a denied pod: {:?}", webhook, answer.patch);
            prop_assert!(answer.message.contains(&quoted), "{:?}: {} is not named in {:?}", webhook, quoted, answer.message);
        }
    }
}
