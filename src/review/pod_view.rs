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
//! are kept in place. No shape of body costs three times its size (`tests/review_memory.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::OnceLock;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::inject::SKIP_ANNOTATION;
use super::WorkloadKind;
use crate::k8s::names::{service_account_named, MIRROR_ANNOTATION};
use crate::k8s::{tokens, volumes};
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

/// Reads a string onto the end of another, with no allocation of its own.
struct AppendTo<'s>(&'s mut String);

impl<'de> DeserializeSeed<'de> for AppendTo<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for AppendTo<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.0.push_str(value);
        Ok(())
    }
}

/// `spec` of a Pod.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub volumes: Option<Box<[Volume]>>,
    pub containers: Option<Box<[Container]>>,
    pub init_containers: Option<Box<[Container]>>,
    pub service_account_name: Option<String>,
    pub service_account: Option<String>,
}

impl PodSpec {
    /// The service account the pod runs as: `serviceAccountName`, then the deprecated
    /// `serviceAccount`, then `default`.
    pub fn service_account(&self) -> &str {
        service_account_named(self.service_account_name.as_deref(), self.service_account.as_deref())
    }

    pub fn volumes(&self) -> &[Volume] {
        self.volumes.as_deref().unwrap_or_default()
    }

    pub fn containers(&self) -> &[Container] {
        self.containers.as_deref().unwrap_or_default()
    }

    pub fn init_containers(&self) -> &[Container] {
        self.init_containers.as_deref().unwrap_or_default()
    }
}

/// One entry of `spec.volumes`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: Text,
    pub projected: Option<Box<ProjectedVolume>>,
    pub csi: Option<Box<CsiVolume>>,
    /// In-tree types that CSI migration serves through a CSI driver: only whether they are set
    /// matters (see `k8s::volumes::IN_TREE_VOLUME_DRIVERS`, same order).
    pub aws_elastic_block_store: Option<IgnoredAny>,
    pub gce_persistent_disk: Option<IgnoredAny>,
    pub azure_disk: Option<IgnoredAny>,
    pub azure_file: Option<IgnoredAny>,
    pub cinder: Option<IgnoredAny>,
    pub vsphere_volume: Option<IgnoredAny>,
    pub portworx_volume: Option<IgnoredAny>,
}

impl Volume {
    /// The CSI driver the volume reaches inline, with the field that names it: `csi.driver`, or
    /// an in-tree type that CSI migration serves through its driver (`azureFile`, ...).
    pub fn csi_driver(&self) -> Option<(&'static str, &str)> {
        if let Some(csi) = &self.csi {
            return Some(("csi.driver", csi.driver.as_str()));
        }
        volumes::in_tree_driver(crate::in_tree_types_set!(self))
    }

    /// Whether this is the ServiceAccount admission plugin's volume (`k8s::tokens::has_automount_shape`).
    pub fn is_automount(&self) -> bool {
        let tokens = self.token_sources().map(|(_, t)| (t.audience, t.path, t.expiration_seconds));
        tokens::has_automount_shape(&self.name, tokens)
    }

    /// The `serviceAccountToken` sources of a projected volume, with their index in `sources`.
    pub fn token_sources(&self) -> impl Iterator<Item = (usize, TokenSource<'_>)> {
        self.projected.iter().flat_map(|p| p.sources.iter()).flat_map(|sources| sources.tokens.iter())
    }

    /// The only source of a projected volume that lists exactly one; empty otherwise (its
    /// tokens are read with [`Volume::token_sources`]).
    pub fn sources(&self) -> &[VolumeProjection] {
        let sole = self.projected.as_ref().and_then(|p| p.sources.as_ref()?.sole.as_ref());
        sole.map(std::slice::from_ref).unwrap_or_default()
    }
}

/// `projected` of a volume.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ProjectedVolume {
    #[serde(default)]
    pub sources: Option<Sources>,
}

/// `projected.sources`, reduced as it is read: every `serviceAccountToken` source, stored
/// compactly, and the only source when there is exactly one; other sources are skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sources {
    sole: Option<VolumeProjection>,
    tokens: Tokens,
}

/// One source of a projected volume, as it is read.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeProjection {
    pub service_account_token: Option<TokenProjection>,
}

impl<'de> Deserialize<'de> for Sources {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Read;
        impl<'de> Visitor<'de> for Read {
            type Value = Sources;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of volume projections")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Sources, A::Error> {
                let (mut tokens, mut first, mut count) = (Tokens::default(), None, 0u32);
                while let Some(source) = seq.next_element::<VolumeProjection>()? {
                    if let Some(token) = &source.service_account_token {
                        tokens.push(count, token).map_err(de::Error::custom)?;
                    }
                    if count == 0 {
                        first = Some(source);
                    }
                    count = count.checked_add(1).ok_or_else(|| de::Error::custom(TOO_LARGE))?;
                }
                tokens.shrink();
                Ok(Sources { sole: first.filter(|_| count == 1), tokens })
            }
        }
        deserializer.deserialize_seq(Read)
    }
}

const TOO_LARGE: &str = "over 4 GiB of token sources";

/// Token sources in two allocations: their audiences and paths, one after the other, and
/// one fixed-size entry each. A minimal source (`{"serviceAccountToken":{}},`) is 27 bytes of
/// JSON and 24 here.
#[derive(Debug, Clone, Default, PartialEq)]
struct Tokens {
    text: String,
    entries: Vec<TokenEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct TokenEntry {
    /// Where it is in the volume's `sources`.
    index: u32,
    /// Where its audience ends in the text, and its path after it.
    audience_end: u32,
    path_end: u32,
    has_audience: bool,
    has_expiration: bool,
    expiration_seconds: i64,
}

/// One `serviceAccountToken` source, as read from [`Tokens`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenSource<'a> {
    pub audience: Option<&'a str>,
    pub expiration_seconds: Option<i64>,
    pub path: &'a str,
}

impl Tokens {
    fn push(&mut self, index: u32, token: &TokenProjection) -> Result<(), &'static str> {
        let end = |text: &String| u32::try_from(text.len()).map_err(|_| TOO_LARGE);
        self.text.push_str(token.audience.as_deref().unwrap_or_default());
        let audience_end = end(&self.text)?;
        self.text.push_str(&token.path);
        self.entries.push(TokenEntry {
            index,
            audience_end,
            path_end: end(&self.text)?,
            has_audience: token.audience.is_some(),
            has_expiration: token.expiration_seconds.is_some(),
            expiration_seconds: token.expiration_seconds.unwrap_or_default(),
        });
        Ok(())
    }

    fn shrink(&mut self) {
        self.text.shrink_to_fit();
        self.entries.shrink_to_fit();
    }

    fn iter(&self) -> impl Iterator<Item = (usize, TokenSource<'_>)> {
        self.entries.iter().scan(0, |start, entry| {
            let (audience_end, path_end) = (entry.audience_end as usize, entry.path_end as usize);
            let token = TokenSource {
                audience: entry.has_audience.then(|| &self.text[*start..audience_end]),
                expiration_seconds: entry.has_expiration.then_some(entry.expiration_seconds),
                path: &self.text[audience_end..path_end],
            };
            *start = path_end;
            Some((entry.index as usize, token))
        })
    }
}

/// A `serviceAccountToken` projection.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenProjection {
    pub audience: Option<String>,
    pub expiration_seconds: Option<i64>,
    #[serde(default)]
    pub path: String,
}

/// An inline `csi` volume.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CsiVolume {
    pub driver: Text,
}

/// One entry of `containers` or `initContainers`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: Text,
    pub env: Option<Box<[EnvVar]>>,
    pub volume_mounts: Option<Box<[VolumeMount]>>,
}

/// One entry of a container's `env`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: Text,
    pub value: Option<Box<str>>,
    /// Only whether it is set matters.
    pub value_from: Option<IgnoredAny>,
}

/// One entry of a container's `volumeMounts`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: Text,
    pub mount_path: Text,
}

/// A string read from a pod: up to 22 bytes in place, a longer one in an allocation of its own
/// length. Names and paths are short; a `String` would add an allocation to each, and a pod
/// can list hundreds of thousands of them.
#[derive(Clone)]
pub enum Text {
    Inline(u8, [u8; INLINE_BYTES]),
    Heap(Box<str>),
}

/// The longest [`Text`] kept in place.
const INLINE_BYTES: usize = 22;

impl Text {
    pub fn as_str(&self) -> &str {
        match self {
            Text::Inline(len, bytes) => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).expect("only whole strings are kept in place")
            }
            Text::Heap(text) => text,
        }
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        match u8::try_from(text.len()) {
            Ok(len) if text.len() <= INLINE_BYTES => {
                let mut bytes = [0; INLINE_BYTES];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                Text::Inline(len, bytes)
            }
            _ => Text::Heap(text.into()),
        }
    }
}

impl Default for Text {
    fn default() -> Self {
        Text::from("")
    }
}

impl std::ops::Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
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
        let volume = &pod.spec.as_ref().expect("spec").volumes()[0];
        let tokens: Vec<_> = volume.token_sources().collect();
        let token = |audience, expiration_seconds, path| TokenSource { audience, expiration_seconds, path };
        assert_eq!(
            tokens,
            [(2, token(Some("vault"), Some(600), "v")), (4, token(None, None, "t")), (5, token(Some(""), None, ""))]
        );
        assert!(volume.sources().is_empty(), "six sources: none is the only one");
    }

    #[test]
    fn the_only_source_of_a_volume_is_kept_whole() {
        let token = json!({"serviceAccountToken": {"audience": "a", "expirationSeconds": 3600, "path": "t"}});
        let volumes = json!([
            {"name": "one-token", "projected": {"sources": [token]}},
            {"name": "one-other", "projected": {"sources": [{"configMap": {"name": "c"}}]}},
            {"name": "two", "projected": {"sources": [token, {"configMap": {"name": "c"}}]}},
            {"name": "none", "projected": {"sources": []}},
            {"name": "null", "projected": {"sources": null}},
        ]);
        let pod = pod(json!({}), volumes);
        let kept: Vec<usize> = pod.spec.as_ref().expect("spec").volumes().iter().map(|v| v.sources().len()).collect();
        assert_eq!(kept, [1, 1, 0, 0, 0]);
        let spec = pod.spec.as_ref().expect("spec");
        let sole = spec.volumes()[0].sources()[0].service_account_token.as_ref().expect("token");
        assert_eq!(
            (sole.audience.as_deref(), sole.expiration_seconds, sole.path.as_str()),
            (Some("a"), Some(3600), "t")
        );
        assert!(spec.volumes()[1].sources()[0].service_account_token.is_none());
    }
}
