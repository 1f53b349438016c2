//! The webhook configurations beside the native policies: tokengate is called only for what the
//! native side cannot decide. A webhook whose every rule is native is left out; the pod and
//! TokenRequest webhooks skip what the native policies decide.

use super::Native;
use crate::policy::Policy;
use crate::review::Subject;
use crate::webhooks::conditions::{self, names as condition, MatchCondition};
use crate::webhooks::{names, Configurations};

/// The comment that opens the narrowed configurations, before their own header.
pub const HEADER: &str = "# NARROWED beside the native policies of `tokengate webhooks --native` (apply those first): the\n# CSIDriver and legacy token Secret webhooks are left out when their policies are native, pods.validate\n# is called only for pods with a CSI volume or that an injection may match, and tokenrequests.validate\n# only for kubelets. The header below describes the full configurations.\n";

/// `configurations` narrowed to what `native` leaves to tokengate. The conditions they had stay:
/// a request they skipped before is skipped still.
pub fn narrow(policy: &Policy, mut configurations: Configurations, native: &Native) -> Configurations {
    let decides = |subject: Subject| native.policies.iter().any(|p| p.subject == subject);
    configurations.validating.webhooks.retain(|webhook| match webhook.name.as_str() {
        names::CSI_DRIVERS => !decides(Subject::CsiDriver),
        names::SECRETS => !decides(Subject::Secret),
        _ => true,
    });
    for webhook in &mut configurations.validating.webhooks {
        match webhook.name.as_str() {
            names::PODS_VALIDATE if decides(Subject::Pod) => {
                webhook.match_conditions.push(conditions::pod_needs_lookups(policy));
            }
            names::TOKEN_REQUESTS if decides(Subject::TokenRequest) => {
                webhook.match_conditions.push(MatchCondition {
                    name: condition::NATIVE_TOKEN_REQUESTS.to_string(),
                    expression: super::kubelet(),
                });
            }
            _ => {}
        }
    }
    configurations
}
