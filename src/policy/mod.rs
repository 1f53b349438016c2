//! The policy: parsed from YAML or JSON, validated, and compiled into indexed lookups.

mod compile;
pub mod document;
pub mod globs;

use std::collections::{HashMap, HashSet};
use std::fmt;

pub use document::Mode;

use crate::positions::{self, Position};
use globs::{Globs, LabelSelector};

pub use crate::k8s::tokens::{
    API_MAX_EXPIRATION_SECONDS, DEFAULT_EXPIRATION_SECONDS, DEFAULT_EXTENDED_SECONDS, MIN_EXPIRATION_SECONDS,
};

/// How many allowed audiences a denial message names.
pub const SHOWN_AUDIENCES: usize = 8;

/// A token's lifetime: what was asked for, and what the API server will issue (see
/// [`Policy::lifetime`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub requested: u64,
    pub effective: u64,
}

impl Lifetime {
    /// A lifetime the API server issues as asked.
    pub fn as_requested(seconds: u64) -> Self {
        Self { requested: seconds, effective: seconds }
    }

    /// Whether the API server lengthens the token beyond what was asked.
    pub fn is_extended(self) -> bool {
        self.effective != self.requested
    }
}

/// A token as decisions judge it: its audience (normalised: the API server audience is `""`),
/// whom it is for, and how long it lives.
#[derive(Debug, Clone, Copy)]
pub struct Token<'a> {
    pub audience: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub lifetime: Lifetime,
}

/// A validated, compiled policy. Build it with [`Policy::parse`].
#[derive(Debug, Clone)]
pub struct Policy {
    mode: Mode,
    api_server_audiences: HashSet<String>,
    /// Whether the document itself listed `apiServerAudiences` (learned ones do not count).
    api_server_audiences_listed: bool,
    min_seconds: u64,
    max_seconds: u64,
    extended_seconds: u64,
    legacy_tokens: Vec<LegacyTokenRule>,
    audiences: HashMap<String, AudienceRules>,
    /// Every namespace glob of every entry, for "what is allowed here" in messages.
    all_namespaces: globset::GlobSet,
    /// `all_namespaces_owner[i]`: the audience and entry index that glob `i` belongs to.
    all_namespaces_owner: Vec<(String, usize)>,
    csi_drivers: HashMap<String, CsiDriverRule>,
    node_restriction: NodeRestriction,
    injections: Vec<Injection>,
    exemptions: Exemptions,
}

/// Every allow-list entry for one audience, with their namespace globs in one set.
#[derive(Debug, Clone)]
struct AudienceRules {
    /// Every namespace glob of every entry; `glob_owner[i]` is the entry glob `i` belongs to.
    namespaces: globset::GlobSet,
    glob_owner: Vec<usize>,
    entries: Vec<AudienceRule>,
}

#[derive(Debug, Clone)]
struct AudienceRule {
    /// Its index in `spec.audiences`.
    index: usize,
    namespaces: Globs,
    service_accounts: Globs,
    max_seconds: u64,
}

/// The `audiences` entry that allows a token (see [`Policy::allowing_entry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowingEntry<'p> {
    /// Its index in `spec.audiences`.
    pub index: usize,
    /// Its namespace globs as written (`["*"]` when absent).
    pub namespaces: &'p [String],
    /// Its service-account globs as written (`["*"]` when absent).
    pub service_accounts: &'p [String],
    /// The largest lifetime it admits: its `maxExpirationSeconds`, capped by
    /// `expiration.maxSeconds`.
    pub max_seconds: u64,
}

/// One `audiences` entry as compiled (see [`Policy::allow_list`]).
#[derive(Debug, Clone, Copy)]
pub struct AllowListEntry<'p> {
    /// The audience, normalised (`""` for the API server audience).
    pub audience: &'p str,
    /// Its index in `spec.audiences`.
    pub index: usize,
    pub namespaces: &'p Globs,
    pub service_accounts: &'p Globs,
    /// Its `maxExpirationSeconds`, capped by `expiration.maxSeconds`.
    pub max_seconds: u64,
}

/// One `legacyTokens` entry.
#[derive(Debug, Clone)]
struct LegacyTokenRule {
    namespaces: Globs,
    service_accounts: Globs,
}

/// What the policy says about one CSI driver.
#[derive(Debug, Clone)]
pub struct CsiDriverRule {
    /// The audiences its `tokenRequests` may ask for (normalised: the API server audience is `""`).
    pub audiences: HashSet<String>,
    /// Whether `requiresRepublish: true` is needed when it declares `tokenRequests`.
    pub require_republish: bool,
    /// Whether `serviceAccountTokenInSecrets: true` is needed when it declares `tokenRequests`.
    pub require_token_in_secrets: bool,
}

/// `spec.nodeRestriction`, compiled.
#[derive(Debug, Clone)]
pub struct NodeRestriction {
    /// Whether node TokenRequests must match their bound pod.
    pub enabled: bool,
    extra_audiences: HashMap<String, Vec<Globs>>,
}

/// One compiled injection.
#[derive(Debug, Clone)]
pub struct Injection {
    pub name: String,
    pub required: bool,
    pub namespaces: Globs,
    pub pod_selector: LabelSelector,
    pub service_account_annotation: Option<String>,
    pub volume: InjectedVolume,
    pub mount_path: String,
    pub containers: Globs,
    pub init_containers: bool,
    pub env: Vec<InjectedEnv>,
}

/// The projected token volume an injection adds.
#[derive(Debug, Clone)]
pub struct InjectedVolume {
    pub name: String,
    pub audience: String,
    pub expiration_seconds: u64,
    pub path: String,
}

/// One environment variable an injection sets.
#[derive(Debug, Clone)]
pub struct InjectedEnv {
    pub name: String,
    pub source: EnvSource,
}

/// Where an injected environment variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    /// A fixed value.
    Value(String),
    /// The value of this annotation on the pod's service account.
    ServiceAccountAnnotation(String),
}

#[derive(Debug, Clone)]
struct Exemptions {
    namespaces: Option<Globs>,
    /// `exemptions.podNamespaces`, its default filled in.
    pod_namespaces: Globs,
    users: HashSet<String>,
    groups: HashSet<String>,
}

/// Why a token was refused by the allow-list or the lifetime bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenDenial {
    /// No `audiences` entry matches the audience, namespace and service account; some that
    /// would be allowed there, and whether there are more.
    NotAllowed { allowed_here: Vec<String>, more: bool },
    /// The lifetime is below `expiration.minSeconds`.
    TooShort { min: u64 },
    /// The lifetime is above the largest maximum of the matching entries.
    TooLong { max: u64 },
}

/// One problem found in a policy document, with the path of the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
    /// Where the field is in the document's text, when it was read from YAML or JSON text.
    pub position: Option<Position>,
}

impl Problem {
    /// `file:line:column: path: message`, or `file: path: message` without a position.
    pub fn at(&self, file: &str) -> String {
        match self.position {
            Some(Position { line, column }) => format!("{file}:{line}:{column}: {self}"),
            None => format!("{file}: {self}"),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a policy document could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The text is not a policy document (bad YAML/JSON, unknown or mistyped field).
    #[error("policy does not parse: {0}")]
    Syntax(Problem),
    /// The document parses but breaks one or more rules; every problem is listed.
    #[error("policy is invalid:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl PolicyError {
    /// Every problem, one per line item.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            PolicyError::Syntax(problem) => vec![problem.clone()],
            PolicyError::Invalid(problems) => problems.clone(),
        }
    }
}

impl Policy {
    /// Parses, validates and compiles a policy document written in YAML or JSON.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse_with_api_server_audiences(text, &[])
    }

    /// Like [`Policy::parse`], with `learned` API server audiences (read from the cluster)
    /// added to the document's `apiServerAudiences`.
    pub fn parse_with_api_server_audiences(text: &str, learned: &[String]) -> Result<Policy, PolicyError> {
        let mut read = compile::read_document(text)?;
        let mut problems = std::mem::take(&mut read.problems);
        match read.document.take().map(|document| compile::compile(document, learned)) {
            Some(Ok(policy)) if problems.is_empty() => return Ok(policy),
            Some(Err(PolicyError::Invalid(more))) => problems
                .extend(more.into_iter().map(|problem| Problem { path: read.original_path(&problem.path), ..problem })),
            _ => {}
        }
        let located = positions::positions(text);
        if let Some(fields) = located.first() {
            for problem in &mut problems {
                problem.position = positions::locate(fields, &problem.path);
            }
        }
        Err(PolicyError::Invalid(problems))
    }

    /// What to do with violations.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The minimum token lifetime.
    pub fn min_seconds(&self) -> u64 {
        self.min_seconds
    }

    /// The cluster-wide maximum token lifetime.
    pub fn max_seconds(&self) -> u64 {
        self.max_seconds
    }

    /// The audience as decisions compare it: a listed API server audience, or an absent
    /// audience, becomes `""`.
    pub fn normalize<'a>(&self, audience: Option<&'a str>) -> &'a str {
        match audience {
            Some(a) if !self.api_server_audiences.contains(a) => a,
            _ => "",
        }
    }

    /// What the API server turns a pod-bound 3607 s API-server-audience token into.
    pub fn extended_seconds(&self) -> u64 {
        self.extended_seconds
    }

    /// Whether `token` may be minted: an `audiences` entry matches its audience, namespace and
    /// service account, and its effective lifetime lies within the bounds.
    pub fn check_token(&self, token: &Token<'_>) -> Result<(), TokenDenial> {
        if token.lifetime.effective < self.min_seconds {
            return Err(TokenDenial::TooShort { min: self.min_seconds });
        }
        let max = self.audiences.get(token.audience).and_then(|rules| {
            rules.matching(token.namespace, token.service_account).map(|rule| rule.max_seconds).max()
        });
        match max {
            None => {
                let (allowed_here, more) = self.audiences_allowed_for(token.namespace, token.service_account);
                Err(TokenDenial::NotAllowed { allowed_here, more })
            }
            Some(max) => self.check_lifetime(token.lifetime, max),
        }
    }

    /// The `audiences` entry that allows `token`: of the entries matching its audience,
    /// namespace and service account whose maximum admits its effective lifetime, the first in
    /// document order. `None` exactly when [`Policy::check_token`] refuses the token.
    pub fn allowing_entry(&self, token: &Token<'_>) -> Option<AllowingEntry<'_>> {
        self.check_token(token).ok()?;
        let rules = self.audiences.get(token.audience)?;
        rules
            .entries
            .iter()
            .filter(|rule| rule.namespaces.is_match(token.namespace))
            .filter(|rule| rule.service_accounts.is_match(token.service_account))
            .filter(|rule| self.check_lifetime(token.lifetime, rule.max_seconds).is_ok())
            .min_by_key(|rule| rule.index)
            .map(|rule| AllowingEntry {
                index: rule.index,
                namespaces: rule.namespaces.patterns(),
                service_accounts: rule.service_accounts.patterns(),
                max_seconds: rule.max_seconds,
            })
    }

    /// The one lifetime rule: the effective lifetime lies within `[minSeconds, max]`.
    pub fn check_lifetime(&self, lifetime: Lifetime, max: u64) -> Result<(), TokenDenial> {
        if lifetime.effective < self.min_seconds {
            Err(TokenDenial::TooShort { min: self.min_seconds })
        } else if lifetime.effective > max {
            Err(TokenDenial::TooLong { max })
        } else {
            Ok(())
        }
    }

    /// Whether `namespace/service_account` may have a legacy Secret-based token.
    pub fn allows_legacy_token(&self, namespace: &str, service_account: &str) -> bool {
        self.legacy_tokens
            .iter()
            .any(|rule| rule.namespaces.is_match(namespace) && rule.service_accounts.is_match(service_account))
    }

    /// The lifetime the API server issues for a token request of `requested` seconds, with
    /// this policy's `expiration.extendedSeconds` (see `k8s::tokens::effective_seconds`).
    pub fn lifetime(&self, requested: u64, bound_to_pod: bool, api_server_audiences_only: bool) -> Lifetime {
        let effective = crate::k8s::tokens::effective_seconds(
            requested,
            bound_to_pod,
            api_server_audiences_only,
            self.extended_seconds(),
        );
        Lifetime { requested, effective }
    }

    /// The API server audiences decisions map to `""`: the document's list, plus those learned
    /// from the cluster. Sorted.
    pub fn api_server_audiences(&self) -> Vec<&str> {
        let mut audiences: Vec<&str> = self.api_server_audiences.iter().map(String::as_str).collect();
        audiences.sort_unstable();
        audiences
    }

    /// Whether the policy names `audience` (normalised) anywhere: an allow-list entry, a CSI
    /// driver's audiences or a node's extra audiences.
    pub fn knows_audience(&self, audience: &str) -> bool {
        self.audiences.contains_key(audience)
            || self.csi_drivers.values().any(|driver| driver.audiences.contains(audience))
            || self.node_restriction.extra_audiences.contains_key(audience)
    }

    /// Things a valid policy may still get wrong, for `policy validate` to point out.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut warnings = Vec::new();
        if !self.api_server_audiences_listed {
            warnings.push(Problem {
                path: "spec.apiServerAudiences".to_string(),
                position: None,
                message: "absent: list the cluster's --api-audiences (the `aud` claim of any pod's automount token, e.g. `kubectl create token default | cut -d. -f2 | base64 -d`); offline commands then treat only \"\" and absent audiences as the API server's, and `serve` learns the list from its own token".to_string(),
            });
        }
        warnings
    }

    /// Up to [`SHOWN_AUDIENCES`] audiences the allow-list grants `namespace/service_account`,
    /// in policy order, and whether there are more (for denial messages). The work is bounded:
    /// only entries whose namespace globs match are visited, and the walk stops once more than
    /// enough were found, so a denial costs little even with 10 000 entries.
    pub fn audiences_allowed_for(&self, namespace: &str, service_account: &str) -> (Vec<String>, bool) {
        let mut shown: Vec<String> = Vec::new();
        for glob in self.all_namespaces.matches(namespace) {
            let (audience, entry) = &self.all_namespaces_owner[glob];
            if shown.contains(audience)
                || !self.audiences[audience].entries[*entry].service_accounts.is_match(service_account)
            {
                continue;
            }
            if shown.len() == SHOWN_AUDIENCES {
                return (shown, true);
            }
            shown.push(audience.clone());
        }
        (shown, false)
    }

    /// The policy for a CSI driver, if it is listed.
    pub fn csi_driver(&self, name: &str) -> Option<&CsiDriverRule> {
        self.csi_drivers.get(name)
    }

    /// `spec.nodeRestriction`.
    pub fn node_restriction(&self) -> &NodeRestriction {
        &self.node_restriction
    }

    /// The injections, in document order.
    pub fn injections(&self) -> &[Injection] {
        &self.injections
    }

    /// Whether Pods and workload templates in `namespace` are exempt
    /// (`spec.exemptions.podNamespaces`, by default the control plane's namespaces).
    pub fn exempts_pods_in(&self, namespace: Option<&str>) -> bool {
        namespace.is_some_and(|namespace| self.exemptions.pod_namespaces.is_match(namespace))
    }

    /// The compiled `spec.exemptions.podNamespaces`, its default filled in.
    pub fn exempt_pod_namespaces(&self) -> &Globs {
        &self.exemptions.pod_namespaces
    }

    /// Whether the requester or namespace is exempt from every check.
    pub fn is_exempt(&self, namespace: Option<&str>, user: &str, groups: &[String]) -> bool {
        let exemptions = &self.exemptions;
        exemptions.users.contains(user)
            || groups.iter().any(|g| exemptions.groups.contains(g))
            || match (namespace, &exemptions.namespaces) {
                (Some(ns), Some(globs)) => globs.is_match(ns),
                _ => false,
            }
    }
}

impl AudienceRules {
    /// The entries that grant the audience to `namespace/service_account`.
    fn matching<'a>(&'a self, namespace: &str, service_account: &'a str) -> impl Iterator<Item = &'a AudienceRule> {
        self.namespaces
            .matches(namespace)
            .into_iter()
            .map(|glob| &self.entries[self.glob_owner[glob]])
            .filter(move |rule| rule.service_accounts.is_match(service_account))
    }
}

impl NodeRestriction {
    /// Whether `audience` (normalised) is one a node may request in `namespace` although no
    /// pod volume references it.
    pub fn is_extra_audience(&self, audience: &str, namespace: &str) -> bool {
        self.extra_audiences.get(audience).is_some_and(|globs| globs.iter().any(|g| g.is_match(namespace)))
    }
}

/// How an audience reads in messages: `"vault"`, or `"" (the API server audience)`.
pub fn describe_audience(audience: &str) -> String {
    if audience.is_empty() {
        "\"\" (the API server audience)".to_string()
    } else {
        format!("{audience:?}")
    }
}

impl TokenDenial {
    /// The sentence after the field path, e.g. `audience "vault" is not allowed for service
    /// account team-a/web (allowed there: "sts.amazonaws.com")`.
    pub fn explain(&self, token: &Token<'_>) -> String {
        let who = format!("service account {}/{}", token.namespace, token.service_account);
        match self {
            TokenDenial::NotAllowed { allowed_here, more } => {
                let allowed = if allowed_here.is_empty() {
                    "no audience is allowed there".to_string()
                } else {
                    let shown: Vec<String> = allowed_here.iter().map(|a| describe_audience(a)).collect();
                    let more = if *more { " and more" } else { "" };
                    format!("allowed there: {}{more}", shown.join(", "))
                };
                format!("audience {} is not allowed for {who} ({allowed})", describe_audience(token.audience))
            }
            TokenDenial::TooShort { .. } => self.explain_lifetime(token.lifetime),
            TokenDenial::TooLong { .. } if token.lifetime.is_extended() => {
                format!("{} for {who}{}", self.explain_lifetime(token.lifetime), EXTENSION_ADVICE)
            }
            TokenDenial::TooLong { .. } => {
                format!(
                    "{} for audience {} and {who}",
                    self.explain_lifetime(token.lifetime),
                    describe_audience(token.audience)
                )
            }
        }
    }

    /// What is wrong with the lifetime alone, e.g. `expirationSeconds 3607 for the API server
    /// audience is extended by the API server to 31536000 s, above the maximum of 86400 seconds`.
    pub fn explain_lifetime(&self, lifetime: Lifetime) -> String {
        let asked = if lifetime.is_extended() {
            format!(
                "expirationSeconds {} for the API server audience is extended by the API server to {} s,",
                lifetime.requested, lifetime.effective
            )
        } else {
            format!("expirationSeconds {} is", lifetime.requested)
        };
        match self {
            TokenDenial::TooShort { min } => format!("{asked} below the minimum of {min} seconds"),
            TokenDenial::TooLong { max } => format!("{asked} above the maximum of {max} seconds"),
            TokenDenial::NotAllowed { .. } => format!("{asked} within bounds"),
        }
    }

    /// Whether the problem is the lifetime rather than the audience.
    pub fn is_about_expiration(&self) -> bool {
        !matches!(self, TokenDenial::NotAllowed { .. })
    }
}

/// What to change when an extended token is too long.
const EXTENSION_ADVICE: &str = " (ask for any other lifetime than 3607 s; if the API server runs with --service-account-extend-token-expiration=false, set spec.expiration.extendedSeconds to 3607)";

/// A token's lifetime as the API server reads `expirationSeconds`: absent means 3600, and a
/// negative value (which the API server rejects) counts as 0.
pub fn expiration_or_default(seconds: Option<i64>) -> u64 {
    seconds.map_or(DEFAULT_EXPIRATION_SECONDS, |s| u64::try_from(s).unwrap_or(0))
}

/// Read access for rendering the policy elsewhere (the webhook configurations' match conditions).
impl Policy {
    /// The compiled `spec.exemptions.namespaces`.
    pub fn exempt_namespaces(&self) -> Option<&Globs> {
        self.exemptions.namespaces.as_ref()
    }

    /// `spec.exemptions.users`, sorted.
    pub fn exempt_users(&self) -> Vec<&str> {
        let mut users: Vec<&str> = self.exemptions.users.iter().map(String::as_str).collect();
        users.sort_unstable();
        users
    }

    /// Every `audiences` entry as compiled (audience normalised, maximum capped by
    /// `expiration.maxSeconds`), by audience and then in document order.
    pub fn allow_list(&self) -> Vec<AllowListEntry<'_>> {
        let mut entries: Vec<AllowListEntry<'_>> = self
            .audiences
            .iter()
            .flat_map(|(audience, rules)| {
                rules.entries.iter().map(move |rule| AllowListEntry {
                    audience,
                    index: rule.index,
                    namespaces: &rule.namespaces,
                    service_accounts: &rule.service_accounts,
                    max_seconds: rule.max_seconds,
                })
            })
            .collect();
        entries.sort_by(|a, b| (a.audience, a.index).cmp(&(b.audience, b.index)));
        entries
    }

    /// Every `legacyTokens` entry: its namespace and service-account globs, in document order.
    pub fn legacy_token_rules(&self) -> Vec<(&Globs, &Globs)> {
        self.legacy_tokens.iter().map(|rule| (&rule.namespaces, &rule.service_accounts)).collect()
    }

    /// Every `csiDrivers` entry, by driver name.
    pub fn csi_driver_rules(&self) -> Vec<(&str, &CsiDriverRule)> {
        let mut drivers: Vec<(&str, &CsiDriverRule)> =
            self.csi_drivers.iter().map(|(name, rule)| (name.as_str(), rule)).collect();
        drivers.sort_by_key(|(name, _)| *name);
        drivers
    }

    /// `spec.exemptions.groups`, sorted.
    pub fn exempt_groups(&self) -> Vec<&str> {
        let mut groups: Vec<&str> = self.exemptions.groups.iter().map(String::as_str).collect();
        groups.sort_unstable();
        groups
    }
}

#[cfg(test)]
mod tests;
