//! The webhook configurations beside the native policies: tokengate is called only for what the
//! native side cannot decide. A webhook whose every rule is native is left out; the pod and
//! TokenRequest webhooks skip what the native policies decide, and the pod webhooks what the
//! native injections add.
//!
//! Mutating admission (webhooks and MutatingAdmissionPolicies, reinvoked as their
//! `reinvocationPolicy` says) runs before validation, so `pods.validate` sees the pod the
//! mutations made: it is still called for a pod on which a native injection that applies is not
//! all there (or collides), and checks presence as before.

use super::{injections, Native};
use crate::policy::Policy;
use crate::review::Subject;
use crate::webhooks::conditions::{self, names as condition, MatchCondition};
use crate::webhooks::{names, Configurations};

/// The comment that opens the narrowed configurations, before their own header.
pub const HEADER: &str = "# NARROWED beside the native policies of `tokengate webhooks --native` (apply those first): the\n# CSIDriver and legacy token Secret webhooks are left out when their policies are native, pods.validate\n# is called only for pods with a CSI volume or that an injection may match, and tokenrequests.validate\n# only for kubelets. With the MutatingAdmissionPolicy, pods.mutate is called only for pods an injection\n# it does not add may match or on which one it adds collides, and pods.validate, for injections, only\n# for those and for pods where an injection it adds is not all there. The header below describes the\n# full configurations.\n";

/// `configurations` narrowed to what `native` leaves to tokengate. The conditions they had stay:
/// a request they skipped before is skipped still.
pub fn narrow(policy: &Policy, mut configurations: Configurations, native: &Native) -> Configurations {
    let decides = |subject: Subject| native.policies.iter().any(|p| p.subject == subject);
    let (native_injections, webhook_injections) = injections::partition(policy);
    let injects = !native.mutating.is_empty();
    let webhook_may_match = conditions::any_of_may_match(webhook_injections.iter().copied());
    configurations.validating.webhooks.retain(|webhook| match webhook.name.as_str() {
        names::CSI_DRIVERS => !decides(Subject::CsiDriver),
        names::SECRETS => !decides(Subject::Secret),
        _ => true,
    });
    let webhooks = configurations.validating.webhooks.iter_mut().chain(configurations.mutating.webhooks.iter_mut());
    for webhook in webhooks {
        match webhook.name.as_str() {
            names::PODS_VALIDATE if decides(Subject::Pod) && injects => {
                let not_all_there = injections::not_all_there(policy, &native_injections);
                webhook
                    .match_conditions
                    .push(conditions::pod_needs_lookups_or(&format!("({webhook_may_match})\n|| ({not_all_there})")));
            }
            names::PODS_VALIDATE if decides(Subject::Pod) => {
                webhook.match_conditions.push(conditions::pod_needs_lookups(policy));
            }
            names::PODS_MUTATE if injects => {
                let left = injections::left_to_the_webhook(policy, &native_injections);
                webhook.match_conditions.push(MatchCondition {
                    name: condition::NATIVE_INJECTIONS.to_string(),
                    expression: format!("({webhook_may_match})\n|| ({left})"),
                });
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
