//! Every token a pod (or pod template) will hold, each with its verdict: the automount token,
//! each projected `serviceAccountToken`, and each token a CSI driver it reaches mints.
//!
//! The Pod validation (`pod::check_tokens`) takes its violations from here, and `tokengate
//! explain` prints the same list, so the two cannot disagree.

use super::lookup::Cluster;
use super::pod_view::PodView;
use super::{rules, Violation};
use crate::policy::{expiration_or_default, Lifetime, Policy, Token};

/// Where a token of the pod comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin<'a> {
    /// The ServiceAccount admission plugin's `kube-api-access-*` volume.
    Automount { volume: &'a str, volume_index: usize },
    /// A `serviceAccountToken` source of a projected volume.
    Projected { volume: &'a str, volume_index: usize, source_index: usize, path: &'a str },
    /// An entry of a CSIDriver's `tokenRequests`, minted for every pod that mounts a volume of it.
    CsiDriver { volume: &'a str, volume_index: usize, driver: String, request_index: usize },
}

impl Origin<'_> {
    /// The name of the pod volume the token belongs to.
    pub fn volume(&self) -> &str {
        match self {
            Origin::Automount { volume, .. } | Origin::Projected { volume, .. } | Origin::CsiDriver { volume, .. } => {
                volume
            }
        }
    }
}

/// What the policy says about one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The automount volume: always admitted, whatever the allow-list says.
    AlwaysAdmitted,
    /// An `audiences` entry allows it (see `Policy::allowing_entry`).
    Allowed,
    /// The violation, worded as the webhook words it.
    Denied(Violation),
}

/// One token a pod will hold, as decisions judge it.
#[derive(Debug, Clone)]
pub struct Credential<'a> {
    pub origin: Origin<'a>,
    /// The audience as the pod or driver wrote it (`None` when absent).
    pub written_audience: Option<String>,
    /// The audience as decisions compare it (`""` for the API server audience).
    pub audience: String,
    /// What the kubelet asks for, and what the API server issues.
    pub lifetime: Lifetime,
    pub outcome: Outcome,
}

impl Credential<'_> {
    /// The token as the policy judges it, for the pod of `view`.
    pub fn token<'s>(&'s self, view: &PodView<'s>) -> Token<'s> {
        Token {
            audience: &self.audience,
            namespace: view.namespace,
            service_account: view.service_account,
            lifetime: self.lifetime,
        }
    }
}

/// One finding about a pod's tokens, in the order the pod's volumes list them.
#[derive(Debug, Clone)]
pub enum Found<'a> {
    Token(Credential<'a>),
    /// A CSI driver the pod reaches could not be looked up: its tokens are unknown.
    LookupFailed {
        volume_index: usize,
        driver: String,
        violation: Violation,
    },
}

/// Every token the pod's volumes give it: the automount volume, projected token sources, and
/// what each CSI driver it mounts inline (in-tree types that CSI migration serves count as
/// their driver) mints, each judged by the lifetime the API server will issue.
pub async fn pod_credentials<'a, C: Cluster>(view: &PodView<'a>, policy: &Policy, cluster: &C) -> Vec<Found<'a>> {
    let mut found = Vec::new();
    each_pod_credential(view, policy, cluster, |one| found.push(one)).await;
    found
}

/// The findings of [`pod_credentials`], in the same order, handed to `sink` one at a time: a pod
/// with a hundred thousand tokens is judged without holding a hundred thousand findings.
pub async fn each_pod_credential<'a, C: Cluster>(
    view: &PodView<'a>,
    policy: &Policy,
    cluster: &C,
    mut sink: impl FnMut(Found<'a>),
) {
    let field = &view.field;
    for (i, volume) in view.spec.volumes().iter().enumerate() {
        if volume.is_automount() {
            for (_, source) in volume.token_sources() {
                let token = pod_token(view, policy, source.audience, source.expiration_seconds);
                sink(Found::Token(Credential {
                    origin: Origin::Automount { volume: volume.name, volume_index: i },
                    written_audience: source.audience.map(str::to_string),
                    audience: token.audience.to_string(),
                    lifetime: token.lifetime,
                    outcome: Outcome::AlwaysAdmitted,
                }));
            }
            continue;
        }
        for (j, source) in volume.token_sources() {
            let token = pod_token(view, policy, source.audience, source.expiration_seconds);
            let outcome = match policy.check_token(&token) {
                Ok(()) => Outcome::Allowed,
                Err(denial) => {
                    let (rule, leaf) = if denial.is_about_expiration() {
                        (rules::POD_TOKEN_LIFETIMES, "expirationSeconds")
                    } else {
                        (rules::POD_TOKEN_AUDIENCES, "audience")
                    };
                    Outcome::Denied(Violation::new(
                        rule,
                        format!("{field}.volumes[{i}].projected.sources[{j}].serviceAccountToken.{leaf}"),
                        denial.explain(&token),
                    ))
                }
            };
            sink(Found::Token(Credential {
                origin: Origin::Projected { volume: volume.name, volume_index: i, source_index: j, path: source.path },
                written_audience: source.audience.map(str::to_string),
                audience: token.audience.to_string(),
                lifetime: token.lifetime,
                outcome,
            }));
        }
        let Some((driver_key, driver_name)) = volume.csi_driver() else { continue };
        let driver_field = format!("{field}.volumes[{i}].{driver_key}");
        driver_credentials(view, policy, cluster, i, driver_name, &driver_field).await.into_iter().for_each(&mut sink);
    }
}

/// The tokens CSI driver `driver` mints for the pod when it mounts the pod's volume
/// `volume_index`; violations are reported at `driver_field`. Used for inline volumes here, and
/// by `tokengate explain` for drivers reached through a PersistentVolumeClaim.
pub async fn driver_credentials<'a, C: Cluster>(
    view: &PodView<'a>,
    policy: &Policy,
    cluster: &C,
    volume_index: usize,
    driver: &str,
    driver_field: &str,
) -> Vec<Found<'a>> {
    let volume = view.spec.volumes().get(volume_index).map_or("", |v| v.name);
    let info = match cluster.csi_driver(driver).await {
        Ok(info) => info,
        Err(err) => {
            let violation = Violation::new(
                rules::POD_CSI_DRIVERS,
                driver_field,
                format!("could not look up CSIDriver {driver:?}: {err}"),
            );
            return vec![Found::LookupFailed { volume_index, driver: driver.to_string(), violation }];
        }
    };
    let Some(info) = info else { return Vec::new() };
    info.token_requests
        .iter()
        .enumerate()
        .map(|(k, (audience, seconds))| {
            let token = pod_token(view, policy, Some(audience), *seconds);
            let outcome = match policy.check_token(&token) {
                Ok(()) => Outcome::Allowed,
                Err(denial) => Outcome::Denied(Violation::new(
                    rules::POD_CSI_DRIVERS,
                    driver_field,
                    format!("CSI driver {driver:?} mints a token for this pod: {}", denial.explain(&token)),
                )),
            };
            Found::Token(Credential {
                origin: Origin::CsiDriver { volume, volume_index, driver: driver.to_string(), request_index: k },
                written_audience: Some(audience.clone()),
                audience: token.audience.to_string(),
                lifetime: token.lifetime,
                outcome,
            })
        })
        .collect()
}

/// A token the kubelet will request for the pod; it binds every such token to the pod.
pub fn pod_token<'a>(
    view: &PodView<'a>,
    policy: &Policy,
    audience: Option<&'a str>,
    seconds: Option<i64>,
) -> Token<'a> {
    let audience = policy.normalize(audience);
    let lifetime = policy.lifetime(expiration_or_default(seconds), true, audience.is_empty());
    Token { audience, namespace: view.namespace, service_account: view.service_account, lifetime }
}
