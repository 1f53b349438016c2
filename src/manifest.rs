//! Reading Kubernetes objects from files and directories: multi-document YAML, JSON, Lists.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// One Kubernetes object, and the file it was read from (none when it came from a cluster).
#[derive(Debug, Clone)]
pub struct Document {
    pub file: Option<PathBuf>,
    /// The line of the file where the object starts (1-based).
    pub line: Option<usize>,
    pub object: Value,
}

impl Document {
    /// An object read from a cluster.
    pub fn from_cluster(object: Value) -> Self {
        Document { file: None, line: None, object }
    }
}

/// The path that stands for standard input.
pub const STDIN: &str = "-";

/// What [`load_inputs`] read: the objects of every readable file, and why the others could not
/// be read.
#[derive(Debug, Default)]
pub struct Loaded {
    pub documents: Vec<Document>,
    pub errors: Vec<ManifestError>,
}

/// A file or directory that could not be read as Kubernetes objects.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ManifestError {
    pub path: PathBuf,
    /// The line of the file where the problem is (1-based), when known.
    pub line: Option<usize>,
    pub message: String,
}

/// Reads every object under `paths` as [`load_inputs`] does (`-` is standard input), failing on
/// the first file that cannot be read.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Document>, ManifestError> {
    let loaded = load_inputs(paths, &globset::GlobSet::empty());
    match loaded.errors.into_iter().next() {
        Some(error) => Err(error),
        None => Ok(loaded.documents),
    }
}

/// Reads every object under `paths` (`-` is standard input; files as given; directories
/// recursively, files ending in `.yaml`, `.yml` or `.json`, in name order, hidden entries
/// skipped), skipping files whose path matches an `exclude` glob; a file that cannot be read is
/// recorded and the others are still read.
pub fn load_inputs(paths: &[PathBuf], exclude: &globset::GlobSet) -> Loaded {
    let mut loaded = Loaded::default();
    for path in paths {
        let files = if path.as_os_str() == STDIN { Ok(vec![path.clone()]) } else { files_under(path) };
        let files = match files {
            Ok(files) => files,
            Err(err) => {
                loaded.errors.push(err);
                continue;
            }
        };
        for file in files.into_iter().filter(|f| !exclude.is_match(f)) {
            match load_file(&file) {
                Ok(documents) => loaded.documents.extend(documents),
                Err(err) => loaded.errors.push(err),
            }
        }
    }
    loaded
}

/// Reads the objects of one file (`-`: standard input); `kind: *List` documents are expanded
/// into their items.
pub fn load_file(path: &Path) -> Result<Vec<Document>, ManifestError> {
    let error = |message: String| ManifestError { path: path.to_path_buf(), line: None, message };
    let text = if path.as_os_str() == STDIN {
        std::io::read_to_string(std::io::stdin()).map_err(|e| error(format!("reading standard input: {e}")))?
    } else {
        std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?
    };
    let lines = crate::positions::positions(&text);
    let mut documents = Vec::new();
    for (index, yaml) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let at = |path: &str| lines.get(index).and_then(|p| p.get(path)).map(|p| p.line);
        let value = Value::deserialize(yaml).map_err(|e| ManifestError {
            line: e.location().map(|l| l.line()),
            ..error(format!("document {}: {e}", index + 1))
        })?;
        match value {
            Value::Null => {}
            Value::Object(_) => expand(value, path, &at, "", &mut documents),
            _ => {
                let message = format!("document {} is not a Kubernetes object", index + 1);
                return Err(ManifestError { line: at(""), ..error(message) });
            }
        }
    }
    Ok(documents)
}

fn expand(value: Value, file: &Path, line: &dyn Fn(&str) -> Option<usize>, at: &str, documents: &mut Vec<Document>) {
    let is_list = value.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List"));
    match value {
        Value::Object(mut map) if is_list && map.get("items").is_some_and(Value::is_array) => {
            if let Some(Value::Array(items)) = map.remove("items") {
                for (i, item) in items.into_iter().enumerate() {
                    let prefix = if at.is_empty() { String::new() } else { format!("{at}.") };
                    expand(item, file, line, &format!("{prefix}items[{i}]"), documents);
                }
            }
        }
        object @ Value::Object(_) => {
            documents.push(Document { file: Some(file.to_path_buf()), line: line(at), object });
        }
        _ => {}
    }
}

fn files_under(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let error = |message: String| ManifestError { path: path.to_path_buf(), line: None, message };
    let metadata = std::fs::metadata(path).map_err(|e| error(e.to_string()))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| error(e.to_string()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
        .collect();
    entries.sort();
    let mut files = Vec::new();
    for entry in entries {
        if entry.is_dir() {
            files.extend(files_under(&entry)?);
        } else if entry.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "yaml" | "yml" | "json")) {
            files.push(entry);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_multi_document_yaml_and_lists() {
        let dir = std::env::temp_dir().join(format!("tokengate-manifest-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).expect("temp dir");
        std::fs::write(
            dir.join("a.yaml"),
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: p}}\n- {apiVersion: v1, kind: Pod, metadata: {name: q}}\n",
        )
        .expect("write");
        std::fs::write(
            dir.join("sub/b.json"),
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}"#,
        )
        .expect("write");
        std::fs::write(dir.join("notes.txt"), "not a manifest").expect("write");
        let docs = load_paths(std::slice::from_ref(&dir)).expect("loads");
        let names: Vec<&str> = docs.iter().filter_map(|d| d.object.pointer("/metadata/name")?.as_str()).collect();
        assert_eq!(names, ["a", "p", "q", "c"]);
        let lines: Vec<Option<usize>> = docs.iter().map(|d| d.line).collect();
        assert_eq!(lines, [Some(1), Some(9), Some(10), Some(1)], "where each object starts");
        std::fs::write(dir.join("bad.yaml"), "kind: [unclosed").expect("write");
        let err = load_paths(std::slice::from_ref(&dir)).expect_err("bad YAML");
        assert!(err.to_string().contains("bad.yaml"), "{err}");
        let loaded = load_inputs(std::slice::from_ref(&dir), &globset::GlobSet::empty());
        assert_eq!(loaded.documents.len(), 4, "the other files are still read");
        assert_eq!(loaded.errors.len(), 1);
        let mut exclude = globset::GlobSetBuilder::new();
        exclude.add(globset::Glob::new("**/bad.yaml").expect("glob"));
        let loaded = load_inputs(std::slice::from_ref(&dir), &exclude.build().expect("globs"));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn missing_path_is_an_error() {
        assert!(load_paths(&[PathBuf::from("/nonexistent/tokengate")]).is_err());
    }
}
