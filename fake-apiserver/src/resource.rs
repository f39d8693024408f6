//! The resource types the fake serves.

/// A kind of object the fake stores. Each has its own history and watch streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// core/v1 `persistentvolumeclaims` (namespaced, `/status`).
    PersistentVolumeClaim,
    /// core/v1 `persistentvolumes` (cluster scope, `/status`).
    PersistentVolume,
    /// core/v1 `events` (namespaced).
    CoreEvent,
    /// core/v1 `namespaces` (cluster scope; no lifecycle).
    Namespace,
    /// storage.k8s.io/v1 `storageclasses` (cluster scope).
    StorageClass,
    /// coordination.k8s.io/v1 `leases` (namespaced).
    Lease,
    /// events.k8s.io/v1 `events` (namespaced).
    Event,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::PersistentVolumeClaim,
        Kind::PersistentVolume,
        Kind::CoreEvent,
        Kind::Namespace,
        Kind::StorageClass,
        Kind::Lease,
        Kind::Event,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// API group (`""` for core).
    pub fn group(self) -> &'static str {
        match self {
            Kind::PersistentVolumeClaim
            | Kind::PersistentVolume
            | Kind::CoreEvent
            | Kind::Namespace => "",
            Kind::StorageClass => "storage.k8s.io",
            Kind::Lease => "coordination.k8s.io",
            Kind::Event => "events.k8s.io",
        }
    }

    /// `apiVersion` as written in objects.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::StorageClass => "storage.k8s.io/v1",
            Kind::Lease => "coordination.k8s.io/v1",
            Kind::Event => "events.k8s.io/v1",
            _ => "v1",
        }
    }

    /// Plural resource name as in URLs and RBAC rules.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::PersistentVolumeClaim => "persistentvolumeclaims",
            Kind::PersistentVolume => "persistentvolumes",
            Kind::CoreEvent | Kind::Event => "events",
            Kind::Namespace => "namespaces",
            Kind::StorageClass => "storageclasses",
            Kind::Lease => "leases",
        }
    }

    /// The `kind` field of objects.
    pub fn kind(self) -> &'static str {
        match self {
            Kind::PersistentVolumeClaim => "PersistentVolumeClaim",
            Kind::PersistentVolume => "PersistentVolume",
            Kind::CoreEvent | Kind::Event => "Event",
            Kind::Namespace => "Namespace",
            Kind::StorageClass => "StorageClass",
            Kind::Lease => "Lease",
        }
    }

    pub fn namespaced(self) -> bool {
        matches!(
            self,
            Kind::PersistentVolumeClaim | Kind::CoreEvent | Kind::Lease | Kind::Event
        )
    }

    pub fn has_status(self) -> bool {
        matches!(
            self,
            Kind::PersistentVolumeClaim | Kind::PersistentVolume | Kind::Namespace
        )
    }

    /// `persistentvolumes` for core, `storageclasses.storage.k8s.io` otherwise: the
    /// spelling error messages use.
    pub fn qualified_resource(self) -> String {
        if self.group().is_empty() {
            self.resource().to_string()
        } else {
            format!("{}.{}", self.resource(), self.group())
        }
    }

    /// `PersistentVolume` for core, `StorageClass.storage.k8s.io` otherwise.
    pub fn qualified_kind(self) -> String {
        if self.group().is_empty() {
            self.kind().to_string()
        } else {
            format!("{}.{}", self.kind(), self.group())
        }
    }

    /// Short names kubectl accepts (`kubectl get pvc`), as discovery lists them.
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::PersistentVolumeClaim => &["pvc"],
            Kind::PersistentVolume => &["pv"],
            Kind::CoreEvent | Kind::Event => &["ev"],
            Kind::Namespace => &["ns"],
            Kind::StorageClass => &["sc"],
            Kind::Lease => &[],
        }
    }

    /// Singular resource name (discovery's `singularName`).
    pub fn singular(self) -> &'static str {
        match self {
            Kind::PersistentVolumeClaim => "persistentvolumeclaim",
            Kind::PersistentVolume => "persistentvolume",
            Kind::CoreEvent | Kind::Event => "event",
            Kind::Namespace => "namespace",
            Kind::StorageClass => "storageclass",
            Kind::Lease => "lease",
        }
    }

    /// Verbs discovery lists for the resource (namespaces have no `deletecollection`).
    pub fn verbs(self) -> &'static [&'static str] {
        if self == Kind::Namespace {
            &[
                "create", "delete", "get", "list", "patch", "update", "watch",
            ]
        } else {
            &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        }
    }

    /// Finds the kind for a URL's group and resource.
    pub fn from_group_resource(group: &str, resource: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.resource() == resource)
    }

    /// Finds the kind for an object's `apiVersion` and `kind`.
    pub fn from_api_version_kind(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.kind() == kind)
    }
}
