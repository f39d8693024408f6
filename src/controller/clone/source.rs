//! Which claim a clone asks to copy, and whether it may: the checks that need only the
//! objects, no file system and no API call.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

use super::protection;
use crate::controller::selection::{Ownership, Selection};
use crate::objects::{Claim, Volume};
use crate::persistent_volume::requested_storage;
use crate::quantity::{HumanBytes, quantity_bytes};

const KIND_CLAIM: &str = "PersistentVolumeClaim";
const KIND_SNAPSHOT: &str = "VolumeSnapshot";

/// The claim a clone copies: always in the clone's own namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    pub namespace: String,
    pub name: String,
}

/// Why a clone is refused. Each is a `ProvisioningFailed` Warning on the claim, and the claim
/// is tried again with backoff (a source that is not Bound yet may become Bound).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloneRefusal {
    #[error(
        "data source VolumeSnapshot {name} is not supported: NFS directories have no snapshots; clone from a claim (dataSource kind PersistentVolumeClaim) instead"
    )]
    Snapshot { name: String },
    #[error(
        "data source {kind} {name} (apiGroup {group:?}) is not supported: only a PersistentVolumeClaim can be cloned"
    )]
    UnsupportedKind {
        group: String,
        kind: String,
        name: String,
    },
    #[error(
        "dataSourceRef names claim {name} in namespace {namespace}: a claim can only be cloned from a claim in its own namespace ({own})"
    )]
    OtherNamespace {
        namespace: String,
        name: String,
        own: String,
    },
    #[error(
        "dataSource PersistentVolumeClaim {name}: there is no such claim in namespace {namespace} (a claim can only be cloned from a claim in its own namespace)"
    )]
    SourceNotFound { namespace: String, name: String },
    #[error(
        "dataSource PersistentVolumeClaim {name} is not Bound (phase {phase}): only a bound claim can be cloned; trying again"
    )]
    SourceNotBound { name: String, phase: String },
    #[error("dataSource PersistentVolumeClaim {name} is being deleted: it cannot be cloned")]
    SourceDeleting { name: String },
    #[error(
        "dataSource PersistentVolumeClaim {name} is bound to PV {pv}, which is not a volume of this provisioner ({provisioner}): only its own volumes can be cloned"
    )]
    SourceNotOurs {
        name: String,
        pv: String,
        provisioner: String,
    },
    #[error(
        "dataSource PersistentVolumeClaim {name} is on {source_export}, but StorageClass {class} provisions on export {class_export}: a clone is copied within one export"
    )]
    OtherExport {
        name: String,
        source_export: String,
        class: String,
        class_export: String,
    },
    #[error(
        "the claim requests {requested}, less than the size of its source {name} ({source_size}): request at least the source's size"
    )]
    TooSmall {
        name: String,
        requested: String,
        source_size: String,
    },
    #[error("cannot compare sizes with source {name}: {reason}")]
    UnreadableSize { name: String, reason: String },
}

impl CloneRefusal {
    pub fn label(&self) -> &'static str {
        match self {
            CloneRefusal::Snapshot { .. } => "clone_from_snapshot",
            CloneRefusal::UnsupportedKind { .. } => "clone_unsupported_kind",
            CloneRefusal::OtherNamespace { .. } => "clone_other_namespace",
            CloneRefusal::SourceNotFound { .. } => "clone_source_not_found",
            CloneRefusal::SourceNotBound { .. } => "clone_source_not_bound",
            CloneRefusal::SourceDeleting { .. } => "clone_source_deleting",
            CloneRefusal::SourceNotOurs { .. } => "clone_source_not_ours",
            CloneRefusal::OtherExport { .. } => "clone_other_export",
            CloneRefusal::TooSmall { .. } | CloneRefusal::UnreadableSize { .. } => {
                "clone_too_small"
            }
        }
    }
}

/// The claim `claim` asks to be cloned from, if it has a data source at all.
/// `dataSourceRef` (1.24+, a superset the API server keeps in step with `dataSource`) wins
/// when both are set.
pub fn requested(claim: &Claim) -> Option<Result<SourceRef, CloneRefusal>> {
    let spec = claim.spec.as_ref()?;
    let own = claim.namespace().unwrap_or_default();
    let (group, kind, name, namespace) = match (&spec.data_source_ref, &spec.data_source) {
        (Some(r), _) => (
            r.api_group.clone().unwrap_or_default(),
            r.kind.clone(),
            r.name.clone(),
            r.namespace.clone(),
        ),
        (None, Some(s)) => (
            s.api_group.clone().unwrap_or_default(),
            s.kind.clone(),
            s.name.clone(),
            None,
        ),
        (None, None) => return None,
    };
    Some(if kind == KIND_SNAPSHOT {
        Err(CloneRefusal::Snapshot { name })
    } else if kind != KIND_CLAIM || !group.is_empty() {
        Err(CloneRefusal::UnsupportedKind { group, kind, name })
    } else {
        match namespace {
            Some(ns) if !ns.is_empty() && ns != own => Err(CloneRefusal::OtherNamespace {
                namespace: ns,
                name,
                own,
            }),
            _ => Ok(SourceRef {
                namespace: own,
                name,
            }),
        }
    })
}

/// The source claim as read from the API server: it must exist, be Bound and not be
/// deleted (unless this clone already protects it: then its deletion waits for the copy).
/// Returns the name of the PV it is bound to.
pub fn check_claim<'a>(
    source: &SourceRef,
    found: Option<&'a Claim>,
    clone_uid: &str,
) -> Result<&'a str, CloneRefusal> {
    let Some(claim) = found else {
        return Err(CloneRefusal::SourceNotFound {
            namespace: source.namespace.clone(),
            name: source.name.clone(),
        });
    };
    if claim.metadata.deletion_timestamp.is_some() && !protection::protects(claim, clone_uid) {
        return Err(CloneRefusal::SourceDeleting {
            name: source.name.clone(),
        });
    }
    let phase = claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    let volume = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|v| !v.is_empty());
    match volume {
        Some(volume) if phase == "Bound" => Ok(volume),
        _ => Err(CloneRefusal::SourceNotBound {
            name: source.name.clone(),
            phase: phase.to_string(),
        }),
    }
}

/// The source claim's PV (as cached: the cache holds every PV of this provisioner): it must be
/// ours and bound to that very claim.
pub fn check_volume(
    source: &SourceRef,
    source_claim: &Claim,
    pv_name: &str,
    pv: Option<&Volume>,
    selection: &Selection,
) -> Result<(), CloneRefusal> {
    let not_ours = || CloneRefusal::SourceNotOurs {
        name: source.name.clone(),
        pv: pv_name.to_string(),
        provisioner: selection.provisioner_name().to_string(),
    };
    let pv = pv.ok_or_else(not_ours)?;
    if selection.ownership(pv) != Ownership::Ours {
        return Err(not_ours());
    }
    let bound_to = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .and_then(|r| r.uid.as_deref());
    if bound_to.is_none() || bound_to != source_claim.metadata.uid.as_deref() {
        return Err(not_ours());
    }
    Ok(())
}

/// The clone must request at least the source's size: the larger of the source claim's
/// request and its PV's capacity (a source being expanded counts with its new size).
pub fn check_size(
    source: &SourceRef,
    clone: &Claim,
    source_claim: &Claim,
    source_pv: &Volume,
) -> Result<(), CloneRefusal> {
    let unreadable = |reason: String| CloneRefusal::UnreadableSize {
        name: source.name.clone(),
        reason,
    };
    let bytes = |q: Option<&Quantity>, what: &str| -> Result<Option<u128>, CloneRefusal> {
        q.map(|q| quantity_bytes(q).map_err(|e| unreadable(format!("{what}: {e}"))))
            .transpose()
    };
    let requested = clone.spec.as_deref().and_then(requested_storage);
    let requested = bytes(requested.as_ref(), "the claim's request")?
        .ok_or_else(|| unreadable("the claim requests no storage".into()))?;
    let source_request = source_claim.spec.as_deref().and_then(requested_storage);
    let capacity = source_pv
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"));
    let source_size = bytes(source_request.as_ref(), "the source's request")?
        .max(bytes(capacity, "the source volume's capacity")?)
        .unwrap_or(0);
    if requested < source_size {
        return Err(CloneRefusal::TooSmall {
            name: source.name.clone(),
            requested: HumanBytes(requested).to_string(),
            source_size: HumanBytes(source_size).to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(spec: serde_json::Value) -> Claim {
        serde_json::from_value(json!({
            "metadata": {"name": "clone", "namespace": "team", "uid": "u-clone"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn source_claim(phase: &str, volume: &str, request: &str) -> Claim {
        serde_json::from_value(json!({
            "metadata": {"name": "src", "namespace": "team", "uid": "u-src"},
            "spec": {"volumeName": volume, "resources": {"requests": {"storage": request}}},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn volume(provisioned_by: &str, claim_uid: &str, capacity: &str) -> Volume {
        serde_json::from_value(json!({
            "metadata": {"name": "pvc-src", "annotations": {"pv.kubernetes.io/provisioned-by": provisioned_by}},
            "spec": {"claimRef": {"uid": claim_uid}, "capacity": {"storage": capacity}},
        }))
        .unwrap()
    }

    fn src() -> SourceRef {
        SourceRef {
            namespace: "team".into(),
            name: "src".into(),
        }
    }

    #[test]
    fn a_claim_without_data_source_is_not_a_clone() {
        assert_eq!(requested(&claim(json!({}))), None);
    }

    #[test]
    fn a_claim_source_in_the_same_namespace_is_requested() {
        let c = claim(json!({"dataSource": {"kind": "PersistentVolumeClaim", "name": "src"}}));
        assert_eq!(requested(&c), Some(Ok(src())));
        let both = claim(json!({
            "dataSource": {"kind": "PersistentVolumeClaim", "name": "src"},
            "dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "src", "namespace": "team"},
        }));
        assert_eq!(requested(&both), Some(Ok(src())));
    }

    #[test]
    fn snapshots_other_kinds_and_other_namespaces_are_refused() {
        let snap = claim(
            json!({"dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"}}),
        );
        assert!(matches!(
            requested(&snap),
            Some(Err(CloneRefusal::Snapshot { .. }))
        ));
        let other = claim(
            json!({"dataSourceRef": {"apiGroup": "example.com", "kind": "Populator", "name": "p"}}),
        );
        assert!(matches!(
            requested(&other),
            Some(Err(CloneRefusal::UnsupportedKind { .. }))
        ));
        // A claim kind in an API group is not a core claim.
        let grouped = claim(
            json!({"dataSourceRef": {"apiGroup": "example.com", "kind": "PersistentVolumeClaim", "name": "p"}}),
        );
        assert!(matches!(
            requested(&grouped),
            Some(Err(CloneRefusal::UnsupportedKind { .. }))
        ));
        let elsewhere = claim(
            json!({"dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "src", "namespace": "other"}}),
        );
        let refusal = requested(&elsewhere).unwrap().unwrap_err();
        assert!(refusal.to_string().contains("namespace other"), "{refusal}");
    }

    #[test]
    fn the_source_claim_must_exist_be_bound_and_not_be_deleted() {
        assert!(matches!(
            check_claim(&src(), None, "u-clone"),
            Err(CloneRefusal::SourceNotFound { .. })
        ));
        let pending = source_claim("Pending", "", "1Gi");
        assert!(matches!(
            check_claim(&src(), Some(&pending), "u-clone"),
            Err(CloneRefusal::SourceNotBound { .. })
        ));
        let bound = source_claim("Bound", "pvc-src", "1Gi");
        assert_eq!(check_claim(&src(), Some(&bound), "u-clone"), Ok("pvc-src"));
        let mut deleting = bound.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        assert!(matches!(
            check_claim(&src(), Some(&deleting), "u-clone"),
            Err(CloneRefusal::SourceDeleting { .. })
        ));
        // Already protected for this clone (a restart mid-copy): the copy goes on, and the
        // deletion waits for it.
        protection::add_to(&mut deleting, "u-clone");
        assert_eq!(
            check_claim(&src(), Some(&deleting), "u-clone"),
            Ok("pvc-src")
        );
        assert!(check_claim(&src(), Some(&deleting), "u-other").is_err());
    }

    #[test]
    fn the_source_volume_must_be_ours_and_bound_to_the_source() {
        let sel = Selection::new("us", &["nfs.example"]);
        let claim = source_claim("Bound", "pvc-src", "1Gi");
        let ours = volume("us", "u-src", "1Gi");
        assert_eq!(
            check_volume(&src(), &claim, "pvc-src", Some(&ours), &sel),
            Ok(())
        );
        for pv in [
            None,
            Some(volume("someone-else", "u-src", "1Gi")),
            Some(volume("us", "u-another-claim", "1Gi")),
        ] {
            let refusal = check_volume(&src(), &claim, "pvc-src", pv.as_ref(), &sel).unwrap_err();
            assert!(matches!(refusal, CloneRefusal::SourceNotOurs { .. }));
        }
    }

    #[test]
    fn a_clone_smaller_than_its_source_is_refused() {
        let claim_of = |size: &str| {
            claim(json!({
                "dataSource": {"kind": "PersistentVolumeClaim", "name": "src"},
                "resources": {"requests": {"storage": size}},
            }))
        };
        let source = source_claim("Bound", "pvc-src", "1Gi");
        let pv = volume("us", "u-src", "2Gi");
        // The PV was expanded to 2Gi: that is the source's size.
        assert_eq!(check_size(&src(), &claim_of("2Gi"), &source, &pv), Ok(()));
        assert_eq!(check_size(&src(), &claim_of("3G"), &source, &pv), Ok(()));
        let refusal = check_size(&src(), &claim_of("1Gi"), &source, &pv).unwrap_err();
        assert!(
            matches!(refusal, CloneRefusal::TooSmall { .. }),
            "{refusal}"
        );
        assert!(refusal.to_string().contains("2.0 GiB"), "{refusal}");
    }
}
