//! `tokengate init --from-files`: the manifests under the paths given, with the files that do not
//! parse set aside (to be named as warnings), and paths that are empty, missing or hold no manifest
//! refused.

use std::path::{Path, PathBuf};

use globset::GlobSet;

use crate::manifest::{self, Document, ManifestError, STDIN};

/// What the paths hold.
#[derive(Debug, Default)]
pub struct FilesRead {
    pub documents: Vec<Document>,
    /// Files that could not be read as Kubernetes objects; the others were read.
    pub skipped: Vec<ManifestError>,
}

/// Why the paths give nothing to draft from.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// An empty string where a path was expected.
    #[error("--from-files \"\": an empty path")]
    EmptyPath,
    /// A path that does not exist or cannot be read.
    #[error("--from-files {}: {error}", path.display())]
    Unreadable { path: PathBuf, error: std::io::Error },
    /// A path under which no file holds a Kubernetes object (`skipped`: those that did not parse).
    #[error("--from-files {}: no Kubernetes manifest found ({hint})", path.display())]
    NoManifest { path: PathBuf, hint: &'static str, skipped: Vec<ManifestError> },
}

/// Reads every manifest under `paths` (`-` is standard input) as `check` does, leaving out files
/// that match `exclude`. Each path must hold at least one Kubernetes object.
pub fn read(paths: &[PathBuf], exclude: &GlobSet) -> Result<FilesRead, FilesError> {
    let mut read = FilesRead::default();
    for path in paths {
        check_path(path)?;
        let loaded = manifest::load_inputs(std::slice::from_ref(path), manifest::Reading { exclude, stdin_name: None });
        if loaded.documents.is_empty() {
            let hint = match (path.as_os_str() == STDIN, exclude.is_empty()) {
                (true, _) => "standard input holds no object",
                (false, true) => "directories are read for files ending in .yaml, .yml or .json",
                (false, false) => {
                    "directories are read for files ending in .yaml, .yml or .json not matched by --exclude"
                }
            };
            return Err(FilesError::NoManifest { path: path.clone(), hint, skipped: loaded.errors });
        }
        read.documents.extend(loaded.documents);
        read.skipped.extend(loaded.errors);
    }
    Ok(read)
}

/// Refuses an empty path and one that does not exist.
fn check_path(path: &Path) -> Result<(), FilesError> {
    if path.as_os_str().is_empty() {
        return Err(FilesError::EmptyPath);
    }
    if path.as_os_str() == STDIN {
        return Ok(());
    }
    match std::fs::metadata(path) {
        Ok(_) => Ok(()),
        Err(error) => Err(FilesError::Unreadable { path: path.to_path_buf(), error }),
    }
}

/// `file:line: message` (or `file: message` when the line is not known).
pub fn warning(error: &ManifestError) -> String {
    match error.line {
        Some(line) => format!("{}:{line}: {}", error.path.display(), error.message),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_does_not_parse_is_set_aside_and_the_others_are_read() {
        let dir = std::env::temp_dir().join(format!("tokengate-init-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("empty")).expect("temp dir");
        std::fs::write(dir.join("sa.yaml"), "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n")
            .expect("write");
        std::fs::write(dir.join("chart.yaml"), "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n")
            .expect("write");
        let read = read(std::slice::from_ref(&dir), &GlobSet::empty()).expect("reads");
        assert_eq!(read.documents.len(), 1);
        let warnings: Vec<String> = read.skipped.iter().map(warning).collect();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with(&format!("{}:", dir.join("chart.yaml").display())), "{warnings:?}");
        assert!(read.skipped[0].line.is_some(), "{warnings:?}");

        let error = super::read(&[dir.join("empty")], &GlobSet::empty()).expect_err("no manifest");
        assert!(matches!(error, FilesError::NoManifest { .. }), "{error}");
        let error = super::read(&[dir.join("missing")], &GlobSet::empty()).expect_err("missing");
        assert!(error.to_string().contains("missing"), "{error}");
        let error = super::read(&[PathBuf::new()], &GlobSet::empty()).expect_err("empty path");
        assert!(matches!(error, FilesError::EmptyPath));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
