//! Compiled name patterns (namespaces, service accounts, containers) and label selectors.

use std::collections::BTreeMap;

use globset::{Glob, GlobBuilder, GlobMatcher};

use super::document::LabelSelectorSpec;

/// A compiled list of shell-style globs (`*`, `?`, `[abc]`, `{a,b}`); absent means "all".
///
/// This is the one reading of a glob in tokengate: decisions match with [`Globs::is_match`], and
/// the webhook configurations' CEL matches with [`Globs::re2`], which is built from the very
/// regular expressions globset compiles (so the two cannot drift).
#[derive(Debug, Clone)]
pub struct Globs {
    any: bool,
    /// One matcher per glob: each matches exactly what its regular expression matches (a
    /// `GlobSet` reads names as paths, and `..` as a parent directory).
    matchers: Vec<GlobMatcher>,
    globs: Vec<Glob>,
    patterns: Vec<String>,
}

/// Why a glob pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// globset could not parse it.
    #[error("{0}")]
    Syntax(String),
    /// It holds a character no Kubernetes name has (names are ASCII).
    #[error("{0:?} is not ASCII; Kubernetes names are, so it could never match")]
    NotAscii(String),
}

/// Compiles one pattern the way every glob of a policy is compiled: `{a,}` keeps its empty
/// alternative (so `istio-system{,-*}` matches `istio-system`), and `/` is an ordinary
/// character (names have none, so `**/x` matches `x`).
pub fn glob(pattern: &str) -> Result<Glob, GlobError> {
    if !pattern.is_ascii() {
        return Err(GlobError::NotAscii(pattern.to_string()));
    }
    GlobBuilder::new(pattern).empty_alternates(true).build().map_err(|e| GlobError::Syntax(e.kind().to_string()))
}

/// One glob's regular expression in the syntax both RE2 (CEL's `matches()` in the API server)
/// and Rust's `regex` read the same way: globset's own expression without its byte-mode flag
/// `(?-u)` (which RE2 lacks) and its anchors. Exact for ASCII patterns and names, the only ones
/// [`glob`] accepts: globset escapes every other ASCII punctuation character with `\`, which
/// both read as the character itself.
fn re2_body(glob: &Glob) -> &str {
    let regex = glob.regex();
    let regex = regex.strip_prefix("(?-u)").unwrap_or(regex);
    let regex = regex.strip_prefix('^').unwrap_or(regex);
    regex.strip_suffix('$').unwrap_or(regex)
}

impl Globs {
    /// Matches every name.
    pub fn any() -> Self {
        Self { any: true, matchers: Vec::new(), globs: Vec::new(), patterns: vec!["*".to_string()] }
    }

    /// Compiles `patterns` (`None` = all names); a pattern that does not compile is
    /// returned as `Err((index, message))`.
    pub fn compile(patterns: Option<&[String]>) -> Result<Self, (usize, String)> {
        let Some(patterns) = patterns else { return Ok(Self::any()) };
        let mut globs = Vec::with_capacity(patterns.len());
        for (index, pattern) in patterns.iter().enumerate() {
            globs.push(glob(pattern).map_err(|e| (index, e.to_string()))?);
        }
        let matchers = globs.iter().map(Glob::compile_matcher).collect();
        let any = patterns.iter().any(|p| p == "*");
        Ok(Self { any, matchers, globs, patterns: patterns.to_vec() })
    }

    /// Whether `name` matches one of the patterns.
    pub fn is_match(&self, name: &str) -> bool {
        self.any || self.matchers.iter().any(|matcher| matcher.is_match(name))
    }

    /// Whether these patterns match every name.
    pub fn matches_all(&self) -> bool {
        self.any
    }

    /// The patterns as written.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// The compiled globs, in the order written (none when these match all names).
    pub fn globs(&self) -> &[Glob] {
        &self.globs
    }

    /// One anchored RE2 expression matching exactly the names [`Globs::is_match`] matches;
    /// `None` when no name matches (an empty list).
    pub fn re2(&self) -> Option<String> {
        if self.any {
            return Some("^.*$".to_string());
        }
        if self.globs.is_empty() {
            return None;
        }
        let alternatives: Vec<&str> = self.globs.iter().map(re2_body).collect();
        Some(format!("^(?:{})$", alternatives.join("|")))
    }

    /// Whether every name `pattern` can match is matched here: true when these globs match
    /// all names, contain `pattern` itself, or `pattern` is a plain name that matches.
    pub fn covers(&self, pattern: &str) -> bool {
        self.any
            || self.patterns.iter().any(|p| p == pattern)
            || (!pattern.contains(['*', '?', '[', '{']) && self.is_match(pattern))
    }
}

/// A compiled Kubernetes label selector.
#[derive(Debug, Clone, Default)]
pub struct LabelSelector {
    match_labels: BTreeMap<String, String>,
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl LabelSelector {
    /// Compiles a selector; the error names the bad requirement by index.
    pub fn compile(spec: &LabelSelectorSpec) -> Result<Self, (usize, String)> {
        let mut requirements = Vec::with_capacity(spec.match_expressions.len());
        for (index, expr) in spec.match_expressions.iter().enumerate() {
            let key = expr.key.clone();
            let values = expr.values.clone();
            let requirement = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err((index, format!("operator {} needs at least one value", expr.operator)))
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err((index, format!("operator {} takes no values", expr.operator)))
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err((index, format!("unknown operator {other:?} (use In, NotIn, Exists or DoesNotExist)")))
                }
            };
            requirements.push(requirement);
        }
        Ok(Self { match_labels: spec.match_labels.clone(), requirements })
    }

    /// Whether a pod with `labels` is selected.
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let get = |key: &str| labels.and_then(|l| l.get(key));
        self.match_labels.iter().all(|(k, v)| get(k) == Some(v))
            && self.requirements.iter().all(|r| match r {
                Requirement::In(k, values) => get(k).is_some_and(|v| values.contains(v)),
                Requirement::NotIn(k, values) => get(k).is_none_or(|v| !values.contains(v)),
                Requirement::Exists(k) => get(k).is_some(),
                Requirement::DoesNotExist(k) => get(k).is_none(),
            })
    }
}

/// One requirement of a label selector, for rendering it elsewhere (webhook match conditions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorTerm<'a> {
    /// `matchLabels`: the label has exactly this value.
    Equals(&'a str, &'a str),
    In(&'a str, &'a [String]),
    NotIn(&'a str, &'a [String]),
    Exists(&'a str),
    DoesNotExist(&'a str),
}

impl LabelSelector {
    /// Every requirement, `matchLabels` first; a pod is selected when all hold.
    pub fn terms(&self) -> Vec<SelectorTerm<'_>> {
        let labels = self.match_labels.iter().map(|(k, v)| SelectorTerm::Equals(k, v));
        let expressions = self.requirements.iter().map(|r| match r {
            Requirement::In(k, values) => SelectorTerm::In(k, values),
            Requirement::NotIn(k, values) => SelectorTerm::NotIn(k, values),
            Requirement::Exists(k) => SelectorTerm::Exists(k),
            Requirement::DoesNotExist(k) => SelectorTerm::DoesNotExist(k),
        });
        labels.chain(expressions).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::document::LabelSelectorRequirement;

    fn globs(patterns: &[&str]) -> Globs {
        let owned: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        Globs::compile(Some(&owned)).expect("valid globs")
    }

    #[test]
    fn globs_match_names() {
        let cases = [
            (vec!["team-*"], "team-a", true),
            (vec!["team-*"], "other", false),
            (vec!["a", "b"], "b", true),
            (vec!["{dev,prod}-?"], "prod-1", true),
            (vec![], "anything", false),
            (vec!["*"], "", true),
        ];
        for (patterns, name, expected) in cases {
            assert_eq!(globs(&patterns).is_match(name), expected, "{patterns:?} vs {name}");
        }
        assert!(Globs::compile(None).expect("absent").is_match("x"));
    }

    #[test]
    fn empty_alternatives_count_and_non_ascii_globs_are_refused() {
        assert!(globs(&["istio-system{,-*}"]).is_match("istio-system"));
        assert!(globs(&["**/team-a"]).is_match("team-a"));
        let (index, message) = Globs::compile(Some(&["ok".to_string(), "tëam-*".to_string()])).expect_err("refused");
        assert_eq!(index, 1);
        assert!(message.contains("not ASCII"), "{message}");
        assert_eq!(globs(&["a.b", "c*"]).re2().as_deref(), Some("^(?:a\\.b|c.*)$"));
        assert_eq!(Globs::compile(Some(&[])).expect("empty").re2(), None);
    }

    #[test]
    fn bad_glob_reports_its_index() {
        let patterns = vec!["ok".to_string(), "[unclosed".to_string()];
        let (index, _) = Globs::compile(Some(&patterns)).expect_err("must fail");
        assert_eq!(index, 1);
    }

    #[test]
    fn covers_is_conservative() {
        assert!(globs(&["*"]).covers("team-*"));
        assert!(globs(&["team-*"]).covers("team-*"));
        assert!(globs(&["team-*"]).covers("team-a"));
        assert!(!globs(&["team-*"]).covers("*"));
        assert!(!globs(&["team-a"]).covers("team-*"));
    }

    #[test]
    fn label_selector_operators() {
        let spec = LabelSelectorSpec {
            match_labels: [("app".to_string(), "web".to_string())].into(),
            match_expressions: vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: vec!["a".into(), "b".into()],
                },
                LabelSelectorRequirement { key: "legacy".into(), operator: "DoesNotExist".into(), values: vec![] },
            ],
        };
        let selector = LabelSelector::compile(&spec).expect("valid");
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert!(selector.matches(Some(&labels(&[("app", "web"), ("tier", "a")]))));
        assert!(!selector.matches(Some(&labels(&[("app", "web"), ("tier", "c")]))));
        assert!(!selector.matches(Some(&labels(&[("app", "web"), ("tier", "a"), ("legacy", "1")]))));
        assert!(!selector.matches(None));
        assert!(LabelSelector::default().matches(None));
        let bad = LabelSelectorSpec {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelSelectorRequirement {
                key: "k".into(),
                operator: "Equals".into(),
                values: vec![],
            }],
        };
        assert!(LabelSelector::compile(&bad).is_err());
    }
}
