//! The source claim is protected from deletion while it is copied.
//!
//! Like kubernetes-csi/external-provisioner's `provisioner.storage.kubernetes.io/cloning-protection`,
//! a finalizer on the source claim: deleting the source meanwhile leaves it Terminating, and it
//! goes once the last copy from it is done. Which clones are copying from it is recorded on it
//! too, so that several clones of one source, a restart, or a clone whose claim is deleted
//! mid-copy each take away only their own share:
//!
//! * finalizer [`FINALIZER`];
//! * annotation [`ANN_CLONES`]: the UIDs of the claims being copied from it, comma-separated;
//! * label [`LABEL`], so the sweep ([`sweep`]) finds protected claims with one list.
//!
//! Every change is a merge patch that carries the `resourceVersion` it was computed from, so
//! two writers never lose each other's UIDs (a stale one gets 409 and reads again). This is
//! the only write this provisioner makes to a claim's metadata (RBAC: `patch` on
//! `persistentvolumeclaims`).

use std::collections::BTreeSet;

use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::super::{Context, Error, Result};
use crate::objects::Claim;

pub const FINALIZER: &str = "nfs-provisioner.io/clone-source-protection";
pub const ANN_CLONES: &str = "nfs-provisioner.io/clones-in-progress";
pub const LABEL: &str = "nfs-provisioner.io/clone-source";
/// Attempts of a read-modify-write that lost a race (409) before giving up for this round.
const CONFLICT_ATTEMPTS: usize = 4;

/// The claim UIDs `claim` is protected for.
fn clones_of(claim: &Claim) -> BTreeSet<String> {
    claim
        .annotations()
        .get(ANN_CLONES)
        .map(|v| {
            v.split(',')
                .filter(|u| !u.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `claim` is protected for the clone with UID `clone_uid`.
pub fn protects(claim: &Claim, clone_uid: &str) -> bool {
    claim.finalizers().iter().any(|f| f == FINALIZER) && clones_of(claim).contains(clone_uid)
}

/// The patch that makes `claim` protected for exactly `clones` (none: unprotected).
fn patch_for(claim: &Claim, clones: &BTreeSet<String>) -> Value {
    let mut finalizers: Vec<String> = claim
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let (annotation, label) = if clones.is_empty() {
        (Value::Null, Value::Null)
    } else {
        finalizers.push(FINALIZER.to_string());
        let uids: Vec<&str> = clones.iter().map(String::as_str).collect();
        (json!(uids.join(",")), json!("true"))
    };
    json!({
        "metadata": {
            "resourceVersion": claim.resource_version(),
            "finalizers": finalizers,
            "annotations": { ANN_CLONES: annotation },
            "labels": { LABEL: label },
        }
    })
}

/// For tests of the checks that read the protection.
#[cfg(test)]
pub fn add_to(claim: &mut Claim, clone_uid: &str) {
    let mut clones = clones_of(claim);
    clones.insert(clone_uid.to_string());
    let uids: Vec<&str> = clones.iter().map(String::as_str).collect();
    claim
        .annotations_mut()
        .insert(ANN_CLONES.into(), uids.join(","));
    claim.finalizers_mut().push(FINALIZER.into());
}

/// Reads claim `name` of `namespace` (a list by name: `list` is what the RBAC grants).
pub async fn read(client: &Client, namespace: &str, name: &str) -> Result<Option<Claim>> {
    let api: Api<Claim> = Api::namespaced(client.clone(), namespace);
    let named = ListParams::default().fields(&format!("metadata.name={name}"));
    Ok(api.list(&named).await?.items.into_iter().next())
}

/// Protects `source` (as just read) for `clone_uid`; returns it as it is now.
pub async fn protect(client: &Client, source: Claim, clone_uid: &str) -> Result<Claim> {
    if protects(&source, clone_uid) {
        return Ok(source);
    }
    let mut clones = clones_of(&source);
    clones.insert(clone_uid.to_string());
    let api: Api<Claim> = Api::namespaced(client.clone(), &source.namespace().unwrap_or_default());
    let patched = api
        .patch(
            &source.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch_for(&source, &clones)),
        )
        .await?;
    info!(source = %source.name_any(), clone_uid, "source claim protected from deletion while it is copied");
    Ok(patched)
}

/// Takes `clone_uid` off the protection of claim `name` in `namespace`; the last one removes
/// the finalizer. A claim already gone or not protected for it is fine.
pub async fn release(client: &Client, namespace: &str, name: &str, clone_uid: &str) -> Result<()> {
    for _ in 0..CONFLICT_ATTEMPTS {
        let Some(source) = read(client, namespace, name).await? else {
            return Ok(());
        };
        match release_from(client, &source, &[clone_uid]).await {
            Err(Error::Kube(kube::Error::Api(status))) if status.code == 409 => continue,
            other => return other,
        }
    }
    Err(Error::ProtectionConflict(format!("{namespace}/{name}")))
}

/// Takes `done` off `source`'s protection (one patch, conditional on its resourceVersion).
async fn release_from(client: &Client, source: &Claim, done: &[&str]) -> Result<()> {
    let mut clones = clones_of(source);
    let before = clones.len();
    clones.retain(|u| !done.contains(&u.as_str()));
    let has_finalizer = source.finalizers().iter().any(|f| f == FINALIZER);
    // Nothing taken off, and the finalizer is there exactly when some clone remains.
    if clones.len() == before && has_finalizer != clones.is_empty() {
        return Ok(());
    }
    let api: Api<Claim> = Api::namespaced(client.clone(), &source.namespace().unwrap_or_default());
    api.patch(
        &source.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch_for(source, &clones)),
    )
    .await?;
    if clones.is_empty() {
        info!(source = %source.name_any(), "source claim no longer protected: no copy from it is in progress");
    }
    Ok(())
}

/// Protection left behind: a clone whose claim went away mid-copy (or while no replica led),
/// or a crash between a clone's PV and the release. Every protected claim is listed (by
/// label); a clone UID that is neither a claim still waiting for its volume nor a copy
/// running here is taken off. Runs with the orphan sweep; a failure is retried at the next.
pub async fn sweep(ctx: &Context) {
    let api: Api<Claim> = Api::all(ctx.client.clone());
    let protected = match api.list(&ListParams::default().labels(LABEL)).await {
        Ok(list) => list.items,
        Err(e) => {
            warn!(error = %e, "could not list claims protected as clone sources; trying again at the next sweep");
            return;
        }
    };
    let waiting: BTreeSet<String> = ctx
        .claims
        .state()
        .iter()
        .filter_map(|c| c.metadata.uid.clone())
        .collect();
    for source in protected {
        let done: Vec<String> = clones_of(&source)
            .into_iter()
            .filter(|uid| !waiting.contains(uid) && !ctx.clones.is_running(uid))
            .collect();
        let done: Vec<&str> = done.iter().map(String::as_str).collect();
        if let Err(e) = release_from(&ctx.client, &source, &done).await {
            warn!(source = %format!("{}/{}", source.namespace().unwrap_or_default(), source.name_any()), error = %e, "could not release a clone source's protection; trying again at the next sweep");
        }
    }
}
