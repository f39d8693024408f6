//! Whether another PV points at a volume's directory, at one inside it, or at one it lies in.
//!
//! A volume deletes or archives only what belongs to it alone: any such PV (any provisioner,
//! any phase, same server and export) keeps the directory in place. Two sources are asked:
//! the cache (every NFS PV of our server, found through the [`DirectoryIndex`] by the
//! directory's components), and, right before a delete or rename, the API server itself for
//! our PVs of the same directory tree (by [`LABEL_DIRECTORY_TREE`]), so a PV created a moment
//! ago that the watch has not delivered yet still counts.
//!
//! [`DirectoryIndex`]: super::directory_index::DirectoryIndex

use std::fmt;

use k8s_openapi::api::core::v1::{NFSVolumeSource, PersistentVolume};
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::{Context, Result};
use crate::persistent_volume::{LABEL_DIRECTORY_TREE, directory_tree_label};
use crate::planning::VolumeDirectory;

/// How another volume's directory relates to this one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// The same directory.
    Same,
    /// The other directory lies inside this one.
    Inside,
    /// This directory lies inside the other one.
    Contains,
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Relation::Same => "also uses",
            Relation::Inside => "uses a directory inside",
            Relation::Contains => "uses a directory containing",
        })
    }
}

/// Another PV whose directory overlaps this volume's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub pv: String,
    pub relation: Relation,
    pub directory: VolumeDirectory,
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PV {} {} it ({})",
            self.pv, self.relation, self.directory
        )
    }
}

/// How `theirs` relates to `mine`, if they overlap at all.
pub fn relation(mine: &VolumeDirectory, theirs: &VolumeDirectory) -> Option<Relation> {
    let (m, t) = (mine.as_str(), theirs.as_str());
    let under = |inner: &str, outer: &str| {
        inner.len() > outer.len()
            && inner.starts_with(outer)
            && inner.as_bytes()[outer.len()] == b'/'
    };
    if m == t {
        Some(Relation::Same)
    } else if under(t, m) {
        Some(Relation::Inside)
    } else if under(m, t) {
        Some(Relation::Contains)
    } else {
        None
    }
}

/// How another PV (`name`, with its NFS source) relates to `mine`, if it is an NFS PV of our
/// server and export that overlaps it.
fn judge(
    ctx: &Context,
    me: &str,
    mine: &VolumeDirectory,
    name: String,
    nfs: Option<&NFSVolumeSource>,
) -> Option<Overlap> {
    if name == me {
        return None;
    }
    let nfs = nfs?;
    if nfs.server != ctx.nfs_server {
        return None;
    }
    let theirs = ctx.export.directory_of(&nfs.path).ok()?;
    relation(mine, &theirs).map(|relation| Overlap {
        pv: name,
        relation,
        directory: theirs,
    })
}

/// A cached PV (other than `me`) whose directory overlaps `dir`.
pub fn in_cache(ctx: &Context, me: &str, dir: &VolumeDirectory) -> Option<Overlap> {
    let mut seen = std::collections::HashSet::new();
    for component in dir.components() {
        for name in ctx.directories.candidates(component) {
            if !seen.insert(name.clone()) {
                continue;
            }
            if let Some(other) = ctx.volumes.get(&ObjectRef::new(&name))
                && let Some(overlap) = judge(
                    ctx,
                    me,
                    dir,
                    other.name_any(),
                    other.spec.as_ref().and_then(|s| s.nfs.as_ref()),
                )
            {
                return Some(overlap);
            }
        }
    }
    None
}

/// One of our PVs (other than `me`) whose directory overlaps `dir`, as the API server has
/// them now.
pub async fn in_api(ctx: &Context, me: &str, dir: &VolumeDirectory) -> Result<Option<Overlap>> {
    let first = dir.components().next().unwrap_or_default();
    let selector = format!("{LABEL_DIRECTORY_TREE}={}", directory_tree_label(first));
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let list = api.list(&ListParams::default().labels(&selector)).await?;
    Ok(list.items.iter().find_map(|other| {
        judge(
            ctx,
            me,
            dir,
            other.name_any(),
            other.spec.as_ref().and_then(|s| s.nfs.as_ref()),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(p: &str) -> VolumeDirectory {
        VolumeDirectory::parse(p).unwrap()
    }

    #[test]
    fn relations_are_same_inside_contains_or_none() {
        assert_eq!(relation(&dir("a/b"), &dir("a/b")), Some(Relation::Same));
        assert_eq!(relation(&dir("a/b"), &dir("a/b/c")), Some(Relation::Inside));
        assert_eq!(relation(&dir("a/b/c"), &dir("a")), Some(Relation::Contains));
        assert_eq!(relation(&dir("a/b"), &dir("a/bc")), None);
        assert_eq!(relation(&dir("a/bc"), &dir("a/b")), None);
        assert_eq!(relation(&dir("x"), &dir("y")), None);
    }
}
