//! Claim → directory on the export → the PV object that points at it.

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{DirectoryGuard, NfsPlugin, VolumeError};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::objects::{Claim, Class};
use crate::parameters::{ClassParameters, DirectoryPermissions};
use crate::persistent_volume::{VolumeSpec, directory_tree_label, requested_storage};
use crate::planning::{VolumeDirectory, VolumeRequest, plan_directory};
use crate::storage::{CreateOutcome, NfsRoot};

/// A directory made (or found) for a claim and the PV object to create for it. Holds the
/// directory's lock until [`NfsPlugin::provisioned`] (or until dropped, when creating the PV
/// failed): no reclaim of the same or a nested directory runs meanwhile.
pub struct ProvisionedVolume {
    pub pv: PersistentVolume,
    pub directory: VolumeDirectory,
    /// The directory existed before this volume (its delete policy will keep it).
    pub directory_existed: bool,
    claim_uid: String,
    root: NfsRoot,
    _owner: DirectoryGuard,
}

impl ProvisionedVolume {
    /// The PV exists: its reclaim owns the directory from now on. Forgets the journal entry
    /// and releases the directory.
    pub async fn created(self, term: &CancellationToken) -> Result<(), VolumeError> {
        self.root.journal_remove(&self.claim_uid, term).await?;
        Ok(())
    }
}

/// Claims this provisioner refuses whatever the class says, and why. A claim with a data
/// source is refused here too: [`NfsPlugin::provision`] makes empty volumes, and a claim that
/// asked for a copy must never get an empty one (clones go through `prepare_clone`).
pub fn refusal_of(claim: &Claim) -> Option<VolumeError> {
    if let Some(refusal) = refusal_of_shape(claim) {
        return Some(refusal);
    }
    let spec = claim.spec.as_ref()?;
    if let Some(source) = &spec.data_source_ref {
        return Some(VolumeError::DataSource(format!(
            "dataSourceRef {} {}",
            source.kind, source.name
        )));
    }
    if let Some(source) = &spec.data_source {
        return Some(VolumeError::DataSource(format!(
            "dataSource {} {}",
            source.kind, source.name
        )));
    }
    None
}

/// What no volume of this provisioner can be, empty or cloned.
pub(super) fn refusal_of_shape(claim: &Claim) -> Option<VolumeError> {
    let spec = claim.spec.as_ref()?;
    if spec.volume_mode.as_deref() == Some("Block") {
        return Some(VolumeError::BlockVolumeMode);
    }
    if spec.selector.is_some() {
        return Some(VolumeError::Selector);
    }
    None
}

/// Who the directory belongs to, as seen before the mkdir.
enum Found {
    /// Absent: recorded in the journal, about to be created for this claim.
    Absent,
    /// Present and journaled for this claim: an earlier attempt created it.
    OursFromEarlierAttempt,
    /// Present and not ours: it predates this volume.
    Predates,
}

/// What provisioning decided for a claim before touching the export.
pub(super) struct Plan<'a> {
    pub(super) parameters: &'a ClassParameters,
    pub(super) request: VolumeRequest,
    pub(super) directory: VolumeDirectory,
    pub(super) permissions: DirectoryPermissions,
    pub(super) parent_permissions: DirectoryPermissions,
    pub(super) capacity: Quantity,
}

impl NfsPlugin {
    /// Plans `claim`'s directory and permissions from `class`, without touching the export.
    pub(super) fn plan<'a>(
        &self,
        claim: &Claim,
        class: &'a Class,
        pv_name: &str,
    ) -> Result<Plan<'a>, VolumeError> {
        let parameters = super::parameters_of(class)?;
        let capacity = claim
            .spec
            .as_deref()
            .and_then(requested_storage)
            .ok_or(VolumeError::NoStorageRequest)?;
        let request = VolumeRequest {
            namespace: claim.namespace().unwrap_or_default(),
            claim_name: claim.name_any(),
            claim_uid: claim.uid().unwrap_or_default(),
            pv_name: pv_name.to_string(),
            labels: claim.labels().clone(),
            annotations: claim.annotations().clone(),
        };
        let directory = plan_directory(parameters, &request).map_err(VolumeError::UnsafePath)?;
        let permissions = DirectoryPermissions::resolve(
            &self.default_permissions,
            parameters,
            claim.annotations(),
        )
        .map_err(|e| VolumeError::InvalidClaimAnnotation(Box::new(e)))?;
        // Template parents may be shared with other claims: the class decides, not this claim.
        let parent_permissions =
            DirectoryPermissions::resolve_parents(&self.default_permissions, parameters);
        Ok(Plan {
            parameters,
            request,
            directory,
            permissions,
            parent_permissions,
            capacity,
        })
    }

    /// The PV object for a planned volume whose directory is in place.
    pub(super) fn volume_for(
        &self,
        plan: Plan<'_>,
        claim: &Claim,
        class: &Class,
        directory_existed: bool,
        owner: DirectoryGuard,
    ) -> ProvisionedVolume {
        let Plan {
            parameters,
            request,
            directory,
            capacity,
            ..
        } = plan;
        let spec = VolumeSpec {
            pv_name: request.pv_name.clone(),
            provisioner_name: self.provisioner_name.clone(),
            storage_class: class.name().to_string(),
            nfs_server: self.nfs_server.clone(),
            nfs_path: self.export.pv_path(&directory),
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
        ProvisionedVolume {
            pv: spec.to_persistent_volume(),
            directory,
            directory_existed,
            claim_uid: request.claim_uid,
            root: self.root.clone(),
            _owner: owner,
        }
    }

    /// Plans `claim`'s directory from `class`, creates it (or finds it) and builds PV
    /// `pv_name` pointing at it. Idempotent: an earlier attempt's directory is reused.
    pub async fn provision(
        &self,
        claim: &Claim,
        class: &Class,
        pv_name: &str,
        term: &CancellationToken,
    ) -> Result<ProvisionedVolume, VolumeError> {
        if let Some(refusal) = refusal_of(claim) {
            return Err(refusal);
        }
        let plan = self.plan(claim, class, pv_name)?;
        let directory = plan.directory.clone();
        let owner = self.lock(&directory).await;
        let uid = plan.request.claim_uid.as_str();
        // Whether the directory existed before this volume decides what its delete policy may
        // do later. An earlier attempt of this claim that created it left a journal entry, so
        // it still counts as created here; the entry also lets the orphan sweep find a
        // directory whose claim goes away before its PV is made.
        let found = if self.root.volume_dir_exists(&directory, term).await? {
            if self.journaled_for(uid, &directory, term).await? {
                Found::OursFromEarlierAttempt
            } else {
                Found::Predates
            }
        } else {
            self.root.journal_record(uid, &directory, term).await?;
            Found::Absent
        };
        let outcome = self
            .root
            .create_volume_dir(
                &directory,
                &plan.permissions,
                &plan.parent_permissions,
                term,
            )
            .await?;
        let directory_existed = match (outcome, found) {
            (CreateOutcome::Created, _) => {
                info!(%directory, "created volume directory");
                false
            }
            (CreateOutcome::AlreadyExisted, Found::OursFromEarlierAttempt) => {
                info!(%directory, "volume directory created by an earlier attempt");
                false
            }
            // Present before the check, or appeared between the check and the mkdir (made by
            // someone else: this process holds the directory's lock): not this volume's data.
            (CreateOutcome::AlreadyExisted, Found::Predates | Found::Absent) => {
                info!(%directory, "volume directory already exists; using it as it is, and its delete policy will keep it");
                true
            }
        };
        if directory_existed {
            // Not created for this claim: nothing to clean up if the claim goes away.
            self.root.journal_remove(uid, term).await?;
        }
        Ok(self.volume_for(plan, claim, class, directory_existed, owner))
    }

    /// Whether the journal records `directory` as made for the claim with this UID.
    pub(super) async fn journaled_for(
        &self,
        uid: &str,
        directory: &VolumeDirectory,
        term: &CancellationToken,
    ) -> Result<bool, VolumeError> {
        let journal = self.root.journal_entries(term).await?;
        Ok(journal.iter().any(|(k, d)| k == uid && d == directory))
    }
}
