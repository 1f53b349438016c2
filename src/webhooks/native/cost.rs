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
//!
//! The MutatingAdmissionPolicy is counted the same way, expression by expression, with its
//! items being the entries of the lists its CEL iterates (containers, init containers, volumes,
//! volume mounts, env entries, the requester's groups): each expression once, plus per entry
//! the comprehension bodies of it that are not nested in another (a body runs at most once per
//! entry of its list, and a nested list belongs to one container, whose entries pay the nested
//! body: the cost stays linear), plus the comprehensions over the fixed list of container
//! indexes. Upstream gives each mutation its own budget:
//! `dispatcher.dispatchOne` in `k8s.io/apiserver/pkg/admission/plugin/policy/mutating` calls
//! `patcher.Patch(ctx, patchRequest, celconfig.RuntimeCELCostBudget)` for every mutation, in
//! which the variables it reads first are charged; the matchConditions share
//! `RuntimeCELCostBudgetMatchConditions` (`matchconditions.matcher.Match`), and every expression
//! is held to `PerCallLimit`.

use super::injections::{INDEXED_CONTAINERS, INDEXES, READ_SKIP_ANNOTATION};
use super::objects::{MutatingPolicySpec, PolicySpec};
use crate::review::SKIP_ANNOTATION;
use crate::webhooks::conditions::cel_string;

/// `PerCallLimit`: the most one expression may cost.
pub const PER_CALL_LIMIT: u64 = 1_000_000;
/// `RuntimeCELCostBudget`: the most all expressions of one policy may cost on one request (for a
/// MutatingAdmissionPolicy, one mutation with the variables it reads first).
pub const RUNTIME_CEL_COST_BUDGET: u64 = 10_000_000;
/// `RuntimeCELCostBudgetMatchConditions`: the most the matchConditions of one policy and binding
/// may cost together.
pub const RUNTIME_CEL_COST_BUDGET_MATCH_CONDITIONS: u64 = 2_500_000;
/// The fewest items (token sources, audiences, `tokenRequests` entries) a validating policy must
/// fit within the limits, or it is left to the webhook.
pub const MIN_ITEMS: u64 = 100;
/// The fewest list entries the MutatingAdmissionPolicy must fit: a pod at its container cap
/// (both arrays full, [`INDEXED_CONTAINERS`] each) with as many volumes, mounts and env entries
/// again. Below, the injections are left to the webhook. Beyond, as for a validating policy's
/// items, a pod with far more volumes, mounts or variables fails the expression and is refused
/// (`failurePolicy: Fail`).
pub const MUTATING_MIN_ITEMS: u64 = 4 * INDEXED_CONTAINERS as u64;
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
        self.items_within(PER_CALL_LIMIT)
    }

    /// How many items a request may carry before the bound reaches `limit` (`u64::MAX` when
    /// nothing is paid per item and the fixed part fits).
    fn items_within(&self, limit: u64) -> u64 {
        match (limit.checked_sub(self.fixed), self.per_item) {
            (None, _) => 0,
            (Some(_), 0) => u64::MAX,
            (Some(left), per_item) => left / per_item,
        }
    }

    fn sum(estimates: impl IntoIterator<Item = Estimate>) -> Estimate {
        estimates.into_iter().fold(Estimate { fixed: 0, per_item: 0 }, |total, e| Estimate {
            fixed: total.fixed + e.fixed,
            per_item: total.per_item + e.per_item,
        })
    }
}

/// The bound on the MutatingAdmissionPolicy's cost: all its expressions together, and how many
/// list entries fit the limits that bind (each expression's, the matchConditions', each
/// mutation's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MutatingEstimate {
    /// Every expression once: what one request may cost in all.
    pub total: Estimate,
    /// How many list entries a pod may have before one of the limits is reached.
    pub items_within_limits: u64,
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

/// The bound for the MutatingAdmissionPolicy `spec`.
pub fn estimate_mutating(spec: &MutatingPolicySpec) -> MutatingEstimate {
    let conditions: Vec<Estimate> = spec.match_conditions.iter().map(|c| iterating_cost(&c.expression)).collect();
    let variables: Vec<Estimate> = spec.variables.iter().map(|v| iterating_cost(&v.expression)).collect();
    let mutations: Vec<Estimate> = spec.mutations.iter().map(|m| iterating_cost(&m.json_patch.expression)).collect();
    let every = conditions.iter().chain(&variables).chain(&mutations).copied();
    let per_expression = every.clone().map(|e| e.items_within(PER_CALL_LIMIT));
    let match_conditions =
        Estimate::sum(conditions.iter().copied()).items_within(RUNTIME_CEL_COST_BUDGET_MATCH_CONDITIONS);
    // A mutation may be the first to read every variable.
    let per_mutation = mutations.iter().map(|mutation| {
        Estimate::sum(variables.iter().copied().chain([*mutation])).items_within(RUNTIME_CEL_COST_BUDGET)
    });
    let items_within_limits = per_expression.chain([match_conditions]).chain(per_mutation).min().unwrap_or(u64::MAX);
    MutatingEstimate { total: Estimate::sum(every), items_within_limits }
}

/// One expression that iterates lists: evaluated once, plus every comprehension body per entry,
/// plus the comprehensions over the container indexes, which always have
/// [`INDEXED_CONTAINERS`] entries.
fn iterating_cost(expression: &str) -> Estimate {
    let indexes = format!("variables.{INDEXES}");
    let mut fixed = expression_cost(expression);
    let mut per_item = 0;
    let mut outer_body_ends = 0;
    for (receiver, body) in comprehensions(expression) {
        let body_cost = expression_cost(body);
        // A nested body is part of its outer one: its entries (a container's mounts or env)
        // are charged its body, the outer entry (the container) the rest.
        if receiver.len() >= outer_body_ends {
            per_item += body_cost;
            outer_body_ends = receiver.len() + body.len();
        }
        if receiver.ends_with(&indexes) {
            fixed += INDEXED_CONTAINERS as u64 * body_cost;
        }
    }
    Estimate { fixed, per_item }
}

/// Every comprehension macro of `expression` (`all`, `exists`, `exists_one`, `filter`, `map`):
/// the text before it (its receiver ends there) and its body (the arguments), outside quotes.
fn comprehensions(expression: &str) -> Vec<(&str, &str)> {
    const MACROS: [&str; 5] = [".all(", ".exists(", ".exists_one(", ".filter(", ".map("];
    let mut found = Vec::new();
    for (at, _) in unquoted(expression).filter(|(_, c)| *c == '.') {
        let Some(name) = MACROS.iter().find(|m| expression[at..].starts_with(**m)) else { continue };
        let start = at + name.len();
        let end = closing_paren(&expression[start..]).map_or(expression.len(), |n| start + n);
        found.push((&expression[..at], &expression[start..end]));
    }
    found
}

/// The characters of `text` outside quoted strings, with their byte offsets.
fn unquoted(text: &str) -> impl Iterator<Item = (usize, char)> + Clone + '_ {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    text.char_indices().filter(move |&(_, c)| match quote {
        Some(_) if escaped => {
            escaped = false;
            false
        }
        Some(_) if c == '\\' => {
            escaped = true;
            false
        }
        Some(q) => {
            if c == q {
                quote = None;
            }
            false
        }
        None if c == '\'' || c == '"' => {
            quote = Some(c);
            false
        }
        None => true,
    })
}

/// The offset of the parenthesis closing the one just before `text`, outside quotes.
fn closing_paren(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (at, c) in unquoted(text) {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return Some(at),
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// One expression evaluated once: a node per lexical token, the longest names in comparisons,
/// and every `matches()` at its upstream cost on the name it reads.
fn expression_cost(expression: &str) -> u64 {
    let comparisons = expression.matches("==").count() + expression.matches(" in ").count();
    let mut cost = lexical_tokens(expression) + comparisons as u64 * MAX_NAME.div_ceil(10);
    let mut rest = expression;
    while let Some(at) = rest.find(".matches('") {
        let subject = &rest[..at];
        let length = if subject.ends_with("request.namespace") {
            MAX_NAMESPACE
        } else if subject.ends_with(&format!("annotations[{}]", cel_string(SKIP_ANNOTATION))) {
            // Read only up to this length (`injections::applies`).
            READ_SKIP_ANNOTATION as u64
        } else {
            MAX_NAME
        };
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

/// Why an expression of `expressions` cannot be parsed, if one is longer than the CEL parser
/// accepts.
fn too_long<'a>(expressions: impl Iterator<Item = &'a String>) -> Option<String> {
    let longest = expressions.map(|e| e.chars().count()).max().filter(|n| *n > EXPRESSION_SIZE_LIMIT)?;
    Some(format!(
        "an expression would have {longest} characters, over the CEL parser's limit of {EXPRESSION_SIZE_LIMIT}"
    ))
}

/// Why a native policy is left to the webhook, if it is: an expression longer than the CEL
/// parser accepts, or a fixed part that would leave fewer than [`MIN_ITEMS`] items within the
/// per-expression limit.
pub fn over_budget(spec: &PolicySpec) -> Option<String> {
    let expressions =
        spec.variables.iter().map(|v| &v.expression).chain(spec.validations.iter().map(|v| &v.expression));
    if let Some(why) = too_long(expressions) {
        return Some(why);
    }
    let estimate = estimate(spec);
    (estimate.items_within_limit() < MIN_ITEMS).then(|| {
        format!(
            "its CEL may cost {} units per request plus {} per token source or audience: fewer than {MIN_ITEMS} fit within the API server's limit of {PER_CALL_LIMIT} per expression",
            estimate.fixed, estimate.per_item
        )
    })
}

/// Why the MutatingAdmissionPolicy is left to the webhook, if it is: an expression longer than
/// the CEL parser accepts, or fewer than [`MUTATING_MIN_ITEMS`] list entries within the limits.
pub fn mutating_over_budget(spec: &MutatingPolicySpec) -> Option<String> {
    let expressions = spec
        .match_conditions
        .iter()
        .map(|c| &c.expression)
        .chain(spec.variables.iter().map(|v| &v.expression))
        .chain(spec.mutations.iter().map(|m| &m.json_patch.expression));
    if let Some(why) = too_long(expressions) {
        return Some(why);
    }
    let bound = estimate_mutating(spec);
    (bound.items_within_limits < MUTATING_MIN_ITEMS).then(|| {
        format!(
            "its CEL may cost {} units per request plus {} per container, volume, volume mount, env entry or group: fewer than {MUTATING_MIN_ITEMS} fit within the API server's limits ({PER_CALL_LIMIT} per expression, {RUNTIME_CEL_COST_BUDGET_MATCH_CONDITIONS} for the matchConditions, {RUNTIME_CEL_COST_BUDGET} per mutation)",
            bound.total.fixed, bound.total.per_item
        )
    })
}
