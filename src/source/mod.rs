//! Where the policy comes from: a file, polled and re-validated, published as `Arc<Policy>`.
//!
//! Every source publishes into the same watch channel; a bad update is logged and counted and
//! the last good policy stays in force.

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
}

impl PolicyPublisher {
    /// A publisher with no policy yet, and its receiver.
    pub fn new(metrics: Arc<Metrics>) -> (Self, PolicyReceiver) {
        let (sender, receiver) = watch::channel(None);
        (Self { sender, metrics, generation: 0, last_seen: None }, receiver)
    }

    /// Validates `text` from `origin` and, when it is new and valid, puts it in force.
    /// Returns whether the policy in force changed.
    pub fn offer(&mut self, origin: &str, text: &str) -> bool {
        if self.last_seen.as_deref() == Some(text) {
            return false;
        }
        self.last_seen = Some(text.to_string());
        match Policy::parse(text) {
            Ok(policy) => {
                self.generation += 1;
                self.metrics.policy_loaded(self.generation);
                tracing::info!(origin, generation = self.generation, mode = policy.mode().as_str(), "policy loaded");
                self.sender.send_replace(Some(Arc::new(policy)));
                true
            }
            Err(err) => {
                self.reject(origin, &err.to_string());
                false
            }
        }
    }

    /// Records that the source could not provide a policy; the last good one stays.
    pub fn reject(&mut self, origin: &str, reason: &str) {
        self.metrics.policy_failed();
        let kept = if self.sender.borrow().is_some() { "keeping the last good policy" } else { "no policy loaded yet" };
        tracing::error!(origin, reason, "policy rejected, {kept}");
    }

    /// Records a read failure once per distinct failure (not on every poll).
    fn unreadable(&mut self, origin: &str, reason: String) {
        let marker = format!("\u{0}unreadable: {reason}");
        if self.last_seen.as_deref() != Some(marker.as_str()) {
            self.last_seen = Some(marker);
            self.reject(origin, &reason);
        }
    }
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
        Err(err) => publisher.unreadable(origin, format!("cannot read the policy file: {err}")),
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
        assert!(!publisher.offer("test", "kind: nope"));
        assert!(receiver.borrow().is_none(), "not ready without a valid policy");
        assert!(publisher.offer("test", VALID));
        assert!(!publisher.offer("test", VALID), "the same text is not reloaded");
        assert!(!publisher.offer("test", "spec: [broken"));
        let mode = receiver.borrow().as_ref().map(|p| p.mode());
        assert_eq!(mode, Some(crate::policy::Mode::Warn));
        assert!(publisher.offer("test", OTHER));
        let text = metrics.encode();
        assert!(text.contains("tokengate_policy_generation 2"), "{text}");
        assert!(text.contains(r#"tokengate_policy_reloads_total{result="error"} 2"#), "{text}");
    }
}
