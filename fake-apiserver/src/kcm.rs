//! The parts of kube-controller-manager a provisioner meets: the PV binder (provisioner
//! annotation, binding, Released), pvc-protection and pv-protection. It runs inside the
//! server, writes straight to the store (no RBAC, no faults, not in the request log) and
//! makes one write per step, so watchers see the same sequence of events as on a real
//! cluster (see `traces/`).

use crate::Inner;
use crate::resource::Kind;
use crate::store::{EventType, Key, KubeVersion, PV_PROTECTION, PVC_PROTECTION, Store};
use crate::util::{self, annotation, finalizers, meta_str, path_str, phase, set_annotation};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

#[derive(Default)]
struct State {
    last: u64,
    full: bool,
    /// claim key -> names of PVs whose claimRef names it.
    pv_by_claim: HashMap<Key, BTreeSet<String>>,
}

fn claim_ref_key(pv: &Value) -> Option<Key> {
    let cr = pv.get("spec")?.get("claimRef")?;
    Some((
        cr.get("namespace")?.as_str()?.to_string(),
        cr.get("name")?.as_str()?.to_string(),
    ))
}

fn pv_key(name: &str) -> Key {
    (String::new(), name.to_string())
}

impl State {
    fn index_remove(&mut self, pv: &Value) {
        if let (Some(k), Some(n)) = (claim_ref_key(pv), meta_str(pv, "name"))
            && let Some(set) = self.pv_by_claim.get_mut(&k)
        {
            set.remove(n);
            if set.is_empty() {
                self.pv_by_claim.remove(&k);
            }
        }
    }
    fn index_add(&mut self, pv: &Value) {
        if let (Some(k), Some(n)) = (claim_ref_key(pv), meta_str(pv, "name")) {
            self.pv_by_claim.entry(k).or_default().insert(n.to_string());
        }
    }
}

/// Collects what changed since the last pass; `None` when nothing did.
fn collect(s: &Store, st: &mut State) -> Option<(BTreeSet<Key>, BTreeSet<String>)> {
    let mut claims = BTreeSet::new();
    let mut pvs = BTreeSet::new();
    if !st.full {
        let evs: Result<Vec<_>, _> = [
            Kind::PersistentVolumeClaim,
            Kind::PersistentVolume,
            Kind::StorageClass,
        ]
        .into_iter()
        .map(|k| s.events_since(k, st.last).map(|e| (k, e)))
        .collect();
        match evs {
            Ok(per_kind) => {
                for (kind, evs) in per_kind {
                    for e in evs {
                        match kind {
                            Kind::StorageClass => st.full = true,
                            Kind::PersistentVolumeClaim => {
                                claims.insert(e.key.clone());
                                if let Some(vn) = path_str(&e.obj, &["spec", "volumeName"]) {
                                    pvs.insert(vn.to_string());
                                }
                                if let Some(set) = st.pv_by_claim.get(&e.key) {
                                    pvs.extend(set.iter().cloned());
                                }
                            }
                            _ => {
                                if let Some(p) = &e.prev {
                                    st.index_remove(p);
                                    if let Some(k) = claim_ref_key(p) {
                                        claims.insert(k);
                                    }
                                }
                                if e.etype != EventType::Deleted {
                                    st.index_add(&e.obj);
                                }
                                if let Some(k) = claim_ref_key(&e.obj) {
                                    claims.insert(k);
                                }
                                pvs.insert(e.key.1.clone());
                            }
                        }
                    }
                }
            }
            Err(_) => st.full = true,
        }
    }
    if st.full {
        st.pv_by_claim.clear();
        let all_pvs: Vec<Arc<Value>> = s
            .ks(Kind::PersistentVolume)
            .objects
            .values()
            .cloned()
            .collect();
        for pv in &all_pvs {
            st.index_add(pv);
        }
        claims = s
            .ks(Kind::PersistentVolumeClaim)
            .objects
            .keys()
            .cloned()
            .collect();
        pvs = s
            .ks(Kind::PersistentVolume)
            .objects
            .keys()
            .map(|k| k.1.clone())
            .collect();
    }
    st.full = false;
    st.last = s.rv;
    if claims.is_empty() && pvs.is_empty() {
        None
    } else {
        Some((claims, pvs))
    }
}

fn set_phase(s: &mut Store, kind: Kind, key: &Key, obj: &Value, p: &str) -> bool {
    let mut new = obj.clone();
    new["status"]["phase"] = json!(p);
    s.update(kind, key, true, new, false).is_ok()
}

fn claim_step(s: &mut Store, st: &State, key: &Key) -> bool {
    let Some(c) = s.get(Kind::PersistentVolumeClaim, key) else {
        return false;
    };
    let uid = meta_str(&c, "uid").unwrap_or_default().to_string();
    let deleting = meta_str(&c, "deletionTimestamp").is_some();
    if deleting && finalizers(&c).iter().any(|f| f == PVC_PROTECTION) {
        // pvc-protection: no pods are modelled, so the claim is never in use
        let mut new = (*c).clone();
        let rest: Vec<String> = finalizers(&c)
            .into_iter()
            .filter(|f| f != PVC_PROTECTION)
            .collect();
        util::set_finalizers(&mut new, rest);
        return s
            .update(Kind::PersistentVolumeClaim, key, false, new, false)
            .is_ok();
    }
    match path_str(&c, &["spec", "volumeName"]).map(str::to_string) {
        None => {
            // a PV pre-bound to this claim (e.g. one the provisioner just created)
            let candidates = st.pv_by_claim.get(key).cloned().unwrap_or_default();
            for name in candidates {
                let pk = pv_key(&name);
                let Some(pv) = s.get(Kind::PersistentVolume, &pk) else {
                    continue;
                };
                let cr_uid = path_str(&pv, &["spec", "claimRef", "uid"]).unwrap_or_default();
                if claim_ref_key(&pv).as_ref() != Some(key) || !(cr_uid.is_empty() || cr_uid == uid)
                {
                    continue;
                }
                if cr_uid.is_empty() {
                    let mut new = (*pv).clone();
                    new["spec"]["claimRef"]["uid"] = json!(uid);
                    new["spec"]["claimRef"]["resourceVersion"] =
                        json!(meta_str(&c, "resourceVersion").unwrap_or_default());
                    return s
                        .update(Kind::PersistentVolume, &pk, false, new, false)
                        .is_ok();
                }
                if phase(&pv) != Some("Bound") {
                    return set_phase(s, Kind::PersistentVolume, &pk, &pv, "Bound");
                }
                let mut new = (*c).clone();
                new["spec"]["volumeName"] = json!(name);
                set_annotation(&mut new, ANN_BIND_COMPLETED, "yes");
                set_annotation(&mut new, ANN_BOUND_BY_CONTROLLER, "yes");
                return s
                    .update(Kind::PersistentVolumeClaim, key, false, new, false)
                    .is_ok();
            }
            if deleting {
                return false;
            }
            // no volume: hand the claim to its external provisioner
            let Some(class) = path_str(&c, &["spec", "storageClassName"]) else {
                return false;
            };
            let Some(sc) = s.get(Kind::StorageClass, &pv_key(class)) else {
                return false;
            };
            let Some(provisioner) = path_str(&sc, &["provisioner"]) else {
                return false;
            };
            if provisioner.starts_with("kubernetes.io/") {
                return false;
            }
            if path_str(&sc, &["volumeBindingMode"]) == Some("WaitForFirstConsumer")
                && annotation(&c, ANN_SELECTED_NODE).is_none()
            {
                return false;
            }
            let wanted: &[&str] = match s.version {
                KubeVersion::V1_19 => &[ANN_BETA_STORAGE_PROVISIONER],
                KubeVersion::V1_33 => &[ANN_STORAGE_PROVISIONER, ANN_BETA_STORAGE_PROVISIONER],
            };
            if wanted
                .iter()
                .all(|a| annotation(&c, a) == Some(provisioner))
            {
                return false;
            }
            let provisioner = provisioner.to_string();
            let mut new = (*c).clone();
            for a in wanted {
                set_annotation(&mut new, a, &provisioner);
            }
            s.update(Kind::PersistentVolumeClaim, key, false, new, false)
                .is_ok()
        }
        Some(vn) => {
            let pk = pv_key(&vn);
            let bind_completed = annotation(&c, ANN_BIND_COMPLETED).is_some();
            let Some(pv) = s.get(Kind::PersistentVolume, &pk) else {
                if bind_completed && phase(&c) != Some("Lost") {
                    return set_phase(s, Kind::PersistentVolumeClaim, key, &c, "Lost");
                }
                return false;
            };
            let cr_uid = path_str(&pv, &["spec", "claimRef", "uid"]).unwrap_or_default();
            let ours = claim_ref_key(&pv).as_ref() == Some(key) && cr_uid == uid;
            if !ours {
                if pv.get("spec").and_then(|sp| sp.get("claimRef")).is_none() && !deleting {
                    // claim pre-bound by the user to a free volume: bind the volume to it
                    let mut new = (*pv).clone();
                    new["spec"]["claimRef"] = json!({
                        "kind": "PersistentVolumeClaim", "apiVersion": "v1",
                        "namespace": key.0, "name": key.1, "uid": uid,
                        "resourceVersion": meta_str(&c, "resourceVersion").unwrap_or_default(),
                    });
                    return s
                        .update(Kind::PersistentVolume, &pk, false, new, false)
                        .is_ok();
                }
                if bind_completed && phase(&c) != Some("Lost") {
                    return set_phase(s, Kind::PersistentVolumeClaim, key, &c, "Lost");
                }
                return false;
            }
            if phase(&pv) != Some("Bound") && meta_str(&pv, "deletionTimestamp").is_none() {
                return set_phase(s, Kind::PersistentVolume, &pk, &pv, "Bound");
            }
            if !bind_completed {
                let mut new = (*c).clone();
                set_annotation(&mut new, ANN_BIND_COMPLETED, "yes");
                return s
                    .update(Kind::PersistentVolumeClaim, key, false, new, false)
                    .is_ok();
            }
            if phase(&c) != Some("Bound") {
                let mut new = (*c).clone();
                new["status"] = json!({
                    "phase": "Bound",
                    "accessModes": pv["spec"]["accessModes"].clone(),
                    "capacity": pv["spec"]["capacity"].clone(),
                });
                return s
                    .update(Kind::PersistentVolumeClaim, key, true, new, false)
                    .is_ok();
            }
            false
        }
    }
}

fn pv_step(s: &mut Store, name: &str) -> bool {
    let pk = pv_key(name);
    let Some(pv) = s.get(Kind::PersistentVolume, &pk) else {
        return false;
    };
    let p = phase(&pv).unwrap_or_default().to_string();
    if meta_str(&pv, "deletionTimestamp").is_some()
        && p != "Bound"
        && finalizers(&pv).iter().any(|f| f == PV_PROTECTION)
    {
        let mut new = (*pv).clone();
        let rest: Vec<String> = finalizers(&pv)
            .into_iter()
            .filter(|f| f != PV_PROTECTION)
            .collect();
        util::set_finalizers(&mut new, rest);
        return s
            .update(Kind::PersistentVolume, &pk, false, new, false)
            .is_ok();
    }
    let Some(ck) = claim_ref_key(&pv) else {
        if p != "Available" {
            return set_phase(s, Kind::PersistentVolume, &pk, &pv, "Available");
        }
        return false;
    };
    let cr_uid = path_str(&pv, &["spec", "claimRef", "uid"]).unwrap_or_default();
    if cr_uid.is_empty() {
        if p != "Available" {
            return set_phase(s, Kind::PersistentVolume, &pk, &pv, "Available");
        }
        return false;
    }
    let claim = s
        .get(Kind::PersistentVolumeClaim, &ck)
        .filter(|c| meta_str(c, "uid") == Some(cr_uid));
    let Some(claim) = claim else {
        // the claim is gone (or was re-created): released, whatever the reclaim policy
        if p != "Released" && p != "Failed" {
            return set_phase(s, Kind::PersistentVolume, &pk, &pv, "Released");
        }
        return false;
    };
    match path_str(&claim, &["spec", "volumeName"]) {
        None => false, // the claim's sync binds it
        Some(vn) if vn == name => {
            if p != "Bound" {
                return set_phase(s, Kind::PersistentVolume, &pk, &pv, "Bound");
            }
            false
        }
        Some(_) => {
            // the claim is bound to another volume
            let dynamic = annotation(&pv, ANN_PROVISIONED_BY).is_some()
                && path_str(&pv, &["spec", "persistentVolumeReclaimPolicy"]) == Some("Delete");
            if dynamic {
                if p != "Released" && p != "Failed" {
                    return set_phase(s, Kind::PersistentVolume, &pk, &pv, "Released");
                }
                return false;
            }
            if annotation(&pv, ANN_BOUND_BY_CONTROLLER).is_some() {
                let mut new = (*pv).clone();
                if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("claimRef");
                }
                return s
                    .update(Kind::PersistentVolume, &pk, false, new, false)
                    .is_ok();
            }
            if p != "Available" {
                return set_phase(s, Kind::PersistentVolume, &pk, &pv, "Available");
            }
            false
        }
    }
}

const MAX_STEPS: usize = 16;

async fn run_pass(inner: &Inner, st: &mut State) {
    let Some((claims, pvs)) = collect(&inner.store.lock().expect("lock"), st) else {
        return;
    };
    for key in &claims {
        for _ in 0..MAX_STEPS {
            if !inner.with_store(|s| inner.kcm_active() && claim_step(s, st, key)) {
                break;
            }
            if let Some(d) = inner.kcm_step_delay {
                tokio::time::sleep(d).await;
            }
        }
    }
    for name in &pvs {
        for _ in 0..MAX_STEPS {
            if !inner.with_store(|s| inner.kcm_active() && pv_step(s, name)) {
                break;
            }
            if let Some(d) = inner.kcm_step_delay {
                tokio::time::sleep(d).await;
            }
        }
    }
}

pub(crate) async fn run(inner: Arc<Inner>) {
    let mut rv_rx = inner.rv_tx.subscribe();
    let mut ctl_rx = inner.kcm_tx.subscribe();
    let mut shutdown = inner.shutdown_tx.subscribe();
    let mut st = State {
        full: true,
        ..Default::default()
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        rv_rx.borrow_and_update();
        ctl_rx.borrow_and_update();
        if inner.kcm_active() {
            run_pass(&inner, &mut st).await;
        } else {
            st.full = true;
        }
        tokio::select! {
            _ = rv_rx.changed() => {}
            _ = ctl_rx.changed() => { st.full = true; }
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => { st.full = true; }
        }
    }
}
