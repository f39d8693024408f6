//! RBAC decisions and injected faults.

mod common;

use common::*;
use fake_apiserver::{Fault, FaultAction, Kind, Options, Partition, RbacPolicy};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const SA: &str = "system:serviceaccount:nfs:provisioner";

fn policy() -> RbacPolicy {
    let objs = [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "prov"},
               "rules": [{"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get", "list", "watch", "create", "delete"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "prov"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "prov"},
               "subjects": [{"kind": "ServiceAccount", "name": "provisioner", "namespace": "nfs"}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "lock", "namespace": "nfs"},
               "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
                         {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["nfs-lock"], "verbs": ["get", "update", "list"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "lock", "namespace": "nfs"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lock"},
               "subjects": [{"kind": "ServiceAccount", "name": "provisioner", "namespace": "nfs"}]}),
    ];
    RbacPolicy::from_objects(objs.iter()).unwrap()
}

#[tokio::test]
async fn rbac_grants_and_denies_like_the_authorizer() {
    let srv = server_with(Options {
        controller_manager: false,
        ..Options::default()
    })
    .await;
    srv.set_rbac(Some(policy()));
    let t = srv.token_for(SA);
    let c = client(&srv, SA);
    let pvs: Api<PersistentVolume> = Api::all(c.clone());
    pvs.create(
        &PostParams::default(),
        &serde_json::from_value(pv_json("p1", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    pvs.list(&ListParams::default()).await.unwrap();
    // no rule for persistentvolumes/status
    let r = raw(
        &srv,
        "PATCH",
        "/api/v1/persistentvolumes/p1/status",
        Some(&t),
        Some("application/merge-patch+json"),
        Some(&json!({"status": {"phase": "Bound"}})),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "persistentvolumes \"p1\" is forbidden: User \"system:serviceaccount:nfs:provisioner\" cannot patch resource \"persistentvolumes/status\" in API group \"\" at the cluster scope",
        "reason": "Forbidden", "details": {"name": "p1", "kind": "persistentvolumes"}, "code": 403})
    );
    // Role: only in its namespace, only the named lease for get
    let leases: Api<Lease> = Api::namespaced(c.clone(), "nfs");
    leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(lease_json("nfs", "nfs-lock")).unwrap(),
        )
        .await
        .unwrap();
    leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(lease_json("nfs", "other")).unwrap(),
        )
        .await
        .unwrap();
    leases.get("nfs-lock").await.unwrap();
    let r = raw(
        &srv,
        "GET",
        "/apis/coordination.k8s.io/v1/namespaces/nfs/leases/other",
        Some(&t),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["message"],
        "leases.coordination.k8s.io \"other\" is forbidden: User \"system:serviceaccount:nfs:provisioner\" cannot get resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"nfs\""
    );
    assert_eq!(
        r.json()["details"],
        json!({"name": "other", "group": "coordination.k8s.io", "kind": "leases"})
    );
    // resourceNames cannot grant a plain list
    match leases.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403),
        other => panic!("{other:?}"),
    }
    // ... but a list narrowed to the name can
    leases
        .list(&ListParams::default().fields("metadata.name=nfs-lock"))
        .await
        .unwrap();
    // another namespace
    let elsewhere: Api<Lease> = Api::namespaced(c, "default");
    match elsewhere
        .create(
            &PostParams::default(),
            &serde_json::from_value(lease_json("default", "x")).unwrap(),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden")),
        other => panic!("{other:?}"),
    }
    // other users get nothing
    let stranger: Api<PersistentVolume> = Api::all(client(&srv, "stranger"));
    assert!(stranger.get("p1").await.is_err());
    let denied = srv.denied_requests();
    assert_eq!(denied.len(), 5, "{denied:#?}");
    assert_eq!(
        denied[0].resource.as_deref(),
        Some("persistentvolumes/status")
    );
    assert!(srv.get(Kind::Lease, "default", "x").is_none());
}

#[tokio::test]
async fn faults_fire_notify_and_clear() {
    let srv = server_with(Options {
        controller_manager: false,
        ..Options::default()
    })
    .await;
    let c = client(&srv, "me");
    let leases: Api<Lease> = Api::namespaced(c.clone(), "ns");
    let lease = |n: &str| serde_json::from_value::<Lease>(lease_json("ns", n)).unwrap();

    // an error, once: 500 surfaces to the caller
    let h = srv.add_fault(
        Fault::new(FaultAction::RespondError(500, "InternalError".into()))
            .resource("leases")
            .verb("create")
            .times(1),
    );
    match leases.create(&PostParams::default(), &lease("a")).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (500, "InternalError")),
        other => panic!("{other:?}"),
    }
    assert!(srv.get(Kind::Lease, "ns", "a").is_none());
    leases
        .create(&PostParams::default(), &lease("a"))
        .await
        .unwrap();
    assert_eq!(h.hits(), 1);
    // kube's client retries 503 on its own: the fault fires, the call still succeeds
    srv.clear_requests();
    let h = srv.add_fault(
        Fault::new(FaultAction::RespondError(503, "ServiceUnavailable".into()))
            .verb("create")
            .times(1),
    );
    leases
        .create(&PostParams::default(), &lease("r"))
        .await
        .unwrap();
    assert_eq!(h.hits(), 1);
    let posts: Vec<Option<u16>> = srv
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.status)
        .collect();
    assert_eq!(posts, vec![Some(503), Some(201)]);

    // hang until cleared
    let h = srv.add_fault(Fault::new(FaultAction::Hang).verb("get").user("me"));
    let l2 = leases.clone();
    let pending = tokio::spawn(async move { l2.get("a").await });
    h.triggered().await;
    assert!(!pending.is_finished());
    srv.clear_faults();
    pending.await.unwrap().unwrap();

    // applied, never answered
    let h = srv.add_fault(Fault::new(FaultAction::ApplyThenHang).method("PATCH"));
    let l2 = leases.clone();
    let pending = tokio::spawn(async move {
        l2.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "new"}})),
        )
        .await
    });
    h.triggered().await;
    srv.wait_for_object(
        Kind::Lease,
        "ns",
        "a",
        |o| o.is_some_and(|o| o["spec"]["holderIdentity"] == "new"),
        WAIT,
    )
    .await
    .expect("applied");
    assert!(!pending.is_finished());
    let rec = srv
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!(rec.status, None);
    assert_eq!(rec.fault, Some(h.id()));
    srv.remove_fault(&h);
    pending.await.unwrap().unwrap();

    // connection dropped, nothing applied
    let h = srv.add_fault(
        Fault::new(FaultAction::DropConnection)
            .verb("create")
            .times(1),
    );
    match leases.create(&PostParams::default(), &lease("b")).await {
        Err(kube::Error::Api(s)) => panic!("expected a transport error, got {s:?}"),
        Err(_) => {}
        Ok(_) => panic!("expected a transport error"),
    }
    assert_eq!(h.hits(), 1);
    assert!(srv.get(Kind::Lease, "ns", "b").is_none());

    // partitions
    srv.partition_user("me", true);
    let l2 = leases.clone();
    let pending = tokio::spawn(async move { l2.get("a").await });
    srv.wait_for(
        |s| {
            s.requests()
                .iter()
                .any(|r| r.method == "GET" && r.status.is_none())
        },
        WAIT,
    )
    .await;
    assert!(!pending.is_finished());
    srv.partition_user("me", false);
    pending.await.unwrap().unwrap();
    srv.set_partition("me", Some(Partition::Refuse));
    assert!(leases.get("a").await.is_err());
    srv.set_partition("me", None);
    leases.get("a").await.unwrap();
}
