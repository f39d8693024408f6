//! Whether another PV points at a volume's directory, at one inside it, or at one it lies in.
//!
//! A volume deletes or archives only what belongs to it alone: any such PV (any provisioner,
//! any phase, same server and export) keeps the directory in place. The plugin does not know
//! the cluster; the controller hands it a view of the other PVs ([`OtherVolumes`]) that it
//! asks under the directory's lock, right before a delete or rename.

use std::fmt;
use std::future::Future;

use k8s_openapi::api::core::v1::NFSVolumeSource;

use super::{LookupError, NfsPlugin};
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

/// What the plugin needs to know of the other PVs of the cluster.
pub trait OtherVolumes: Sync {
    /// A PV other than `me` whose directory overlaps `dir` of `export` (judge candidates
    /// with [`NfsPlugin::overlap_with`]), or `None` when no PV does.
    fn overlapping(
        &self,
        export: &NfsPlugin,
        me: &str,
        dir: &VolumeDirectory,
    ) -> impl Future<Output = Result<Option<Overlap>, LookupError>> + Send;
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

impl NfsPlugin {
    /// How another PV (`name`, with its NFS source) relates to `mine`, if it is an NFS PV of
    /// this export other than `me` that overlaps it.
    pub fn overlap_with(
        &self,
        me: &str,
        mine: &VolumeDirectory,
        name: &str,
        nfs: Option<&NFSVolumeSource>,
    ) -> Option<Overlap> {
        if name == me {
            return None;
        }
        let theirs = self.directory_of(nfs).ok()?;
        relation(mine, &theirs).map(|relation| Overlap {
            pv: name.to_string(),
            relation,
            directory: theirs,
        })
    }
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
