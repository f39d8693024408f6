//! The cluster a scenario runs against: the in-process fake API server (default), or a real
//! cluster when `E2E_KUBECONFIG` names a kubeconfig. Scenarios talk to either through a plain
//! `kube::Client`; only fault injection needs the fake.

use std::collections::BTreeMap;

use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

use fake_apiserver::{FakeApiServer, Options, RbacPolicy};
use k8s_openapi::api::core::v1::{
    Namespace, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    VolumeResourceRequirements,
};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};

use crate::provisioner::ProvisionerOptions;
use nfs_provisioner::persistent_volume::ANN_PROVISIONED_BY;

/// User the provisioner authenticates as against the fake server (RBAC subject in `rbac/`).
pub const PROVISIONER_USER: &str = "system:serviceaccount:nfs-provisioner:nfs-provisioner";

pub struct TestCluster {
    fake: Option<FakeApiServer>,
    /// RBAC the fake enforces: the shipped `rbac/` objects, granted also to `extra_users`.
    rbac_objects: std::sync::Mutex<Vec<serde_json::Value>>,
    extra_users: std::sync::Mutex<Vec<String>>,
    pub client: Client,
    provisioner_config: kube::Config,
    pub namespace: String,
    pub provisioner_name: String,
    classes: std::sync::Mutex<Vec<String>>,
    /// Scales waits: a real control plane binds in seconds, the fake in milliseconds.
    pub patience: Duration,
}

fn random_suffix() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|u| u.trim().chars().filter(|c| *c != '-').take(8).collect())
        .unwrap_or_else(|_| format!("{:08x}", std::process::id()))
}

/// The control plane version the fake imitates in the shared scenarios: v1.19 unless
/// `E2E_FAKE_VERSION=1.33`. The older one is the default because it is the stricter where
/// they differ (Events about PVs only in `kube-system`, only the beta provisioner
/// annotation); the real v1.33 control plane in CI covers the newer one.
pub fn fake_version() -> fake_apiserver::KubeVersion {
    match std::env::var("E2E_FAKE_VERSION").as_deref() {
        Ok("1.33") => fake_apiserver::KubeVersion::V1_33,
        Ok("1.19") | Ok("") | Err(_) => fake_apiserver::KubeVersion::V1_19,
        Ok(other) => panic!("E2E_FAKE_VERSION must be 1.19 or 1.33, not {other:?}"),
    }
}

/// The real cluster's kubeconfig, when the scenarios should run against one.
pub fn real_cluster_kubeconfig() -> Option<String> {
    std::env::var("E2E_KUBECONFIG")
        .ok()
        .filter(|s| !s.is_empty())
}

impl TestCluster {
    /// A fake control plane (with the PV binder), or the real cluster of `E2E_KUBECONFIG`.
    pub async fn start(test: &str) -> Self {
        static ANNOUNCE: std::sync::Once = std::sync::Once::new();
        ANNOUNCE.call_once(|| match real_cluster_kubeconfig() {
            Some(path) => eprintln!("e2e: running scenarios against the real cluster of E2E_KUBECONFIG={path}"),
            None => eprintln!(
                "e2e: E2E_KUBECONFIG is not set: real-cluster run SKIPPED; scenarios run against the fake API server"
            ),
        });
        match real_cluster_kubeconfig() {
            Some(path) => Self::real(test, &path).await,
            None => {
                Self::fake(Options {
                    kube_version: fake_version(),
                    ..Options::default()
                })
                .await
            }
        }
    }

    /// Always the fake: for scenarios that inject faults.
    pub async fn fake(options: Options) -> Self {
        let fake = FakeApiServer::start(options)
            .await
            .expect("fake API server starts");
        let config_for = |user: &str| {
            let mut config = kube::Config::new(fake.url().parse().expect("url"));
            config.auth_info.token = Some(fake.token_for(user).into());
            config
        };
        let client = Client::try_from(config_for("admin")).expect("client");
        let provisioner_config = config_for(PROVISIONER_USER);
        let cluster = Self {
            fake: Some(fake),
            rbac_objects: std::sync::Mutex::new(shipped_rbac()),
            extra_users: Default::default(),
            client,
            provisioner_config,
            namespace: format!("e2e-{}", random_suffix()),
            provisioner_name: "example.com/nfs".to_string(),
            classes: Default::default(),
            patience: Duration::from_secs(30),
        };
        cluster.apply_rbac();
        cluster
    }

    /// Enforces the RBAC objects on the fake; the test's own `admin` user may do anything.
    fn apply_rbac(&self) {
        let Some(fake) = &self.fake else { return };
        let mut objects = self.rbac_objects.lock().unwrap().clone();
        for user in self.extra_users.lock().unwrap().iter() {
            objects.extend(bindings_for_user(&objects, user));
        }
        let policy = RbacPolicy::from_objects(objects.iter()).expect("RBAC objects load");
        fake.set_rbac(Some(policy.with_superuser("admin")));
    }

    /// Grants `user` (e.g. one replica of several) the provisioner's roles.
    pub fn grant_provisioner_roles(&self, user: &str) {
        self.extra_users.lock().unwrap().push(user.to_string());
        self.apply_rbac();
    }

    /// Replaces the enforced RBAC objects (e.g. with one permission removed).
    pub fn set_rbac_objects(&self, objects: Vec<serde_json::Value>) {
        *self.rbac_objects.lock().unwrap() = objects;
        self.apply_rbac();
    }

    async fn real(test: &str, kubeconfig: &str) -> Self {
        let config = nfs_provisioner::kube_client::load_config(Some(Path::new(kubeconfig)))
            .await
            .expect("E2E_KUBECONFIG loads");
        let client = Client::try_from(config.clone()).expect("client");
        let suffix = random_suffix();
        let namespace = format!(
            "e2e-{}-{suffix}",
            test.replace('_', "-").chars().take(30).collect::<String>()
        );
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        Self {
            fake: None,
            rbac_objects: Default::default(),
            extra_users: Default::default(),
            client,
            provisioner_config: config,
            namespace,
            provisioner_name: format!("e2e-{suffix}.nfs-provisioner.io/test"),
            classes: Default::default(),
            patience: Duration::from_secs(180),
        }
    }

    pub fn fake_server(&self) -> Option<&FakeApiServer> {
        self.fake.as_ref()
    }

    pub fn provisioner_config(&self) -> kube::Config {
        self.provisioner_config.clone()
    }

    /// A config authenticating as another user of the fake (e.g. a second replica).
    #[allow(dead_code)] // used by the leader-election scenarios
    pub fn fake_config_for(&self, user: &str) -> kube::Config {
        let fake = self.fake.as_ref().expect("fake cluster");
        let mut config = kube::Config::new(fake.url().parse().expect("url"));
        config.auth_info.token = Some(fake.token_for(user).into());
        config
    }

    pub fn provisioner_options(&self, root: &Path) -> ProvisionerOptions {
        let mut o = ProvisionerOptions::new(&self.provisioner_name, root);
        o.lease_namespace = if self.fake.is_some() {
            "nfs-provisioner".to_string()
        } else {
            self.namespace.clone()
        };
        o
    }

    pub fn classes(&self) -> Api<StorageClass> {
        Api::all(self.client.clone())
    }
    pub fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    pub fn volumes(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    /// Creates a StorageClass of this provisioner; its name is unique to the test run.
    pub async fn create_class(
        &self,
        short: &str,
        parameters: &[(&str, &str)],
        reclaim: &str,
    ) -> String {
        self.create_class_with(short, parameters, reclaim, |_| {})
            .await
    }

    pub async fn create_class_with(
        &self,
        short: &str,
        parameters: &[(&str, &str)],
        reclaim: &str,
        mutate: impl FnOnce(&mut StorageClass),
    ) -> String {
        let name = format!("{}-{short}", self.namespace);
        let mut class = self.class_object(&name, parameters, reclaim);
        mutate(&mut class);
        self.classes()
            .create(&PostParams::default(), &class)
            .await
            .expect("create storage class");
        self.classes.lock().unwrap().push(name.clone());
        name
    }

    fn class_object(&self, name: &str, parameters: &[(&str, &str)], reclaim: &str) -> StorageClass {
        StorageClass {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            provisioner: self.provisioner_name.clone(),
            parameters: Some(
                parameters
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            reclaim_policy: Some(reclaim.to_string()),
            ..Default::default()
        }
    }

    /// StorageClass parameters are immutable: changing them means deleting and re-creating
    /// the class under the same name.
    pub async fn replace_class(&self, name: &str, parameters: &[(&str, &str)], reclaim: &str) {
        self.delete_class(name).await;
        self.classes()
            .create(
                &PostParams::default(),
                &self.class_object(name, parameters, reclaim),
            )
            .await
            .expect("re-create storage class");
    }

    pub async fn delete_class(&self, name: &str) {
        self.classes()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete storage class");
    }

    pub fn claim(name: &str, class: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteMany".to_string()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity("1Mi".to_string()),
                    )])),
                    ..Default::default()
                }),
                storage_class_name: Some(class.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub async fn create_claim(&self, claim: &PersistentVolumeClaim) -> PersistentVolumeClaim {
        self.claims()
            .create(&PostParams::default(), claim)
            .await
            .expect("create claim")
    }

    pub async fn delete_claim(&self, name: &str) {
        self.claims()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete claim");
    }

    /// Polls `check` until it returns `Some`, or panics after `patience` with `what`.
    pub async fn eventually<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.patience;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `n` claims of the scenario's namespace are Bound and returns them all.
    pub async fn wait_all_bound(&self, n: usize) -> Vec<PersistentVolumeClaim> {
        self.eventually(&format!("all {n} claims Bound"), || async {
            let list = self.claims().list(&ListParams::default()).await.ok()?;
            let bound = list
                .items
                .iter()
                .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
                .count();
            (bound == n).then_some(list.items)
        })
        .await
    }

    /// Waits until the claim is Bound and returns its PV.
    pub async fn wait_bound(&self, claim: &str) -> PersistentVolume {
        let pv_name = self
            .eventually(&format!("claim {claim} to be Bound"), || async {
                let c = self.claims().get_opt(claim).await.ok()??;
                let bound = c.status.as_ref()?.phase.as_deref() == Some("Bound");
                bound.then(|| c.spec?.volume_name).flatten()
            })
            .await;
        self.volumes().get(&pv_name).await.expect("bound PV exists")
    }

    /// PVs provisioned by the provisioner under test.
    pub async fn our_volumes(&self) -> Vec<PersistentVolume> {
        let list = self
            .volumes()
            .list(&ListParams::default())
            .await
            .expect("list PVs");
        list.items
            .into_iter()
            .filter(|pv| pv.annotations().get(ANN_PROVISIONED_BY) == Some(&self.provisioner_name))
            .collect()
    }

    pub async fn wait_volume_gone(&self, pv: &str) {
        self.eventually(&format!("PV {pv} to be gone"), || async {
            matches!(self.volumes().get_opt(pv).await, Ok(None)).then_some(())
        })
        .await
    }

    pub async fn wait_volume_phase(&self, pv: &str, phase: &str) -> PersistentVolume {
        self.eventually(&format!("PV {pv} to be {phase}"), || async {
            let v = self.volumes().get_opt(pv).await.ok()??;
            (v.status.as_ref()?.phase.as_deref() == Some(phase)).then_some(v)
        })
        .await
    }

    /// events.k8s.io events about the object `name` in `namespace`.
    pub async fn events_about(&self, namespace: &str, name: &str) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        api.list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect()
    }

    /// Waits for an event with `reason` about the claim and returns its note.
    pub async fn wait_claim_event(&self, claim: &str, reason: &str) -> String {
        self.eventually(&format!("event {reason} on claim {claim}"), || async {
            self.events_about(&self.namespace, claim)
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason))
                .map(|e| e.note.unwrap_or_default())
        })
        .await
    }

    /// Waits for an event with `reason` about the PV and returns its note. Looks where
    /// `kubectl describe pv` looks: every namespace (the provisioner writes them to
    /// `kube-system`, the only namespace v1.19 accepts). On a real cluster it also reads them
    /// as `kubectl describe pv` does, through core/v1 with its field selector.
    pub async fn wait_volume_event(&self, pv: &str, reason: &str) -> String {
        let note = self
            .eventually(&format!("event {reason} on PV {pv}"), || async {
                Api::<Event>::all(self.client.clone())
                    .list(&ListParams::default())
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pv))
                    .find(|e| e.reason.as_deref() == Some(reason))
                    .map(|e| e.note.unwrap_or_default())
            })
            .await;
        if self.fake.is_none() {
            let uid = self
                .volumes()
                .get_opt(pv)
                .await
                .ok()
                .flatten()
                .and_then(|v| v.metadata.uid);
            let mut selector = format!(
                "involvedObject.name={pv},involvedObject.namespace=,involvedObject.kind=PersistentVolume"
            );
            if let Some(uid) = uid {
                selector.push_str(&format!(",involvedObject.uid={uid}"));
            }
            let described = Api::<k8s_openapi::api::core::v1::Event>::all(self.client.clone())
                .list(&ListParams::default().fields(&selector))
                .await
                .expect("list core/v1 events as kubectl describe does");
            assert!(
                described
                    .items
                    .iter()
                    .any(|e| e.reason.as_deref() == Some(reason)),
                "kubectl describe pv {pv} would not show the {reason} event"
            );
        }
        note
    }

    /// Removes what the scenario created in a real cluster (the fake just goes away).
    pub async fn cleanup(self) {
        if self.fake.is_some() {
            return;
        }
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.namespace, &DeleteParams::default())
            .await;
        let classes = self.classes.lock().unwrap().clone();
        for class in classes {
            let _ = self
                .classes()
                .delete(&class, &DeleteParams::default())
                .await;
        }
        // PVs left Released by Retain scenarios belong to this run only.
        if let Ok(list) = self.volumes().list(&ListParams::default()).await {
            for pv in list.items {
                let ours = pv.annotations().get(ANN_PROVISIONED_BY) == Some(&self.provisioner_name);
                if ours {
                    let name = pv.name_any();
                    let _ = self.volumes().delete(&name, &DeleteParams::default()).await;
                    let patch = serde_json::json!({"metadata": {"finalizers": null}});
                    let _ = self
                        .volumes()
                        .patch(
                            &name,
                            &kube::api::PatchParams::default(),
                            &kube::api::Patch::Merge(&patch),
                        )
                        .await;
                }
            }
        }
    }
}

/// Every entry below `root` (relative paths), for asserting what exists on the "NFS root".
pub fn entries(root: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            // The readiness probe creates and removes a marker beneath the root every few
            // seconds; a listing can catch it in between.
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".nfs-provisioner-probe-") {
                continue;
            }
            // The orphan journal's and the clone staging directories: provisioner
            // bookkeeping, not volumes (the clone scenarios look into staging themselves).
            if name == nfs_provisioner::planning::JOURNAL_DIRECTORY
                || name == nfs_provisioner::planning::STAGING_DIRECTORY
            {
                continue;
            }
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// The RBAC objects shipped in `rbac/`, as JSON.
pub fn shipped_rbac() -> Vec<serde_json::Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rbac");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("rbac/ exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
        })
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc).expect("RBAC YAML parses");
            if !value.is_null() {
                objects.push(value);
            }
        }
    }
    objects
}

/// Copies of the shipped bindings naming `user` instead of the service account.
fn bindings_for_user(objects: &[serde_json::Value], user: &str) -> Vec<serde_json::Value> {
    objects
        .iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("ClusterRoleBinding" | "RoleBinding")))
        .map(|o| {
            let mut b = o.clone();
            b["metadata"]["name"] = format!("{}-{user}", o["metadata"]["name"].as_str().unwrap_or("")).into();
            b["subjects"] = serde_json::json!([{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}]);
            b
        })
        .collect()
}
