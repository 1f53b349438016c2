//! The parts of a Pod or pod template that decisions read, decoded straight from the request.
//!
//! Fields tokengate does not read are skipped, not built: a Pod decodes in about a third of the
//! time a full `k8s_openapi` Pod takes, which is most of the cost of a review. The object was
//! validated by the API server before any webhook sees it, so skipping fields loses nothing.
//!
//! What a body can hold many of stays small once decoded: entries that carry nothing decisions
//! read are skipped as they are read (projected sources other than tokens, annotations other
//! than those tokengate reads); token sources and labels are kept in one block of text each, and
//! a review takes from the labels only those its policy's selectors read; short names and paths
//! are kept in place; volumes and containers are stored flat (`pod_lists`). No shape of body
//! found costs more than twice its size (`tests/review_memory.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::OnceLock;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

pub use super::pod_lists::{Container, Containers, EnvVar, TokenSource, Volume, VolumeMount, Volumes};
use super::text::AppendTo;
pub use super::text::Text;
use super::WorkloadKind;
use crate::k8s::names::{service_account_named, MIRROR_ANNOTATION, SKIP_ANNOTATION};
use crate::policy::globs::SelectorTerm;
use crate::policy::Policy;

/// A Pod, or the pod template of a workload: the same `metadata` and `spec`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: Option<PodSpec>,
}

/// `metadata` of a Pod or template.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Metadata {
    pub labels: Option<Labels>,
    /// Only the annotations decisions read ([`READ_ANNOTATIONS`]); the others are skipped.
    #[serde(default, deserialize_with = "read_annotations")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Every label as a map, built by the first [`PodView::new`].
    #[serde(skip)]
    label_map: OnceLock<BTreeMap<String, String>>,
}

/// Equal when the labels and read annotations are: the map built from the labels is not compared.
impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.labels == other.labels && self.annotations == other.annotations
    }
}

impl Metadata {
    /// Every label, as a map: built once, on first use.
    pub fn label_map(&self) -> Option<&BTreeMap<String, String>> {
        let labels = self.labels.as_ref()?;
        Some(self.label_map.get_or_init(|| labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
    }

    /// The labels that `policy`'s pod selectors read, as a map: a selector reads nothing else,
    /// so it selects the pod exactly when it selects the pod with all its labels.
    pub fn labels_read_by(&self, policy: &Policy) -> Option<BTreeMap<String, String>> {
        let labels = self.labels.as_ref()?;
        let terms: Vec<SelectorTerm<'_>> = policy.injections().iter().flat_map(|i| i.pod_selector.terms()).collect();
        let read: BTreeSet<&str> = terms.iter().map(term_key).collect();
        Some(labels.iter().filter(|(k, _)| read.contains(k)).map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }
}

/// The label key a selector term reads.
fn term_key<'t>(term: &SelectorTerm<'t>) -> &'t str {
    match *term {
        SelectorTerm::Equals(key, _)
        | SelectorTerm::In(key, _)
        | SelectorTerm::NotIn(key, _)
        | SelectorTerm::Exists(key)
        | SelectorTerm::DoesNotExist(key) => key,
    }
}

/// The Pod annotations decisions read: the mirror-pod marker and the opt-out list.
pub const READ_ANNOTATIONS: [&str; 2] = [MIRROR_ANNOTATION, SKIP_ANNOTATION];

/// `metadata.annotations`, keeping only [`READ_ANNOTATIONS`]; every value must still be a string.
fn read_annotations<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Read;
    impl<'de> Visitor<'de> for Read {
        type Value = Option<BTreeMap<String, String>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of strings")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_map(self)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut read = BTreeMap::new();
            let mut key = String::new();
            while map.next_key_seed(AppendTo(&mut key))?.is_some() {
                if READ_ANNOTATIONS.contains(&key.as_str()) {
                    read.insert(std::mem::take(&mut key), map.next_value()?);
                } else {
                    map.next_value::<SkippedString>()?;
                }
                key.clear();
            }
            Ok(Some(read))
        }
    }
    deserializer.deserialize_option(Read)
}

/// Labels in two allocations: their text, each key followed by its value, and where each key
/// and each value ends in it. A map would take ten times the bytes of short labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    text: Box<str>,
    ends: Box<[u32]>,
}

impl Labels {
    /// Every `(key, value)` in the order written; of a key written twice the last one counts
    /// (as in a map decoded from the same JSON).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.ends.chunks_exact(2).scan(0, |start, ends| {
            let (key_end, value_end) = (ends[0] as usize, ends[1] as usize);
            let label = (&self.text[*start..key_end], &self.text[key_end..value_end]);
            *start = value_end;
            Some(label)
        })
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().filter(|(k, _)| *k == key).last().map(|(_, value)| value)
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Read;
        impl<'de> Visitor<'de> for Read {
            type Value = Labels;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
                let (mut text, mut ends) = (String::new(), Vec::new());
                let end = |text: &String| u32::try_from(text.len()).map_err(|_| de::Error::custom("labels over 4 GiB"));
                while map.next_key_seed(AppendTo(&mut text))?.is_some() {
                    ends.push(end(&text)?);
                    map.next_value_seed(AppendTo(&mut text))?;
                    ends.push(end(&text)?);
                }
                Ok(Labels { text: text.into_boxed_str(), ends: ends.into_boxed_slice() })
            }
        }
        deserializer.deserialize_map(Read)
    }
}

/// A string that is checked to be one and dropped.
struct SkippedString;

impl<'de> Deserialize<'de> for SkippedString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Skip;
        impl Visitor<'_> for Skip {
            type Value = SkippedString;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<SkippedString, E> {
                Ok(SkippedString)
            }
        }
        deserializer.deserialize_str(Skip)
    }
}

/// `spec` of a Pod.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub volumes: Option<Volumes>,
    pub containers: Option<Containers>,
    pub init_containers: Option<Containers>,
    pub service_account_name: Option<String>,
    pub service_account: Option<String>,
}

static NO_VOLUMES: Volumes = Volumes::EMPTY;
static NO_CONTAINERS: Containers = Containers::EMPTY;

impl PodSpec {
    /// The service account the pod runs as: `serviceAccountName`, then the deprecated
    /// `serviceAccount`, then `default`.
    pub fn service_account(&self) -> &str {
        service_account_named(self.service_account_name.as_deref(), self.service_account.as_deref())
    }

    pub fn volumes(&self) -> &Volumes {
        self.volumes.as_ref().unwrap_or(&NO_VOLUMES)
    }

    pub fn containers(&self) -> &Containers {
        self.containers.as_ref().unwrap_or(&NO_CONTAINERS)
    }

    pub fn init_containers(&self) -> &Containers {
        self.init_containers.as_ref().unwrap_or(&NO_CONTAINERS)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Read;
        impl Visitor<'_> for Read {
            type Value = Text;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Text, E> {
                Ok(Text::from(text))
            }
        }
        deserializer.deserialize_str(Read)
    }
}

/// Any workload kind, reduced to where its pod template can be.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Workload {
    #[serde(default)]
    metadata: WorkloadMetadata,
    spec: Option<WorkloadSpec>,
    /// A PodTemplate's template.
    template: Option<Pod>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkloadSpec {
    template: Option<Pod>,
    /// A CronJob's `spec.jobTemplate`, whose `spec` is a Job's.
    job_template: Option<Box<Workload>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkloadMetadata {
    deletion_timestamp: Option<IgnoredAny>,
}

impl Workload {
    /// Whether the object is being deleted (`metadata.deletionTimestamp` is set).
    pub fn is_being_deleted(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }

    /// The pod template of a workload of `kind`, at [`WorkloadKind::template_path`].
    pub fn into_template(self, kind: WorkloadKind) -> Option<Pod> {
        match kind {
            WorkloadKind::PodTemplate => self.template,
            WorkloadKind::CronJob => self.spec?.job_template?.spec?.template,
            _ => self.spec?.template,
        }
    }
}

/// What planning and checks read of one pod (or template), and where it sits in the object.
pub struct PodView<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub labels: Option<&'a BTreeMap<String, String>>,
    pub annotations: Option<&'a BTreeMap<String, String>>,
    pub spec: &'a PodSpec,
    /// The field path of the pod spec in messages: `spec`, `spec.template.spec`, ...
    pub field: String,
}

impl<'a> PodView<'a> {
    /// The view of `pod` in `namespace`, with every label; `None` when it has no spec.
    pub fn new(pod: &'a Pod, namespace: &'a str, field: String) -> Option<Self> {
        Self::with_labels(pod, namespace, field, pod.metadata.label_map())
    }

    /// The view of `pod` in `namespace` with `labels` for its labels: those a policy reads
    /// ([`Metadata::labels_read_by`]) are enough to decide as with all of them.
    pub fn with_labels(
        pod: &'a Pod,
        namespace: &'a str,
        field: String,
        labels: Option<&'a BTreeMap<String, String>>,
    ) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        Some(PodView {
            namespace,
            service_account: spec.service_account(),
            labels,
            annotations: pod.metadata.annotations.as_ref(),
            spec,
            field,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(metadata: serde_json::Value, volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": metadata, "spec": {"volumes": volumes}})).expect("pod")
    }

    #[test]
    fn labels_read_as_a_map_reads_them() {
        let labels = json!({"app": "web", "tier": "", "ünï": "cödé", "esc\"aped": "a\\nb"});
        let pod = pod(json!({"labels": labels}), json!([]));
        let as_map: BTreeMap<String, String> = serde_json::from_value(labels).expect("map");
        assert_eq!(pod.metadata.label_map(), Some(&as_map));
        assert_eq!(pod.metadata.labels.as_ref().and_then(|l| l.get("tier")), Some(""));
        assert_eq!(pod.metadata.labels.as_ref().and_then(|l| l.get("none")), None);
    }

    #[test]
    fn a_label_written_twice_counts_once_with_its_last_value() {
        let text = r#"{"metadata": {"labels": {"app": "a", "x": "1", "app": "b"}}}"#;
        let pod: Pod = serde_json::from_str(text).expect("pod");
        let labels = pod.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels.get("app"), Some("b"));
        let map = pod.metadata.label_map().expect("map");
        assert_eq!(map.len(), 2);
        assert_eq!(map["app"], "b");
    }

    #[test]
    fn labels_and_annotations_that_are_not_strings_do_not_decode() {
        for metadata in [
            json!({"labels": {"app": 1}}),
            json!({"labels": ["app"]}),
            json!({"annotations": {"other": 1}}),
            json!({"annotations": {MIRROR_ANNOTATION: null}}),
        ] {
            let decoded = serde_json::from_value::<Pod>(json!({"metadata": metadata}));
            assert!(decoded.is_err(), "{metadata}");
        }
        let absent = serde_json::from_value::<Pod>(json!({"metadata": {"labels": null, "annotations": null}}));
        assert_eq!(absent.expect("null is absent").metadata, Metadata::default());
    }

    #[test]
    fn only_the_annotations_decisions_read_are_kept() {
        let annotations = json!({MIRROR_ANNOTATION: "x", SKIP_ANNOTATION: "a,b", "other": "y"});
        let pod = pod(json!({"annotations": annotations}), json!([]));
        let kept = pod.metadata.annotations.expect("annotations");
        assert_eq!(kept.keys().map(String::as_str).collect::<Vec<_>>(), READ_ANNOTATIONS.to_vec());
        assert_eq!(kept[SKIP_ANNOTATION], "a,b");
    }

    #[test]
    fn a_policy_reads_only_the_labels_its_selectors_name() {
        let policy = Policy::parse(
            "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec:\n  audiences: [{audience: a}]\n  injections:\n    - name: i\n      match:\n        podSelector:\n          matchLabels: {app: web}\n          matchExpressions: [{key: tier, operator: Exists}]\n      volume: {name: t, audience: a, expirationSeconds: 3600, path: t}\n      mount: {mountPath: /t}\n",
        )
        .expect("policy");
        let pod = pod(json!({"labels": {"app": "web", "tier": "1", "other": "2"}}), json!([]));
        let read = pod.metadata.labels_read_by(&policy).expect("labels");
        assert_eq!(read, BTreeMap::from([("app".into(), "web".into()), ("tier".into(), "1".into())]));
        assert_eq!(Pod::default().metadata.labels_read_by(&policy), None, "a pod without labels");
    }

    #[test]
    fn token_sources_keep_their_index_among_sources_of_every_kind() {
        let sources = json!([
            {},
            {"configMap": {"name": "c"}},
            {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": "v"}},
            {"secret": {"name": "s"}},
            {"serviceAccountToken": {"path": "t"}},
            {"serviceAccountToken": {"audience": "", "path": ""}},
        ]);
        let pod = pod(json!({}), json!([{"name": "p", "projected": {"sources": sources}}]));
        let volume = pod.spec.as_ref().expect("spec").volumes().get(0).expect("a volume");
        let tokens: Vec<_> = volume.token_sources().collect();
        let token = |audience, expiration_seconds, path| TokenSource { audience, expiration_seconds, path };
        assert_eq!(
            tokens,
            [(2, token(Some("vault"), Some(600), "v")), (4, token(None, None, "t")), (5, token(Some(""), None, ""))]
        );
        assert!(volume.sole_token().is_none(), "six sources: none is the only one");
    }

    #[test]
    fn the_token_of_a_volume_is_sole_only_when_it_is_its_only_source() {
        let token = json!({"serviceAccountToken": {"audience": "a", "expirationSeconds": 3600, "path": "t"}});
        let volumes = json!([
            {"name": "one-token", "projected": {"sources": [token]}},
            {"name": "one-other", "projected": {"sources": [{"configMap": {"name": "c"}}]}},
            {"name": "two", "projected": {"sources": [token, {"configMap": {"name": "c"}}]}},
            {"name": "none", "projected": {"sources": []}},
            {"name": "null", "projected": {"sources": null}},
        ]);
        let pod = pod(json!({}), volumes);
        let spec = pod.spec.as_ref().expect("spec");
        let sole: Vec<bool> = spec.volumes().iter().map(|v| v.sole_token().is_some()).collect();
        assert_eq!(sole, [true, false, false, false, false]);
        let token = spec.volumes().get(0).and_then(|v| v.sole_token()).expect("token");
        assert_eq!((token.audience, token.expiration_seconds, token.path), (Some("a"), Some(3600), "t"));
        let names: Vec<&str> = spec.volumes().iter().map(|v| v.name).collect();
        assert_eq!(names, ["one-token", "one-other", "two", "none", "null"]);
    }

    #[test]
    fn containers_keep_their_variables_and_mounts_in_order_whatever_the_order_of_fields() {
        let containers = json!([
            {"name": "a", "env": [{"name": "X", "value": "1"}, {"value": "2", "name": "Y"},
                                  {"name": "Z", "valueFrom": {"fieldRef": {}}}, {"name": "N", "value": null}],
             "volumeMounts": [{"mountPath": "/m", "name": "m"}]},
            {"name": "b", "env": null},
            {"image": "x", "name": "c", "env": [], "volumeMounts": [{"name": "n", "mountPath": "/n", "readOnly": true}]},
        ]);
        let pod: Pod = serde_json::from_value(json!({"spec": {"containers": containers}})).expect("pod");
        let spec = pod.spec.as_ref().expect("spec");
        let all: Vec<Container<'_>> = spec.containers().iter().collect();
        assert_eq!(
            all.iter().map(|c| (c.name, c.has_env, c.has_mounts)).collect::<Vec<_>>(),
            [("a", true, true), ("b", false, false), ("c", true, true)]
        );
        let env = |name, value, value_from| EnvVar { name, value, value_from };
        assert_eq!(
            all[0].env().collect::<Vec<_>>(),
            [env("X", Some("1"), false), env("Y", Some("2"), false), env("Z", None, true), env("N", None, false)]
        );
        assert_eq!(all[1].env().count() + all[2].env().count(), 0);
        let mounts: Vec<_> = all.iter().flat_map(|c| c.volume_mounts().map(|m| (m.name, m.mount_path))).collect();
        assert_eq!(mounts, [("m", "/m"), ("n", "/n")]);
        assert!(spec.init_containers().is_empty());
    }

    #[test]
    fn containers_volumes_variables_and_mounts_decode_as_strictly_as_before() {
        for spec in [
            json!({"containers": [{"image": "x"}]}),
            json!({"containers": [{"name": "a", "env": [{"value": "x"}]}]}),
            json!({"containers": [{"name": "a", "env": [{"name": 1}]}]}),
            json!({"containers": [{"name": "a", "volumeMounts": [{"name": "m"}]}]}),
            json!({"containers": [{"name": "a", "volumeMounts": [{"mountPath": "/m"}]}]}),
            json!({"containers": [{"name": null}]}),
            json!({"volumes": [{"projected": {}}]}),
            json!({"volumes": [{"name": "v", "csi": {}}]}),
            json!({"volumes": [{"name": "v", "projected": {"sources": [{"serviceAccountToken": {"path": 1}}]}}]}),
        ] {
            assert!(serde_json::from_value::<Pod>(json!({ "spec": spec })).is_err(), "{spec}");
        }
        for text in [
            r#"{"spec": {"containers": [{"name": "a", "name": "b"}]}}"#,
            r#"{"spec": {"containers": [{"name": "a", "env": [{"name": "X", "name": "Y"}]}]}}"#,
            r#"{"spec": {"containers": [{"name": "a", "volumeMounts": [{"name": "m", "mountPath": "/", "name": "n"}]}]}}"#,
        ] {
            assert!(serde_json::from_str::<Pod>(text).is_err(), "{text}: a field written twice");
        }
    }
}
