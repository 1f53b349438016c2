//! Turns a policy document into a [`Policy`], collecting every problem with its field path.

use std::collections::{HashMap, HashSet};

use globset::GlobSetBuilder;

use super::document::{PolicyDocument, API_VERSION, DEFAULT_POD_NAMESPACES, KIND};
use super::globs::{Globs, LabelSelector};
use super::*;
use crate::k8s::tokens::AUTOMOUNT_EXPIRATION_SECONDS;

/// A policy document read leniently: the typed document (when the problems could be worked
/// around), every problem found, and the array elements taken out on the way (an element
/// missing a required field), so that later paths can name the elements as written.
pub(super) struct Read {
    pub document: Option<PolicyDocument>,
    pub problems: Vec<Problem>,
    /// `(array path, index)` of each element taken out, in order.
    removed: Vec<(String, usize)>,
}

impl Read {
    /// `path` in the document as written: indexes at or after a removed element move up.
    pub fn original_path(&self, path: &str) -> String {
        let mut path = path.to_string();
        for (array, index) in self.removed.iter().rev() {
            let prefix = format!("{array}[");
            let Some(rest) = path.strip_prefix(&prefix) else { continue };
            let Some((number, tail)) = rest.split_once(']') else { continue };
            if let Ok(at) = number.parse::<usize>() {
                if at >= *index {
                    path = format!("{prefix}{}]{tail}", at + 1);
                }
            }
        }
        path
    }
}

/// Reads the document, reporting every field that does not fit its type: each problem's field
/// (or, for a missing required field, the element that lacks it) is taken out and the rest read
/// again, so one mistake does not hide the others.
pub(super) fn read_document(text: &str) -> Result<Read, PolicyError> {
    let mut value: serde_json::Value = serde_yaml_ng::from_str(text).map_err(|err| {
        let position = err.location().map(|at| Position { line: at.line(), column: at.column() });
        PolicyError::Syntax(Problem { path: "(document)".to_string(), message: err.to_string(), position })
    })?;
    let mut read = Read { document: None, problems: Vec::new(), removed: Vec::new() };
    if let Some(problem) = foreign_kind(&value) {
        read.problems.push(problem);
        return Ok(read);
    }
    drop_nulls(&mut value);
    // Each pass removes one field or element, so the document's size bounds the passes.
    loop {
        let err = match serde_path_to_error::deserialize::<_, PolicyDocument>(&value) {
            Ok(document) => {
                read.document = Some(document);
                return Ok(read);
            }
            Err(err) => err,
        };
        let path = err.path().to_string();
        let path = if path == "." { "(document)".to_string() } else { path };
        let message = in_plain_words(&err.into_inner().to_string());
        let repaired = remove_node(&mut value, &path);
        read.problems.push(Problem { path: read.original_path(&path), message, position: None });
        match repaired {
            Some(Some(element)) => read.removed.push(element),
            Some(None) => {}
            None => return Ok(read),
        }
    }
}

/// A decoding error in the words of the policy's readers, not of Rust's types: `expected u64`
/// becomes `expected an integer`, `expected struct ...` `expected an object`, and so on.
fn in_plain_words(message: &str) -> String {
    let mut words = message.to_string();
    for integer in ["u64", "i64", "u32", "i32", "usize", "u16", "u8"] {
        words = words.replace(&format!("expected {integer}"), "expected an integer");
    }
    if let Some(at) = words.find("expected struct ") {
        words.replace_range(at.., "expected an object");
    }
    words.replace("expected a sequence", "expected a list").replace("expected a map", "expected an object")
}

/// Takes out fields written without a value (`match:`), which YAML reads as null: a field
/// left empty means the same as a field left out.
fn drop_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// A document of another kind (a Kyverno ClusterPolicy, a Pod) given as a policy.
fn foreign_kind(value: &serde_json::Value) -> Option<Problem> {
    let kind = value.get("kind")?.as_str()?;
    let api_version = value.get("apiVersion").and_then(serde_json::Value::as_str).unwrap_or_default();
    (kind != KIND).then(|| Problem {
        path: "kind".to_string(),
        message: format!(
            "this is a {kind} ({api_version}), not a {KIND} ({API_VERSION}): give tokengate a policy document"
        ),
        position: None,
    })
}

/// Takes out the node at `path` (`spec.audiences[0].namespaces`): a field of an object, or an
/// element of an array. `None` when there is no such node (or it is the document itself);
/// `Some(Some((array, index)))` when an array element was taken out.
fn remove_node(value: &mut serde_json::Value, path: &str) -> Option<Option<(String, usize)>> {
    let (parent, last) = match path.rfind(['.', '[']) {
        Some(at) if path[at..].starts_with('[') => (&path[..at], &path[at..]),
        Some(at) => (&path[..at], &path[at + 1..]),
        None => ("", path),
    };
    let node = node_at(value, parent)?;
    match last.strip_prefix('[').and_then(|i| i.strip_suffix(']')).and_then(|i| i.parse::<usize>().ok()) {
        Some(index) => {
            let items = node.as_array_mut().filter(|items| index < items.len())?;
            items.remove(index);
            Some(Some((parent.to_string(), index)))
        }
        None if !last.is_empty() && last != "(document)" => node.as_object_mut()?.remove(last).map(|_| None),
        None => None,
    }
}

/// The node at a path like `spec.audiences[0]` (`""` is the document).
fn node_at<'a>(value: &'a mut serde_json::Value, path: &str) -> Option<&'a mut serde_json::Value> {
    let mut node = value;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let (name, indexes) = segment.split_once('[').map_or((segment, ""), |(n, rest)| (n, rest));
        if !name.is_empty() {
            node = node.get_mut(name)?;
        }
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            node = index.trim_end_matches(']').parse::<usize>().ok().and_then(|i| node.get_mut(i))?;
        }
    }
    Some(node)
}

/// Collects problems while a document is compiled.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { path: path.into(), message: message.into(), position: None });
    }

    fn globs(&mut self, path: &str, patterns: Option<&[String]>) -> Globs {
        Globs::compile(patterns).unwrap_or_else(|(index, message)| {
            self.add(format!("{path}[{index}]"), format!("invalid glob: {message}"));
            Globs::any()
        })
    }
}

impl TryFrom<PolicyDocument> for Policy {
    type Error = PolicyError;

    fn try_from(document: PolicyDocument) -> Result<Self, Self::Error> {
        compile(document, &[])
    }
}

/// Compiles a document; `learned` API server audiences are added to its `apiServerAudiences`.
pub(super) fn compile(document: PolicyDocument, learned: &[String]) -> Result<Policy, PolicyError> {
    let mut problems = Problems::default();
    check_header(&document, &mut problems);
    let spec = document.spec;
    let api_server_audiences = compile_api_server_audiences(&spec.api_server_audiences, learned, &mut problems);
    let normalize = |a: &str| -> String {
        if api_server_audiences.contains(a) {
            String::new()
        } else {
            a.to_string()
        }
    };
    let bounds = compile_expiration(&spec.expiration, &mut problems);
    let legacy_tokens = compile_legacy_tokens(&spec.legacy_tokens, &mut problems);
    let allow_list = compile_audiences(&spec.audiences, &bounds, &normalize, &mut problems);
    let csi_drivers = compile_csi_drivers(&spec.csi_drivers, &normalize, &mut problems);
    let node_restriction = compile_node_restriction(&spec.node_restriction, &normalize, &mut problems);
    let exemptions = compile_exemptions(&spec.exemptions, &mut problems);

    let mut policy = Policy {
        mode: spec.mode,
        api_server_audiences: api_server_audiences.clone(),
        api_server_audiences_listed: !spec.api_server_audiences.is_empty(),
        min_seconds: bounds.min_seconds,
        max_seconds: bounds.max_seconds,
        extended_seconds: bounds.extended_seconds,
        legacy_tokens,
        audiences: allow_list.audiences,
        all_namespaces: allow_list.all_namespaces,
        all_namespaces_owner: allow_list.all_namespaces_owner,
        csi_drivers,
        node_restriction,
        injections: Vec::new(),
        exemptions,
    };
    policy.injections = compile_injections(&spec.injections, &policy, &mut problems);

    if problems.0.is_empty() {
        Ok(policy)
    } else {
        Err(PolicyError::Invalid(problems.0))
    }
}

/// Checks `apiVersion` and `kind`.
fn check_header(document: &PolicyDocument, problems: &mut Problems) {
    if document.api_version != API_VERSION {
        problems.add("apiVersion", format!("must be {API_VERSION}, not {:?}", document.api_version));
    }
    if document.kind != KIND {
        problems.add("kind", format!("must be {KIND}, not {:?}", document.kind));
    }
}

/// The API server audiences decisions map to `""`: the non-empty entries of
/// `spec.apiServerAudiences` (an empty one is a problem) and the `learned` ones.
fn compile_api_server_audiences(listed: &[String], learned: &[String], problems: &mut Problems) -> HashSet<String> {
    for (i, audience) in listed.iter().enumerate() {
        if audience.is_empty() {
            problems.add(format!("spec.apiServerAudiences[{i}]"), "must not be empty");
        }
    }
    listed.iter().chain(learned).filter(|a| !a.is_empty()).cloned().collect()
}

/// `spec.expiration` with its defaults filled in.
struct Bounds {
    min_seconds: u64,
    max_seconds: u64,
    extended_seconds: u64,
}

/// Fills in `spec.expiration`'s defaults and checks each bound against the API server's own.
fn compile_expiration(expiration: &document::ExpirationSpec, problems: &mut Problems) -> Bounds {
    let min_seconds = expiration.min_seconds.unwrap_or(MIN_EXPIRATION_SECONDS);
    if min_seconds < MIN_EXPIRATION_SECONDS {
        problems.add(
            "spec.expiration.minSeconds",
            format!("{min_seconds} is below {MIN_EXPIRATION_SECONDS}, the API server's own minimum"),
        );
    }
    let max_seconds = expiration.max_seconds.unwrap_or(API_MAX_EXPIRATION_SECONDS);
    check_max(problems, "spec.expiration.maxSeconds", max_seconds, min_seconds);
    let extended_seconds = expiration.extended_seconds.unwrap_or(DEFAULT_EXTENDED_SECONDS);
    if !(AUTOMOUNT_EXPIRATION_SECONDS..=API_MAX_EXPIRATION_SECONDS).contains(&extended_seconds) {
        problems.add(
            "spec.expiration.extendedSeconds",
            format!("{extended_seconds} is outside {AUTOMOUNT_EXPIRATION_SECONDS}..{API_MAX_EXPIRATION_SECONDS}: 3607 when the API server does not extend tokens, else its --service-account-max-extended-token-expiration"),
        );
    }
    Bounds { min_seconds, max_seconds, extended_seconds }
}

/// Compiles the globs of each `spec.legacyTokens` entry.
fn compile_legacy_tokens(entries: &[document::LegacyTokenEntry], problems: &mut Problems) -> Vec<LegacyTokenRule> {
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| LegacyTokenRule {
            namespaces: problems.globs(&format!("spec.legacyTokens[{i}].namespaces"), entry.namespaces.as_deref()),
            service_accounts: problems
                .globs(&format!("spec.legacyTokens[{i}].serviceAccounts"), entry.service_accounts.as_deref()),
        })
        .collect()
}

/// `spec.audiences`, indexed: the entries of each audience, and every namespace glob in one set.
struct AllowList {
    audiences: HashMap<String, AudienceRules>,
    all_namespaces: globset::GlobSet,
    all_namespaces_owner: Vec<(String, usize)>,
}

/// One audience's entries while `spec.audiences` is read: the makings of its [`AudienceRules`].
struct AudienceRulesBuilder {
    namespaces: GlobSetBuilder,
    glob_owner: Vec<usize>,
    entries: Vec<AudienceRule>,
}

/// Compiles `spec.audiences`, grouping the entries by their (normalised) audience.
fn compile_audiences(
    entries: &[document::AudienceEntry],
    bounds: &Bounds,
    normalize: &impl Fn(&str) -> String,
    problems: &mut Problems,
) -> AllowList {
    let mut builders: HashMap<String, AudienceRulesBuilder> = HashMap::new();
    let mut all_namespaces = GlobSetBuilder::new();
    let mut all_namespaces_owner = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let rule = compile_audience_rule(i, entry, bounds, problems);
        let audience = normalize(&entry.audience);
        let builder = builders.entry(audience.clone()).or_insert_with(|| AudienceRulesBuilder {
            namespaces: GlobSetBuilder::new(),
            glob_owner: Vec::new(),
            entries: Vec::new(),
        });
        for pattern in rule.namespaces.patterns() {
            if let Ok(glob) = super::globs::glob(pattern) {
                builder.namespaces.add(glob.clone());
                builder.glob_owner.push(builder.entries.len());
                // In document order, so denial messages list allowed audiences stably.
                all_namespaces.add(glob);
                all_namespaces_owner.push((audience.clone(), builder.entries.len()));
            }
        }
        builder.entries.push(rule);
    }
    let audiences = build_audience_rules(builders, problems);
    let all_namespaces = all_namespaces.build().unwrap_or_else(|err| {
        problems.add("spec.audiences", format!("namespace globs do not compile: {err}"));
        globset::GlobSet::empty()
    });
    AllowList { audiences, all_namespaces, all_namespaces_owner }
}

/// Compiles the `spec.audiences` entry at index `index`: its globs, and its maximum capped by
/// `expiration.maxSeconds`.
fn compile_audience_rule(
    index: usize,
    entry: &document::AudienceEntry,
    bounds: &Bounds,
    problems: &mut Problems,
) -> AudienceRule {
    let path = format!("spec.audiences[{index}]");
    let max_seconds = match entry.max_expiration_seconds {
        Some(max) => {
            check_max(problems, &format!("{path}.maxExpirationSeconds"), max, bounds.min_seconds);
            max.min(bounds.max_seconds)
        }
        None => bounds.max_seconds,
    };
    let service_accounts = problems.globs(&format!("{path}.serviceAccounts"), entry.service_accounts.as_deref());
    let namespaces = problems.globs(&format!("{path}.namespaces"), entry.namespaces.as_deref());
    AudienceRule { index, namespaces, service_accounts, max_seconds }
}

/// Builds each audience's namespace glob set; an audience whose set does not build is left out.
fn build_audience_rules(
    builders: HashMap<String, AudienceRulesBuilder>,
    problems: &mut Problems,
) -> HashMap<String, AudienceRules> {
    let mut audiences = HashMap::with_capacity(builders.len());
    for (audience, AudienceRulesBuilder { namespaces, glob_owner, entries }) in builders {
        match namespaces.build() {
            Ok(namespaces) => {
                audiences.insert(audience, AudienceRules { namespaces, glob_owner, entries });
            }
            Err(err) => problems.add("spec.audiences", format!("namespace globs do not compile: {err}")),
        }
    }
    audiences
}

/// Compiles `spec.csiDrivers` by name; a name must be non-empty and given once.
fn compile_csi_drivers(
    drivers: &[document::CsiDriverEntry],
    normalize: &impl Fn(&str) -> String,
    problems: &mut Problems,
) -> HashMap<String, CsiDriverRule> {
    let mut csi_drivers = HashMap::new();
    let mut driver_index: HashMap<&str, usize> = HashMap::new();
    for (i, driver) in drivers.iter().enumerate() {
        let path = format!("spec.csiDrivers[{i}]");
        if let Some(first) = driver_index.insert(&driver.name, i) {
            problems.add(
                format!("{path}.name"),
                format!("duplicate CSI driver {:?} (also at spec.csiDrivers[{first}])", driver.name),
            );
        }
        if driver.name.is_empty() {
            problems.add(format!("{path}.name"), "must not be empty");
        }
        let rule = CsiDriverRule {
            audiences: driver.audiences.iter().map(|a| normalize(a)).collect(),
            require_republish: driver.require_republish,
            require_token_in_secrets: driver.require_token_in_secrets,
        };
        csi_drivers.insert(driver.name.clone(), rule);
    }
    csi_drivers
}

/// Compiles `spec.nodeRestriction`: its extra audiences, by (normalised) audience.
fn compile_node_restriction(
    spec: &document::NodeRestrictionSpec,
    normalize: &impl Fn(&str) -> String,
    problems: &mut Problems,
) -> NodeRestriction {
    let mut extra_audiences: HashMap<String, Vec<Globs>> = HashMap::new();
    for (i, extra) in spec.extra_audiences.iter().enumerate() {
        let globs = problems
            .globs(&format!("spec.nodeRestriction.extraAudiences[{i}].namespaces"), extra.namespaces.as_deref());
        extra_audiences.entry(normalize(&extra.audience)).or_default().push(globs);
    }
    NodeRestriction { enabled: spec.enabled, extra_audiences }
}

/// Compiles `spec.exemptions`, filling in the default `podNamespaces`.
fn compile_exemptions(spec: &document::ExemptionsSpec, problems: &mut Problems) -> Exemptions {
    Exemptions {
        namespaces: Some(problems.globs("spec.exemptions.namespaces", Some(&spec.namespaces))),
        pod_namespaces: {
            let default = || DEFAULT_POD_NAMESPACES.iter().map(|n| n.to_string()).collect::<Vec<_>>();
            let patterns = spec.pod_namespaces.clone().unwrap_or_else(default);
            problems.globs("spec.exemptions.podNamespaces", Some(&patterns))
        },
        users: spec.users.iter().cloned().collect(),
        groups: spec.groups.iter().cloned().collect(),
    }
}

/// Checks the maximum lifetime at `path` against the API server's maximum and the minimum `min`.
fn check_max(problems: &mut Problems, path: &str, max: u64, min: u64) {
    if max > API_MAX_EXPIRATION_SECONDS {
        problems.add(path, format!("{max} is above {API_MAX_EXPIRATION_SECONDS} (2^32), the API server's own maximum"));
    } else if max < min {
        problems.add(path, format!("{max} is below the minimum of {min} seconds, so no token could be allowed"));
    }
}

/// Compiles `spec.injections` against the rest of the compiled `policy`.
fn compile_injections(specs: &[document::InjectionSpec], policy: &Policy, problems: &mut Problems) -> Vec<Injection> {
    let mut claimed = Claimed::default();
    let mut injections = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let path = format!("spec.injections[{i}]");
        if spec.name.is_empty() || spec.name.contains([',', ' ']) {
            problems.add(format!("{path}.name"), "must be non-empty, without commas or spaces");
        }
        claimed.claim(i, &path, spec, problems);
        injections.push(compile_injection(&path, spec, policy, problems));
    }
    injections
}

/// What earlier injections claimed: names, volume names and mount paths, each with the index of
/// the first injection that claimed it.
#[derive(Default)]
struct Claimed<'a> {
    names: HashMap<&'a str, usize>,
    volume_names: HashMap<&'a str, usize>,
    mount_paths: HashMap<&'a str, usize>,
}

impl<'a> Claimed<'a> {
    /// Claims the name, volume name and mount path of `spec.injections[i]` (at `path`),
    /// reporting each that an earlier injection already claimed.
    fn claim(&mut self, i: usize, path: &str, spec: &'a document::InjectionSpec, problems: &mut Problems) {
        if let Some(first) = self.names.insert(&spec.name, i) {
            problems
                .add(format!("{path}.name"), format!("duplicate injection name (also at spec.injections[{first}])"));
        }
        if let Some(first) = self.volume_names.insert(&spec.volume.name, i) {
            problems.add(
                format!("{path}.volume.name"),
                format!("volume {:?} is also injected by spec.injections[{first}]", spec.volume.name),
            );
        }
        if let Some(first) = self.mount_paths.insert(&spec.mount.mount_path, i) {
            problems.add(
                format!("{path}.mount.mountPath"),
                format!("{:?} is also the mount path of spec.injections[{first}]", spec.mount.mount_path),
            );
        }
    }
}

/// Compiles one injection; `path` is its field path (`spec.injections[2]`).
fn compile_injection(
    path: &str,
    spec: &document::InjectionSpec,
    policy: &Policy,
    problems: &mut Problems,
) -> Injection {
    if !is_dns_label(&spec.volume.name) {
        problems.add(format!("{path}.volume.name"), "must be a DNS label (lower-case letters, digits, '-')");
    }
    let token_path = spec.volume.path.clone().unwrap_or_else(|| "token".to_string());
    if token_path.is_empty() || token_path.starts_with('/') || token_path.split('/').any(|p| p == "..") {
        problems.add(format!("{path}.volume.path"), "must be a relative path without '..'");
    }
    if !spec.mount.mount_path.starts_with('/') {
        problems.add(format!("{path}.mount.mountPath"), "must be an absolute path");
    }
    let seconds = spec.volume.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    if seconds < policy.min_seconds || seconds > policy.max_seconds {
        problems.add(
            format!("{path}.volume.expirationSeconds"),
            format!("{seconds} is outside the policy's bounds {}..{}", policy.min_seconds, policy.max_seconds),
        );
    }

    let namespaces = problems.globs(&format!("{path}.match.namespaces"), spec.match_.namespaces.as_deref());
    let pod_selector = compile_pod_selector(path, spec.match_.pod_selector.as_ref(), problems);
    let containers = problems.globs(&format!("{path}.mount.containers"), spec.mount.containers.as_deref());
    let volume = InjectedVolume {
        name: spec.volume.name.clone(),
        audience: policy.normalize(Some(&spec.volume.audience)).to_string(),
        expiration_seconds: seconds,
        path: token_path,
    };
    check_injected_audience(path, &volume, &namespaces, policy, problems);
    let env = compile_injected_env(path, &spec.env, problems);

    Injection {
        name: spec.name.clone(),
        required: spec.required,
        namespaces,
        pod_selector,
        service_account_annotation: spec.match_.service_account_annotation.clone(),
        volume,
        mount_path: spec.mount.mount_path.clone(),
        containers,
        init_containers: spec.mount.init_containers,
        env,
    }
}

/// Compiles an injection's `match.podSelector`; absent, it selects every pod.
fn compile_pod_selector(
    path: &str,
    selector: Option<&document::LabelSelectorSpec>,
    problems: &mut Problems,
) -> LabelSelector {
    match selector {
        Some(selector) => LabelSelector::compile(selector).unwrap_or_else(|(index, message)| {
            problems.add(format!("{path}.match.podSelector.matchExpressions[{index}]"), message);
            LabelSelector::default()
        }),
        None => LabelSelector::default(),
    }
}

/// Checks that `spec.audiences` allows the injected token to every service account in every
/// namespace the injection matches, so an injection never adds a token the policy would refuse.
fn check_injected_audience(
    path: &str,
    volume: &InjectedVolume,
    namespaces: &Globs,
    policy: &Policy,
    problems: &mut Problems,
) {
    let (audience, seconds) = (&volume.audience, volume.expiration_seconds);
    for pattern in namespaces.patterns() {
        if !policy.allows_everywhere(audience, pattern, seconds) {
            problems.add(
                format!("{path}.volume.audience"),
                format!(
                    "the injected audience {} ({seconds} s) is not allowed by spec.audiences for every service account in namespaces {pattern:?}; add an audiences entry that covers them",
                    describe_audience(audience)
                ),
            );
        }
    }
}

/// Compiles an injection's `env`: each variable named once, with exactly one source.
fn compile_injected_env(path: &str, vars: &[document::EnvSpec], problems: &mut Problems) -> Vec<InjectedEnv> {
    let mut env_names: HashSet<&str> = HashSet::new();
    let mut env = Vec::with_capacity(vars.len());
    for (j, var) in vars.iter().enumerate() {
        let env_path = format!("{path}.env[{j}]");
        if var.name.is_empty() {
            problems.add(format!("{env_path}.name"), "must not be empty");
        }
        if !env_names.insert(&var.name) {
            problems.add(format!("{env_path}.name"), format!("duplicate variable {:?}", var.name));
        }
        let source = match (&var.value, &var.value_from_service_account_annotation) {
            (Some(value), None) => EnvSource::Value(value.clone()),
            (None, Some(key)) => EnvSource::ServiceAccountAnnotation(key.clone()),
            (Some(_), Some(_)) => {
                problems.add(env_path, "set either value or valueFromServiceAccountAnnotation, not both");
                continue;
            }
            (None, None) => {
                problems.add(env_path, "set value or valueFromServiceAccountAnnotation");
                continue;
            }
        };
        env.push(InjectedEnv { name: var.name.clone(), source });
    }
    env
}

impl Policy {
    /// Whether some allow-list entry grants `audience` for `seconds` to every service account
    /// in every namespace that `namespace_pattern` can match (conservatively).
    fn allows_everywhere(&self, audience: &str, namespace_pattern: &str, seconds: u64) -> bool {
        self.audiences.get(audience).is_some_and(|rules| {
            rules.entries.iter().any(|rule| {
                rule.service_accounts.matches_all()
                    && rule.max_seconds >= seconds
                    && rule.namespaces.covers(namespace_pattern)
            })
        })
    }
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}
