//! `kubectl get` output: the server-side `Table` (meta.k8s.io/v1) a real API server returns
//! when asked with `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`. Columns and cells
//! follow kube-apiserver's printers (pkg/printers/internalversion) of the imitated version,
//! compared with recorded tables in `tests/kubectl_trace.rs`.

use serde_json::{Value, json};

use crate::resource::Kind;
use crate::store::KubeVersion;
use crate::util;

/// The Table version a request's `Accept` header asks for (`v1` or `v1beta1`), if any.
pub(crate) fn requested(accept: Option<&str>) -> Option<&'static str> {
    for range in accept.unwrap_or("").split(',') {
        let params: Vec<&str> = range.split(';').map(str::trim).collect();
        if params.first() != Some(&"application/json")
            || !params.contains(&"as=Table")
            || !params.contains(&"g=meta.k8s.io")
        {
            continue;
        }
        if params.contains(&"v=v1") {
            return Some("v1");
        }
        if params.contains(&"v=v1beta1") {
            return Some("v1beta1");
        }
    }
    None
}

/// What each row carries besides its cells (`?includeObject=`); the default is `Metadata`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn from_query(v: Option<&str>) -> Result<IncludeObject, String> {
        match v {
            None | Some("") | Some("Metadata") => Ok(IncludeObject::Metadata),
            Some("None") => Ok(IncludeObject::None),
            Some("Object") => Ok(IncludeObject::Object),
            Some(other) => Err(format!(
                "includeObject: Unsupported value: \"{other}\": supported values: \"Metadata\", \"None\", \"Object\""
            )),
        }
    }
}

/// How one answer is rendered as a Table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableOptions {
    pub api_version: &'static str,
    pub include: IncludeObject,
    /// Watch events after the first carry `columnDefinitions: null`.
    pub columns: bool,
    pub kube_version: KubeVersion,
    /// Seconds since the epoch, for the Age columns.
    pub now: i64,
}

/// A Table of `objects` (list items or one object) with the given list metadata.
pub(crate) fn table(kind: Kind, objects: &[Value], metadata: Value, o: &TableOptions) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut row = json!({"cells": cells(kind, obj, o.kube_version, o.now)});
            match o.include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
                    });
                }
                IncludeObject::Object => {
                    let mut full = obj.clone();
                    full["kind"] = json!(kind.kind());
                    full["apiVersion"] = json!(kind.api_version());
                    row["object"] = full;
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{}", o.api_version),
        "metadata": metadata,
        "columnDefinitions": if o.columns { Value::Array(columns(kind, o.kube_version)) } else { Value::Null },
        "rows": rows,
    })
}

pub(crate) fn columns(kind: Kind, v: KubeVersion) -> Vec<Value> {
    match kind {
        Kind::PersistentVolumeClaim => claim_columns(v),
        Kind::PersistentVolume => volume_columns(v),
        Kind::StorageClass => class_columns(v),
        Kind::Namespace => namespace_columns(v),
        Kind::Lease => lease_columns(v),
        Kind::CoreEvent | Kind::Event => event_columns(v),
    }
}

fn str_at<'a>(obj: &'a Value, path: &[&str]) -> &'a str {
    util::path_str(obj, path).unwrap_or("")
}

/// `translateTimestampSince`: the age of an RFC 3339 time stamp, `<unknown>` without one.
fn age(ts: Option<&str>, now: i64) -> String {
    match ts.and_then(util::parse_rfc3339) {
        Some(t) => human_duration(now - t),
        None => "<unknown>".to_string(),
    }
}

/// `duration.HumanDuration` of apimachinery: what every Age column shows.
pub(crate) fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// `GetAccessModesAsString`: abbreviations in a fixed order, duplicates dropped.
fn access_modes(modes: Option<&Value>) -> String {
    let modes: Vec<&str> = modes
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(mode, _)| modes.contains(mode))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

/// The class of a claim or volume: the beta annotation wins over `spec.storageClassName`.
fn class_of(obj: &Value) -> &str {
    util::annotation(obj, "volume.beta.kubernetes.io/storage-class")
        .unwrap_or_else(|| str_at(obj, &["spec", "storageClassName"]))
}

/// A quantity as stored. (The real server stores quantities in canonical form, `1024Mi` as
/// `1Gi`; the fake stores what it was given, so a non-canonical request shows as given.)
fn quantity(obj: &Value, path: &[&str]) -> String {
    match util::path_str(obj, path) {
        Some(q) => q.to_string(),
        None => "0".to_string(),
    }
}

fn phase_or_terminating(obj: &Value) -> String {
    if util::meta_str(obj, "deletionTimestamp").is_some() {
        return "Terminating".to_string();
    }
    str_at(obj, &["status", "phase"]).to_string()
}

fn volume_mode(obj: &Value) -> String {
    util::path_str(obj, &["spec", "volumeMode"])
        .unwrap_or("<unset>")
        .to_string()
}

fn volume_attributes_class(obj: &Value) -> String {
    match util::path_str(obj, &["spec", "volumeAttributesClassName"]) {
        Some(c) if !c.is_empty() => c.to_string(),
        _ => "<unset>".to_string(),
    }
}

/// The cells of one row: every column, the wide ones included, as the real server sends them.
fn cells(kind: Kind, obj: &Value, v: KubeVersion, now: i64) -> Vec<Value> {
    let name = util::meta_str(obj, "name").unwrap_or("").to_string();
    let created = age(util::meta_str(obj, "creationTimestamp"), now);
    match kind {
        Kind::PersistentVolumeClaim => {
            let volume = str_at(obj, &["spec", "volumeName"]);
            let (capacity, modes) = if volume.is_empty() {
                (String::new(), String::new())
            } else {
                (
                    quantity(obj, &["status", "capacity", "storage"]),
                    access_modes(obj.pointer("/status/accessModes")),
                )
            };
            let mut c = vec![
                json!(name),
                json!(phase_or_terminating(obj)),
                json!(volume),
                json!(capacity),
                json!(modes),
                json!(class_of(obj)),
                json!(created),
                json!(volume_mode(obj)),
            ];
            if v == KubeVersion::V1_33 {
                c.insert(6, json!(volume_attributes_class(obj)));
            }
            c
        }
        Kind::PersistentVolume => {
            let claim = match obj.pointer("/spec/claimRef") {
                Some(r) if r.is_object() => {
                    format!("{}/{}", str_at(r, &["namespace"]), str_at(r, &["name"]))
                }
                _ => String::new(),
            };
            let mut c = vec![
                json!(name),
                json!(quantity(obj, &["spec", "capacity", "storage"])),
                json!(access_modes(obj.pointer("/spec/accessModes"))),
                json!(str_at(obj, &["spec", "persistentVolumeReclaimPolicy"])),
                json!(phase_or_terminating(obj)),
                json!(claim),
                json!(class_of(obj)),
                json!(str_at(obj, &["status", "reason"])),
                json!(created),
                json!(volume_mode(obj)),
            ];
            if v == KubeVersion::V1_33 {
                c.insert(7, json!(volume_attributes_class(obj)));
            }
            c
        }
        Kind::StorageClass => {
            let default = [
                "storageclass.kubernetes.io/is-default-class",
                "storageclass.beta.kubernetes.io/is-default-class",
            ]
            .iter()
            .any(|a| util::annotation(obj, a) == Some("true"));
            let shown = if default {
                format!("{name} (default)")
            } else {
                name
            };
            vec![
                json!(shown),
                json!(str_at(obj, &["provisioner"])),
                json!(util::path_str(obj, &["reclaimPolicy"]).unwrap_or("Delete")),
                json!(util::path_str(obj, &["volumeBindingMode"]).unwrap_or("Immediate")),
                json!(
                    obj.get("allowVolumeExpansion")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                ),
                json!(created),
            ]
        }
        Kind::Namespace => vec![
            json!(name),
            json!(str_at(obj, &["status", "phase"])),
            json!(created),
        ],
        Kind::Lease => vec![
            json!(name),
            json!(str_at(obj, &["spec", "holderIdentity"])),
            json!(created),
        ],
        Kind::CoreEvent | Kind::Event => event_cells(kind, obj, &name, now),
    }
}

/// `printEvent`, on the core/v1 shape of an Event (events.k8s.io/v1 names the same fields
/// differently: `regarding`, `note`, `deprecatedCount`, ...).
fn event_cells(kind: Kind, obj: &Value, name: &str, now: i64) -> Vec<Value> {
    let field = |core: &str, events: &str| -> Option<&Value> {
        let f = if kind == Kind::CoreEvent {
            core
        } else {
            events
        };
        obj.get(f).filter(|v| !v.is_null())
    };
    let time = |core: &str, events: &str| field(core, events).and_then(Value::as_str);
    let event_time = obj.get("eventTime").and_then(Value::as_str);
    let first = match time("firstTimestamp", "deprecatedFirstTimestamp") {
        Some(t) => age(Some(t), now),
        None => age(event_time, now),
    };
    let mut last = match time("lastTimestamp", "deprecatedLastTimestamp") {
        Some(t) => age(Some(t), now),
        None => first.clone(),
    };
    let mut count = field("count", "deprecatedCount")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    match obj.get("series").filter(|s| s.is_object()) {
        Some(series) => {
            last = age(series.get("lastObservedTime").and_then(Value::as_str), now);
            count = series.get("count").and_then(Value::as_i64).unwrap_or(0);
        }
        // Singleton events carry no count in the new API.
        None if count == 0 => count = 1,
        None => {}
    }
    let regarding = field("involvedObject", "regarding")
        .cloned()
        .unwrap_or(json!({}));
    let target_kind = str_at(&regarding, &["kind"]).to_lowercase();
    let target_name = str_at(&regarding, &["name"]);
    let target = if target_name.is_empty() {
        target_kind
    } else {
        format!("{target_kind}/{target_name}")
    };
    let source = field("source", "deprecatedSource")
        .cloned()
        .unwrap_or(json!({}));
    let first_non_empty = |a: &str, b: &str| {
        if a.is_empty() {
            b.to_string()
        } else {
            a.to_string()
        }
    };
    let component = first_non_empty(
        str_at(&source, &["component"]),
        field("reportingComponent", "reportingController")
            .and_then(Value::as_str)
            .unwrap_or(""),
    );
    let instance = first_non_empty(
        str_at(&source, &["host"]),
        obj.get("reportingInstance")
            .and_then(Value::as_str)
            .unwrap_or(""),
    );
    let source = if instance.is_empty() {
        component
    } else {
        format!("{component}, {instance}")
    };
    let message = field("message", "note")
        .and_then(Value::as_str)
        .unwrap_or("");
    vec![
        json!(last),
        json!(str_at(obj, &["type"])),
        json!(str_at(obj, &["reason"])),
        json!(target),
        json!(str_at(&regarding, &["fieldPath"])),
        json!(source),
        json!(message.trim()),
        json!(first),
        json!(count),
        json!(name),
    ]
}

fn column(name: &str, format: &str, priority: u8, description: &str) -> Value {
    json!({"name": name, "type": "string", "format": format, "description": description, "priority": priority})
}

/// The description where the two versions word a column differently.
fn by_version<'a>(v: KubeVersion, v1_33: &'a str, v1_19: &'a str) -> &'a str {
    match v {
        KubeVersion::V1_33 => v1_33,
        KubeVersion::V1_19 => v1_19,
    }
}

fn name_description(v: KubeVersion) -> String {
    let link = by_version(
        v,
        "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
        "http://kubernetes.io/docs/user-guide/identifiers#names",
    );
    format!(
        "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: {link}"
    )
}

const AGE_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

fn claim_columns(v: KubeVersion) -> Vec<Value> {
    let mut c = vec![
        column("Name", "name", 0, &name_description(v)),
        column(
            "Status",
            "",
            0,
            by_version(
                v,
                "phase represents the current phase of PersistentVolumeClaim.",
                "Phase represents the current phase of PersistentVolumeClaim.",
            ),
        ),
        column(
            "Volume",
            "",
            0,
            by_version(
                v,
                "volumeName is the binding reference to the PersistentVolume backing this claim.",
                "VolumeName is the binding reference to the PersistentVolume backing this claim.",
            ),
        ),
        column(
            "Capacity",
            "",
            0,
            by_version(
                v,
                "capacity represents the actual resources of the underlying volume.",
                "Represents the actual resources of the underlying volume.",
            ),
        ),
        column(
            "Access Modes",
            "",
            0,
            by_version(
                v,
                "accessModes contains the actual access modes the volume backing the PVC has. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#access-modes-1",
                "AccessModes contains the actual access modes the volume backing the PVC has. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#access-modes-1",
            ),
        ),
        column("StorageClass", "", 0, "StorageClass of the pvc"),
        column("Age", "", 0, AGE_DESCRIPTION),
        column(
            "VolumeMode",
            "",
            1,
            "volumeMode defines what type of volume is required by the claim. Value of Filesystem is implied when not included in claim spec.",
        ),
    ];
    if v == KubeVersion::V1_33 {
        c.insert(
            6,
            column(
                "VolumeAttributesClass",
                "",
                0,
                "VolumeAttributesClass of the pvc",
            ),
        );
    }
    c
}

fn volume_columns(v: KubeVersion) -> Vec<Value> {
    let mut c = vec![
        column("Name", "name", 0, &name_description(v)),
        column(
            "Capacity",
            "",
            0,
            by_version(
                v,
                "capacity is the description of the persistent volume's resources and capacity. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#capacity",
                "A description of the persistent volume's resources and capacity. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#capacity",
            ),
        ),
        column(
            "Access Modes",
            "",
            0,
            by_version(
                v,
                "accessModes contains all ways the volume can be mounted. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#access-modes",
                "AccessModes contains all ways the volume can be mounted. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#access-modes",
            ),
        ),
        column(
            "Reclaim Policy",
            "",
            0,
            by_version(
                v,
                "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim. Valid options are Retain (default for manually created PersistentVolumes), Delete (default for dynamically provisioned PersistentVolumes), and Recycle (deprecated). Recycle must be supported by the volume plugin underlying this PersistentVolume. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#reclaiming",
                "What happens to a persistent volume when released from its claim. Valid options are Retain (default for manually created PersistentVolumes), Delete (default for dynamically provisioned PersistentVolumes), and Recycle (deprecated). Recycle must be supported by the volume plugin underlying this PersistentVolume. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#reclaiming",
            ),
        ),
        column(
            "Status",
            "",
            0,
            by_version(
                v,
                "phase indicates if a volume is available, bound to a claim, or released by a claim. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#phase",
                "Phase indicates if a volume is available, bound to a claim, or released by a claim. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#phase",
            ),
        ),
        column(
            "Claim",
            "",
            0,
            by_version(
                v,
                "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim. Expected to be non-nil when bound. claim.VolumeName is the authoritative bind between PV and PVC. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#binding",
                "ClaimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim. Expected to be non-nil when bound. claim.VolumeName is the authoritative bind between PV and PVC. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#binding",
            ),
        ),
        column("StorageClass", "", 0, "StorageClass of the pv"),
        column(
            "Reason",
            "",
            0,
            by_version(
                v,
                "reason is a brief CamelCase string that describes any failure and is meant for machine parsing and tidy display in the CLI.",
                "Reason is a brief CamelCase string that describes any failure and is meant for machine parsing and tidy display in the CLI.",
            ),
        ),
        column("Age", "", 0, AGE_DESCRIPTION),
        column(
            "VolumeMode",
            "",
            1,
            "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state. Value of Filesystem is implied when not included in spec.",
        ),
    ];
    if v == KubeVersion::V1_33 {
        c.insert(
            7,
            column(
                "VolumeAttributesClass",
                "",
                0,
                "VolumeAttributesClass of the pv",
            ),
        );
    }
    c
}

fn class_columns(v: KubeVersion) -> Vec<Value> {
    vec![
        column("Name", "name", 0, &name_description(v)),
        column(
            "Provisioner",
            "",
            0,
            by_version(
                v,
                "provisioner indicates the type of the provisioner.",
                "Provisioner indicates the type of the provisioner.",
            ),
        ),
        column(
            "ReclaimPolicy",
            "",
            0,
            by_version(
                v,
                "reclaimPolicy controls the reclaimPolicy for dynamically provisioned PersistentVolumes of this storage class. Defaults to Delete.",
                "Dynamically provisioned PersistentVolumes of this storage class are created with this reclaimPolicy. Defaults to Delete.",
            ),
        ),
        column(
            "VolumeBindingMode",
            "",
            0,
            by_version(
                v,
                "volumeBindingMode indicates how PersistentVolumeClaims should be provisioned and bound.  When unset, VolumeBindingImmediate is used. This field is only honored by servers that enable the VolumeScheduling feature.",
                "VolumeBindingMode indicates how PersistentVolumeClaims should be provisioned and bound.  When unset, VolumeBindingImmediate is used. This field is only honored by servers that enable the VolumeScheduling feature.",
            ),
        ),
        column(
            "AllowVolumeExpansion",
            "",
            0,
            by_version(
                v,
                "allowVolumeExpansion shows whether the storage class allow volume expand.",
                "AllowVolumeExpansion shows whether the storage class allow volume expand",
            ),
        ),
        column("Age", "", 0, AGE_DESCRIPTION),
    ]
}

fn namespace_columns(v: KubeVersion) -> Vec<Value> {
    vec![
        column("Name", "name", 0, &name_description(v)),
        column("Status", "", 0, "The status of the namespace"),
        column("Age", "", 0, AGE_DESCRIPTION),
    ]
}

fn lease_columns(v: KubeVersion) -> Vec<Value> {
    vec![
        column("Name", "name", 0, &name_description(v)),
        column(
            "Holder",
            "",
            0,
            by_version(
                v,
                "holderIdentity contains the identity of the holder of a current lease. If Coordinated Leader Election is used, the holder identity must be equal to the elected LeaseCandidate.metadata.name field.",
                "holderIdentity contains the identity of the holder of a current lease.",
            ),
        ),
        column("Age", "", 0, AGE_DESCRIPTION),
    ]
}

fn event_columns(v: KubeVersion) -> Vec<Value> {
    vec![
        column(
            "Last Seen",
            "",
            0,
            "The time at which the most recent occurrence of this event was recorded.",
        ),
        column(
            "Type",
            "",
            0,
            "Type of this event (Normal, Warning), new types could be added in the future",
        ),
        column(
            "Reason",
            "",
            0,
            "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
        ),
        column("Object", "", 0, "The object that this event is about."),
        column(
            "Subobject",
            "",
            1,
            "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]. For example, if the object reference is to a container within a pod, this would take on a value like: \"spec.containers{name}\" (where \"name\" refers to the name of the container that triggered the event) or if no container name is specified \"spec.containers[2]\" (container with index 2 in this pod). This syntax is chosen only to have some well-defined way of referencing a part of an object.",
        ),
        column(
            "Source",
            "",
            1,
            "The component reporting this event. Should be a short machine understandable string.",
        ),
        column(
            "Message",
            "",
            0,
            "A human-readable description of the status of this operation.",
        ),
        column(
            "First Seen",
            "",
            1,
            "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
        ),
        column(
            "Count",
            "",
            1,
            "The number of times this event has occurred.",
        ),
        column("Name", "name", 1, &name_description(v)),
    ]
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectl_shows_them() {
        // Each boundary of apimachinery's HumanDuration, from both sides.
        for (secs, want) in [
            (-2, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (121, "2m1s"),
            (599, "9m59s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60, "3h1m"),
            (8 * 3600 - 1, "7h59m"),
            (8 * 3600, "8h"),
            (48 * 3600 - 1, "47h"),
            (48 * 3600, "2d"),
            (49 * 3600, "2d1h"),
            (8 * 86400 - 1, "7d23h"),
            (8 * 86400, "8d"),
            (2 * 365 * 86400 - 1, "729d"),
            (2 * 365 * 86400, "2y"),
            (2 * 365 * 86400 + 86400, "2y1d"),
            (8 * 365 * 86400, "8y"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs} s");
        }
    }

    #[test]
    fn access_modes_in_fixed_order() {
        assert_eq!(
            access_modes(Some(&json!([
                "ReadWriteMany",
                "ReadOnlyMany",
                "ReadWriteOnce",
                "ReadWriteMany"
            ]))),
            "RWO,ROX,RWX"
        );
        assert_eq!(access_modes(None), "");
    }

    #[test]
    fn only_meta_k8s_io_tables_are_tables() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(requested(Some(kubectl)), Some("v1"));
        assert_eq!(requested(Some("application/json")), None);
        assert_eq!(requested(None), None);
        assert_eq!(
            requested(Some("application/json;as=Table;v=v1beta1;g=meta.k8s.io")),
            Some("v1beta1")
        );
    }
}
