//! Which claims, classes and PVs are this provisioner's: the one definition used by the
//! caches, the queue and the reconcilers alike.
//!
//! * A **class** is ours when its `provisioner` is our name.
//! * A **claim** is ours to provision when it may still need a volume (unbound, not being
//!   deleted), its class is ours, kube-controller-manager handed it to us (GA or beta
//!   storage-provisioner annotation), and, for a `WaitForFirstConsumer` class, a node was
//!   selected.
//! * A **PV** is ours when it carries our `provisioned-by` annotation. A PV that carries our
//!   finalizer but no `provisioned-by` annotation at all (someone removed it) is ours only to
//!   release: its directory is never touched, but deleting it completes instead of hanging in
//!   Terminating. A PV whose annotation names another provisioner is that provisioner's, even
//!   with our finalizer (another instance of this project under another name).

use kube::ResourceExt;

use crate::objects::{Claim, Class, Volume};
use crate::persistent_volume::{
    ANN_PROVISIONED_BY, ANN_SELECTED_NODE, ANN_STORAGE_CLASS_BETA, ANN_STORAGE_PROVISIONER,
    ANN_STORAGE_PROVISIONER_BETA, FINALIZER,
};

/// How a PV relates to this provisioner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Provisioned (or adopted) by us: the delete policy applies.
    Ours,
    /// Our finalizer without a `provisioned-by` annotation: released, data untouched.
    FinalizerOnly,
    /// Another driver's or provisioner's.
    Foreign,
}

/// The one definition of "ours" for one provisioner name and the NFS servers of its exports.
#[derive(Debug, Clone)]
pub struct Selection {
    provisioner_name: String,
    nfs_servers: Vec<String>,
}

impl Selection {
    pub fn new(provisioner_name: &str, nfs_servers: &[&str]) -> Self {
        Selection {
            provisioner_name: provisioner_name.to_string(),
            nfs_servers: nfs_servers.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn provisioner_name(&self) -> &str {
        &self.provisioner_name
    }

    pub fn class_is_ours(&self, class: &Class) -> bool {
        class.provisioner == self.provisioner_name
    }

    /// Whether this provisioner should provision `claim` now; `class` is the claim's class
    /// as cached (see [`class_name_of`]).
    pub fn claim_is_ours(&self, claim: &Claim, class: Option<&Class>) -> bool {
        let Some(class) = class else { return false };
        if !claim_may_need_a_volume(claim) || !self.class_is_ours(class) {
            return false;
        }
        let annotations = claim.annotations();
        let handed_to_us = [ANN_STORAGE_PROVISIONER, ANN_STORAGE_PROVISIONER_BETA]
            .iter()
            .any(|a| annotations.get(*a) == Some(&self.provisioner_name));
        let waits_for_consumer =
            class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer");
        handed_to_us && (!waits_for_consumer || annotations.contains_key(ANN_SELECTED_NODE))
    }

    pub fn ownership(&self, pv: &Volume) -> Ownership {
        match pv.annotations().get(ANN_PROVISIONED_BY) {
            Some(name) if *name == self.provisioner_name => Ownership::Ours,
            None if pv.finalizers().iter().any(|f| f == FINALIZER) => Ownership::FinalizerOnly,
            _ => Ownership::Foreign,
        }
    }

    /// Whether a PV goes into the cache: ours (to reconcile), and NFS PVs of our exports'
    /// servers (reduced to name and source), because a directory another PV points at is never
    /// deleted or archived.
    pub fn caches_volume(&self, pv: &Volume) -> bool {
        self.ownership(pv) != Ownership::Foreign || self.same_server(pv)
    }

    fn same_server(&self, pv: &Volume) -> bool {
        pv.spec
            .as_ref()
            .and_then(|s| s.nfs.as_ref())
            .is_some_and(|nfs| self.nfs_servers.contains(&nfs.server))
    }
}

/// The class a claim asks for: `spec.storageClassName`, or the legacy beta annotation.
pub fn class_name_of(claim: &Claim) -> Option<&str> {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .or_else(|| {
            claim
                .annotations()
                .get(ANN_STORAGE_CLASS_BETA)
                .map(String::as_str)
        })
        .filter(|n| !n.is_empty())
}

/// Unbound and not being deleted. Bound and deleting claims never need a volume (a bound
/// claim's `volumeName` cannot be unset), so only these are cached.
pub fn claim_may_need_a_volume(claim: &Claim) -> bool {
    let unbound = claim
        .spec
        .as_ref()
        .is_none_or(|s| s.volume_name.as_deref().unwrap_or("").is_empty());
    unbound && claim.metadata.deletion_timestamp.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn selection() -> Selection {
        Selection::new("me", &["filer", "second"])
    }

    fn class(mode: &str) -> Class {
        serde_json::from_value(json!({
            "metadata": {"name": "nfs"}, "provisioner": "me", "volumeBindingMode": mode
        }))
        .unwrap()
    }

    fn claim(annotations: serde_json::Value, volume_name: Option<&str>) -> Claim {
        serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "n", "uid": "u", "annotations": annotations},
            "spec": {"storageClassName": "nfs", "volumeName": volume_name}
        }))
        .unwrap()
    }

    fn volume(annotations: serde_json::Value, finalizers: &[&str], server: &str) -> Volume {
        serde_json::from_value(json!({
            "metadata": {"name": "pv", "annotations": annotations, "finalizers": finalizers},
            "spec": {"nfs": {"server": server, "path": "/export/x"}}
        }))
        .unwrap()
    }

    #[test]
    fn a_claim_is_ours_once_handed_to_us_and_its_node_chosen_when_the_class_waits() {
        let s = selection();
        let handed = json!({ANN_STORAGE_PROVISIONER: "me"});
        let immediate = class("Immediate");
        assert!(s.claim_is_ours(&claim(handed.clone(), None), Some(&immediate)));
        assert!(s.claim_is_ours(
            &claim(json!({ANN_STORAGE_PROVISIONER_BETA: "me"}), None),
            Some(&immediate)
        ));
        assert!(!s.claim_is_ours(&claim(json!({}), None), Some(&immediate)));
        assert!(!s.claim_is_ours(
            &claim(json!({ANN_STORAGE_PROVISIONER: "other"}), None),
            Some(&immediate)
        ));
        assert!(!s.claim_is_ours(&claim(handed.clone(), Some("pv-1")), Some(&immediate)));
        assert!(!s.claim_is_ours(&claim(handed.clone(), None), None));
        let waiting = class("WaitForFirstConsumer");
        assert!(!s.claim_is_ours(&claim(handed, None), Some(&waiting)));
        assert!(s.claim_is_ours(
            &claim(
                json!({ANN_STORAGE_PROVISIONER: "me", ANN_SELECTED_NODE: "node-1"}),
                None
            ),
            Some(&waiting)
        ));
        let mut foreign = immediate.clone();
        foreign.provisioner = "other".into();
        assert!(!s.claim_is_ours(
            &claim(json!({ANN_STORAGE_PROVISIONER: "me"}), None),
            Some(&foreign)
        ));
    }

    #[test]
    fn the_class_comes_from_the_spec_or_the_beta_annotation() {
        let c = claim(json!({}), None);
        assert_eq!(class_name_of(&c), Some("nfs"));
        let beta: Claim = serde_json::from_value(json!({
            "metadata": {"name": "a", "annotations": {ANN_STORAGE_CLASS_BETA: "legacy"}},
            "spec": {}
        }))
        .unwrap();
        assert_eq!(class_name_of(&beta), Some("legacy"));
    }

    #[test]
    fn ownership_follows_the_annotation_and_a_bare_finalizer_is_ours_to_release() {
        let s = selection();
        let ours = volume(json!({ANN_PROVISIONED_BY: "me"}), &[], "elsewhere");
        assert_eq!(s.ownership(&ours), Ownership::Ours);
        let bare = volume(json!({}), &[FINALIZER], "elsewhere");
        assert_eq!(s.ownership(&bare), Ownership::FinalizerOnly);
        let other_instance = volume(json!({ANN_PROVISIONED_BY: "other"}), &[FINALIZER], "x");
        assert_eq!(s.ownership(&other_instance), Ownership::Foreign);
        assert_eq!(
            s.ownership(&volume(json!({}), &[], "filer")),
            Ownership::Foreign
        );
    }

    #[test]
    fn the_cache_holds_ours_and_nfs_volumes_of_our_server() {
        let s = selection();
        assert!(s.caches_volume(&volume(json!({ANN_PROVISIONED_BY: "me"}), &[], "x")));
        assert!(s.caches_volume(&volume(json!({}), &[FINALIZER], "x")));
        assert!(s.caches_volume(&volume(json!({ANN_PROVISIONED_BY: "other"}), &[], "filer")));
        assert!(s.caches_volume(&volume(json!({}), &[], "second")));
        assert!(!s.caches_volume(&volume(json!({ANN_PROVISIONED_BY: "other"}), &[], "x")));
    }
}
