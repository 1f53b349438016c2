//! The lists of a pod view a body can fill with hundreds of thousands of entries (volumes,
//! containers, their variables and mounts), each stored flat: the text of every name in one
//! block, a few bytes per entry, and nothing of an entry's own on the heap.
//!
//! A volume keeps its name and, only when it has any, what decisions read of its source (its
//! `serviceAccountToken` sources, its CSI driver, its in-tree type); a container keeps its name
//! and where its variables and mounts are in the lists of all of them.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::text::{AppendTo, Text};
use crate::k8s::{tokens, volumes};

const TOO_LARGE: &str = "over 4 GiB in one list of a pod";

/// `len` as a u32, or the error of a list too large to index.
fn index<E: de::Error>(len: usize) -> Result<u32, E> {
    u32::try_from(len).map_err(|_| E::custom(TOO_LARGE))
}

/// Unused capacity a list keeps once read: giving back less is not worth a reallocation, which
/// every ordinary pod would pay.
const KEPT_SLACK: usize = 1024;

/// Gives back the capacity a list's doubling left unused, when it is more than [`KEPT_SLACK`].
fn trim<T>(list: &mut Vec<T>) {
    if list.capacity() - list.len() > KEPT_SLACK {
        list.shrink_to_fit();
    }
}

/// [`trim`] for text.
fn trim_text(text: &mut String) {
    if text.capacity() - text.len() > KEPT_SLACK {
        text.shrink_to_fit();
    }
}

/// Strings one after the other in one block of text, each ending where the next starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Strings {
    text: String,
    ends: Vec<u32>,
}

impl Strings {
    const EMPTY: Strings = Strings { text: String::new(), ends: Vec::new() };

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = i.checked_sub(1).map_or(0, |before| self.ends[before] as usize);
        Some(&self.text[start..end])
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        self.ends.iter().scan(0, |start, &end| {
            let string = &self.text[*start..end as usize];
            *start = end as usize;
            Some(string)
        })
    }

    /// Ends the string appended to the text since the last one ended.
    fn end<E: de::Error>(&mut self) -> Result<(), E> {
        self.ends.push(index(self.text.len())?);
        Ok(())
    }

    fn shrink(&mut self) {
        trim_text(&mut self.text);
        trim(&mut self.ends);
    }
}

/// Pairs of strings (a name and a value, a name and a path), each pair's second string right
/// after its first in one block of text, with a few flags each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Pairs {
    text: String,
    entries: Vec<Pair>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pair {
    first_end: u32,
    second_end: u32,
    flags: u8,
}

/// Flags of an environment variable: `value` is set, `valueFrom` is set.
const HAS_VALUE: u8 = 1;
const HAS_VALUE_FROM: u8 = 2;

impl Pairs {
    const EMPTY: Pairs = Pairs { text: String::new(), entries: Vec::new() };

    /// Ends a pair whose strings were appended from `start` on, at `first` and `second` (in the
    /// order they came): moved so that the first comes first when they came the other way.
    fn push<E: de::Error>(
        &mut self,
        start: usize,
        first: (usize, usize),
        second: (usize, usize),
        flags: u8,
    ) -> Result<(), E> {
        if second.0 < first.0 {
            let tail = self.text.split_off(start);
            self.text.push_str(&tail[first.0 - start..first.1 - start]);
            self.text.push_str(&tail[second.0 - start..second.1 - start]);
        }
        let first_end = index(start + first.1 - first.0)?;
        self.entries.push(Pair { first_end, second_end: index(self.text.len())?, flags });
        Ok(())
    }

    /// The pairs `from..to`, as `(first, second, flags)`.
    fn range(&self, from: usize, to: usize) -> impl Iterator<Item = (&str, &str, u8)> {
        let start = from.checked_sub(1).map_or(0, |before| self.entries[before].second_end as usize);
        self.entries[from..to].iter().scan(start, |start, pair| {
            let (first_end, second_end) = (pair.first_end as usize, pair.second_end as usize);
            let strings = (&self.text[*start..first_end], &self.text[first_end..second_end], pair.flags);
            *start = second_end;
            Some(strings)
        })
    }

    fn shrink(&mut self) {
        trim_text(&mut self.text);
        trim(&mut self.entries);
    }
}

/// Appends a string to `text` if the value is not null: where it is, or `None` for null.
struct OptionalString<'s>(&'s mut String);

impl<'de> DeserializeSeed<'de> for OptionalString<'_> {
    type Value = Option<(usize, usize)>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for OptionalString<'_> {
    type Value = Option<(usize, usize)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let start = self.0.len();
        AppendTo(self.0).deserialize(deserializer)?;
        Ok(Some((start, self.0.len())))
    }
}

/// Appends a required string to `text`: where it is.
fn read_string<'de, A: MapAccess<'de>>(map: &mut A, text: &mut String) -> Result<(usize, usize), A::Error> {
    let start = text.len();
    map.next_value_seed(AppendTo(text))?;
    Ok((start, text.len()))
}

/// Fails on a field read twice, as a derived `Deserialize` does.
fn once<T, E: de::Error>(seen: &Option<T>, field: &'static str) -> Result<(), E> {
    match seen {
        Some(_) => Err(E::duplicate_field(field)),
        None => Ok(()),
    }
}

/// The fields of a container's `env` entry that are read; the others are skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum EnvField {
    Name,
    Value,
    ValueFrom,
    #[serde(other)]
    Other,
}

/// The fields of a container's `volumeMounts` entry that are read; the others are skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum MountField {
    Name,
    MountPath,
    #[serde(other)]
    Other,
}

/// Which list of pairs an entry is read into.
#[derive(Clone, Copy)]
enum PairKind {
    Env,
    Mount,
}

/// Reads one `env` or `volumeMounts` entry onto the end of a list of pairs.
struct PairSeed<'l>(&'l mut Pairs, PairKind);

impl<'de> DeserializeSeed<'de> for PairSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PairSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.1 {
            PairKind::Env => "struct EnvVar",
            PairKind::Mount => "struct VolumeMount",
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        match self.1 {
            PairKind::Env => read_env(self.0, map),
            PairKind::Mount => read_mount(self.0, map),
        }
    }
}

/// One `env` entry: `name` (required), `value` and whether `valueFrom` is set.
fn read_env<'de, A: MapAccess<'de>>(pairs: &mut Pairs, mut map: A) -> Result<(), A::Error> {
    let start = pairs.text.len();
    let (mut name, mut value, mut value_from) = (None, None, None);
    while let Some(field) = map.next_key::<EnvField>()? {
        match field {
            EnvField::Name => {
                once(&name, "name")?;
                name = Some(read_string(&mut map, &mut pairs.text)?);
            }
            EnvField::Value => {
                once(&value, "value")?;
                value = Some(map.next_value_seed(OptionalString(&mut pairs.text))?);
            }
            EnvField::ValueFrom => {
                once(&value_from, "valueFrom")?;
                value_from = Some(map.next_value::<Option<IgnoredAny>>()?.is_some());
            }
            EnvField::Other => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
    let value = value.flatten();
    let flags = if value.is_some() { HAS_VALUE } else { 0 } | if value_from == Some(true) { HAS_VALUE_FROM } else { 0 };
    let end = pairs.text.len();
    pairs.push(start, name, value.unwrap_or((end, end)), flags)
}

/// One `volumeMounts` entry: `name` and `mountPath`, both required.
fn read_mount<'de, A: MapAccess<'de>>(pairs: &mut Pairs, mut map: A) -> Result<(), A::Error> {
    let start = pairs.text.len();
    let (mut name, mut path) = (None, None);
    while let Some(field) = map.next_key::<MountField>()? {
        match field {
            MountField::Name => {
                once(&name, "name")?;
                name = Some(read_string(&mut map, &mut pairs.text)?);
            }
            MountField::MountPath => {
                once(&path, "mountPath")?;
                path = Some(read_string(&mut map, &mut pairs.text)?);
            }
            MountField::Other => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
    let path = path.ok_or_else(|| de::Error::missing_field("mountPath"))?;
    pairs.push(start, name, path, 0)
}

/// Reads a list of `env` or `volumeMounts` entries, or null, onto the end of a list of pairs:
/// whether it was a list.
struct PairListSeed<'l>(&'l mut Pairs, PairKind);

impl<'de> DeserializeSeed<'de> for PairListSeed<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for PairListSeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element_seed(PairSeed(self.0, self.1))?.is_some() {}
        Ok(true)
    }
}

/// `containers` or `initContainers` of a pod: names, variables and mounts in lists of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Containers {
    names: Strings,
    entries: Vec<ContainerEntry>,
    env: Pairs,
    mounts: Pairs,
}

/// Where one container's variables and mounts end in the lists of all of them, and whether it
/// has each list at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContainerEntry {
    env_end: u32,
    mounts_end: u32,
    has_env: bool,
    has_mounts: bool,
}

/// One container, as read from [`Containers`].
#[derive(Debug, Clone, Copy)]
pub struct Container<'a> {
    pub name: &'a str,
    /// Whether the container has an `env` list (which a patch appends to rather than creates).
    pub has_env: bool,
    /// Whether it has a `volumeMounts` list.
    pub has_mounts: bool,
    env: (&'a Pairs, usize, usize),
    mounts: (&'a Pairs, usize, usize),
}

/// One entry of a container's `env`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvVar<'a> {
    pub name: &'a str,
    pub value: Option<&'a str>,
    /// Whether `valueFrom` is set (only that matters).
    pub value_from: bool,
}

/// One entry of a container's `volumeMounts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeMount<'a> {
    pub name: &'a str,
    pub mount_path: &'a str,
}

impl<'a> Container<'a> {
    /// Its `env`, in order; empty when it has none.
    pub fn env(&self) -> impl Iterator<Item = EnvVar<'a>> {
        let (pairs, from, to) = self.env;
        pairs.range(from, to).map(|(name, value, flags)| EnvVar {
            name,
            value: (flags & HAS_VALUE != 0).then_some(value),
            value_from: flags & HAS_VALUE_FROM != 0,
        })
    }

    /// Its `volumeMounts`, in order; empty when it has none.
    pub fn volume_mounts(&self) -> impl Iterator<Item = VolumeMount<'a>> {
        let (pairs, from, to) = self.mounts;
        pairs.range(from, to).map(|(name, mount_path, _)| VolumeMount { name, mount_path })
    }
}

impl Containers {
    pub(super) const EMPTY: Containers =
        Containers { names: Strings::EMPTY, entries: Vec::new(), env: Pairs::EMPTY, mounts: Pairs::EMPTY };

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The container at `i`.
    pub fn get(&self, i: usize) -> Option<Container<'_>> {
        let entry = self.entries.get(i)?;
        let before = i.checked_sub(1).map(|before| self.entries[before]);
        let (env_from, mounts_from) = before.map_or((0, 0), |b| (b.env_end as usize, b.mounts_end as usize));
        Some(Container {
            name: self.names.get(i)?,
            has_env: entry.has_env,
            has_mounts: entry.has_mounts,
            env: (&self.env, env_from, entry.env_end as usize),
            mounts: (&self.mounts, mounts_from, entry.mounts_end as usize),
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = Container<'_>> {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// The fields of a container that are read; the others are skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum ContainerField {
    Name,
    Env,
    VolumeMounts,
    #[serde(other)]
    Other,
}

/// Reads one container onto the end of [`Containers`].
struct ContainerSeed<'l>(&'l mut Containers);

impl<'de> DeserializeSeed<'de> for ContainerSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ContainerSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct Container")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let containers = self.0;
        let (mut name, mut env, mut mounts) = (None, None, None);
        while let Some(field) = map.next_key::<ContainerField>()? {
            match field {
                ContainerField::Name => {
                    once(&name, "name")?;
                    name = Some(read_string(&mut map, &mut containers.names.text)?);
                }
                ContainerField::Env => {
                    once(&env, "env")?;
                    env = Some(map.next_value_seed(PairListSeed(&mut containers.env, PairKind::Env))?);
                }
                ContainerField::VolumeMounts => {
                    once(&mounts, "volumeMounts")?;
                    mounts = Some(map.next_value_seed(PairListSeed(&mut containers.mounts, PairKind::Mount))?);
                }
                ContainerField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        name.ok_or_else(|| de::Error::missing_field("name"))?;
        containers.names.end()?;
        containers.entries.push(ContainerEntry {
            env_end: index(containers.env.entries.len())?,
            mounts_end: index(containers.mounts.entries.len())?,
            has_env: env == Some(true),
            has_mounts: mounts == Some(true),
        });
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Containers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Read;
        impl<'de> Visitor<'de> for Read {
            type Value = Containers;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Containers, A::Error> {
                let mut containers = Containers::default();
                while seq.next_element_seed(ContainerSeed(&mut containers))?.is_some() {}
                containers.names.shrink();
                trim(&mut containers.entries);
                containers.env.shrink();
                containers.mounts.shrink();
                Ok(containers)
            }
        }
        deserializer.deserialize_seq(Read)
    }
}

/// `spec.volumes` of a pod: every name, and what decisions read of the sources of the volumes
/// that have any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Volumes {
    names: Strings,
    /// By volume index.
    sources: Vec<VolumeSource>,
}

/// What decisions read of one volume's source.
#[derive(Debug, Clone, PartialEq)]
struct VolumeSource {
    index: u32,
    tokens: Option<Box<Tokens>>,
    /// Whether its token is the only source of the volume.
    sole_token: bool,
    csi_driver: Option<Text>,
    /// Which of the in-tree types CSI migration serves are set (`k8s::volumes::IN_TREE_VOLUME_DRIVERS`).
    in_tree: [bool; volumes::IN_TREE_VOLUME_DRIVERS.len()],
}

/// One entry of `spec.volumes`, as read from [`Volumes`].
#[derive(Debug, Clone, Copy)]
pub struct Volume<'a> {
    pub name: &'a str,
    source: Option<&'a VolumeSource>,
}

impl<'a> Volume<'a> {
    /// The CSI driver the volume reaches inline, with the field that names it: `csi.driver`, or
    /// an in-tree type that CSI migration serves through its driver (`azureFile`, ...).
    pub fn csi_driver(&self) -> Option<(&'static str, &'a str)> {
        let source = self.source?;
        if let Some(driver) = &source.csi_driver {
            return Some(("csi.driver", driver.as_str()));
        }
        volumes::in_tree_driver(source.in_tree)
    }

    /// Whether this is the ServiceAccount admission plugin's volume (`k8s::tokens::has_automount_shape`).
    pub fn is_automount(&self) -> bool {
        let tokens = self.token_sources().map(|(_, t)| (t.audience, t.path, t.expiration_seconds));
        tokens::has_automount_shape(self.name, tokens)
    }

    /// The `serviceAccountToken` sources of a projected volume, with their index in `sources`.
    pub fn token_sources(&self) -> impl Iterator<Item = (usize, TokenSource<'a>)> {
        self.source.and_then(|source| source.tokens.as_deref()).into_iter().flat_map(Tokens::iter)
    }

    /// The token of a projected volume whose only source is a `serviceAccountToken`.
    pub fn sole_token(&self) -> Option<TokenSource<'a>> {
        self.source.filter(|source| source.sole_token)?;
        self.token_sources().next().map(|(_, token)| token)
    }
}

impl Volumes {
    pub(super) const EMPTY: Volumes = Volumes { names: Strings::EMPTY, sources: Vec::new() };

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.len() == 0
    }

    /// The volume at `i`.
    pub fn get(&self, i: usize) -> Option<Volume<'_>> {
        let name = self.names.get(i)?;
        let found = self.sources.binary_search_by_key(&i, |source| source.index as usize).ok();
        Some(Volume { name, source: found.map(|k| &self.sources[k]) })
    }

    pub fn iter(&self) -> impl Iterator<Item = Volume<'_>> {
        let mut sources = self.sources.iter().peekable();
        self.names.iter().enumerate().map(move |(i, name)| {
            let source = sources.next_if(|source| source.index as usize == i);
            Volume { name, source }
        })
    }

    /// Adds one volume as read: its name, and its source when decisions read anything of it.
    fn push<E: de::Error>(&mut self, volume: VolumeFields) -> Result<(), E> {
        let index = index(self.names.len())?;
        self.names.text.push_str(&volume.name);
        self.names.end()?;
        let in_tree = crate::in_tree_types_set!(volume);
        let tokens = volume.projected.and_then(|projected| projected.sources).filter(|s| !s.tokens.entries.is_empty());
        if tokens.is_none() && volume.csi.is_none() && !in_tree.contains(&true) {
            return Ok(());
        }
        self.sources.push(VolumeSource {
            index,
            sole_token: tokens.as_ref().is_some_and(|sources| sources.sole_token),
            tokens: tokens.map(|sources| Box::new(sources.tokens)),
            csi_driver: volume.csi.map(|csi| csi.driver),
            in_tree,
        });
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Volumes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Read;
        impl<'de> Visitor<'de> for Read {
            type Value = Volumes;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Volumes, A::Error> {
                let mut volumes = Volumes::default();
                while let Some(volume) = seq.next_element::<VolumeFields>()? {
                    volumes.push(volume)?;
                }
                volumes.names.shrink();
                trim(&mut volumes.sources);
                Ok(volumes)
            }
        }
        deserializer.deserialize_seq(Read)
    }
}

/// One entry of `spec.volumes` as it is read, before it is stored in [`Volumes`].
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeFields {
    name: Text,
    projected: Option<ProjectedVolume>,
    csi: Option<CsiVolume>,
    /// In-tree types that CSI migration serves through a CSI driver: only whether they are set
    /// matters (see `k8s::volumes::IN_TREE_VOLUME_DRIVERS`, same order).
    aws_elastic_block_store: Option<IgnoredAny>,
    gce_persistent_disk: Option<IgnoredAny>,
    azure_disk: Option<IgnoredAny>,
    azure_file: Option<IgnoredAny>,
    cinder: Option<IgnoredAny>,
    vsphere_volume: Option<IgnoredAny>,
    portworx_volume: Option<IgnoredAny>,
}

/// `projected` of a volume.
#[derive(Deserialize)]
struct ProjectedVolume {
    #[serde(default)]
    sources: Option<Sources>,
}

/// An inline `csi` volume.
#[derive(Deserialize)]
struct CsiVolume {
    driver: Text,
}

/// `projected.sources`, reduced as it is read: every `serviceAccountToken` source, stored
/// compactly, and whether one is the only source; other sources are skipped.
struct Sources {
    tokens: Tokens,
    sole_token: bool,
}

/// One source of a projected volume, as it is read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeProjection {
    service_account_token: Option<TokenProjection>,
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
                let (mut tokens, mut count) = (Tokens::default(), 0u32);
                while let Some(source) = seq.next_element::<VolumeProjection>()? {
                    if let Some(token) = &source.service_account_token {
                        tokens.push(count, token)?;
                    }
                    count = count.checked_add(1).ok_or_else(|| de::Error::custom(TOO_LARGE))?;
                }
                trim_text(&mut tokens.text);
                trim(&mut tokens.entries);
                Ok(Sources { sole_token: count == 1 && tokens.entries.len() == 1, tokens })
            }
        }
        deserializer.deserialize_seq(Read)
    }
}

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

/// One `serviceAccountToken` source, as read from a volume.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenSource<'a> {
    pub audience: Option<&'a str>,
    pub expiration_seconds: Option<i64>,
    pub path: &'a str,
}

impl Tokens {
    fn push<E: de::Error>(&mut self, index: u32, token: &TokenProjection) -> Result<(), E> {
        self.text.push_str(token.audience.as_deref().unwrap_or_default());
        let audience_end = self::index(self.text.len())?;
        self.text.push_str(&token.path);
        self.entries.push(TokenEntry {
            index,
            audience_end,
            path_end: self::index(self.text.len())?,
            has_audience: token.audience.is_some(),
            has_expiration: token.expiration_seconds.is_some(),
            expiration_seconds: token.expiration_seconds.unwrap_or_default(),
        });
        Ok(())
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

/// A `serviceAccountToken` projection, as it is read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenProjection {
    audience: Option<String>,
    expiration_seconds: Option<i64>,
    #[serde(default)]
    path: String,
}
