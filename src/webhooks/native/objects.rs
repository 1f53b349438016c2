//! ValidatingAdmissionPolicy, MutatingAdmissionPolicy and their bindings
//! (admissionregistration.k8s.io/v1) with the fields tokengate sets, in a readable order.
//!
//! Upstream: `k8s.io/api/admissionregistration/v1` `types.go` (`MutatingAdmissionPolicySpec`,
//! `Mutation`, `JSONPatch`, `PatchType`, `MutatingAdmissionPolicyBindingSpec`).

use serde::{Deserialize, Serialize};

use crate::policy::Mode;
use crate::webhooks::conditions::MatchCondition;
use crate::webhooks::{FailurePolicy, Metadata, Rule};

/// The API version of every kind here (ValidatingAdmissionPolicy GA since Kubernetes 1.30,
/// MutatingAdmissionPolicy since 1.36).
pub const API_VERSION: &str = "admissionregistration.k8s.io/v1";

/// A ValidatingAdmissionPolicy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidatingAdmissionPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: PolicySpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    pub failure_policy: FailurePolicy,
    pub match_constraints: MatchResources,
    pub match_conditions: Vec<MatchCondition>,
    pub variables: Vec<Variable>,
    pub validations: Vec<Validation>,
}

/// `matchConstraints`: the same rule shape as webhooks (`NamedRuleWithOperations`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchResources {
    pub resource_rules: Vec<Rule>,
    pub match_policy: String,
}

/// One entry of `variables`, read by later ones and by validations as `variables.<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variable {
    pub name: String,
    pub expression: String,
}

/// One entry of `validations`: the request passes it when `expression` is true.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    /// The tokengate rule it enforces (see `split`); named in its messages, not serialised.
    #[serde(skip)]
    pub rule: &'static str,
    pub expression: String,
    /// Shown when `messageExpression` fails to evaluate.
    pub message: String,
    pub message_expression: String,
    /// `Forbidden`: a violation is answered 403, as tokengate answers it.
    pub reason: String,
}

/// A ValidatingAdmissionPolicyBinding: applies one policy cluster-wide with the mode's action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidatingAdmissionPolicyBinding {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: BindingSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingSpec {
    pub policy_name: String,
    pub validation_actions: Vec<String>,
}

/// What the API server does with a failed validation in `mode`: Enforce denies, Warn admits
/// with a warning, Audit admits and records it in the audit event.
pub fn validation_actions(mode: Mode) -> Vec<String> {
    let action = match mode {
        Mode::Enforce => "Deny",
        Mode::Warn => "Warn",
        Mode::Audit => "Audit",
    };
    vec![action.to_string()]
}

impl ValidatingAdmissionPolicy {
    /// The policy `name` with `spec`.
    pub fn new(name: &str, spec: PolicySpec) -> Self {
        ValidatingAdmissionPolicy {
            api_version: API_VERSION.to_string(),
            kind: "ValidatingAdmissionPolicy".to_string(),
            metadata: Metadata { name: name.to_string(), annotations: Default::default() },
            spec,
        }
    }

    /// Its binding, named as the policy, with the mode's action.
    pub fn binding(&self, mode: Mode) -> ValidatingAdmissionPolicyBinding {
        ValidatingAdmissionPolicyBinding {
            api_version: API_VERSION.to_string(),
            kind: "ValidatingAdmissionPolicyBinding".to_string(),
            metadata: Metadata { name: self.metadata.name.clone(), annotations: Default::default() },
            spec: BindingSpec { policy_name: self.metadata.name.clone(), validation_actions: validation_actions(mode) },
        }
    }
}

impl Variable {
    pub fn new(name: &str, expression: String) -> Self {
        Variable { name: name.to_string(), expression }
    }
}

impl Validation {
    /// A validation of `rule`: `message` is the fixed text, `message_expression` the CEL
    /// string that names what to change; both end by naming the rule.
    pub fn new(rule: &'static str, expression: String, message: &str, message_expression: String) -> Self {
        Validation {
            rule,
            expression,
            message: format!("tokengate: {message} (rule {rule})"),
            message_expression: format!("'tokengate: ' + {message_expression} + ' (rule {rule})'"),
            reason: "Forbidden".to_string(),
        }
    }
}

/// A MutatingAdmissionPolicy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MutatingAdmissionPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: MutatingPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MutatingPolicySpec {
    pub failure_policy: FailurePolicy,
    /// `IfNeeded`: called again when a later plugin changed the pod (the mutations are
    /// idempotent), as the mutating webhook is. Required in v1.
    pub reinvocation_policy: String,
    pub match_constraints: MatchResources,
    pub match_conditions: Vec<MatchCondition>,
    pub variables: Vec<Variable>,
    /// Applied in order, each to the object the ones before it patched.
    pub mutations: Vec<Mutation>,
}

/// One entry of `mutations`: a JSON patch built by a CEL expression (`patchType: JSONPatch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mutation {
    pub patch_type: String,
    pub json_patch: JsonPatch,
}

/// `jsonPatch`: `expression` evaluates to a list of `JSONPatch{op, path, value}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonPatch {
    pub expression: String,
}

impl Mutation {
    /// A `JSONPatch` mutation whose patch `expression` builds.
    pub fn json_patch(expression: String) -> Self {
        Mutation { patch_type: "JSONPatch".to_string(), json_patch: JsonPatch { expression } }
    }
}

/// A MutatingAdmissionPolicyBinding: applies one policy cluster-wide (it has no actions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MutatingAdmissionPolicyBinding {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: MutatingBindingSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MutatingBindingSpec {
    pub policy_name: String,
}

impl MutatingAdmissionPolicy {
    /// The policy `name` with `spec`.
    pub fn new(name: &str, spec: MutatingPolicySpec) -> Self {
        MutatingAdmissionPolicy {
            api_version: API_VERSION.to_string(),
            kind: "MutatingAdmissionPolicy".to_string(),
            metadata: Metadata { name: name.to_string(), annotations: Default::default() },
            spec,
        }
    }

    /// Its binding, named as the policy.
    pub fn binding(&self) -> MutatingAdmissionPolicyBinding {
        MutatingAdmissionPolicyBinding {
            api_version: API_VERSION.to_string(),
            kind: "MutatingAdmissionPolicyBinding".to_string(),
            metadata: Metadata { name: self.metadata.name.clone(), annotations: Default::default() },
            spec: MutatingBindingSpec { policy_name: self.metadata.name.clone() },
        }
    }
}
