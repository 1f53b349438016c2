//! Which rule of tokengate's decisions is decided where: inside the API server by the native
//! policies (validations, and the injections a MutatingAdmissionPolicy adds), or by the webhook
//! (lookups, comparisons CEL cannot make, refusals a mutation cannot make, expressions over the
//! cost budget). Every rule is in [`RULES`] once; [`split`] places each for one policy.

use crate::review::Subject;

/// The rules, named as violations and the native policies' messages name them.
pub use crate::review::rules;

/// Where a rule is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A ValidatingAdmissionPolicy (or, for injections, a MutatingAdmissionPolicy), inside the
    /// API server.
    Native,
    /// tokengate's webhook.
    Webhook,
}

/// Why a rule can never be native: it needs what CEL in the API server cannot see or compare.
const KUBELETS: &str = "a kubelet's request is checked against the pod it is bound to (the pod, its volumes and the CSIDrivers it reaches are lookups), and its automount token is recognised by that pod";
const CSI: &str =
    "the tokens a CSI driver mints for the pod are listed in the CSIDriver object, which CEL cannot look up";
const INJECTIONS: &str = "an injection matched by a service-account annotation (or setting a variable from one) needs the ServiceAccount (a lookup); a collision (volume, mounts, env) is refused or warned about, which a mutation cannot do; and a pod on which a native injection collides, or that another injection may match, is planned by the webhook whole";
const TEMPLATES: &str = "on UPDATE only violations the old template lacked count, and the pod checks on a template include the lookups above (an early warning, failurePolicy Ignore)";

/// Every rule: its subject, and why it stays in the webhook whatever the policy (`None`: native
/// unless its CEL is over the cost budget).
pub const RULES: [(&str, Subject, Option<&str>); 15] = [
    (rules::TOKEN_REQUEST_AUDIENCES, Subject::TokenRequest, None),
    (rules::TOKEN_REQUEST_LIFETIMES, Subject::TokenRequest, None),
    (rules::TOKEN_REQUEST_KUBELETS, Subject::TokenRequest, Some(KUBELETS)),
    (rules::POD_TOKEN_AUDIENCES, Subject::Pod, None),
    (rules::POD_TOKEN_LIFETIMES, Subject::Pod, None),
    (rules::POD_CSI_DRIVERS, Subject::Pod, Some(CSI)),
    (rules::POD_NATIVE_INJECTIONS, Subject::Pod, None),
    (rules::POD_INJECTIONS, Subject::Pod, Some(INJECTIONS)),
    (rules::CSI_DRIVER_LISTED, Subject::CsiDriver, None),
    (rules::CSI_DRIVER_AUDIENCES, Subject::CsiDriver, None),
    (rules::CSI_DRIVER_LIFETIMES, Subject::CsiDriver, None),
    (rules::CSI_DRIVER_REPUBLISH, Subject::CsiDriver, None),
    (rules::CSI_DRIVER_TOKEN_IN_SECRETS, Subject::CsiDriver, None),
    (rules::LEGACY_TOKENS, Subject::Secret, None),
    (rules::WORKLOAD_TEMPLATES, Subject::Workload(crate::review::WorkloadKind::Deployment), Some(TEMPLATES)),
];

/// One rule, placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub rule: &'static str,
    pub subject: Subject,
    pub side: Side,
    /// Why it is in the webhook; empty when native.
    pub why: String,
}

/// Every rule of [`RULES`], placed: native when its policy was built (`not_built` says why a
/// rule's policy was not), the webhook otherwise.
pub fn split(not_built: impl Fn(&'static str, Subject) -> Option<String>) -> Vec<Placement> {
    RULES
        .iter()
        .map(|&(rule, subject, never)| {
            let why = never.map(str::to_string).or_else(|| not_built(rule, subject));
            let side = if why.is_some() { Side::Webhook } else { Side::Native };
            Placement { rule, subject, side, why: why.unwrap_or_default() }
        })
        .collect()
}
