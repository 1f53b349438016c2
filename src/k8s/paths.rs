//! Mount paths as the container runtime resolves them.

/// A mount path as the container runtime resolves it: Go's `path.Clean` (repeated and trailing
/// `/` dropped, `.` and `..` resolved). The API server checks only that mount paths are unique
/// as written (`validateVolumeMounts` in pkg/apis/core/validation), so `/x` and `/x/` are two
/// mounts of one place, and the later one is what the container sees there.
pub fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|last| *last != "..") => {
                parts.pop();
            }
            ".." if rooted => {}
            part => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Whether `path` is `dir` or lies beneath it, both as [`clean_path`] resolves them.
pub fn is_within(path: &str, dir: &str) -> bool {
    let (path, dir) = (clean_path(path), clean_path(dir));
    path == dir || path.strip_prefix(&dir).is_some_and(|rest| rest.starts_with('/') || dir == "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_cleaned_as_go_path_clean_does() {
        for (path, clean) in [
            ("/var/run/x/", "/var/run/x"),
            ("/var//run/./x", "/var/run/x"),
            ("/var/run/../run/x", "/var/run/x"),
            ("/..", "/"),
            ("/", "/"),
            ("a/../..", ".."),
            ("", "."),
        ] {
            assert_eq!(clean_path(path), clean, "{path:?}");
        }
        assert!(is_within("/x/token", "/x/"));
        assert!(is_within("/x/", "/x"));
        assert!(!is_within("/xy", "/x"));
    }
}
