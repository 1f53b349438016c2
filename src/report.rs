//! The report of `check` and `audit` (what was found, where), and its printing for people and
//! for CI tools: text, JSON, JUnit XML, and GitHub workflow annotations.

use std::fmt::Write as _;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::policy::Mode;

/// Which object a finding is about, and where it was read.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
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
        match (&self.file, self.line) {
            (Some(file), Some(line)) => format!("{}:{line}: ", file.display()),
            (Some(file), None) => format!("{}: ", file.display()),
            _ => String::new(),
        }
    }
}

/// One violation of one object.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    #[serde(flatten)]
    pub object: ObjectRef,
    pub field: String,
    pub message: String,
}

/// Something a check could not verify, e.g. a lookup that found nothing among the objects.
#[derive(Debug, Clone, Serialize)]
pub struct Note {
    #[serde(flatten)]
    pub object: ObjectRef,
    pub message: String,
}

/// A file that could not be read; the others were still checked.
#[derive(Debug, Clone, Serialize)]
pub struct FileError {
    pub file: PathBuf,
    /// The line the problem is on, when known (a policy's problems).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub reason: FileErrorReason,
    pub message: String,
}

/// Why a file stopped the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FileErrorReason {
    /// A manifest that could not be read as Kubernetes objects.
    Unreadable,
    /// The policy has problems (nothing was checked).
    InvalidPolicy,
}

impl FileErrorReason {
    fn title(self) -> &'static str {
        match self {
            FileErrorReason::Unreadable => "tokengate: unreadable file",
            FileErrorReason::InvalidPolicy => "tokengate: invalid policy",
        }
    }
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

impl Report {
    /// A report of nothing yet, under a policy of `mode`.
    pub fn empty(mode: &'static str) -> Self {
        Report {
            mode,
            checked: 0,
            skipped: BTreeMap::new(),
            violations: Vec::new(),
            notes: Vec::new(),
            errors: Vec::new(),
            unread: Vec::new(),
        }
    }

    /// Whether the violations would be denied at admission (Enforce mode), or the gate asks
    /// for more.
    pub fn fails(&self, gate: Gate) -> bool {
        let denied = !self.violations.is_empty() && (self.mode == Mode::Enforce.as_str() || gate.fail_on_warn);
        let unverified = gate.strict && (!self.notes.is_empty() || self.checked == 0);
        denied || unverified
    }

    /// One line per violation: `file:line: Kind namespace/name: field: message` (no location
    /// for objects read from a cluster).
    pub fn to_text(&self) -> String {
        self.violations
            .iter()
            .map(|f| format!("{}{}: {}: {}\n", f.object.location(), f.object.describe(), f.field, f.message))
            .collect()
    }

    /// What was checked and skipped, for the closing line: `checked 3 object(s): 1
    /// violation(s), policy mode Enforce; skipped 2 ConfigMap, 1 Rollout`.
    pub fn summary(&self) -> String {
        let mut summary = format!(
            "checked {} object(s): {} violation(s), policy mode {}",
            self.checked,
            self.violations.len(),
            self.mode
        );
        if !self.skipped.is_empty() {
            let skipped: Vec<String> = self.skipped.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
            summary.push_str(&format!("; not governed, skipped: {}", skipped.join(", ")));
        }
        if self.checked == 0 {
            summary.push_str("; nothing was checked");
        }
        summary
    }
}

/// The output formats of `check` and `audit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One line per violation on stdout; notes, file errors and a summary on stderr.
    Text,
    /// One JSON document with violations, notes, skipped kinds and file errors.
    Json,
    /// JUnit XML: one test case per checked object, a failure per violation.
    Junit,
    /// GitHub Actions workflow commands: an annotation per violation, with file and line.
    Github,
}

/// What to print on stdout and stderr.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    pub stdout: String,
    pub stderr: String,
}

/// Renders `report` in `format`; `gate` decides whether violations are errors or warnings where
/// a format distinguishes them.
pub fn render(report: &Report, format: OutputFormat, gate: Gate) -> Rendered {
    let mut stderr = String::new();
    for error in &report.errors {
        let line = error.line.map(|line| format!("{line}:")).unwrap_or_default();
        let _ = writeln!(stderr, "error: {}:{line} {}", error.file.display(), error.message);
    }
    for unread in &report.unread {
        let _ = writeln!(stderr, "error: could not list {}: {}", unread.kind, unread.reason);
    }
    if !report.unread.is_empty() {
        let _ = writeln!(stderr, "the audit is incomplete: {} kind(s) could not be listed", report.unread.len());
    }
    for note in &report.notes {
        let _ = writeln!(stderr, "note: {}{}: {}", note.object.location(), note.object.describe(), note.message);
    }
    let _ = writeln!(stderr, "{}", report.summary());
    let stdout = match format {
        OutputFormat::Text => report.to_text(),
        OutputFormat::Json => {
            serde_json::to_string_pretty(report).expect("a report of strings and numbers serialises") + "\n"
        }
        OutputFormat::Junit => junit(report),
        OutputFormat::Github => github(report, gate),
    };
    Rendered { stdout, stderr }
}

/// JUnit XML, as CI systems import it: a test case per checked object that has a finding (the
/// others pass as one case per file), a `<failure>` per violation, an `<error>` per unreadable
/// file.
fn junit(report: &Report) -> String {
    let mut cases = String::new();
    let mut by_object: Vec<(String, Vec<&Finding>)> = Vec::new();
    for finding in &report.violations {
        let key = format!("{}{}", finding.object.location(), finding.object.describe());
        match by_object.iter_mut().find(|(k, _)| *k == key) {
            Some((_, findings)) => findings.push(finding),
            None => by_object.push((key, vec![finding])),
        }
    }
    for (_, findings) in &by_object {
        let object = &findings[0].object;
        let classname = object.file.as_ref().map_or("cluster".to_string(), |f| f.display().to_string());
        let _ = writeln!(cases, r#"    <testcase classname="{}" name="{}">"#, xml(&classname), xml(&object.describe()));
        for finding in findings {
            let _ = writeln!(
                cases,
                r#"      <failure message="{}" type="{}">{}{}: {}</failure>"#,
                xml(&finding.field),
                report.mode,
                xml(&object.location()),
                xml(&finding.field),
                xml(&finding.message)
            );
        }
        cases.push_str("    </testcase>\n");
    }
    let passed = report.checked.saturating_sub(by_object.len());
    if passed > 0 {
        let _ =
            writeln!(cases, r#"    <testcase classname="tokengate" name="{passed} object(s) without violations"/>"#);
    }
    for error in &report.errors {
        let _ = writeln!(
            cases,
            "    <testcase classname=\"{}\" name=\"read\">\n      <error message=\"{}\">{}</error>\n    </testcase>",
            xml(&error.file.display().to_string()),
            xml(&error.message),
            xml(&error.message)
        );
    }
    let tests = by_object.len() + usize::from(passed > 0) + report.errors.len();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n  <testsuite name=\"tokengate check\" tests=\"{tests}\" failures=\"{}\" errors=\"{}\">\n{cases}  </testsuite>\n</testsuites>\n",
        by_object.len(),
        report.errors.len()
    )
}

/// GitHub Actions workflow commands (`::error file=...,line=...::message`).
fn github(report: &Report, gate: Gate) -> String {
    let level = if report.mode == "Enforce" || gate.fail_on_warn { "error" } else { "warning" };
    let mut out = String::new();
    for finding in &report.violations {
        let title = format!("tokengate: {}", finding.object.describe());
        let message = format!("{}: {}", finding.field, finding.message);
        out.push_str(&command(level, finding.object.file.as_deref(), finding.object.line, &title, &message));
    }
    for note in &report.notes {
        let title = format!("tokengate: {}", note.object.describe());
        let level = if gate.strict { "error" } else { "notice" };
        out.push_str(&command(level, note.object.file.as_deref(), note.object.line, &title, &note.message));
    }
    for error in &report.errors {
        out.push_str(&command("error", Some(&error.file), error.line, error.reason.title(), &error.message));
    }
    out
}

fn command(level: &str, file: Option<&std::path::Path>, line: Option<usize>, title: &str, message: &str) -> String {
    let mut properties = Vec::new();
    if let Some(file) = file {
        properties.push(format!("file={}", property(&file.display().to_string())));
    }
    if let Some(line) = line {
        properties.push(format!("line={line}"));
    }
    properties.push(format!("title={}", property(title)));
    format!("::{level} {}::{}\n", properties.join(","), data(message))
}

/// Escapes a workflow command's message.
fn data(text: &str) -> String {
    text.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escapes a workflow command's property value.
fn property(text: &str) -> String {
    data(text).replace(':', "%3A").replace(',', "%2C")
}

/// Escapes text for XML attributes and content.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_each_format_needs() {
        assert_eq!(data("50% done\nnext"), "50%25 done%0Anext");
        assert_eq!(property("a: b, c"), "a%3A b%2C c");
        assert_eq!(xml(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&apos;");
    }
}
