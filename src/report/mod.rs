//! The report of `check` and `audit` (what was found, where), and its printing for people and
//! for CI tools: text, JSON, JUnit XML, GitHub workflow annotations and SARIF.

mod formats;
mod sarif;

use std::fmt::Write as _;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::manifest::{Place, Rendered, STDIN};
use crate::policy::Mode;

/// Which object a finding is about, and where it was read.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// For an object of a Helm template: where `line` really is in the rendered stream (`line`
    /// is then approximate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rendered: Option<Rendered>,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// `Kind namespace/name`.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    /// `file:line: ` (or `file: `), or nothing for objects read from a cluster.
    pub fn location(&self) -> String {
        location(self.file.as_deref(), self.line)
    }

    /// Where the object is, as a [`Place`].
    fn place(&self) -> Place {
        Place { file: self.file.clone(), line: self.line, rendered: self.rendered.clone() }
    }
}

/// `file:line: `, `file: `, or nothing.
fn location(file: Option<&Path>, line: Option<usize>) -> String {
    match (file, line) {
        (Some(file), Some(line)) => format!("{}:{line}: ", file.display()),
        (Some(file), None) => format!("{}: ", file.display()),
        _ => String::new(),
    }
}

/// What a reader must know of a place beyond `file:line`: that the line is approximate (a Helm
/// template's), or that the file is standard input, which no annotation can point at.
fn caveat(place: &Place) -> String {
    match (&place.rendered, place.file.as_deref()) {
        (Some(rendered), _) => format!(
            " (approximate line: counted from the start of the document rendered from this template; line {} of {})",
            rendered.line,
            rendered.stream.display()
        ),
        _ => String::new(),
    }
}

/// Whether `place` is standard input without a name (`--stdin-filename`).
fn is_unnamed_stdin(place: &Place) -> bool {
    place.rendered.is_none() && place.file.as_deref() == Some(Path::new(STDIN))
}

/// One violation of one object.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    #[serde(flatten)]
    pub object: ObjectRef,
    /// The rule it breaks (`review::rules`).
    #[serde(skip)]
    pub rule: &'static str,
    pub field: String,
    pub message: String,
    /// Who decides it at admission (`check` sets it; `audit` does not).
    #[serde(flatten)]
    pub decided: Option<DecidedBy>,
}

/// Where a credential is decided at admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Decider {
    /// Inside the API server, by a ValidatingAdmissionPolicy of `tokengate webhooks --native`,
    /// once those are applied (the webhook decides it otherwise).
    Native,
    /// By tokengate's webhook, whatever is applied.
    Webhook,
}

/// Who decides a credential, by the rules that judge it (named as `tokengate webhooks --native`
/// names them), placed for the policy by `webhooks::native::split`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecidedBy {
    pub decided_by: Decider,
    /// The rules that judge the credential; for the webhook, those the native side cannot take.
    pub rules: Vec<String>,
    /// The ValidatingAdmissionPolicy that decides it, when native.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_policy: Option<String>,
    /// Why the webhook decides it, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_reason: Option<String>,
    /// The MutatingAdmissionPolicy that adds it, for a credential a native injection adds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutating_policy: Option<String>,
}

impl DecidedBy {
    /// One sentence for people, e.g. `the API server (ValidatingAdmissionPolicy tokengate-pods,
    /// rules pod-token-audiences, pod-token-lifetimes) when the native policies are applied
    /// (tokengate webhooks --native); the webhook otherwise`.
    pub fn describe(&self) -> String {
        // The rule of the native injections is named with the MutatingAdmissionPolicy.
        let judging: Vec<&str> = self
            .rules
            .iter()
            .map(String::as_str)
            .filter(|r| *r != crate::review::rules::POD_NATIVE_INJECTIONS)
            .collect();
        let rules = match judging.as_slice() {
            [one] => format!("rule {one}"),
            many => format!("rules {}", many.join(", ")),
        };
        let added = self.mutating_policy.as_ref().map(|policy| {
            format!("MutatingAdmissionPolicy {policy}, rule {}", crate::review::rules::POD_NATIVE_INJECTIONS)
        });
        match (self.decided_by, &self.native_policy, &self.webhook_reason, &added) {
            (Decider::Native, Some(policy), _, Some(added)) => format!(
                "the API server (added by {added}; judged by ValidatingAdmissionPolicy {policy}, {rules}) when the native policies are applied (tokengate webhooks --native); the webhook otherwise"
            ),
            (Decider::Native, Some(policy), _, None) => format!(
                "the API server (ValidatingAdmissionPolicy {policy}, {rules}) when the native policies are applied (tokengate webhooks --native); the webhook otherwise"
            ),
            (Decider::Native, None, _, _) => format!(
                "the API server ({rules}) when the native policies are applied (tokengate webhooks --native); the webhook otherwise"
            ),
            (Decider::Webhook, _, why, Some(added)) => format!(
                "added in the API server by {added} when the native policies are applied (tokengate webhooks --native); its token judged by the webhook, even beside the native policies ({rules}){}",
                why.as_ref().map(|why| format!(": {why}")).unwrap_or_default()
            ),
            (Decider::Webhook, _, Some(why), None) => format!("the webhook, even beside the native policies ({rules}): {why}"),
            (Decider::Webhook, _, None, None) => format!("the webhook, even beside the native policies ({rules})"),
        }
    }
}

/// Something a check could not verify, e.g. a lookup that found nothing among the objects.
#[derive(Debug, Clone, Serialize)]
pub struct Note {
    #[serde(flatten)]
    pub object: ObjectRef,
    pub message: String,
}

/// A file, or an object in it, that could not be read; the others were still checked.
#[derive(Debug, Clone, Serialize)]
pub struct FileError {
    pub file: PathBuf,
    /// The line the problem is on, when known (a policy's problems, a field the API server
    /// refuses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// For a Helm template: where `line` really is in the rendered stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rendered: Option<Rendered>,
    pub reason: FileErrorReason,
    pub message: String,
}

impl FileError {
    /// An error at `place` (a file without a place is reported as `-`).
    pub fn at(place: Place, reason: FileErrorReason, message: String) -> Self {
        let file = place.file.unwrap_or_else(|| PathBuf::from(STDIN));
        FileError { file, line: place.line, rendered: place.rendered, reason, message }
    }

    fn place(&self) -> Place {
        Place { file: Some(self.file.clone()), line: self.line, rendered: self.rendered.clone() }
    }
}

/// Why a file stopped the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FileErrorReason {
    /// A manifest that could not be read as Kubernetes objects.
    Unreadable,
    /// The policy has problems (nothing was checked).
    InvalidPolicy,
    /// An object with a field the API server's strict decoding refuses (an unknown field, a
    /// value of the wrong type) where tokengate reads; the object was not judged.
    InvalidObject,
}

/// A kind an audit could not list, with the API server's reason.
#[derive(Debug, Clone, Serialize)]
pub struct UnreadKind {
    pub kind: String,
    pub reason: String,
}

/// Everything `check` found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The policy mode, which decides whether findings fail the check.
    pub mode: &'static str,
    /// How many files were read (`check`; none for `audit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<usize>,
    /// How many objects tokengate governs were checked (Pods, workloads, CSIDrivers, legacy
    /// token Secrets).
    pub checked: usize,
    /// The objects tokengate does not govern, counted by kind (ConfigMaps, CRDs such as Argo
    /// Rollouts, Secrets of other types, ...).
    pub skipped: BTreeMap<String, usize>,
    pub violations: Vec<Finding>,
    pub notes: Vec<Note>,
    pub errors: Vec<FileError>,
    /// Kinds `audit` could not list (a 403, a kind the server does not serve): the report
    /// covers the others.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unread: Vec<UnreadKind>,
    /// Problems of the invocation that do not fail it (an `--exclude` that matched nothing).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// When a report fails the run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gate {
    /// Fail on violations whatever the policy mode (Warn and Audit too).
    pub fail_on_warn: bool,
    /// Fail when something could not be checked: a lookup found nothing, or no object was
    /// checked at all.
    pub strict: bool,
}

/// How serious an entry of the report is, in the words compilers and SARIF use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Fails the run.
    Error,
    /// Reported; does not fail the run.
    Warning,
    /// Something that could not be verified; fails the run only under `--strict`.
    Note,
}

impl Level {
    /// `error`, `warning` or `note`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Note => "note",
        }
    }
}

/// What kind of entry a report line is: a SARIF rule, a JUnit failure type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Violation,
    Unverified,
    Unreadable,
    InvalidPolicy,
    InvalidObject,
    Incomplete,
    Invocation,
}

impl Rule {
    /// Every rule, in the order SARIF lists them.
    pub const ALL: [Rule; 7] = [
        Rule::Violation,
        Rule::Unverified,
        Rule::Unreadable,
        Rule::InvalidPolicy,
        Rule::InvalidObject,
        Rule::Incomplete,
        Rule::Invocation,
    ];

    /// The rule's id.
    pub fn id(self) -> &'static str {
        match self {
            Rule::Violation => "violation",
            Rule::Unverified => "unverified",
            Rule::Unreadable => "unreadable-file",
            Rule::InvalidPolicy => "invalid-policy",
            Rule::InvalidObject => "invalid-object",
            Rule::Incomplete => "unlisted-kind",
            Rule::Invocation => "invocation",
        }
    }

    /// What the rule reports, in one sentence.
    pub fn description(self) -> &'static str {
        match self {
            Rule::Violation => {
                "A service-account token the policy does not allow (the webhook's verdict at admission)."
            }
            Rule::Unverified => {
                "Something tokengate could not verify: an object a lookup needs is not among the objects."
            }
            Rule::Unreadable => "A file that cannot be read as Kubernetes objects; the other files were still checked.",
            Rule::InvalidPolicy => "The policy document has a problem; nothing was checked.",
            Rule::InvalidObject => {
                "A field the API server's strict decoding refuses where tokengate reads; the object was not judged."
            }
            Rule::Incomplete => "A kind the audit could not list from the cluster.",
            Rule::Invocation => "A problem of the command line that does not fail the run.",
        }
    }

    /// The level of this rule's entries unless the gate decides otherwise.
    pub fn default_level(self) -> Level {
        match self {
            Rule::Violation | Rule::Unreadable | Rule::InvalidPolicy | Rule::InvalidObject | Rule::Incomplete => {
                Level::Error
            }
            Rule::Unverified => Level::Note,
            Rule::Invocation => Level::Warning,
        }
    }

    fn of(reason: FileErrorReason) -> Rule {
        match reason {
            FileErrorReason::Unreadable => Rule::Unreadable,
            FileErrorReason::InvalidPolicy => Rule::InvalidPolicy,
            FileErrorReason::InvalidObject => Rule::InvalidObject,
        }
    }
}

/// One entry of a report, whatever it is, with its level: every format prints these.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub rule: Rule,
    pub level: Level,
    pub object: Option<&'a ObjectRef>,
    pub place: Place,
    pub message: String,
    /// Who decides a violation at admission, when known.
    pub decided: Option<&'a DecidedBy>,
}

impl Entry<'_> {
    /// `level: file:line: Kind namespace/name: message`, with the place's caveat.
    fn to_text(&self) -> String {
        let object = self.object.map(|o| format!("{}: ", o.describe())).unwrap_or_default();
        let at = location(self.place.file.as_deref(), self.place.line);
        format!("{}: {at}{object}{}{}\n", self.level.as_str(), self.message, caveat(&self.place))
    }
}

impl Report {
    /// A report of nothing yet, under a policy of `mode`.
    pub fn empty(mode: &'static str) -> Self {
        Report {
            mode,
            files: None,
            checked: 0,
            skipped: BTreeMap::new(),
            violations: Vec::new(),
            notes: Vec::new(),
            errors: Vec::new(),
            unread: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Whether violations fail the run: the policy is in Enforce mode, or the gate asks.
    fn violations_fail(&self, gate: Gate) -> bool {
        self.mode == Mode::Enforce.as_str() || gate.fail_on_warn
    }

    /// Whether the violations would be denied at admission (Enforce mode), or the gate asks
    /// for more.
    pub fn fails(&self, gate: Gate) -> bool {
        let denied = !self.violations.is_empty() && self.violations_fail(gate);
        let unverified = gate.strict && (!self.notes.is_empty() || self.checked == 0);
        denied || unverified
    }

    /// Every violation, note, error and warning, in that order, each with its level under `gate`.
    pub fn entries(&self, gate: Gate) -> Vec<Entry<'_>> {
        let violation = if self.violations_fail(gate) { Level::Error } else { Level::Warning };
        let note = if gate.strict { Level::Error } else { Level::Note };
        let mut entries: Vec<Entry<'_>> = Vec::new();
        entries.extend(self.violations.iter().map(|f| Entry {
            rule: Rule::Violation,
            level: violation,
            object: Some(&f.object),
            place: f.object.place(),
            message: format!("{}: {}", f.field, f.message),
            decided: f.decided.as_ref(),
        }));
        entries.extend(self.notes.iter().map(|n| Entry {
            rule: Rule::Unverified,
            level: note,
            object: Some(&n.object),
            place: n.object.place(),
            message: n.message.clone(),
            decided: None,
        }));
        entries.extend(self.errors.iter().map(|e| Entry {
            rule: Rule::of(e.reason),
            level: Level::Error,
            object: None,
            place: e.place(),
            message: e.message.clone(),
            decided: None,
        }));
        let unread = self.unread.iter().map(|u| (Rule::Incomplete, format!("could not list {}: {}", u.kind, u.reason)));
        let warnings = self.warnings.iter().map(|w| (Rule::Invocation, w.clone()));
        entries.extend(unread.chain(warnings).map(|(rule, message)| Entry {
            rule,
            level: rule.default_level(),
            object: None,
            place: Place::default(),
            message,
            decided: None,
        }));
        entries
    }

    /// One line per violation: `error: file:line: Kind namespace/name: field: message`
    /// (`warning:` when violations do not fail the run; no location for objects read from a
    /// cluster).
    pub fn to_text(&self, gate: Gate) -> String {
        self.entries(gate).iter().filter(|e| e.rule == Rule::Violation).map(Entry::to_text).collect()
    }
}

impl Report {
    /// The closing line: `checked 3 object(s) in 2 file(s): 1 violation(s) (policy mode
    /// Enforce: denied at admission), 2 note(s); not governed, skipped: 2 ConfigMap`, and under
    /// `--strict` what fails it.
    pub fn summary(&self, gate: Gate) -> String {
        let files = self.files.map(|n| format!(" in {n} file(s)")).unwrap_or_default();
        let effect = match self.mode {
            "Enforce" => ": denied at admission",
            "Warn" => ": warned at admission",
            "Audit" => ": recorded at admission",
            _ => "",
        };
        let mut summary = format!(
            "checked {} object(s){files}: {} violation(s) (policy mode {}{effect}), {} note(s)",
            self.checked,
            self.violations.len(),
            self.mode,
            self.notes.len()
        );
        if !self.errors.is_empty() {
            let _ = write!(summary, ", {} error(s)", self.errors.len());
        }
        summary.push_str(&self.native_share());
        if !self.skipped.is_empty() {
            let skipped: Vec<String> = self.skipped.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
            let _ = write!(summary, "; not governed, skipped: {}", skipped.join(", "));
        }
        if self.checked == 0 {
            summary.push_str("; nothing was checked");
        }
        if gate.strict {
            summary.push_str(&self.strict_failures());
        }
        summary
    }

    /// `; N of M violation(s) can be decided inside the API server (tokengate webhooks --native)`,
    /// when the violations say who decides them.
    fn native_share(&self) -> String {
        let decided: Vec<&DecidedBy> = self.violations.iter().filter_map(|f| f.decided.as_ref()).collect();
        if decided.is_empty() {
            return String::new();
        }
        let native = decided.iter().filter(|d| d.decided_by == Decider::Native).count();
        format!(
            "; {native} of {} violation(s) can be decided inside the API server (tokengate webhooks --native)",
            decided.len()
        )
    }

    /// What `--strict` fails on: each object with notes (the first few), and an empty run.
    fn strict_failures(&self) -> String {
        let mut objects: Vec<String> = Vec::new();
        for note in &self.notes {
            let at = note.object.location();
            let object = match at.trim_end_matches([':', ' ']) {
                "" => note.object.describe(),
                at => format!("{at} ({})", note.object.describe()),
            };
            if !objects.contains(&object) {
                objects.push(object);
            }
        }
        let mut failures = String::new();
        if !objects.is_empty() {
            let shown = objects.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
            let more = objects.len().saturating_sub(3);
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            let _ = write!(
                failures,
                "; --strict fails on {} note(s), about {shown}{more} (give what is missing with --objects, or declare it with --assume-present)",
                self.notes.len()
            );
        }
        if self.checked == 0 {
            failures.push_str("; --strict fails when nothing was checked");
        }
        failures
    }
}

/// The output formats of `check` and `audit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// stdout: a line per violation, `error: FILE:LINE: KIND [NAMESPACE/]NAME: FIELD: MESSAGE`
    /// (`warning:` when violations do not fail the run); stderr: a line per file error
    /// (`error:`), note (`note:`, `error:` under --strict) and warning (`warning:`), then the
    /// summary.
    Text,
    /// stdout: one JSON document: `{mode, files, checked, skipped: {KIND: N}, violations: [{file,
    /// line, kind, namespace, name, field, message, decidedBy: native|webhook, rules,
    /// nativePolicy|webhookReason}], notes: [{file, line, kind, namespace,
    /// name, message}], errors: [{file, line, reason, message}], warnings}` (`rendered: {stream,
    /// line}` where a line is a Helm template's); stderr as for text.
    Json,
    /// stdout: JUnit XML: a test case per object with violations or notes (a `<failure>` per
    /// violation; notes in `<system-out>`, or a `<failure type="note">` each under --strict), one
    /// passing case for the other objects, a case with an `<error>` per file error, the summary
    /// in the suite's `<system-out>`, warnings in its `<system-err>`; stderr as for text.
    Junit,
    /// stdout: GitHub Actions workflow commands: `::error` (or `::warning` when violations do not
    /// fail the run) per violation, `::notice` per note (`::error` under --strict), `::error`
    /// per file error, `::warning` per warning, each with file and line where known, then the
    /// summary as a `::notice`; stderr as for text.
    Github,
    /// stdout: SARIF 2.1.0 for GitHub code scanning: a rule per kind of entry, a result per
    /// violation, note, file error and warning (level error, warning or note) with its file and
    /// line (a violation's properties say who decides it: decidedBy, rules, nativePolicy or
    /// webhookReason), the summary as the invocation's notification; stderr as for text.
    Sarif,
}

/// What to print on stdout and stderr.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// Renders `report` in `format`; `gate` decides each entry's level.
pub fn render(report: &Report, format: OutputFormat, gate: Gate) -> Output {
    let mut stderr = String::new();
    for entry in report.entries(gate).iter().filter(|e| e.rule != Rule::Violation) {
        stderr.push_str(&entry.to_text());
    }
    if !report.unread.is_empty() {
        let _ = writeln!(stderr, "the audit is incomplete: {} kind(s) could not be listed", report.unread.len());
    }
    let _ = writeln!(stderr, "{}", report.summary(gate));
    let stdout = match format {
        OutputFormat::Text => report.to_text(gate),
        OutputFormat::Json => {
            serde_json::to_string_pretty(report).expect("a report of strings and numbers serialises") + "\n"
        }
        OutputFormat::Junit => formats::junit(report, gate),
        OutputFormat::Github => formats::github(report, gate),
        OutputFormat::Sarif => sarif::sarif(report, gate),
    };
    Output { stdout, stderr }
}
