//! `tokengate init --from-cluster`: lists what the draft reads from a live cluster (Pods,
//! workloads not owned by a controller, CSIDrivers, legacy token Secrets as metadata only), and
//! the API server audiences from a token the command can see.

use std::fmt::Debug;
use std::path::Path;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, ObjectList, TypeMeta};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

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
/// by the Deployment's template), CSIDriver, and legacy token Secret (selected by type on the
/// server, metadata only: no Secret's data is transferred). `progress` gets `(kind, count)`.
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
    let api = Api::<Secret>::all(client);
    let mut params = ListParams::default().fields(&format!("type={SERVICE_ACCOUNT_TOKEN_TYPE}")).limit(PAGE_SIZE);
    let mut secrets = 0;
    loop {
        let page = api.list_metadata(&params).await?;
        for secret in &page.items {
            let annotation = secret.metadata.annotations.as_ref().and_then(|a| a.get(SERVICE_ACCOUNT_NAME_ANNOTATION));
            let Some(service_account) = annotation else { continue };
            secrets += 1;
            documents.push(Document::from_cluster(json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "type": SERVICE_ACCOUNT_TOKEN_TYPE,
                "metadata": {"name": secret.metadata.name, "namespace": secret.metadata.namespace,
                             "annotations": {SERVICE_ACCOUNT_NAME_ANNOTATION: service_account}},
            })));
        }
        match next_page(&page) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    progress("Secret (legacy token)", secrets);
    Ok(documents)
}

fn dynamic_document(mut object: DynamicObject, resource: &ApiResource) -> Document {
    object.types = Some(TypeMeta { api_version: resource.api_version.clone(), kind: resource.kind.clone() });
    Document::from_cluster(serde_json::to_value(&object).expect("a Kubernetes object serialises"))
}

/// Every object of `api`, page by page.
async fn list<K>(api: &Api<K>) -> Result<Vec<K>, kube::Error>
where
    K: Clone + DeserializeOwned + Debug,
{
    let mut params = ListParams::default().limit(PAGE_SIZE);
    let mut objects = Vec::new();
    loop {
        let page = api.list(&params).await?;
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
