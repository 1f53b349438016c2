//! The policy from a ConfigMap (key `policy.yaml`), watched with kube-rs. Every outcome is also
//! recorded as a Kubernetes Event on the ConfigMap, so `kubectl describe configmap` shows why
//! an update was refused.

use std::fmt;
use std::str::FromStr;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};

use super::{Offer, PolicyPublisher};

/// The ConfigMap key that holds the policy document.
pub const POLICY_KEY: &str = "policy.yaml";
/// Longest Event note the API server accepts is 1 KiB; keep under it.
const MAX_NOTE_CHARS: usize = 1000;

/// `NAMESPACE/NAME` of the policy ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMapRef {
    pub namespace: String,
    pub name: String,
}

/// A `--policy-configmap` value that is not `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not NAMESPACE/NAME")]
pub struct NotNamespaceName(pub String);

impl FromStr for ConfigMapRef {
    type Err = NotNamespaceName;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self { namespace: namespace.to_string(), name: name.to_string() })
            }
            _ => Err(NotNamespaceName(text.to_string())),
        }
    }
}

/// Why the policy could not be read from its ConfigMap.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The API server refused or could not be reached.
    #[error("reading ConfigMap {configmap}: {source}")]
    Api { configmap: ConfigMapRef, source: kube::Error },
    /// There is no such ConfigMap.
    #[error("ConfigMap {0} does not exist")]
    Missing(ConfigMapRef),
    /// The ConfigMap has no policy key.
    #[error("ConfigMap {0} has no key {POLICY_KEY}")]
    NoPolicyKey(ConfigMapRef),
}

impl fmt::Display for ConfigMapRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Follows the ConfigMap for as long as the process runs: each change is validated and, when
/// valid, published; an invalid, emptied or deleted ConfigMap keeps the last good policy.
pub async fn watch_configmap(client: Client, configmap: ConfigMapRef, mut publisher: PolicyPublisher) {
    let api = Api::<ConfigMap>::namespaced(client.clone(), &configmap.namespace);
    let origin = format!("ConfigMap {configmap}");
    let config = watcher::Config::default().fields(&format!("metadata.name={}", configmap.name));
    let mut present = false;
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => present = false,
            Ok(Event::InitApply(object) | Event::Apply(object)) => {
                present = true;
                offer(&object, &origin, &mut publisher, &client).await;
            }
            Ok(Event::InitDone) if !present => {
                publisher.unavailable(&origin, format!("{origin} does not exist"));
            }
            Ok(Event::InitDone) => {}
            Ok(Event::Delete(_)) => {
                present = false;
                publisher.unavailable(&origin, format!("{origin} was deleted"));
            }
            Err(err) => tracing::warn!(origin, error = %err, "watching the policy ConfigMap failed; retrying"),
        }
    }
}

async fn offer(object: &ConfigMap, origin: &str, publisher: &mut PolicyPublisher, client: &Client) {
    let outcome = match object.data.as_ref().and_then(|data| data.get(POLICY_KEY)) {
        Some(text) => publisher.offer(origin, text),
        None => {
            let reason = format!("{origin} has no key {POLICY_KEY}");
            publisher.reject(origin, &reason);
            Offer::Rejected(reason)
        }
    };
    let event = match outcome {
        Offer::Unchanged => return,
        Offer::Loaded { generation } => KubeEvent {
            type_: EventType::Normal,
            reason: "PolicyLoaded".to_string(),
            note: Some(format!("tokengate loaded this policy (generation {generation})")),
            action: "LoadPolicy".to_string(),
            secondary: None,
        },
        Offer::Rejected(reason) => KubeEvent {
            type_: EventType::Warning,
            reason: "InvalidPolicy".to_string(),
            note: Some(truncate(&format!("tokengate kept its last good policy: {reason}"))),
            action: "LoadPolicy".to_string(),
            secondary: None,
        },
    };
    // A fresh recorder per outcome: a shared one folds events of the same reason into a series
    // that keeps the first note, hiding why a later update was refused.
    let reporter = Reporter { controller: "tokengate".to_string(), instance: std::env::var("POD_NAME").ok() };
    let recorder = Recorder::new(client.clone(), reporter);
    if let Err(err) = recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(origin, error = %err, "could not record an Event on the policy ConfigMap");
    }
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_NOTE_CHARS {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(MAX_NOTE_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// Reads the policy text from the ConfigMap once (for `tokengate audit`).
pub async fn fetch_configmap_policy(client: Client, configmap: &ConfigMapRef) -> Result<String, FetchError> {
    let api = Api::<ConfigMap>::namespaced(client, &configmap.namespace);
    let object = api
        .get_opt(&configmap.name)
        .await
        .map_err(|source| FetchError::Api { configmap: configmap.clone(), source })?
        .ok_or_else(|| FetchError::Missing(configmap.clone()))?;
    object.data.and_then(|mut data| data.remove(POLICY_KEY)).ok_or_else(|| FetchError::NoPolicyKey(configmap.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmap_references_parse() {
        assert_eq!(
            "tokengate-system/tokengate-policy".parse(),
            Ok(ConfigMapRef { namespace: "tokengate-system".to_string(), name: "tokengate-policy".to_string() })
        );
        for bad in ["tokengate-policy", "/name", "ns/", "a/b/c"] {
            assert!(bad.parse::<ConfigMapRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn event_notes_fit_the_api_limit() {
        assert_eq!(truncate("short"), "short");
        assert_eq!(truncate(&"x".repeat(5000)).chars().count(), MAX_NOTE_CHARS);
    }
}
