#![allow(dead_code)]

use fake_apiserver::{FakeApiServer, Options};
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const WAIT: Duration = Duration::from_secs(20);

pub async fn server() -> FakeApiServer {
    FakeApiServer::start(Options::default())
        .await
        .expect("start")
}

pub async fn server_with(opts: Options) -> FakeApiServer {
    FakeApiServer::start(opts).await.expect("start")
}

/// A kube client authenticated as `user`.
pub fn client(srv: &FakeApiServer, user: &str) -> kube::Client {
    let mut cfg = kube::Config::new(srv.url().parse().expect("url"));
    cfg.auth_info.token = Some(srv.token_for(user).into());
    kube::Client::try_from(cfg).expect("client")
}

/// A kube client with no credentials (system:anonymous).
pub fn anonymous(srv: &FakeApiServer) -> kube::Client {
    let cfg = kube::Config::new(srv.url().parse().expect("url"));
    kube::Client::try_from(cfg).expect("client")
}

pub struct RawResponse {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl RawResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    /// Newline-delimited JSON (watch streams).
    pub fn lines(&self) -> Vec<Value> {
        self.body
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = body.split_once("\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
}

/// One HTTP/1.1 request on its own connection, read to the end.
pub async fn raw(
    srv: &FakeApiServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Option<&Value>,
) -> RawResponse {
    raw_with_headers(srv, method, path, token, content_type, body, &[]).await
}

/// A GET as kubectl sends it: with an `Accept` header.
pub async fn get_accepting(srv: &FakeApiServer, path: &str, accept: &str) -> RawResponse {
    raw_with_headers(srv, "GET", path, None, None, None, &[("Accept", accept)]).await
}

/// [`raw`] with extra request headers.
pub async fn raw_with_headers(
    srv: &FakeApiServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> RawResponse {
    let mut s = tokio::net::TcpStream::connect(srv.addr())
        .await
        .expect("connect");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(ct) = content_type {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8(buf).expect("utf8");
    let (head, rest) = text.split_once("\r\n\r\n").expect("head");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .expect("status")
        .parse()
        .expect("code");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    RawResponse {
        status,
        headers: head.to_string(),
        body: if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        },
    }
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

pub fn pv_json(name: &str, extra_spec: Value) -> Value {
    let mut pv = serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "capacity": {"storage": "1Gi"},
            "nfs": {"server": "nfs.example.test", "path": format!("/exports/{name}")},
            "persistentVolumeReclaimPolicy": "Delete",
        }
    });
    if let (Some(spec), Some(extra)) = (pv["spec"].as_object_mut(), extra_spec.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    pv
}

pub fn pvc_json(ns: &str, name: &str, class: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": class,
        }
    })
}

pub fn class_json(name: &str, provisioner: &str, mode: &str) -> Value {
    serde_json::json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": provisioner,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": mode,
    })
}

pub fn lease_json(ns: &str, name: &str) -> Value {
    serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"holderIdentity": "a"}
    })
}
