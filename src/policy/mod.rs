//! The policy: parsed from YAML or JSON, validated, and compiled into indexed lookups.

mod compile;
pub mod document;
pub mod globs;

use std::collections::{HashMap, HashSet};
use std::fmt;

pub use document::Mode;
use globs::{Globs, LabelSelector};

/// The API server's lower bound on token lifetimes, and tokengate's default minimum.
pub const MIN_EXPIRATION_SECONDS: u64 = 600;
/// The API server's upper bound on token lifetimes (2^32 seconds is still accepted).
pub const API_MAX_EXPIRATION_SECONDS: u64 = 1 << 32;
/// How many allowed audiences a denial message names.
pub const SHOWN_AUDIENCES: usize = 8;
/// The lifetime the API server gives a token that asks for none.
pub const DEFAULT_EXPIRATION_SECONDS: u64 = 3600;

/// A validated, compiled policy. Build it with [`Policy::parse`].
#[derive(Debug, Clone)]
pub struct Policy {
    mode: Mode,
    api_server_audiences: HashSet<String>,
    min_seconds: u64,
    max_seconds: u64,
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
    namespaces: Globs,
    service_accounts: Globs,
    max_seconds: u64,
}

/// What the policy says about one CSI driver.
#[derive(Debug, Clone)]
pub struct CsiDriverRule {
    /// The audiences its `tokenRequests` may ask for (normalised: the API server audience is `""`).
    pub audiences: HashSet<String>,
    /// Whether `requiresRepublish: true` is needed when it declares `tokenRequests`.
    pub require_republish: bool,
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

#[derive(Debug, Clone, Default)]
struct Exemptions {
    namespaces: Option<Globs>,
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
        let document = compile::parse_document(text)?;
        Policy::try_from(document)
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

    /// Whether a token for `audience` (normalised) may be minted for `namespace/service_account`
    /// with a lifetime of `seconds`.
    pub fn check_token(
        &self,
        audience: &str,
        namespace: &str,
        service_account: &str,
        seconds: u64,
    ) -> Result<(), TokenDenial> {
        if seconds < self.min_seconds {
            return Err(TokenDenial::TooShort { min: self.min_seconds });
        }
        let max = self
            .audiences
            .get(audience)
            .and_then(|rules| rules.matching(namespace, service_account).map(|rule| rule.max_seconds).max());
        match max {
            None => {
                let (allowed_here, more) = self.audiences_allowed_for(namespace, service_account);
                Err(TokenDenial::NotAllowed { allowed_here, more })
            }
            Some(max) if seconds > max => Err(TokenDenial::TooLong { max }),
            Some(_) => Ok(()),
        }
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
    pub fn explain(&self, audience: &str, namespace: &str, service_account: &str, seconds: u64) -> String {
        let who = format!("service account {namespace}/{service_account}");
        match self {
            TokenDenial::NotAllowed { allowed_here, more } => {
                let allowed = if allowed_here.is_empty() {
                    "no audience is allowed there".to_string()
                } else {
                    let shown: Vec<String> = allowed_here.iter().map(|a| describe_audience(a)).collect();
                    let more = if *more { " and more" } else { "" };
                    format!("allowed there: {}{more}", shown.join(", "))
                };
                format!("audience {} is not allowed for {who} ({allowed})", describe_audience(audience))
            }
            TokenDenial::TooShort { min } => {
                format!("expirationSeconds {seconds} is below the minimum of {min} seconds")
            }
            TokenDenial::TooLong { max } => format!(
                "expirationSeconds {seconds} is above the maximum of {max} seconds for audience {} and {who}",
                describe_audience(audience)
            ),
        }
    }

    /// Whether the problem is the lifetime rather than the audience.
    pub fn is_about_expiration(&self) -> bool {
        !matches!(self, TokenDenial::NotAllowed { .. })
    }
}

/// A token's lifetime as the API server reads `expirationSeconds`: absent means 3600, and a
/// negative value (which the API server rejects) counts as 0.
pub fn expiration_or_default(seconds: Option<i64>) -> u64 {
    seconds.map_or(DEFAULT_EXPIRATION_SECONDS, |s| u64::try_from(s).unwrap_or(0))
}

/// Read access for rendering the policy elsewhere (the webhook configurations' match conditions).
impl Policy {
    /// The API server audiences the policy lists (`spec.apiServerAudiences`), sorted.
    pub fn api_server_audiences(&self) -> Vec<&str> {
        let mut audiences: Vec<&str> = self.api_server_audiences.iter().map(String::as_str).collect();
        audiences.sort_unstable();
        audiences
    }

    /// The namespace globs of `spec.exemptions.namespaces`, as written.
    pub fn exempt_namespaces(&self) -> &[String] {
        self.exemptions.namespaces.as_ref().map_or(&[], |globs| globs.patterns())
    }

    /// `spec.exemptions.users`, sorted.
    pub fn exempt_users(&self) -> Vec<&str> {
        let mut users: Vec<&str> = self.exemptions.users.iter().map(String::as_str).collect();
        users.sort_unstable();
        users
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
