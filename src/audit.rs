//! `tokengate audit`: every existing Pod, workload, CSIDriver and legacy token Secret of a live
//! cluster, judged against a policy.

use std::fmt::Debug;

use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, ObjectList};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::check::{self, CheckOptions, Report};
use crate::cluster::ObjectStore;
use crate::manifest::Document;
use crate::policy::Policy;
use crate::review::legacy_token::{SERVICE_ACCOUNT_NAME_ANNOTATION, SERVICE_ACCOUNT_TOKEN_TYPE};
use crate::review::WorkloadKind;

/// Objects listed per API call.
const PAGE_SIZE: u32 = 500;

/// Lists the cluster and checks every Pod (as it runs: no mutation is simulated), every
/// workload not owned by a controller (a ReplicaSet of a Deployment is judged through its
/// Deployment), every CSIDriver, and every legacy token Secret (listed by type, metadata only:
/// their data is never read). `progress` receives `(kind, count)` after each kind.
pub async fn audit(client: Client, policy: &Policy, progress: impl Fn(&str, usize)) -> Result<Report, kube::Error> {
    let mut lookups = ObjectStore::default();
    let accounts = list(&Api::<ServiceAccount>::all(client.clone()), ListParams::default()).await?;
    progress("ServiceAccount", accounts.len());
    for account in &accounts {
        let _ = lookups.insert(&to_value(account));
    }
    let mut documents = Vec::new();
    let drivers = list(&Api::<CSIDriver>::all(client.clone()), ListParams::default()).await?;
    progress("CSIDriver", drivers.len());
    for driver in &drivers {
        let value = to_value(driver);
        let _ = lookups.insert(&value);
        documents.push(Document::from_cluster(value));
    }
    let pods = list(&Api::<Pod>::all(client.clone()), ListParams::default()).await?;
    progress("Pod", pods.len());
    documents.extend(pods.iter().map(|pod| Document::from_cluster(to_value(pod))));
    for kind in WorkloadKind::ALL {
        let (group, name) = kind.group_kind();
        let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", name), kind.plural());
        let objects = list(&Api::<DynamicObject>::all_with(client.clone(), &resource), ListParams::default()).await?;
        progress(name, objects.len());
        for mut object in objects {
            let controlled = object.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true));
            if !controlled {
                object.types =
                    Some(kube::api::TypeMeta { api_version: resource.api_version.clone(), kind: name.into() });
                let value = serde_json::to_value(&object).expect("a Kubernetes object serialises");
                documents.push(Document::from_cluster(value));
            }
        }
    }
    let secrets = legacy_token_secrets(&client).await?;
    progress("Secret (legacy token)", secrets.len());
    documents.extend(secrets.into_iter().map(Document::from_cluster));
    let options = CheckOptions { default_namespace: "default", mutate_pods_first: false };
    Ok(check::check(policy, &documents, &lookups, options).await)
}

/// Every Secret of type `kubernetes.io/service-account-token`, as metadata only (selected by
/// the API server's `type` field selector, so no other Secret and no Secret's data is ever
/// transferred), rebuilt as the few fields the decision reads.
async fn legacy_token_secrets(client: &Client) -> Result<Vec<Value>, kube::Error> {
    let api = Api::<Secret>::all(client.clone());
    let mut params = ListParams::default().fields(&format!("type={SERVICE_ACCOUNT_TOKEN_TYPE}")).limit(PAGE_SIZE);
    let mut secrets = Vec::new();
    loop {
        let page = api.list_metadata(&params).await?;
        for secret in &page.items {
            let annotation = secret.metadata.annotations.as_ref().and_then(|a| a.get(SERVICE_ACCOUNT_NAME_ANNOTATION));
            secrets.push(json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": secret.metadata.name,
                    "namespace": secret.metadata.namespace,
                    "annotations": {SERVICE_ACCOUNT_NAME_ANNOTATION: annotation},
                },
                "type": SERVICE_ACCOUNT_TOKEN_TYPE,
            }));
        }
        match next_page(&page) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(secrets),
        }
    }
}

/// Every object of `api`, page by page.
async fn list<K>(api: &Api<K>, params: ListParams) -> Result<Vec<K>, kube::Error>
where
    K: Clone + DeserializeOwned + Debug,
{
    let mut params = params.limit(PAGE_SIZE);
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
