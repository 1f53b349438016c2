//! Kubernetes facts on the ground floor: how the API server reads what tokengate reads, each
//! with the upstream function it follows. Imports nothing from the crate.

/// Where the ServiceAccount admission plugin mounts the automount volume
/// (`DefaultAPITokenMountPath` in plugin/pkg/admission/serviceaccount/admission.go).
pub const AUTOMOUNT_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The API group of an `apiVersion`, as `schema.FromAPIVersionAndKind` reads it
/// (k8s.io/apimachinery/pkg/runtime/schema, via `ParseGroupVersion`): `""` and `"/"` are the
/// core group; a value without `/` is a core version; `group/version` names a group; a value
/// with more than one `/` does not parse, and `FromAPIVersionAndKind` then keeps only the kind,
/// so its group is the core group too. `TokenREST.Create`
/// (pkg/registry/core/serviceaccount/storage/token.go) binds a token to a pod whenever this
/// group is `""` and the kind is `Pod`, so `v1`, `/v1`, `/` and `a/b/c` all name a pod.
pub fn api_group(api_version: &str) -> &str {
    match api_version.split_once('/') {
        Some((group, version)) if !version.contains('/') => group,
        _ => "",
    }
}

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

    #[test]
    fn api_groups_are_read_as_parse_group_version_reads_them() {
        let cases = [
            ("", ""),
            ("/", ""),
            ("v1", ""),
            ("v2", ""),
            ("/v1", ""),
            ("a/b/c", ""),
            ("//", ""),
            ("apps/v1", "apps"),
            ("authentication.k8s.io/v1", "authentication.k8s.io"),
            ("x/", "x"),
        ];
        for (api_version, group) in cases {
            assert_eq!(api_group(api_version), group, "{api_version:?}");
        }
    }
}
