//! StorageClass parameters and directory permissions, parsed and validated in one place.
//!
//! Accepted StorageClass parameters (anything else is an error, never ignored):
//!
//! | key               | values                                   | meaning |
//! |-------------------|------------------------------------------|---------|
//! | `onDelete`        | `delete`, `retain`, `archive`            | what happens to the directory when the PV is deleted |
//! | `archiveOnDelete` | a Go boolean, see [`go_bool`]            | upstream switch, consulted only when `onDelete` is absent |
//! | `pathPattern`     | template, see [`PathPattern`]            | directory layout beneath the root |
//! | `directoryMode`   | octal, e.g. `0770` (max `01777`)         | mode of directories the provisioner creates |
//! | `directoryUid`    | decimal uid                              | owner of directories the provisioner creates |
//! | `directoryGid`    | decimal gid                              | group of directories the provisioner creates |
//!
//! Enum values are matched ASCII case-insensitively; booleans are read exactly as Go's
//! `strconv.ParseBool` reads them (upstream classes keep working); numbers are strict.

use std::collections::BTreeMap;
use std::fmt;

pub const KEY_ON_DELETE: &str = "onDelete";
pub const KEY_ARCHIVE_ON_DELETE: &str = "archiveOnDelete";
pub const KEY_PATH_PATTERN: &str = "pathPattern";
pub const KEY_DIRECTORY_MODE: &str = "directoryMode";
pub const KEY_DIRECTORY_UID: &str = "directoryUid";
pub const KEY_DIRECTORY_GID: &str = "directoryGid";
/// Which of the provisioner's NFS exports the class's volumes live on (by name; absent: the
/// default export).
pub const KEY_EXPORT: &str = "export";

/// Every StorageClass parameter key this provisioner accepts.
pub const ACCEPTED_KEYS: &[&str] = &[
    KEY_ON_DELETE,
    KEY_ARCHIVE_ON_DELETE,
    KEY_PATH_PATTERN,
    KEY_DIRECTORY_MODE,
    KEY_DIRECTORY_UID,
    KEY_DIRECTORY_GID,
    KEY_EXPORT,
];

/// PVC annotations (upstream names) that override the directory mode/owner for one claim.
pub const ANNOTATION_DIRECTORY_MODE: &str = "k8s-sigs.io/nfs-directory-mode";
pub const ANNOTATION_DIRECTORY_UID: &str = "k8s-sigs.io/nfs-directory-uid";
pub const ANNOTATION_DIRECTORY_GID: &str = "k8s-sigs.io/nfs-directory-gid";

/// Upstream environment variables for the provisioner-wide defaults.
pub const ENV_DEFAULT_MODE: &str = "NFS_DEFAULT_MODE";
pub const ENV_DEFAULT_UID: &str = "NFS_DEFAULT_UID";
pub const ENV_DEFAULT_GID: &str = "NFS_DEFAULT_GID";

/// Default mode of created directories, as upstream (world-writable so any pod uid can write).
pub const DEFAULT_DIRECTORY_MODE: u32 = 0o777;

const ACCEPTED_MODE: &str = "an octal mode of permission bits 0000..=0777, optionally with the sticky bit (e.g. 0770, 1777); setuid/setgid are refused";
const ACCEPTED_ID: &str = "a decimal id 0..=4294967294";
/// Every spelling Go's `strconv.ParseBool` accepts, for messages.
pub const GO_BOOL_ACCEPTED: &str = "1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False";
const ACCEPTED_ON_DELETE: &str = "delete, retain, archive";
const ACCEPTED_PATTERN: &str = "a path template of literal text and ${.PVC.namespace}, ${.PVC.name}, ${.PVC.uid}, ${.PVC.labels.<key>}, ${.PVC.annotations.<key>}, ${.PV.name}, with no '.' or '..' components";

/// Where a rejected setting came from; used in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingSource {
    ClassParameter,
    ClaimAnnotation,
    Environment,
}

impl fmt::Display for SettingSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SettingSource::ClassParameter => "StorageClass parameter",
            SettingSource::ClaimAnnotation => "PVC annotation",
            SettingSource::Environment => "environment variable",
        })
    }
}

/// A rejected parameter, annotation or environment value.
///
/// Display names the key, the offending value and the accepted values, so it can be used
/// verbatim in a Kubernetes Warning event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterError {
    source: SettingSource,
    key: String,
    value: String,
    /// `None` for an unknown key.
    reason: Option<String>,
    accepted: String,
}

impl ParameterError {
    fn invalid(
        source: SettingSource,
        key: &str,
        value: &str,
        reason: impl Into<String>,
        accepted: &str,
    ) -> Self {
        ParameterError {
            source,
            key: key.to_owned(),
            value: value.to_owned(),
            reason: Some(reason.into()),
            accepted: accepted.to_owned(),
        }
    }

    fn unknown_key(key: &str, value: &str) -> Self {
        ParameterError {
            source: SettingSource::ClassParameter,
            key: key.to_owned(),
            value: value.to_owned(),
            reason: None,
            accepted: ACCEPTED_KEYS.join(", "),
        }
    }

    /// The parameter key, annotation name or environment variable at fault.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The rejected value.
    pub fn value(&self) -> &str {
        &self.value
    }

    pub fn source(&self) -> SettingSource {
        self.source
    }

    /// True when the key itself is not a known parameter.
    pub fn is_unknown_key(&self) -> bool {
        self.reason.is_none()
    }
}

impl fmt::Display for ParameterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            None => write!(
                f,
                "unknown {} {:?} (value {:?}); accepted parameters: {}",
                self.source, self.key, self.value, self.accepted
            ),
            Some(reason) => write!(
                f,
                "{} {:?} has invalid value {:?}: {}; accepted: {}",
                self.source, self.key, self.value, reason, self.accepted
            ),
        }
    }
}

impl std::error::Error for ParameterError {}

/// What happens to a volume's directory when its PV is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnDelete {
    /// Remove the directory tree.
    Delete,
    /// Keep the directory where it is.
    Retain,
    /// Rename the directory to a unique archive name at the root.
    Archive,
}

impl OnDelete {
    /// Stable lowercase name; `OnDelete::parse(x.as_str()) == Ok(x)`. Stored in a PV annotation.
    pub fn as_str(&self) -> &'static str {
        match self {
            OnDelete::Delete => "delete",
            OnDelete::Retain => "retain",
            OnDelete::Archive => "archive",
        }
    }

    /// Parses `delete`, `retain` or `archive` (ASCII case-insensitive).
    pub fn parse(s: &str) -> Result<Self, ParameterError> {
        match s.to_ascii_lowercase().as_str() {
            "delete" => Ok(OnDelete::Delete),
            "retain" => Ok(OnDelete::Retain),
            "archive" => Ok(OnDelete::Archive),
            _ => Err(ParameterError::invalid(
                SettingSource::ClassParameter,
                KEY_ON_DELETE,
                s,
                "not a known policy",
                ACCEPTED_ON_DELETE,
            )),
        }
    }
}

impl fmt::Display for OnDelete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value a path template can refer to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PatternField {
    /// `${.PVC.namespace}`
    Namespace,
    /// `${.PVC.name}`
    ClaimName,
    /// `${.PVC.uid}`
    ClaimUid,
    /// `${.PV.name}`
    PvName,
    /// `${.PVC.labels.<key>}`
    Label(String),
    /// `${.PVC.annotations.<key>}`
    Annotation(String),
}

impl fmt::Display for PatternField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternField::Namespace => f.write_str("${.PVC.namespace}"),
            PatternField::ClaimName => f.write_str("${.PVC.name}"),
            PatternField::ClaimUid => f.write_str("${.PVC.uid}"),
            PatternField::PvName => f.write_str("${.PV.name}"),
            PatternField::Label(k) => write!(f, "${{.PVC.labels.{k}}}"),
            PatternField::Annotation(k) => write!(f, "${{.PVC.annotations.{k}}}"),
        }
    }
}

/// One piece of a path component in a template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PatternPart {
    Literal(String),
    Field(PatternField),
}

/// A parsed `pathPattern`.
///
/// The template is split into path components on `/` found in literal text (never inside a
/// `${...}` reference, so label keys like `app.kubernetes.io/name` work). Empty components
/// (leading, trailing or doubled `/`) are dropped, as upstream's `filepath.Join` did.
/// A component made only of literal text may not be `.` or `..`. Each reference expands to
/// exactly one value that must stay within its component; see
/// [`crate::planning::plan_directory`] for the rules applied to expanded values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathPattern {
    source: String,
    components: Vec<Vec<PatternPart>>,
}

impl PathPattern {
    /// Parses a template; errors name the `pathPattern` key.
    pub fn parse(source: &str) -> Result<Self, ParameterError> {
        let fail = |reason: String| {
            ParameterError::invalid(
                SettingSource::ClassParameter,
                KEY_PATH_PATTERN,
                source,
                reason,
                ACCEPTED_PATTERN,
            )
        };
        if source.contains('\0') {
            return Err(fail("contains a NUL byte".into()));
        }
        let mut components: Vec<Vec<PatternPart>> = Vec::new();
        let mut current: Vec<PatternPart> = Vec::new();
        let mut literal = String::new();
        let mut rest = source;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("${") {
                let end = after
                    .find('}')
                    .ok_or_else(|| fail("a \"${\" has no closing \"}\"".into()))?;
                let field = parse_field(&after[..end]).map_err(fail)?;
                if !literal.is_empty() {
                    current.push(PatternPart::Literal(std::mem::take(&mut literal)));
                }
                current.push(PatternPart::Field(field));
                rest = &after[end + 1..];
                continue;
            }
            let ch = rest.chars().next().expect("rest is not empty");
            rest = &rest[ch.len_utf8()..];
            if ch == '/' {
                if !literal.is_empty() {
                    current.push(PatternPart::Literal(std::mem::take(&mut literal)));
                }
                if !current.is_empty() {
                    components.push(std::mem::take(&mut current));
                }
            } else {
                literal.push(ch);
            }
        }
        if !literal.is_empty() {
            current.push(PatternPart::Literal(literal));
        }
        if !current.is_empty() {
            components.push(current);
        }
        if components.is_empty() {
            return Err(fail(
                "the template has no path component (omit pathPattern for the default <namespace>-<pvcName>-<pvName>)".into(),
            ));
        }
        for component in &components {
            if let [PatternPart::Literal(text)] = component.as_slice() {
                if text == "." || text == ".." {
                    return Err(fail(format!(
                        "the component {text:?} is not allowed; the template must stay beneath the root"
                    )));
                }
                if text.len() > 255 {
                    return Err(fail("a literal component is longer than 255 bytes".into()));
                }
            }
        }
        Ok(PathPattern {
            source: source.to_owned(),
            components,
        })
    }

    /// The template as written in the StorageClass.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Parsed path components, each a sequence of literal text and references.
    pub fn components(&self) -> &[Vec<PatternPart>] {
        &self.components
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn parse_field(inner: &str) -> Result<PatternField, String> {
    let field = match inner {
        ".PVC.namespace" => PatternField::Namespace,
        ".PVC.name" => PatternField::ClaimName,
        ".PVC.uid" => PatternField::ClaimUid,
        ".PV.name" => PatternField::PvName,
        _ => {
            if let Some(key) = inner.strip_prefix(".PVC.labels.") {
                PatternField::Label(check_meta_key(inner, key)?.to_owned())
            } else if let Some(key) = inner.strip_prefix(".PVC.annotations.") {
                PatternField::Annotation(check_meta_key(inner, key)?.to_owned())
            } else {
                return Err(format!("unknown reference \"${{{inner}}}\""));
            }
        }
    };
    Ok(field)
}

fn check_meta_key<'a>(inner: &str, key: &'a str) -> Result<&'a str, String> {
    if key.is_empty() {
        return Err(format!("reference \"${{{inner}}}\" has an empty key"));
    }
    Ok(key)
}

/// Validated StorageClass parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassParameters {
    pub on_delete: OnDelete,
    pub path_pattern: Option<PathPattern>,
    pub directory_mode: Option<u32>,
    pub directory_uid: Option<u32>,
    pub directory_gid: Option<u32>,
    /// The export named by `export` (`None`: the default export).
    pub export: Option<String>,
    /// Non-fatal remarks about the parameters (e.g. `archiveOnDelete` overridden by
    /// `onDelete`), suitable for a Normal/Warning event on the claim.
    pub notes: Vec<String>,
}

impl Default for ClassParameters {
    /// No parameters at all: upstream default, archive on delete.
    fn default() -> Self {
        ClassParameters {
            on_delete: OnDelete::Archive,
            path_pattern: None,
            directory_mode: None,
            directory_uid: None,
            directory_gid: None,
            export: None,
            notes: Vec::new(),
        }
    }
}

impl ClassParameters {
    /// Parses StorageClass `parameters`.
    ///
    /// Delete policy, compatible with upstream:
    /// - `onDelete` given: it decides (`delete`, `retain` or `archive`).
    /// - else `archiveOnDelete: "false"`: delete; `"true"` or absent: archive (upstream default).
    /// - both given: `onDelete` wins. If they disagree (`delete`+`true`, `archive`+`false`,
    ///   or `retain` with any `archiveOnDelete`) a note is recorded in [`Self::notes`] and
    ///   logged; it is not an error, so existing classes keep working.
    pub fn parse(params: &BTreeMap<String, String>) -> Result<Self, ParameterError> {
        let mut parsed = ClassParameters::default();
        let mut on_delete = None;
        let mut archive_on_delete = None;
        for (key, value) in params {
            match key.as_str() {
                KEY_ON_DELETE => on_delete = Some(OnDelete::parse(value)?),
                KEY_ARCHIVE_ON_DELETE => {
                    archive_on_delete = Some(parse_bool(SettingSource::ClassParameter, key, value)?)
                }
                KEY_PATH_PATTERN => parsed.path_pattern = Some(PathPattern::parse(value)?),
                KEY_DIRECTORY_MODE => {
                    parsed.directory_mode =
                        Some(parse_mode(SettingSource::ClassParameter, key, value)?)
                }
                KEY_DIRECTORY_UID => {
                    parsed.directory_uid =
                        Some(parse_id(SettingSource::ClassParameter, key, value)?)
                }
                KEY_DIRECTORY_GID => {
                    parsed.directory_gid =
                        Some(parse_id(SettingSource::ClassParameter, key, value)?)
                }
                KEY_EXPORT => {
                    crate::exports_file::validate_name(value).map_err(|reason| {
                        ParameterError::invalid(
                            SettingSource::ClassParameter,
                            key,
                            value,
                            reason,
                            "the name of an export this provisioner serves",
                        )
                    })?;
                    parsed.export = Some(value.clone());
                }
                _ => return Err(ParameterError::unknown_key(key, value)),
            }
        }
        parsed.on_delete = match (on_delete, archive_on_delete) {
            (Some(policy), None) => policy,
            (Some(policy), Some(archive)) => {
                let agrees = matches!(
                    (policy, archive),
                    (OnDelete::Delete, false) | (OnDelete::Archive, true)
                );
                if !agrees {
                    let note = format!(
                        "{KEY_ON_DELETE}={policy} takes precedence over {KEY_ARCHIVE_ON_DELETE}={archive}"
                    );
                    tracing::warn!(%note, "conflicting StorageClass delete parameters");
                    parsed.notes.push(note);
                }
                policy
            }
            (None, Some(false)) => OnDelete::Delete,
            (None, Some(true)) | (None, None) => OnDelete::Archive,
        };
        Ok(parsed)
    }
}

/// A boolean exactly as Go's `strconv.ParseBool` reads it, nothing more: the one parser
/// of booleans for class parameters and environment settings alike.
pub fn go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn parse_bool(source: SettingSource, key: &str, value: &str) -> Result<bool, ParameterError> {
    go_bool(value).ok_or_else(|| {
        ParameterError::invalid(source, key, value, "not a boolean", GO_BOOL_ACCEPTED)
    })
}

/// Octal directory mode: permission bits plus optionally sticky; setuid/setgid refused.
pub fn parse_mode(source: SettingSource, key: &str, value: &str) -> Result<u32, ParameterError> {
    let fail = |reason: &str| ParameterError::invalid(source, key, value, reason, ACCEPTED_MODE);
    if value.is_empty() || value.len() > 5 || !value.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(fail("not an octal number of at most 5 digits"));
    }
    let mode = u32::from_str_radix(value, 8).map_err(|_| fail("not an octal number"))?;
    if mode & 0o6000 != 0 {
        return Err(fail("setuid/setgid bits are not allowed"));
    }
    if mode > 0o1777 {
        return Err(fail("only permission bits and the sticky bit are allowed"));
    }
    Ok(mode)
}

/// Decimal uid/gid. `4294967295` is refused: to chown(2) it means "leave unchanged".
pub fn parse_id(source: SettingSource, key: &str, value: &str) -> Result<u32, ParameterError> {
    let fail = |reason: &str| ParameterError::invalid(source, key, value, reason, ACCEPTED_ID);
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail("not a decimal number"));
    }
    match value.parse::<u32>() {
        Ok(id) if id != u32::MAX => Ok(id),
        _ => Err(fail("out of range")),
    }
}

/// Mode and owner applied to directories the provisioner creates (never to existing ones).
///
/// Precedence, lowest to highest:
/// 1. provisioner defaults (`NFS_DEFAULT_MODE`/`NFS_DEFAULT_UID`/`NFS_DEFAULT_GID`, mode 0777
///    when unset; uid/gid unset means "whoever the provisioner runs as"),
/// 2. StorageClass parameters `directoryMode`/`directoryUid`/`directoryGid`,
/// 3. PVC annotations `k8s-sigs.io/nfs-directory-mode|uid|gid`.
///
/// All three levels use the same validation; a bad annotation is an error naming it.
/// Template parents created for a claim take levels 1 and 2 only
/// ([`DirectoryPermissions::resolve_parents`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryPermissions {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Default for DirectoryPermissions {
    fn default() -> Self {
        DirectoryPermissions {
            mode: DEFAULT_DIRECTORY_MODE,
            uid: None,
            gid: None,
        }
    }
}

impl DirectoryPermissions {
    /// Provisioner-wide defaults from the upstream environment values (each optional).
    pub fn from_env_values(
        mode: Option<&str>,
        uid: Option<&str>,
        gid: Option<&str>,
    ) -> Result<Self, ParameterError> {
        let env = SettingSource::Environment;
        Ok(DirectoryPermissions {
            mode: match mode {
                Some(v) => parse_mode(env, ENV_DEFAULT_MODE, v)?,
                None => DEFAULT_DIRECTORY_MODE,
            },
            uid: uid.map(|v| parse_id(env, ENV_DEFAULT_UID, v)).transpose()?,
            gid: gid.map(|v| parse_id(env, ENV_DEFAULT_GID, v)).transpose()?,
        })
    }

    /// Merges defaults < class parameters < claim annotations (see the type docs): the
    /// permissions of a claim's own volume directory.
    pub fn resolve(
        defaults: &DirectoryPermissions,
        class: &ClassParameters,
        claim_annotations: &BTreeMap<String, String>,
    ) -> Result<Self, ParameterError> {
        let claim = SettingSource::ClaimAnnotation;
        let mut perms = Self::resolve_parents(defaults, class);
        if let Some(v) = claim_annotations.get(ANNOTATION_DIRECTORY_MODE) {
            perms.mode = parse_mode(claim, ANNOTATION_DIRECTORY_MODE, v)?;
        }
        if let Some(v) = claim_annotations.get(ANNOTATION_DIRECTORY_UID) {
            perms.uid = Some(parse_id(claim, ANNOTATION_DIRECTORY_UID, v)?);
        }
        if let Some(v) = claim_annotations.get(ANNOTATION_DIRECTORY_GID) {
            perms.gid = Some(parse_id(claim, ANNOTATION_DIRECTORY_GID, v)?);
        }
        Ok(perms)
    }

    /// Merges defaults < class parameters, never claim annotations: the permissions of
    /// template parents the provisioner creates (`tier/` in `${.PVC.labels.tier}/...`).
    /// A parent is shared with other claims, so no single claim may choose its mode or owner.
    pub fn resolve_parents(defaults: &DirectoryPermissions, class: &ClassParameters) -> Self {
        let mut perms = *defaults;
        if let Some(mode) = class.directory_mode {
            perms.mode = mode;
        }
        if let Some(uid) = class.directory_uid {
            perms.uid = Some(uid);
        }
        if let Some(gid) = class.directory_gid {
            perms.gid = Some(gid);
        }
        perms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<ClassParameters, ParameterError> {
        ClassParameters::parse(&params(pairs))
    }

    #[test]
    fn empty_parameters_archive_by_default() {
        let p = parse(&[]).unwrap();
        assert_eq!(p.on_delete, OnDelete::Archive);
        assert_eq!(p.path_pattern, None);
        assert_eq!(p.directory_mode, None);
        assert!(p.notes.is_empty());
    }

    #[test]
    fn on_delete_values() {
        for (v, want) in [
            ("delete", OnDelete::Delete),
            ("retain", OnDelete::Retain),
            ("archive", OnDelete::Archive),
            ("Delete", OnDelete::Delete),
            ("RETAIN", OnDelete::Retain),
        ] {
            assert_eq!(parse(&[("onDelete", v)]).unwrap().on_delete, want, "{v}");
        }
    }

    #[test]
    fn on_delete_round_trips() {
        for p in [OnDelete::Delete, OnDelete::Retain, OnDelete::Archive] {
            assert_eq!(OnDelete::parse(p.as_str()).unwrap(), p);
            assert_eq!(p.to_string(), p.as_str());
        }
    }

    #[test]
    fn on_delete_invalid_values_name_key_and_choices() {
        for bad in ["", "remove", "true", " delete", "delete ", "archived"] {
            let err = parse(&[("onDelete", bad)]).unwrap_err();
            assert_eq!(err.key(), "onDelete");
            assert_eq!(err.value(), bad);
            let msg = err.to_string();
            assert!(msg.contains("\"onDelete\""), "{msg}");
            assert!(msg.contains("delete, retain, archive"), "{msg}");
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
        }
    }

    #[test]
    fn archive_on_delete_alone() {
        assert_eq!(
            parse(&[("archiveOnDelete", "false")]).unwrap().on_delete,
            OnDelete::Delete
        );
        assert_eq!(
            parse(&[("archiveOnDelete", "true")]).unwrap().on_delete,
            OnDelete::Archive
        );
    }

    #[test]
    fn archive_on_delete_accepts_every_go_boolean() {
        for v in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(
                parse(&[("archiveOnDelete", v)]).unwrap().on_delete,
                OnDelete::Archive,
                "{v}"
            );
        }
        for v in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(
                parse(&[("archiveOnDelete", v)]).unwrap().on_delete,
                OnDelete::Delete,
                "{v}"
            );
        }
    }

    #[test]
    fn archive_on_delete_invalid_values() {
        for bad in [
            "", "yes", "no", "y", "n", "on", "off", "tRuE", "fALSE", "TRue", "2", "01", "-1",
            "falsey", " true", "true ", "\ttrue", "\u{0}",
        ] {
            let err = parse(&[("archiveOnDelete", bad)]).unwrap_err();
            assert_eq!(err.key(), "archiveOnDelete");
            assert_eq!(err.value(), bad);
            let msg = err.to_string();
            assert!(msg.contains("\"archiveOnDelete\""), "{msg}");
            assert!(
                msg.contains("accepted: 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False"),
                "{msg}"
            );
        }
    }

    #[test]
    fn on_delete_wins_over_archive_on_delete_with_note() {
        let p = parse(&[("onDelete", "delete"), ("archiveOnDelete", "true")]).unwrap();
        assert_eq!(p.on_delete, OnDelete::Delete);
        assert_eq!(p.notes.len(), 1);
        assert!(p.notes[0].contains("onDelete=delete"), "{:?}", p.notes);

        let p = parse(&[("onDelete", "archive"), ("archiveOnDelete", "false")]).unwrap();
        assert_eq!(p.on_delete, OnDelete::Archive);
        assert_eq!(p.notes.len(), 1);

        let p = parse(&[("onDelete", "retain"), ("archiveOnDelete", "false")]).unwrap();
        assert_eq!(p.on_delete, OnDelete::Retain);
        assert_eq!(p.notes.len(), 1);

        // Agreeing pairs carry no note.
        let p = parse(&[("onDelete", "delete"), ("archiveOnDelete", "false")]).unwrap();
        assert!(p.notes.is_empty());
        let p = parse(&[("onDelete", "archive"), ("archiveOnDelete", "true")]).unwrap();
        assert!(p.notes.is_empty());
    }

    #[test]
    fn unknown_key_is_an_error_listing_accepted_keys() {
        let err = parse(&[("onDelete", "delete"), ("archiveOndelete", "true")]).unwrap_err();
        assert_eq!(err.key(), "archiveOndelete");
        assert!(err.is_unknown_key());
        let msg = err.to_string();
        assert!(
            msg.contains("unknown StorageClass parameter \"archiveOndelete\""),
            "{msg}"
        );
        for key in ACCEPTED_KEYS {
            assert!(msg.contains(key), "{msg}");
        }
    }

    #[test]
    fn directory_mode_values() {
        for (v, want) in [
            ("0777", 0o777),
            ("777", 0o777),
            ("0770", 0o770),
            ("0", 0),
            ("1777", 0o1777),
            ("01777", 0o1777),
            ("0000", 0),
        ] {
            assert_eq!(
                parse(&[("directoryMode", v)]).unwrap().directory_mode,
                Some(want),
                "{v}"
            );
        }
    }

    #[test]
    fn directory_mode_invalid_values() {
        for (bad, why) in [
            ("", "octal"),
            ("0x1ff", "octal"),
            ("0o770", "octal"),
            ("778", "octal"),
            ("-777", "octal"),
            ("rwxrwxrwx", "octal"),
            ("4777", "setuid"),
            ("2770", "setuid/setgid"),
            ("6777", "setuid"),
            ("7777", "setuid"),
            ("000777", "octal"),
            (" 777", "octal"),
        ] {
            let err = parse(&[("directoryMode", bad)]).unwrap_err();
            assert_eq!(err.key(), "directoryMode");
            let msg = err.to_string();
            assert!(msg.contains(why), "{bad}: {msg}");
            assert!(msg.contains("accepted: an octal mode"), "{msg}");
        }
    }

    #[test]
    fn directory_ids() {
        let p = parse(&[("directoryUid", "1000"), ("directoryGid", "0")]).unwrap();
        assert_eq!(p.directory_uid, Some(1000));
        assert_eq!(p.directory_gid, Some(0));
        for key in ["directoryUid", "directoryGid"] {
            for bad in [
                "",
                "-1",
                "+5",
                "1.0",
                "abc",
                "4294967295",
                "4294967296",
                " 1",
            ] {
                let err = parse(&[(key, bad)]).unwrap_err();
                assert_eq!(err.key(), key);
                assert!(err.to_string().contains("decimal id"), "{err}");
            }
        }
        assert_eq!(
            parse(&[("directoryUid", "4294967294")])
                .unwrap()
                .directory_uid,
            Some(4294967294)
        );
    }

    #[test]
    fn path_pattern_parses_all_fields() {
        let p = PathPattern::parse(
            "${.PVC.namespace}/${.PVC.name}-${.PVC.uid}/${.PV.name}/${.PVC.labels.app.kubernetes.io/name}/x${.PVC.annotations.team}",
        )
        .unwrap();
        let comps = p.components();
        assert_eq!(comps.len(), 5);
        assert_eq!(comps[0], vec![PatternPart::Field(PatternField::Namespace)]);
        assert_eq!(
            comps[1],
            vec![
                PatternPart::Field(PatternField::ClaimName),
                PatternPart::Literal("-".into()),
                PatternPart::Field(PatternField::ClaimUid)
            ]
        );
        assert_eq!(comps[2], vec![PatternPart::Field(PatternField::PvName)]);
        assert_eq!(
            comps[3],
            vec![PatternPart::Field(PatternField::Label(
                "app.kubernetes.io/name".into()
            ))]
        );
        assert_eq!(
            comps[4],
            vec![
                PatternPart::Literal("x".into()),
                PatternPart::Field(PatternField::Annotation("team".into()))
            ]
        );
    }

    #[test]
    fn path_pattern_drops_empty_components() {
        let p = PathPattern::parse("//a//${.PVC.name}/").unwrap();
        assert_eq!(p.components().len(), 2);
        assert_eq!(p.as_str(), "//a//${.PVC.name}/");
    }

    #[test]
    fn path_pattern_invalid() {
        for (bad, why) in [
            ("", "no path component"),
            ("/", "no path component"),
            ("///", "no path component"),
            ("..", "\"..\" is not allowed"),
            ("a/../b", "\"..\" is not allowed"),
            ("./a", "\".\" is not allowed"),
            ("${.PVC.namespace", "no closing"),
            ("${.PVC.foo}", "unknown reference"),
            ("${PVC.name}", "unknown reference"),
            ("${.PVC.labels.}", "empty key"),
            ("${.PVC.annotations.}", "empty key"),
            ("${ .PVC.name }", "unknown reference"),
            ("a\0b", "NUL"),
        ] {
            let err = PathPattern::parse(bad).unwrap_err();
            assert_eq!(err.key(), "pathPattern");
            let msg = err.to_string();
            assert!(msg.contains(why), "{bad:?}: {msg}");
            assert!(msg.contains("${.PVC.namespace}"), "{msg}");
        }
        let long = "a".repeat(256);
        assert!(PathPattern::parse(&long).is_err());
        assert!(parse(&[("pathPattern", "..")]).is_err());
    }

    #[test]
    fn permissions_precedence() {
        let defaults = DirectoryPermissions {
            mode: 0o777,
            uid: Some(1),
            gid: Some(2),
        };
        let none = BTreeMap::new();
        let class = parse(&[]).unwrap();
        assert_eq!(
            DirectoryPermissions::resolve(&defaults, &class, &none).unwrap(),
            defaults
        );
        let class = parse(&[("directoryMode", "0750"), ("directoryUid", "10")]).unwrap();
        assert_eq!(
            DirectoryPermissions::resolve(&defaults, &class, &none).unwrap(),
            DirectoryPermissions {
                mode: 0o750,
                uid: Some(10),
                gid: Some(2)
            }
        );
        let ann = params(&[
            ("k8s-sigs.io/nfs-directory-mode", "0700"),
            ("k8s-sigs.io/nfs-directory-gid", "20"),
        ]);
        assert_eq!(
            DirectoryPermissions::resolve(&defaults, &class, &ann).unwrap(),
            DirectoryPermissions {
                mode: 0o700,
                uid: Some(10),
                gid: Some(20)
            }
        );
    }

    #[test]
    fn claim_annotations_never_reach_parent_permissions() {
        let defaults = DirectoryPermissions {
            mode: 0o777,
            uid: Some(1),
            gid: Some(2),
        };
        let class = parse(&[("directoryMode", "0755"), ("directoryGid", "30")]).unwrap();
        let ann = params(&[
            ("k8s-sigs.io/nfs-directory-mode", "0700"),
            ("k8s-sigs.io/nfs-directory-uid", "40"),
            ("k8s-sigs.io/nfs-directory-gid", "50"),
        ]);
        let parents = DirectoryPermissions::resolve_parents(&defaults, &class);
        assert_eq!(
            parents,
            DirectoryPermissions {
                mode: 0o755,
                uid: Some(1),
                gid: Some(30)
            }
        );
        // The claim's own directory still follows its annotations.
        assert_eq!(
            DirectoryPermissions::resolve(&defaults, &class, &ann).unwrap(),
            DirectoryPermissions {
                mode: 0o700,
                uid: Some(40),
                gid: Some(50)
            }
        );
        let no_class = parse(&[]).unwrap();
        assert_eq!(
            DirectoryPermissions::resolve_parents(&defaults, &no_class),
            defaults
        );
    }

    #[test]
    fn bad_claim_annotations_name_the_annotation() {
        let class = parse(&[]).unwrap();
        for (key, bad) in [
            ("k8s-sigs.io/nfs-directory-mode", "4777"),
            ("k8s-sigs.io/nfs-directory-mode", "abc"),
            ("k8s-sigs.io/nfs-directory-uid", "-1"),
            ("k8s-sigs.io/nfs-directory-gid", "x"),
        ] {
            let err = DirectoryPermissions::resolve(
                &DirectoryPermissions::default(),
                &class,
                &params(&[(key, bad)]),
            )
            .unwrap_err();
            assert_eq!(err.key(), key);
            assert_eq!(err.source(), SettingSource::ClaimAnnotation);
            assert!(err.to_string().starts_with("PVC annotation"), "{err}");
        }
    }

    #[test]
    fn env_defaults() {
        assert_eq!(
            DirectoryPermissions::from_env_values(None, None, None).unwrap(),
            DirectoryPermissions::default()
        );
        let p = DirectoryPermissions::from_env_values(Some("0770"), Some("5"), Some("6")).unwrap();
        assert_eq!((p.mode, p.uid, p.gid), (0o770, Some(5), Some(6)));
        let err = DirectoryPermissions::from_env_values(Some("999"), None, None).unwrap_err();
        assert_eq!(err.key(), "NFS_DEFAULT_MODE");
        assert!(err.to_string().starts_with("environment variable"));
    }
}
