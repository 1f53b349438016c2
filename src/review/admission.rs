//! The AdmissionReview wire format: a lenient request envelope in, a response out.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::pod_view::Pod;

/// The only AdmissionReview version tokengate speaks.
pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";

/// An AdmissionReview as the API server sends it, decoded by [`AdmissionReviewIn::from_slice`].
#[derive(Debug)]
pub struct AdmissionReviewIn<'a> {
    pub api_version: String,
    pub kind: String,
    pub request: Option<AdmissionRequest<'a>>,
}

impl<'a> AdmissionReviewIn<'a> {
    /// Decodes a body in one pass: a Pod is decoded as it is read (see [`RequestObject`]). A body
    /// whose Pod does not decode is read again with the object kept raw, so that its decision
    /// can say which field is wrong.
    pub fn from_slice(body: &'a [u8]) -> serde_json::Result<Self> {
        // Checking UTF-8 once for the whole body is cheaper than string by string.
        let text =
            std::str::from_utf8(body).map_err(|err| de::Error::custom(format!("the body is not UTF-8: {err}")))?;
        serde_json::from_str::<Envelope<ReadRequest<true>>>(text)
            .map(Envelope::into_review)
            .or_else(|_| serde_json::from_str::<Envelope<ReadRequest<false>>>(text).map(Envelope::into_review))
    }

    /// [`AdmissionReviewIn::from_slice`], keeping of `request.userInfo.groups` only those in
    /// `read`, once each: a body can list millions of groups, and decisions only ask whether one
    /// of a few is among them (`system:nodes`, the policy's exempt groups).
    pub fn from_slice_reading_groups(body: &'a [u8], read: &[&str]) -> serde_json::Result<Self> {
        let read: Vec<String> = read.iter().map(|group| group.to_string()).collect();
        let previous = GROUPS_READ.with(|groups| groups.replace(Some(read)));
        let decoded = Self::from_slice(body);
        GROUPS_READ.with(|groups| groups.replace(previous));
        decoded
    }
}

thread_local! {
    /// The groups kept while a body is decoded on this thread by
    /// [`AdmissionReviewIn::from_slice_reading_groups`] (`None`: every group). Decoding is
    /// synchronous, so the setting cannot leak into another body's decoding.
    static GROUPS_READ: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

/// `userInfo.groups`: every group, or only those [`GROUPS_READ`] names, once each.
fn read_groups<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct Read;
    impl<'de> Visitor<'de> for Read {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of groups")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_seq(self)
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let Some(read) = GROUPS_READ.with(|groups| groups.borrow().clone()) else {
                let mut all = Vec::new();
                while let Some(group) = seq.next_element::<String>()? {
                    all.push(group);
                }
                return Ok(all);
            };
            let mut kept: Vec<String> = Vec::new();
            while let Some(group) = seq.next_element::<GroupName>()? {
                if let Some(found) = read.iter().find(|r| **r == group.0) {
                    if !kept.contains(found) {
                        kept.push(found.clone());
                    }
                }
            }
            Ok(kept)
        }
    }
    deserializer.deserialize_option(Read)
}

/// A group name read without an allocation of its own where the body has no escapes.
struct GroupName<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for GroupName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Read;
        impl<'de> Visitor<'de> for Read {
            type Value = GroupName<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a group name")
            }

            fn visit_borrowed_str<E: de::Error>(self, group: &'de str) -> Result<Self::Value, E> {
                Ok(GroupName(std::borrow::Cow::Borrowed(group)))
            }

            fn visit_str<E: de::Error>(self, group: &str) -> Result<Self::Value, E> {
                Ok(GroupName(std::borrow::Cow::Owned(group.to_string())))
            }
        }
        deserializer.deserialize_str(Read)
    }
}

/// `request` of an AdmissionReview.
#[derive(Debug, Default)]
pub struct AdmissionRequest<'a> {
    pub uid: String,
    pub kind: GroupVersionKind,
    pub sub_resource: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub operation: Operation,
    pub user_info: UserInfo,
    pub object: Option<RequestObject<'a>>,
    /// The object before an UPDATE; kept raw, decoded only by decisions that compare.
    pub old_object: Option<&'a RawValue>,
    pub dry_run: Option<bool>,
}

pub use crate::k8s::kinds::Operation;
use crate::k8s::tokens::{NODES_GROUP, NODE_USER_PREFIX};

/// `request.object` as it was read.
#[derive(Debug)]
pub enum RequestObject<'a> {
    /// A Pod, decoded in the same pass as the envelope because `request.kind` named a Pod
    /// before the object came: the order in which the API server writes them.
    Pod(Box<Pod>),
    /// Anything else (or a Pod whose kind came after it), decoded by its decision.
    Raw(&'a RawValue),
}

/// The envelope, generic over how its request is read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<R> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<R>,
}

impl<'a, const DECODE_PODS: bool> Envelope<ReadRequest<'a, DECODE_PODS>> {
    fn into_review(self) -> AdmissionReviewIn<'a> {
        AdmissionReviewIn { api_version: self.api_version, kind: self.kind, request: self.request.map(|r| r.0) }
    }
}

/// A request read with its Pod object decoded on the spot (`DECODE_PODS`) or kept raw.
struct ReadRequest<'a, const DECODE_PODS: bool>(AdmissionRequest<'a>);

impl<'de, const DECODE_PODS: bool> Deserialize<'de> for ReadRequest<'de, DECODE_PODS> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RequestVisitor { decode_pods: DECODE_PODS }).map(ReadRequest)
    }
}

/// The fields of `request` that tokengate reads; the others are skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum Field {
    Uid,
    Kind,
    SubResource,
    Name,
    Namespace,
    Operation,
    UserInfo,
    Object,
    OldObject,
    DryRun,
    #[serde(other)]
    Other,
}

struct RequestVisitor {
    decode_pods: bool,
}

impl<'de> Visitor<'de> for RequestVisitor {
    type Value = AdmissionRequest<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an AdmissionReview request")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut request = AdmissionRequest::default();
        let (mut uid, mut kind_seen) = (None, false);
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Uid => uid = Some(map.next_value::<String>()?),
                // The kind decides how the object is read, so it may not change afterwards.
                Field::Kind if kind_seen => return Err(de::Error::duplicate_field("kind")),
                Field::Kind => {
                    kind_seen = true;
                    request.kind = map.next_value::<Option<_>>()?.unwrap_or_default();
                }
                Field::SubResource => request.sub_resource = map.next_value()?,
                Field::Name => request.name = map.next_value()?,
                Field::Namespace => request.namespace = map.next_value()?,
                Field::Operation => request.operation = map.next_value::<Option<_>>()?.unwrap_or_default(),
                Field::UserInfo => request.user_info = map.next_value::<Option<_>>()?.unwrap_or_default(),
                Field::DryRun => request.dry_run = map.next_value()?,
                Field::Object => {
                    let kind = &request.kind;
                    let is_pod = kind.group.is_empty() && kind.kind == "Pod" && request.sub_resource.is_none();
                    request.object = if self.decode_pods && is_pod {
                        map.next_value::<Option<Pod>>()?.map(|pod| RequestObject::Pod(Box::new(pod)))
                    } else {
                        map.next_value::<Option<&RawValue>>()?.map(RequestObject::Raw)
                    };
                }
                Field::OldObject => request.old_object = map.next_value()?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        request.uid = uid.ok_or_else(|| de::Error::missing_field("uid"))?;
        Ok(request)
    }
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
    #[serde(default, deserialize_with = "read_groups")]
    pub groups: Vec<String>,
}

impl UserInfo {
    /// The node name when the caller is a kubelet (`system:node:<name>` in `system:nodes`);
    /// empty when the user names no node, which NodeRestriction refuses. Upstream:
    /// `NodeIdentity` in `pkg/auth/nodeidentifier/default.go`.
    pub fn node_name(&self) -> Option<&str> {
        let name = self.username.strip_prefix(NODE_USER_PREFIX)?;
        self.groups.iter().any(|g| g == NODES_GROUP).then_some(name)
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
