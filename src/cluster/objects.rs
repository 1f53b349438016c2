//! The offline cluster: objects read from files (`--objects`) or found beside manifests.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount};
use k8s_openapi::api::storage::v1::CSIDriver;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::views::{ClaimView, CsiDriverView, PersistentVolumeView, PodView, ServiceAccountView};
use super::*;

/// Objects of a cluster held in memory; lookups answer from here and never fail.
#[derive(Debug, Clone, Default)]
pub struct ObjectStore {
    service_accounts: HashMap<(String, String), Arc<ServiceAccountInfo>>,
    csi_drivers: HashMap<String, Arc<CsiDriverInfo>>,
    pods: HashMap<(String, String), Arc<PodInfo>>,
    claims: HashMap<(String, String), Arc<ClaimInfo>>,
    volumes: HashMap<String, Arc<VolumeInfo>>,
}

/// An object that has a kind tokengate reads but cannot be decoded as that kind.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {name}: {message}")]
pub struct ObjectsError {
    pub kind: String,
    pub name: String,
    pub message: String,
}

impl ObjectStore {
    /// Adds a service account already reduced to what decisions read.
    pub fn insert_service_account(&mut self, namespace: &str, name: &str, info: ServiceAccountInfo) {
        self.service_accounts.insert((namespace.to_string(), name.to_string()), Arc::new(info));
    }

    /// Adds one Kubernetes object; kinds decisions do not read (Namespaces, ConfigMaps, ...)
    /// are ignored. Returns whether the object was kept.
    pub fn insert(&mut self, object: &Value) -> Result<bool, ObjectsError> {
        self.insert_in(object, "default")
    }

    /// [`ObjectStore::insert`], with namespace-less objects in `default_namespace` (as
    /// `kubectl apply -n` would put them).
    pub fn insert_in(&mut self, object: &Value, default_namespace: &str) -> Result<bool, ObjectsError> {
        let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
        let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let namespace =
            object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(default_namespace).to_string();
        let key = (namespace.clone(), name.clone());
        match (api_version, kind) {
            ("v1", "ServiceAccount") => {
                let view = decode::<ServiceAccount, ServiceAccountView>(object, kind, &name)?;
                self.service_accounts.insert(key, Arc::new((&view).into()));
            }
            ("v1", "Pod") => {
                let view = decode::<Pod, PodView>(object, kind, &name)?;
                self.pods.insert(key, Arc::new((&view).into()));
            }
            ("v1", "PersistentVolumeClaim") => {
                let view = decode::<PersistentVolumeClaim, ClaimView>(object, kind, &name)?;
                self.claims.insert(key, Arc::new((&view).into()));
            }
            ("v1", "PersistentVolume") => {
                let view = decode::<PersistentVolume, PersistentVolumeView>(object, kind, &name)?;
                self.volumes.insert(name, Arc::new((&view).into()));
            }
            ("storage.k8s.io/v1", "CSIDriver") => {
                let view = decode::<CSIDriver, CsiDriverView>(object, kind, &name)?;
                self.csi_drivers.insert(name, Arc::new((&view).into()));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Checks the object against the full k8s-openapi type `Full` (files are written by people: a
/// mistyped field is reported), then reads the reduced view lookups keep, the same one the
/// watch caches keep.
fn decode<Full: DeserializeOwned, View: DeserializeOwned>(
    object: &Value,
    kind: &str,
    name: &str,
) -> Result<View, ObjectsError> {
    let error =
        |e: serde_json::Error| ObjectsError { kind: kind.to_string(), name: name.to_string(), message: e.to_string() };
    Full::deserialize(object).map_err(error)?;
    View::deserialize(object).map_err(error)
}

fn get<T>(map: &HashMap<(String, String), Arc<T>>, namespace: &str, name: &str) -> Lookup<T> {
    Ok(map.get(&(namespace.to_string(), name.to_string())).cloned())
}

impl Cluster for ObjectStore {
    async fn service_account(&self, namespace: &str, name: &str) -> Lookup<ServiceAccountInfo> {
        get(&self.service_accounts, namespace, name)
    }

    async fn csi_driver(&self, name: &str) -> Lookup<CsiDriverInfo> {
        Ok(self.csi_drivers.get(name).cloned())
    }

    async fn pod(&self, namespace: &str, name: &str) -> Lookup<PodInfo> {
        get(&self.pods, namespace, name)
    }

    async fn persistent_volume_claim(&self, namespace: &str, name: &str) -> Lookup<ClaimInfo> {
        get(&self.claims, namespace, name)
    }

    async fn persistent_volume(&self, name: &str) -> Lookup<VolumeInfo> {
        Ok(self.volumes.get(name).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    #[test]
    fn keeps_the_fields_decisions_read() {
        let mut store = ObjectStore::default();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"nodeName": "node-1", "serviceAccountName": "sa", "containers": [],
              "volumes": [
                {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"audience": "vault", "path": "t"}}, {"serviceAccountToken": {"path": "a"}}]}},
                {"name": "c", "csi": {"driver": "d.example.com"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "claim"}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}]}});
        assert!(store.insert(&pod).expect("decodes"));
        assert!(!store
            .insert(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}))
            .expect("ignored"));
        let info = block(store.pod("ns", "p")).expect("no error").expect("found");
        assert_eq!(info.uid.to_string(), "u1");
        assert_eq!(info.node_name.as_deref(), Some("node-1"));
        assert_eq!(&*info.service_account, "sa");
        assert_eq!(info.token_audiences, [Arc::from("vault"), Arc::from("")].into());
        assert_eq!(info.csi_drivers, [Arc::from("d.example.com")].into());
        assert_eq!(info.claim_names, [Box::from("claim"), Box::from("p-scratch")].into());
        assert!(block(store.pod("ns", "other")).expect("no error").is_none());
    }

    #[test]
    fn rejects_a_mistyped_object() {
        let mut store = ObjectStore::default();
        let bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": "nope"}});
        let err = store.insert(&bad).expect_err("must fail");
        assert!(err.to_string().starts_with("Pod p:"), "{err}");
    }
}
