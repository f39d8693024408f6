//! How a released volume's delete policy is decided: what happens to its directory.
//!
//! In order, first match wins:
//! 1. The PV's `persistentVolumeReclaimPolicy` is not `Delete` (a `Retain` PV deleted by
//!    hand): the directory is kept.
//! 2. The policy recorded on the PV at provisioning ([`ANN_ON_DELETE`]) decides; editing or
//!    deleting the class later changes nothing.
//! 3. A PV without it (made by the Go provisioner, adopted) takes the policy its class has
//!    now, and is archived when the class is gone: never delete data when in doubt.
//! 4. `retain` keeps the directory; so does a directory that existed before the volume
//!    ([`ANN_DIRECTORY_EXISTED`]), whatever the policy: that data is not the volume's alone.
//!
//! Whether another volume's directory overlaps is decided later, under the directory's lock
//! (see [`super::overlap`]).

use std::fmt;

use kube::ResourceExt;

use super::VolumeError;
use crate::objects::{Class, Volume};
use crate::parameters::OnDelete;
use crate::persistent_volume::{ANN_DIRECTORY_EXISTED, ANN_ON_DELETE};

/// Where the delete policy came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// Recorded on the PV at provisioning.
    Recorded,
    /// The class of an adopted PV, as it is now.
    Class(String),
    /// The class of an adopted PV is gone: archive.
    ClassGone(String),
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySource::Recorded => f.write_str("recorded on the PV"),
            PolicySource::Class(c) => write!(f, "of StorageClass {c}"),
            PolicySource::ClassGone(c) => write!(f, "archive, as StorageClass {c} is gone"),
        }
    }
}

/// What the delete policy asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Leave the directory in place.
    Keep(Kept),
    /// Delete or archive the directory (never [`OnDelete::Retain`]).
    Apply {
        policy: OnDelete,
        source: PolicySource,
    },
}

/// Why a policy keeps the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// The PV's reclaim policy (`Retain`, `Recycle`) is not `Delete`.
    ReclaimPolicy(String),
    /// The delete policy is `retain`.
    RetainPolicy(PolicySource),
    /// The directory existed before the volume; `policy` was not applied.
    Predates(OnDelete),
}

/// The PV's `persistentVolumeReclaimPolicy` (`Retain` when absent, as the API defaults
/// statically provisioned PVs).
pub fn reclaim_policy(pv: &Volume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain")
}

/// The class name a PV records.
pub fn class_name(pv: &Volume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

/// Decides what happens to a released (or deleted) PV's directory. `class` is the PV's
/// StorageClass as cached now (`None`: gone).
pub fn decide(pv: &Volume, class: Option<&Class>) -> Result<Decision, VolumeError> {
    let reclaim = reclaim_policy(pv);
    if reclaim != "Delete" {
        return Ok(Decision::Keep(Kept::ReclaimPolicy(reclaim.to_string())));
    }
    let (policy, source) = if let Some(recorded) = pv.annotations().get(ANN_ON_DELETE) {
        let policy = OnDelete::parse(recorded)
            .map_err(|_| VolumeError::InvalidRecordedPolicy(recorded.clone()))?;
        (policy, PolicySource::Recorded)
    } else {
        let name = class_name(pv).to_string();
        match class {
            None => (OnDelete::Archive, PolicySource::ClassGone(name)),
            Some(class) => {
                let parameters = super::parameters_of(class)?;
                (parameters.on_delete, PolicySource::Class(name))
            }
        }
    };
    if policy == OnDelete::Retain {
        return Ok(Decision::Keep(Kept::RetainPolicy(source)));
    }
    if pv
        .annotations()
        .get(ANN_DIRECTORY_EXISTED)
        .map(String::as_str)
        == Some("true")
    {
        return Ok(Decision::Keep(Kept::Predates(policy)));
    }
    Ok(Decision::Apply { policy, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(reclaim: &str, annotations: serde_json::Value) -> Volume {
        serde_json::from_value(json!({
            "metadata": {"name": "pvc-1", "annotations": annotations},
            "spec": {"persistentVolumeReclaimPolicy": reclaim, "storageClassName": "nfs"}
        }))
        .unwrap()
    }

    fn class(parameters: serde_json::Value) -> Class {
        serde_json::from_value(json!({
            "metadata": {"name": "nfs"}, "provisioner": "me", "parameters": parameters
        }))
        .unwrap()
    }

    #[test]
    fn a_reclaim_policy_other_than_delete_keeps_the_directory() {
        let d = decide(&pv("Retain", json!({ANN_ON_DELETE: "delete"})), None).unwrap();
        assert_eq!(d, Decision::Keep(Kept::ReclaimPolicy("Retain".into())));
    }

    #[test]
    fn the_recorded_policy_wins_over_the_class() {
        let archive_class = class(json!({"onDelete": "archive"}));
        let d = decide(
            &pv("Delete", json!({ANN_ON_DELETE: "delete"})),
            Some(&archive_class),
        )
        .unwrap();
        assert_eq!(
            d,
            Decision::Apply {
                policy: OnDelete::Delete,
                source: PolicySource::Recorded
            }
        );
        let retain = decide(
            &pv("Delete", json!({ANN_ON_DELETE: "retain"})),
            Some(&class(json!({"onDelete": "delete"}))),
        )
        .unwrap();
        assert_eq!(
            retain,
            Decision::Keep(Kept::RetainPolicy(PolicySource::Recorded))
        );
    }

    #[test]
    fn an_adopted_volume_takes_its_class_policy_and_is_archived_when_the_class_is_gone() {
        let adopted = pv("Delete", json!({}));
        let d = decide(&adopted, Some(&class(json!({"archiveOnDelete": "false"})))).unwrap();
        assert_eq!(
            d,
            Decision::Apply {
                policy: OnDelete::Delete,
                source: PolicySource::Class("nfs".into())
            }
        );
        let gone = decide(&adopted, None).unwrap();
        assert_eq!(
            gone,
            Decision::Apply {
                policy: OnDelete::Archive,
                source: PolicySource::ClassGone("nfs".into())
            }
        );
    }

    #[test]
    fn a_class_with_invalid_parameters_decides_nothing() {
        let err = decide(
            &pv("Delete", json!({})),
            Some(&class(json!({"onDelete": "shred"}))),
        )
        .unwrap_err();
        assert_eq!(err.label(), "invalid_parameters");
        let recorded = decide(&pv("Delete", json!({ANN_ON_DELETE: "shred"})), None).unwrap_err();
        assert_eq!(recorded.label(), "invalid_recorded_policy");
    }

    #[test]
    fn a_directory_that_predates_its_volume_is_kept_whatever_the_policy() {
        let d = decide(
            &pv(
                "Delete",
                json!({ANN_ON_DELETE: "delete", ANN_DIRECTORY_EXISTED: "true"}),
            ),
            None,
        )
        .unwrap();
        assert_eq!(d, Decision::Keep(Kept::Predates(OnDelete::Delete)));
    }
}
