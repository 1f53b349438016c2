//! What the API server does to a token request before any webhook sees it or after: the
//! automount volume's shape, the API server audiences, the 3607 s extension, and the in-tree
//! volume types that CSI migration serves through a CSI driver.

use super::pod_view::Volume;
use crate::policy::{Lifetime, Policy};

/// Name prefix of the volume the ServiceAccount admission plugin adds (`kube-api-access-<5>`).
pub const AUTOMOUNT_VOLUME_PREFIX: &str = "kube-api-access-";
/// The lifetime the automount volume asks for. Upstream: `WarnOnlyBoundTokenExpirationSeconds`
/// in `pkg/serviceaccount/claims.go`, used by `TokenREST.Create` in
/// `pkg/registry/core/serviceaccount/storage/token.go` to extend the token.
pub const AUTOMOUNT_EXPIRATION_SECONDS: u64 = 3607;
/// The file the automount volume's token is written to.
pub const AUTOMOUNT_TOKEN_PATH: &str = "token";

/// In-tree volume types that CSI migration serves through a CSI driver, and that driver.
/// Upstream: `k8s.io/csi-translation-lib` (`plugins/*.go`), as NodeRestriction reads them in
/// `plugin/pkg/admission/noderestriction/admission.go`.
pub const IN_TREE_VOLUME_DRIVERS: [(&str, &str); 7] = [
    ("awsElasticBlockStore", "ebs.csi.aws.com"),
    ("gcePersistentDisk", "pd.csi.storage.gke.io"),
    ("azureDisk", "disk.csi.azure.com"),
    ("azureFile", "file.csi.azure.com"),
    ("cinder", "cinder.csi.openstack.org"),
    ("vsphereVolume", "csi.vsphere.vmware.com"),
    ("portworxVolume", "pxd.portworx.com"),
];

/// The ServiceAccount admission plugin's volume: `kube-api-access-*` with exactly one token
/// source (no audience, path `token`, 3607 s); its other sources vary by distribution.
/// Upstream: `TokenVolumeSource` in `plugin/pkg/admission/serviceaccount/admission.go`.
pub fn is_automount_volume(volume: &Volume) -> bool {
    let tokens = volume.token_sources().map(|(_, t)| (t.audience.as_deref(), t.path.as_str(), t.expiration_seconds));
    has_automount_shape(&volume.name, tokens)
}

/// [`is_automount_volume`] on a volume's name and its token sources' `(audience, path,
/// expirationSeconds)`, for any representation of a volume.
pub fn has_automount_shape<'a>(
    name: &str,
    mut tokens: impl Iterator<Item = (Option<&'a str>, &'a str, Option<i64>)>,
) -> bool {
    if !name.starts_with(AUTOMOUNT_VOLUME_PREFIX) {
        return false;
    }
    match (tokens.next(), tokens.next()) {
        (Some((audience, path, seconds)), None) => {
            audience.unwrap_or_default().is_empty()
                && path == AUTOMOUNT_TOKEN_PATH
                && seconds == Some(AUTOMOUNT_EXPIRATION_SECONDS as i64)
        }
        _ => false,
    }
}

/// The lifetime the API server issues for a token request of `requested` seconds. Upstream,
/// `TokenREST.Create` (pkg/registry/core/serviceaccount/storage/token.go) runs validating
/// admission first and only then, when `--service-account-extend-token-expiration` is on (the
/// default), turns a request bound to a pod, of exactly 3607 s, whose audiences are all API
/// server audiences (`isKubeAudiences`) into a token of
/// `--service-account-max-extended-token-expiration` (one year by default): the policy's
/// `expiration.extendedSeconds`, 3607 when the extension is off.
pub fn lifetime(policy: &Policy, requested: u64, bound_to_pod: bool, api_server_audiences_only: bool) -> Lifetime {
    let extended = bound_to_pod && api_server_audiences_only && requested == AUTOMOUNT_EXPIRATION_SECONDS;
    Lifetime { requested, effective: if extended { policy.extended_seconds() } else { requested } }
}

/// Which of [`IN_TREE_VOLUME_DRIVERS`]' types a volume source sets, in that order, for any
/// struct with those fields as `Option`s (a pod's volume, a PV's spec, their reduced views).
macro_rules! in_tree_types_set {
    ($source:expr) => {
        [
            $source.aws_elastic_block_store.is_some(),
            $source.gce_persistent_disk.is_some(),
            $source.azure_disk.is_some(),
            $source.azure_file.is_some(),
            $source.cinder.is_some(),
            $source.vsphere_volume.is_some(),
            $source.portworx_volume.is_some(),
        ]
    };
}
pub(crate) use in_tree_types_set;

/// The in-tree volume type that is set and the CSI driver that serves it, given which of
/// [`IN_TREE_VOLUME_DRIVERS`]' types are set, in that order.
pub fn in_tree_driver(set: [bool; IN_TREE_VOLUME_DRIVERS.len()]) -> Option<(&'static str, &'static str)> {
    IN_TREE_VOLUME_DRIVERS.iter().zip(set).find_map(|(&pair, set)| set.then_some(pair))
}
