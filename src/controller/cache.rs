//! The shapes claims and volumes take in the controller's caches.
//!
//! `k8s_openapi`'s `PersistentVolume` is about 3.5 KB inline (its spec lists every volume
//! source) and `PersistentVolumeClaim` about 1 KB, whatever they contain. In a cluster with
//! thousands of volumes of other drivers that inline size dominates the cache, so the caches
//! hold these types instead: the same fields, with spec and status boxed, and no claim status
//! (the controller never reads it). Objects that can never be ours are reduced further before
//! they are cached ([`lean_claim`], [`lean_volume`]).

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeSpec,
    PersistentVolumeStatus,
};
use kube::Resource;
use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};

macro_rules! delegate_resource {
    ($cached:ty, $full:ty) => {
        impl Resource for $cached {
            type DynamicType = ();
            type Scope = <$full as Resource>::Scope;
            fn kind(dt: &()) -> Cow<'_, str> {
                <$full as Resource>::kind(dt)
            }
            fn group(dt: &()) -> Cow<'_, str> {
                <$full as Resource>::group(dt)
            }
            fn version(dt: &()) -> Cow<'_, str> {
                <$full as Resource>::version(dt)
            }
            fn api_version(dt: &()) -> Cow<'_, str> {
                <$full as Resource>::api_version(dt)
            }
            fn plural(dt: &()) -> Cow<'_, str> {
                <$full as Resource>::plural(dt)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// A PersistentVolumeClaim as cached (and as read from the API): metadata and spec.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Claim {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Box<PersistentVolumeClaimSpec>>,
}
delegate_resource!(Claim, PersistentVolumeClaim);

/// A PersistentVolume as cached (and as read from the API): spec and status boxed.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Volume {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Box<PersistentVolumeSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<PersistentVolumeStatus>>,
}
delegate_resource!(Volume, PersistentVolume);

/// Identity only: what a cache entry of an object the controller never acts on needs.
fn identity(meta: &mut ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        deletion_timestamp: meta.deletion_timestamp.take(),
        ..Default::default()
    }
}

/// A bound or deleting claim never needs a volume again (a bound claim's `volumeName` cannot
/// be unset): keep its identity and `volumeName`. Every later change of the claim arrives as
/// a new object and is judged again.
pub fn lean_claim(claim: &mut Claim) {
    let bound = claim
        .spec
        .as_ref()
        .is_some_and(|s| !s.volume_name.as_deref().unwrap_or("").is_empty());
    if !bound && claim.metadata.deletion_timestamp.is_none() {
        return;
    }
    claim.metadata = identity(&mut claim.metadata);
    let volume_name = claim.spec.as_mut().and_then(|s| s.volume_name.take());
    claim.spec = Some(Box::new(PersistentVolumeClaimSpec {
        volume_name,
        ..Default::default()
    }));
}

/// A volume that is not ours (another provisioner, and without our finalizer): keep its
/// identity and, for NFS volumes, `spec.nfs` (a directory another PV points at is never
/// deleted or archived).
pub fn lean_volume(pv: &mut Volume, ours: bool) {
    if ours {
        return;
    }
    pv.metadata = identity(&mut pv.metadata);
    pv.status = None;
    pv.spec = pv.spec.take().and_then(|s| s.nfs).map(|nfs| {
        Box::new(PersistentVolumeSpec {
            nfs: Some(nfs),
            ..Default::default()
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cached_shapes_are_small() {
        assert!(std::mem::size_of::<Volume>() < 512);
        assert!(std::mem::size_of::<Claim>() < 512);
    }

    #[test]
    fn bound_claims_keep_identity_and_volume_name() {
        let mut c: Claim = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "n", "uid": "u", "resourceVersion": "7",
                         "labels": {"x": "y"}, "annotations": {"k": "v"}},
            "spec": {"volumeName": "pv-1", "storageClassName": "gp3", "accessModes": ["ReadWriteOnce"]},
            "status": {"phase": "Bound"}
        }))
        .unwrap();
        lean_claim(&mut c);
        assert_eq!(c.metadata.name.as_deref(), Some("a"));
        assert_eq!(c.metadata.namespace.as_deref(), Some("n"));
        assert_eq!(c.metadata.uid.as_deref(), Some("u"));
        assert!(c.metadata.labels.is_none() && c.metadata.annotations.is_none());
        let spec = c.spec.unwrap();
        assert_eq!(spec.volume_name.as_deref(), Some("pv-1"));
        assert!(spec.storage_class_name.is_none());
    }

    #[test]
    fn pending_claims_are_kept_whole() {
        let v = json!({
            "metadata": {"name": "a", "namespace": "n", "labels": {"x": "y"}},
            "spec": {"storageClassName": "nfs", "accessModes": ["ReadWriteMany"]}
        });
        let mut c: Claim = serde_json::from_value(v.clone()).unwrap();
        let before = c.clone();
        lean_claim(&mut c);
        assert_eq!(c, before);
    }

    #[test]
    fn foreign_volumes_keep_identity_and_nfs_source() {
        let mut nfs: Volume = serde_json::from_value(json!({
            "metadata": {"name": "pv-a", "annotations": {"pv.kubernetes.io/provisioned-by": "other"}},
            "spec": {"nfs": {"server": "s", "path": "/p"}, "storageClassName": "c",
                     "claimRef": {"namespace": "n", "name": "a"}},
            "status": {"phase": "Bound"}
        }))
        .unwrap();
        lean_volume(&mut nfs, false);
        assert_eq!(nfs.metadata.name.as_deref(), Some("pv-a"));
        assert!(nfs.metadata.annotations.is_none() && nfs.status.is_none());
        let spec = nfs.spec.as_ref().unwrap();
        assert_eq!(spec.nfs.as_ref().unwrap().path, "/p");
        assert!(spec.claim_ref.is_none());

        let mut csi: Volume = serde_json::from_value(json!({
            "metadata": {"name": "pv-b"},
            "spec": {"csi": {"driver": "d", "volumeHandle": "h"}},
            "status": {"phase": "Bound"}
        }))
        .unwrap();
        lean_volume(&mut csi, false);
        assert!(csi.spec.is_none() && csi.status.is_none());

        let mut mine = nfs.clone();
        mine.status = Some(Box::default());
        let before = mine.clone();
        lean_volume(&mut mine, true);
        assert_eq!(mine, before);
    }
}
