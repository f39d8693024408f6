//! The shapes claims, volumes and classes take as this provisioner reads them (and caches
//! them).
//!
//! `k8s_openapi`'s `PersistentVolume` is about 3.5 KB inline (its spec lists every volume
//! source) and `PersistentVolumeClaim` about 1 KB, whatever they contain. The caches hold
//! these types instead: a claim with only the status fields expansion reads, a volume with
//! only the spec and status fields the controller reads, and a class whose parameters are
//! parsed once, as it is decoded. Which objects are cached at all is decided in
//! `crate::controller::selection`; foreign NFS volumes that are kept are reduced further
//! ([`lean_volume`]).

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{
    NFSVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimCondition, PersistentVolumeClaimSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::Resource;
use kube::api::ObjectMeta;

use crate::parameters::{ClassParameters, ParameterError};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
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

/// A PersistentVolumeClaim as cached (and as read from the API): metadata, spec and the part
/// of the status that expansion reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Claim {
    #[serde(default, deserialize_with = "lean_metadata")]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Box<PersistentVolumeClaimSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<ClaimStatus>>,
}
delegate_resource!(Claim, PersistentVolumeClaim);

/// The part of a claim's status the controller reads: whether it is Bound, what it holds,
/// and the resize bookkeeping an external resizer rewrites (see `super::expansion`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<BTreeMap<String, Quantity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<PersistentVolumeClaimCondition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_resources: Option<BTreeMap<String, Quantity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_resource_statuses: Option<BTreeMap<String, String>>,
}

/// A PersistentVolume as cached (and as read from the API): metadata and the few fields of
/// spec and status the controller reads. Only ever read, never written back: writes are
/// JSON patches and deletes, so the fields left out cannot be lost.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Volume {
    #[serde(default, deserialize_with = "lean_metadata")]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Box<VolumeSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VolumeStatus>,
}
delegate_resource!(Volume, PersistentVolume);

/// The part of a PV's spec the controller reads (`k8s_openapi`'s is about 3.4 KB inline).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_ref: Option<ObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfs: Option<NFSVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_reclaim_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<BTreeMap<String, Quantity>>,
}

/// The part of a PV's status the controller reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct VolumeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// A StorageClass as cached: what provisioning and reclaim read, with its `parameters`
/// parsed once, when it is decoded (a class with invalid parameters is still cached: its
/// claims get the error as an event).
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "ClassObject")]
pub struct Class {
    pub metadata: ObjectMeta,
    pub provisioner: String,
    pub reclaim_policy: Option<String>,
    pub mount_options: Option<Vec<String>>,
    pub volume_binding_mode: Option<String>,
    pub allow_volume_expansion: Option<bool>,
    pub parameters: Result<ClassParameters, ParameterError>,
}
delegate_resource!(Class, StorageClass);

/// A StorageClass as the API server sends it (the fields [`Class`] keeps).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClassObject {
    #[serde(default, deserialize_with = "lean_metadata")]
    metadata: ObjectMeta,
    #[serde(default)]
    provisioner: String,
    reclaim_policy: Option<String>,
    mount_options: Option<Vec<String>>,
    volume_binding_mode: Option<String>,
    allow_volume_expansion: Option<bool>,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
}

impl From<ClassObject> for Class {
    fn from(raw: ClassObject) -> Self {
        Class {
            metadata: raw.metadata,
            provisioner: raw.provisioner,
            reclaim_policy: raw.reclaim_policy,
            mount_options: raw.mount_options,
            volume_binding_mode: raw.volume_binding_mode,
            allow_volume_expansion: raw.allow_volume_expansion,
            parameters: ClassParameters::parse(&raw.parameters),
        }
    }
}

impl Class {
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }
}

/// The annotation `kubectl apply` leaves: a copy of the whole object as last applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Decodes `metadata` without what the controller never reads: `managedFields` (often the
/// largest part of an object) and the last-applied annotation are skipped while parsing, not
/// built and then dropped. Every object of the cluster passes through here when the watches
/// list, most of them to be discarded, so this is what bounds the memory of a list page.
fn lean_metadata<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        annotations: Option<Annotations>,
        creation_timestamp: Option<Time>,
        deletion_grace_period_seconds: Option<i64>,
        deletion_timestamp: Option<Time>,
        finalizers: Option<Vec<String>>,
        generate_name: Option<String>,
        generation: Option<i64>,
        labels: Option<BTreeMap<String, String>>,
        name: Option<String>,
        namespace: Option<String>,
        owner_references: Option<Vec<OwnerReference>>,
        resource_version: Option<String>,
        uid: Option<String>,
    }
    let m = Meta::deserialize(d)?;
    Ok(ObjectMeta {
        annotations: m.annotations.map(|a| a.0),
        creation_timestamp: m.creation_timestamp,
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        deletion_timestamp: m.deletion_timestamp,
        finalizers: m.finalizers,
        generate_name: m.generate_name,
        generation: m.generation,
        labels: m.labels,
        name: m.name,
        namespace: m.namespace,
        owner_references: m.owner_references,
        resource_version: m.resource_version,
        uid: m.uid,
        ..Default::default()
    })
}

/// Annotations without [`LAST_APPLIED`], whose value is skipped unread.
struct Annotations(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Annotations {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Annotations;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Annotations, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == LAST_APPLIED {
                        map.next_value::<IgnoredAny>()?;
                    } else {
                        out.insert(key, map.next_value::<String>()?);
                    }
                }
                Ok(Annotations(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

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
        Box::new(VolumeSpec {
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
    fn decoding_skips_managed_fields_and_the_last_applied_copy() {
        let v = json!({
            "metadata": {"name": "a", "namespace": "n", "uid": "u", "resourceVersion": "7",
                         "generation": 2, "creationTimestamp": "2024-05-01T10:00:00Z",
                         "deletionTimestamp": "2024-05-02T10:00:00Z",
                         "deletionGracePeriodSeconds": 0, "generateName": "a-",
                         "labels": {"app": "db"}, "finalizers": ["f"],
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "pu"}],
                         "annotations": {"keep": "me", LAST_APPLIED: "{\"big\": true}"},
                         "managedFields": [{"manager": "kubectl", "fieldsType": "FieldsV1",
                                            "fieldsV1": {"f:spec": {}}}]},
            "spec": {"volumeName": "pv"}
        });
        let full: ObjectMeta = serde_json::from_value(v["metadata"].clone()).unwrap();
        let claim: Claim = serde_json::from_value(v.clone()).unwrap();
        let volume: Volume = serde_json::from_value(v).unwrap();
        let mut expected = full;
        expected.managed_fields = None;
        expected.annotations.as_mut().unwrap().remove(LAST_APPLIED);
        assert_eq!(claim.metadata, expected, "every other field is kept");
        assert_eq!(volume.metadata, expected);
        assert_eq!(claim.metadata.annotations.unwrap().len(), 1);

        let bare: Claim = serde_json::from_value(json!({"metadata": {"name": "b"}})).unwrap();
        assert_eq!(bare.metadata.name.as_deref(), Some("b"));
        assert!(bare.metadata.annotations.is_none());
        let null: Claim =
            serde_json::from_value(json!({"metadata": {"name": "c", "annotations": null}}))
                .unwrap();
        assert!(null.metadata.annotations.is_none());
    }

    #[test]
    fn cached_shapes_are_small() {
        assert!(std::mem::size_of::<Volume>() < 512);
        assert!(std::mem::size_of::<Claim>() < 512);
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
        mine.status = Some(VolumeStatus::default());
        let before = mine.clone();
        lean_volume(&mut mine, true);
        assert_eq!(mine, before);
    }
}
