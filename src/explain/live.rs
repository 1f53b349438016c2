//! `tokengate explain --pod`: reads one pod of a live cluster and the few objects its
//! explanation looks up (its ServiceAccount, the CSIDrivers, its claims and their volumes, and
//! the legacy token Secrets of its namespace, metadata only).

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret, ServiceAccount};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde_json::{json, Value};

use super::Extras;
use crate::cluster::ObjectStore;
use crate::manifest::Document;
use crate::review::legacy_token::{SERVICE_ACCOUNT_NAME_ANNOTATION, SERVICE_ACCOUNT_TOKEN_TYPE};

/// Why a live pod could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The pod does not exist.
    #[error("pod {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    /// The API server refused or could not be reached.
    #[error("reading {what}: {source}")]
    Api { what: String, source: kube::Error },
}

/// What explaining one live pod needs: the pod, and the lookups its rows make.
pub struct LivePod {
    pub documents: Vec<Document>,
    pub store: ObjectStore,
    pub extras: Extras,
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> LiveError {
    let what = what.into();
    move |source| LiveError::Api { what, source }
}

/// Reads pod `namespace/name` and what its explanation looks up.
pub async fn fetch_pod(client: Client, namespace: &str, name: &str) -> Result<LivePod, LiveError> {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(api_error(format!("pod {namespace}/{name}")))?
        .ok_or_else(|| LiveError::NotFound { namespace: namespace.to_string(), name: name.to_string() })?;
    let pod = to_value(&pod);
    let mut store = ObjectStore::default();
    let mut extras = Extras::default();
    fetch_service_account(&client, namespace, &pod, &mut store).await?;
    fetch_csi_drivers(&client, namespace, &mut store, &mut extras).await?;
    fetch_claims(&client, namespace, name, &pod, &mut store).await?;
    let mut volumes = pod.pointer("/spec/volumes").and_then(Value::as_array).into_iter().flatten();
    if volumes.any(|volume| volume.get("secret").is_some()) {
        fetch_legacy_token_secrets(&client, namespace, &mut extras).await?;
    }
    Ok(LivePod { documents: vec![Document::from_cluster(pod)], store, extras })
}

/// Stores the service account the pod runs as (`default` when it names none), if it exists.
async fn fetch_service_account(
    client: &Client,
    namespace: &str,
    pod: &Value,
    store: &mut ObjectStore,
) -> Result<(), LiveError> {
    let service_account = pod
        .pointer("/spec/serviceAccountName")
        .or(pod.pointer("/spec/serviceAccount"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
    if let Some(account) =
        accounts.get_opt(service_account).await.map_err(api_error(format!("service account {service_account}")))?
    {
        let _ = store.insert(&to_value(&account));
    }
    Ok(())
}

/// Stores every CSIDriver, read as dynamic objects so fields newer than this build's API types
/// are kept, and notes their flags in `extras`.
async fn fetch_csi_drivers(
    client: &Client,
    namespace: &str,
    store: &mut ObjectStore,
    extras: &mut Extras,
) -> Result<(), LiveError> {
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("storage.k8s.io", "v1", "CSIDriver"), "csidrivers");
    let drivers = Api::<DynamicObject>::all_with(client.clone(), &resource)
        .list(&ListParams::default())
        .await
        .map_err(api_error("CSIDrivers"))?;
    for mut driver in drivers.items {
        driver.types = Some(kube::api::TypeMeta { api_version: "storage.k8s.io/v1".into(), kind: "CSIDriver".into() });
        let value = serde_json::to_value(&driver).expect("a Kubernetes object serialises");
        let _ = store.insert(&value);
        extras.insert(&value, namespace);
    }
    Ok(())
}

/// Stores the claims the pod's volumes use (named, or the `POD-VOLUME` claim of an ephemeral
/// volume) and the volumes they are bound to, those that exist.
async fn fetch_claims(
    client: &Client,
    namespace: &str,
    name: &str,
    pod: &Value,
    store: &mut ObjectStore,
) -> Result<(), LiveError> {
    let pod_name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(name).to_string();
    let claims_api = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace);
    let volumes_api = Api::<PersistentVolume>::all(client.clone());
    let volumes = pod.pointer("/spec/volumes").and_then(Value::as_array).cloned().unwrap_or_default();
    for volume in &volumes {
        let volume_name = volume.get("name").and_then(Value::as_str).unwrap_or_default();
        let claim = match volume.pointer("/persistentVolumeClaim/claimName").and_then(Value::as_str) {
            Some(claim) => claim.to_string(),
            None if volume.get("ephemeral").is_some() => format!("{pod_name}-{volume_name}"),
            None => continue,
        };
        let Some(claim) = claims_api.get_opt(&claim).await.map_err(api_error(format!("claim {claim}")))? else {
            continue;
        };
        let bound = claim.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|n| !n.is_empty());
        let _ = store.insert(&to_value(&claim));
        if let Some(bound) = bound {
            if let Some(pv) = volumes_api.get_opt(&bound).await.map_err(api_error(format!("volume {bound}")))? {
                let _ = store.insert(&to_value(&pv));
            }
        }
    }
    Ok(())
}

/// Notes the legacy token Secrets of the namespace in `extras`: metadata only, selected by
/// type on the server, so no Secret's data is ever transferred.
async fn fetch_legacy_token_secrets(client: &Client, namespace: &str, extras: &mut Extras) -> Result<(), LiveError> {
    let params = ListParams::default().fields(&format!("type={SERVICE_ACCOUNT_TOKEN_TYPE}"));
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace)
        .list_metadata(&params)
        .await
        .map_err(api_error("legacy token Secrets"))?;
    for secret in &secrets.items {
        let annotation = secret.metadata.annotations.as_ref().and_then(|a| a.get(SERVICE_ACCOUNT_NAME_ANNOTATION));
        extras.insert(
            &json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "type": SERVICE_ACCOUNT_TOKEN_TYPE,
                "metadata": {"name": secret.metadata.name, "namespace": namespace,
                             "annotations": {SERVICE_ACCOUNT_NAME_ANNOTATION: annotation}},
            }),
            namespace,
        );
    }
    Ok(())
}

/// The object as JSON, with `apiVersion` and `kind`.
fn to_value<K: Resource<DynamicType = ()> + Serialize>(object: &K) -> Value {
    let mut value = serde_json::to_value(object).expect("a Kubernetes object serialises");
    value["apiVersion"] = Value::String(K::api_version(&()).to_string());
    value["kind"] = Value::String(K::kind(&()).to_string());
    value
}
