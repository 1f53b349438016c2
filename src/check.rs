//! `tokengate check`: judges manifests on disk as the webhooks would at admission time.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::cluster::ObjectStore;
use crate::manifest::Document;
use crate::policy::{Mode, Policy};
use crate::review::admission::{AdmissionRequest, GroupVersionKind, Operation, RequestObject, UserInfo};
use crate::review::legacy_token::SERVICE_ACCOUNT_TOKEN_TYPE;
use crate::review::{decide, Subject, Violation, Webhook};

/// One violation of one object.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub field: String,
    pub message: String,
}

/// Everything `check` found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The policy mode, which decides whether findings fail the check.
    pub mode: &'static str,
    /// How many objects tokengate governs were checked (Pods, workloads, CSIDrivers).
    pub checked: usize,
    pub violations: Vec<Finding>,
}

impl Report {
    /// Whether the findings would be denied at admission (Enforce mode).
    pub fn fails(&self) -> bool {
        self.mode == Mode::Enforce.as_str() && !self.violations.is_empty()
    }

    /// One line per violation: `file: Kind namespace/name: field: message` (no `file: ` for
    /// objects read from a cluster).
    pub fn to_text(&self) -> String {
        self.violations
            .iter()
            .map(|f| {
                let object = match &f.namespace {
                    Some(ns) => format!("{ns}/{}", f.name),
                    None => f.name.clone(),
                };
                let file = f.file.as_ref().map(|file| format!("{}: ", file.display())).unwrap_or_default();
                format!("{file}{} {object}: {}: {}\n", f.kind, f.field, f.message)
            })
            .collect()
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

/// Checks every Pod, workload and CSIDriver among `documents` as the validating webhook would
/// at CREATE.
pub async fn check(
    policy: &Policy,
    documents: &[Document],
    cluster: &ObjectStore,
    options: CheckOptions<'_>,
) -> Report {
    let mut report = Report { mode: policy.mode().as_str(), checked: 0, violations: Vec::new() };
    for document in documents {
        let object = &document.object;
        let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
        let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
        let subject = Subject::of(group, kind, None);
        let legacy_token = object.get("type").and_then(Value::as_str) == Some(SERVICE_ACCOUNT_TOKEN_TYPE);
        if matches!(subject, Subject::Other | Subject::TokenRequest) || (subject == Subject::Secret && !legacy_token) {
            continue;
        }
        report.checked += 1;
        let metadata = |key: &str| object.pointer(&format!("/metadata/{key}")).and_then(Value::as_str);
        let name = metadata("name").or(metadata("generateName")).unwrap_or_default().to_string();
        let namespace = (subject != Subject::CsiDriver)
            .then(|| metadata("namespace").unwrap_or(options.default_namespace).to_string());
        let mutate_first = options.mutate_pods_first && subject == Subject::Pod;
        let violations = match evaluate(object, mutate_first, group, kind, namespace.clone(), policy, cluster).await {
            Ok(violations) => violations,
            Err(message) => vec![Violation::new("object", message)],
        };
        report.violations.extend(violations.into_iter().map(|v| Finding {
            file: document.file.clone(),
            kind: kind.to_string(),
            namespace: namespace.clone(),
            name: name.clone(),
            field: v.field,
            message: v.message,
        }));
    }
    report
}

async fn evaluate(
    object: &Value,
    mutate_first: bool,
    group: &str,
    kind: &str,
    namespace: Option<String>,
    policy: &Policy,
    cluster: &ObjectStore,
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
