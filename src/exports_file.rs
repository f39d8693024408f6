//! The NFS exports one instance serves: the default export from the established environment
//! (`NFS_SERVER`, `NFS_PATH`, mounted at `NFS_MOUNT_PATH`, `/persistentvolumes` by default),
//! and more from a configuration file (`NFS_EXPORTS_CONFIG`, usually a mounted ConfigMap):
//!
//! ```yaml
//! exports:
//!   - name: fast                      # StorageClass parameter `export: fast` picks it
//!     server: fast.nfs.example.com    # written into PVs (spec.nfs.server)
//!     path: /exports/fast             # written into PVs (spec.nfs.path, + the directory)
//!     mountPath: /exports/fast        # where the export is mounted in the provisioner's pod
//! ```
//!
//! Names are DNS labels (they appear in metric labels and class parameters); the default
//! export is named `default`. Two exports never overlap: not the same name, not the same or
//! nested mount paths, and not the same or nested paths on the same server (a directory of one
//! would then hold volumes of the other, and neither could tell which PVs it must respect).
//! Every problem is reported as one line naming the entry and field.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::planning::ExportPath;

/// The name of the export given by `NFS_SERVER` / `NFS_PATH`.
pub const DEFAULT_EXPORT: &str = "default";

/// Largest configuration file read (a ConfigMap holds at most 1 MiB).
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// One export, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    pub name: String,
    /// NFS server written into PVs.
    pub server: String,
    /// Exported path written into PVs.
    pub path: ExportPath,
    /// Where the export is mounted here (the NFS root of this export).
    pub mount_path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    exports: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    name: String,
    server: String,
    path: String,
    mount_path: PathBuf,
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Vec<ExportSettings>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let mut text = String::new();
    use std::io::Read;
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("it is larger than {MAX_FILE_BYTES} bytes"));
    }
    parse(&text)
}

/// Parses and validates the text of a configuration file (YAML or JSON).
pub fn parse(text: &str) -> Result<Vec<ExportSettings>, String> {
    // serde_yaml is deprecated upstream but maintained in place and already vetted here; the
    // file is small and read once at start.
    let file: File = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    if file.exports.is_empty() {
        return Err("exports: lists no export".to_string());
    }
    file.exports
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            export(&entry.name, &entry.server, &entry.path, entry.mount_path)
                .map_err(|(field, reason)| format!("exports[{i}].{field}: {reason}"))
        })
        .collect()
}

/// One export from its parts; the error names the field at fault.
pub fn export(
    name: &str,
    server: &str,
    path: &str,
    mount_path: PathBuf,
) -> Result<ExportSettings, (&'static str, String)> {
    validate_name(name).map_err(|r| ("name", r))?;
    validate_server(server).map_err(|r| ("server", r))?;
    if !path.starts_with('/') {
        return Err((
            "path",
            format!("{path:?} must be an absolute path on the NFS server"),
        ));
    }
    let path = ExportPath::new(path).map_err(|e| ("path", e.to_string()))?;
    if !mount_path.is_absolute() {
        return Err((
            "mountPath",
            format!("{} must be an absolute path", mount_path.display()),
        ));
    }
    Ok(ExportSettings {
        name: name.to_string(),
        server: server.to_string(),
        path,
        mount_path,
    })
}

/// An export name is a DNS label: 1 to 63 of `a-z`, `0-9`, `-`, starting and ending with a
/// letter or digit.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid export name (1 to 63 of a-z, 0-9 and '-', starting and ending with a letter or digit)"
        ))
    }
}

/// A host name or IP address as written into `spec.nfs.server`.
pub fn validate_server(server: &str) -> Result<(), String> {
    if server.is_empty() || server.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(format!("{server:?} is not a host name or IP address"));
    }
    Ok(())
}

/// Checks that no two exports overlap (see the module documentation).
pub fn check_distinct(exports: &[ExportSettings]) -> Result<(), String> {
    for (i, a) in exports.iter().enumerate() {
        for b in &exports[i + 1..] {
            if a.name == b.name {
                return Err(format!("export {:?} is defined twice", a.name));
            }
            if a.mount_path.starts_with(&b.mount_path) || b.mount_path.starts_with(&a.mount_path) {
                return Err(format!(
                    "exports {:?} and {:?} are mounted at the same or nested paths ({} and {})",
                    a.name,
                    b.name,
                    a.mount_path.display(),
                    b.mount_path.display()
                ));
            }
            if a.server == b.server && a.path.overlaps(&b.path) {
                return Err(format!(
                    "exports {:?} and {:?} are the same or nested paths on server {} ({} and {})",
                    a.name,
                    b.name,
                    a.server,
                    a.path.as_str(),
                    b.path.as_str()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_file_gives_its_exports() {
        let exports = parse(
            "exports:\n  - name: fast\n    server: fast.example.test\n    path: /exports/fast\n    mountPath: /mnt/fast\n",
        )
        .unwrap();
        assert_eq!(exports.len(), 1);
        assert_eq!(exports[0].name, "fast");
        assert_eq!(exports[0].path.as_str(), "/exports/fast");
        assert_eq!(exports[0].mount_path, PathBuf::from("/mnt/fast"));
    }

    #[test]
    fn every_problem_names_its_field() {
        let entry = |name: &str, server: &str, path: &str, mount: &str| {
            format!(
                "exports:\n  - name: ok\n    server: s\n    path: /p\n    mountPath: /m\n  - name: {name:?}\n    server: {server:?}\n    path: {path:?}\n    mountPath: {mount:?}\n"
            )
        };
        let cases = [
            (entry("Fast", "s2", "/q", "/n"), "exports[1].name:"),
            (entry("b", "", "/q", "/n"), "exports[1].server:"),
            (entry("b", "a b", "/q", "/n"), "exports[1].server:"),
            (entry("b", "s2", "q", "/n"), "exports[1].path:"),
            (entry("b", "s2", "/q/../r", "/n"), "exports[1].path:"),
            (entry("b", "s2", "/q", "n"), "exports[1].mountPath:"),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.starts_with(expected), "{expected} <- {err}");
        }
        let unknown = parse("exports:\n  - name: a\n    sever: s\n").unwrap_err();
        assert!(unknown.contains("unknown field `sever`"), "{unknown}");
        assert!(parse("exports: []\n").unwrap_err().contains("no export"));
        assert!(parse("{not yaml").is_err());
    }

    #[test]
    fn overlapping_exports_are_refused() {
        let e = |name: &str, server: &str, path: &str, mount: &str| {
            export(name, server, path, PathBuf::from(mount)).unwrap()
        };
        let base = e("a", "s", "/exports/a", "/mnt/a");
        assert!(check_distinct(&[base.clone(), e("b", "s", "/exports/b", "/mnt/b")]).is_ok());
        assert!(check_distinct(&[base.clone(), e("b", "t", "/exports/a", "/mnt/b")]).is_ok());
        for (other, why) in [
            (e("a", "t", "/x", "/mnt/x"), "defined twice"),
            (e("b", "t", "/x", "/mnt/a/b"), "nested paths (/mnt/a"),
            (e("b", "s", "/exports/a/b", "/mnt/b"), "on server s"),
            (e("b", "s", "/exports", "/mnt/b"), "on server s"),
            (e("b", "s", "/exports/a/", "/mnt/b"), "on server s"),
        ] {
            let err = check_distinct(&[base.clone(), other]).unwrap_err();
            assert!(err.contains(why), "{why} <- {err}");
        }
    }
}
