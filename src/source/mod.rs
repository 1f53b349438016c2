//! Where the policy comes from: a file, polled and re-validated, published as `Arc<Policy>`.
//!
//! Every source publishes into the same watch channel; a bad update is logged and counted and
//! the last good policy stays in force.

mod configmap;

pub use configmap::{fetch_configmap_policy, watch_configmap, ConfigMapRef, FetchError, NotNamespaceName, POLICY_KEY};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::policy::Policy;

/// The policy in force, `None` until a valid one has loaded.
pub type PolicyReceiver = watch::Receiver<Option<Arc<Policy>>>;

/// Publishes policies and keeps the last good one.
#[derive(Debug)]
pub struct PolicyPublisher {
    sender: watch::Sender<Option<Arc<Policy>>>,
    metrics: Arc<Metrics>,
    generation: u64,
    /// The text most recently seen, valid or not, so each change is judged once.
    last_seen: Option<String>,
    /// API server audiences learned from the cluster, added to every policy's own list.
    learned_audiences: Vec<String>,
}

impl PolicyPublisher {
    /// A publisher with no policy yet, and its receiver.
    pub fn new(metrics: Arc<Metrics>) -> (Self, PolicyReceiver) {
        let (sender, receiver) = watch::channel(None);
        (Self { sender, metrics, generation: 0, last_seen: None, learned_audiences: Vec::new() }, receiver)
    }

    /// Adds `audiences`, learned from the cluster, to the `apiServerAudiences` of every policy
    /// offered from now on.
    pub fn learn_api_server_audiences(&mut self, audiences: Vec<String>) {
        self.learned_audiences = audiences;
    }

    /// Validates `text` from `origin` and, when it is new and valid, puts it in force.
    pub fn offer(&mut self, origin: &str, text: &str) -> Offer {
        if self.last_seen.as_deref() == Some(text) {
            return Offer::Unchanged;
        }
        self.last_seen = Some(text.to_string());
        match Policy::parse_with_api_server_audiences(text, &self.learned_audiences) {
            Ok(policy) => {
                self.generation += 1;
                self.metrics.policy_loaded(self.generation);
                tracing::info!(origin, generation = self.generation, mode = policy.mode().as_str(), "policy loaded");
                self.sender.send_replace(Some(Arc::new(policy)));
                Offer::Loaded { generation: self.generation }
            }
            Err(err) => {
                let reason = err.to_string();
                self.reject(origin, &reason);
                Offer::Rejected(reason)
            }
        }
    }

    /// Records that the source could not provide a policy; the last good one stays.
    pub fn reject(&mut self, origin: &str, reason: &str) {
        self.metrics.policy_failed();
        let kept = if self.sender.borrow().is_some() { "keeping the last good policy" } else { "no policy loaded yet" };
        tracing::error!(origin, reason, "policy rejected, {kept}");
    }

    /// Records that the source has no policy to offer (unreadable file, missing ConfigMap),
    /// once per distinct reason rather than on every poll; the last good policy stays.
    pub fn unavailable(&mut self, origin: &str, reason: String) {
        let marker = format!("\u{0}unreadable: {reason}");
        if self.last_seen.as_deref() != Some(marker.as_str()) {
            self.last_seen = Some(marker);
            self.reject(origin, &reason);
        }
    }
}

/// What became of an offered policy text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Valid and now in force.
    Loaded { generation: u64 },
    /// The same text as last time: nothing to do.
    Unchanged,
    /// Invalid; the reason lists every problem. The previous policy stays in force.
    Rejected(String),
}

/// Loads the policy file now, then re-reads it every `interval` (which also catches the
/// kubelet's `..data` symlink swap of a mounted ConfigMap) until the publisher's receivers are
/// all gone.
pub async fn watch_file(path: PathBuf, interval: Duration, mut publisher: PolicyPublisher) {
    let origin = path.display().to_string();
    loop {
        load_file(&path, &origin, &mut publisher).await;
        tokio::time::sleep(interval).await;
        if publisher.sender.is_closed() {
            return;
        }
    }
}

/// Reads the policy file once and offers it.
pub async fn load_file(path: &Path, origin: &str, publisher: &mut PolicyPublisher) {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => {
            publisher.offer(origin, &text);
        }
        Err(err) => publisher.unavailable(origin, format!("cannot read the policy file: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec: {mode: Warn}\n";
    const OTHER: &str = "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec: {mode: Audit}\n";

    #[test]
    fn a_bad_update_keeps_the_last_good_policy() {
        let metrics = Arc::new(Metrics::new());
        let (mut publisher, receiver) = PolicyPublisher::new(metrics.clone());
        assert!(matches!(publisher.offer("test", "kind: nope"), Offer::Rejected(_)));
        assert!(receiver.borrow().is_none(), "not ready without a valid policy");
        assert_eq!(publisher.offer("test", VALID), Offer::Loaded { generation: 1 });
        assert_eq!(publisher.offer("test", VALID), Offer::Unchanged, "the same text is not reloaded");
        assert!(matches!(publisher.offer("test", "spec: [broken"), Offer::Rejected(_)));
        let mode = receiver.borrow().as_ref().map(|p| p.mode());
        assert_eq!(mode, Some(crate::policy::Mode::Warn));
        assert_eq!(publisher.offer("test", OTHER), Offer::Loaded { generation: 2 });
        let text = metrics.encode();
        assert!(text.contains("tokengate_policy_generation 2"), "{text}");
        assert!(text.contains(r#"tokengate_policy_reloads_total{result="error"} 2"#), "{text}");
    }
}
