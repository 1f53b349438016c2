//! How the API server reads an `apiVersion`.

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

/// An RE2 expression matching exactly the `apiVersion`s whose [`api_group`] is not the core
/// group: one `/`, with something before it. CEL's `matches()` reads it as Rust's `regex` does
/// (tests/native.rs holds the two readings together on generated values).
pub const NAMED_GROUP_API_VERSION_RE2: &str = "^[^/]+/[^/]*$";

#[cfg(test)]
mod tests {
    use super::*;

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
