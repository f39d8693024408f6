//! Process settings: every flag, its environment variable and validation.
//!
//! The environment names of the Go `nfs-subdir-external-provisioner` are accepted unchanged
//! (`PROVISIONER_NAME`, `NFS_SERVER`, `NFS_PATH`, `KUBECONFIG`, `ENABLE_LEADER_ELECTION`,
//! `POD_NAMESPACE`, `NFS_DEFAULT_MODE|UID|GID`), so a Deployment can swap the image and keep
//! its env. Every setting is also a flag. A bad setting is reported as one line naming it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::exports_file::{self, DEFAULT_EXPORT, ExportSettings};
use crate::parameters::{DirectoryPermissions, GO_BOOL_ACCEPTED, go_bool};

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Raw command line and environment, before validation.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "nfs-provisioner",
    args_override_self = true,
    version,
    about = "Kubernetes provisioner giving every PVC its own subdirectory of a mounted NFS export"
)]
pub struct Cli {
    /// Name of this provisioner; StorageClasses select it with `provisioner: <name>`.
    #[arg(long, env = "PROVISIONER_NAME")]
    pub provisioner_name: Option<String>,

    /// NFS server written into every PV (`spec.nfs.server`).
    #[arg(long, env = "NFS_SERVER")]
    pub nfs_server: Option<String>,

    /// Exported path on the NFS server, written into every PV (`spec.nfs.path`).
    #[arg(long, env = "NFS_PATH")]
    pub nfs_path: Option<String>,

    /// Where the export is mounted in this process's file system (the NFS root).
    #[arg(long, env = "NFS_MOUNT_PATH", default_value = "/persistentvolumes")]
    pub mount_path: PathBuf,

    /// YAML file listing more NFS exports to serve (see `crate::exports_file` for the
    /// schema); StorageClasses pick one with the parameter `export: <name>`.
    #[arg(long, env = "NFS_EXPORTS_CONFIG")]
    pub exports_config: Option<PathBuf>,

    /// Kubeconfig to use outside the cluster. When unset: `~/.kube/config` if it exists,
    /// otherwise the in-cluster config (the pod's service account).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Run leader election on a Lease so only one replica provisions (true/false).
    #[arg(long, env = "ENABLE_LEADER_ELECTION", default_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set)]
    pub enable_leader_election: bool,

    /// Namespace of the leader-election Lease (downward API); falls back to the service
    /// account's namespace, then `default`.
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// Name of this pod (downward API), used in the leader identity; falls back to hostname.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// How long a Lease stays valid without renewal.
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// The leader gives up leadership when it could not renew for this long.
    #[arg(long, env = "RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,

    /// How often candidates try to acquire and the leader renews.
    #[arg(long, env = "RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,

    /// Claims and volumes handled concurrently.
    #[arg(long, env = "WORKERS", default_value_t = 32)]
    pub workers: usize,

    /// Sustained Kubernetes API requests per second (client-side limit).
    #[arg(long, env = "KUBE_API_QPS", default_value_t = 200.0)]
    pub kube_api_qps: f64,

    /// Kubernetes API requests allowed in a burst above the sustained rate.
    #[arg(long, env = "KUBE_API_BURST", default_value_t = 400)]
    pub kube_api_burst: u32,

    /// Deadline of one file system operation on the NFS root.
    #[arg(long, env = "NFS_OPERATION_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub fs_timeout: Duration,

    /// How often the NFS root is probed for `/readyz` and metrics.
    #[arg(long, env = "NFS_PROBE_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub nfs_probe_interval: Duration,

    /// Threads that may be stuck in the kernel on a hung NFS server before new operations
    /// fail fast.
    #[arg(long, env = "NFS_MAX_STUCK_OPERATIONS", default_value_t = 16)]
    pub max_stuck_fs_ops: usize,

    /// Mode of directories the provisioner creates (octal); a StorageClass may override it.
    #[arg(long, env = "NFS_DEFAULT_MODE", default_value = "0777", value_parser = parse_octal_mode)]
    pub default_directory_mode: u32,

    /// Owner uid of directories the provisioner creates (unset: the process's uid).
    #[arg(long, env = "NFS_DEFAULT_UID")]
    pub default_directory_uid: Option<u32>,

    /// Owner gid of directories the provisioner creates (unset: the process's gid).
    #[arg(long, env = "NFS_DEFAULT_GID")]
    pub default_directory_gid: Option<u32>,

    /// First retry delay of a failed claim or volume; doubles per failure.
    #[arg(long, env = "RETRY_BASE_DELAY", default_value = "1s", value_parser = parse_duration)]
    pub retry_base_delay: Duration,

    /// Longest retry delay; failures are retried forever at this pace.
    #[arg(long, env = "RETRY_MAX_DELAY", default_value = "5m", value_parser = parse_duration)]
    pub retry_max_delay: Duration,

    /// Full re-check of every claim and volume, catching anything a watch missed.
    #[arg(long, env = "RESYNC_PERIOD", default_value = "10m", value_parser = parse_duration)]
    pub resync_period: Duration,

    /// Admin endpoint (`/healthz`, `/readyz`, `/metrics`), e.g. `:8080` or `127.0.0.1:8080`.
    #[arg(long, env = "ADMIN_ADDRESS", default_value = ":8080", value_parser = parse_listen_address)]
    pub admin_address: SocketAddr,

    /// How long shutdown waits for in-flight work before abandoning it.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Usage measurement: how often a round of slices starts.
    #[arg(long, env = "USAGE_SCAN_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub usage_scan_interval: Duration,

    /// Usage measurement: slices per round, one at a time (0 turns measuring off).
    #[arg(long, env = "USAGE_SCAN_SLICES", default_value_t = 4)]
    pub usage_scan_slices: u32,

    /// Usage measurement: directory entries one slice may stat at most (in one volume, or in
    /// several small ones one after another).
    #[arg(long, env = "USAGE_SCAN_ENTRIES_PER_SLICE", default_value_t = 5000)]
    pub usage_scan_entries_per_slice: u64,

    /// Usage measurement: a volume is measured again at most this often.
    #[arg(long, env = "USAGE_RESCAN_PERIOD", default_value = "5m", value_parser = parse_duration)]
    pub usage_rescan_period: Duration,

    /// Clones (claims with a PersistentVolumeClaim data source) copied at once; more wait
    /// for a free slot, and other claims are provisioned meanwhile.
    #[arg(long, env = "MAX_CONCURRENT_CLONES", default_value_t = 2)]
    pub max_concurrent_clones: usize,

    /// A running clone copy reports its progress (bytes and entries) in a Normal event on
    /// its claim at most this often.
    #[arg(long, env = "CLONE_PROGRESS_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub clone_progress_interval: Duration,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log level or filter (`info`, `debug`, `nfs_provisioner=debug`); `RUST_LOG` wins if set.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// A one-off command instead of running the provisioner.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-off commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Removes this project's finalizer, annotations and label from the PVs of a provisioner
    /// name, so the Go nfs-subdir-external-provisioner can take them over again.
    HandBack(crate::hand_back::HandBackArgs),
}

/// Validated settings the rest of the program runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub provisioner_name: String,
    /// Every export served: the default one (`NFS_SERVER`, `NFS_PATH`) first when set, then
    /// those of `NFS_EXPORTS_CONFIG`. Never empty; never overlapping.
    pub exports: Vec<ExportSettings>,
    pub kubeconfig: Option<PathBuf>,
    pub leader_election: Option<LeaderElectionSettings>,
    pub workers: usize,
    pub kube_api_qps: f64,
    pub kube_api_burst: u32,
    pub fs_timeout: Duration,
    pub nfs_probe_interval: Duration,
    pub max_stuck_fs_ops: usize,
    pub max_concurrent_clones: usize,
    pub clone_progress_interval: Duration,
    pub default_permissions: DirectoryPermissions,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    pub resync_period: Duration,
    /// Budget and pace of usage measurement.
    pub usage: crate::usage::UsageSettings,
    pub admin_address: SocketAddr,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Who this replica is, in Lease holder identities and event `reportingInstance`.
    pub identity: String,
}

#[derive(Debug, Clone)]
pub struct LeaderElectionSettings {
    pub namespace: String,
    pub lease_name: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// A setting that is missing or invalid; `Display` is the one line printed before exiting.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct SettingError {
    pub setting: &'static str,
    pub reason: String,
}

fn bad(setting: &'static str, reason: impl Into<String>) -> SettingError {
    SettingError {
        setting,
        reason: reason.into(),
    }
}

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

impl Cli {
    /// Checks every setting and derives the leader-election identity and Lease.
    pub fn validate(self) -> Result<Settings, SettingError> {
        let exports = self.exports()?;
        let provisioner_name = required(
            self.provisioner_name,
            "PROVISIONER_NAME (--provisioner-name)",
        )?;
        validate_provisioner_name(&provisioner_name)
            .map_err(|r| bad("PROVISIONER_NAME (--provisioner-name)", r))?;
        if self.workers == 0 {
            return Err(bad("WORKERS (--workers)", "must be at least 1"));
        }
        if !(self.kube_api_qps.is_finite() && self.kube_api_qps > 0.0) {
            return Err(bad(
                "KUBE_API_QPS (--kube-api-qps)",
                "must be a positive number",
            ));
        }
        if self.kube_api_burst == 0 {
            return Err(bad(
                "KUBE_API_BURST (--kube-api-burst)",
                "must be at least 1",
            ));
        }
        if self.max_concurrent_clones == 0 {
            return Err(bad(
                "MAX_CONCURRENT_CLONES (--max-concurrent-clones)",
                "must be at least 1",
            ));
        }
        if self.max_stuck_fs_ops == 0 {
            return Err(bad(
                "NFS_MAX_STUCK_OPERATIONS (--max-stuck-fs-ops)",
                "must be at least 1",
            ));
        }
        if self.fs_timeout.is_zero() {
            return Err(bad(
                "NFS_OPERATION_TIMEOUT (--fs-timeout)",
                "must be positive",
            ));
        }
        if self.retry_base_delay.is_zero() || self.retry_max_delay < self.retry_base_delay {
            return Err(bad(
                "RETRY_MAX_DELAY (--retry-max-delay)",
                "must be at least RETRY_BASE_DELAY, which must be positive",
            ));
        }
        if self.nfs_probe_interval.is_zero() {
            return Err(bad(
                "NFS_PROBE_INTERVAL (--nfs-probe-interval)",
                "must be positive",
            ));
        }
        if self.resync_period.is_zero() {
            return Err(bad("RESYNC_PERIOD (--resync-period)", "must be positive"));
        }
        if self.usage_scan_interval.is_zero() {
            return Err(bad(
                "USAGE_SCAN_INTERVAL (--usage-scan-interval)",
                "must be positive",
            ));
        }
        if self.usage_scan_entries_per_slice == 0 {
            return Err(bad(
                "USAGE_SCAN_ENTRIES_PER_SLICE (--usage-scan-entries-per-slice)",
                "must be at least 1",
            ));
        }
        if self.usage_rescan_period.is_zero() {
            return Err(bad(
                "USAGE_RESCAN_PERIOD (--usage-rescan-period)",
                "must be positive",
            ));
        }

        let pod_name = self
            .pod_name
            .filter(|n| !n.is_empty())
            .or_else(|| {
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
            })
            .unwrap_or_else(|| "nfs-provisioner".to_string());
        let identity = format!("{pod_name}_{}", random_suffix());

        let leader_election = if self.enable_leader_election {
            if self.renew_deadline >= self.lease_duration {
                return Err(bad(
                    "RENEW_DEADLINE (--renew-deadline)",
                    "must be shorter than LEASE_DURATION",
                ));
            }
            if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
                return Err(bad(
                    "RETRY_PERIOD (--retry-period)",
                    "must be positive and shorter than RENEW_DEADLINE",
                ));
            }
            let namespace = self
                .pod_namespace
                .filter(|n| !n.is_empty())
                .or_else(|| {
                    std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
                        .ok()
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                })
                .unwrap_or_else(|| "default".to_string());
            Some(LeaderElectionSettings {
                namespace,
                lease_name: lease_name_for(&provisioner_name),
                lease_duration: self.lease_duration,
                renew_deadline: self.renew_deadline,
                retry_period: self.retry_period,
            })
        } else {
            None
        };

        Ok(Settings {
            provisioner_name,
            exports,
            kubeconfig: self.kubeconfig,
            leader_election,
            workers: self.workers,
            kube_api_qps: self.kube_api_qps,
            kube_api_burst: self.kube_api_burst,
            fs_timeout: self.fs_timeout,
            nfs_probe_interval: self.nfs_probe_interval,
            max_stuck_fs_ops: self.max_stuck_fs_ops,
            max_concurrent_clones: self.max_concurrent_clones,
            clone_progress_interval: self.clone_progress_interval,
            default_permissions: DirectoryPermissions {
                mode: self.default_directory_mode,
                uid: self.default_directory_uid,
                gid: self.default_directory_gid,
            },
            retry_base_delay: self.retry_base_delay,
            retry_max_delay: self.retry_max_delay,
            resync_period: self.resync_period,
            usage: crate::usage::UsageSettings {
                interval: self.usage_scan_interval,
                slices_per_interval: self.usage_scan_slices,
                entries_per_slice: self.usage_scan_entries_per_slice,
                rescan_period: self.usage_rescan_period,
            },
            admin_address: self.admin_address,
            shutdown_grace: self.shutdown_grace,
            log_format: self.log_format,
            log_level: self.log_level,
            identity,
        })
    }
}

impl Cli {
    /// The default export (when `NFS_SERVER` and `NFS_PATH` are set) and those of the
    /// exports file.
    fn exports(&self) -> Result<Vec<ExportSettings>, SettingError> {
        const SERVER: &str = "NFS_SERVER (--nfs-server)";
        const PATH: &str = "NFS_PATH (--nfs-path)";
        const FILE: &str = "NFS_EXPORTS_CONFIG (--exports-config)";
        let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
        let mut exports = Vec::new();
        match (set(&self.nfs_server), set(&self.nfs_path)) {
            (true, true) => {
                let (server, path) = (
                    required(self.nfs_server.clone(), SERVER)?,
                    required(self.nfs_path.clone(), PATH)?,
                );
                let export =
                    exports_file::export(DEFAULT_EXPORT, &server, &path, self.mount_path.clone())
                        .map_err(|(field, reason)| {
                        bad(
                            match field {
                                "server" => SERVER,
                                "path" => PATH,
                                _ => "NFS_MOUNT_PATH (--mount-path)",
                            },
                            reason,
                        )
                    })?;
                exports.push(export);
            }
            (false, false) if self.exports_config.is_some() => {}
            (_, true) | (false, false) => return Err(bad(SERVER, "is required")),
            (true, false) => return Err(bad(PATH, "is required")),
        }
        if let Some(file) = &self.exports_config {
            let more = exports_file::load(file)
                .map_err(|e| bad(FILE, format!("{}: {e}", file.display())))?;
            exports.extend(more);
        }
        exports_file::check_distinct(&exports).map_err(|e| bad(FILE, e))?;
        Ok(exports)
    }
}

fn required(value: Option<String>, setting: &'static str) -> Result<String, SettingError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => Err(bad(setting, "is required")),
    }
}

/// A provisioner name must be usable as a StorageClass `provisioner`, an annotation value and
/// (with `/` replaced by `-`) a Lease name, so it is held to a DNS-subdomain-like shape.
pub fn validate_provisioner_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    let ok_char = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '/' | '_')
    };
    if !name.chars().all(ok_char) {
        return Err(format!(
            "{name:?} may contain only lower-case letters, digits, '-', '.', '_' and '/'"
        ));
    }
    let first_last_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_last_ok(name.chars().next()) || !first_last_ok(name.chars().last()) {
        return Err(format!(
            "{name:?} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// Lease name derived from the provisioner name: `/` and `_` become `-`, as Lease names are
/// DNS subdomains.
pub fn lease_name_for(provisioner_name: &str) -> String {
    provisioner_name.replace(['/', '_'], "-")
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 4];
    if let Ok(uuid) = std::fs::read_to_string("/proc/sys/kernel/random/uuid") {
        return uuid.trim().chars().filter(|c| *c != '-').take(8).collect();
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id();
    bytes.copy_from_slice(&nanos.to_le_bytes());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Booleans as Go's `strconv.ParseBool` reads them, so existing manifests keep working.
/// Surrounding blanks in an environment value are tolerated, as before.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    go_bool(s.trim()).ok_or_else(|| {
        format!(
            "{:?} is not a boolean; accepted: {GO_BOOL_ACCEPTED}",
            s.trim()
        )
    })
}

/// Durations such as `15s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 500ms, 15s, 2m, 1h)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?} has an unknown unit (use ms, s, m or h)")),
    };
    if !seconds.is_finite() || !(0.0..=365.0 * 86400.0).contains(&seconds) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Octal permission bits (`0777`, `775`); set-uid and set-gid are refused.
pub fn parse_octal_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim().trim_start_matches("0o");
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("{s:?} is not an octal mode (example: 0775)"))?;
    if mode & !0o1777 != 0 {
        return Err(format!(
            "{s:?} may contain only permission bits and the sticky bit (at most 01777)"
        ));
    }
    Ok(mode)
}

/// `:8080` listens on every address, like Go; `127.0.0.1:8080` and `[::1]:8080` as written.
pub fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|_| format!("{s:?} is not a listen address (examples: :8080, 127.0.0.1:8080)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut all = vec!["nfs-provisioner"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
    }

    const BASE: &[&str] = &[
        "--provisioner-name",
        "example.com/nfs",
        "--nfs-server",
        "nfs.example.test",
        "--nfs-path",
        "/exports/k8s",
    ];

    #[test]
    fn defaults_match_the_established_deployment() {
        let s = cli(BASE).unwrap().validate().unwrap();
        assert_eq!(s.exports.len(), 1);
        assert_eq!(s.exports[0].name, "default");
        assert_eq!(s.exports[0].mount_path, PathBuf::from("/persistentvolumes"));
        let le = s.leader_election.expect("leader election defaults to on");
        assert_eq!(le.lease_name, "example.com-nfs");
        assert_eq!(le.lease_duration, Duration::from_secs(15));
        assert_eq!(le.renew_deadline, Duration::from_secs(10));
        assert_eq!(le.retry_period, Duration::from_secs(2));
        assert_eq!(s.default_permissions.mode, 0o777);
        assert_eq!(s.admin_address, "0.0.0.0:8080".parse().unwrap());
    }

    #[test]
    fn missing_required_settings_name_the_setting() {
        let err = cli(&["--nfs-server", "x", "--nfs-path", "/e"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("PROVISIONER_NAME"), "{err}");
        let err = cli(&["--provisioner-name", "a/b", "--nfs-path", "/e"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("NFS_SERVER"), "{err}");
        let err = cli(&[
            "--provisioner-name",
            "a/b",
            "--nfs-server",
            "x",
            "--nfs-path",
            "rel",
        ])
        .unwrap()
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("NFS_PATH"), "{err}");
    }

    #[test]
    fn leader_election_accepts_go_booleans() {
        for (v, want) in [
            ("false", false),
            ("0", false),
            ("F", false),
            ("TRUE", true),
            ("1", true),
        ] {
            let mut args = BASE.to_vec();
            args.extend(["--enable-leader-election", v]);
            let s = cli(&args).unwrap().validate().unwrap();
            assert_eq!(s.leader_election.is_some(), want, "value {v}");
        }
        let mut args = BASE.to_vec();
        args.extend(["--enable-leader-election", "yes"]);
        assert!(cli(&args).is_err());
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse_duration("10 parsecs").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_octal_mode("4777").is_err());
        assert!(parse_octal_mode("999").is_err());
        assert_eq!(parse_octal_mode("0775").unwrap(), 0o775);
        assert!(validate_provisioner_name("Example.com/NFS").is_err());
        assert!(validate_provisioner_name("-x").is_err());
        assert!(validate_provisioner_name("k8s-sigs.io/nfs-subdir-external-provisioner").is_ok());
        let mut args = BASE.to_vec();
        args.extend(["--renew-deadline", "20s"]);
        let err = cli(&args).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("RENEW_DEADLINE"), "{err}");
        let mut args = BASE.to_vec();
        args.extend(["--workers", "0"]);
        assert!(
            cli(&args)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
                .contains("WORKERS")
        );
    }

    #[test]
    fn usage_measurement_has_a_budget_and_can_be_turned_off() {
        let s = cli(BASE).unwrap().validate().unwrap();
        assert_eq!(s.usage.interval, Duration::from_secs(10));
        assert_eq!(s.usage.slices_per_interval, 4);
        assert_eq!(s.usage.entries_per_slice, 5000);
        assert_eq!(s.usage.rescan_period, Duration::from_secs(300));
        assert!(s.usage.enabled());
        let mut args = BASE.to_vec();
        args.extend(["--usage-scan-slices", "0"]);
        assert!(!cli(&args).unwrap().validate().unwrap().usage.enabled());
        for (flag, value, named) in [
            ("--usage-scan-interval", "0s", "USAGE_SCAN_INTERVAL"),
            (
                "--usage-scan-entries-per-slice",
                "0",
                "USAGE_SCAN_ENTRIES_PER_SLICE",
            ),
            ("--usage-rescan-period", "0", "USAGE_RESCAN_PERIOD"),
        ] {
            let mut args = BASE.to_vec();
            args.extend([flag, value]);
            let err = cli(&args).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains(named), "{err}");
        }
        let mut args = BASE.to_vec();
        args.extend(["--usage-scan-slices", "-1"]);
        assert!(cli(&args).is_err(), "a negative count is a usage error");
    }

    #[test]
    fn identity_carries_pod_name_and_a_random_suffix() {
        let mut args = BASE.to_vec();
        args.extend(["--pod-name", "prov-7d9f"]);
        let a = cli(&args).unwrap().validate().unwrap();
        let b = cli(&args).unwrap().validate().unwrap();
        assert!(a.identity.starts_with("prov-7d9f_"));
        assert_ne!(a.identity, b.identity);
    }
}
