//! Reading Kubernetes objects from files and directories: multi-document YAML, JSON, Lists.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::positions::{locate, Positions};

/// One Kubernetes object, and the file it was read from (none when it came from a cluster).
#[derive(Debug, Clone)]
pub struct Document {
    /// The file, or the Helm template named by the `# Source:` comment above the object.
    pub file: Option<PathBuf>,
    /// The line where the object starts (1-based): in its file, or, for a Helm template, in the
    /// document rendered from it (approximate: see [`Rendered`]).
    pub line: Option<usize>,
    /// Where each field of the object is in the text read (paths relative to the object:
    /// `spec.volumes[0]`; the object itself is `""`).
    pub fields: Positions,
    /// For an object Helm rendered: its template, and the line of the `# Source:` comment in the
    /// stream read.
    helm: Option<HelmSource>,
    pub object: Value,
}

/// An object of a stream `helm template` wrote, under its `# Source: chart/templates/x.yaml`.
#[derive(Debug, Clone)]
struct HelmSource {
    template: PathBuf,
    stream: PathBuf,
    comment_line: usize,
}

/// Where a line reported against a Helm template really is: the line of the stream read. The
/// template's own line is not known (template directives add and remove lines), so a template's
/// line is counted from the start of the document rendered from it, and is approximate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rendered {
    /// The stream read (`-` for standard input, or `--stdin-filename`).
    pub stream: PathBuf,
    pub line: usize,
}

/// A place to report: a file and line, and, for a Helm template, where the line was rendered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Place {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub rendered: Option<Rendered>,
}

impl Document {
    /// An object read from a cluster.
    pub fn from_cluster(object: Value) -> Self {
        Document { file: None, line: None, fields: Positions::new(), helm: None, object }
    }

    /// Where `field` (a path in the object, `""` for the object) is, or its nearest ancestor.
    pub fn place(&self, field: &str) -> Place {
        let line = locate(&self.fields, field).map(|at| at.line);
        match (&self.helm, line) {
            (Some(helm), Some(line)) => Place {
                file: Some(helm.template.clone()),
                line: Some(line.saturating_sub(helm.comment_line).max(1)),
                rendered: Some(Rendered { stream: helm.stream.clone(), line }),
            },
            (Some(helm), None) => Place { file: Some(helm.template.clone()), ..Place::default() },
            (None, line) => Place { file: self.file.clone(), line, rendered: None },
        }
    }
}

/// The path that stands for standard input.
pub const STDIN: &str = "-";

/// How [`load_inputs`] reads.
#[derive(Debug, Clone, Copy)]
pub struct Reading<'a> {
    /// Files whose path matches one of these are skipped.
    pub exclude: &'a globset::GlobSet,
    /// The name standard input is reported under (`-` when `None`).
    pub stdin_name: Option<&'a Path>,
}

/// What [`load_inputs`] read: the objects of every readable file, and why the others could not
/// be read.
#[derive(Debug, Default)]
pub struct Loaded {
    pub documents: Vec<Document>,
    pub errors: Vec<ManifestError>,
    /// How many files (standard input included) were read.
    pub files: usize,
    /// How many files each `exclude` glob skipped, in the glob set's order.
    pub excluded: Vec<usize>,
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
    let loaded = load_inputs(paths, Reading { exclude: &globset::GlobSet::empty(), stdin_name: None });
    match loaded.errors.into_iter().next() {
        Some(error) => Err(error),
        None => Ok(loaded.documents),
    }
}

/// Reads every object under `paths` (`-` is standard input; files as given; directories
/// recursively, files ending in `.yaml`, `.yml` or `.json`, in name order, hidden entries
/// skipped), skipping files whose path matches an `exclude` glob; a file that cannot be read is
/// recorded and the others are still read.
pub fn load_inputs(paths: &[PathBuf], reading: Reading<'_>) -> Loaded {
    let mut loaded = Loaded { excluded: vec![0; reading.exclude.len()], ..Loaded::default() };
    for path in paths {
        let files = if path.as_os_str() == STDIN { Ok(vec![path.clone()]) } else { files_under(path) };
        let files = match files {
            Ok(files) => files,
            Err(err) => {
                loaded.errors.push(err);
                continue;
            }
        };
        for file in files {
            let matched = reading.exclude.matches(&file);
            for &glob in &matched {
                loaded.excluded[glob] += 1;
            }
            if !matched.is_empty() {
                continue;
            }
            loaded.files += 1;
            let read = if file.as_os_str() == STDIN {
                read_stdin(reading.stdin_name.unwrap_or(Path::new(STDIN)))
            } else {
                load_file(&file)
            };
            match read {
                Ok(documents) => loaded.documents.extend(documents),
                Err(err) => loaded.errors.push(err),
            }
        }
    }
    loaded
}

/// Reads the objects of standard input, reported under `name`.
fn read_stdin(name: &Path) -> Result<Vec<Document>, ManifestError> {
    let text = std::io::read_to_string(std::io::stdin()).map_err(|e| ManifestError {
        path: name.to_path_buf(),
        line: None,
        message: format!("reading standard input: {e}"),
    })?;
    parse(&text, name)
}

/// Reads the objects of one file (`-`: standard input); `kind: *List` documents are expanded
/// into their items.
pub fn load_file(path: &Path) -> Result<Vec<Document>, ManifestError> {
    if path.as_os_str() == STDIN {
        return read_stdin(path);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
        path: path.to_path_buf(),
        line: None,
        message: e.to_string(),
    })?;
    parse(&text, path)
}

/// The objects of `text`, read from `path`; a document under a Helm `# Source:` comment is
/// reported against that template.
fn parse(text: &str, path: &Path) -> Result<Vec<Document>, ManifestError> {
    let error = |message: String| ManifestError { path: path.to_path_buf(), line: None, message };
    let mut positions = crate::positions::positions(text).into_iter();
    let sources = helm_sources(text);
    let mut documents = Vec::new();
    let mut previous_start = 0;
    for (index, yaml) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(yaml).map_err(|e| ManifestError {
            line: e.location().map(|l| l.line()),
            ..error(format!("document {}: {e}", index + 1))
        })?;
        let fields = positions.next().unwrap_or_default();
        let start = fields.get("").map_or(previous_start, |at| at.line);
        let helm =
            sources.iter().rev().find(|(line, _)| *line < start && *line >= previous_start).map(|(line, template)| {
                HelmSource { template: template.clone(), stream: path.to_path_buf(), comment_line: *line }
            });
        previous_start = start;
        match value {
            Value::Null => {}
            Value::Object(_) => {
                let file = helm.as_ref().map_or(path, |h| &h.template).to_path_buf();
                let document = Document { file: Some(file), line: None, fields, helm, object: value };
                expand(document, &mut documents);
            }
            _ => {
                let message = format!("document {} is not a Kubernetes object", index + 1);
                return Err(ManifestError { line: Some(start), ..error(message) });
            }
        }
    }
    Ok(documents)
}

/// The `# Source: chart/templates/x.yaml` comments `helm template` writes above each document,
/// with their lines.
fn helm_sources(text: &str) -> Vec<(usize, PathBuf)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| Some((i + 1, PathBuf::from(line.strip_prefix("# Source: ")?.trim()))))
        .collect()
}

/// Adds `document`, or the items of a `kind: *List`, each with its own fields and line.
fn expand(mut document: Document, documents: &mut Vec<Document>) {
    let is_list = document.object.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List"));
    let items = match &mut document.object {
        Value::Object(map) if is_list && map.get("items").is_some_and(Value::is_array) => map.remove("items"),
        _ => None,
    };
    let Some(Value::Array(items)) = items else {
        document.line = document.place("").line;
        documents.push(document);
        return;
    };
    for (i, object) in items.into_iter().enumerate() {
        if object.is_object() {
            let prefix = format!("items[{i}]");
            let fields = rebase(&document.fields, &prefix);
            let (file, helm) = (document.file.clone(), document.helm.clone());
            expand(Document { file, line: None, fields, helm, object }, documents);
        }
    }
}

/// The positions under `prefix`, with paths relative to it.
fn rebase(fields: &Positions, prefix: &str) -> Positions {
    fields
        .iter()
        .filter_map(|(path, at)| {
            let rest = path.strip_prefix(prefix)?;
            let rest = match rest.strip_prefix('.') {
                Some(rest) => rest,
                None if rest.is_empty() || rest.starts_with('[') => rest,
                None => return None,
            };
            Some((rest.to_string(), *at))
        })
        .collect()
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
        let loaded =
            load_inputs(std::slice::from_ref(&dir), Reading { exclude: &globset::GlobSet::empty(), stdin_name: None });
        assert_eq!(loaded.documents.len(), 4, "the other files are still read");
        assert_eq!(loaded.errors.len(), 1);
        let mut exclude = globset::GlobSetBuilder::new();
        exclude.add(globset::Glob::new("**/bad.yaml").expect("glob"));
        let loaded = load_inputs(
            std::slice::from_ref(&dir),
            Reading { exclude: &exclude.build().expect("globs"), stdin_name: None },
        );
        assert_eq!(loaded.excluded, [1]);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn helm_output_is_reported_against_each_template_at_an_approximate_line() {
        let stream = "---\n# Source: chart/templates/sa.yaml\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n---\n# Source: chart/templates/pod.yaml\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  volumes: []\n---\napiVersion: v1\nkind: ConfigMap\n";
        let documents = parse(stream, Path::new("-")).expect("parses");
        let places: Vec<Place> = documents.iter().map(|d| d.place("")).collect();
        assert_eq!(places[0].file.as_deref(), Some(Path::new("chart/templates/sa.yaml")));
        assert_eq!(places[0].line, Some(1));
        assert_eq!(places[0].rendered, Some(Rendered { stream: PathBuf::from("-"), line: 3 }));
        let volumes = documents[1].place("spec.volumes");
        assert_eq!((volumes.file.as_deref(), volumes.line), (Some(Path::new("chart/templates/pod.yaml")), Some(5)));
        assert_eq!(volumes.rendered.map(|r| r.line), Some(13));
        assert_eq!(documents[1].line, Some(1));
        assert_eq!(places[2], Place { file: Some(PathBuf::from("-")), line: Some(15), rendered: None }, "no comment");
    }

    #[test]
    fn missing_path_is_an_error() {
        assert!(load_paths(&[PathBuf::from("/nonexistent/tokengate")]).is_err());
    }
}
