//! `tokengate init --from-cluster`: lists what the draft reads from a live cluster (Pods,
//! workloads not owned by a controller, CSIDrivers, ServiceAccounts annotated for IRSA or Azure
//! workload identity and legacy token Secrets, both as metadata only), and the API server
//! audiences from a token the command can see.

use std::fmt::Debug;
use std::path::Path;

use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, ObjectList, PartialObjectMeta, TypeMeta};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::injectors::reads_service_account_annotation;
use crate::cluster::audiences::audiences_of_token_file;
use crate::manifest::Document;
use crate::review::legacy_token::{SERVICE_ACCOUNT_NAME_ANNOTATION, SERVICE_ACCOUNT_TOKEN_TYPE};
use crate::review::WorkloadKind;

/// Objects listed per API call.
const PAGE_SIZE: u32 = 500;

/// The API server audiences from the `aud` claim of the service-account token in `path` (in a
/// pod: its automount token); empty when there is none to read.
pub fn token_file_audiences(path: &Path) -> Vec<String> {
    audiences_of_token_file(path).unwrap_or_default()
}

/// Lists every Pod, workload not owned by a controller (a Deployment's ReplicaSets are covered
/// by the Deployment's template), CSIDriver, ServiceAccount annotated for IRSA or Azure workload
/// identity (metadata only), and legacy token Secret (selected by type on the server, metadata
/// only: no Secret's data is transferred). `progress` gets `(kind, count)`.
pub async fn list_cluster(client: Client, progress: impl Fn(&str, usize)) -> Result<Vec<Document>, kube::Error> {
    let mut documents = Vec::new();
    let driver_resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("storage.k8s.io", "v1", "CSIDriver"), "csidrivers");
    let drivers = list(&Api::<DynamicObject>::all_with(client.clone(), &driver_resource)).await?;
    progress("CSIDriver", drivers.len());
    documents.extend(drivers.into_iter().map(|d| dynamic_document(d, &driver_resource)));
    let pods = list(&Api::<Pod>::all(client.clone())).await?;
    progress("Pod", pods.len());
    documents.extend(pods.iter().map(|pod| Document::from_cluster(to_value(pod))));
    for kind in WorkloadKind::ALL {
        let (group, name) = kind.group_kind();
        let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", name), kind.plural());
        let objects = list(&Api::<DynamicObject>::all_with(client.clone(), &resource)).await?;
        progress(name, objects.len());
        for object in objects {
            let controlled = object.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true));
            if !controlled {
                documents.push(dynamic_document(object, &resource));
            }
        }
    }
    let accounts = identity_service_accounts(&client).await?;
    progress("ServiceAccount (annotated for IRSA or Azure workload identity)", accounts.len());
    documents.extend(accounts);
    let secrets = legacy_token_secrets(&client).await?;
    progress("Secret (legacy token)", secrets.len());
    documents.extend(secrets);
    Ok(documents)
}

/// The ServiceAccounts with an annotation that IRSA or Azure workload identity reads, as
/// metadata with only those annotations.
async fn identity_service_accounts(client: &Client) -> Result<Vec<Document>, kube::Error> {
    let accounts = list_metadata(&Api::<ServiceAccount>::all(client.clone()), ListParams::default()).await?;
    let documents = accounts.into_iter().filter_map(|account| {
        let annotations = account.metadata.annotations.unwrap_or_default();
        let read: serde_json::Map<String, Value> = annotations
            .into_iter()
            .filter(|(key, _)| reads_service_account_annotation(key))
            .map(|(key, value)| (key, Value::String(value)))
            .collect();
        (!read.is_empty()).then(|| {
            Document::from_cluster(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": account.metadata.name, "namespace": account.metadata.namespace, "annotations": read}}))
        })
    });
    Ok(documents.collect())
}

/// The legacy token Secrets (selected by type on the server, metadata only), each with only the
/// annotation naming its service account.
async fn legacy_token_secrets(client: &Client) -> Result<Vec<Document>, kube::Error> {
    let params = ListParams::default().fields(&format!("type={SERVICE_ACCOUNT_TOKEN_TYPE}"));
    let secrets = list_metadata(&Api::<Secret>::all(client.clone()), params).await?;
    let documents = secrets.into_iter().filter_map(|secret| {
        let annotations = secret.metadata.annotations.as_ref();
        let service_account = annotations.and_then(|a| a.get(SERVICE_ACCOUNT_NAME_ANNOTATION))?;
        Some(Document::from_cluster(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": SERVICE_ACCOUNT_TOKEN_TYPE,
            "metadata": {"name": secret.metadata.name, "namespace": secret.metadata.namespace,
                         "annotations": {SERVICE_ACCOUNT_NAME_ANNOTATION: service_account}},
        })))
    });
    Ok(documents.collect())
}

/// The metadata of every object of `api` that `params` selects.
async fn list_metadata<K>(api: &Api<K>, params: ListParams) -> Result<Vec<PartialObjectMeta<K>>, kube::Error>
where
    K: Clone + DeserializeOwned + Debug,
{
    paged(params, |params| async move { api.list_metadata(&params).await }).await
}

fn dynamic_document(mut object: DynamicObject, resource: &ApiResource) -> Document {
    object.types = Some(TypeMeta { api_version: resource.api_version.clone(), kind: resource.kind.clone() });
    Document::from_cluster(serde_json::to_value(&object).expect("a Kubernetes object serialises"))
}

/// Every object of `api`.
async fn list<K>(api: &Api<K>) -> Result<Vec<K>, kube::Error>
where
    K: Clone + DeserializeOwned + Debug,
{
    paged(ListParams::default(), |params| async move { api.list(&params).await }).await
}

/// Every item that `fetch` lists for `params`, a page of [`PAGE_SIZE`] at a time.
async fn paged<T, F, Page>(params: ListParams, fetch: F) -> Result<Vec<T>, kube::Error>
where
    T: Clone,
    F: Fn(ListParams) -> Page,
    Page: std::future::Future<Output = Result<ObjectList<T>, kube::Error>>,
{
    let mut params = params.limit(PAGE_SIZE);
    let mut objects = Vec::new();
    loop {
        let page = fetch(params.clone()).await?;
        let next = next_page(&page);
        objects.extend(page.items);
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(objects),
        }
    }
}

fn next_page<K: Clone>(page: &ObjectList<K>) -> Option<String> {
    page.metadata.continue_.clone().filter(|token| !token.is_empty())
}

/// The object as JSON, with `apiVersion` and `kind` (list items may lack them).
fn to_value<K: Resource<DynamicType = ()> + Serialize>(object: &K) -> Value {
    let mut value = serde_json::to_value(object).expect("a Kubernetes object serialises");
    value["apiVersion"] = Value::String(K::api_version(&()).to_string());
    value["kind"] = Value::String(K::kind(&()).to_string());
    value
}
