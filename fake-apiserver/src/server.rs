//! HTTP/1.1: routing, authentication, faults, RBAC, the REST verbs and watch streams.

use crate::Inner;
use crate::discovery;
use crate::faults::{FaultAction, Partition, RequestInfo, RequestRecord};
use crate::patch;
use crate::rbac::Attributes;
use crate::resource::Kind;
use crate::status::ApiError;
use crate::store::{EventType, Key, ListQuery, Store, key_of};
use crate::table::{self, IncludeObject, TableOptions};
use crate::util::{self, Requirement};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type RespBody = BoxBody<Bytes, BoxError>;

/// Returned by the service to make hyper close the connection without an answer.
#[derive(Debug)]
pub(crate) struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault")
    }
}
impl std::error::Error for DropConnection {}

struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn full(code: u16, body: Vec<u8>) -> Response<RespBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Response<RespBody> {
    let mut r = full(e.code, e.to_json());
    if let Some(s) = e.details.as_ref().and_then(|d| d.retry_after_seconds) {
        r.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            s.to_string().parse().expect("digits"),
        );
    }
    r
}

fn object_response(code: u16, v: &Value) -> Response<RespBody> {
    full(code, serde_json::to_vec(v).unwrap_or_default())
}

#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: String,
}

pub(crate) fn parse_route(path: &str) -> Option<Route> {
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(util::percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, rest): (&str, &[&str]) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, "v1", rest @ ..] => (g, rest),
        _ => return None,
    };
    let (namespace, rest) = if rest.len() >= 3
        && rest[0] == "namespaces"
        && Kind::from_group_resource(group, rest[2]).is_some_and(Kind::namespaced)
    {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let kind = Kind::from_group_resource(group, rest.first()?)?;
    if rest.len() > 3 || (!kind.namespaced() && namespace.is_some()) {
        return None;
    }
    if kind.namespaced() && namespace.is_none() && rest.len() > 1 {
        return None;
    }
    let subresource = rest.get(2).map(|s| s.to_string()).unwrap_or_default();
    if !(subresource.is_empty() || subresource == "status" && kind.has_status()) {
        return None;
    }
    Some(Route {
        kind,
        namespace,
        name: rest.get(1).map(|s| s.to_string()).filter(|s| !s.is_empty()),
        subresource,
    })
}

fn verb_of(method: &Method, route: &Route, watch: bool) -> Option<&'static str> {
    Some(match *method {
        Method::GET if watch => "watch",
        Method::GET if route.name.is_some() => "get",
        Method::GET => "list",
        Method::POST if route.name.is_none() => "create",
        Method::PUT if route.name.is_some() => "update",
        Method::PATCH if route.name.is_some() => "patch",
        Method::DELETE if route.name.is_some() => "delete",
        Method::DELETE => "deletecollection",
        _ => return None,
    })
}

fn query_get<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v, Some("true") | Some("1"))
}

fn set_status(inner: &Inner, idx: Option<usize>, status: u16) {
    if let Some(i) = idx
        && let Some(r) = inner.requests.lock().expect("lock").get_mut(i)
    {
        r.status = Some(status);
    }
}

/// Holds until `still` turns false (Ok) or the server shuts down (Err).
async fn hold(inner: &Inner, still: impl Fn(&Inner) -> bool) -> Result<(), DropConnection> {
    let mut changes = inner.faults_tx.subscribe();
    let mut shutdown = inner.shutdown_tx.subscribe();
    loop {
        if *shutdown.borrow() {
            return Err(DropConnection);
        }
        if !still(inner) {
            return Ok(());
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return Err(DropConnection) },
            _ = shutdown.changed() => {},
        }
    }
}

/// The partition the user is in, if any.
fn partition_of(inner: &Inner, user: &str) -> Option<Partition> {
    inner
        .faults
        .lock()
        .expect("lock")
        .partitions
        .get(user)
        .copied()
}

pub(crate) async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, DropConnection> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let query = util::parse_query(&raw_query);
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string());
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let accept = header(hyper::header::ACCEPT);
    let host = header(hyper::header::HOST).unwrap_or_else(|| "127.0.0.1".to_string());
    let token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|s| s.trim().to_string());
    let user = token
        .and_then(|t| inner.tokens.lock().expect("lock").get(&t).cloned())
        .unwrap_or_else(|| "system:anonymous".to_string());
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(DropConnection),
    };
    let route = parse_route(&path);
    let watch = truthy(query_get(&query, "watch"));
    let verb = route.as_ref().and_then(|r| verb_of(&method, r, watch));

    let record = RequestRecord {
        seq: inner
            .req_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        at: SystemTime::now(),
        method: method.to_string(),
        path: path.clone(),
        query: raw_query.clone(),
        content_type: content_type.clone(),
        user: user.clone(),
        verb: verb.map(str::to_string),
        resource: route.as_ref().map(|r| {
            if r.subresource.is_empty() {
                r.kind.resource().to_string()
            } else {
                format!("{}/{}", r.kind.resource(), r.subresource)
            }
        }),
        namespace: route.as_ref().and_then(|r| r.namespace.clone()),
        name: route.as_ref().and_then(|r| r.name.clone()),
        status: None,
        fault: None,
    };
    let info = RequestInfo {
        method: record.method.clone(),
        path: path.clone(),
        resource: record.resource.clone(),
        verb: record.verb.clone(),
        user: user.clone(),
        name: record.name.clone(),
    };
    let idx = {
        let mut reqs = inner.requests.lock().expect("lock");
        reqs.push(record);
        reqs.len() - 1
    };
    let idx = Some(idx);

    if !inner.latency.is_zero() {
        tokio::time::sleep(inner.latency).await;
    }

    // network partitions
    match partition_of(&inner, &user) {
        Some(Partition::Refuse) => return Err(DropConnection),
        Some(Partition::Hang) => {
            let u = user.clone();
            hold(&inner, move |i| {
                i.faults.lock().expect("lock").partitions.contains_key(&u)
            })
            .await?;
            let again = partition_of(&inner, &user);
            if again == Some(Partition::Refuse) {
                return Err(DropConnection);
            }
        }
        None => {}
    }

    // injected faults
    let fired = inner.faults.lock().expect("lock").fire(&info);
    let mut then_hang: Option<u64> = None;
    if let Some((id, action)) = fired {
        if let Some(i) = idx
            && let Some(r) = inner.requests.lock().expect("lock").get_mut(i)
        {
            r.fault = Some(id);
        }
        match action {
            FaultAction::RespondError(code, reason) => {
                set_status(&inner, idx, code);
                return Ok(error_response(&ApiError::injected(code, &reason)));
            }
            FaultAction::DropConnection => return Err(DropConnection),
            FaultAction::Hang => {
                hold(&inner, move |i| i.faults.lock().expect("lock").has(id)).await?;
            }
            FaultAction::ApplyThenHang => then_hang = Some(id),
        }
    }

    let response = match (route, verb) {
        (Some(route), Some(verb)) => {
            dispatch(
                &inner,
                &route,
                verb,
                &user,
                &query,
                content_type.as_deref(),
                accept.as_deref(),
                &body,
            )
            .await
        }
        (Some(_), None) => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource".to_string(),
        )),
        (None, _) => {
            let version = inner.store.lock().expect("lock").version;
            match discovery::document(version, &path, accept.as_deref(), &host) {
                Some(doc) if method == Method::GET => {
                    let mut r = full(doc.code, doc.body);
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(doc.content_type),
                    );
                    Ok(r)
                }
                _ => Err(ApiError::no_route()),
            }
        }
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    if let Some(id) = then_hang {
        hold(&inner, move |i| i.faults.lock().expect("lock").has(id)).await?;
    }
    set_status(&inner, idx, response.status().as_u16());
    Ok(response)
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

fn selectors(query: &[(String, String)]) -> Result<(Vec<Requirement>, Vec<Requirement>), ApiError> {
    let labels = match query_get(query, "labelSelector") {
        Some(s) => util::parse_label_selector(s).map_err(ApiError::bad_request)?,
        None => Vec::new(),
    };
    let fields = match query_get(query, "fieldSelector") {
        Some(s) => util::parse_field_selector(s).map_err(ApiError::bad_request)?,
        None => Vec::new(),
    };
    Ok((labels, fields))
}

fn route_key(route: &Route) -> Key {
    (
        route.namespace.clone().unwrap_or_default(),
        route.name.clone().unwrap_or_default(),
    )
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    inner: &Arc<Inner>,
    route: &Route,
    verb: &str,
    user: &str,
    query: &[(String, String)],
    content_type: Option<&str>,
    accept: Option<&str>,
    body: &[u8],
) -> Result<Response<RespBody>, ApiError> {
    let kind = route.kind;
    let (labels, fields) = selectors(query)?;
    let table = match table::requested(accept) {
        Some(api_version) if matches!(verb, "get" | "list" | "watch") => Some(TableOptions {
            api_version,
            include: IncludeObject::from_query(query_get(query, "includeObject"))
                .map_err(ApiError::bad_request)?,
            columns: true,
            kube_version: inner.store.lock().expect("lock").version,
            now: util::now_unix(),
        }),
        _ => None,
    };
    // RBAC
    let rbac = inner.rbac.lock().expect("lock").clone();
    if let Some(policy) = rbac {
        let mut name = route.name.clone();
        if name.is_none()
            && matches!(verb, "list" | "watch")
            && let Some(Requirement::Eq(_, n)) = fields
                .iter()
                .find(|r| matches!(r, Requirement::Eq(k, _) if k == "metadata.name"))
        {
            name = Some(n.clone());
        }
        let attrs = Attributes {
            user,
            verb,
            group: kind.group(),
            resource: kind.resource(),
            subresource: &route.subresource,
            namespace: route.namespace.as_deref(),
            name: name.as_deref(),
        };
        if !policy.allows(&attrs) {
            return Err(ApiError::forbidden(
                kind,
                route.name.as_deref().unwrap_or(""),
                user,
                verb,
                &route.subresource,
                route.namespace.as_deref(),
            ));
        }
    }
    let dry_run = query_get(query, "dryRun").is_some();
    let key = route_key(route);
    let status_only = route.subresource == "status";
    match verb {
        "get" => {
            let obj = inner
                .store
                .lock()
                .expect("lock")
                .get(kind, &key)
                .ok_or_else(|| ApiError::not_found(kind, &key.1))?;
            if let Some(t) = &table {
                let rv = util::meta_str(&obj, "resourceVersion").unwrap_or_default();
                let metadata = json!({"resourceVersion": rv});
                let obj: &Value = &obj;
                return Ok(object_response(
                    200,
                    &table::table(kind, std::slice::from_ref(obj), metadata, t),
                ));
            }
            Ok(object_response(200, &obj))
        }
        "list" => {
            let limit = match query_get(query, "limit") {
                Some(l) if !l.is_empty() => Some(
                    l.parse::<usize>()
                        .map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?,
                ),
                _ => None,
            };
            // resourceVersion=0 is served whole from the watch cache, whatever the limit, as
            // v1.19 and v1.33 do (the cache pages nothing): `?resourceVersion=0&limit=1`
            // answered every object and no continue token on both.
            let limit = limit.filter(|_| {
                query_get(query, "resourceVersion") != Some("0")
                    || query_get(query, "continue").is_some_and(|c| !c.is_empty())
            });
            let exact_rv = if query_get(query, "resourceVersionMatch") == Some("Exact") {
                query_get(query, "resourceVersion").and_then(|r| r.parse().ok())
            } else {
                None
            };
            let q = ListQuery {
                namespace: route.namespace.clone(),
                labels,
                fields,
                limit,
                continue_token: query_get(query, "continue")
                    .filter(|c| !c.is_empty())
                    .map(str::to_string),
                exact_rv,
            };
            let list = inner.store.lock().expect("lock").list(kind, &q)?;
            if let Some(t) = &table {
                let items = list.item_values();
                let metadata = Value::Object(list.metadata);
                return Ok(object_response(
                    200,
                    &table::table(kind, &items, metadata, t),
                ));
            }
            Ok(full(200, list.to_json()))
        }
        "watch" => {
            let mut fields = fields;
            if let Some(n) = &route.name {
                fields.push(Requirement::Eq("metadata.name".into(), n.clone()));
            }
            start_watch(inner, route, user, query, labels, fields, table)
        }
        "create" => {
            let obj = parse_body(body)?;
            let created =
                inner.with_store(|s| s.create(kind, route.namespace.as_deref(), obj, dry_run))?;
            Ok(object_response(201, &created))
        }
        "update" => {
            let obj = parse_body(body)?;
            let updated = inner.with_store(|s| s.update(kind, &key, status_only, obj, dry_run))?;
            Ok(object_response(200, &updated))
        }
        "patch" => {
            let ct = content_type
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let p = parse_body(body)?;
            let created_code = std::cell::Cell::new(200u16);
            let result = inner.with_store(|s| {
                let Some(current) = s.get(kind, &key) else {
                    if ct == "application/apply-patch+yaml" {
                        created_code.set(201);
                        let mut obj = p.clone();
                        util::meta_mut(&mut obj).insert("name".into(), json!(key.1));
                        return s.create(kind, route.namespace.as_deref(), obj, dry_run);
                    }
                    return Err(ApiError::not_found(kind, &key.1));
                };
                let mut doc = (*current).clone();
                match ct.as_str() {
                    "application/merge-patch+json" | "application/apply-patch+yaml" => {
                        patch::merge_patch(&mut doc, &p)
                    }
                    "application/strategic-merge-patch+json" => {
                        patch::strategic_merge_patch(&mut doc, &p)
                    }
                    "application/json-patch+json" => {
                        patch::json_patch(&mut doc, &p).map_err(ApiError::patch_failed)?
                    }
                    other => return Err(ApiError::unsupported_media_type(other)),
                }
                if ct == "application/apply-patch+yaml" {
                    // server-side apply carries no resourceVersion precondition unless given
                    if util::meta_str(&p, "resourceVersion").is_none() {
                        util::meta_mut(&mut doc).remove("resourceVersion");
                    }
                }
                s.update(kind, &key, status_only, doc, dry_run)
            })?;
            Ok(object_response(created_code.get(), &result))
        }
        "delete" => {
            let opts = if body.is_empty() {
                Value::Null
            } else {
                parse_body(body)?
            };
            let deleted = inner.with_store(|s| s.delete(kind, &key, &opts, dry_run))?;
            Ok(object_response(200, &deleted))
        }
        "deletecollection" => {
            let opts = if body.is_empty() {
                Value::Null
            } else {
                parse_body(body)?
            };
            let items = inner.with_store(|s| {
                let q = ListQuery {
                    namespace: route.namespace.clone(),
                    labels,
                    fields,
                    ..Default::default()
                };
                let list = s.list(kind, &q)?;
                let mut out = Vec::new();
                for item in list.item_values() {
                    let mut item = item;
                    item["kind"] = json!(kind.kind());
                    let k = key_of(kind, &item);
                    if let Ok(v) = s.delete(kind, &k, &opts, dry_run) {
                        let mut v = (*v).clone();
                        if let Some(m) = v.as_object_mut() {
                            m.remove("kind");
                            m.remove("apiVersion");
                        }
                        out.push(v);
                    }
                }
                Ok::<_, ApiError>(out)
            })?;
            Ok(object_response(
                200,
                &json!({"kind": format!("{}List", kind.kind()), "apiVersion": kind.api_version(),
                        "metadata": {"resourceVersion": inner.current_rv().to_string()}, "items": items}),
            ))
        }
        _ => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource".into(),
        )),
    }
}

// ---- watch -----------------------------------------------------------------------------

fn watch_line(etype: &str, obj: &Value) -> Bytes {
    let mut s = String::with_capacity(256);
    s.push_str("{\"type\":\"");
    s.push_str(etype);
    s.push_str("\",\"object\":");
    s.push_str(&serde_json::to_string(obj).unwrap_or_default());
    s.push_str("}\n");
    Bytes::from(s)
}

fn bookmark_line(kind: Kind, rv: u64, initial_end: bool) -> Bytes {
    let mut md = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    watch_line(
        "BOOKMARK",
        &json!({"kind": kind.kind(), "apiVersion": kind.api_version(), "metadata": md}),
    )
}

struct WatchFilter {
    namespace: Option<String>,
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl WatchFilter {
    fn matches(&self, key: &Key, obj: &Value) -> bool {
        self.namespace.as_ref().is_none_or(|ns| *ns == key.0)
            && util::labels_match(obj, &self.labels)
            && util::fields_match(obj, &self.fields)
    }
}

fn start_watch(
    inner: &Arc<Inner>,
    route: &Route,
    user: &str,
    query: &[(String, String)],
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
    table: Option<TableOptions>,
) -> Result<Response<RespBody>, ApiError> {
    let kind = route.kind;
    let filter = WatchFilter {
        namespace: route.namespace.clone(),
        labels,
        fields,
    };
    let bookmarks = truthy(query_get(query, "allowWatchBookmarks"));
    let send_initial = truthy(query_get(query, "sendInitialEvents"));
    if send_initial && query_get(query, "resourceVersionMatch") != Some("NotOlderThan") {
        return Err(ApiError::invalid(
            kind,
            "",
            vec![crate::status::Cause::forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            )],
        ));
    }
    let timeout = query_get(query, "timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let rv_param = query_get(query, "resourceVersion").unwrap_or("");
    let from_now = rv_param.is_empty() || rv_param == "0";
    let start_rv: Option<u64> =
        if from_now {
            None
        } else {
            Some(rv_param.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid resource version: {rv_param}"))
            })?)
        };
    let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(64);
    let (initial, last, epoch) = {
        let s = inner.store.lock().expect("lock");
        let initial: Vec<Arc<Value>> = if from_now || send_initial {
            s.ks(kind)
                .objects
                .iter()
                .filter(|(k, v)| filter.matches(k, v))
                .map(|(_, v)| v.clone())
                .collect()
        } else {
            Vec::new()
        };
        (initial, start_rv.unwrap_or(s.rv), s.watch_epoch)
    };
    let inner2 = inner.clone();
    let user = user.to_string();
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(timeout);
        run_watch(
            inner2,
            kind,
            filter,
            tx,
            WatchStart {
                initial,
                send_initial,
                last,
                epoch,
                bookmarks,
                deadline,
                user,
                table,
            },
        )
        .await;
    });
    let mut r = Response::new(ChannelBody { rx }.boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

struct WatchStart {
    initial: Vec<Arc<Value>>,
    send_initial: bool,
    last: u64,
    epoch: u64,
    bookmarks: bool,
    deadline: Instant,
    user: String,
    /// `kubectl get --watch`: every object becomes a one-row Table.
    table: Option<TableOptions>,
}

enum Batch {
    Events(Vec<Arc<crate::store::HistEvent>>),
    Expired(u64),
    Closed,
}

fn next_batch(s: &Store, kind: Kind, last: u64, epoch: u64) -> Batch {
    if s.watch_epoch != epoch {
        return Batch::Closed;
    }
    match s.events_since(kind, last) {
        Ok(evs) => Batch::Events(evs),
        Err(floor) => Batch::Expired(floor),
    }
}

async fn run_watch(
    inner: Arc<Inner>,
    kind: Kind,
    filter: WatchFilter,
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
    start: WatchStart,
) {
    let mut last = start.last;
    let mut as_table = start.table;
    let mut line = |etype: &str, obj: &Value| match as_table.as_mut() {
        Some(t) => {
            t.now = util::now_unix();
            let rv = util::meta_str(obj, "resourceVersion").unwrap_or_default();
            let table = table::table(
                kind,
                std::slice::from_ref(obj),
                json!({"resourceVersion": rv}),
                t,
            );
            // only the first event carries the column definitions
            t.columns = false;
            watch_line(etype, &table)
        }
        None => watch_line(etype, obj),
    };
    for obj in &start.initial {
        if tx.send(Ok(line("ADDED", obj))).await.is_err() {
            return;
        }
    }
    if start.send_initial && tx.send(Ok(bookmark_line(kind, last, true))).await.is_err() {
        return;
    }
    let mut rv_rx = inner.rv_tx.subscribe();
    let mut faults_rx = inner.faults_tx.subscribe();
    let mut shutdown = inner.shutdown_tx.subscribe();
    let period = inner.bookmark_interval.filter(|_| start.bookmarks);
    let mut ticker = period.map(|p| tokio::time::interval_at(tokio::time::Instant::now() + p, p));
    let deadline = tokio::time::Instant::from_std(start.deadline);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let partition = inner
            .faults
            .lock()
            .expect("lock")
            .partitions
            .get(&start.user)
            .copied();
        match partition {
            Some(Partition::Refuse) => {
                let _ = tx.send(Err("partitioned".into())).await;
                return;
            }
            Some(Partition::Hang) => {
                tokio::select! {
                    _ = faults_rx.changed() => {}
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep_until(deadline) => return,
                    _ = tx.closed() => return,
                }
                continue;
            }
            None => {}
        }
        rv_rx.borrow_and_update();
        let batch = next_batch(&inner.store.lock().expect("lock"), kind, last, start.epoch);
        match batch {
            Batch::Closed => return,
            Batch::Expired(floor) => {
                let err = ApiError::expired(format!("too old resource version: {last} ({floor})"));
                let _ = tx.send(Ok(watch_line("ERROR", &err.to_value()))).await;
                return;
            }
            Batch::Events(evs) if !evs.is_empty() => {
                for e in evs {
                    last = e.rv;
                    let now = filter.matches(&e.key, &e.obj);
                    let before = e.prev.as_ref().is_some_and(|p| filter.matches(&e.key, p));
                    let etype = match (e.etype, before, now) {
                        (EventType::Added, _, true) => Some("ADDED"),
                        (EventType::Modified, true, true) => Some("MODIFIED"),
                        (EventType::Modified, false, true) => Some("ADDED"),
                        (EventType::Modified, true, false) => Some("DELETED"),
                        (EventType::Deleted, true, _) => Some("DELETED"),
                        _ => None,
                    };
                    if let Some(t) = etype
                        && tx.send(Ok(line(t, &e.obj))).await.is_err()
                    {
                        return;
                    }
                }
                continue;
            }
            Batch::Events(_) => {}
        }
        let tick = async {
            match ticker.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = rv_rx.changed() => {}
            _ = faults_rx.changed() => {}
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tx.closed() => return,
            _ = tick => {
                let bm = {
                    let s = inner.store.lock().expect("lock");
                    match next_batch(&s, kind, last, start.epoch) {
                        Batch::Events(evs) if evs.is_empty() => Some(s.rv),
                        Batch::Closed => return,
                        _ => None,
                    }
                };
                if let Some(rv) = bm {
                    last = last.max(rv);
                    if tx.send(Ok(bookmark_line(kind, last, false))).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
