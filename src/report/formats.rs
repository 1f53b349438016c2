//! The CI formats of a report: JUnit XML and GitHub Actions workflow commands.

use std::fmt::Write as _;

use super::{caveat, is_unnamed_stdin, Entry, Gate, Level, Report, Rule};

/// JUnit XML, as CI systems import it: a test case per object with violations or notes (a
/// `<failure>` per violation, and per note under `--strict`; other notes in `<system-out>`), the
/// other checked objects as one passing case, an `<error>` case per file error; the summary in
/// the suite's `<system-out>` and warnings in its `<system-err>`.
pub(super) fn junit(report: &Report, gate: Gate) -> String {
    let entries = report.entries(gate);
    let mut by_object: Vec<(String, Vec<&Entry<'_>>)> = Vec::new();
    for entry in entries.iter().filter(|e| e.object.is_some()) {
        let object = entry.object.expect("filtered on objects");
        let key = format!("{}{}", object.location(), object.describe());
        match by_object.iter_mut().find(|(k, _)| *k == key) {
            Some((_, found)) => found.push(entry),
            None => by_object.push((key, vec![entry])),
        }
    }
    let mut cases = String::new();
    let mut failures = 0;
    for (_, found) in &by_object {
        failures += usize::from(found.iter().any(|e| e.level == Level::Error || e.rule == Rule::Violation));
        cases.push_str(&junit_case(found, report.mode));
    }
    let passed = report.checked.saturating_sub(by_object.len());
    if passed > 0 {
        let _ = writeln!(cases, r#"    <testcase classname="tokengate" name="{passed} object(s) without findings"/>"#);
    }
    let errors: Vec<&Entry<'_>> = entries.iter().filter(|e| e.object.is_none() && e.level == Level::Error).collect();
    for error in &errors {
        let file = error.place.file.as_ref().map_or("tokengate".to_string(), |f| f.display().to_string());
        let _ = writeln!(
            cases,
            "    <testcase classname=\"{}\" name=\"{}\">\n      <error message=\"{}\" type=\"{}\">{}</error>\n    </testcase>",
            xml(&file),
            error.rule.id(),
            xml(&error.message),
            error.rule.id(),
            xml(&error.to_text())
        );
    }
    let warnings: String = entries.iter().filter(|e| e.rule == Rule::Invocation).map(|e| xml(&e.to_text())).collect();
    let tests = by_object.len() + usize::from(passed > 0) + errors.len();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n  <testsuite name=\"tokengate check\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{}\">\n{cases}    <system-out>{}</system-out>\n    <system-err>{warnings}</system-err>\n  </testsuite>\n</testsuites>\n",
        errors.len(),
        xml(&report.summary(gate)),
    )
}

/// One object's test case: its violations (and notes failing `--strict`) as failures, other
/// notes as output.
fn junit_case(entries: &[&Entry<'_>], mode: &str) -> String {
    let object = entries[0].object.expect("grouped by object");
    let classname = object.file.as_ref().map_or("cluster".to_string(), |f| f.display().to_string());
    let mut case = format!("    <testcase classname=\"{}\" name=\"{}\">\n", xml(&classname), xml(&object.describe()));
    let mut output = String::new();
    for entry in entries {
        let kind = if entry.rule == Rule::Violation { mode } else { "note" };
        if entry.rule == Rule::Violation || entry.level == Level::Error {
            let title = entry.message.split(": ").next().unwrap_or_default();
            let _ = writeln!(
                case,
                r#"      <failure message="{}" type="{kind}">{}</failure>"#,
                xml(title),
                xml(entry.to_text().trim_end())
            );
        } else {
            output.push_str(&xml(&entry.to_text()));
        }
    }
    if !output.is_empty() {
        let _ = writeln!(case, "      <system-out>{output}</system-out>");
    }
    case.push_str("    </testcase>\n");
    case
}

/// GitHub Actions workflow commands (`::error file=...,line=...::message`), one per entry, then
/// the summary as a `::notice`.
pub(super) fn github(report: &Report, gate: Gate) -> String {
    let mut out = String::new();
    for entry in report.entries(gate) {
        let level = match entry.level {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Note => "notice",
        };
        let title = match (entry.object, entry.rule) {
            (Some(object), _) => format!("tokengate: {}", object.describe()),
            (None, Rule::Unreadable) => "tokengate: unreadable file".to_string(),
            (None, Rule::InvalidPolicy) => "tokengate: invalid policy".to_string(),
            (None, Rule::InvalidObject) => "tokengate: invalid object".to_string(),
            (None, _) => "tokengate".to_string(),
        };
        out.push_str(&command(level, &entry, &title));
    }
    let _ = writeln!(out, "::notice title=tokengate summary::{}", data(&report.summary(gate)));
    out
}

/// One workflow command. Standard input without a name can be annotated nowhere: its line goes
/// into the message instead.
fn command(level: &str, entry: &Entry<'_>, title: &str) -> String {
    let mut properties = Vec::new();
    let mut message = format!("{}{}", entry.message, caveat(&entry.place));
    if is_unnamed_stdin(&entry.place) {
        if let Some(line) = entry.place.line {
            let _ = write!(message, " (standard input, line {line}; name it with --stdin-filename)");
        }
    } else {
        if let Some(file) = &entry.place.file {
            properties.push(format!("file={}", property(&file.display().to_string())));
        }
        if let Some(line) = entry.place.line {
            properties.push(format!("line={line}"));
        }
    }
    properties.push(format!("title={}", property(title)));
    format!("::{level} {}::{}\n", properties.join(","), data(&message))
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
