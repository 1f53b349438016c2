//! What the API server would make of an object at CREATE, offline: the ServiceAccount admission
//! plugin's automount volume, the mutating webhook's patch, the validating webhook's verdict, and
//! every lookup that found nothing, as a note. `check`, `explain`, `init` and `audit` all go
//! through here, so for the same input they see the same violations and the same notes.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::k8s;
use crate::k8s::tokens::{AUTOMOUNT_EXPIRATION_SECONDS, AUTOMOUNT_TOKEN_PATH, AUTOMOUNT_VOLUME_PREFIX};
use crate::manifest::Document;
use crate::policy::Policy;
use crate::report::{FileError, FileErrorReason, Finding, Note, ObjectRef, Report};
use crate::review::admission::{AdmissionRequest, GroupVersionKind, Operation, RequestObject, UserInfo};
use crate::review::credentials::{self, Found};
use crate::review::legacy_token::{SERVICE_ACCOUNT_NAME_ANNOTATION, SERVICE_ACCOUNT_TOKEN_TYPE};
use crate::review::lookup::{ClaimInfo, Cluster, CsiDriverInfo, Lookup, PodInfo, ServiceAccountInfo, VolumeInfo};
use crate::review::pod_view::PodView;
use crate::review::{decide, rules, Subject, Violation, Webhook, WorkloadKind};

/// How objects are read.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// The namespace of objects that name none.
    pub default_namespace: &'a str,
    /// Whether Pods and templates are first given what the API server adds before the
    /// validating webhook (manifests not yet applied), or judged as they are (objects already
    /// in a cluster). Manifests are also read as the API server's strict decoding reads them:
    /// an object with an unknown or mistyped field where tokengate reads is refused, not judged.
    pub mutate_pods_first: bool,
    /// Objects deliberately absent from the objects (defined elsewhere): a lookup of one that
    /// finds nothing is not noted.
    pub assume_present: &'a [Assumed],
}

/// An object deliberately absent from the objects given (`--assume-present
/// KIND/NAMESPACE/NAME`, or `KIND/NAME` for cluster-scoped kinds; globs in the names).
#[derive(Debug, Clone)]
pub struct Assumed {
    kind: String,
    namespace: Option<globset::GlobMatcher>,
    name: globset::GlobMatcher,
}

impl Assumed {
    /// Whether the lookup of `kind` `namespace`/`name` is covered.
    pub fn covers(&self, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let namespace_matches = match (&self.namespace, namespace) {
            (Some(glob), Some(namespace)) => glob.is_match(namespace),
            (None, None) => true,
            _ => false,
        };
        self.kind.eq_ignore_ascii_case(kind) && namespace_matches && self.name.is_match(name)
    }
}

impl std::str::FromStr for Assumed {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let compile = |pattern: &str| {
            crate::policy::globs::glob(pattern).map(|g| g.compile_matcher()).map_err(|e| format!("{pattern:?}: {e}"))
        };
        let parts: Vec<&str> = text.split('/').collect();
        let (kind, namespace, name) = match parts.as_slice() {
            [kind, name] => (kind, None, name),
            [kind, namespace, name] => (kind, Some(compile(namespace)?), name),
            _ => return Err(format!("{text:?} is not KIND/NAMESPACE/NAME (or KIND/NAME for a cluster-scoped kind)")),
        };
        if kind.is_empty() || name.is_empty() {
            return Err(format!("{text:?} names no kind or no name"));
        }
        Ok(Assumed { kind: kind.to_string(), namespace, name: compile(name)? })
    }
}

/// What offline commands read of the objects beyond what decisions look up: the CSIDrivers'
/// republish and secrets-field settings, which Secrets hold legacy tokens (their type and
/// annotations only; `data` is dropped on insertion), and the ServiceAccounts'
/// `automountServiceAccountToken`.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// `requiresRepublish` and `serviceAccountTokenInSecrets` of each CSIDriver (absent = false).
    pub drivers: HashMap<String, (bool, bool)>,
    pub legacy_secrets: HashMap<(String, String), Value>,
    /// `automountServiceAccountToken` of each ServiceAccount that sets it.
    pub service_account_automount: HashMap<(String, String), bool>,
}

impl Extras {
    /// Reads a CSIDriver, ServiceAccount or legacy token Secret (namespace-less ones are in
    /// `default_namespace`); other objects are ignored.
    pub fn insert(&mut self, object: &Value, default_namespace: &str) {
        let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
        let name = text("/metadata/name").unwrap_or_default().to_string();
        let namespace = || text("/metadata/namespace").unwrap_or(default_namespace).to_string();
        match (text("/apiVersion"), text("/kind")) {
            (Some("storage.k8s.io/v1"), Some("CSIDriver")) => {
                let flag = |pointer: &str| object.pointer(pointer).and_then(Value::as_bool) == Some(true);
                let flags = (flag("/spec/requiresRepublish"), flag("/spec/serviceAccountTokenInSecrets"));
                self.drivers.insert(name, flags);
            }
            (Some("v1"), Some("ServiceAccount")) => {
                if let Some(automount) = object.get("automountServiceAccountToken").and_then(Value::as_bool) {
                    self.service_account_automount.insert((namespace(), name), automount);
                }
            }
            (Some("v1"), Some("Secret")) if text("/type") == Some(SERVICE_ACCOUNT_TOKEN_TYPE) => {
                let namespace = namespace();
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

    /// Reads every object of `documents`.
    pub fn from_documents<'a>(documents: impl IntoIterator<Item = &'a Document>, default_namespace: &str) -> Self {
        let mut extras = Extras::default();
        for document in documents {
            extras.insert(&document.object, default_namespace);
        }
        extras
    }
}

/// An object tokengate governs: what it is and where.
#[derive(Debug, Clone)]
pub struct Classified {
    pub subject: Subject,
    pub kind: String,
    pub group: String,
    /// `None` for cluster-scoped objects (CSIDrivers).
    pub namespace: Option<String>,
    pub name: String,
}

impl Classified {
    /// `Kind namespace/name`, as comments and messages name the object.
    pub fn label(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{} {namespace}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    /// The workload kind, for a workload.
    pub fn workload(&self) -> Option<WorkloadKind> {
        match self.subject {
            Subject::Workload(kind) => Some(kind),
            _ => None,
        }
    }

    /// Whether the object is a Pod or carries a pod template.
    pub fn is_pod_like(&self) -> bool {
        matches!(self.subject, Subject::Pod | Subject::Workload(_))
    }

    /// The namespace, or `""` for cluster-scoped objects.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or_default()
    }
}

/// An object tokengate does not govern, by kind (`(no kind)` when it has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotGoverned {
    pub kind: String,
}

/// What `object` is, when tokengate governs it at CREATE (Pods, workloads, CSIDrivers, Secrets
/// of type `kubernetes.io/service-account-token`).
pub fn classify(object: &Value, default_namespace: &str) -> Result<Classified, NotGoverned> {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    let group = k8s::api_group(api_version);
    let subject = Subject::of(group, kind, None);
    let legacy_token = object.get("type").and_then(Value::as_str) == Some(SERVICE_ACCOUNT_TOKEN_TYPE);
    if matches!(subject, Subject::Other | Subject::TokenRequest) || (subject == Subject::Secret && !legacy_token) {
        return Err(NotGoverned { kind: not_governed_kind(api_version, group, kind) });
    }
    let metadata = |key: &str| object.pointer(&format!("/metadata/{key}")).and_then(Value::as_str);
    Ok(Classified {
        subject,
        kind: kind.to_string(),
        group: group.to_string(),
        namespace: (subject != Subject::CsiDriver)
            .then(|| metadata("namespace").unwrap_or(default_namespace).to_string()),
        name: metadata("name").or(metadata("generateName")).unwrap_or_default().to_string(),
    })
}

/// How a kind tokengate does not govern is counted: by its kind, with its apiVersion when a kind
/// of that name is governed in another group (a custom resource `example.com/v1 Deployment` is
/// no Deployment).
fn not_governed_kind(api_version: &str, group: &str, kind: &str) -> String {
    if kind.is_empty() {
        return "(no kind)".to_string();
    }
    let homonym = Subject::governed().any(|s| s.as_str() == kind && s.resource().is_some_and(|r| r.group != group));
    if homonym {
        format!("{kind} ({api_version})")
    } else {
        kind.to_string()
    }
}

/// The pod as the kubelet will run it (the Pod itself, or a workload's template as a Pod), and
/// the field path of its spec in the object.
pub fn pod_of(object: &Value, workload: Option<WorkloadKind>) -> (Value, String) {
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

/// What the API server would make of one object at CREATE.
#[derive(Debug, Clone)]
pub struct Created {
    /// For Pods and workloads: the pod the kubelet would run, before the mutating webhook (with
    /// the automount volume when asked to mutate first), and after its patch.
    pub pod: Option<AdmittedPod>,
    /// The validating webhook's violations, as it words them.
    pub violations: Vec<Violation>,
    /// What the webhooks tell the requester, and every lookup that found nothing.
    pub notes: Vec<String>,
}

/// A pod before and after the mutating webhook, and the field path of its spec in the object.
#[derive(Debug, Clone)]
pub struct AdmittedPod {
    pub before_mutation: Value,
    pub after_mutation: Value,
    pub spec_field: String,
}

/// What the API server does with `object` at CREATE: for a Pod or a workload's template (when
/// `mutate_pods_first`), the automount volume and the mutating webhook's patch; then the
/// validating webhook's verdict on the object (the patched Pod, or the workload as written).
pub async fn create<C: Cluster>(
    object: &Value,
    target: &Classified,
    options: Options<'_>,
    policy: &Policy,
    cluster: &C,
    extras: &Extras,
) -> Created {
    let lookups = Recorder { cluster, assumed: options.assume_present, misses: Mutex::default() };
    let mut notes = Vec::new();
    let mut violations = Vec::new();
    let pod = match target.is_pod_like() {
        true => Some(admit_pod(object, target, options, policy, &lookups, extras, &mut notes, &mut violations).await),
        false => None,
    };
    let judged = match (&pod, target.subject) {
        (Some(pod), Subject::Pod) => &pod.after_mutation,
        _ => object,
    };
    let verdict = decide_create(judged, target, Webhook::Validate, policy, &lookups).await;
    violations.extend(verdict.violations);
    let misses = lookups.misses.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    for note in verdict.notes.into_iter().chain(misses) {
        if !notes.contains(&note) {
            notes.push(note);
        }
    }
    Created { pod, violations, notes }
}

/// The pod of a Pod or workload before and after what the API server adds to it.
#[allow(clippy::too_many_arguments)]
async fn admit_pod<C: Cluster>(
    object: &Value,
    target: &Classified,
    options: Options<'_>,
    policy: &Policy,
    cluster: &C,
    extras: &Extras,
    notes: &mut Vec<String>,
    violations: &mut Vec<Violation>,
) -> AdmittedPod {
    let (mut before_mutation, spec_field) = pod_of(object, target.workload());
    if !options.mutate_pods_first {
        return AdmittedPod { after_mutation: before_mutation.clone(), before_mutation, spec_field };
    }
    add_automount_volume(&mut before_mutation, target.namespace(), extras);
    let as_pod = Classified { subject: Subject::Pod, kind: "Pod".into(), group: String::new(), ..target.clone() };
    let mutated = decide_create(&before_mutation, &as_pod, Webhook::Mutate, policy, cluster).await;
    notes.extend(mutated.notes);
    let mut after_mutation = before_mutation.clone();
    if let Err(err) = json_patch::patch(&mut after_mutation, &mutated.patch) {
        violations.push(Violation::new(
            rules::POD_INJECTIONS,
            "object",
            format!("could not apply the injection patch: {err}"),
        ));
    }
    AdmittedPod { before_mutation, after_mutation, spec_field }
}

/// The CREATE review the API server would send for `object`, decided by `webhook`.
async fn decide_create<C: Cluster>(
    object: &Value,
    target: &Classified,
    webhook: Webhook,
    policy: &Policy,
    cluster: &C,
) -> crate::review::Verdict {
    let raw: Box<RawValue> = serde_json::value::to_raw_value(object).expect("a JSON value always serialises");
    let request = AdmissionRequest {
        uid: "tokengate-offline".to_string(),
        kind: GroupVersionKind { group: target.group.clone(), version: String::new(), kind: target.kind.clone() },
        sub_resource: None,
        name: None,
        namespace: target.namespace.clone(),
        operation: Operation::Create,
        user_info: UserInfo::default(),
        object: Some(RequestObject::Raw(&raw)),
        old_object: None,
        dry_run: Some(true),
    };
    decide(&request, webhook, policy, cluster).await
}

/// Adds what the ServiceAccount admission plugin adds to a pod before any webhook sees it, when
/// the pod does not carry it yet: the automount volume, mounted into every container that has
/// nothing at its mount path, and only when one such container exists. Upstream:
/// `shouldAutomount` (the pod's `automountServiceAccountToken`, else the ServiceAccount's, else
/// true) and `mountServiceAccountToken` in plugin/pkg/admission/serviceaccount/admission.go. The
/// volume's random 5-character suffix is shown as `<random>`.
pub fn add_automount_volume(pod: &mut Value, namespace: &str, extras: &Extras) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let service_account = crate::k8s::names::service_account_named(
        spec.get("serviceAccountName").and_then(Value::as_str),
        spec.get("serviceAccount").and_then(Value::as_str),
    )
    .to_string();
    let automount = spec.get("automountServiceAccountToken").and_then(Value::as_bool).unwrap_or_else(|| {
        let key = (namespace.to_string(), service_account);
        extras.service_account_automount.get(&key).copied().unwrap_or(true)
    });
    let volumes = spec.get("volumes").and_then(Value::as_array);
    let has_one = volumes
        .into_iter()
        .flatten()
        .any(|v| v.get("name").and_then(Value::as_str).is_some_and(|n| n.starts_with(AUTOMOUNT_VOLUME_PREFIX)));
    if !automount || has_one {
        return;
    }
    let name = format!("{AUTOMOUNT_VOLUME_PREFIX}<random>");
    let mut mounted = false;
    for key in ["initContainers", "containers"] {
        for container in spec.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(container) = container.as_object_mut() else { continue };
            let mounts = container.entry("volumeMounts").or_insert_with(|| json!([]));
            let Some(mounts) = mounts.as_array_mut() else { continue };
            let taken =
                mounts.iter().any(|m| m.get("mountPath").and_then(Value::as_str) == Some(k8s::AUTOMOUNT_MOUNT_PATH));
            if !taken {
                mounts.push(json!({"name": name, "mountPath": k8s::AUTOMOUNT_MOUNT_PATH, "readOnly": true}));
                mounted = true;
            }
        }
    }
    if !mounted {
        return;
    }
    let volume = json!({"name": name, "projected": {"sources": [
        {"serviceAccountToken": {"expirationSeconds": AUTOMOUNT_EXPIRATION_SECONDS, "path": AUTOMOUNT_TOKEN_PATH}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}});
    match spec.get_mut("volumes").and_then(Value::as_array_mut) {
        Some(volumes) => volumes.push(volume),
        None => {
            spec.insert("volumes".to_string(), Value::Array(vec![volume]));
        }
    }
}

/// Judges every governed object among `documents` as the webhooks would at CREATE; the others
/// are counted by kind.
pub async fn judge<C: Cluster>(
    policy: &Policy,
    documents: &[Document],
    cluster: &C,
    extras: &Extras,
    options: Options<'_>,
) -> Report {
    let mut report = Report::empty(policy.mode().as_str());
    for document in documents {
        let target = match classify(&document.object, options.default_namespace) {
            Ok(target) => target,
            Err(NotGoverned { kind }) => {
                *report.skipped.entry(kind).or_default() += 1;
                continue;
            }
        };
        if options.mutate_pods_first {
            let refused = refused_fields(document, &target);
            if !refused.is_empty() {
                report.errors.extend(refused);
                continue;
            }
        }
        report.checked += 1;
        let place = document.place("");
        let reference = ObjectRef {
            file: place.file,
            line: place.line,
            rendered: place.rendered,
            kind: target.kind.clone(),
            namespace: target.namespace.clone(),
            name: target.name.clone(),
        };
        let created = create(&document.object, &target, options, policy, cluster, extras).await;
        report.notes.extend(created.notes.into_iter().map(|message| Note { object: reference.clone(), message }));
        report.violations.extend(created.violations.into_iter().map(|v| Finding {
            object: reference.clone(),
            rule: v.rule,
            field: v.field,
            message: v.message,
            decided: None,
        }));
    }
    report
}

/// The fields of a manifest the API server's strict decoding refuses where tokengate reads, each
/// as an error at its line: such an object never reaches admission, and what tokengate would
/// make of it is a misreading.
fn refused_fields(document: &Document, target: &Classified) -> Vec<FileError> {
    let Some(fields) = k8s::schema::object_fields(&target.group, &target.kind) else { return Vec::new() };
    let mut errors: Vec<FileError> = k8s::schema::strict_problems(&document.object, fields)
        .into_iter()
        .map(|problem| {
            let message = format!(
                "{}: {} (the API server refuses the object; it was not judged)",
                target.label(),
                problem.message
            );
            FileError::at(document.place(&problem.path), FileErrorReason::InvalidObject, message)
        })
        .collect();
    errors.sort_by_key(|e| e.line);
    errors
}

/// The tokens of CSI drivers the pod reaches through claims: `persistentVolumeClaim` volumes,
/// and generic ephemeral volumes (claim `<pod>-<volume>`, known only for a Pod), when the
/// claim and its PersistentVolume are known. Each is judged by the same code as inline drivers;
/// what could not be followed is added to `unresolved`. The Pod decision does not follow claims
/// (the kubelet's TokenRequest for such a token is what gets judged), so these are shown, not
/// counted.
pub async fn claim_credentials<'a, C: Cluster>(
    view: &PodView<'a>,
    pod: &Value,
    pod_name: Option<&str>,
    policy: &Policy,
    cluster: &C,
    unresolved: &mut Vec<String>,
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
                unresolved
                    .push(format!("volume {volume_name:?}: could not look up PersistentVolumeClaim {claim}: {err}"));
                continue;
            }
        };
        let Some(pv) = bound else {
            unresolved.push(format!(
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
            unresolved.push(format!(
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

/// A cluster that notes every lookup that finds nothing: offline, a missing object means
/// something went unchecked, not that it does not exist.
struct Recorder<'a, C> {
    cluster: &'a C,
    /// What is deliberately absent: not noted.
    assumed: &'a [Assumed],
    misses: Mutex<Vec<String>>,
}

impl<C> Recorder<'_, C> {
    /// Notes a lookup of `object` (kind, namespace, name) that found nothing, unless it is assumed
    /// present.
    fn note<T>(
        &self,
        found: Lookup<T>,
        (kind, namespace, name): (&str, Option<&str>, &str),
        missing: impl FnOnce() -> String,
    ) -> Lookup<T> {
        let assumed = self.assumed.iter().any(|a| a.covers(kind, namespace, name));
        if matches!(found, Ok(None)) && !assumed {
            let message = missing();
            let mut misses = self.misses.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if !misses.contains(&message) {
                misses.push(message);
            }
        }
        found
    }
}

impl<C: Cluster> Cluster for Recorder<'_, C> {
    async fn service_account(&self, namespace: &str, name: &str) -> Lookup<ServiceAccountInfo> {
        self.note(self.cluster.service_account(namespace, name).await, ("ServiceAccount", Some(namespace), name), || {
            format!("ServiceAccount {namespace}/{name} is not among the objects: injections that match on its annotations, and env values taken from them, were not checked")
        })
    }

    async fn csi_driver(&self, name: &str) -> Lookup<CsiDriverInfo> {
        self.note(self.cluster.csi_driver(name).await, ("CSIDriver", None, name), || {
            format!("CSIDriver {name} is not among the objects: its token requests were not checked")
        })
    }

    async fn pod(&self, namespace: &str, name: &str) -> Lookup<PodInfo> {
        self.note(self.cluster.pod(namespace, name).await, ("Pod", Some(namespace), name), || {
            format!("Pod {namespace}/{name} is not among the objects")
        })
    }

    async fn persistent_volume_claim(&self, namespace: &str, name: &str) -> Lookup<ClaimInfo> {
        let object = ("PersistentVolumeClaim", Some(namespace), name);
        self.note(self.cluster.persistent_volume_claim(namespace, name).await, object, || {
            format!("PersistentVolumeClaim {namespace}/{name} is not among the objects")
        })
    }

    async fn persistent_volume(&self, name: &str) -> Lookup<VolumeInfo> {
        self.note(self.cluster.persistent_volume(name).await, ("PersistentVolume", None, name), || {
            format!("PersistentVolume {name} is not among the objects")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_automount_volume_is_added_as_the_service_account_plugin_adds_it() {
        let pod = |automount: Option<bool>, containers: Value| {
            let mut pod = json!({"spec": {"serviceAccountName": "sa", "containers": containers}});
            if let Some(automount) = automount {
                pod["spec"]["automountServiceAccountToken"] = json!(automount);
            }
            pod
        };
        let two = || json!([{"name": "a"}, {"name": "b", "volumeMounts": [{"name": "own", "mountPath": k8s::AUTOMOUNT_MOUNT_PATH}]}]);
        let mut extras = Extras::default();
        let mut added = pod(None, two());
        add_automount_volume(&mut added, "ns", &extras);
        assert_eq!(added["spec"]["volumes"][0]["name"], "kube-api-access-<random>");
        assert_eq!(added["spec"]["containers"][0]["volumeMounts"][0]["mountPath"], k8s::AUTOMOUNT_MOUNT_PATH);
        assert_eq!(added["spec"]["containers"][1]["volumeMounts"].as_array().map(Vec::len), Some(1));
        // Every container already mounts something at the path: no volume at all.
        let mut taken = pod(
            None,
            json!([{"name": "b", "volumeMounts": [{"name": "own", "mountPath": k8s::AUTOMOUNT_MOUNT_PATH}]}]),
        );
        add_automount_volume(&mut taken, "ns", &extras);
        assert!(taken["spec"].get("volumes").is_none(), "{taken}");
        let mut off = pod(Some(false), two());
        add_automount_volume(&mut off, "ns", &extras);
        assert!(off["spec"].get("volumes").is_none());
        extras.insert(
            &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa", "namespace": "ns"},
            "automountServiceAccountToken": false}),
            "ns",
        );
        let mut by_account = pod(None, two());
        add_automount_volume(&mut by_account, "ns", &extras);
        assert!(by_account["spec"].get("volumes").is_none());
        let mut pod_wins = pod(Some(true), two());
        add_automount_volume(&mut pod_wins, "ns", &extras);
        assert!(pod_wins["spec"]["volumes"].is_array());
    }
}
