//! The implementations of the decisions' lookup port (`review::lookup::Cluster`): objects from
//! files, and watch caches of a live cluster, each object reduced to the few fields decisions
//! read so caches stay small; and reading the cluster's own facts (kubeconfig, audiences).

pub mod audiences;
mod deadline;
pub mod kubeconfig;
mod live;
mod objects;
pub mod views;

pub use deadline::{timeout_from_query, WithDeadline};
pub use live::{LiveCluster, LiveOptions};
pub use objects::{ObjectStore, ObjectsError};

pub use crate::k8s::names::service_account_named;
pub use crate::review::lookup::{
    Annotations, ClaimInfo, Cluster, CsiDriverInfo, Lookup, LookupError, PodInfo, ServiceAccountInfo, Uid, VolumeInfo,
};
