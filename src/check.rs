//! `tokengate check`: judges manifests on disk as the webhooks would at admission time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::cluster::{ClaimInfo, Cluster, CsiDriverInfo, Lookup, ObjectStore, PodInfo, ServiceAccountInfo, VolumeInfo};
use crate::manifest::Document;
use crate::policy::{Mode, Policy};
use crate::review::admission::{AdmissionRequest, GroupVersionKind, Operation, RequestObject, UserInfo};
use crate::review::legacy_token::SERVICE_ACCOUNT_TOKEN_TYPE;
use crate::review::{decide, Subject, Violation, Webhook};

/// Which object a finding is about, and where it was read.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// `Kind namespace/name`.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    /// `file:line: ` (or `file: `), or nothing for objects read from a cluster.
    pub fn location(&self) -> String {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => format!("{}:{line}: ", file.display()),
            (Some(file), None) => format!("{}: ", file.display()),
            _ => String::new(),
        }
    }
}

/// One violation of one object.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    #[serde(flatten)]
    pub object: ObjectRef,
    pub field: String,
    pub message: String,
}

/// Something a check could not verify, e.g. a lookup that found nothing among the objects.
#[derive(Debug, Clone, Serialize)]
pub struct Note {
    #[serde(flatten)]
    pub object: ObjectRef,
    pub message: String,
}

/// A file that could not be read; the others were still checked.
#[derive(Debug, Clone, Serialize)]
pub struct FileError {
    pub file: PathBuf,
    pub message: String,
}

/// A kind an audit could not list, with the API server's reason.
#[derive(Debug, Clone, Serialize)]
pub struct UnreadKind {
    pub kind: String,
    pub reason: String,
}

/// Everything `check` found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The policy mode, which decides whether findings fail the check.
    pub mode: &'static str,
    /// How many objects tokengate governs were checked (Pods, workloads, CSIDrivers, legacy
    /// token Secrets).
    pub checked: usize,
    /// The objects tokengate does not govern, counted by kind (ConfigMaps, CRDs such as Argo
    /// Rollouts, Secrets of other types, ...).
    pub skipped: BTreeMap<String, usize>,
    pub violations: Vec<Finding>,
    pub notes: Vec<Note>,
    pub errors: Vec<FileError>,
    /// Kinds `audit` could not list (a 403, a kind the server does not serve): the report
    /// covers the others.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unread: Vec<UnreadKind>,
}

/// When a report fails the run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gate {
    /// Fail on violations whatever the policy mode (Warn and Audit too).
    pub fail_on_warn: bool,
    /// Fail when something could not be checked: a lookup found nothing, or no object was
    /// checked at all.
    pub strict: bool,
}

impl Report {
    /// Whether the violations would be denied at admission (Enforce mode), or the gate asks
    /// for more.
    pub fn fails(&self, gate: Gate) -> bool {
        let denied = !self.violations.is_empty() && (self.mode == Mode::Enforce.as_str() || gate.fail_on_warn);
        let unverified = gate.strict && (!self.notes.is_empty() || self.checked == 0);
        denied || unverified
    }

    /// One line per violation: `file:line: Kind namespace/name: field: message` (no location
    /// for objects read from a cluster).
    pub fn to_text(&self) -> String {
        self.violations
            .iter()
            .map(|f| format!("{}{}: {}: {}\n", f.object.location(), f.object.describe(), f.field, f.message))
            .collect()
    }

    /// What was checked and skipped, for the closing line: `checked 3 object(s): 1
    /// violation(s), policy mode Enforce; skipped 2 ConfigMap, 1 Rollout`.
    pub fn summary(&self) -> String {
        let mut summary = format!(
            "checked {} object(s): {} violation(s), policy mode {}",
            self.checked,
            self.violations.len(),
            self.mode
        );
        if !self.skipped.is_empty() {
            let skipped: Vec<String> = self.skipped.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
            summary.push_str(&format!("; not governed, skipped: {}", skipped.join(", ")));
        }
        if self.checked == 0 {
            summary.push_str("; nothing was checked");
        }
        summary
    }
}

/// How [`check`] treats the objects.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions<'a> {
    /// The namespace of objects that name none.
    pub default_namespace: &'a str,
    /// Whether Pods are first given what the mutating webhook would add (manifests not yet
    /// applied), or judged as they are (pods already running in a cluster).
    pub mutate_pods_first: bool,
}

/// Checks every Pod, workload, CSIDriver and legacy token Secret among `documents` as the
/// validating webhook would at CREATE.
pub async fn check(
    policy: &Policy,
    documents: &[Document],
    cluster: &ObjectStore,
    options: CheckOptions<'_>,
) -> Report {
    let mut report = Report {
        mode: policy.mode().as_str(),
        checked: 0,
        skipped: BTreeMap::new(),
        violations: Vec::new(),
        notes: Vec::new(),
        errors: Vec::new(),
        unread: Vec::new(),
    };
    for document in documents {
        let object = &document.object;
        let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
        let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
        let subject = Subject::of(group, kind, None);
        let legacy_token = object.get("type").and_then(Value::as_str) == Some(SERVICE_ACCOUNT_TOKEN_TYPE);
        if matches!(subject, Subject::Other | Subject::TokenRequest) || (subject == Subject::Secret && !legacy_token) {
            let kind = if kind.is_empty() { "(no kind)" } else { kind };
            *report.skipped.entry(kind.to_string()).or_default() += 1;
            continue;
        }
        report.checked += 1;
        let metadata = |key: &str| object.pointer(&format!("/metadata/{key}")).and_then(Value::as_str);
        let name = metadata("name").or(metadata("generateName")).unwrap_or_default().to_string();
        let namespace = (subject != Subject::CsiDriver)
            .then(|| metadata("namespace").unwrap_or(options.default_namespace).to_string());
        let reference = ObjectRef {
            file: document.file.clone(),
            line: document.line,
            kind: kind.to_string(),
            namespace: namespace.clone(),
            name,
        };
        let mutate_first = options.mutate_pods_first && subject == Subject::Pod;
        let lookups = Recorder { store: cluster, misses: Mutex::default() };
        let violations = match evaluate(object, mutate_first, group, kind, namespace, policy, &lookups).await {
            Ok(violations) => violations,
            Err(message) => vec![Violation::new("object", message)],
        };
        let misses = lookups.misses.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        report.notes.extend(misses.into_iter().map(|message| Note { object: reference.clone(), message }));
        report.violations.extend(violations.into_iter().map(|v| Finding {
            object: reference.clone(),
            field: v.field,
            message: v.message,
        }));
    }
    report
}

async fn evaluate<C: Cluster>(
    object: &Value,
    mutate_first: bool,
    group: &str,
    kind: &str,
    namespace: Option<String>,
    policy: &Policy,
    cluster: &C,
) -> Result<Vec<Violation>, String> {
    let mut object = object.clone();
    if mutate_first {
        let raw = serde_json::value::to_raw_value(&object).map_err(|e| e.to_string())?;
        let mutated =
            decide(&create_request(&raw, group, kind, namespace.clone()), Webhook::Mutate, policy, cluster).await;
        json_patch::patch(&mut object, &mutated.patch)
            .map_err(|e| format!("could not apply the injection patch: {e}"))?;
    }
    let raw = serde_json::value::to_raw_value(&object).map_err(|e| e.to_string())?;
    Ok(decide(&create_request(&raw, group, kind, namespace), Webhook::Validate, policy, cluster).await.violations)
}

/// The CREATE request the API server would send for `raw`.
fn create_request<'a>(raw: &'a RawValue, group: &str, kind: &str, namespace: Option<String>) -> AdmissionRequest<'a> {
    AdmissionRequest {
        uid: "tokengate-check".to_string(),
        kind: GroupVersionKind { group: group.to_string(), version: String::new(), kind: kind.to_string() },
        sub_resource: None,
        name: None,
        namespace,
        operation: Operation::Create,
        user_info: UserInfo::default(),
        object: Some(RequestObject::Raw(raw)),
        old_object: None,
        dry_run: Some(true),
    }
}

/// The offline cluster, noting every lookup that finds nothing: offline, a missing object means
/// something went unchecked, not that it does not exist.
struct Recorder<'a> {
    store: &'a ObjectStore,
    misses: Mutex<Vec<String>>,
}

impl Recorder<'_> {
    fn note<T>(&self, found: Lookup<T>, missing: impl FnOnce() -> String) -> Lookup<T> {
        if matches!(found, Ok(None)) {
            let message = missing();
            let mut misses = self.misses.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if !misses.contains(&message) {
                misses.push(message);
            }
        }
        found
    }
}

impl Cluster for Recorder<'_> {
    async fn service_account(&self, namespace: &str, name: &str) -> Lookup<ServiceAccountInfo> {
        self.note(self.store.service_account(namespace, name).await, || {
            format!("ServiceAccount {namespace}/{name} is not among the objects: injections that match on its annotations, and env values taken from them, were not checked")
        })
    }

    async fn csi_driver(&self, name: &str) -> Lookup<CsiDriverInfo> {
        self.note(self.store.csi_driver(name).await, || {
            format!("CSIDriver {name} is not among the objects: its token requests were not checked")
        })
    }

    async fn pod(&self, namespace: &str, name: &str) -> Lookup<PodInfo> {
        self.note(self.store.pod(namespace, name).await, || format!("Pod {namespace}/{name} is not among the objects"))
    }

    async fn persistent_volume_claim(&self, namespace: &str, name: &str) -> Lookup<ClaimInfo> {
        self.note(self.store.persistent_volume_claim(namespace, name).await, || {
            format!("PersistentVolumeClaim {namespace}/{name} is not among the objects")
        })
    }

    async fn persistent_volume(&self, name: &str) -> Lookup<VolumeInfo> {
        self.note(self.store.persistent_volume(name).await, || {
            format!("PersistentVolume {name} is not among the objects")
        })
    }
}
