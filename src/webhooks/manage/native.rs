//! `serve --manage-webhooks --native-policies`: which admission-policy APIs the API server
//! serves, the native policies applied beside the webhooks (forced server-side apply, labelled as
//! tokengate's, fields added by hand to their specs removed), and the removal of those the policy
//! no longer needs.

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use serde_json::{json, Value};

use super::FIELD_MANAGER;
use crate::webhooks::native::ServedApis;

/// The group version of the admission-policy kinds tokengate applies and removes.
const GROUP_VERSION: &str = "admissionregistration.k8s.io/v1";

/// The label every native object tokengate applies carries (value [`MANAGED_BY`]): only objects
/// listed by it are ever removed.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "tokengate";

/// The annotation naming the configuration (`--webhook-configuration-name`) a native object
/// belongs to: two installations under different names never remove each other's objects. An
/// annotation, as a name may be longer than a label value.
pub const CONFIGURATION_ANNOTATION: &str = "tokengate.dev/webhook-configuration";

/// Every kind tokengate may have applied, `(kind, plural)`, in the order they are removed:
/// bindings before the policies they bind.
const KINDS: [(&str, &str); 4] = [
    ("ValidatingAdmissionPolicyBinding", "validatingadmissionpolicybindings"),
    ("MutatingAdmissionPolicyBinding", "mutatingadmissionpolicybindings"),
    ("ValidatingAdmissionPolicy", "validatingadmissionpolicies"),
    ("MutatingAdmissionPolicy", "mutatingadmissionpolicies"),
];

/// Why a step of the native side failed.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    /// API discovery of `admissionregistration.k8s.io/v1` failed (other than "not served").
    #[error("discovering which admission-policy APIs the API server serves: {0}")]
    Discover(#[source] kube::Error),
    /// A native object has no apiVersion, kind or name (a bug in the generator).
    #[error("a native object without apiVersion, kind or metadata.name: {0}")]
    Incomplete(String),
    /// The API server refused to apply a native object or could not be reached.
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Listing tokengate's native objects of one kind failed.
    #[error("listing {kind}s labelled {MANAGED_BY_LABEL}={MANAGED_BY}: {source}")]
    List {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    /// Deleting a native object the policy no longer needs failed.
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Which admission-policy kinds the API server serves in `admissionregistration.k8s.io/v1`
/// (each with its binding), by API discovery; a group version it does not serve serves none.
pub async fn served_apis(client: &kube::Client) -> Result<ServedApis, NativeError> {
    let resources = match client.list_api_group_resources(GROUP_VERSION).await {
        Ok(list) => list.resources,
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
        Err(source) => return Err(NativeError::Discover(source)),
    };
    let serves = |plural: &str| resources.iter().any(|resource| resource.name == plural);
    Ok(ServedApis {
        validating: serves("validatingadmissionpolicies") && serves("validatingadmissionpolicybindings"),
        mutating: serves("mutatingadmissionpolicies") && serves("mutatingadmissionpolicybindings"),
    })
}

/// `object` with tokengate's label, and the annotation naming configuration `name`, added to
/// the labels and annotations it carries.
pub fn labelled(mut object: Value, name: &str) -> Value {
    object["metadata"]["labels"][MANAGED_BY_LABEL] = json!(MANAGED_BY);
    object["metadata"]["annotations"][CONFIGURATION_ANNOTATION] = json!(name);
    object
}

/// Server-side applies every object (forced, as the webhook configurations), in order: each
/// policy before its binding. The first refusal stops it.
pub async fn apply_all(client: &kube::Client, objects: &[Value]) -> Result<(), NativeError> {
    for object in objects {
        let (api_version, kind, name) =
            match (object["apiVersion"].as_str(), object["kind"].as_str(), object["metadata"]["name"].as_str()) {
                (Some(api_version), Some(kind), Some(name)) => (api_version, kind, name),
                _ => return Err(NativeError::Incomplete(object.to_string())),
            };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource(api_version, kind));
        let failed = |source| NativeError::Apply { kind: kind.to_string(), name: name.to_string(), source };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let live = api.patch(name, &params, &Patch::Apply(object)).await.map_err(failed)?;
        let removed = super::additions::remove(&api, name, &live.data, object, "spec").await.map_err(failed)?;
        if !removed.is_empty() {
            tracing::warn!(kind, name, removed = ?removed, "removed fields that tokengate does not set from its native policy (added by hand?)");
        }
    }
    Ok(())
}

/// Deletes the native objects tokengate applied for configuration `name` that `wanted` does not
/// hold, bindings first; returns them as `Kind/name`. A kind the API server does not serve holds
/// none; so does one tokengate may not list when `forbidden_is_empty` (without
/// `--native-policies`, RBAC may not grant it: then tokengate cannot have created any either).
pub async fn remove_unwanted(
    client: &kube::Client,
    name: &str,
    wanted: &[Value],
    forbidden_is_empty: bool,
) -> Result<Vec<String>, NativeError> {
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
    let mut removed = Vec::new();
    for (kind, _) in KINDS {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource(GROUP_VERSION, kind));
        let listed = match api.list(&ListParams::default().labels(&selector)).await {
            Ok(listed) => listed.items,
            Err(kube::Error::Api(status)) if status.code == 404 => continue,
            Err(kube::Error::Api(status)) if status.code == 403 && forbidden_is_empty => {
                tracing::debug!(kind, "may not list native objects; without --native-policies none were created");
                continue;
            }
            Err(source) => return Err(NativeError::List { kind, source }),
        };
        for object in listed {
            let object_name = object.metadata.name.clone().unwrap_or_default();
            let annotations = object.metadata.annotations.as_ref();
            let ours = annotations.and_then(|a| a.get(CONFIGURATION_ANNOTATION)).is_some_and(|n| n == name);
            let still_wanted = wanted.iter().any(|w| w["kind"] == kind && w["metadata"]["name"] == object_name);
            if !ours || still_wanted {
                continue;
            }
            match api.delete(&object_name, &DeleteParams::default()).await {
                Ok(_) => removed.push(format!("{kind}/{object_name}")),
                // Gone already: another replica removed it.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => return Err(NativeError::Delete { kind, name: object_name, source }),
            }
        }
    }
    Ok(removed)
}

/// The resource of `kind` in `api_version`, with the plural the API server serves it under.
fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    match KINDS.iter().find(|(known, _)| *known == kind) {
        Some((_, plural)) => ApiResource::from_gvk_with_plural(&gvk, plural),
        None => ApiResource::from_gvk(&gvk),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_keeps_what_the_object_carries() {
        let object = json!({"metadata": {"name": "tokengate-pods", "annotations": {"a": "b"}}});
        let labelled = labelled(object, "tokengate");
        assert_eq!(
            labelled["metadata"],
            json!({"name": "tokengate-pods",
                   "labels": {MANAGED_BY_LABEL: MANAGED_BY},
                   "annotations": {"a": "b", CONFIGURATION_ANNOTATION: "tokengate"}})
        );
    }

    #[test]
    fn known_kinds_get_their_served_plural() {
        let resource = api_resource(GROUP_VERSION, "ValidatingAdmissionPolicy");
        assert_eq!(
            (resource.group.as_str(), resource.plural.as_str()),
            ("admissionregistration.k8s.io", "validatingadmissionpolicies")
        );
    }
}
