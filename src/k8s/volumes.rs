//! Volume types CSI migration serves through a CSI driver.

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

/// Which of [`IN_TREE_VOLUME_DRIVERS`]' types a volume source sets, in that order, for any
/// struct with those fields as `Option`s (a pod's volume, a PV's spec, their reduced views).
#[macro_export]
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
pub use in_tree_types_set;

/// The in-tree volume type that is set and the CSI driver that serves it, given which of
/// [`IN_TREE_VOLUME_DRIVERS`]' types are set, in that order.
pub fn in_tree_driver(set: [bool; IN_TREE_VOLUME_DRIVERS.len()]) -> Option<(&'static str, &'static str)> {
    IN_TREE_VOLUME_DRIVERS.iter().zip(set).find_map(|(&pair, set)| set.then_some(pair))
}
