//! The usage task's view of the controller's cache: the measurable volumes of one export.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kube::runtime::reflector::ObjectRef;

use super::Context;
use crate::objects::Volume;
use crate::usage::{self, VolumeRef, VolumeSource};

/// The volumes of export `export` that usage measurement can measure (see
/// [`usage::volume_ref`]), read from the cache.
pub struct CachedVolumes {
    ctx: Arc<Context>,
    export: String,
    /// The cache's generation at the last visit.
    seen_generation: AtomicU64,
}

impl CachedVolumes {
    pub fn new(ctx: Arc<Context>, export: String) -> Self {
        CachedVolumes {
            ctx,
            export,
            seen_generation: AtomicU64::new(u64::MAX),
        }
    }

    fn measurable(&self, pv: &Volume) -> Option<VolumeRef> {
        let export = self.ctx.exports.named(Some(&self.export)).ok()?;
        usage::volume_ref(
            pv,
            self.ctx.selection.provisioner_name(),
            export.nfs_server(),
            export.export_path(),
        )
    }
}

impl VolumeSource for CachedVolumes {
    fn visit_if_changed(&self, f: &mut dyn FnMut(VolumeRef)) -> bool {
        let generation = self.ctx.volumes.generation();
        if self.seen_generation.swap(generation, Ordering::Relaxed) == generation {
            return false;
        }
        // The cache stays read-locked during the visit: `f` only touches the usage table.
        self.ctx.volumes.for_each(|pv| {
            if let Some(volume) = self.measurable(&pv) {
                f(volume);
            }
        });
        true
    }

    fn get(&self, pv: &str) -> Option<VolumeRef> {
        let cached = self.ctx.volumes.get(&ObjectRef::new(pv))?;
        self.measurable(&cached)
    }
}
