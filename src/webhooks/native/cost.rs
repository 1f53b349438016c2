//! A bound on what the native policies' CEL costs the API server, in its own units, and the
//! fallback to the webhook for a policy whose CEL would go over the limits.
//!
//! Upstream: `PerCallLimit` (1 000 000 per expression) and `RuntimeCELCostBudget` (10 000 000
//! per evaluation of a policy with its binding) in `k8s.io/apiserver/pkg/apis/cel/config.go`;
//! `CostEstimator.CallCost` in `k8s.io/apiserver/pkg/cel/library/cost.go` charges a
//! `matches()` `ceil((1 + len(string)) * 0.1) * ceil(len(regex) * 0.25)`
//! (`common.StringTraversalCostFactor`, `common.RegexStringLengthCostFactor` in cel-go); cel-go's
//! runtime cost tracker (`interpreter/runtimecost.go`) charges 1 per other evaluated node and
//! `ceil(len * 0.1)` per string comparison.
//!
//! The bound has two parts. The fixed part is what a request pays whatever it carries: the
//! `grants` variable, evaluated once, every entry's globs tried on the longest names (a
//! namespace of 63 characters, a service account of 253). The part per item is what each
//! token source, audience or `tokenRequests` entry of the request adds: every lexical token of
//! every other expression counted as one evaluated node, and every comparison as one of two
//! 253-character strings. Both over-count; neither can under-count.

use super::objects::PolicySpec;

/// `PerCallLimit`: the most one expression may cost.
pub const PER_CALL_LIMIT: u64 = 1_000_000;
/// `RuntimeCELCostBudget`: the most all expressions of one policy may cost on one request.
pub const RUNTIME_CEL_COST_BUDGET: u64 = 10_000_000;
/// The most code points one expression may have: cel-go's parser default
/// (`expressionSizeCodePointLimit` in `parser/parser.go`), which the API server keeps.
pub const EXPRESSION_SIZE_LIMIT: usize = 100_000;
/// The longest namespace name (a DNS label).
const MAX_NAMESPACE: u64 = 63;
/// The longest service-account name (a DNS subdomain).
const MAX_NAME: u64 = 253;

/// What `matches()` costs on a string of `length` with a regular expression of `regex` bytes.
pub fn matches_cost(length: u64, regex: u64) -> u64 {
    (1 + length).div_ceil(10) * regex.div_ceil(4)
}

/// The bound on one native policy's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Paid once per request.
    pub fixed: u64,
    /// Paid per token source, audience or `tokenRequests` entry of the request.
    pub per_item: u64,
}

impl Estimate {
    /// How many items a request may carry before one expression reaches `PER_CALL_LIMIT`.
    pub fn items_within_limit(&self) -> u64 {
        PER_CALL_LIMIT.saturating_sub(self.fixed) / self.per_item.max(1)
    }
}

/// The bound for `spec`.
pub fn estimate(spec: &PolicySpec) -> Estimate {
    let mut fixed = 0;
    let mut per_item = 0;
    for variable in &spec.variables {
        if variable.name == "grants" {
            fixed += expression_cost(&variable.expression);
            // Each token looks through its audience's values: at most every value of the map.
            let values = variable.expression.matches(',').count() + variable.expression.matches('[').count();
            per_item += 4 * values as u64;
        } else {
            per_item += expression_cost(&variable.expression);
        }
    }
    for validation in &spec.validations {
        per_item += expression_cost(&validation.expression) + expression_cost(&validation.message_expression);
    }
    Estimate { fixed, per_item }
}

/// One expression evaluated once: a node per lexical token, the longest names in comparisons,
/// and every `matches()` at its upstream cost on the name it reads.
fn expression_cost(expression: &str) -> u64 {
    let comparisons = expression.matches("==").count() + expression.matches(" in ").count();
    let mut cost = lexical_tokens(expression) + comparisons as u64 * MAX_NAME.div_ceil(10);
    let mut rest = expression;
    while let Some(at) = rest.find(".matches('") {
        let subject = &rest[..at];
        let length = if subject.ends_with("request.namespace") { MAX_NAMESPACE } else { MAX_NAME };
        let regex = &rest[at + ".matches('".len()..];
        let end = regex.find("')").unwrap_or(regex.len());
        cost += matches_cost(length, end as u64);
        rest = &regex[end..];
    }
    cost
}

/// The lexical tokens of a CEL expression: names, numbers, quoted strings and operators, each
/// at most one evaluated node.
fn lexical_tokens(expression: &str) -> u64 {
    let mut count = 0;
    let mut chars = expression.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' || c == '"' {
            while let Some(inner) = chars.next() {
                if inner == '\\' {
                    chars.next();
                } else if inner == c {
                    break;
                }
            }
            count += 1;
        } else if c.is_alphanumeric() || c == '_' {
            while chars.peek().is_some_and(|n| n.is_alphanumeric() || *n == '_') {
                chars.next();
            }
            count += 1;
        } else if !c.is_whitespace() && !matches!(c, '(' | ')' | ',') {
            count += 1;
        }
    }
    count
}

/// Why a native policy is left to the webhook, if it is: an expression longer than the CEL
/// parser accepts, or a fixed part that would leave fewer than 100 items within the
/// per-expression limit.
pub fn over_budget(spec: &PolicySpec) -> Option<String> {
    let expressions =
        spec.variables.iter().map(|v| &v.expression).chain(spec.validations.iter().map(|v| &v.expression));
    if let Some(longest) = expressions.map(|e| e.chars().count()).max().filter(|n| *n > EXPRESSION_SIZE_LIMIT) {
        return Some(format!(
            "an expression would have {longest} characters, over the CEL parser's limit of {EXPRESSION_SIZE_LIMIT}"
        ));
    }
    let estimate = estimate(spec);
    (estimate.items_within_limit() < 100).then(|| {
        format!(
            "its CEL may cost {} units per request plus {} per token source or audience: fewer than 100 fit within the API server's limit of {PER_CALL_LIMIT} per expression",
            estimate.fixed, estimate.per_item
        )
    })
}
