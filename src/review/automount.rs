//! What the API server does to a token request before any webhook sees it or after: the
//! automount volume's shape, the API server audiences, the 3607 s extension, and the in-tree
//! volume types that CSI migration serves through a CSI driver.

use super::pod_view::Volume;

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
    if !volume.name.starts_with(AUTOMOUNT_VOLUME_PREFIX) {
        return false;
    }
    let mut tokens = volume.token_sources().map(|(_, token)| token);
    match (tokens.next(), tokens.next()) {
        (Some(token), None) => {
            token.audience.as_deref().unwrap_or_default().is_empty()
                && token.path == AUTOMOUNT_TOKEN_PATH
                && token.expiration_seconds == Some(AUTOMOUNT_EXPIRATION_SECONDS as i64)
        }
        _ => false,
    }
}
