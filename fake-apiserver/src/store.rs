//! The object store: one global resourceVersion, per-kind objects and event history, and the
//! API semantics of create, update, patch and delete (admission, validation, finalizers).

use crate::resource::Kind;
use crate::status::{ApiError, Cause};
use crate::util::{self, finalizers, meta, meta_mut, meta_str, set_finalizers};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

/// Which control plane the fake imitates where v1.19 and v1.33 differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KubeVersion {
    /// kcm sets only `volume.beta.kubernetes.io/storage-provisioner`; PVs carry no
    /// `status.lastPhaseTransitionTime`.
    V1_19,
    /// kcm sets both provisioner annotations; PVs get `lastPhaseTransitionTime`.
    #[default]
    V1_33,
}

/// `namespace` (empty for cluster-scoped kinds) and `name`.
pub type Key = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug)]
pub struct HistEvent {
    pub rv: u64,
    pub etype: EventType,
    pub key: Key,
    /// The object as watchers see it (for DELETED: the last stored state with the new RV).
    pub obj: Arc<Value>,
    /// The stored object before this event.
    pub prev: Option<Arc<Value>>,
}

#[derive(Default)]
pub struct KindStore {
    pub objects: BTreeMap<Key, Arc<Value>>,
    pub history: VecDeque<Arc<HistEvent>>,
    /// History holds every event with rv > floor.
    pub floor: u64,
}

pub struct Store {
    pub rv: u64,
    pub kinds: Vec<KindStore>,
    pub history_limit: usize,
    pub version: KubeVersion,
    /// Bumped to end all open watch streams.
    pub watch_epoch: u64,
}

pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

/// Parameters of a list request.
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    pub namespace: Option<String>,
    pub labels: Vec<util::Requirement>,
    pub fields: Vec<util::Requirement>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    /// Serve the list as of this revision (`resourceVersionMatch=Exact`).
    pub exact_rv: Option<u64>,
}

/// A list answer. Its items are the stored objects themselves, not copies: a list of 100 000
/// PVs copied into one `Value` took gigabytes.
#[derive(Debug)]
pub struct List {
    pub kind: String,
    pub api_version: String,
    pub metadata: Map<String, Value>,
    pub items: Vec<Arc<Value>>,
}

impl List {
    /// The items as a list shows them: without `kind` and `apiVersion`.
    pub fn item_values(&self) -> Vec<Value> {
        self.items
            .iter()
            .map(|obj| {
                let mut item = (**obj).clone();
                if let Some(m) = item.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                item
            })
            .collect()
    }

    /// The list's JSON, written item by item.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl serde::Serialize for List {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Items<'a>(&'a [Arc<Value>]);
        struct Item<'a>(&'a Value);
        impl serde::Serialize for Items<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|obj| Item(obj)))
            }
        }
        impl serde::Serialize for Item<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self.0.as_object() {
                    Some(m) => s.collect_map(
                        m.iter()
                            .filter(|(k, _)| k.as_str() != "apiVersion" && k.as_str() != "kind"),
                    ),
                    None => self.0.serialize(s),
                }
            }
        }
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("kind", &self.kind)?;
        m.serialize_entry("apiVersion", &self.api_version)?;
        m.serialize_entry("metadata", &self.metadata)?;
        m.serialize_entry("items", &Items(&self.items))?;
        m.end()
    }
}

pub fn set_rv(obj: &mut Value, rv: u64) {
    meta_mut(obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
}

pub fn obj_rv(obj: &Value) -> u64 {
    meta_str(obj, "resourceVersion")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub fn key_of(kind: Kind, obj: &Value) -> Key {
    let ns = if kind.namespaced() {
        meta_str(obj, "namespace").unwrap_or("default").to_string()
    } else {
        String::new()
    };
    (ns, meta_str(obj, "name").unwrap_or_default().to_string())
}

/// Drops empty `finalizers`, `labels` and `annotations` like Go's `omitempty`.
fn normalize(obj: &mut Value) {
    let m = meta_mut(obj);
    for f in ["finalizers", "labels", "annotations"] {
        let empty = match m.get(f) {
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            Some(Value::Null) => true,
            _ => false,
        };
        if empty {
            m.remove(f);
        }
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

const VOLUME_SOURCES: &[&str] = &[
    "nfs",
    "hostPath",
    "csi",
    "local",
    "iscsi",
    "fc",
    "rbd",
    "cephfs",
    "glusterfs",
    "awsElasticBlockStore",
    "gcePersistentDisk",
    "azureDisk",
    "azureFile",
    "cinder",
    "flexVolume",
    "flocker",
    "vsphereVolume",
    "quobyte",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "photonPersistentDisk",
];

fn non_empty_array(v: Option<&Value>) -> bool {
    v.and_then(Value::as_array).is_some_and(|a| !a.is_empty())
}

/// Field validation of the kinds with rules worth modelling.
fn validate(kind: Kind, obj: &Value, version: KubeVersion) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = obj.get("spec");
    match kind {
        Kind::PersistentVolume => {
            if !non_empty_array(spec.and_then(|s| s.get("accessModes"))) {
                causes.push(Cause::required("spec.accessModes", ""));
            }
            let cap = spec
                .and_then(|s| s.get("capacity"))
                .and_then(Value::as_object);
            match cap {
                None => {
                    causes.push(Cause::required("spec.capacity", ""));
                    causes.push(Cause::not_supported(
                        "spec.capacity",
                        "Unsupported value: core.ResourceList(nil): supported values: \"storage\"",
                    ));
                }
                Some(c) if c.is_empty() => {
                    causes.push(Cause::required("spec.capacity", ""));
                    causes.push(Cause::not_supported(
                        "spec.capacity",
                        "Unsupported value: core.ResourceList{}: supported values: \"storage\"",
                    ));
                }
                Some(c) if !c.contains_key("storage") || c.len() > 1 => {
                    causes.push(Cause::not_supported(
                        "spec.capacity",
                        &format!(
                            "Unsupported value: {}: supported values: \"storage\"",
                            Value::Object(c.clone())
                        ),
                    ));
                }
                _ => {}
            }
            let sources = VOLUME_SOURCES
                .iter()
                .filter(|s| spec.and_then(|sp| sp.get(**s)).is_some())
                .count();
            if sources == 0 {
                causes.push(Cause::required("spec", "must specify a volume type"));
            }
        }
        Kind::PersistentVolumeClaim => {
            if !non_empty_array(spec.and_then(|s| s.get("accessModes"))) {
                causes.push(Cause::required(
                    "spec.accessModes",
                    "at least 1 access mode is required",
                ));
            }
            if util::path_str(obj, &["spec", "resources", "requests", "storage"]).is_none() {
                causes.push(Cause::required("spec.resources[storage]", ""));
            }
        }
        Kind::StorageClass if util::path_str(obj, &["provisioner"]).is_none() => {
            causes.push(Cause::required("provisioner", ""));
        }
        Kind::Event => causes.extend(validate_event_namespace(obj, version)),
        _ => {}
    }
    causes
}

/// Where an `events.k8s.io/v1` Event may live (trace: `tests/fixtures/events-cluster-scoped.json`).
/// An Event about a namespaced object must be in that object's namespace. One about a
/// cluster-scoped object (a PV): v1.33 takes `default` or `kube-system`, v1.19 only
/// `kube-system` (it answers 422 for `default`).
fn validate_event_namespace(obj: &Value, version: KubeVersion) -> Option<Cause> {
    let event_ns = meta_str(obj, "namespace").unwrap_or_default();
    let regarding_ns = util::path_str(obj, &["regarding", "namespace"]).unwrap_or_default();
    let allowed = if regarding_ns.is_empty() {
        match version {
            KubeVersion::V1_19 => event_ns == "kube-system",
            KubeVersion::V1_33 => event_ns == "kube-system" || event_ns == "default",
        }
    } else {
        regarding_ns == event_ns
    };
    (!allowed).then(|| {
        Cause::invalid(
            "involvedObject.namespace",
            regarding_ns,
            "does not match event.namespace",
        )
    })
}

/// What a claim's status keeps: v1.19 has no `allocatedResources` or
/// `allocatedResourceStatuses` and drops them without an error; both versions omit empty maps
/// and lists (Go's `omitempty`). Trace: tests/fixtures/v1.*-expansion.json.
fn prune_claim_status(claim: &mut Value, version: KubeVersion) {
    let Some(status) = claim.get_mut("status").and_then(Value::as_object_mut) else {
        return;
    };
    if version == KubeVersion::V1_19 {
        status.remove("allocatedResources");
        status.remove("allocatedResourceStatuses");
    }
    status.retain(|_, v| match v {
        Value::Null => false,
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => true,
    });
}

fn validate_update(kind: Kind, old: &Value, new: &Value, version: KubeVersion) -> Vec<Cause> {
    let mut causes = Vec::new();
    // v1.33 refuses to change an Event's note; v1.19 takes it
    // (trace: tests/fixtures/events-cluster-scoped.json, `note_update`).
    if kind == Kind::Event && version == KubeVersion::V1_33 {
        let note = |v: &Value| v.get("note").cloned().unwrap_or(Value::Null);
        if note(old) != note(new) {
            let value = new.get("note").and_then(Value::as_str).unwrap_or_default();
            causes.push(Cause::invalid("message", value, "field is immutable"));
        }
    }
    if kind == Kind::PersistentVolumeClaim {
        // spec is immutable except resources.requests and a first volumeName
        let strip = |v: &Value, allow_volume_name: bool| {
            let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
            if let Some(m) = s.as_object_mut() {
                if let Some(r) = m.get_mut("resources").and_then(Value::as_object_mut) {
                    r.remove("requests");
                }
                if allow_volume_name {
                    m.remove("volumeName");
                }
            }
            s
        };
        let first_volume_name = util::path_str(old, &["spec", "volumeName"]).is_none();
        let storage = |v: &Value| {
            util::path_str(v, &["spec", "resources", "requests", "storage"])
                .unwrap_or_default()
                .to_string()
        };
        let (old_size, new_size) = (storage(old), storage(new));
        // Only a Bound claim may change its storage request (trace:
        // tests/fixtures/v1.*-expansion.json).
        let resized_unbound = old_size != new_size && util::phase(old) != Some("Bound");
        if strip(old, first_volume_name) != strip(new, first_volume_name) || resized_unbound {
            causes.push(Cause::forbidden(
                "spec",
                "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
            ));
        }
        // No shrinking. v1.19: never below the previous request. v1.33
        // (RecoverVolumeExpansionFailure): a pending request may be lowered, but only to more
        // than status.capacity.
        if util::quantity_cmp(&new_size, &old_size) == Some(std::cmp::Ordering::Less) {
            match version {
                KubeVersion::V1_19 => causes.push(Cause::forbidden(
                    "spec.resources.requests.storage",
                    "field can not be less than previous value",
                )),
                KubeVersion::V1_33 => {
                    let capacity =
                        util::path_str(old, &["status", "capacity", "storage"]).unwrap_or("0");
                    if util::quantity_cmp(&new_size, capacity) != Some(std::cmp::Ordering::Greater)
                    {
                        causes.push(Cause::forbidden(
                            "spec.resources.requests.storage",
                            "field can not be less than status.capacity",
                        ));
                    }
                }
            }
        }
    }
    if kind == Kind::StorageClass {
        for f in [
            "provisioner",
            "parameters",
            "reclaimPolicy",
            "volumeBindingMode",
        ] {
            if old.get(f) != new.get(f) {
                causes.push(Cause::forbidden(
                    f,
                    &format!("updates to {f} are forbidden."),
                ));
            }
        }
    }
    causes
}

impl Store {
    pub fn new(history_limit: usize, version: KubeVersion) -> Store {
        Store {
            rv: 1,
            kinds: Kind::ALL.iter().map(|_| KindStore::default()).collect(),
            history_limit: history_limit.max(1),
            version,
            watch_epoch: 0,
        }
    }

    pub fn ks(&self, kind: Kind) -> &KindStore {
        &self.kinds[kind.index()]
    }

    fn ks_mut(&mut self, kind: Kind) -> &mut KindStore {
        &mut self.kinds[kind.index()]
    }

    pub fn get(&self, kind: Kind, key: &Key) -> Option<Arc<Value>> {
        self.ks(kind).objects.get(key).cloned()
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Stores (or removes) an object and appends the watch event.
    fn record(
        &mut self,
        kind: Kind,
        etype: EventType,
        key: Key,
        obj: Value,
        prev: Option<Arc<Value>>,
    ) -> Arc<Value> {
        let rv = obj_rv(&obj);
        let obj = Arc::new(obj);
        let limit = self.history_limit;
        let ks = self.ks_mut(kind);
        match etype {
            EventType::Deleted => {
                ks.objects.remove(&key);
            }
            _ => {
                ks.objects.insert(key.clone(), obj.clone());
            }
        }
        ks.history.push_back(Arc::new(HistEvent {
            rv,
            etype,
            key,
            obj: obj.clone(),
            prev,
        }));
        while ks.history.len() > limit {
            if let Some(e) = ks.history.pop_front() {
                ks.floor = e.rv;
            }
        }
        obj
    }

    /// Forgets all history: any watch or continue token from a revision handed out before
    /// now gets 410.
    pub fn compact(&mut self) {
        // A new (empty) revision, so every revision handed out so far is now too old.
        let rv = self.bump();
        for ks in &mut self.kinds {
            ks.history.clear();
            ks.floor = rv;
        }
    }

    /// Events of one kind after `rv`, or `Err(floor)` when history no longer reaches back.
    pub fn events_since(&self, kind: Kind, rv: u64) -> Result<Vec<Arc<HistEvent>>, u64> {
        let ks = self.ks(kind);
        if rv < ks.floor {
            return Err(ks.floor);
        }
        let idx = ks.history.partition_point(|e| e.rv <= rv);
        Ok(ks.history.range(idx..).cloned().collect())
    }

    // ---- reads -----------------------------------------------------------------------

    /// The objects whose state at `snap` differs from now: key -> state at `snap`.
    fn overrides_at(
        &self,
        kind: Kind,
        snap: u64,
    ) -> Result<BTreeMap<Key, Option<Arc<Value>>>, u64> {
        let mut out = BTreeMap::new();
        if snap >= self.rv {
            return Ok(out);
        }
        for e in self.events_since(kind, snap)?.iter().rev() {
            out.insert(e.key.clone(), e.prev.clone());
        }
        Ok(out)
    }

    pub fn list(&self, kind: Kind, q: &ListQuery) -> Result<List, ApiError> {
        let (snap, start): (u64, Option<Key>) = match &q.continue_token {
            Some(tok) => {
                let decoded = util::hex_decode(tok)
                    .and_then(|s| {
                        let (rv, rest) = s.split_once('|')?;
                        let (ns, name) = rest.split_once('|')?;
                        Some((rv.parse::<u64>().ok()?, (ns.to_string(), name.to_string())))
                    })
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("continue key is not valid: {tok}"))
                    })?;
                (decoded.0, Some(decoded.1))
            }
            None => (q.exact_rv.unwrap_or(self.rv), None),
        };
        let overrides = self.overrides_at(kind, snap).map_err(|floor| {
            if q.continue_token.is_some() {
                ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.".into())
            } else {
                ApiError::expired(format!("too old resource version: {snap} ({floor})"))
            }
        })?;
        let ns_lower: Option<Key> = q.namespace.clone().map(|ns| (ns, String::new()));
        let lower: Bound<&Key> = match (&start, &ns_lower) {
            (Some(s), Some(n)) if n > s => Bound::Included(n),
            (Some(s), _) => Bound::Excluded(s),
            (None, Some(n)) => Bound::Included(n),
            (None, None) => Bound::Unbounded,
        };
        let mut current = self
            .ks(kind)
            .objects
            .range::<Key, _>((lower, Bound::Unbounded))
            .peekable();
        let mut past = overrides
            .range::<Key, _>((lower, Bound::Unbounded))
            .peekable();
        let selecting = !q.labels.is_empty() || !q.fields.is_empty();
        let limit = q.limit.filter(|l| *l > 0);
        let mut items: Vec<Arc<Value>> = Vec::new();
        let mut last_key: Option<Key> = None;
        let mut more = false;
        let mut remaining: u64 = 0;
        loop {
            let next: Option<(&Key, Option<&Arc<Value>>)> = match (current.peek(), past.peek()) {
                (None, None) => None,
                (Some((ck, _)), Some((pk, _))) if pk <= ck => {
                    let (pk, pv) = past.next().expect("peeked");
                    if *pk == *current.peek().expect("peeked").0 {
                        current.next();
                    }
                    Some((pk, pv.as_ref()))
                }
                (Some(_), _) => {
                    let (ck, cv) = current.next().expect("peeked");
                    Some((ck, Some(cv)))
                }
                (None, Some(_)) => {
                    let (pk, pv) = past.next().expect("peeked");
                    Some((pk, pv.as_ref()))
                }
            };
            let Some((key, obj)) = next else { break };
            if let Some(ns) = &q.namespace {
                if key.0 > *ns {
                    break;
                }
                if key.0 != *ns {
                    continue;
                }
            }
            let Some(obj) = obj else { continue };
            if !util::labels_match(obj, &q.labels) || !util::fields_match(obj, &q.fields) {
                continue;
            }
            if more {
                remaining += 1;
                if selecting {
                    break;
                }
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                more = true;
                remaining = 1;
                if selecting {
                    break;
                }
                continue;
            }
            items.push(obj.clone());
            last_key = Some(key.clone());
        }
        let mut md = Map::new();
        md.insert("resourceVersion".into(), Value::String(snap.to_string()));
        if more && let Some((ns, name)) = last_key {
            md.insert(
                "continue".into(),
                Value::String(util::hex_encode(&format!("{snap}|{ns}|{name}"))),
            );
            if !selecting {
                md.insert("remainingItemCount".into(), json!(remaining));
            }
        }
        Ok(List {
            kind: format!("{}List", kind.kind()),
            api_version: kind.api_version().to_string(),
            metadata: md,
            items,
        })
    }

    // ---- writes ----------------------------------------------------------------------

    fn admit_create(&self, kind: Kind, obj: &mut Value) {
        match kind {
            Kind::PersistentVolumeClaim => {
                let mut f = finalizers(obj);
                if !f.iter().any(|x| x == PVC_PROTECTION) {
                    f.push(PVC_PROTECTION.into());
                }
                set_finalizers(obj, f);
                if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.entry("volumeMode")
                        .or_insert_with(|| json!("Filesystem"));
                    if !spec.contains_key("storageClassName") {
                        let default = self.ks(Kind::StorageClass).objects.values().find(|sc| {
                            util::annotation(sc, "storageclass.kubernetes.io/is-default-class")
                                == Some("true")
                        });
                        if let Some(name) = default.and_then(|sc| meta_str(sc, "name")) {
                            spec.insert("storageClassName".into(), json!(name));
                        }
                    }
                }
                obj["status"] = json!({"phase": "Pending"});
            }
            Kind::PersistentVolume => {
                let mut f = finalizers(obj);
                if !f.iter().any(|x| x == PV_PROTECTION) {
                    f.push(PV_PROTECTION.into());
                }
                set_finalizers(obj, f);
                if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.entry("volumeMode")
                        .or_insert_with(|| json!("Filesystem"));
                    spec.entry("persistentVolumeReclaimPolicy")
                        .or_insert_with(|| json!("Retain"));
                }
                obj["status"] = match self.version {
                    KubeVersion::V1_19 => json!({"phase": "Pending"}),
                    KubeVersion::V1_33 => {
                        json!({"phase": "Pending", "lastPhaseTransitionTime": util::now_rfc3339()})
                    }
                };
            }
            Kind::StorageClass => {
                if let Some(m) = obj.as_object_mut() {
                    m.entry("reclaimPolicy").or_insert_with(|| json!("Delete"));
                    m.entry("volumeBindingMode")
                        .or_insert_with(|| json!("Immediate"));
                }
            }
            Kind::Namespace => {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
            }
            _ => {}
        }
    }

    /// The PersistentVolumeClaimResize admission plugin: a claim may ask for more only if its
    /// StorageClass has `allowVolumeExpansion: true` (trace: tests/fixtures/v1.*-expansion.json).
    /// Runs after validation, as on the real server; `/status` writes are not checked.
    fn admit_claim_resize(&self, name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
        let storage = |v: &Value| {
            util::path_str(v, &["spec", "resources", "requests", "storage"])
                .unwrap_or("0")
                .to_string()
        };
        if util::quantity_cmp(&storage(new), &storage(old)) != Some(std::cmp::Ordering::Greater) {
            return Ok(());
        }
        let forbidden = |why: &str| {
            ApiError::admission_forbidden(Kind::PersistentVolumeClaim, name, why.to_string())
        };
        if util::phase(old) != Some("Bound") {
            return Err(forbidden(
                "Only bound persistent volume claims can be expanded",
            ));
        }
        let class =
            |v: &Value| util::path_str(v, &["spec", "storageClassName"]).map(str::to_string);
        let allowed = class(old).is_some()
            && class(old) == class(new)
            && self
                .get(
                    Kind::StorageClass,
                    &(String::new(), class(new).unwrap_or_default()),
                )
                .is_some_and(|sc| sc.get("allowVolumeExpansion") == Some(&Value::Bool(true)));
        if allowed {
            Ok(())
        } else {
            Err(forbidden(
                "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize",
            ))
        }
    }

    /// POST. `ns` is the namespace from the URL.
    pub fn create(
        &mut self,
        kind: Kind,
        ns: Option<&str>,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was in an unknown format".into(),
            ));
        }
        obj["apiVersion"] = json!(kind.api_version());
        obj["kind"] = json!(kind.kind());
        if kind.namespaced() {
            let url_ns = ns.unwrap_or("default");
            match meta_str(&obj, "namespace") {
                Some(body_ns) if body_ns != url_ns => {
                    return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request".into()));
                }
                _ => {
                    meta_mut(&mut obj).insert("namespace".into(), json!(url_ns));
                }
            }
        } else {
            meta_mut(&mut obj).remove("namespace");
        }
        if meta_str(&obj, "name").is_none() {
            match meta_str(&obj, "generateName").map(str::to_string) {
                Some(prefix) => {
                    let ns_key = if kind.namespaced() {
                        ns.unwrap_or("default").to_string()
                    } else {
                        String::new()
                    };
                    let mut name = format!("{prefix}{}", util::generate_suffix());
                    while self
                        .ks(kind)
                        .objects
                        .contains_key(&(ns_key.clone(), name.clone()))
                    {
                        name = format!("{prefix}{}", util::generate_suffix());
                    }
                    meta_mut(&mut obj).insert("name".into(), json!(name));
                }
                None => {
                    return Err(ApiError::invalid(
                        kind,
                        "",
                        vec![Cause::required(
                            "metadata.name",
                            "name or generateName is required",
                        )],
                    ));
                }
            }
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        if !is_dns_subdomain(&name) {
            return Err(ApiError::invalid(
                kind,
                &name,
                vec![Cause::invalid("metadata.name", &name, SUBDOMAIN_MSG)],
            ));
        }
        let key = key_of(kind, &obj);
        if self.ks(kind).objects.contains_key(&key) {
            return Err(ApiError::already_exists(kind, &name));
        }
        {
            let m = meta_mut(&mut obj);
            for f in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "selfLink",
                "managedFields",
            ] {
                m.remove(f);
            }
            m.insert("uid".into(), json!(util::new_uid()));
            m.insert("creationTimestamp".into(), json!(util::now_rfc3339()));
        }
        self.admit_create(kind, &mut obj);
        let causes = validate(kind, &obj, self.version);
        if !causes.is_empty() {
            return Err(ApiError::invalid(kind, &name, causes));
        }
        normalize(&mut obj);
        if dry_run {
            return Ok(Arc::new(obj));
        }
        let rv = self.bump();
        set_rv(&mut obj, rv);
        Ok(self.record(kind, EventType::Added, key, obj, None))
    }

    /// PUT, the second half of PATCH, and every internal controller write.
    /// `status_only` is the `/status` subresource.
    pub fn update(
        &mut self,
        kind: Kind,
        key: &Key,
        status_only: bool,
        mut new: Value,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let name = key.1.as_str();
        let old = self
            .get(kind, key)
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        if !new.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was in an unknown format".into(),
            ));
        }
        if let Some(body_name) = meta_str(&new, "name")
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if kind.namespaced()
            && let Some(body_ns) = meta_str(&new, "namespace")
            && body_ns != key.0
        {
            return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request".into()));
        }
        if let Some(rv) = meta_str(&new, "resourceVersion")
            && rv != meta_str(&old, "resourceVersion").unwrap_or_default()
        {
            return Err(ApiError::stale(kind, name));
        }
        if status_only {
            let mut merged = (*old).clone();
            match new.get("status") {
                Some(s) => merged["status"] = s.clone(),
                None => {
                    if let Some(m) = merged.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            new = merged;
        } else if kind.has_status() {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        new["apiVersion"] = json!(kind.api_version());
        new["kind"] = json!(kind.kind());
        {
            let old_meta = meta(&old).cloned().unwrap_or_default();
            let m = meta_mut(&mut new);
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "name",
                "generation",
                "generateName",
                "resourceVersion",
                "managedFields",
            ] {
                match old_meta.get(f) {
                    Some(v) => {
                        m.insert(f.into(), v.clone());
                    }
                    None => {
                        m.remove(f);
                    }
                }
            }
        }
        normalize(&mut new);
        let deleting = meta_str(&old, "deletionTimestamp").is_some();
        if deleting {
            let old_f = finalizers(&old);
            let added: Vec<String> = finalizers(&new)
                .into_iter()
                .filter(|f| !old_f.contains(f))
                .collect();
            if !added.is_empty() {
                let list = added
                    .iter()
                    .map(|f| format!("{f:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(ApiError::invalid(
                    kind,
                    name,
                    vec![Cause::forbidden(
                        "metadata.finalizers",
                        &format!(
                            "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{list}}}"
                        ),
                    )],
                ));
            }
        }
        if kind == Kind::PersistentVolumeClaim && status_only {
            prune_claim_status(&mut new, self.version);
        }
        let mut causes = validate(kind, &new, self.version);
        causes.extend(validate_update(kind, &old, &new, self.version));
        if !causes.is_empty() {
            return Err(ApiError::invalid(kind, name, causes));
        }
        if kind == Kind::PersistentVolumeClaim && !status_only {
            self.admit_claim_resize(name, &old, &new)?;
        }
        if kind == Kind::PersistentVolume
            && self.version == KubeVersion::V1_33
            && util::phase(&new) != util::phase(&old)
            && let Some(status) = new.get_mut("status").and_then(Value::as_object_mut)
        {
            status.insert("lastPhaseTransitionTime".into(), json!(util::now_rfc3339()));
        }
        if new == *old {
            return Ok(old);
        }
        if dry_run {
            return Ok(Arc::new(new));
        }
        let rv = self.bump();
        set_rv(&mut new, rv);
        if deleting && finalizers(&new).is_empty() {
            // What was stored last, with the revision of the delete (as etcd reports it).
            let mut gone = (*old).clone();
            set_rv(&mut gone, rv);
            self.record(kind, EventType::Deleted, key.clone(), gone, Some(old));
            return Ok(Arc::new(new));
        }
        Ok(self.record(kind, EventType::Modified, key.clone(), new, Some(old)))
    }

    /// DELETE with DeleteOptions (`preconditions` honoured).
    pub fn delete(
        &mut self,
        kind: Kind,
        key: &Key,
        opts: &Value,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let name = key.1.as_str();
        let old = self
            .get(kind, key)
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        if let Some(pre) = opts.get("preconditions") {
            let uid = meta_str(&old, "uid").unwrap_or_default();
            if let Some(want) = pre.get("uid").and_then(Value::as_str)
                && want != uid
            {
                return Err(ApiError::conflict(
                    kind,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                    ),
                ));
            }
            let rv = meta_str(&old, "resourceVersion").unwrap_or_default();
            if let Some(want) = pre.get("resourceVersion").and_then(Value::as_str)
                && want != rv
            {
                return Err(ApiError::conflict(
                    kind,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rv}"
                    ),
                ));
            }
        }
        if meta_str(&old, "deletionTimestamp").is_some() {
            return Ok(old);
        }
        if dry_run {
            return Ok(old);
        }
        let rv = self.bump();
        if !finalizers(&old).is_empty() {
            let mut new = (*old).clone();
            let m = meta_mut(&mut new);
            m.insert("deletionTimestamp".into(), json!(util::now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            set_rv(&mut new, rv);
            return Ok(self.record(kind, EventType::Modified, key.clone(), new, Some(old)));
        }
        let mut gone = (*old).clone();
        set_rv(&mut gone, rv);
        Ok(self.record(kind, EventType::Deleted, key.clone(), gone, Some(old)))
    }

    /// Test API: store an object as given (fills uid, creationTimestamp; no admission).
    pub fn put_raw(&mut self, kind: Kind, mut obj: Value) -> Arc<Value> {
        obj["apiVersion"] = json!(kind.api_version());
        obj["kind"] = json!(kind.kind());
        let key = key_of(kind, &obj);
        if kind.namespaced() {
            meta_mut(&mut obj).insert("namespace".into(), json!(key.0));
        }
        let prev = self.get(kind, &key);
        {
            let m = meta_mut(&mut obj);
            if !m.contains_key("uid") {
                let uid = prev
                    .as_ref()
                    .and_then(|p| meta_str(p, "uid"))
                    .map(str::to_string)
                    .unwrap_or_else(util::new_uid);
                m.insert("uid".into(), json!(uid));
            }
            m.entry("creationTimestamp")
                .or_insert_with(|| json!(util::now_rfc3339()));
        }
        normalize(&mut obj);
        let rv = self.bump();
        set_rv(&mut obj, rv);
        let etype = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(kind, etype, key, obj, prev)
    }

    /// Test API: remove an object now, whatever its finalizers.
    pub fn delete_raw(&mut self, kind: Kind, key: &Key) -> Option<Arc<Value>> {
        let old = self.get(kind, key)?;
        let rv = self.bump();
        let mut gone = (*old).clone();
        set_rv(&mut gone, rv);
        Some(self.record(kind, EventType::Deleted, key.clone(), gone, Some(old)))
    }
}
