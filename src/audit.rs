//! `tokengate audit`: every existing Pod, workload and CSIDriver of a live cluster, judged
//! against a policy.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodTemplate, ReplicationController, ServiceAccount};
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::api::ListParams;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::check::{self, CheckOptions, Report};
use crate::cluster::ObjectStore;
use crate::manifest::Document;
use crate::policy::Policy;

/// Objects listed per API call.
const PAGE_SIZE: u32 = 500;

/// Lists the cluster and checks every Pod (as it runs: no mutation is simulated), every
/// workload not owned by a controller (a ReplicaSet of a Deployment is judged through its
/// Deployment), and every CSIDriver. `progress` receives `(kind, count)` after each kind.
pub async fn audit(client: Client, policy: &Policy, progress: impl Fn(&str, usize)) -> Result<Report, kube::Error> {
    let mut lookups = ObjectStore::default();
    let accounts = list::<ServiceAccount>(&client).await?;
    progress("ServiceAccount", accounts.len());
    for account in &accounts {
        let _ = lookups.insert(&to_value(account));
    }
    let mut documents = Vec::new();
    let drivers = list::<CSIDriver>(&client).await?;
    progress("CSIDriver", drivers.len());
    for driver in &drivers {
        let value = to_value(driver);
        let _ = lookups.insert(&value);
        documents.push(Document { file: None, object: value });
    }
    collect::<Pod>(&client, &mut documents, &progress, false).await?;
    collect::<Deployment>(&client, &mut documents, &progress, true).await?;
    collect::<StatefulSet>(&client, &mut documents, &progress, true).await?;
    collect::<DaemonSet>(&client, &mut documents, &progress, true).await?;
    collect::<ReplicaSet>(&client, &mut documents, &progress, true).await?;
    collect::<Job>(&client, &mut documents, &progress, true).await?;
    collect::<CronJob>(&client, &mut documents, &progress, true).await?;
    collect::<ReplicationController>(&client, &mut documents, &progress, true).await?;
    collect::<PodTemplate>(&client, &mut documents, &progress, true).await?;
    let options = CheckOptions { default_namespace: "default", mutate_pods_first: false };
    Ok(check::check(policy, &documents, &lookups, options).await)
}

/// Lists every object of kind `K` into `documents`, skipping controller-owned ones when asked.
async fn collect<K>(
    client: &Client,
    documents: &mut Vec<Document>,
    progress: &impl Fn(&str, usize),
    skip_controlled: bool,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
{
    let objects = list::<K>(client).await?;
    progress(&K::kind(&()), objects.len());
    for object in objects {
        let controlled = object.meta().owner_references.iter().flatten().any(|owner| owner.controller == Some(true));
        if !(skip_controlled && controlled) {
            documents.push(Document { file: None, object: to_value(&object) });
        }
    }
    Ok(())
}

/// Every object of kind `K` in the cluster, page by page.
async fn list<K>(client: &Client) -> Result<Vec<K>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let api = Api::<K>::all(client.clone());
    let mut params = ListParams::default().limit(PAGE_SIZE);
    let mut objects = Vec::new();
    loop {
        let page = api.list(&params).await?;
        let next = page.metadata.continue_.clone().filter(|token| !token.is_empty());
        objects.extend(page.items);
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(objects),
        }
    }
}

/// The object as JSON, with `apiVersion` and `kind` (list items may lack them).
fn to_value<K: Resource<DynamicType = ()> + Serialize>(object: &K) -> Value {
    let mut value = serde_json::to_value(object).expect("a Kubernetes object serialises");
    value["apiVersion"] = Value::String(K::api_version(&()).to_string());
    value["kind"] = Value::String(K::kind(&()).to_string());
    value
}
