//! `tokengate init`: the smallest policy (mode Audit) that admits the Pods, workloads,
//! CSIDrivers and legacy token Secrets given, written as commented YAML.
//!
//! The tokens each pod or template will hold are listed by `review::credentials`, the code the
//! Pod validation judges them with, so the policy admits exactly what the webhook will check.

pub mod files;
pub mod injectors;
pub mod live;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::cluster::ObjectStore;
use crate::manifest::Document;
use crate::policy::{describe_audience, Policy, PolicyError};
use crate::review::credentials::{self, Credential, Found, Origin, Outcome};
use crate::review::legacy_token::{SERVICE_ACCOUNT_NAME_ANNOTATION, SERVICE_ACCOUNT_TOKEN_TYPE};
use crate::review::pod_view::{Pod, PodView};
use crate::simulate::{claim_credentials, classify, pod_of, Classified};
use injectors::{Injected, Injector, ServiceAccounts};

/// How many objects an entry's comment names.
const NAMED_OBJECTS: usize = 3;

/// How [`draft`] reads the objects.
#[derive(Debug, Clone, Copy)]
pub struct InitOptions<'a> {
    /// The namespace of objects that name none.
    pub default_namespace: &'a str,
    /// Merge entries that differ only by namespace into `prefix-*` globs.
    pub namespace_globs: bool,
    /// The cluster's API server audiences, when known.
    pub api_server_audiences: &'a [String],
}

/// Why no policy could be drafted.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// An `--api-audience` value is not usable in a policy.
    #[error("the API server audiences do not form a valid policy: {0}")]
    ApiServerAudiences(#[from] PolicyError),
}

/// One token use that an `audiences` entry must admit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Use {
    pub namespace: String,
    pub service_account: String,
    /// The effective lifetime the API server issues.
    pub seconds: u64,
}

impl Use {
    /// A token of `seconds` for the pod or template `view`.
    fn of(view: &PodView<'_>, seconds: u64) -> Use {
        Use { namespace: view.namespace.to_string(), service_account: view.service_account.to_string(), seconds }
    }
}

/// One `spec.audiences` entry of the drafted policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudienceDraft {
    /// The audience as decisions compare it: `""` for the API server's.
    pub audience: String,
    /// Namespace names, or `prefix-*` globs with `--namespace-globs`.
    pub namespaces: Vec<String>,
    pub service_accounts: Vec<String>,
    pub max_expiration_seconds: u64,
    /// Every object that needs it, `Kind namespace/name`.
    pub needed_by: Vec<String>,
    /// The token uses it admits.
    pub uses: Vec<Use>,
    /// The mutating webhooks that add some of these tokens to pods (no manifest shows them).
    pub added_by: Vec<Injector>,
}

/// One `spec.csiDrivers` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverDraft {
    pub name: String,
    pub audiences: Vec<String>,
    pub require_republish: bool,
    pub require_token_in_secrets: bool,
    /// Pods and workloads that reach it.
    pub needed_by: Vec<String>,
}

/// One `spec.legacyTokens` entry: a namespace and the service accounts its Secrets name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyDraft {
    pub namespace: String,
    pub service_accounts: Vec<String>,
    /// The Secrets, `Secret namespace/name`.
    pub needed_by: Vec<String>,
}

/// The drafted policy.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub api_server_audiences: Vec<String>,
    pub audiences: Vec<AudienceDraft>,
    pub csi_drivers: Vec<DriverDraft>,
    pub legacy_tokens: Vec<LegacyDraft>,
    /// Tokens no policy can admit (below the API server's minimum of 600 s), with who uses them.
    pub unadmissible: Vec<String>,
    /// How many Pods and workloads were read.
    pub pods: usize,
    /// Files that could not be read (`file:line: problem`): what they hold is not admitted.
    pub unread: Vec<String>,
}

/// Drafts the smallest policy that admits every Pod, workload, CSIDriver and legacy token
/// Secret among `documents`.
pub async fn draft(documents: &[Document], options: InitOptions<'_>) -> Result<Draft, InitError> {
    let base = base_policy(options.api_server_audiences)?;
    let mut store = ObjectStore::default();
    for document in documents {
        let _ = store.insert_in(&document.object, options.default_namespace);
    }
    let accounts = ServiceAccounts::index(documents, options.default_namespace);
    let mut result = Draft { api_server_audiences: options.api_server_audiences.to_vec(), ..Draft::default() };
    let mut needs = Needs::default();
    for document in documents {
        let object = &document.object;
        if let Some(driver) = driver_draft(object) {
            result.csi_drivers.push(driver);
            continue;
        }
        if let Some((namespace, service_account, secret)) = legacy_secret(object, options.default_namespace) {
            add_legacy(&mut result.legacy_tokens, namespace, service_account, secret);
            continue;
        }
        let Some(subject) = classify(object, options.default_namespace).ok().filter(|s| s.is_pod_like()) else {
            continue;
        };
        result.pods += 1;
        read_pod(object, &subject, (&base, &store, &accounts), &mut needs).await;
    }
    for (namespace, name, injected) in accounts.irsa() {
        let used =
            Use { namespace: namespace.to_string(), service_account: name.to_string(), seconds: injected.seconds };
        needs.admit_injected(&injected, used, &format!("ServiceAccount {namespace}/{name}"));
    }
    Ok(result.complete(needs, options.namespace_globs))
}

/// Adds to `needs` every token the Pod or workload `object` will hold, listed under `base`
/// (inline volumes first, then those its claims reach, then those other webhooks add).
async fn read_pod(
    object: &Value,
    subject: &Classified,
    (base, store, accounts): (&Policy, &ObjectStore, &ServiceAccounts),
    needs: &mut Needs,
) {
    let label = subject.label();
    let (pod, field) = pod_of(object, subject.workload());
    let Ok(typed) = serde_json::from_value::<Pod>(pod.clone()) else { return };
    let Some(view) = PodView::new(&typed, subject.namespace(), field) else { return };
    let pod_name = subject.workload().is_none().then_some(subject.name.as_str());
    let mut found = credentials::pod_credentials(&view, base, store).await;
    let claimed = claim_credentials(&view, &pod, pod_name, base, store, &mut Vec::new()).await;
    found.extend(claimed.into_iter().map(|(found, _)| found));
    for credential in found.into_iter().filter_map(|f| match f {
        Found::Token(credential) => Some(credential),
        Found::LookupFailed { .. } => None,
    }) {
        needs.add(&credential, &view, &label, base.min_seconds());
    }
    for injected in injectors::of_pod(&pod, (view.namespace, view.service_account), accounts) {
        needs.admit_injected(&injected, Use::of(&view, injected.seconds), &label);
    }
}

/// What the tokens read so far need: one entry per audience and namespace, the Pods and
/// workloads that reach each CSI driver, and the tokens no policy can admit.
#[derive(Debug, Default)]
struct Needs {
    entries: BTreeMap<(String, String), AudienceDraft>,
    reached: BTreeMap<String, Vec<String>>,
    unadmissible: Vec<String>,
}

impl Needs {
    /// Notes one token that `label` (a Pod or workload) will hold; the automount token, always
    /// admitted, needs nothing, and one shorter than `min_seconds` cannot be admitted.
    fn add(&mut self, credential: &Credential<'_>, view: &PodView<'_>, label: &str, min_seconds: u64) {
        if credential.outcome == Outcome::AlwaysAdmitted {
            return;
        }
        if let Origin::CsiDriver { driver, .. } = &credential.origin {
            push_unique(self.reached.entry(driver.clone()).or_default(), label);
        }
        let seconds = credential.lifetime.effective;
        if seconds < min_seconds {
            self.unadmissible.push(format!(
                "{label}: audience {} for {} s, below the minimum of {} s",
                describe_audience(&credential.audience),
                seconds,
                min_seconds
            ));
            return;
        }
        self.admit(&credential.audience, Use::of(view, seconds), label);
    }

    /// Widens the entry for `audience` in the namespace of `used` (made on first use) so that
    /// it admits `used`, and names `label` among those that need it.
    fn admit(&mut self, audience: &str, used: Use, label: &str) {
        let key = (audience.to_string(), used.namespace.clone());
        let entry = self.entries.entry(key).or_insert_with(|| AudienceDraft {
            audience: audience.to_string(),
            namespaces: vec![used.namespace.clone()],
            service_accounts: Vec::new(),
            max_expiration_seconds: 0,
            needed_by: Vec::new(),
            uses: Vec::new(),
            added_by: Vec::new(),
        });
        push_unique(&mut entry.service_accounts, &used.service_account);
        entry.max_expiration_seconds = entry.max_expiration_seconds.max(used.seconds);
        push_unique(&mut entry.needed_by, label);
        if !entry.uses.contains(&used) {
            entry.uses.push(used);
        }
    }

    /// [`Needs::admit`] for a token another mutating webhook adds, noting which webhook.
    fn admit_injected(&mut self, injected: &Injected, used: Use, label: &str) {
        let key = (injected.audience.clone(), used.namespace.clone());
        self.admit(&injected.audience, used, label);
        let entry = self.entries.get_mut(&key).expect("admit made the entry");
        if !entry.added_by.contains(&injected.injector) {
            entry.added_by.push(injected.injector);
        }
    }
}

impl Draft {
    /// The draft with the entries `needs` calls for (namespaces merged into globs when asked,
    /// redundant entries dropped), one entry per CSI driver naming who reaches it, and the
    /// legacy token entries in namespace order.
    fn complete(mut self, needs: Needs, namespace_globs: bool) -> Draft {
        let Needs { entries, mut reached, unadmissible } = needs;
        self.unadmissible = unadmissible;
        let mut audiences: Vec<AudienceDraft> = entries.into_values().collect();
        for entry in &mut audiences {
            entry.service_accounts.sort();
        }
        if namespace_globs {
            audiences = merge_namespaces(audiences);
        }
        self.audiences = drop_redundant(audiences);
        self.csi_drivers = merge_drivers(std::mem::take(&mut self.csi_drivers));
        for driver in &mut self.csi_drivers {
            driver.needed_by = reached.remove(&driver.name).unwrap_or_default();
        }
        self.legacy_tokens.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        self
    }
}

/// The policy tokens are listed with: the API server audiences and nothing allowed.
fn base_policy(api_server_audiences: &[String]) -> Result<Policy, PolicyError> {
    Policy::parse(&render_policy_head(api_server_audiences))
}

fn render_policy_head(api_server_audiences: &[String]) -> String {
    let mut text = "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec:\n  mode: Audit\n".to_string();
    if !api_server_audiences.is_empty() {
        let _ = writeln!(text, "  apiServerAudiences: {}", flow_list(api_server_audiences));
    }
    text
}

fn push_unique(list: &mut Vec<String>, item: &str) {
    if !list.iter().any(|i| i == item) {
        list.push(item.to_string());
    }
}

/// One entry per driver name: a driver declared twice (two versions of its manifest) needs the
/// union of their audiences, and a requirement only when every declaration meets it.
fn merge_drivers(mut drivers: Vec<DriverDraft>) -> Vec<DriverDraft> {
    drivers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut merged: Vec<DriverDraft> = Vec::with_capacity(drivers.len());
    for driver in drivers {
        match merged.last_mut() {
            Some(last) if last.name == driver.name => {
                for audience in &driver.audiences {
                    push_unique(&mut last.audiences, audience);
                }
                last.require_republish &= driver.require_republish;
                last.require_token_in_secrets &= driver.require_token_in_secrets;
            }
            _ => merged.push(driver),
        }
    }
    merged
}

/// A CSIDriver with `tokenRequests`, as a `csiDrivers` entry that admits it as it is.
fn driver_draft(object: &Value) -> Option<DriverDraft> {
    let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
    if (text("/apiVersion"), text("/kind")) != (Some("storage.k8s.io/v1"), Some("CSIDriver")) {
        return None;
    }
    let requests = object.pointer("/spec/tokenRequests").and_then(Value::as_array).filter(|r| !r.is_empty())?;
    let mut audiences = Vec::new();
    for request in requests {
        push_unique(&mut audiences, request.get("audience").and_then(Value::as_str).unwrap_or_default());
    }
    let flag = |pointer: &str| object.pointer(pointer).and_then(Value::as_bool) == Some(true);
    Some(DriverDraft {
        name: text("/metadata/name").unwrap_or_default().to_string(),
        audiences,
        require_republish: flag("/spec/requiresRepublish"),
        require_token_in_secrets: flag("/spec/serviceAccountTokenInSecrets"),
        needed_by: Vec::new(),
    })
}

/// A Secret of type `kubernetes.io/service-account-token`: its namespace, the service account it
/// names and `Secret namespace/name`. Only its type and annotations are read.
fn legacy_secret(object: &Value, default_namespace: &str) -> Option<(String, String, String)> {
    let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
    if (text("/apiVersion"), text("/kind"), text("/type"))
        != (Some("v1"), Some("Secret"), Some(SERVICE_ACCOUNT_TOKEN_TYPE))
    {
        return None;
    }
    let namespace = text("/metadata/namespace").unwrap_or(default_namespace).to_string();
    let service_account =
        object.pointer("/metadata/annotations").and_then(|a| a.get(SERVICE_ACCOUNT_NAME_ANNOTATION))?.as_str()?;
    let label = format!("Secret {namespace}/{}", text("/metadata/name").unwrap_or_default());
    Some((namespace, service_account.to_string(), label))
}

fn add_legacy(entries: &mut Vec<LegacyDraft>, namespace: String, service_account: String, secret: String) {
    let entry = match entries.iter_mut().position(|e| e.namespace == namespace) {
        Some(i) => &mut entries[i],
        None => {
            entries.push(LegacyDraft { namespace, service_accounts: Vec::new(), needed_by: Vec::new() });
            entries.last_mut().expect("just pushed")
        }
    };
    push_unique(&mut entry.service_accounts, &service_account);
    entry.service_accounts.sort();
    push_unique(&mut entry.needed_by, &secret);
}

/// The prefix namespaces share for `--namespace-globs`: up to and including the first `-`.
fn namespace_prefix(namespace: &str) -> Option<&str> {
    namespace.find('-').map(|i| &namespace[..=i]).filter(|p| p.len() < namespace.len())
}

/// Merges entries with the same audience, service accounts and maximum whose namespaces share
/// a prefix into one entry with the glob `prefix*`.
fn merge_namespaces(entries: Vec<AudienceDraft>) -> Vec<AudienceDraft> {
    let mut groups: BTreeMap<(String, Vec<String>, u64, String), Vec<AudienceDraft>> = BTreeMap::new();
    let mut merged = Vec::new();
    for entry in entries {
        match entry.namespaces.first().and_then(|ns| namespace_prefix(ns)).map(str::to_string) {
            Some(prefix) => {
                let key =
                    (entry.audience.clone(), entry.service_accounts.clone(), entry.max_expiration_seconds, prefix);
                groups.entry(key).or_default().push(entry);
            }
            None => merged.push(entry),
        }
    }
    for ((_, _, _, prefix), group) in groups {
        if group.len() < 2 {
            merged.extend(group);
            continue;
        }
        let mut iter = group.into_iter();
        let mut first = iter.next().expect("a group has two entries");
        first.namespaces = vec![format!("{prefix}*")];
        for other in iter {
            for object in other.needed_by {
                push_unique(&mut first.needed_by, &object);
            }
            first.uses.extend(other.uses);
            for injector in other.added_by {
                if !first.added_by.contains(&injector) {
                    first.added_by.push(injector);
                }
            }
        }
        merged.push(first);
    }
    merged.sort_by(|a, b| (&a.audience, &a.namespaces).cmp(&(&b.audience, &b.namespaces)));
    merged
}

/// Whether `entry` admits `used` for its audience.
fn admits(entry: &AudienceDraft, used: &Use) -> bool {
    let namespace_matches = entry.namespaces.iter().any(|pattern| match pattern.strip_suffix('*') {
        Some(prefix) => used.namespace.starts_with(prefix),
        None => *pattern == used.namespace,
    });
    namespace_matches
        && entry.service_accounts.contains(&used.service_account)
        && used.seconds <= entry.max_expiration_seconds
}

/// Drops entries whose every use another entry admits (a glob can cover a namespace that kept
/// its own entry), so that removing any remaining entry refuses something.
fn drop_redundant(mut entries: Vec<AudienceDraft>) -> Vec<AudienceDraft> {
    let mut i = 0;
    while i < entries.len() {
        let covered = entries[i].uses.iter().all(|used| {
            entries
                .iter()
                .enumerate()
                .any(|(j, other)| j != i && other.audience == entries[i].audience && admits(other, used))
        });
        if covered {
            entries.remove(i);
        } else {
            i += 1;
        }
    }
    entries
}

/// A YAML flow list of double-quoted strings (JSON strings are valid YAML scalars).
fn flow_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| quote(i)).collect();
    format!("[{}]", quoted.join(", "))
}

fn quote(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serialises")
}

/// `needed by A, B, C (and N more)`.
fn needed_by(objects: &[String]) -> String {
    let shown = objects.iter().take(NAMED_OBJECTS).cloned().collect::<Vec<_>>().join(", ");
    match objects.len().saturating_sub(NAMED_OBJECTS) {
        0 => shown,
        more => format!("{shown} (and {more} more)"),
    }
}

impl Draft {
    /// The policy as commented YAML; `origin` says what it was drafted from (e.g. the flags).
    pub fn to_yaml(&self, origin: &str) -> String {
        let mut out = String::new();
        self.write_preamble(&mut out, origin);
        let head = render_policy_head(&[]);
        out.push_str(head.trim_end_matches('\n'));
        out.push('\n');
        self.write_api_server_audiences(&mut out);
        self.write_legacy_tokens(&mut out);
        self.write_audiences(&mut out);
        self.write_csi_drivers(&mut out);
        out
    }

    /// The opening comment: what the policy was drafted from, how to take it to Enforce, and
    /// the tokens no policy can admit.
    fn write_preamble(&self, out: &mut String, origin: &str) {
        let _ = writeln!(out, "# Drafted by `tokengate init {origin}`:");
        let _ = writeln!(
            out,
            "# the smallest policy that admits the {} Pod(s) and workload(s), the {} CSIDriver(s) with",
            self.pods,
            self.csi_drivers.len()
        );
        out.push_str("# tokenRequests and the legacy token Secrets it read, and nothing more.\n");
        out.push_str(
            "# Mode Audit: nothing is denied, violations are recorded in the audit log. To enforce it:\n\
             #   1. tokengate policy validate policy.yaml; tokengate check --policy policy.yaml <manifests>\n\
             #   2. deploy it in Audit; run `tokengate audit --policy policy.yaml` (or read the audit\n\
             #      log's violations annotations) until nothing new appears;\n\
             #   3. set mode: Warn for a while (kubectl shows violations as warnings), then mode: Enforce.\n\
             # Widen entries deliberately (namespace globs, a lower maxExpirationSeconds) before Enforce.\n",
        );
        for problem in &self.unadmissible {
            let _ = writeln!(out, "# NOT ADMITTED (the API server refuses it too): {problem}");
        }
        for file in &self.unread {
            let _ = writeln!(out, "# NOT READ (did not parse; nothing in it is admitted): {file}");
        }
    }

    /// `apiServerAudiences`, or a comment on how to find them when they are not known.
    fn write_api_server_audiences(&self, out: &mut String) {
        if self.api_server_audiences.is_empty() {
            out.push_str(
                "  # apiServerAudiences: not known. List the cluster's --api-audiences here: the `aud` claim of\n\
                 \x20 # any pod's automount token, e.g.\n\
                 \x20 #   kubectl create token default | cut -d. -f2 | base64 -d 2>/dev/null; echo\n\
                 \x20 # or run `tokengate init` again with --api-audience. `policy validate` warns while it is absent.\n",
            );
        } else {
            out.push_str(
                "  # The cluster's --api-audiences: tokens for these are tokens for the Kubernetes API itself.\n",
            );
            let _ = writeln!(out, "  apiServerAudiences: {}", flow_list(&self.api_server_audiences));
        }
    }

    /// `legacyTokens`, each entry with the Secrets that need it.
    fn write_legacy_tokens(&self, out: &mut String) {
        if self.legacy_tokens.is_empty() {
            out.push_str("  # No Secret of type kubernetes.io/service-account-token exists: nobody may create one.\n");
            out.push_str("  legacyTokens: []\n");
        } else {
            out.push_str("  # Secrets of type kubernetes.io/service-account-token hold tokens that never expire.\n");
            out.push_str("  legacyTokens:\n");
            for entry in &self.legacy_tokens {
                let _ = writeln!(out, "    # {}", needed_by(&entry.needed_by));
                let _ = writeln!(out, "    - namespaces: {}", flow_list(std::slice::from_ref(&entry.namespace)));
                let _ = writeln!(out, "      serviceAccounts: {}", flow_list(&entry.service_accounts));
            }
        }
    }

    /// `audiences`, each entry with the objects that need it.
    fn write_audiences(&self, out: &mut String) {
        if self.audiences.is_empty() {
            out.push_str("  # No token but the automount one (always admitted) is in use.\n  audiences: []\n");
        } else {
            out.push_str("  # One entry per audience and namespace in use; maxExpirationSeconds is the longest\n");
            out.push_str(
                "  # lifetime the API server issues for it (a 3607 s API server token lives extendedSeconds).\n",
            );
            out.push_str("  audiences:\n");
            for entry in &self.audiences {
                let _ = writeln!(out, "    # needed by {}", needed_by(&entry.needed_by));
                for injector in &entry.added_by {
                    let _ = writeln!(out, "    # added to pods by {}", injector.describe());
                }
                let _ = writeln!(out, "    - audience: {}", quote(&entry.audience));
                let _ = writeln!(out, "      namespaces: {}", flow_list(&entry.namespaces));
                let _ = writeln!(out, "      serviceAccounts: {}", flow_list(&entry.service_accounts));
                let _ = writeln!(out, "      maxExpirationSeconds: {}", entry.max_expiration_seconds);
            }
        }
    }

    /// `csiDrivers`, each entry with the Pods and workloads that reach it.
    fn write_csi_drivers(&self, out: &mut String) {
        if self.csi_drivers.is_empty() {
            out.push_str("  # No CSIDriver declares tokenRequests.\n  csiDrivers: []\n");
        } else {
            out.push_str("  # CSIDrivers with tokenRequests, as they are declared today.\n");
            out.push_str("  csiDrivers:\n");
            for driver in &self.csi_drivers {
                let users = if driver.needed_by.is_empty() {
                    "no pod read reaches it".to_string()
                } else {
                    format!("reached by {}", needed_by(&driver.needed_by))
                };
                let _ = writeln!(out, "    # CSIDriver {}; {users}", driver.name);
                let _ = writeln!(out, "    - name: {}", quote(&driver.name));
                let _ = writeln!(out, "      audiences: {}", flow_list(&driver.audiences));
                let _ = writeln!(out, "      requireRepublish: {}", driver.require_republish);
                let _ = writeln!(out, "      requireTokenInSecrets: {}", driver.require_token_in_secrets);
            }
        }
    }
}
