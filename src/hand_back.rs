//! `nfs-provisioner hand-back`: gives the PVs of one provisioner name back to the Go
//! `nfs-subdir-external-provisioner`, by removing what this project adds to them (its
//! finalizer, its annotations and its label) and nothing else: `pv.kubernetes.io/provisioned-by`
//! stays, so the Go provisioner recognises them as its own.
//!
//! It refuses while an instance of this provisioner holds its leader Lease: a running
//! instance would adopt the PVs again at once. It only ever patches PV metadata, never a
//! directory, and a second run finds nothing to do.

use std::io::Write;
use std::path::PathBuf;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Map, Value, json};

use crate::config::{lease_name_for, validate_provisioner_name};
use crate::persistent_volume::{
    ANN_DIRECTORY_EXISTED, ANN_ON_DELETE, ANN_PROVISIONED_BY, FINALIZER, LABEL_DIRECTORY_TREE,
};

/// The annotations this project writes on PVs (the Go provisioner's `provisioned-by` is not
/// among them).
pub const OUR_ANNOTATIONS: [&str; 2] = [ANN_ON_DELETE, ANN_DIRECTORY_EXISTED];
/// The labels this project writes on PVs.
pub const OUR_LABELS: [&str; 1] = [LABEL_DIRECTORY_TREE];

/// Flags of `nfs-provisioner hand-back`.
#[derive(clap::Args, Debug, Clone)]
pub struct HandBackArgs {
    /// Provisioner name whose PVs are handed back (their `pv.kubernetes.io/provisioned-by`).
    #[arg(long)]
    pub provisioner_name: String,

    /// Print what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Kubeconfig (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace of the provisioner's leader-election Lease (default: look in every
    /// namespace).
    #[arg(long)]
    pub lease_namespace: Option<String>,

    /// Go on although the Lease says an instance is running (it will re-add its finalizer
    /// unless it is stopped).
    #[arg(long)]
    pub ignore_lease: bool,
}

impl HandBackArgs {
    /// The one-line complaint about a bad flag, if any.
    pub fn validate(&self) -> Result<(), String> {
        validate_provisioner_name(&self.provisioner_name)
            .map_err(|r| format!("invalid setting --provisioner-name: {r}"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandBackError {
    #[error(
        "provisioner {provisioner} is running: Lease {namespace}/{lease} is held by {holder} \
         (renewed {renewed}, valid for {duration} s); it would add its finalizer again. Stop it \
         first (e.g. kubectl -n {namespace} scale deployment/nfs-provisioner --replicas=0) and \
         run this again, or pass --ignore-lease"
    )]
    LeaseHeld {
        provisioner: String,
        namespace: String,
        lease: String,
        holder: String,
        renewed: String,
        duration: i64,
    },
    #[error(
        "cannot look for the provisioner's Lease {lease}: {source}; grant list on leases \
         (coordination.k8s.io) or pass --lease-namespace (needs get there)"
    )]
    LeaseForbidden { lease: String, source: kube::Error },
    #[error("persistentvolume/{0} kept changing while being handed back; run the command again")]
    KeptChanging(String),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("writing the report: {0}")]
    Output(#[from] std::io::Error),
}

/// What a run did (or, with `--dry-run`, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// PVs of the provisioner name.
    pub volumes: usize,
    /// PVs changed (or to change).
    pub changed: Vec<String>,
}

/// What to remove from one PV.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removal {
    pub finalizer: bool,
    pub annotations: Vec<&'static str>,
    pub labels: Vec<&'static str>,
}

impl Removal {
    pub fn of(pv: &PersistentVolume) -> Removal {
        let annotations = pv.annotations();
        let labels = pv.labels();
        Removal {
            finalizer: pv.finalizers().iter().any(|f| f == FINALIZER),
            annotations: OUR_ANNOTATIONS
                .into_iter()
                .filter(|a| annotations.contains_key(*a))
                .collect(),
            labels: OUR_LABELS
                .into_iter()
                .filter(|l| labels.contains_key(*l))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.finalizer && self.annotations.is_empty() && self.labels.is_empty()
    }

    /// A merge patch doing the removal, conditional on `resource_version`: a PV changed
    /// meanwhile fails with 409 instead of losing that change (the finalizer list is
    /// replaced whole, keeping everyone else's finalizers).
    fn patch(&self, pv: &PersistentVolume) -> Value {
        let mut metadata = Map::new();
        metadata.insert(
            "resourceVersion".into(),
            json!(pv.resource_version().unwrap_or_default()),
        );
        if self.finalizer {
            let rest: Vec<&String> = pv.finalizers().iter().filter(|f| *f != FINALIZER).collect();
            metadata.insert(
                "finalizers".into(),
                if rest.is_empty() {
                    Value::Null
                } else {
                    json!(rest)
                },
            );
        }
        let nulls = |keys: &[&str]| -> Value {
            Value::Object(keys.iter().map(|k| (k.to_string(), Value::Null)).collect())
        };
        if !self.annotations.is_empty() {
            metadata.insert("annotations".into(), nulls(&self.annotations));
        }
        if !self.labels.is_empty() {
            metadata.insert("labels".into(), nulls(&self.labels));
        }
        json!({ "metadata": metadata })
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.finalizer {
            parts.push(format!("finalizer {FINALIZER}"));
        }
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        if !self.annotations.is_empty() {
            parts.push(format!(
                "annotation{} {}",
                plural(self.annotations.len()),
                self.annotations.join(", ")
            ));
        }
        if !self.labels.is_empty() {
            parts.push(format!(
                "label{} {}",
                plural(self.labels.len()),
                self.labels.join(", ")
            ));
        }
        parts.join("; ")
    }
}

/// The holder of the provisioner's Lease, if an instance holds it now.
async fn lease_holder(
    client: &Client,
    args: &HandBackArgs,
) -> Result<Option<HandBackError>, HandBackError> {
    let name = lease_name_for(&args.provisioner_name);
    find_lease_holder(client, args, &name)
        .await
        .map_err(|e| match e {
            kube::Error::Api(ref s) if s.code == 403 => HandBackError::LeaseForbidden {
                lease: name.clone(),
                source: e,
            },
            e => e.into(),
        })
}

async fn find_lease_holder(
    client: &Client,
    args: &HandBackArgs,
    name: &str,
) -> Result<Option<HandBackError>, kube::Error> {
    let leases: Vec<Lease> = match &args.lease_namespace {
        Some(ns) => Api::<Lease>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?
            .into_iter()
            .collect(),
        None => {
            Api::<Lease>::all(client.clone())
                .list(&ListParams::default().fields(&format!("metadata.name={name}")))
                .await?
                .items
        }
    };
    let now = Timestamp::now();
    for lease in leases {
        let Some(spec) = lease.spec.as_ref() else {
            continue;
        };
        let Some(holder) = spec.holder_identity.clone().filter(|h| !h.is_empty()) else {
            continue;
        };
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
        let renewed = spec.renew_time.as_ref().map(|t| t.0);
        // A holder that stopped renewing (killed without releasing) lets go when the
        // duration has passed, as the candidates see it.
        let valid =
            renewed.is_none_or(|t| t.as_second().saturating_add(duration) >= now.as_second());
        if valid {
            return Ok(Some(HandBackError::LeaseHeld {
                provisioner: args.provisioner_name.clone(),
                namespace: lease.namespace().unwrap_or_default(),
                lease: name.to_string(),
                holder,
                renewed: renewed
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "never".into()),
                duration,
            }));
        }
    }
    Ok(None)
}

/// Tries per PV when it keeps changing between our read and our patch.
const MAX_ATTEMPTS: u32 = 10;

/// Every PV, page by page (a cluster may have many thousands).
async fn all_volumes(api: &Api<PersistentVolume>) -> Result<Vec<PersistentVolume>, kube::Error> {
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// Hands back every PV of `args.provisioner_name`, reporting each change to `out`.
pub async fn run(
    client: Client,
    args: &HandBackArgs,
    out: &mut impl Write,
) -> Result<Summary, HandBackError> {
    match lease_holder(&client, args).await? {
        Some(held) if !args.ignore_lease => return Err(held),
        Some(held) => writeln!(
            out,
            "WARNING: going on despite --ignore-lease: {held}. A running instance adds its \
             finalizer back to every PV listed below."
        )?,
        None => {}
    }
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let ours: Vec<PersistentVolume> = all_volumes(&api)
        .await?
        .into_iter()
        .filter(|pv| pv.annotations().get(ANN_PROVISIONED_BY) == Some(&args.provisioner_name))
        .collect();
    let mut summary = Summary {
        volumes: ours.len(),
        ..Summary::default()
    };
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for listed in ours {
        let name = listed.name_any();
        let mut pv = listed;
        // A PV that changes under us is read again; the removal is decided on what is there.
        let mut attempts = 0;
        let removal = loop {
            attempts += 1;
            if attempts > MAX_ATTEMPTS {
                return Err(HandBackError::KeptChanging(name));
            }
            let removal = Removal::of(&pv);
            if removal.is_empty() || args.dry_run {
                break removal;
            }
            let patched = api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&removal.patch(&pv)),
                )
                .await;
            match patched {
                Ok(_) => break removal,
                Err(kube::Error::Api(e)) if e.code == 409 => match api.get_opt(&name).await? {
                    Some(fresh) => pv = fresh,
                    None => break Removal::default(),
                },
                Err(kube::Error::Api(e)) if e.code == 404 => break Removal::default(),
                Err(e) => return Err(e.into()),
            }
        };
        if removal.is_empty() {
            continue;
        }
        writeln!(
            out,
            "persistentvolume/{name}: {verb} {}",
            removal.describe()
        )?;
        for warning in warnings(&pv, &removal) {
            writeln!(out, "  warning: {warning}")?;
        }
        summary.changed.push(name);
    }
    writeln!(
        out,
        "PersistentVolumes of provisioner {}: {} {}, {} without anything of this project",
        args.provisioner_name,
        summary.changed.len(),
        if args.dry_run {
            "to change (dry run: nothing changed)"
        } else {
            "changed"
        },
        summary.volumes - summary.changed.len(),
    )?;
    if !args.dry_run
        && !summary.changed.is_empty()
        && let Some(held) = lease_holder(&client, args).await?
    {
        writeln!(
            out,
            "WARNING: {held}. An instance started meanwhile: it adds its finalizer back."
        )?;
    }
    Ok(summary)
}

/// What the Go provisioner will do differently with this PV.
fn warnings(pv: &PersistentVolume, removal: &Removal) -> Vec<String> {
    let mut out = Vec::new();
    if removal.annotations.contains(&ANN_DIRECTORY_EXISTED) {
        out.push(format!(
            "its directory existed before the volume ({ANN_DIRECTORY_EXISTED}): this project \
             never deletes or archives it; the Go provisioner applies the class's onDelete / \
             archiveOnDelete to it when the PV is released with reclaim policy Delete"
        ));
    }
    if removal.finalizer && pv.metadata.deletion_timestamp.is_some() {
        let path = pv
            .spec
            .as_ref()
            .and_then(|s| s.nfs.as_ref())
            .map(|n| format!("{}:{}", n.server, n.path))
            .unwrap_or_default();
        out.push(format!(
            "the PV is being deleted: without the finalizer it goes now and its directory \
             ({path}) stays on the export as it is"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;

    fn pv(
        finalizers: &[&str],
        annotations: &[(&str, &str)],
        labels: &[(&str, &str)],
    ) -> PersistentVolume {
        let map = |kv: &[(&str, &str)]| -> Option<BTreeMap<String, String>> {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some("pvc-1".into()),
                resource_version: Some("42".into()),
                finalizers: Some(finalizers.iter().map(|f| f.to_string()).collect()),
                annotations: map(annotations),
                labels: map(labels),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn removes_only_what_this_project_adds() {
        let v = pv(
            &["kubernetes.io/pv-protection", FINALIZER],
            &[
                (ANN_PROVISIONED_BY, "example.com/nfs"),
                (ANN_ON_DELETE, "archive"),
                (ANN_DIRECTORY_EXISTED, "true"),
                ("example.com/mine", "x"),
            ],
            &[(LABEL_DIRECTORY_TREE, "abc"), ("team", "a")],
        );
        let removal = Removal::of(&v);
        assert!(removal.finalizer);
        assert_eq!(
            removal.annotations,
            vec![ANN_ON_DELETE, ANN_DIRECTORY_EXISTED]
        );
        assert_eq!(removal.labels, vec![LABEL_DIRECTORY_TREE]);
        assert_eq!(
            removal.patch(&v),
            json!({"metadata": {
                "resourceVersion": "42",
                "finalizers": ["kubernetes.io/pv-protection"],
                "annotations": {ANN_ON_DELETE: null, ANN_DIRECTORY_EXISTED: null},
                "labels": {LABEL_DIRECTORY_TREE: null},
            }})
        );
    }

    #[test]
    fn the_last_finalizer_goes_as_a_null_and_a_clean_pv_needs_nothing() {
        let v = pv(&[FINALIZER], &[(ANN_PROVISIONED_BY, "p")], &[]);
        let removal = Removal::of(&v);
        assert_eq!(removal.patch(&v)["metadata"]["finalizers"], Value::Null);
        assert!(removal.patch(&v)["metadata"].get("annotations").is_none());
        let clean = pv(
            &["kubernetes.io/pv-protection"],
            &[(ANN_PROVISIONED_BY, "p")],
            &[],
        );
        assert!(Removal::of(&clean).is_empty());
    }

    #[test]
    fn a_bad_provisioner_name_is_one_line() {
        let args = HandBackArgs {
            provisioner_name: "Not A Name".into(),
            dry_run: false,
            kubeconfig: None,
            lease_namespace: None,
            ignore_lease: false,
        };
        let err = args.validate().unwrap_err();
        assert!(
            err.starts_with("invalid setting --provisioner-name"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1);
    }
}
