//! The AdmissionReview wire format: a lenient request envelope in, a response out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The only AdmissionReview version tokengate speaks.
pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";

/// An AdmissionReview as the API server sends it; objects stay raw until a decision reads them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReviewIn<'a> {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(borrow)]
    pub request: Option<AdmissionRequest<'a>>,
}

/// `request` of an AdmissionReview.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest<'a> {
    pub uid: String,
    #[serde(default)]
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub user_info: UserInfo,
    #[serde(default, borrow)]
    pub object: Option<&'a RawValue>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// `request.kind`.
#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

/// `request.userInfo`: who is asking.
#[derive(Debug, Default, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

impl UserInfo {
    /// The node name when the caller is a kubelet (`system:node:<name>` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        let name = self.username.strip_prefix("system:node:")?;
        (!name.is_empty() && self.groups.iter().any(|g| g == "system:nodes")).then_some(name)
    }
}

/// An AdmissionReview carrying a response.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReviewOut {
    pub api_version: String,
    pub kind: String,
    pub response: AdmissionResponse,
}

/// `response` of an AdmissionReview.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Base64 of a JSON Patch document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub audit_annotations: BTreeMap<String, String>,
}

/// A `metav1.Status` explaining a refusal.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub status: String,
    pub message: String,
    pub reason: String,
    pub code: u16,
}

impl Status {
    /// A failure with an HTTP-like code and its Kubernetes reason.
    pub fn failure(code: u16, message: String) -> Self {
        let reason = match code {
            403 => "Forbidden",
            400 => "BadRequest",
            _ => "InternalError",
        };
        Self { status: "Failure".to_string(), message, reason: reason.to_string(), code }
    }
}

impl AdmissionResponse {
    /// Wraps the response in an AdmissionReview and serialises it.
    pub fn into_review_json(self) -> Vec<u8> {
        let review = AdmissionReviewOut {
            api_version: ADMISSION_API_VERSION.to_string(),
            kind: "AdmissionReview".to_string(),
            response: self,
        };
        serde_json::to_vec(&review).expect("an AdmissionReview of strings and maps always serialises")
    }
}

/// Reads just `request.uid` from a body that does not decode as a whole.
pub fn salvage_uid(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Envelope {
        request: Option<UidOnly>,
    }
    #[derive(Deserialize)]
    struct UidOnly {
        uid: Option<String>,
    }
    let envelope: Envelope = serde_json::from_slice(body).ok()?;
    envelope.request?.uid.filter(|uid| !uid.is_empty())
}
