//! One deadline for every lookup of a review, below the timeout the API server gives the
//! webhook, so that a slow API answers with tokengate's reason instead of the API server's
//! "context deadline exceeded".

use std::time::Duration;

use tokio::time::Instant;

use super::*;
use std::future::Future;

/// The share of the API server's webhook timeout that lookups may use; the rest is left for
/// deciding, encoding and the network.
const LOOKUP_SHARE: (u32, u32) = (3, 4);

/// A cluster whose lookups all end by one deadline.
#[derive(Debug)]
pub struct WithDeadline<'a, C> {
    inner: &'a C,
    deadline: Instant,
    /// The API server's timeout, for messages.
    timeout: Duration,
}

impl<'a, C: Cluster> WithDeadline<'a, C> {
    /// Lookups of `inner` for a review the API server waits `timeout` for, starting now.
    pub fn new(inner: &'a C, timeout: Duration) -> Self {
        let budget = timeout * LOOKUP_SHARE.0 / LOOKUP_SHARE.1;
        Self { inner, deadline: Instant::now() + budget, timeout }
    }

    async fn within<T>(&self, what: &str, lookup: impl Future<Output = Lookup<T>>) -> Lookup<T> {
        tokio::time::timeout_at(self.deadline, lookup).await.unwrap_or_else(|_| {
            Err(LookupError::OutOfTime {
                object: what.to_string(),
                waits_seconds: self.timeout.as_secs_f32(),
                share_percent: 100 * LOOKUP_SHARE.0 / LOOKUP_SHARE.1,
            })
        })
    }
}

/// Reads `?timeout=10s` (how the API server passes a webhook's `timeoutSeconds`) from a query.
pub fn timeout_from_query(query: Option<&str>) -> Option<Duration> {
    let value = query?.split('&').find_map(|pair| pair.strip_prefix("timeout="))?;
    let seconds: u64 = value.strip_suffix('s').unwrap_or(value).parse().ok()?;
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

impl<C: Cluster> Cluster for WithDeadline<'_, C> {
    async fn service_account(&self, namespace: &str, name: &str) -> Lookup<ServiceAccountInfo> {
        self.within(&format!("service account {namespace}/{name}"), self.inner.service_account(namespace, name)).await
    }

    async fn csi_driver(&self, name: &str) -> Lookup<CsiDriverInfo> {
        self.within(&format!("CSIDriver {name}"), self.inner.csi_driver(name)).await
    }

    async fn pod(&self, namespace: &str, name: &str) -> Lookup<PodInfo> {
        self.within(&format!("pod {namespace}/{name}"), self.inner.pod(namespace, name)).await
    }

    async fn persistent_volume_claim(&self, namespace: &str, name: &str) -> Lookup<ClaimInfo> {
        self.within(&format!("PVC {namespace}/{name}"), self.inner.persistent_volume_claim(namespace, name)).await
    }

    async fn persistent_volume(&self, name: &str) -> Lookup<VolumeInfo> {
        self.within(&format!("PV {name}"), self.inner.persistent_volume(name)).await
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_api_servers_timeout_parameter() {
        assert_eq!(timeout_from_query(Some("timeout=3s")), Some(Duration::from_secs(3)));
        assert_eq!(timeout_from_query(Some("a=b&timeout=10s")), Some(Duration::from_secs(10)));
        assert_eq!(timeout_from_query(Some("timeout=7")), Some(Duration::from_secs(7)));
        assert_eq!(timeout_from_query(Some("timeout=0s")), None);
        assert_eq!(timeout_from_query(Some("timeout=soon")), None);
        assert_eq!(timeout_from_query(None), None);
    }
}
