//! The PersistentVolume object a provisioned claim gets, and the well-known names on it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NFSVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaimSpec,
    PersistentVolumeSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;

use crate::parameters::OnDelete;

/// Set by every provisioner on the PVs it creates (kept from the Go provisioner).
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The delete policy decided when the volume was provisioned; later edits or deletion of the
/// StorageClass cannot change what happens to the data.
pub const ANN_ON_DELETE: &str = "nfs-provisioner.io/on-delete";
/// Keeps the PV object until its directory was handled by the recorded policy, also when a
/// user deletes the PV directly.
pub const FINALIZER: &str = "nfs-provisioner.io/volume-directory";
/// On a PV whose directory existed before it ("true"): data that predates the volume is never
/// deleted, archived or moved by the volume's delete policy.
pub const ANN_DIRECTORY_EXISTED: &str = "nfs-provisioner.io/directory-existed";
/// Label on our PVs: a hash of the first component of the directory (see
/// [`directory_tree_label`]). Every volume at, inside or above a directory shares it, so the
/// last check before a delete lists exactly those from the API server.
pub const LABEL_DIRECTORY_TREE: &str = "nfs-provisioner.io/directory-tree";
/// Set on claims by kube-controller-manager: which provisioner should act (GA and beta names).
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const ANN_STORAGE_PROVISIONER_BETA: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// Set by the scheduler on claims of WaitForFirstConsumer classes.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Legacy way of naming a claim's class.
pub const ANN_STORAGE_CLASS_BETA: &str = "volume.beta.kubernetes.io/storage-class";

/// The PV name for a claim: derived from its uid, so a retry or a restart can never create a
/// second volume for the same claim.
pub fn pv_name_for(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

/// Everything decided about one new volume, ready to become a PV object.
#[derive(Debug, Clone)]
pub struct VolumeSpec {
    pub pv_name: String,
    pub provisioner_name: String,
    pub storage_class: String,
    pub nfs_server: String,
    pub nfs_path: String,
    pub capacity: Quantity,
    pub access_modes: Vec<String>,
    pub mount_options: Vec<String>,
    pub reclaim_policy: String,
    pub on_delete: OnDelete,
    pub claim_namespace: String,
    pub claim_name: String,
    pub claim_uid: String,
    /// The directory existed before this volume (recorded as [`ANN_DIRECTORY_EXISTED`]).
    pub directory_existed: bool,
    /// Value of [`LABEL_DIRECTORY_TREE`].
    pub directory_tree: String,
}

/// The [`LABEL_DIRECTORY_TREE`] value of a directory: FNV-1a (64 bit, hex) of its first
/// component. Hand-written: eight lines, stable across releases and platforms (std's hasher
/// is neither), no dependency. A collision only adds candidates the caller then judges.
pub fn directory_tree_label(first_component: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in first_component.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

impl VolumeSpec {
    /// The PV object: `nfs {server, path}`, the claim's capacity and access modes, the class's
    /// mount options and reclaim policy, a `claimRef` the PV binder binds to, our annotations
    /// and our finalizer.
    pub fn to_persistent_volume(&self) -> PersistentVolume {
        let mut annotations = BTreeMap::from([
            (
                ANN_PROVISIONED_BY.to_string(),
                self.provisioner_name.clone(),
            ),
            (
                ANN_ON_DELETE.to_string(),
                self.on_delete.as_str().to_string(),
            ),
        ]);
        if self.directory_existed {
            annotations.insert(ANN_DIRECTORY_EXISTED.to_string(), "true".to_string());
        }
        let labels = BTreeMap::from([(
            LABEL_DIRECTORY_TREE.to_string(),
            self.directory_tree.clone(),
        )]);
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some(self.pv_name.clone()),
                annotations: Some(annotations),
                labels: Some(labels),
                finalizers: Some(vec![FINALIZER.to_string()]),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                access_modes: Some(self.access_modes.clone()),
                capacity: Some(BTreeMap::from([(
                    "storage".to_string(),
                    self.capacity.clone(),
                )])),
                claim_ref: Some(ObjectReference {
                    api_version: Some("v1".to_string()),
                    kind: Some("PersistentVolumeClaim".to_string()),
                    namespace: Some(self.claim_namespace.clone()),
                    name: Some(self.claim_name.clone()),
                    uid: Some(self.claim_uid.clone()),
                    ..Default::default()
                }),
                mount_options: (!self.mount_options.is_empty()).then(|| self.mount_options.clone()),
                nfs: Some(NFSVolumeSource {
                    server: self.nfs_server.clone(),
                    path: self.nfs_path.clone(),
                    read_only: None,
                }),
                persistent_volume_reclaim_policy: Some(self.reclaim_policy.clone()),
                storage_class_name: Some(self.storage_class.clone()),
                volume_mode: Some("Filesystem".to_string()),
                ..Default::default()
            }),
            status: None,
        }
    }
}

/// The storage request of a claim, which becomes the PV's capacity.
pub fn requested_storage(spec: &PersistentVolumeClaimSpec) -> Option<Quantity> {
    spec.resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VolumeSpec {
        VolumeSpec {
            pv_name: pv_name_for("f1642948-b212-401b-b5bf-123c03036eaa"),
            provisioner_name: "example.com/trace".into(),
            storage_class: "trace-delete".into(),
            nfs_server: "nfs.example.test".into(),
            nfs_path: "/exports/k8s/trace-data-0-pvc-f1642948-b212-401b-b5bf-123c03036eaa".into(),
            capacity: Quantity("1Gi".into()),
            access_modes: vec!["ReadWriteMany".into()],
            mount_options: vec!["nfsvers=4.1".into()],
            reclaim_policy: "Delete".into(),
            on_delete: OnDelete::Archive,
            claim_namespace: "trace".into(),
            claim_name: "data-0".into(),
            claim_uid: "f1642948-b212-401b-b5bf-123c03036eaa".into(),
            directory_existed: false,
            directory_tree: directory_tree_label("ns"),
        }
    }

    #[test]
    fn pv_matches_what_a_real_control_plane_accepted() {
        // Shape of the PV in shared/reference/traces/v1.33-pv-watch.jsonl, plus our policy
        // annotation and finalizer.
        let pv = serde_json::to_value(spec().to_persistent_volume()).unwrap();
        assert_eq!(
            pv["metadata"]["name"],
            "pvc-f1642948-b212-401b-b5bf-123c03036eaa"
        );
        assert_eq!(
            pv["metadata"]["annotations"][ANN_PROVISIONED_BY],
            "example.com/trace"
        );
        assert_eq!(pv["metadata"]["annotations"][ANN_ON_DELETE], "archive");
        assert_eq!(pv["metadata"]["finalizers"][0], FINALIZER);
        let s = &pv["spec"];
        assert_eq!(s["accessModes"], serde_json::json!(["ReadWriteMany"]));
        assert_eq!(s["capacity"]["storage"], "1Gi");
        assert_eq!(s["claimRef"]["namespace"], "trace");
        assert_eq!(s["claimRef"]["name"], "data-0");
        assert_eq!(s["claimRef"]["uid"], "f1642948-b212-401b-b5bf-123c03036eaa");
        assert_eq!(s["nfs"]["server"], "nfs.example.test");
        assert_eq!(
            s["nfs"]["path"],
            "/exports/k8s/trace-data-0-pvc-f1642948-b212-401b-b5bf-123c03036eaa"
        );
        assert_eq!(s["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(s["storageClassName"], "trace-delete");
        assert_eq!(s["volumeMode"], "Filesystem");
        assert_eq!(s["mountOptions"], serde_json::json!(["nfsvers=4.1"]));
    }

    #[test]
    fn no_mount_options_means_no_field() {
        let mut v = spec();
        v.mount_options.clear();
        let pv = serde_json::to_value(v.to_persistent_volume()).unwrap();
        assert!(pv["spec"].get("mountOptions").is_none());
    }
}
