//! Every export this instance serves, one [`NfsPlugin`] each, and which one a class or a PV
//! belongs to. Exports never overlap (see `crate::exports_file`), so a PV's `spec.nfs`
//! belongs to at most one of them, and a PV is only ever handled through its own export's
//! mount.

use k8s_openapi::api::core::v1::NFSVolumeSource;
use tokio_util::sync::CancellationToken;

use super::delete_policy::{self, Decision};
use super::{KeptBecause, NfsPlugin, OtherVolumes, ProvisionedVolume, ReclaimOutcome, VolumeError};
use crate::exports_file::DEFAULT_EXPORT;
use crate::objects::{Claim, Class, Volume};

pub struct Exports {
    plugins: Vec<NfsPlugin>,
}

impl Exports {
    pub fn new(plugins: Vec<NfsPlugin>) -> Self {
        Exports { plugins }
    }

    pub fn iter(&self) -> impl Iterator<Item = &NfsPlugin> {
        self.plugins.iter()
    }

    /// The export a class names (`None`: the default export).
    pub fn named(&self, name: Option<&str>) -> Result<&NfsPlugin, VolumeError> {
        let name = name.unwrap_or(DEFAULT_EXPORT);
        self.plugins
            .iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| VolumeError::UnknownExport {
                name: name.to_string(),
                served: self.names(),
            })
    }

    /// The export a PV's `spec.nfs` points into: same server, a path beneath the export path.
    /// The error says why none does (no `spec.nfs`, another server, a path outside them).
    pub fn of_volume(&self, nfs: Option<&NFSVolumeSource>) -> Result<&NfsPlugin, VolumeError> {
        let mut first_error = None;
        for plugin in &self.plugins {
            match plugin.directory_of(nfs) {
                Ok(_) => return Ok(plugin),
                // Prefer "outside the export" of a plugin of the same server over "another
                // server": it says more.
                Err(e @ VolumeError::PathOutsideExport { .. }) => first_error = Some(e),
                Err(e) => {
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                }
            }
        }
        Err(first_error.unwrap_or(VolumeError::NotNfs))
    }

    /// The export a class provisions on (its `export` parameter).
    pub fn provision_export(&self, class: &Class) -> Result<&NfsPlugin, VolumeError> {
        self.named(super::parameters_of(class)?.export.as_deref())
    }

    /// Provisions `claim` on the export its class names (see [`NfsPlugin::provision`]).
    pub async fn provision(
        &self,
        claim: &Claim,
        class: &Class,
        pv_name: &str,
        term: &CancellationToken,
    ) -> Result<ProvisionedVolume, VolumeError> {
        self.provision_export(class)?
            .provision(claim, class, pv_name, term)
            .await
    }

    /// Checks that [`Self::reclaim`] can apply `pv`'s delete policy, without touching any
    /// file system: the policy can be read and, unless it keeps the directory, the PV maps to
    /// a directory of one of the exports.
    pub fn check_reclaim(&self, pv: &Volume, class: Option<&Class>) -> Result<(), VolumeError> {
        let nfs = pv.spec.as_ref().and_then(|s| s.nfs.as_ref());
        match self.of_volume(nfs) {
            Ok(plugin) => plugin.plan_reclaim(pv, class).map(|_| ()),
            Err(e) => match delete_policy::decide(pv, class)? {
                Decision::Keep(_) => Ok(()),
                Decision::Apply { .. } => Err(e),
            },
        }
    }

    /// Reclaims `pv` through the export it belongs to (see [`NfsPlugin::reclaim`]). A PV of
    /// none of them fails, unless its policy keeps the directory anyway.
    pub async fn reclaim(
        &self,
        pv: &Volume,
        class: Option<&Class>,
        others: &impl OtherVolumes,
        term: &CancellationToken,
    ) -> Result<ReclaimOutcome, VolumeError> {
        let nfs = pv.spec.as_ref().and_then(|s| s.nfs.as_ref());
        match self.of_volume(nfs) {
            Ok(plugin) => plugin.reclaim(pv, class, others, term).await,
            Err(e) => match delete_policy::decide(pv, class)? {
                Decision::Keep(kept) => Ok(ReclaimOutcome::Kept {
                    directory: None,
                    because: KeptBecause::Policy(kept),
                }),
                Decision::Apply { .. } => Err(e),
            },
        }
    }

    /// The names served, for messages.
    pub fn names(&self) -> String {
        self.plugins
            .iter()
            .map(NfsPlugin::name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
