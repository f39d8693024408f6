//! The controller's view of the other PVs, which the NFS plugin asks before it deletes or
//! archives a directory ([`OtherVolumes`]).
//!
//! Two sources are asked: the cache (every NFS PV of our server, found by
//! [`VolumeCache::near`](super::volume_cache::VolumeCache::near)), and then the API server
//! itself for our PVs of the same directory tree (by [`LABEL_DIRECTORY_TREE`]), so a PV
//! created a moment ago that the watch has not delivered yet still counts.

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::Context;
use crate::nfs_plugin::{LookupError, NfsPlugin, OtherVolumes, Overlap};
use crate::persistent_volume::{LABEL_DIRECTORY_TREE, directory_tree_label};
use crate::planning::VolumeDirectory;

/// The other PVs as the cache and the API server have them.
pub struct ClusterVolumes<'a>(pub &'a Context);

impl ClusterVolumes<'_> {
    /// A cached PV (other than `me`) whose directory overlaps `dir` of `export`.
    pub fn in_cache(&self, export: &NfsPlugin, me: &str, dir: &VolumeDirectory) -> Option<Overlap> {
        let path = export.export_path().pv_path(dir);
        self.0.volumes.near(&path).iter().find_map(|other| {
            export.overlap_with(
                me,
                dir,
                &other.name_any(),
                other.spec.as_ref().and_then(|s| s.nfs.as_ref()),
            )
        })
    }

    /// One of our PVs (other than `me`) whose directory overlaps `dir`, as the API server
    /// has them now.
    pub async fn in_api(
        &self,
        export: &NfsPlugin,
        me: &str,
        dir: &VolumeDirectory,
    ) -> Result<Option<Overlap>, kube::Error> {
        let ctx = self.0;
        let first = dir.components().next().unwrap_or_default();
        let selector = format!("{LABEL_DIRECTORY_TREE}={}", directory_tree_label(first));
        let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
        let list = api.list(&ListParams::default().labels(&selector)).await?;
        Ok(list.items.iter().find_map(|other| {
            export.overlap_with(
                me,
                dir,
                &other.name_any(),
                other.spec.as_ref().and_then(|s| s.nfs.as_ref()),
            )
        }))
    }
}

impl OtherVolumes for ClusterVolumes<'_> {
    async fn overlapping(
        &self,
        export: &NfsPlugin,
        me: &str,
        dir: &VolumeDirectory,
    ) -> Result<Option<Overlap>, LookupError> {
        if let Some(overlap) = self.in_cache(export, me, dir) {
            return Ok(Some(overlap));
        }
        self.in_api(export, me, dir)
            .await
            .map_err(|e| LookupError(Box::new(e)))
    }
}
