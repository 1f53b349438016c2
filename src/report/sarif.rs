//! The SARIF 2.1.0 form of a report, for GitHub code scanning and other SARIF viewers.

use serde_json::{json, Value};

use super::{caveat, is_unnamed_stdin, Entry, Gate, Report, Rule};

/// The SARIF log of `report`: one run, a rule per kind of entry, a result per entry.
pub(super) fn sarif(report: &Report, gate: Gate) -> String {
    let rules: Vec<Value> = Rule::ALL
        .iter()
        .map(|rule| {
            json!({
                "id": rule.id(),
                "shortDescription": {"text": rule.description()},
                "defaultConfiguration": {"level": rule.default_level().as_str()},
            })
        })
        .collect();
    let results: Vec<Value> = report.entries(gate).iter().map(result).collect();
    let log = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "tokengate",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "invocations": [{
                "executionSuccessful": report.errors.is_empty() && report.unread.is_empty(),
                "toolExecutionNotifications": [{"level": "note", "message": {"text": report.summary(gate)}}],
            }],
            "results": results,
            "properties": {"mode": report.mode, "files": report.files, "checked": report.checked, "skipped": report.skipped},
        }],
    });
    serde_json::to_string_pretty(&log).expect("a JSON value serialises") + "\n"
}

/// One result: its rule, level, message, and where it is (no location for standard input
/// without a name, nor for objects read from a cluster).
fn result(entry: &Entry<'_>) -> Value {
    let index = Rule::ALL.iter().position(|r| *r == entry.rule).expect("every rule is listed");
    let mut message = format!("{}{}", entry.message, caveat(&entry.place));
    if let Some(object) = entry.object {
        message = format!("{}: {message}", object.describe());
    }
    let mut result = json!({
        "ruleId": entry.rule.id(),
        "ruleIndex": index,
        "level": entry.level.as_str(),
        "message": {"text": message},
    });
    let file = entry.place.file.as_ref().filter(|_| !is_unnamed_stdin(&entry.place));
    if let Some(file) = file {
        let mut physical = json!({"artifactLocation": {"uri": uri(&file.display().to_string())}});
        if let Some(line) = entry.place.line {
            physical["region"] = json!({"startLine": line});
        }
        result["locations"] = json!([{"physicalLocation": physical}]);
    }
    if let Some(decided) = entry.decided {
        result["properties"] = serde_json::to_value(decided).expect("who decides serialises");
    }
    if let Some(object) = entry.object {
        let logical = json!([{"fullyQualifiedName": object.describe(), "kind": "object"}]);
        match result.get_mut("locations").and_then(|l| l.get_mut(0)) {
            Some(location) => location["logicalLocations"] = logical,
            None => result["locations"] = json!([{"logicalLocations": logical}]),
        }
    }
    result
}

/// A path as a URI reference: relative paths stay relative (to the repository root, where CI
/// runs), absolute ones become `file://` URIs; what a URI cannot hold is percent-encoded.
fn uri(path: &str) -> String {
    let path = path.replace('\\', "/");
    let encoded: String = path
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let encoded = encoded.strip_prefix("./").map_or(encoded.clone(), str::to_string);
    if path.starts_with('/') {
        format!("file://{encoded}")
    } else {
        encoded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_uri_references() {
        assert_eq!(uri("chart/templates/pod.yaml"), "chart/templates/pod.yaml");
        assert_eq!(uri("./a b.yaml"), "a%20b.yaml");
        assert_eq!(uri("/tmp/x.yaml"), "file:///tmp/x.yaml");
    }
}
