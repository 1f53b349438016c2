//! The kinds and operations tokengate governs, as the API server names them: groups, kinds,
//! resources and where a workload keeps its pod template.

use serde::Deserialize;

/// An admission request's `operation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
    /// Absent or unknown.
    #[default]
    #[serde(other)]
    Other,
}

impl Operation {
    /// The name the API server uses, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
            Operation::Other => "",
        }
    }
}

/// The workload kinds whose pod templates are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    Job,
    CronJob,
    ReplicationController,
    PodTemplate,
}

impl WorkloadKind {
    /// Every workload kind.
    pub const ALL: [WorkloadKind; 8] = [
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
        WorkloadKind::ReplicaSet,
        WorkloadKind::Job,
        WorkloadKind::CronJob,
        WorkloadKind::ReplicationController,
        WorkloadKind::PodTemplate,
    ];

    /// The API group and kind of the object.
    pub fn group_kind(self) -> (&'static str, &'static str) {
        match self {
            WorkloadKind::Deployment => ("apps", "Deployment"),
            WorkloadKind::StatefulSet => ("apps", "StatefulSet"),
            WorkloadKind::DaemonSet => ("apps", "DaemonSet"),
            WorkloadKind::ReplicaSet => ("apps", "ReplicaSet"),
            WorkloadKind::Job => ("batch", "Job"),
            WorkloadKind::CronJob => ("batch", "CronJob"),
            WorkloadKind::ReplicationController => ("", "ReplicationController"),
            WorkloadKind::PodTemplate => ("", "PodTemplate"),
        }
    }

    /// The resource name in API paths.
    pub fn plural(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::StatefulSet => "statefulsets",
            WorkloadKind::DaemonSet => "daemonsets",
            WorkloadKind::ReplicaSet => "replicasets",
            WorkloadKind::Job => "jobs",
            WorkloadKind::CronJob => "cronjobs",
            WorkloadKind::ReplicationController => "replicationcontrollers",
            WorkloadKind::PodTemplate => "podtemplates",
        }
    }

    /// The JSON path of the pod template inside the object.
    pub fn template_path(self) -> &'static [&'static str] {
        match self {
            WorkloadKind::CronJob => &["spec", "jobTemplate", "spec", "template"],
            WorkloadKind::PodTemplate => &["template"],
            _ => &["spec", "template"],
        }
    }
}

/// A resource as webhook rules name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub group: &'static str,
    /// The resource, with its subresource after a `/` (`serviceaccounts/token`).
    pub resource: &'static str,
    pub namespaced: bool,
}

/// Pods.
pub const PODS: Resource = Resource { group: "", resource: "pods", namespaced: true };
/// TokenRequests: the `token` subresource of a ServiceAccount (kind TokenRequest, group
/// authentication.k8s.io, served under the core group's serviceaccounts).
pub const SERVICE_ACCOUNT_TOKENS: Resource =
    Resource { group: "", resource: "serviceaccounts/token", namespaced: true };
/// CSIDrivers, cluster-scoped.
pub const CSI_DRIVERS: Resource = Resource { group: "storage.k8s.io", resource: "csidrivers", namespaced: false };
/// Secrets.
pub const SECRETS: Resource = Resource { group: "", resource: "secrets", namespaced: true };

impl WorkloadKind {
    /// The resource webhook rules name it by.
    pub fn resource(self) -> Resource {
        Resource { group: self.group_kind().0, resource: self.plural(), namespaced: true }
    }
}
