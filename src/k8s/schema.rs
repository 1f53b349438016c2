//! The fields of the Kubernetes objects tokengate reads (Kubernetes 1.34, from k8s-openapi's
//! `v1_34` types), and strict decoding against them as the API server does it with
//! `fieldValidation=Strict` (kubectl's default since 1.27): an unknown field or a value of the
//! wrong type refuses the whole object.

use serde_json::Value;

/// What a field holds.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// Not checked: tokengate does not read it (the API server still does).
    Any,
    String,
    Integer,
    Boolean,
    /// A map of strings (labels, annotations, volume attributes).
    StringMap,
    /// An object with exactly these fields.
    Object(&'static [Field]),
    /// A list of these.
    Array(&'static Shape),
}

/// A field of an object: its JSON name and shape.
#[derive(Debug, Clone, Copy)]
pub struct Field(pub &'static str, pub Shape);

/// Fields of an object whose values tokengate does not read.
macro_rules! fields {
    ($($name:literal: $shape:expr),* $(,)? ; $($other:literal),* $(,)?) => {
        &[$(Field($name, $shape),)* $(Field($other, Shape::Any),)*]
    };
}

const OBJECT_META: &[Field] = fields!(
    "name": Shape::String, "generateName": Shape::String, "namespace": Shape::String,
    "labels": Shape::StringMap, "annotations": Shape::StringMap;
    "creationTimestamp", "deletionGracePeriodSeconds", "deletionTimestamp", "finalizers", "generation",
    "managedFields", "ownerReferences", "resourceVersion", "selfLink", "uid",
);
const TOKEN_PROJECTION: &[Field] =
    fields!("audience": Shape::String, "expirationSeconds": Shape::Integer, "path": Shape::String;);
const PROJECTION: &[Field] = fields!("serviceAccountToken": Shape::Object(TOKEN_PROJECTION);
    "clusterTrustBundle", "configMap", "downwardAPI", "podCertificate", "secret");
const PROJECTED: &[Field] =
    fields!("sources": Shape::Array(&Shape::Object(PROJECTION)), "defaultMode": Shape::Integer;);
const CSI_VOLUME: &[Field] = fields!(
    "driver": Shape::String, "readOnly": Shape::Boolean, "fsType": Shape::String,
    "volumeAttributes": Shape::StringMap; "nodePublishSecretRef");
const VOLUME: &[Field] = fields!(
    "name": Shape::String, "projected": Shape::Object(PROJECTED), "csi": Shape::Object(CSI_VOLUME);
    "awsElasticBlockStore", "azureDisk", "azureFile", "cephfs", "cinder", "configMap", "downwardAPI",
    "emptyDir", "ephemeral", "fc", "flexVolume", "flocker", "gcePersistentDisk", "gitRepo", "glusterfs",
    "hostPath", "image", "iscsi", "nfs", "persistentVolumeClaim", "photonPersistentDisk", "portworxVolume",
    "quobyte", "rbd", "scaleIO", "secret", "storageos", "vsphereVolume",
);
const POD_SPEC: &[Field] = fields!(
    "serviceAccountName": Shape::String, "serviceAccount": Shape::String,
    "automountServiceAccountToken": Shape::Boolean, "volumes": Shape::Array(&Shape::Object(VOLUME));
    "activeDeadlineSeconds", "affinity", "containers", "dnsConfig", "dnsPolicy", "enableServiceLinks",
    "ephemeralContainers", "hostAliases", "hostIPC", "hostNetwork", "hostPID", "hostUsers", "hostname",
    "hostnameOverride", "imagePullSecrets", "initContainers", "nodeName", "nodeSelector", "os", "overhead",
    "preemptionPolicy", "priority", "priorityClassName", "readinessGates", "resourceClaims", "resources",
    "restartPolicy", "runtimeClassName", "schedulerName", "schedulingGates", "securityContext", "setHostnameAsFQDN",
    "shareProcessNamespace", "subdomain", "terminationGracePeriodSeconds", "tolerations", "topologySpreadConstraints",
);
const POD_TEMPLATE_SPEC: &[Field] = fields!("metadata": Shape::Object(OBJECT_META), "spec": Shape::Object(POD_SPEC););
const TEMPLATE: Shape = Shape::Object(POD_TEMPLATE_SPEC);
const TOKEN_REQUEST: &[Field] = fields!("audience": Shape::String, "expirationSeconds": Shape::Integer;);
const CSI_DRIVER_SPEC: &[Field] = fields!(
    "tokenRequests": Shape::Array(&Shape::Object(TOKEN_REQUEST)), "requiresRepublish": Shape::Boolean,
    "serviceAccountTokenInSecrets": Shape::Boolean;
    "attachRequired", "fsGroupPolicy", "nodeAllocatableUpdatePeriodSeconds", "podInfoOnMount", "seLinuxMount",
    "storageCapacity", "volumeLifecycleModes",
);
const DEPLOYMENT_SPEC: &[Field] = fields!("template": TEMPLATE;
    "minReadySeconds", "paused", "progressDeadlineSeconds", "replicas", "revisionHistoryLimit", "selector", "strategy");
const STATEFUL_SET_SPEC: &[Field] = fields!("template": TEMPLATE;
    "minReadySeconds", "ordinals", "persistentVolumeClaimRetentionPolicy", "podManagementPolicy", "replicas",
    "revisionHistoryLimit", "selector", "serviceName", "updateStrategy", "volumeClaimTemplates");
const DAEMON_SET_SPEC: &[Field] =
    fields!("template": TEMPLATE; "minReadySeconds", "revisionHistoryLimit", "selector", "updateStrategy");
const REPLICA_SET_SPEC: &[Field] = fields!("template": TEMPLATE; "minReadySeconds", "replicas", "selector");
const JOB_SPEC: &[Field] = fields!("template": TEMPLATE;
    "activeDeadlineSeconds", "backoffLimit", "backoffLimitPerIndex", "completionMode", "completions", "managedBy",
    "manualSelector", "maxFailedIndexes", "parallelism", "podFailurePolicy", "podReplacementPolicy", "selector",
    "successPolicy", "suspend", "ttlSecondsAfterFinished");
const JOB_TEMPLATE_SPEC: &[Field] = fields!("metadata": Shape::Object(OBJECT_META), "spec": Shape::Object(JOB_SPEC););
const CRON_JOB_SPEC: &[Field] = fields!("jobTemplate": Shape::Object(JOB_TEMPLATE_SPEC);
    "concurrencyPolicy", "failedJobsHistoryLimit", "schedule", "startingDeadlineSeconds",
    "successfulJobsHistoryLimit", "suspend", "timeZone");

/// The top-level fields of an object with `spec` (and `status`) of these fields.
macro_rules! with_spec {
    ($spec:expr) => {
        fields!("metadata": Shape::Object(OBJECT_META), "spec": Shape::Object($spec); "apiVersion", "kind", "status")
    };
}

/// The fields of an object of this group and kind that tokengate reads, when it reads it.
pub fn object_fields(group: &str, kind: &str) -> Option<&'static [Field]> {
    Some(match (group, kind) {
        ("", "Pod") => with_spec!(POD_SPEC),
        ("", "PodTemplate") => {
            fields!("metadata": Shape::Object(OBJECT_META), "template": TEMPLATE; "apiVersion", "kind")
        }
        ("", "ReplicationController") => with_spec!(REPLICA_SET_SPEC),
        ("", "Secret") => fields!("metadata": Shape::Object(OBJECT_META), "type": Shape::String;
            "apiVersion", "kind", "data", "immutable", "stringData"),
        ("apps", "Deployment") => with_spec!(DEPLOYMENT_SPEC),
        ("apps", "StatefulSet") => with_spec!(STATEFUL_SET_SPEC),
        ("apps", "DaemonSet") => with_spec!(DAEMON_SET_SPEC),
        ("apps", "ReplicaSet") => with_spec!(REPLICA_SET_SPEC),
        ("batch", "Job") => with_spec!(JOB_SPEC),
        ("batch", "CronJob") => with_spec!(CRON_JOB_SPEC),
        ("storage.k8s.io", "CSIDriver") => {
            fields!("metadata": Shape::Object(OBJECT_META), "spec": Shape::Object(CSI_DRIVER_SPEC); "apiVersion", "kind")
        }
        _ => return None,
    })
}

/// A field strict decoding refuses, and why, in the API server's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// The field's path in the object (`spec.volumes[0].projected`).
    pub path: String,
    pub message: String,
}

/// Every field of `object` that strict decoding against `fields` refuses: unknown fields
/// (`strict decoding error: unknown field "spec.volumes[0].projected.sources[0].serviceAccountToken.audiance"`)
/// and values of the wrong type (`spec.tokenRequests[0].expirationSeconds: expected integer, got
/// string "3600"`). A `null` is accepted anywhere, as the API server's decoder accepts it.
pub fn strict_problems(object: &Value, fields: &'static [Field]) -> Vec<FieldProblem> {
    let mut problems = Vec::new();
    check(object, Shape::Object(fields), "", &mut problems);
    problems
}

fn check(value: &Value, shape: Shape, path: &str, problems: &mut Vec<FieldProblem>) {
    let expected = match (shape, value) {
        (_, Value::Null) | (Shape::Any, _) | (Shape::String, Value::String(_)) | (Shape::Boolean, Value::Bool(_)) => {
            return
        }
        (Shape::Integer, Value::Number(n)) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => return,
        (Shape::StringMap, Value::Object(map)) => {
            for (key, value) in map {
                check(value, Shape::String, &join(path, key), problems);
            }
            return;
        }
        (Shape::Object(fields), Value::Object(map)) => {
            for (key, value) in map {
                let field = join(path, key);
                match fields.iter().find(|f| f.0 == key) {
                    Some(known) => check(value, known.1, &field, problems),
                    None => {
                        let message = format!("strict decoding error: unknown field \"{field}\"");
                        problems.push(FieldProblem { path: field, message });
                    }
                }
            }
            return;
        }
        (Shape::Array(item), Value::Array(items)) => {
            for (i, value) in items.iter().enumerate() {
                check(value, *item, &format!("{path}[{i}]"), problems);
            }
            return;
        }
        (Shape::String, _) => "string",
        (Shape::Integer, _) => "integer",
        (Shape::Boolean, _) => "boolean",
        (Shape::StringMap | Shape::Object(_), _) => "object",
        (Shape::Array(_), _) => "array",
    };
    let got = match value {
        Value::String(text) => format!("string {text:?}"),
        Value::Number(number) => format!("number {number}"),
        Value::Bool(flag) => format!("boolean {flag}"),
        Value::Object(_) => "object".to_string(),
        Value::Array(_) => "array".to_string(),
        Value::Null => "null".to_string(),
    };
    problems.push(FieldProblem { path: path.to_string(), message: format!("{path}: expected {expected}, got {got}") });
}

/// `path.key`, or `key` at the top.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(group: &str, kind: &str, object: Value) -> Vec<String> {
        let fields = object_fields(group, kind).expect("a kind tokengate reads");
        strict_problems(&object, fields).into_iter().map(|p| p.message).collect()
    }

    #[test]
    fn unknown_and_mistyped_fields_are_refused_in_the_api_servers_words() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespce": "x"},
            "spec": {"containers": [{"name": "a", "anything": 1}], "volumes": [
                {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"audiance": "vault", "expirationSeconds": "3600"}}]}},
                {"name": "c", "csi": {"driver": 7, "readOnly": null}}]}});
        assert_eq!(
            problems("", "Pod", pod),
            [
                "strict decoding error: unknown field \"metadata.namespce\"",
                "strict decoding error: unknown field \"spec.volumes[0].projected.sources[0].serviceAccountToken.audiance\"",
                "spec.volumes[0].projected.sources[0].serviceAccountToken.expirationSeconds: expected integer, got string \"3600\"",
                "spec.volumes[1].csi.driver: expected string, got number 7",
            ]
        );
    }

    #[test]
    fn templates_and_csi_drivers_are_read_down_to_what_tokengate_reads() {
        let cron = json!({"spec": {"jobTemplate": {"spec": {"templat": {}}}}});
        assert_eq!(
            problems("batch", "CronJob", cron),
            ["strict decoding error: unknown field \"spec.jobTemplate.spec.templat\""]
        );
        let driver = json!({"spec": {"tokenRequests": [{"audience": "vault", "expirationSecond": 600}], "requiresRepublish": "yes"}});
        assert_eq!(
            problems("storage.k8s.io", "CSIDriver", driver),
            [
                "spec.requiresRepublish: expected boolean, got string \"yes\"",
                "strict decoding error: unknown field \"spec.tokenRequests[0].expirationSecond\"",
            ]
        );
        let fine = json!({"metadata": {"annotations": {"a": "b"}}, "spec": {"replicas": 2.0, "template": {"spec": {"volumes": [
            {"name": "v", "emptyDir": {"whatever": true}}]}}}});
        assert!(problems("apps", "Deployment", fine).is_empty(), "what tokengate does not read is not checked");
        assert!(object_fields("example.com", "Deployment").is_none());
    }
}
