//! Pending claim -> directory on the NFS root -> PV with a claimRef the PV binder binds.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::PostParams;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span};

use super::events::{REASON_PROVISIONING_FAILED, REASON_PROVISIONING_SUCCEEDED};
use super::{Claim, Context, Error, Next, Result, claim_may_need_a_volume};
use crate::parameters::{ClassParameters, DirectoryPermissions};
use crate::persistent_volume::{
    ANN_SELECTED_NODE, ANN_STORAGE_CLASS_BETA, ANN_STORAGE_PROVISIONER,
    ANN_STORAGE_PROVISIONER_BETA, VolumeSpec, directory_tree_label, pv_name_for, requested_storage,
};
use crate::planning::{VolumeRequest, plan_directory};
use crate::storage::CreateOutcome;

/// The class a claim asks for: `spec.storageClassName`, or the legacy beta annotation.
pub fn class_name_of(claim: &Claim) -> Option<String> {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .or_else(|| claim.annotations().get(ANN_STORAGE_CLASS_BETA).cloned())
        .filter(|n| !n.is_empty())
}

/// The claim's StorageClass when this provisioner is asked to act on the claim: the class
/// names us, kube-controller-manager handed the claim to us (GA or beta annotation), and a
/// WaitForFirstConsumer claim has its node selected.
pub fn qualifying_class(ctx: &Context, claim: &Claim) -> Option<Arc<StorageClass>> {
    let class = ctx.classes.get(&ObjectRef::new(&class_name_of(claim)?))?;
    if class.provisioner != ctx.provisioner_name {
        return None;
    }
    let annotations = claim.annotations();
    let handed_to_us = [ANN_STORAGE_PROVISIONER, ANN_STORAGE_PROVISIONER_BETA]
        .iter()
        .any(|a| annotations.get(*a) == Some(&ctx.provisioner_name));
    if !handed_to_us {
        return None;
    }
    let waits_for_consumer = class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer");
    if waits_for_consumer && !annotations.contains_key(ANN_SELECTED_NODE) {
        return None;
    }
    Some(class)
}

/// Claims this provisioner refuses, whatever the class says.
fn unsupported_request(claim: &Claim) -> Option<Error> {
    let spec = claim.spec.as_ref()?;
    if spec.volume_mode.as_deref() == Some("Block") {
        return Some(Error::BlockVolumeMode);
    }
    if spec.selector.is_some() {
        return Some(Error::Selector);
    }
    if let Some(source) = &spec.data_source_ref {
        return Some(Error::DataSource(format!(
            "dataSourceRef {} {}",
            source.kind, source.name
        )));
    }
    if let Some(source) = &spec.data_source {
        return Some(Error::DataSource(format!(
            "dataSource {} {}",
            source.kind, source.name
        )));
    }
    None
}

pub async fn reconcile(
    ctx: &Context,
    key: &ObjectRef<Claim>,
    term: &CancellationToken,
) -> Result<Next> {
    let Some(claim) = ctx.claims.get(key) else {
        return Ok(Next::Done);
    };
    if !claim_may_need_a_volume(&claim) {
        return Ok(Next::Done);
    }
    let Some(class) = qualifying_class(ctx, &claim) else {
        return Ok(Next::Done);
    };
    let uid = claim.uid().unwrap_or_default();
    let pv_name = pv_name_for(&uid);
    if ctx.volumes.get(&ObjectRef::new(&pv_name)).is_some() {
        // Already provisioned (possibly by a previous leader); the binder does the rest.
        return Ok(Next::Done);
    }
    let span = info_span!(
        "provision",
        claim = %format!("{}/{}", key.namespace.as_deref().unwrap_or(""), key.name),
        pv = %pv_name,
        storage_class = %class.name_any(),
    );
    let started = Instant::now();
    let class_name = class.name_any();
    let outcome = provision(ctx, &claim, &class, &pv_name, term)
        .instrument(span.clone())
        .await;
    match &outcome {
        Ok(()) => ctx
            .metrics
            .provisioned(&class_name, "success", Some(started.elapsed())),
        Err(Error::Stopped) => {}
        Err(e) => {
            ctx.metrics.provisioned(&class_name, e.label(), None);
            let note = format!("failed to provision volume {pv_name}: {e}");
            span.in_scope(|| tracing::warn!(error = %e, "provisioning failed"));
            ctx.events
                .on_claim(&claim, EventType::Warning, REASON_PROVISIONING_FAILED, note)
                .await;
        }
    }
    outcome.map(|()| Next::Done)
}

async fn provision(
    ctx: &Context,
    claim: &Claim,
    class: &StorageClass,
    pv_name: &str,
    term: &CancellationToken,
) -> Result<()> {
    if let Some(refusal) = unsupported_request(claim) {
        return Err(refusal);
    }
    let class_name = class.name_any();
    let empty = Default::default();
    let parameters =
        ClassParameters::parse(class.parameters.as_ref().unwrap_or(&empty)).map_err(|source| {
            Error::InvalidParameters {
                class: class_name.clone(),
                source: Box::new(source),
            }
        })?;
    let capacity = claim
        .spec
        .as_deref()
        .and_then(requested_storage)
        .ok_or(Error::NoStorageRequest)?;
    let request = VolumeRequest {
        namespace: claim.namespace().unwrap_or_default(),
        claim_name: claim.name_any(),
        claim_uid: claim.uid().unwrap_or_default(),
        pv_name: pv_name.to_string(),
        labels: claim.labels().clone(),
        annotations: claim.annotations().clone(),
    };
    let directory = plan_directory(&parameters, &request).map_err(Error::UnsafePath)?;
    let permissions =
        DirectoryPermissions::resolve(&ctx.default_permissions, &parameters, claim.annotations())
            .map_err(|e| Error::InvalidClaimAnnotation(Box::new(e)))?;
    // Template parents may be shared with other claims: the class decides, not this claim.
    let parent_permissions =
        DirectoryPermissions::resolve_parents(&ctx.default_permissions, &parameters);

    // No `Provisioning` Normal event before the work (the Go provisioner writes one): it
    // doubled the event writes per claim, and a claim's outcome is always reported, as
    // `ProvisioningSucceeded` or as a `ProvisioningFailed` Warning per failed attempt.

    // One owner per directory tree until the PV exists: a reclaim of the same (or a nested)
    // directory never runs meanwhile.
    let _owner = ctx.directory_locks.acquire(&directory).await;
    let uid = request.claim_uid.as_str();
    // Whether the directory existed before this volume decides what its delete policy may do
    // later. An earlier attempt of this claim that created it left a journal entry, so it
    // still counts as created here; the entry also lets the orphan sweep find a directory
    // whose claim goes away before its PV is made.
    /// Who the directory belongs to, as seen before the mkdir.
    enum Found {
        /// Absent: recorded in the journal, about to be created for this claim.
        Absent,
        /// Present and journaled for this claim: an earlier attempt created it.
        OursFromEarlierAttempt,
        /// Present and not ours: it predates this volume.
        Predates,
    }
    let found = if ctx.root.volume_dir_exists(&directory, term).await? {
        let journal = ctx.root.journal_entries(term).await?;
        if journal.iter().any(|(k, d)| k == uid && *d == directory) {
            Found::OursFromEarlierAttempt
        } else {
            Found::Predates
        }
    } else {
        ctx.root.journal_record(uid, &directory, term).await?;
        Found::Absent
    };
    let outcome = ctx
        .root
        .create_volume_dir(&directory, &permissions, &parent_permissions, term)
        .await?;
    let directory_existed = match (outcome, found) {
        (CreateOutcome::Created, _) => {
            info!(directory = %directory, "created volume directory");
            false
        }
        (CreateOutcome::AlreadyExisted, Found::OursFromEarlierAttempt) => {
            info!(directory = %directory, "volume directory created by an earlier attempt");
            false
        }
        // Present before the check, or appeared between the check and the mkdir (made by
        // someone else: this process holds the directory's lock): not this volume's data.
        (CreateOutcome::AlreadyExisted, Found::Predates | Found::Absent) => {
            info!(directory = %directory, "volume directory already exists; using it as it is, and its delete policy will keep it");
            true
        }
    };
    if directory_existed {
        // Not created for this claim: nothing to clean up if the claim goes away.
        ctx.root.journal_remove(uid, term).await?;
    }

    let spec = VolumeSpec {
        pv_name: pv_name.to_string(),
        provisioner_name: ctx.provisioner_name.clone(),
        storage_class: class_name,
        nfs_server: ctx.nfs_server.clone(),
        nfs_path: ctx.export.pv_path(&directory),
        capacity,
        access_modes: claim
            .spec
            .as_ref()
            .and_then(|s| s.access_modes.clone())
            .unwrap_or_default(),
        mount_options: class.mount_options.clone().unwrap_or_default(),
        reclaim_policy: class
            .reclaim_policy
            .clone()
            .unwrap_or_else(|| "Delete".to_string()),
        on_delete: parameters.on_delete,
        claim_namespace: request.namespace.clone(),
        claim_name: request.claim_name.clone(),
        claim_uid: request.claim_uid.clone(),
        directory_existed,
        directory_tree: directory_tree_label(directory.components().next().unwrap_or_default()),
    };
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    match api
        .create(&PostParams::default(), &spec.to_persistent_volume())
        .await
    {
        Ok(_) => {}
        // The name is derived from the claim's uid, so this is normally our own PV from an
        // earlier attempt (or leader) whose answer was lost. It counts as provisioned only
        // once the cache shows it as ours: the cache holds no PV of another provisioner, so a
        // foreign PV of that name fails here, every attempt, instead of passing as success.
        Err(kube::Error::Api(status)) if status.code == 409 && status.reason == "AlreadyExists" => {
            if ctx.volumes.get(&ObjectRef::new(pv_name)).is_none() {
                return Err(Error::VolumeNameTaken(pv_name.to_string()));
            }
            info!("PV already exists; nothing more to do")
        }
        Err(e) => return Err(e.into()),
    }
    // The PV exists: its reclaim owns the directory from now on.
    ctx.root.journal_remove(uid, term).await?;
    info!(path = %spec.nfs_path, "provisioned volume");
    // The event is written in the background: the worker moves on to the next claim instead
    // of waiting for a write that only people read.
    let events = ctx.events.clone();
    let claim = claim.clone();
    let note = format!("Successfully provisioned volume {pv_name}");
    tokio::spawn(async move {
        events
            .success_on_claim(&claim, REASON_PROVISIONING_SUCCEEDED, note)
            .await
    });
    Ok(())
}
