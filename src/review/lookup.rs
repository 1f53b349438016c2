//! The lookup port of the decisions: what they may ask of the cluster, behind one small trait,
//! and the reduced facts each answer carries. Decisions read service accounts, CSI drivers, pods,
//! PVCs and PVs only through [`Cluster`]; `cluster/` holds the implementations (files, watch
//! caches of a live cluster).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The outcome of a lookup: the object, `None` when it does not exist, or why it is unknown.
pub type Lookup<T> = Result<Option<Arc<T>>, LookupError>;

/// Why the cluster could not say whether an object exists ("not found" is not an error: it is
/// `Ok(None)`). Decisions word a denial from it; metrics and logs can tell the cases apart.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LookupError {
    /// The object exists, but its stored form does not decode.
    #[error("{object} exists but does not decode ({reason})")]
    Undecodable { object: String, reason: String },
    /// The API server answered with an error.
    #[error("API error reading {object}: {message}")]
    Api { object: String, message: String },
    /// The API server did not answer within the lookup's own timeout.
    #[error("timed out after {after:?} reading {object} from the API server")]
    TimedOut { object: String, after: Duration },
    /// The review's share of the API server's webhook timeout ran out first.
    #[error("no answer for {object} in time: the API server waits {waits_seconds}s for this review (?timeout), and lookups may take {share_percent}%")]
    OutOfTime { object: String, waits_seconds: f32, share_percent: u32 },
    /// The process is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

/// Read access to the objects decisions depend on. Implementations answer from files
/// (`cluster::ObjectStore`) or from watch caches of a live cluster (`cluster::LiveCluster`).
pub trait Cluster: Sync {
    /// The service account `namespace/name`.
    fn service_account(&self, namespace: &str, name: &str) -> impl Future<Output = Lookup<ServiceAccountInfo>> + Send;
    /// The CSIDriver object named `name`.
    fn csi_driver(&self, name: &str) -> impl Future<Output = Lookup<CsiDriverInfo>> + Send;
    /// The pod `namespace/name`.
    fn pod(&self, namespace: &str, name: &str) -> impl Future<Output = Lookup<PodInfo>> + Send;
    /// The PersistentVolumeClaim `namespace/name`.
    fn persistent_volume_claim(&self, namespace: &str, name: &str) -> impl Future<Output = Lookup<ClaimInfo>> + Send;
    /// The PersistentVolume `name`.
    fn persistent_volume(&self, name: &str) -> impl Future<Output = Lookup<VolumeInfo>> + Send;
    /// Whether lookups can be answered (watch caches have synced); readiness waits for it.
    fn is_ready(&self) -> bool {
        true
    }
}

/// A shared cluster answers as the cluster it shares.
impl<C: Cluster + Send + Sync> Cluster for Arc<C> {
    fn service_account(&self, namespace: &str, name: &str) -> impl Future<Output = Lookup<ServiceAccountInfo>> + Send {
        self.as_ref().service_account(namespace, name)
    }
    fn csi_driver(&self, name: &str) -> impl Future<Output = Lookup<CsiDriverInfo>> + Send {
        self.as_ref().csi_driver(name)
    }
    fn pod(&self, namespace: &str, name: &str) -> impl Future<Output = Lookup<PodInfo>> + Send {
        self.as_ref().pod(namespace, name)
    }
    fn persistent_volume_claim(&self, namespace: &str, name: &str) -> impl Future<Output = Lookup<ClaimInfo>> + Send {
        self.as_ref().persistent_volume_claim(namespace, name)
    }
    fn persistent_volume(&self, name: &str) -> impl Future<Output = Lookup<VolumeInfo>> + Send {
        self.as_ref().persistent_volume(name)
    }
    fn is_ready(&self) -> bool {
        self.as_ref().is_ready()
    }
}

/// A service account, as far as decisions care: its annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceAccountInfo {
    pub annotations: Annotations,
}

/// Annotations, sorted by key, in one small allocation: a watch cache holds one set per
/// service account, and a map's smallest node is ten times the size of a typical annotation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations(Box<[(String, String)]>);

impl Annotations {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&String> {
        let found = self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok()?;
        Some(&self.0[found].1)
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Every `(key, value)`, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl FromIterator<(String, String)> for Annotations {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(annotations: I) -> Self {
        let sorted: BTreeMap<String, String> = annotations.into_iter().collect();
        Self(sorted.into_iter().collect())
    }
}

/// A CSIDriver's token requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsiDriverInfo {
    /// `(audience, expirationSeconds)` of each `spec.tokenRequests` entry; `""` is the API server.
    pub token_requests: Vec<(String, Option<i64>)>,
}

/// A pod, as far as the node-audience restriction cares. A watch cache holds one per pod, so
/// it is compact: the uid in 16 bytes, names shared between the pods that use them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: Uid,
    pub node_name: Option<Arc<str>>,
    pub service_account: Arc<str>,
    /// Whether it has the automount volume (`kube-api-access-*`).
    pub has_automount_volume: bool,
    /// Audiences of its projected token volumes (`""` where none is set).
    pub token_audiences: Box<[Arc<str>]>,
    /// Drivers of its inline CSI volumes, and of in-tree volumes CSI migration serves.
    pub csi_drivers: Box<[Arc<str>]>,
    /// Claims it mounts: `persistentVolumeClaim` volumes and `<pod>-<volume>` for generic
    /// ephemeral volumes.
    pub claim_names: Box<[Box<str>]>,
}

/// An object's uid: 16 bytes when it is a UUID as the API server writes them (lower-case,
/// hyphenated), else the text as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uid {
    Uuid(u128),
    Text(Box<str>),
}

impl Default for Uid {
    fn default() -> Self {
        Uid::Text(Box::default())
    }
}

impl From<&str> for Uid {
    fn from(text: &str) -> Self {
        let bytes = text.as_bytes();
        let shaped = bytes.len() == 36
            && bytes.iter().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => *b == b'-',
                _ => b.is_ascii_digit() || (b'a'..=b'f').contains(b),
            });
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        match u128::from_str_radix(&hex, 16) {
            Ok(uuid) if shaped => Uid::Uuid(uuid),
            _ => Uid::Text(text.into()),
        }
    }
}

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Uid::Text(text) => f.write_str(text),
            Uid::Uuid(uuid) => {
                let hex = format!("{uuid:032x}");
                write!(f, "{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
            }
        }
    }
}

impl PartialEq<str> for Uid {
    fn eq(&self, other: &str) -> bool {
        match self {
            // A uid kept as text is not shaped as a UUID, nor is what equals it.
            Uid::Text(text) => **text == *other,
            Uid::Uuid(uuid) => matches!(Uid::from(other), Uid::Uuid(parsed) if parsed == *uuid),
        }
    }
}

/// A PersistentVolumeClaim: the volume it is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimInfo {
    pub volume_name: Option<String>,
}

/// A PersistentVolume: its CSI driver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeInfo {
    pub csi_driver: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::Uid;

    #[test]
    fn uuids_are_kept_in_sixteen_bytes_and_read_back_as_written() {
        let written = "10000000-0000-4000-8000-00000000abcd";
        let uid = Uid::from(written);
        assert!(matches!(uid, Uid::Uuid(_)));
        assert_eq!(uid.to_string(), written);
        assert!(uid == *written);
        assert!(uid != *"10000000-0000-4000-8000-00000000ABCD", "upper case is another uid");
        for text in ["u-1", "", "10000000-0000-4000-8000-00000000ABCD", "1000000000000-4000-8000-00000000abcd0"] {
            let uid = Uid::from(text);
            assert!(matches!(uid, Uid::Text(_)), "{text}");
            assert_eq!(uid.to_string(), text);
            assert!(uid == *text);
        }
    }
}
