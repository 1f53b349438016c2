//! Who decides each credential that `explain` and `check` report: the API server (a native
//! ValidatingAdmissionPolicy of `tokengate webhooks --native`, and for an injection the
//! MutatingAdmissionPolicy that adds it) or the webhook, and why, read from
//! `webhooks::native::split` and `Native::injections` for the policy by the rules that judge that
//! credential.
//!
//! Placement lives in one place (`split`); this module only says which rules judge which
//! credential, and annotates the rows of `explain` and the findings of `check` with the result.

use crate::explain::{self, Row, Source};
use crate::policy::Policy;
use crate::report::{self, DecidedBy, Decider};
use crate::webhooks::native::split::{rules, Side};
use crate::webhooks::native::{self, Native};

/// The rules that judge a projected token (the automount volume's too: the native policy admits
/// it as the webhook does).
const POD_TOKEN: &[&str] = &[rules::POD_TOKEN_AUDIENCES, rules::POD_TOKEN_LIFETIMES];
/// The rules that judge a projected token an injection adds or requires.
const INJECTED_TOKEN: &[&str] = &[rules::POD_INJECTIONS, rules::POD_TOKEN_AUDIENCES, rules::POD_TOKEN_LIFETIMES];
/// The rules that judge what a CSIDriver's `tokenRequests` entry mints.
const CSI_DRIVER_ENTRY: &[&str] = &[rules::CSI_DRIVER_LISTED, rules::CSI_DRIVER_AUDIENCES, rules::CSI_DRIVER_LIFETIMES];

/// The native split of one policy, with the names its native policies would have.
pub struct WhoDecides {
    native: Native,
}

impl WhoDecides {
    /// The split of `policy`, its native policies named as `tokengate webhooks --native --name
    /// NAME` names them.
    pub fn new(policy: &Policy, name: &str) -> Self {
        WhoDecides { native: native::native(policy, name) }
    }

    /// Who decides a credential judged by `judged_by`: the API server when every one of those
    /// rules is native (naming the policy that holds them), the webhook otherwise (naming the
    /// rules it keeps and why).
    pub fn decide(&self, judged_by: &[&str]) -> DecidedBy {
        let placed: Vec<_> = self.native.split.iter().filter(|p| judged_by.contains(&p.rule)).collect();
        let webhook: Vec<_> = placed.iter().filter(|p| p.side == Side::Webhook).collect();
        if placed.is_empty() {
            // Not a placed rule (`rules::READABLE_REQUEST`): only the webhook answers it.
            return DecidedBy {
                decided_by: Decider::Webhook,
                rules: judged_by.iter().map(|rule| rule.to_string()).collect(),
                native_policy: None,
                webhook_reason: Some("the object could not be read, so no rule could judge it".to_string()),
                mutating_policy: None,
            };
        }
        if webhook.is_empty() {
            let subject = placed.first().map(|p| p.subject);
            let native_policy = self
                .native
                .policies
                .iter()
                .find(|p| Some(p.subject) == subject)
                .map(|p| p.policy.metadata.name.clone());
            return DecidedBy {
                decided_by: Decider::Native,
                rules: placed.iter().map(|p| p.rule.to_string()).collect(),
                native_policy,
                webhook_reason: None,
                mutating_policy: None,
            };
        }
        let mut reasons: Vec<&str> = Vec::new();
        for placement in &webhook {
            if !placement.why.is_empty() && !reasons.contains(&placement.why.as_str()) {
                reasons.push(&placement.why);
            }
        }
        DecidedBy {
            decided_by: Decider::Webhook,
            rules: webhook.iter().map(|p| p.rule.to_string()).collect(),
            native_policy: None,
            webhook_reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
            mutating_policy: None,
        }
    }

    /// Who decides the token of injection `name`: when the MutatingAdmissionPolicy adds it
    /// (`Native::injections` places it there and the policy was built), that policy, with the
    /// pod's token rules for its audience and lifetime; the webhook's injection rules otherwise.
    fn decide_injected(&self, name: &str) -> DecidedBy {
        let native_injection = self.native.injections.iter().any(|i| i.name == name && i.webhook_because.is_none());
        let Some(mutating) = self.native.mutating.first().filter(|_| native_injection) else {
            return self.decide(INJECTED_TOKEN);
        };
        let mut decided = self.decide(POD_TOKEN);
        if decided.decided_by == Decider::Native {
            decided.rules.insert(0, rules::POD_NATIVE_INJECTIONS.to_string());
        }
        decided.mutating_policy = Some(mutating.policy.metadata.name.clone());
        decided
    }

    /// Sets who decides every credential row, and every CSIDriver and legacy token Secret.
    pub fn annotate_explained(&self, report: &mut explain::Report) {
        for object in &mut report.objects {
            for row in &mut object.credentials {
                row.decided = Some(match (row.source, &row.injection) {
                    (Source::Projected, Some(injection)) => self.decide_injected(&injection.name),
                    _ => self.decide(row_rules(row)),
                });
            }
            object.decided = object_rules(&object.kind).map(|judged_by| self.decide(judged_by));
        }
    }

    /// Sets who decides every violation `check` found.
    pub fn annotate_findings(&self, report: &mut report::Report) {
        for finding in &mut report.violations {
            finding.decided = Some(self.decide(&[finding.rule]));
        }
    }
}

/// The rules that judge the credential of `row`.
fn row_rules(row: &Row) -> &'static [&'static str] {
    match (row.source, &row.injection, &row.driver) {
        (Source::Automount, _, _) => POD_TOKEN,
        (Source::Projected, Some(_), _) => INJECTED_TOKEN,
        (Source::Projected, None, _) => POD_TOKEN,
        // A token of a driver reached through a claim is refused when the kubelet asks for it.
        (Source::CsiDriver, _, Some(driver)) if driver.reached_through != explain::INLINE => {
            &[rules::TOKEN_REQUEST_KUBELETS]
        }
        (Source::CsiDriver, _, _) => &[rules::POD_CSI_DRIVERS],
        (Source::LegacySecret, _, _) => &[rules::LEGACY_TOKENS],
    }
}

/// The rules that judge an object `explain` shows without credential rows.
fn object_rules(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "CSIDriver" => Some(CSI_DRIVER_ENTRY),
        "Secret" => Some(&[rules::LEGACY_TOKENS]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_keyed_here_is_placed_by_the_split() {
        let placed: Vec<&str> = crate::webhooks::native::split::RULES.iter().map(|(rule, _, _)| *rule).collect();
        for rule in POD_TOKEN.iter().chain(INJECTED_TOKEN).chain(CSI_DRIVER_ENTRY) {
            assert!(placed.contains(rule), "{rule} is not in split::RULES");
        }
    }
}
