//! `tokengate explain`: every credential a pod (or each pod of a workload) will hold, and the
//! verdict on each: the `audiences` entry that allows it, or the violation as the webhook words it.
//!
//! Pods and templates go through the same `decide` the webhooks run (mutation first for
//! manifests, so injected tokens appear), and the rows come from
//! `review::credentials::pod_credentials`, the list the Pod validation takes its violations from.

pub mod live;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::manifest::Document;
use crate::policy::{describe_audience, Lifetime, Mode, Policy};
use crate::review::admission::{AdmissionRequest, GroupVersionKind, Operation, RequestObject, UserInfo};
use crate::review::automount;
use crate::review::credentials::{self, Credential, Found, Origin, Outcome};
use crate::review::legacy_token::{self, SERVICE_ACCOUNT_NAME_ANNOTATION, SERVICE_ACCOUNT_TOKEN_TYPE};
use crate::review::pod_view::{Pod, PodView};
use crate::review::{decide, Subject, Violation, Webhook, WorkloadKind};

/// The kubelet asks for a fresh token once it is older than this, whatever its lifetime.
/// Upstream: `maxTTL` in `pkg/kubelet/token/token_manager.go`.
pub const MAX_REFRESH_SECONDS: u64 = 24 * 60 * 60;

/// When the kubelet refreshes a token: at 80 % of its lifetime or after 24 h, whichever comes
/// first. Upstream, `Manager.requiresRefresh` (pkg/kubelet/token/token_manager.go) measures
/// the lifetime from `status.expirationTimestamp`, which `TokenREST.Create`
/// (pkg/registry/core/serviceaccount/storage/token.go) sets from the requested
/// `expirationSeconds` even when the token itself is extended: so an extended automount token
/// (valid one year) is still replaced about every 48 minutes. The jitter (up to 10 s) is left out.
pub fn refresh_after_seconds(lifetime: Lifetime) -> u64 {
    let requested = lifetime.requested;
    (requested - requested * 20 / 100).min(MAX_REFRESH_SECONDS)
}

/// Where a credential comes from; a closed set, in the order rows are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// The `kube-api-access-*` volume.
    Automount,
    /// A projected `serviceAccountToken` source (also those an injection adds).
    Projected,
    /// A token a CSI driver the pod reaches has the kubelet mint.
    CsiDriver,
    /// A Secret of type `kubernetes.io/service-account-token` the pod mounts.
    LegacySecret,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Automount => "automount token",
            Source::Projected => "projected token",
            Source::CsiDriver => "CSI driver token",
            Source::LegacySecret => "legacy Secret token",
        }
    }
}

/// A container that mounts the credential's volume, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub container: String,
    pub path: String,
}

/// An environment variable an injection sets, as the patched pod carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Env {
    pub container: String,
    pub name: String,
    pub value: String,
}

/// The injection a projected token volume belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InjectionRow {
    pub name: String,
    /// Whether the mutating webhook adds it (false: the pod already carries it).
    pub added_by_webhook: bool,
    pub env: Vec<Env>,
}

/// The CSI driver a token comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DriverRow {
    pub name: String,
    /// `inline`, `PersistentVolumeClaim NAME -> PersistentVolume NAME`, ...
    pub reached_through: String,
    /// `spec.requiresRepublish` of the CSIDriver, when the object is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requires_republish: Option<bool>,
    /// `spec.serviceAccountTokenInSecrets`: whether the token travels in the NodePublishVolume
    /// secrets field rather than the volume context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_in_secrets: Option<bool>,
}

/// The verdict on one credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum RowVerdict {
    /// Admitted whatever the allow-list says.
    #[serde(rename_all = "camelCase")]
    AlwaysAdmitted { reason: String },
    /// The `audiences` entry that allows it.
    #[serde(rename_all = "camelCase")]
    Allowed { entry: usize, namespaces: Vec<String>, service_accounts: Vec<String>, max_expiration_seconds: u64 },
    /// A legacy token the policy's `legacyTokens` lists.
    #[serde(rename_all = "camelCase")]
    LegacyTokenListed,
    /// The violation, as the webhook words it.
    #[serde(rename_all = "camelCase")]
    Violation { field: String, message: String },
}

/// One credential a pod will hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub source: Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// Where the credential sits in the object.
    pub field: String,
    /// The audience as written (absent: the API server audience).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Whether the audience is the API server's (`""`, absent, or in `apiServerAudiences`).
    pub api_server_audience: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_seconds: Option<u64>,
    /// What the API server issues (`None`: never expires).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_after_seconds: Option<u64>,
    pub mounts: Vec<Mount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injection: Option<InjectionRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<DriverRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The service account the token is for, `namespace/name`.
    pub service_account: String,
    pub verdict: RowVerdict,
}

/// Everything explained about one Pod or workload.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explained {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub credentials: Vec<Row>,
    /// Violations of the object that belong to no credential (a required injection missing, a
    /// collision, a lookup that failed), as the webhook words them.
    pub other_violations: Vec<Violation>,
    /// What the mutating webhook would tell the requester (e.g. a variable left out).
    pub notes: Vec<String>,
}

impl Explained {
    /// Adds the object's violations that no credential row carries, once each.
    fn add_other_violations(&mut self, decided: Vec<Violation>) {
        let in_rows: Vec<Violation> = self.violations().collect();
        let mut others: Vec<Violation> = Vec::new();
        for violation in std::mem::take(&mut self.other_violations).into_iter().chain(decided) {
            if !in_rows.contains(&violation) && !others.contains(&violation) {
                others.push(violation);
            }
        }
        self.other_violations = others;
    }

    /// Every violation of the object: the credentials' and the others.
    pub fn violations(&self) -> impl Iterator<Item = Violation> + '_ {
        let rows = self.credentials.iter().filter_map(|row| match &row.verdict {
            RowVerdict::Violation { field, message } => Some(Violation::new(field, message)),
            _ => None,
        });
        rows.chain(self.other_violations.iter().cloned())
    }
}

/// Everything `explain` found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub mode: &'static str,
    pub objects: Vec<Explained>,
    /// How many violations there are, in all objects.
    pub violations: usize,
}

impl Report {
    /// Whether a violation would be denied at admission (Enforce mode).
    pub fn fails(&self) -> bool {
        self.mode == Mode::Enforce.as_str() && self.violations > 0
    }

    /// The report for people: one block per object, one paragraph per credential.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for object in &self.objects {
            write_object(&mut out, object, self.mode);
        }
        out
    }
}

/// How [`explain`] treats the objects.
#[derive(Debug, Clone, Copy)]
pub struct ExplainOptions<'a> {
    /// The namespace of objects that name none.
    pub default_namespace: &'a str,
    /// Whether Pods and templates are first given what the mutating webhook would add
    /// (manifests), or explained as they are (a running pod).
    pub mutate_first: bool,
}

/// What explain reads of CSIDrivers and Secrets beyond what decisions look up: the CSIDrivers'
/// republish and secrets-field settings, and which Secrets hold legacy tokens (their type and
/// annotations only; `data` is dropped on insertion).
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// `requiresRepublish` and `serviceAccountTokenInSecrets` of each CSIDriver (absent = false).
    drivers: HashMap<String, (bool, bool)>,
    legacy_secrets: HashMap<(String, String), Value>,
    /// `automountServiceAccountToken` of each ServiceAccount that sets it.
    service_account_automount: HashMap<(String, String), bool>,
}

impl Extras {
    /// Reads a CSIDriver, ServiceAccount or legacy token Secret (namespace-less ones are in
    /// `default_namespace`); other objects are ignored.
    pub fn insert(&mut self, object: &Value, default_namespace: &str) {
        let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
        let name = text("/metadata/name").unwrap_or_default().to_string();
        match (text("/apiVersion"), text("/kind")) {
            (Some("storage.k8s.io/v1"), Some("CSIDriver")) => {
                let flag = |pointer: &str| object.pointer(pointer).and_then(Value::as_bool) == Some(true);
                let flags = (flag("/spec/requiresRepublish"), flag("/spec/serviceAccountTokenInSecrets"));
                self.drivers.insert(name, flags);
            }
            (Some("v1"), Some("ServiceAccount")) => {
                if let Some(automount) = object.get("automountServiceAccountToken").and_then(Value::as_bool) {
                    let namespace = text("/metadata/namespace").unwrap_or(default_namespace).to_string();
                    self.service_account_automount.insert((namespace, name), automount);
                }
            }
            (Some("v1"), Some("Secret")) if text("/type") == Some(SERVICE_ACCOUNT_TOKEN_TYPE) => {
                let namespace = text("/metadata/namespace").unwrap_or(default_namespace).to_string();
                let annotation = object
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(SERVICE_ACCOUNT_NAME_ANNOTATION))
                    .and_then(Value::as_str);
                let annotations = match annotation {
                    Some(service_account) => json!({SERVICE_ACCOUNT_NAME_ANNOTATION: service_account}),
                    None => json!({}),
                };
                let reduced = json!({
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": SERVICE_ACCOUNT_TOKEN_TYPE,
                    "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
                });
                self.legacy_secrets.insert((namespace, name), reduced);
            }
            _ => {}
        }
    }
}

/// Explains every Pod and workload among `documents`; other objects are skipped.
pub async fn explain<C: Cluster>(
    policy: &Policy,
    documents: &[Document],
    cluster: &C,
    extras: &Extras,
    options: ExplainOptions<'_>,
) -> Report {
    let mut objects = Vec::new();
    for document in documents {
        if let Some(explained) = explain_object(policy, document, cluster, extras, options).await {
            objects.push(explained);
        }
    }
    let violations = objects.iter().map(|o| o.violations().count()).sum();
    Report { mode: policy.mode().as_str(), objects, violations }
}

/// A Pod or workload: what it is and where.
pub(crate) struct Classified {
    pub kind: String,
    pub group: String,
    pub namespace: String,
    pub name: String,
    pub workload: Option<WorkloadKind>,
}

impl Classified {
    /// `Kind namespace/name`, as comments and messages name the object.
    pub fn label(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

pub(crate) fn classify(object: &Value, default_namespace: &str) -> Option<Classified> {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    let workload = match Subject::of(group, kind, None) {
        Subject::Pod => None,
        Subject::Workload(workload) => Some(workload),
        _ => return None,
    };
    let metadata = |key: &str| object.pointer(&format!("/metadata/{key}")).and_then(Value::as_str);
    Some(Classified {
        kind: kind.to_string(),
        group: group.to_string(),
        namespace: metadata("namespace").unwrap_or(default_namespace).to_string(),
        name: metadata("name").or(metadata("generateName")).unwrap_or_default().to_string(),
        workload,
    })
}

async fn explain_object<C: Cluster>(
    policy: &Policy,
    document: &Document,
    cluster: &C,
    extras: &Extras,
    options: ExplainOptions<'_>,
) -> Option<Explained> {
    let subject = classify(&document.object, options.default_namespace)?;
    let mut explained = Explained {
        file: document.file.clone(),
        kind: subject.kind.clone(),
        namespace: subject.namespace.clone(),
        name: subject.name.clone(),
        service_account: String::new(),
        credentials: Vec::new(),
        other_violations: Vec::new(),
        notes: Vec::new(),
    };
    let (original, template_field) = pod_of(&document.object, subject.workload);
    let (original, pod) =
        admitted_pod(original, &subject.namespace, policy, cluster, extras, options, &mut explained).await;
    // The decision on the object itself, as `check` takes it: the (mutated) Pod, or the workload.
    let judged = match subject.workload {
        None => pod.clone(),
        Some(_) => document.object.clone(),
    };
    let verdict =
        decide_create(&judged, &subject.group, &subject.kind, &subject.namespace, Webhook::Validate, policy, cluster)
            .await;
    let decided = verdict.violations;

    let typed: Pod = match serde_json::from_value(pod.clone()) {
        Ok(typed) => typed,
        Err(_) => {
            explained.add_other_violations(decided);
            return Some(explained);
        }
    };
    let Some(view) = PodView::new(&typed, &subject.namespace, template_field) else {
        explained.add_other_violations(decided);
        return Some(explained);
    };
    explained.service_account = view.service_account.to_string();
    let pod_name = (subject.workload.is_none()).then_some(subject.name.as_str());
    let inline = credentials::pod_credentials(&view, policy, cluster).await;
    let mut found: Vec<(Found<'_>, Option<String>)> = inline.into_iter().map(|f| (f, None)).collect();
    found.extend(claim_credentials(&view, &pod, pod_name, policy, cluster, &mut explained.notes).await);
    for (item, via) in found {
        match item {
            Found::Token(credential) => {
                let row = token_row(&view, &credential, via, (&original, &pod), policy, extras);
                explained.credentials.push(row);
            }
            Found::LookupFailed { violation, .. } => explained.other_violations.push(violation),
        }
    }
    explained.credentials.extend(legacy_rows(&view, &pod, policy, extras));
    explained.credentials.sort_by_key(|row| row.source);
    explained.add_other_violations(decided);
    Some(explained)
}

/// The pod as the webhooks receive it and as the kubelet will run it. For manifests: with the
/// automount volume the ServiceAccount admission plugin adds, then with the mutating webhook's
/// patch applied (its notes kept; its violations are the validating webhook's too, reported
/// from there). A live pod is taken as it runs.
async fn admitted_pod<C: Cluster>(
    mut original: Value,
    namespace: &str,
    policy: &Policy,
    cluster: &C,
    extras: &Extras,
    options: ExplainOptions<'_>,
    explained: &mut Explained,
) -> (Value, Value) {
    if !options.mutate_first {
        return (original.clone(), original);
    }
    add_automount_volume(&mut original, namespace, extras);
    let mut pod = original.clone();
    let verdict = decide_create(&original, "", "Pod", namespace, Webhook::Mutate, policy, cluster).await;
    explained.notes = verdict.notes;
    if let Err(err) = json_patch::patch(&mut pod, &verdict.patch) {
        let problem = Violation::new("object", format!("could not apply the injection patch: {err}"));
        explained.other_violations.push(problem);
    }
    (original, pod)
}

/// The pod as the kubelet will run it (the Pod itself, or a workload's template as a Pod), and
/// the field path of its spec in the object.
pub(crate) fn pod_of(object: &Value, workload: Option<WorkloadKind>) -> (Value, String) {
    let Some(kind) = workload else { return (object.clone(), "spec".to_string()) };
    let pointer: String = kind.template_path().iter().map(|p| format!("/{p}")).collect();
    let template = object.pointer(&pointer).cloned().unwrap_or(Value::Null);
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template.get("metadata").cloned().unwrap_or(json!({})),
        "spec": template.get("spec").cloned().unwrap_or(Value::Null),
    });
    (pod, format!("{}.spec", kind.template_path().join(".")))
}

/// Adds what the ServiceAccount admission plugin adds to a pod before any webhook sees it, when
/// the manifest does not carry it yet: the automount volume, mounted into every container that
/// has nothing at its mount path. Upstream: `shouldAutomount` (the pod's
/// `automountServiceAccountToken`, else the ServiceAccount's, else true) and
/// `mountServiceAccountToken` in plugin/pkg/admission/serviceaccount/admission.go. The volume's
/// random 5-character suffix is shown as `<random>`.
fn add_automount_volume(pod: &mut Value, namespace: &str, extras: &Extras) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let service_account = crate::cluster::service_account_named(
        spec.get("serviceAccountName").and_then(Value::as_str),
        spec.get("serviceAccount").and_then(Value::as_str),
    )
    .to_string();
    let automount = spec.get("automountServiceAccountToken").and_then(Value::as_bool).unwrap_or_else(|| {
        let key = (namespace.to_string(), service_account);
        extras.service_account_automount.get(&key).copied().unwrap_or(true)
    });
    let volumes = spec.get("volumes").and_then(Value::as_array);
    let has_one = volumes.into_iter().flatten().any(|v| {
        v.get("name").and_then(Value::as_str).is_some_and(|n| n.starts_with(automount::AUTOMOUNT_VOLUME_PREFIX))
    });
    if !automount || has_one {
        return;
    }
    let name = format!("{}<random>", automount::AUTOMOUNT_VOLUME_PREFIX);
    let volume = json!({"name": name, "projected": {"sources": [
        {"serviceAccountToken": {"expirationSeconds": automount::AUTOMOUNT_EXPIRATION_SECONDS, "path": automount::AUTOMOUNT_TOKEN_PATH}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}});
    match spec.get_mut("volumes").and_then(Value::as_array_mut) {
        Some(volumes) => volumes.push(volume),
        None => {
            spec.insert("volumes".to_string(), Value::Array(vec![volume]));
        }
    }
    for key in ["initContainers", "containers"] {
        for container in spec.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(container) = container.as_object_mut() else { continue };
            let mounts = container.entry("volumeMounts").or_insert_with(|| json!([]));
            let Some(mounts) = mounts.as_array_mut() else { continue };
            if !mounts.iter().any(|m| m.get("mountPath").and_then(Value::as_str) == Some(AUTOMOUNT_MOUNT_PATH)) {
                mounts.push(json!({"name": name, "mountPath": AUTOMOUNT_MOUNT_PATH, "readOnly": true}));
            }
        }
    }
}

/// Where the ServiceAccount admission plugin mounts the automount volume
/// (`DefaultAPITokenMountPath` upstream).
pub const AUTOMOUNT_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The CREATE review the API server would send for `object`, decided by `webhook`.
async fn decide_create<C: Cluster>(
    object: &Value,
    group: &str,
    kind: &str,
    namespace: &str,
    webhook: Webhook,
    policy: &Policy,
    cluster: &C,
) -> crate::review::Verdict {
    let raw = serde_json::value::to_raw_value(object).expect("a JSON value always serialises");
    let request = AdmissionRequest {
        uid: "tokengate-explain".to_string(),
        kind: GroupVersionKind { group: group.to_string(), version: String::new(), kind: kind.to_string() },
        sub_resource: None,
        name: None,
        namespace: Some(namespace.to_string()),
        operation: Operation::Create,
        user_info: UserInfo::default(),
        object: Some(RequestObject::Raw(&raw)),
        old_object: None,
        dry_run: Some(true),
    };
    decide(&request, webhook, policy, cluster).await
}

/// The tokens of CSI drivers the pod reaches through claims: `persistentVolumeClaim` volumes,
/// and generic ephemeral volumes (claim `<pod>-<volume>`, known only for a Pod), when the
/// claim and its PersistentVolume are known. Each is judged by the same code as inline drivers.
pub(crate) async fn claim_credentials<'a, C: Cluster>(
    view: &PodView<'a>,
    pod: &Value,
    pod_name: Option<&str>,
    policy: &Policy,
    cluster: &C,
    notes: &mut Vec<String>,
) -> Vec<(Found<'a>, Option<String>)> {
    let mut found = Vec::new();
    let volumes = pod.pointer("/spec/volumes").and_then(Value::as_array).cloned().unwrap_or_default();
    for (i, volume) in volumes.iter().enumerate() {
        let volume_name = volume.get("name").and_then(Value::as_str).unwrap_or_default();
        let (claim, key) = match (volume.pointer("/persistentVolumeClaim/claimName").and_then(Value::as_str), pod_name)
        {
            (Some(claim), _) => (claim.to_string(), "persistentVolumeClaim"),
            (None, Some(pod_name)) if volume.get("ephemeral").is_some() => {
                (format!("{pod_name}-{volume_name}"), "ephemeral")
            }
            _ => continue,
        };
        let bound = match cluster.persistent_volume_claim(view.namespace, &claim).await {
            Ok(Some(info)) => info.volume_name.clone(),
            Ok(None) => None,
            Err(err) => {
                notes.push(format!("volume {volume_name:?}: could not look up PersistentVolumeClaim {claim}: {err}"));
                continue;
            }
        };
        let Some(pv) = bound else {
            notes.push(format!(
                "volume {volume_name:?}: PersistentVolumeClaim {}/{claim} is not known or not bound; give it (and its PersistentVolume) with --objects to see its CSI driver's tokens",
                view.namespace
            ));
            continue;
        };
        let driver = match cluster.persistent_volume(&pv).await {
            Ok(Some(info)) => info.csi_driver.clone(),
            _ => None,
        };
        let Some(driver) = driver else {
            notes.push(format!(
                "volume {volume_name:?}: PersistentVolume {pv} is not known or not served by a CSI driver"
            ));
            continue;
        };
        let field = format!("{}.volumes[{i}].{key}", view.field);
        let via = format!("PersistentVolumeClaim {claim} -> PersistentVolume {pv}");
        let tokens = credentials::driver_credentials(view, policy, cluster, i, &driver, &field).await;
        found.extend(tokens.into_iter().map(|token| (token, Some(via.clone()))));
    }
    found
}

/// The row of one token the pod's volumes give it.
fn token_row(
    view: &PodView<'_>,
    credential: &Credential<'_>,
    via: Option<String>,
    (original, pod): (&Value, &Value),
    policy: &Policy,
    extras: &Extras,
) -> Row {
    let spec_field = &view.field;
    let volume = credential.origin.volume().to_string();
    let (source, field, driver) = match &credential.origin {
        Origin::Automount { volume_index, .. } => {
            (Source::Automount, format!("{spec_field}.volumes[{volume_index}]"), None)
        }
        Origin::Projected { volume_index, source_index, .. } => (
            Source::Projected,
            format!("{spec_field}.volumes[{volume_index}].projected.sources[{source_index}].serviceAccountToken"),
            None,
        ),
        Origin::CsiDriver { volume_index, driver, request_index, .. } => {
            let name = driver.clone();
            let reached_through = via.unwrap_or_else(|| "inline".to_string());
            let flags = extras.drivers.get(&name).copied();
            let (requires_republish, token_in_secrets) = (flags.map(|f| f.0), flags.map(|f| f.1));
            let field =
                format!("{spec_field}.volumes[{volume_index}] -> CSIDriver {name} spec.tokenRequests[{request_index}]");
            (Source::CsiDriver, field, Some(DriverRow { name, reached_through, requires_republish, token_in_secrets }))
        }
    };
    let token = credential.token(view);
    let verdict = match &credential.outcome {
        Outcome::AlwaysAdmitted => RowVerdict::AlwaysAdmitted {
            reason: "the automount volume (kube-api-access-*) is always admitted".to_string(),
        },
        Outcome::Allowed => match policy.allowing_entry(&token) {
            Some(entry) => RowVerdict::Allowed {
                entry: entry.index,
                namespaces: entry.namespaces.to_vec(),
                service_accounts: entry.service_accounts.to_vec(),
                max_expiration_seconds: entry.max_seconds,
            },
            None => RowVerdict::AlwaysAdmitted { reason: "allowed".to_string() },
        },
        Outcome::Denied(violation) => {
            RowVerdict::Violation { field: violation.field.clone(), message: violation.message.clone() }
        }
    };
    let injection = (source == Source::Projected).then(|| injection_row(&volume, original, pod, policy)).flatten();
    Row {
        source,
        volume: Some(volume.clone()),
        field,
        audience: credential.written_audience.clone(),
        api_server_audience: credential.audience.is_empty(),
        requested_seconds: Some(credential.lifetime.requested),
        effective_seconds: Some(credential.lifetime.effective),
        refresh_after_seconds: Some(refresh_after_seconds(credential.lifetime)),
        mounts: mounts_of(pod, &volume),
        injection,
        driver,
        secret: None,
        service_account: format!("{}/{}", view.namespace, view.service_account),
        verdict,
    }
}

/// The injection whose volume this is, and the variables it set in the patched pod.
fn injection_row(volume: &str, original: &Value, pod: &Value, policy: &Policy) -> Option<InjectionRow> {
    let injection = policy.injections().iter().find(|i| i.volume.name == volume)?;
    let had_it = volume_names(original).iter().any(|v| v == volume);
    let names: Vec<&str> = injection.env.iter().map(|e| e.name.as_str()).collect();
    let mut env = Vec::new();
    for container in containers(pod) {
        let mounts_it = container
            .get("volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|m| m.get("name").and_then(Value::as_str) == Some(volume)));
        if !mounts_it {
            continue;
        }
        let container_name = container.get("name").and_then(Value::as_str).unwrap_or_default();
        for var in container.get("env").and_then(Value::as_array).into_iter().flatten() {
            let name = var.get("name").and_then(Value::as_str).unwrap_or_default();
            if let (true, Some(value)) = (names.contains(&name), var.get("value").and_then(Value::as_str)) {
                env.push(Env {
                    container: container_name.to_string(),
                    name: name.to_string(),
                    value: value.to_string(),
                });
            }
        }
    }
    Some(InjectionRow { name: injection.name.clone(), added_by_webhook: !had_it, env })
}

/// Legacy token Secrets the pod mounts (`secret` volumes naming a known Secret of type
/// `kubernetes.io/service-account-token`), judged by the Secret decision.
fn legacy_rows(view: &PodView<'_>, pod: &Value, policy: &Policy, extras: &Extras) -> Vec<Row> {
    let volumes = pod.pointer("/spec/volumes").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut rows = Vec::new();
    for (i, volume) in volumes.iter().enumerate() {
        let Some(secret_name) = volume.pointer("/secret/secretName").and_then(Value::as_str) else { continue };
        let Some(secret) = extras.legacy_secrets.get(&(view.namespace.to_string(), secret_name.to_string())) else {
            continue;
        };
        let service_account = secret
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(SERVICE_ACCOUNT_NAME_ANNOTATION))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Ok(raw) = serde_json::value::to_raw_value(secret) else { continue };
        let findings = legacy_token::validate(&raw, None, view.namespace, policy);
        let verdict = match findings.violations.into_iter().chain(findings.undecodable).next() {
            Some(violation) => RowVerdict::Violation {
                field: format!("Secret {}/{secret_name} {}", view.namespace, violation.field),
                message: violation.message,
            },
            None => RowVerdict::LegacyTokenListed,
        };
        let volume_name = volume.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        rows.push(Row {
            source: Source::LegacySecret,
            volume: Some(volume_name.clone()),
            field: format!("{}.volumes[{i}].secret", view.field),
            audience: None,
            api_server_audience: true,
            requested_seconds: None,
            effective_seconds: None,
            refresh_after_seconds: None,
            mounts: mounts_of(pod, &volume_name),
            injection: None,
            driver: None,
            secret: Some(secret_name.to_string()),
            service_account: format!("{}/{service_account}", view.namespace),
            verdict,
        });
    }
    rows
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .filter_map(|key| pod.pointer(&format!("/spec/{key}")).and_then(Value::as_array))
        .flatten()
}

fn volume_names(pod: &Value) -> Vec<String> {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// Every container (init containers first) that mounts `volume`, and where.
fn mounts_of(pod: &Value, volume: &str) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for container in containers(pod) {
        let name = container.get("name").and_then(Value::as_str).unwrap_or_default();
        for mount in container.get("volumeMounts").and_then(Value::as_array).into_iter().flatten() {
            if mount.get("name").and_then(Value::as_str) == Some(volume) {
                let path = mount.get("mountPath").and_then(Value::as_str).unwrap_or_default();
                mounts.push(Mount { container: name.to_string(), path: path.to_string() });
            }
        }
    }
    mounts
}

fn write_object(out: &mut String, object: &Explained, mode: &str) {
    let file = object.file.as_ref().map(|f| format!(" ({})", f.display())).unwrap_or_default();
    let _ = writeln!(
        out,
        "{} {}/{}{file}: service account {}/{}",
        object.kind, object.namespace, object.name, object.namespace, object.service_account
    );
    if object.credentials.is_empty() {
        let _ = writeln!(out, "  no service-account token");
    }
    let denied = match mode {
        "Enforce" => "DENIED",
        "Warn" => "WARNED",
        _ => "AUDITED",
    };
    for row in &object.credentials {
        write_row(out, row, denied);
    }
    for violation in &object.other_violations {
        let _ = writeln!(out, "  {denied} {violation}");
    }
    for note in &object.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    out.push('\n');
}

fn write_row(out: &mut String, row: &Row, denied: &str) {
    let what = match (&row.injection, &row.driver, &row.secret) {
        (Some(injection), _, _) if injection.added_by_webhook => {
            format!("volume {}, added by injection {:?}", row.volume.as_deref().unwrap_or_default(), injection.name)
        }
        (Some(injection), _, _) => {
            format!("volume {}, of injection {:?}", row.volume.as_deref().unwrap_or_default(), injection.name)
        }
        (None, Some(driver), _) => format!(
            "driver {} through volume {} ({})",
            driver.name,
            row.volume.as_deref().unwrap_or_default(),
            driver.reached_through
        ),
        (None, None, Some(secret)) => {
            format!("Secret {secret} through volume {}", row.volume.as_deref().unwrap_or_default())
        }
        _ if row.source == Source::Automount && row.volume.as_deref().is_some_and(|v| v.ends_with("<random>")) => {
            format!(
                "volume {}, added by the API server's ServiceAccount admission plugin",
                row.volume.as_deref().unwrap_or_default()
            )
        }
        _ => format!("volume {}", row.volume.as_deref().unwrap_or_default()),
    };
    let _ = writeln!(out, "  {}: {what}", row.source.label());
    let audience = match &row.audience {
        Some(a) if !row.api_server_audience => describe_audience(a),
        Some(a) if !a.is_empty() => format!("{a:?} (an API server audience)"),
        _ => describe_audience(""),
    };
    match (row.requested_seconds, row.effective_seconds, row.refresh_after_seconds) {
        (Some(requested), Some(effective), Some(refresh)) => {
            let effective = if effective == requested {
                String::new()
            } else {
                format!(", extended by the API server to {effective} s")
            };
            let _ = writeln!(
                out,
                "    audience {audience} for {}, {requested} s{effective}; refreshed by the kubelet after {refresh} s",
                row.service_account
            );
        }
        _ => {
            let _ = writeln!(out, "    audience {audience} for {}, never expires", row.service_account);
        }
    }
    if let Some(driver) = &row.driver {
        let flag = |value: Option<bool>| value.map_or("unknown".to_string(), |v| v.to_string());
        let _ = writeln!(
            out,
            "    requiresRepublish {}, token in the secrets field {}",
            flag(driver.requires_republish),
            flag(driver.token_in_secrets)
        );
    }
    if !row.mounts.is_empty() {
        let mounts: Vec<String> = row.mounts.iter().map(|m| format!("{} at {}", m.container, m.path)).collect();
        let _ = writeln!(out, "    mounted in {}", mounts.join(", "));
    }
    if let Some(injection) = &row.injection {
        // One line per variable and value, naming every container that gets it.
        let mut lines: Vec<(&str, &str, Vec<&str>)> = Vec::new();
        for env in &injection.env {
            match lines.iter_mut().find(|(name, value, _)| *name == env.name && *value == env.value) {
                Some((_, _, containers)) => containers.push(&env.container),
                None => lines.push((&env.name, &env.value, vec![&env.container])),
            }
        }
        for (name, value, containers) in lines {
            let _ = writeln!(out, "    env {name}={value} in {}", containers.join(", "));
        }
    }
    let verdict = match &row.verdict {
        RowVerdict::AlwaysAdmitted { reason } => format!("allowed: {reason}"),
        RowVerdict::Allowed { entry, namespaces, service_accounts, max_expiration_seconds } => format!(
            "allowed by spec.audiences[{entry}] (namespaces {namespaces:?}, serviceAccounts {service_accounts:?}, up to {max_expiration_seconds} s)"
        ),
        RowVerdict::LegacyTokenListed => "allowed: spec.legacyTokens lists the service account".to_string(),
        RowVerdict::Violation { field, message } => format!("{denied} {field}: {message}"),
    };
    let _ = writeln!(out, "    {verdict}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubelet_refreshes_at_80_percent_of_the_requested_lifetime_or_after_a_day() {
        let extended = Lifetime { requested: 3607, effective: 31_536_000 };
        assert_eq!(refresh_after_seconds(extended), 2886);
        assert_eq!(refresh_after_seconds(Lifetime::as_requested(600)), 480);
        assert_eq!(refresh_after_seconds(Lifetime::as_requested(86_400)), 69_120);
        assert_eq!(refresh_after_seconds(Lifetime::as_requested(172_800)), MAX_REFRESH_SECONDS);
    }

    #[test]
    fn a_legacy_secret_is_kept_without_its_data() {
        let mut extras = Extras::default();
        extras.insert(&json!({"apiVersion": "v1", "kind": "Secret", "type": SERVICE_ACCOUNT_TOKEN_TYPE,
            "metadata": {"name": "s", "namespace": "ns", "annotations": {SERVICE_ACCOUNT_NAME_ANNOTATION: "sa", "other": "x"}},
            "data": {"token": "c2VjcmV0"}}), "ns");
        extras
            .insert(&json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "o"}}), "ns");
        let kept = &extras.legacy_secrets[&("ns".to_string(), "s".to_string())];
        assert!(kept.get("data").is_none());
        assert_eq!(kept["metadata"]["annotations"], json!({SERVICE_ACCOUNT_NAME_ANNOTATION: "sa"}));
        assert_eq!(extras.legacy_secrets.len(), 1);
    }

    #[test]
    fn the_automount_volume_is_added_unless_the_pod_or_its_service_account_opts_out() {
        let pod = |automount: Option<bool>| {
            let mut pod = json!({"spec": {"serviceAccountName": "sa", "containers": [
                {"name": "a"},
                {"name": "b", "volumeMounts": [{"name": "own", "mountPath": AUTOMOUNT_MOUNT_PATH}]}]}});
            if let Some(automount) = automount {
                pod["spec"]["automountServiceAccountToken"] = json!(automount);
            }
            pod
        };
        let mut extras = Extras::default();
        let mut added = pod(None);
        add_automount_volume(&mut added, "ns", &extras);
        assert_eq!(added["spec"]["volumes"][0]["name"], "kube-api-access-<random>");
        assert_eq!(added["spec"]["containers"][0]["volumeMounts"][0]["mountPath"], AUTOMOUNT_MOUNT_PATH);
        assert_eq!(added["spec"]["containers"][1]["volumeMounts"].as_array().map(Vec::len), Some(1));
        let mut off = pod(Some(false));
        add_automount_volume(&mut off, "ns", &extras);
        assert!(off["spec"].get("volumes").is_none());
        extras.insert(
            &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa", "namespace": "ns"},
            "automountServiceAccountToken": false}),
            "ns",
        );
        let mut by_account = pod(None);
        add_automount_volume(&mut by_account, "ns", &extras);
        assert!(by_account["spec"].get("volumes").is_none());
        let mut pod_wins = pod(Some(true));
        add_automount_volume(&mut pod_wins, "ns", &extras);
        assert!(pod_wins["spec"]["volumes"].is_array());
    }
}
