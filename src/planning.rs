//! Volume planning: which directory beneath the root a claim gets, the archive name used
//! when it is deleted, and the mapping between a PV's `spec.nfs.path` and that directory.
//!
//! Everything here is pure string work; nothing touches the file system. The result is a
//! [`VolumeDirectory`], a relative path whose every component is validated, so joining it
//! to the root can never escape the root or name the root itself.

use std::collections::BTreeMap;
use std::fmt;

use crate::parameters::{ClassParameters, PatternField, PatternPart};

/// Longest single path component (NAME_MAX).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Longest relative volume path (PATH_MAX minus the terminating NUL).
pub const MAX_PATH_BYTES: usize = 4095;

/// Prefix of archive directory names (upstream used `archived-<dir>`).
pub const ARCHIVE_PREFIX: &str = "archived-";
/// Bytes kept free in a base archive name so storage can append a collision suffix.
pub const ARCHIVE_SUFFIX_ROOM: usize = 24;

/// Directory directly beneath the root reserved for the provisioner's orphan journal
/// (see `crate::storage`); no volume or archive path may start with it.
pub const JOURNAL_DIRECTORY: &str = ".nfs-provisioner-journal";

/// Directory directly beneath the root reserved for copies being built for cloned claims
/// (see `crate::storage::CloneStaging`); no volume or archive path may start with it, so a
/// half-built copy is never taken for a volume.
pub const STAGING_DIRECTORY: &str = ".nfs-provisioner-staging";

/// First components no volume directory may have: the provisioner's own directories.
const RESERVED_DIRECTORIES: [(&str, &str); 2] = [
    (
        JOURNAL_DIRECTORY,
        "it is reserved for the provisioner's journal",
    ),
    (
        STAGING_DIRECTORY,
        "it is reserved for copies being built for cloned claims",
    ),
];

/// The claim (and its PV name) a directory is planned for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeRequest {
    pub namespace: String,
    pub claim_name: String,
    pub claim_uid: String,
    pub pv_name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Why a directory could not be planned or a PV path could not be mapped back.
///
/// Display names the template field, label or annotation at fault and is meant for a
/// Kubernetes Warning event on the claim (which then stays Pending).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// An expanded value (or a name used for default naming) is not a safe path component.
    #[error("{field} has the value {value:?}, which cannot be used in a directory name: {reason}")]
    UnsafeValue {
        field: String,
        value: String,
        reason: &'static str,
    },
    /// `pathPattern` refers to a label the claim does not have.
    #[error(
        "pathPattern refers to label {key:?} (${{.PVC.labels.{key}}}), but the claim has no such label; add the label to the claim"
    )]
    MissingLabel { key: String },
    /// `pathPattern` refers to an annotation the claim does not have.
    #[error(
        "pathPattern refers to annotation {key:?} (${{.PVC.annotations.{key}}}), but the claim has no such annotation; add the annotation to the claim"
    )]
    MissingAnnotation { key: String },
    /// A component of the planned directory is not acceptable as a whole.
    #[error("directory component {component:?} is not allowed: {reason}")]
    InvalidComponent {
        component: String,
        reason: &'static str,
    },
    /// The whole relative directory is too long or empty.
    #[error("directory path {path:?} is not allowed: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// A PV path does not lie strictly beneath the configured NFS_PATH.
    #[error("PV path {path:?} is not a directory beneath the export path {export:?}: {reason}")]
    OutsideExport {
        path: String,
        export: String,
        reason: &'static str,
    },
    /// The configured NFS_PATH itself is unusable.
    #[error("export path {path:?} is not usable: {reason}")]
    InvalidExport { path: String, reason: &'static str },
}

/// A validated relative directory beneath the root.
///
/// Invariants: at least one component; each component non-empty, not `.` or `..`, without
/// `/` or NUL, at most 255 bytes; the whole path (components joined by `/`) at most 4095
/// bytes. Hence root + this path is strictly beneath the root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeDirectory(String);

impl VolumeDirectory {
    /// Parses `a/b/c`: no leading, trailing or doubled `/`.
    pub fn parse(rel: &str) -> Result<Self, PlanError> {
        if rel.is_empty() {
            return Err(PlanError::InvalidPath {
                path: rel.into(),
                reason: "it is empty (the root itself)",
            });
        }
        for component in rel.split('/') {
            check_component(component)?;
        }
        Self::from_checked_components(rel.split('/'))
    }

    /// Builds from components already checked with [`check_component`].
    fn from_checked_components<'a>(
        components: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, PlanError> {
        let joined = components.into_iter().collect::<Vec<_>>().join("/");
        let first = joined.split('/').next();
        if let Some((name, reason)) = RESERVED_DIRECTORIES.iter().find(|(n, _)| first == Some(*n)) {
            return Err(PlanError::InvalidComponent {
                component: (*name).into(),
                reason,
            });
        }
        if joined.is_empty() {
            return Err(PlanError::InvalidPath {
                path: joined,
                reason: "it is empty (the root itself)",
            });
        }
        if joined.len() > MAX_PATH_BYTES {
            return Err(PlanError::InvalidPath {
                path: truncate_for_message(&joined),
                reason: "it is longer than 4095 bytes",
            });
        }
        Ok(VolumeDirectory(joined))
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last component (the volume's own directory name).
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The parent directory, or `None` when the parent is the root.
    pub fn parent(&self) -> Option<VolumeDirectory> {
        self.0
            .rsplit_once('/')
            .map(|(parent, _)| VolumeDirectory(parent.to_owned()))
    }
}

impl fmt::Display for VolumeDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn truncate_for_message(s: &str) -> String {
    if s.len() <= 80 {
        return s.to_owned();
    }
    let mut end = 80;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Checks one whole component of a directory path.
fn check_component(component: &str) -> Result<(), PlanError> {
    let reason = if component.is_empty() {
        "it is empty"
    } else if component == "." || component == ".." {
        "it refers to the current or parent directory"
    } else if component.contains('/') {
        "it contains '/'"
    } else if component.contains('\0') {
        "it contains a NUL byte"
    } else if component.len() > MAX_COMPONENT_BYTES {
        "it is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(PlanError::InvalidComponent {
        component: truncate_for_message(component),
        reason,
    })
}

/// Checks one untrusted value (from the claim) before it is placed into a component.
fn check_value(field: &dyn fmt::Display, value: &str) -> Result<(), PlanError> {
    let reason = if value.is_empty() {
        "it is empty"
    } else if value == "." || value == ".." {
        "it refers to the current or parent directory"
    } else if value.contains('/') {
        "it contains '/'"
    } else if value.contains('\0') {
        "it contains a NUL byte"
    } else if value.chars().any(char::is_control) {
        "it contains a control character"
    } else if value.len() > MAX_COMPONENT_BYTES {
        "it is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(PlanError::UnsafeValue {
        field: field.to_string(),
        value: truncate_for_message(value),
        reason,
    })
}

/// Plans the directory for a claim.
///
/// Without `pathPattern`: `<namespace>-<pvcName>-<pvName>` (upstream compatible).
///
/// With `pathPattern`: each `${...}` reference is replaced by its value. Values come from the
/// claim and are untrusted: a value that is empty, `.`, `..`, contains `/`, NUL or a control
/// character, or is over 255 bytes is rejected, and each resulting component is checked
/// again as a whole (so `.${x}` with `x = "."` is rejected too). The result can therefore
/// never escape or equal the root.
///
/// **Missing label or annotation:** rejected with [`PlanError::MissingLabel`] /
/// [`PlanError::MissingAnnotation`] naming the key. Upstream substituted an empty string,
/// which silently put volumes of different claims into one shared place; here the claim
/// stays Pending until the label/annotation is added.
pub fn plan_directory(
    params: &ClassParameters,
    req: &VolumeRequest,
) -> Result<VolumeDirectory, PlanError> {
    let Some(pattern) = &params.path_pattern else {
        check_value(&"the claim's namespace", &req.namespace)?;
        check_value(&"the claim's name", &req.claim_name)?;
        check_value(&"the PV name", &req.pv_name)?;
        let name = format!("{}-{}-{}", req.namespace, req.claim_name, req.pv_name);
        check_component(&name)?;
        return VolumeDirectory::from_checked_components([name.as_str()]);
    };
    let mut components = Vec::with_capacity(pattern.components().len());
    for parts in pattern.components() {
        let mut component = String::new();
        for part in parts {
            match part {
                PatternPart::Literal(text) => component.push_str(text),
                PatternPart::Field(field) => {
                    let value = field_value(field, req)?;
                    check_value(field, value)?;
                    component.push_str(value);
                }
            }
        }
        check_component(&component)?;
        components.push(component);
    }
    VolumeDirectory::from_checked_components(components.iter().map(String::as_str))
}

fn field_value<'a>(field: &PatternField, req: &'a VolumeRequest) -> Result<&'a str, PlanError> {
    Ok(match field {
        PatternField::Namespace => &req.namespace,
        PatternField::ClaimName => &req.claim_name,
        PatternField::ClaimUid => &req.claim_uid,
        PatternField::PvName => &req.pv_name,
        PatternField::Label(key) => req
            .labels
            .get(key)
            .ok_or_else(|| PlanError::MissingLabel { key: key.clone() })?,
        PatternField::Annotation(key) => req
            .annotations
            .get(key)
            .ok_or_else(|| PlanError::MissingAnnotation { key: key.clone() })?,
    })
}

/// Base archive name for a deleted volume: `archived-<namespace>-<claim>-<pvName>`, a single
/// component at the root, whatever the template depth of `dir`.
///
/// Unique because `pvName` (`pvc-<claim uid>`) is unique, even for templates such as
/// `${.PVC.namespace}/data` where upstream's `archived-<basename>` collided. Long names are
/// truncated at a UTF-8 boundary in the namespace/claim part, keeping `pvName` intact, so
/// that the name plus a collision suffix (added by storage, see
/// [`ARCHIVE_SUFFIX_ROOM`]) fits in 255 bytes. Characters that cannot appear in a component
/// (`/`, NUL, control characters) are replaced by `_`.
pub fn archive_directory(
    dir: &VolumeDirectory,
    req_namespace: &str,
    claim_name: &str,
    pv_name: &str,
) -> VolumeDirectory {
    // The archive deliberately does not depend on `dir`: its layout may be shared by claims.
    let _ = dir;
    let budget = MAX_COMPONENT_BYTES - ARCHIVE_SUFFIX_ROOM;
    let mut pv = sanitize(pv_name);
    if pv.is_empty() {
        pv.push('_');
    }
    // A pvName this long cannot come from Kubernetes; keep its tail, which holds the uid.
    if pv.len() > budget / 2 {
        let mut start = pv.len() - budget / 2;
        while !pv.is_char_boundary(start) {
            start += 1;
        }
        pv = pv[start..].to_owned();
    }
    let middle = format!("{}-{}-", sanitize(req_namespace), sanitize(claim_name));
    let room = budget - ARCHIVE_PREFIX.len() - pv.len();
    let mut end = middle.len().min(room);
    while !middle.is_char_boundary(end) {
        end -= 1;
    }
    let name = format!("{ARCHIVE_PREFIX}{}{pv}", &middle[..end]);
    debug_assert!(check_component(&name).is_ok());
    VolumeDirectory(name)
}

/// An archive name with a collision suffix (`.1`, `.2`, ...), still one valid component.
pub fn archive_directory_with_suffix(base: &VolumeDirectory, suffix: &str) -> VolumeDirectory {
    let suffix = sanitize(suffix);
    let mut name = base.as_str().to_owned();
    let mut end = name
        .len()
        .min(MAX_COMPONENT_BYTES.saturating_sub(suffix.len() + 1));
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    name.push('.');
    name.push_str(&suffix);
    // `base` may be nested when a caller built it; keep it a valid path either way.
    VolumeDirectory::parse(&name).unwrap_or_else(|_| VolumeDirectory(format!("archived-.{suffix}")))
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '/' || c == '\0' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The export path (`NFS_PATH`) the PVs point at, normalised into components.
///
/// `pv_path` joins like Go's `filepath.Join` (so `NFS_PATH` may end with `/`), and
/// `directory_of` is its validated inverse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPath {
    configured: String,
    absolute: bool,
    components: Vec<String>,
}

impl ExportPath {
    /// Normalises `nfs_path`: empty and `.` components dropped; `..` or NUL rejected.
    pub fn new(nfs_path: &str) -> Result<Self, PlanError> {
        let invalid = |reason| PlanError::InvalidExport {
            path: nfs_path.to_owned(),
            reason,
        };
        if nfs_path.is_empty() {
            return Err(invalid("it is empty"));
        }
        if nfs_path.contains('\0') {
            return Err(invalid("it contains a NUL byte"));
        }
        let mut components = Vec::new();
        for c in nfs_path.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(invalid("it contains '..'")),
                _ => components.push(c.to_owned()),
            }
        }
        Ok(ExportPath {
            configured: nfs_path.to_owned(),
            absolute: nfs_path.starts_with('/'),
            components,
        })
    }

    /// Whether one export path is the other or lies inside it (component-wise).
    pub fn overlaps(&self, other: &ExportPath) -> bool {
        let n = self.components.len().min(other.components.len());
        self.absolute == other.absolute && self.components[..n] == other.components[..n]
    }

    /// `NFS_PATH` as configured.
    pub fn as_str(&self) -> &str {
        &self.configured
    }

    /// The PV's `spec.nfs.path` for `dir`, normalised.
    pub fn pv_path(&self, dir: &VolumeDirectory) -> String {
        let mut path = String::new();
        if self.absolute {
            path.push('/');
        }
        for c in &self.components {
            path.push_str(c);
            path.push('/');
        }
        path.push_str(dir.as_str());
        path
    }

    /// Maps a PV's `spec.nfs.path` back to the directory beneath the mounted root.
    ///
    /// Component-wise: empty and `.` components are ignored (normalisation), `..` is
    /// rejected, the export's components must match exactly, and at least one valid
    /// component must remain (the export root itself is never a volume).
    pub fn directory_of(&self, pv_nfs_path: &str) -> Result<VolumeDirectory, PlanError> {
        let outside = |reason| PlanError::OutsideExport {
            path: pv_nfs_path.to_owned(),
            export: self.configured.clone(),
            reason,
        };
        if pv_nfs_path.contains('\0') {
            return Err(outside("it contains a NUL byte"));
        }
        if pv_nfs_path.starts_with('/') != self.absolute {
            return Err(outside("one path is absolute and the other is not"));
        }
        let mut components = Vec::new();
        for c in pv_nfs_path.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(outside("it contains '..'")),
                _ => components.push(c),
            }
        }
        if components.len() < self.components.len()
            || components
                .iter()
                .zip(&self.components)
                .any(|(a, b)| *a != b.as_str())
        {
            return Err(outside("it does not start with the export path"));
        }
        let rest = &components[self.components.len()..];
        if rest.is_empty() {
            return Err(outside("it is the export root itself"));
        }
        for c in rest {
            check_component(c)?;
        }
        VolumeDirectory::from_checked_components(rest.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parameters::ClassParameters;

    fn class(pattern: Option<&str>) -> ClassParameters {
        let mut map = BTreeMap::new();
        if let Some(p) = pattern {
            map.insert("pathPattern".to_string(), p.to_string());
        }
        ClassParameters::parse(&map).unwrap()
    }

    fn request() -> VolumeRequest {
        VolumeRequest {
            namespace: "team-a".into(),
            claim_name: "data".into(),
            claim_uid: "0b1c2d3e-0000-4000-8000-000000000001".into(),
            pv_name: "pvc-0b1c2d3e-0000-4000-8000-000000000001".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            annotations: [("team".to_string(), "blue".to_string())].into(),
        }
    }

    #[test]
    fn the_staging_directory_is_never_a_volume_or_in_one_path() {
        for reserved in [".nfs-provisioner-staging", ".nfs-provisioner-staging/uid"] {
            let err = VolumeDirectory::parse(reserved).unwrap_err();
            assert!(err.to_string().contains("cloned claims"), "{err}");
        }
        assert!(VolumeDirectory::parse("a/.nfs-provisioner-staging").is_ok());
        let mut req = request();
        req.annotations
            .insert("path".into(), ".nfs-provisioner-staging".into());
        let err = plan_directory(&class(Some("${.PVC.annotations.path}/x")), &req).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
        let export = ExportPath::new("/exports").unwrap();
        assert!(
            export
                .directory_of("/exports/.nfs-provisioner-staging/abc")
                .is_err()
        );
    }

    #[test]
    fn the_journal_directory_is_never_a_volume_or_in_one_path() {
        for reserved in [
            ".nfs-provisioner-journal",
            ".nfs-provisioner-journal/x",
            ".nfs-provisioner-journal/a/b",
        ] {
            let err = VolumeDirectory::parse(reserved).unwrap_err();
            assert!(err.to_string().contains("reserved"), "{err}");
        }
        // Only the first component is reserved.
        assert!(VolumeDirectory::parse("a/.nfs-provisioner-journal").is_ok());
        assert!(VolumeDirectory::parse(".nfs-provisioner-journal-x").is_ok());

        let mut req = request();
        req.annotations
            .insert("path".into(), ".nfs-provisioner-journal".into());
        for pattern in [
            "${.PVC.annotations.path}",
            "${.PVC.annotations.path}/${.PVC.name}",
        ] {
            let err = plan_directory(&class(Some(pattern)), &req).unwrap_err();
            assert!(err.to_string().contains("reserved"), "{pattern}: {err}");
        }
        let export = ExportPath::new("/exports").unwrap();
        assert!(
            export
                .directory_of("/exports/.nfs-provisioner-journal/abc")
                .is_err()
        );
        let base = VolumeDirectory::parse("archived-x").unwrap();
        assert!(
            archive_directory_with_suffix(&base, "1")
                .as_str()
                .starts_with("archived-")
        );
    }

    #[test]
    fn default_name_is_upstream_compatible() {
        let dir = plan_directory(&class(None), &request()).unwrap();
        assert_eq!(
            dir.as_str(),
            "team-a-data-pvc-0b1c2d3e-0000-4000-8000-000000000001"
        );
        assert_eq!(dir.components().count(), 1);
    }

    #[test]
    fn pattern_expansion() {
        let req = request();
        let cases = [
            ("${.PVC.namespace}/${.PVC.name}", "team-a/data"),
            ("/${.PVC.namespace}//${.PVC.name}/", "team-a/data"),
            ("${.PVC.labels.app}-${.PVC.annotations.team}", "web-blue"),
            ("${.PVC.uid}", "0b1c2d3e-0000-4000-8000-000000000001"),
            (
                "x/${.PV.name}",
                "x/pvc-0b1c2d3e-0000-4000-8000-000000000001",
            ),
            ("static", "static"),
            ("a$b/{c}", "a$b/{c}"),
        ];
        for (pattern, want) in cases {
            assert_eq!(
                plan_directory(&class(Some(pattern)), &req)
                    .unwrap()
                    .as_str(),
                want,
                "{pattern}"
            );
        }
    }

    #[test]
    fn label_keys_with_slash() {
        let mut req = request();
        req.labels
            .insert("app.kubernetes.io/name".into(), "shop".into());
        let dir = plan_directory(
            &class(Some("${.PVC.labels.app.kubernetes.io/name}/${.PVC.name}")),
            &req,
        )
        .unwrap();
        assert_eq!(dir.as_str(), "shop/data");
    }

    #[test]
    fn missing_label_or_annotation_is_rejected_naming_the_key() {
        let err = plan_directory(&class(Some("${.PVC.labels.tier}")), &request()).unwrap_err();
        assert_eq!(err, PlanError::MissingLabel { key: "tier".into() });
        assert!(err.to_string().contains("\"tier\""), "{err}");
        let err =
            plan_directory(&class(Some("${.PVC.annotations.owner}")), &request()).unwrap_err();
        assert_eq!(
            err,
            PlanError::MissingAnnotation {
                key: "owner".into()
            }
        );
        assert!(err.to_string().contains("annotation \"owner\""), "{err}");
    }

    #[test]
    fn unsafe_values_are_rejected_naming_the_field() {
        let bad_values = ["", ".", "..", "a/b", "/", "a\0b", "a\nb", &"x".repeat(256)];
        for bad in bad_values {
            let mut req = request();
            req.labels.insert("app".into(), bad.to_string());
            let err = plan_directory(&class(Some("${.PVC.labels.app}")), &req).unwrap_err();
            assert!(
                err.to_string().contains("${.PVC.labels.app}"),
                "{bad:?}: {err}"
            );
        }
        let mut req = request();
        req.namespace = "..".into();
        let err = plan_directory(&class(None), &req).unwrap_err();
        assert!(err.to_string().contains("namespace"), "{err}");
    }

    #[test]
    fn component_rechecked_after_concatenation() {
        let mut req = request();
        req.labels.insert("app".into(), ".".into());
        // "." alone is rejected as a value; concatenation with a literal "." must be too.
        assert!(plan_directory(&class(Some(".${.PVC.labels.app}")), &req).is_err());
        req.labels.insert("app".into(), "x".repeat(200));
        let err =
            plan_directory(&class(Some("${.PVC.labels.app}${.PVC.labels.app}")), &req).unwrap_err();
        assert!(matches!(err, PlanError::InvalidComponent { .. }), "{err}");
    }

    #[test]
    fn whole_path_limit() {
        let mut req = request();
        req.labels.insert("app".into(), "y".repeat(255));
        let pattern = vec!["${.PVC.labels.app}"; 17].join("/");
        let err = plan_directory(&class(Some(&pattern)), &req).unwrap_err();
        assert!(err.to_string().contains("4095"), "{err}");
        let pattern = vec!["${.PVC.labels.app}"; 15].join("/");
        assert!(plan_directory(&class(Some(&pattern)), &req).is_ok());
    }

    #[test]
    fn volume_directory_parse() {
        assert_eq!(VolumeDirectory::parse("a/b").unwrap().as_str(), "a/b");
        assert_eq!(VolumeDirectory::parse("a/b").unwrap().name(), "b");
        assert_eq!(
            VolumeDirectory::parse("a/b/c")
                .unwrap()
                .parent()
                .unwrap()
                .as_str(),
            "a/b"
        );
        assert_eq!(VolumeDirectory::parse("a").unwrap().parent(), None);
        for bad in [
            "", "/", "/a", "a/", "a//b", ".", "..", "a/../b", "a/./b", "a\0",
        ] {
            assert!(VolumeDirectory::parse(bad).is_err(), "{bad:?}");
        }
        assert!(VolumeDirectory::parse(&"a".repeat(256)).is_err());
        assert!(VolumeDirectory::parse(&"a".repeat(255)).is_ok());
        let long = vec!["b".repeat(255); 16].join("/");
        assert_eq!(long.len(), 4095);
        assert!(VolumeDirectory::parse(&long).is_ok());
        let long = vec!["b".repeat(255); 17].join("/");
        assert!(VolumeDirectory::parse(&long).is_err());
    }

    #[test]
    fn archive_names_are_unique_for_shared_layouts() {
        let dir = VolumeDirectory::parse("team-a/data").unwrap();
        let a = archive_directory(&dir, "team-a", "data", "pvc-1111");
        let b = archive_directory(&dir, "team-a", "data", "pvc-2222");
        assert_ne!(a, b);
        assert_eq!(a.as_str(), "archived-team-a-data-pvc-1111");
        assert_eq!(a.components().count(), 1);
    }

    #[test]
    fn archive_names_truncate_keeping_pv_name() {
        let dir = VolumeDirectory::parse("x").unwrap();
        let ns = "n".repeat(63);
        let claim = "c".repeat(253);
        let pv = "pvc-0b1c2d3e-0000-4000-8000-000000000001";
        let a = archive_directory(&dir, &ns, &claim, pv);
        assert!(a.as_str().len() <= MAX_COMPONENT_BYTES - ARCHIVE_SUFFIX_ROOM);
        assert!(a.as_str().starts_with("archived-nnn"));
        assert!(a.as_str().ends_with(pv));
        let b = archive_directory(
            &dir,
            &ns,
            &claim,
            "pvc-0b1c2d3e-0000-4000-8000-000000000002",
        );
        assert_ne!(a, b);
        // Multi-byte characters are cut at a boundary.
        let a = archive_directory(&dir, &"é".repeat(200), "c", pv);
        assert!(VolumeDirectory::parse(a.as_str()).is_ok());
        // Hostile input still gives one valid component.
        let a = archive_directory(&dir, "../..", "a/b", "\0");
        assert_eq!(a.components().count(), 1);
        assert!(VolumeDirectory::parse(a.as_str()).is_ok());
        let a = archive_directory(&dir, "", "", &"p".repeat(1000));
        assert!(VolumeDirectory::parse(a.as_str()).is_ok());
    }

    #[test]
    fn archive_suffix_stays_valid() {
        let dir = VolumeDirectory::parse("x").unwrap();
        let base = archive_directory(&dir, &"n".repeat(63), &"c".repeat(253), "pvc-1");
        let s = archive_directory_with_suffix(&base, "17");
        assert!(s.as_str().ends_with(".17"));
        assert!(s.as_str().len() <= MAX_COMPONENT_BYTES);
        let s = archive_directory_with_suffix(&base, "20260101T000000.123456789Z");
        assert!(s.as_str().len() <= MAX_COMPONENT_BYTES);
        assert_ne!(archive_directory_with_suffix(&base, "1"), base);
    }

    #[test]
    fn export_path_mapping() {
        let dir = VolumeDirectory::parse("ns/data").unwrap();
        for export in ["/exports/k8s", "/exports/k8s/", "//exports/./k8s//"] {
            let e = ExportPath::new(export).unwrap();
            assert_eq!(e.pv_path(&dir), "/exports/k8s/ns/data", "{export}");
            assert_eq!(e.directory_of("/exports/k8s/ns/data").unwrap(), dir);
            assert_eq!(e.directory_of("/exports/k8s//ns/./data/").unwrap(), dir);
        }
        let root = ExportPath::new("/").unwrap();
        assert_eq!(root.pv_path(&dir), "/ns/data");
        assert_eq!(root.directory_of("/ns/data").unwrap(), dir);
        assert!(root.directory_of("/").is_err());
        let rel = ExportPath::new("exports").unwrap();
        assert_eq!(rel.pv_path(&dir), "exports/ns/data");
        assert_eq!(rel.directory_of("exports/ns/data").unwrap(), dir);
    }

    #[test]
    fn export_path_reverse_mapping_rejects_outside() {
        let e = ExportPath::new("/exports/k8s").unwrap();
        for bad in [
            "/exports/k8s",
            "/exports/k8s/",
            "/exports/k8s/.",
            "/exports/k8s2/x",
            "/exports/k8sx",
            "/exports/k8s/../etc",
            "/exports/k8s/a/../../etc",
            "/exports/k8s/..",
            "/exports",
            "/etc/passwd",
            "exports/k8s/x",
            "",
            "/exports/k8s/a\0b",
        ] {
            assert!(e.directory_of(bad).is_err(), "{bad:?}");
        }
        let long = format!("/exports/k8s/{}", "a".repeat(256));
        assert!(e.directory_of(&long).is_err());
    }

    #[test]
    fn export_path_rejects_bad_configuration() {
        assert!(ExportPath::new("").is_err());
        assert!(ExportPath::new("/a/../b").is_err());
        assert!(ExportPath::new("/a\0").is_err());
    }

    #[test]
    fn mapping_round_trips_for_planned_dirs() {
        let e = ExportPath::new("/srv/nfs/").unwrap();
        for pattern in [None, Some("${.PVC.namespace}/${.PVC.name}"), Some("a/b/c")] {
            let dir = plan_directory(&class(pattern), &request()).unwrap();
            assert_eq!(e.directory_of(&e.pv_path(&dir)).unwrap(), dir);
        }
    }
}
