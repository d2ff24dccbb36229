//! Routing and the generic resource handlers: every resource of the registry gets
//! get, list, watch, create, update, patch, delete and deletecollection, plus the
//! status and scale subresources, from the same code.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::registry::{self, Resource};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};
use crate::storage::{self, Store, Stored};
use crate::{
    admission, alloc, convert, defaults, discovery, lifecycle, listbody, object, openapi, patch, table, watchcache,
};

pub type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted (kube-apiserver's limit is 3 MiB).
pub const MAX_BODY: usize = 3 << 20;

pub struct App {
    pub metrics: crate::metrics::Metrics,
    pub store: Store,
    pub caches: watchcache::WatchCaches,
    pub ranges: alloc::Ranges,
    pub tolerations: admission::Tolerations,
    pub usage: Arc<crate::dashboard::UsageHistory>,
    pub tokens: crate::authn::Tokens,
    pub rbac: crate::rbac::Rbac,
    pub sa_signer: Arc<crate::satoken::Signer>,
    pub watch_limits: Arc<crate::limits::WatchLimits>,
    pub request_rates: crate::limits::RequestRates,
    pub inflight: crate::limits::Inflight,
    pub quotas: Arc<crate::quota::Quotas>,
    pub signer: Arc<crate::csr::Signer>,
}

/// A response body that holds something (a watch permit) until it is dropped.
struct Holding<G> {
    inner: Body,
    _held: G,
}

impl<G: Send + Sync + Unpin + 'static> hyper::body::Body for Holding<G> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn respond(code: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("Content-Type", content_type)
        .header("Cache-Control", "no-cache, private")
        .body(full(body))
        .expect("a valid response")
}

/// How the client wants answers.
#[derive(Clone, Copy, Default)]
struct Format {
    table: bool,
    partial: bool,
    yaml: bool,
}

impl Format {
    fn of(accept: &str) -> Format {
        let first = accept.split(',').next().unwrap_or_default();
        Format {
            table: first.contains("as=Table"),
            partial: first.contains("as=PartialObjectMetadata"),
            yaml: first.trim().starts_with("application/yaml"),
        }
    }
}

fn json_response(code: u16, v: &Value, f: Format) -> Response<Body> {
    if f.yaml {
        return respond(code, "application/yaml", serde_yaml::to_string(v).unwrap_or_default());
    }
    respond(code, "application/json", serde_json::to_vec(v).expect("JSON values serialize"))
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let mut resp =
        respond(e.code, "application/json", serde_json::to_vec(&e.to_status()).expect("JSON values serialize"));
    // A 429 says when to come back, in the header clients act on as well.
    if let Some(s) = e.details.as_ref().and_then(|d| d["retryAfterSeconds"].as_u64()) {
        resp.headers_mut().insert("Retry-After", s.into());
    }
    resp
}

/// Query parameters, percent-decoded (tolerates `?&a=b`, as kube-rs sends).
struct Query(Vec<(String, String)>);

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            q.unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (percent_decode(k), percent_decode(v)),
                    None => (percent_decode(p), String::new()),
                })
                .collect(),
        )
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }

    fn int(&self, k: &str) -> ApiResult<Option<i64>> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| ApiError::bad_request(format!("invalid {k}: {v:?}"))),
        }
    }

    fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }
}

/// The resource a request addresses.
struct Target {
    r: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn target(group: &str, version: &str, rest: &[&str]) -> ApiResult<Target> {
    let (r, namespace, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if registry::find(group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            (registry::find(group, version, plural).expect("checked"), Some(ns.to_string()), tail)
        }
        [plural, tail @ ..] => {
            (registry::find(group, version, plural).ok_or_else(ApiError::not_found_path)?, None, tail)
        }
        [] => return Err(ApiError::not_found_path()),
    };
    let (name, sub) = match tail {
        [] => (None, None),
        [name] => (Some(name.to_string()), None),
        [name, sub] if r.subresources.contains(sub) => (Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(ApiError::not_found_path()),
    };
    Ok(Target { r, namespace, name, sub })
}

pub async fn handle(
    app: Arc<App>,
    conn: Arc<crate::authn::Connection>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let labels = crate::metrics::Labels::of(req.method().as_str(), req.uri().path(), req.uri().query());
    let started = std::time::Instant::now();
    let metrics = app.metrics.clone();
    // A write in a namespace changes what its ResourceQuotas count.
    let written = match *req.method() {
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE => namespace_of(req.uri().path()),
        _ => None,
    };
    let quotas = app.quotas.clone();
    let signer = (matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
        && req.uri().path().contains("/certificatesigningrequests"))
    .then(|| app.signer.clone());
    let resp = match admit(&app, &conn, &req).await {
        Ok(user) => {
            // Decided from the query as the router reads it (percent-decoded). Members of
            // system:masters (the components) are not limited.
            let watch = req.method() == Method::GET && Query::parse(req.uri().query()).flag("watch");
            let permit = match &user {
                // Health probes are never refused for rate (load balancers send them
                // anonymously, all in one bucket).
                Some(u) if !u.is_component() && !is_probe(req.uri().path()) => match app.request_rates.take(&u.name) {
                    Ok(()) if watch => app.watch_limits.acquire(&u.name),
                    Ok(()) => Ok(None),
                    Err(e) => Err(e),
                },
                _ => Ok(None),
            };
            let class = crate::limits::classify(req.method(), req.uri().path(), watch);
            let turn = match permit {
                Ok(permit) => app.inflight.enter(class).await.map(|turn| (permit, turn)),
                Err(e) => Err(e),
            };
            match turn {
                Ok((permit, _turn)) => {
                    let resp = route(app, user, req).await.unwrap_or_else(|e| error_response(&e));
                    match permit {
                        Some(p) => {
                            let (parts, body) = resp.into_parts();
                            Response::from_parts(parts, Holding { inner: body, _held: p }.boxed())
                        }
                        None => resp,
                    }
                }
                Err(e) => error_response(&e),
            }
        }
        Err(e) => error_response(&e),
    };
    if resp.status().is_success() {
        if let Some(ns) = written {
            quotas.touch(&ns);
        }
        if let Some(s) = signer {
            s.touch();
        }
    }
    let mut labels = labels;
    // Labels come from the request: only those of served resources become series, so a
    // client cannot grow the metrics without bound.
    if resp.status() == hyper::StatusCode::NOT_FOUND && !crate::metrics::is_resource(&labels.resource) {
        labels.resource.clear();
        labels.subresource.clear();
    }
    metrics.observe(&labels, resp.status().as_u16(), started.elapsed().as_secs_f64());
    if labels.verb == "WATCH" && resp.status().is_success() {
        let (parts, body) = resp.into_parts();
        return Ok(Response::from_parts(parts, metrics.track_watch(&labels.resource, body)));
    }
    Ok(resp)
}

fn is_probe(path: &str) -> bool {
    matches!(path.split('/').nth(1), Some("healthz" | "livez" | "readyz"))
}

/// The namespace a resource path is in (`/api/v1/namespaces/<ns>/...`,
/// `/apis/<group>/<version>/namespaces/<ns>/...`).
fn namespace_of(path: &str) -> Option<String> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["api", _, "namespaces", ns, _, ..] | ["apis", _, _, "namespaces", ns, _, ..] => Some(ns.to_string()),
        _ => None,
    }
}

/// Authenticates the request and asks RBAC whether it may go on: the user it acts as
/// (None on the insecure port), or the 401/403 to answer.
async fn admit(
    app: &App,
    conn: &crate::authn::Connection,
    req: &Request<Incoming>,
) -> ApiResult<Option<crate::authn::User>> {
    let authorization = req.headers().get("authorization").and_then(|v| v.to_str().ok());
    // A token shaped like a JWT and signed by this server is a ServiceAccount's; anything
    // else goes to the static tokens.
    let claims = authorization
        .and_then(crate::authn::bearer)
        .filter(|t| t.matches('.').count() == 2)
        .and_then(|t| app.sa_signer.verify(t, crate::satoken::ISSUER));
    // A token shaped like a bootstrap token, and not a static one, is looked up in
    // kube-system's bootstrap token Secrets.
    let bootstrap = authorization
        .and_then(crate::authn::bearer)
        .filter(|t| app.tokens.find(t).is_none())
        .and_then(crate::bootstrap::parse);
    let user = match (conn, claims, bootstrap) {
        (crate::authn::Connection::Tls(None), Some(claims), _) => service_account_user(app, &claims).await?,
        (crate::authn::Connection::Tls(None), None, Some((id, secret))) => bootstrap_user(app, id, secret).await?,
        _ => match crate::authn::authenticate(conn, authorization, &app.tokens)? {
            Some(u) => u,
            None => return Ok(None),
        },
    };
    let attrs = attributes(req.method(), req.uri().path(), &Query::parse(req.uri().query()));
    let refusal = if !app.rbac.allowed(&user, &attrs) {
        Some(attrs.forbidden_message(&user))
    } else if let Some(node) = crate::nodeauthz::node_of(&user) {
        crate::nodeauthz::authorize(&app.store, &user, node, &attrs).await?
    } else {
        None
    };
    if let Some(message) = refusal {
        let mut e = ApiError::new(403, "Forbidden", message);
        if attrs.resource_request {
            let mut d = json!({"kind": attrs.resource});
            if !attrs.name.is_empty() {
                d["name"] = json!(attrs.name);
            }
            if !attrs.api_group.is_empty() {
                d["group"] = json!(attrs.api_group);
            }
            e.details = Some(d);
        }
        return Err(e);
    }
    Ok(Some(user))
}

/// The user of bootstrap token `<id>.<secret>`, if its Secret says it is valid.
async fn bootstrap_user(app: &App, id: &str, secret: &str) -> ApiResult<crate::authn::User> {
    let secrets = registry::find("", "v1", "secrets").expect("secrets are registered");
    let key = storage::key(secrets, Some(crate::bootstrap::NAMESPACE), &crate::bootstrap::secret_name(id));
    let stored = app.store.get(&key).await?;
    stored
        .and_then(|s| crate::bootstrap::user(&s.obj, id, secret, crate::satoken::now()))
        .ok_or_else(|| ApiError::new(401, "Unauthorized", "Unauthorized"))
}

/// The ServiceAccount a verified token's claims stand for, if the ServiceAccount (and
/// the pod the token is bound to) still exist with the same uids.
async fn service_account_user(app: &App, claims: &Value) -> ApiResult<crate::authn::User> {
    let unauthorized = || ApiError::new(401, "Unauthorized", "Unauthorized");
    let k = &claims["kubernetes.io"];
    let ns = k["namespace"].as_str().ok_or_else(unauthorized)?;
    let still = |plural: &str, r: &Value| {
        let name = r["name"].as_str().map(String::from);
        let uid = r["uid"].as_str().map(String::from);
        let key =
            registry::find("", "v1", plural).map(|res| storage::key(res, Some(ns), name.as_deref().unwrap_or("")));
        async move {
            let (Some(key), Some(uid)) = (key, uid) else { return false };
            match app.store.get(&key).await {
                // A pod being deleted keeps its token through its grace period (preStop
                // hooks, leases given up on the way out), as in Kubernetes.
                Ok(Some(s)) => {
                    let until = s.obj["metadata"]["deletionTimestamp"].as_str().and_then(object::parse_rfc3339);
                    s.obj["metadata"]["uid"].as_str() == Some(uid.as_str())
                        && until.is_none_or(|t| t > crate::satoken::now())
                }
                _ => false,
            }
        }
    };
    if !still("serviceaccounts", &k["serviceaccount"]).await {
        return Err(unauthorized());
    }
    if k.get("pod").is_some() && !still("pods", &k["pod"]).await {
        return Err(unauthorized());
    }
    let sa = k["serviceaccount"]["name"].as_str().unwrap_or_default();
    Ok(crate::authn::User {
        name: format!("system:serviceaccount:{ns}:{sa}"),
        uid: k["serviceaccount"]["uid"].as_str().unwrap_or_default().to_string(),
        groups: vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
            crate::authn::AUTHENTICATED.to_string(),
        ],
    })
}

/// `POST serviceaccounts/<name>/token`: a token for the ServiceAccount, bound to a pod
/// when the request names one (`kubectl create token --bound-object-kind Pod`).
async fn token_request(
    app: &App,
    user: Option<&crate::authn::User>,
    ns: &str,
    name: &str,
    req: Request<Incoming>,
    fmt: Format,
) -> ApiResult<Response<Body>> {
    let (ct, body) = read_body(req).await?;
    let tr: Value = if ct.starts_with("application/vnd.kubernetes.protobuf") {
        crate::protobuf::decode_token_request(&body)?
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?
    };
    let sa_res = registry::find("", "v1", "serviceaccounts").expect("registered");
    let sa = app
        .store
        .get(&storage::key(sa_res, Some(ns), name))
        .await?
        .ok_or_else(|| ApiError::not_found("serviceaccounts", "", name))?;
    let spec = &tr["spec"];
    let seconds = spec["expirationSeconds"].as_i64().unwrap_or(3600);
    if seconds < 600 {
        return Err(ApiError::invalid(
            "TokenRequest",
            "authentication.k8s.io",
            name,
            vec![(
                "spec.expirationSeconds".into(),
                format!("Invalid value: {seconds}: may not specify a duration less than 10 minutes"),
            )],
        ));
    }
    let seconds = seconds.min(1 << 32);
    let mut audiences: Vec<String> =
        spec["audiences"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from)).collect();
    if audiences.is_empty() {
        audiences.push(crate::satoken::ISSUER.to_string());
    }
    let bound = &spec["boundObjectRef"];
    // Nodes get only tokens bound to a pod, which die with it (NodeRestriction).
    let node_refusal =
        |why: &str| ApiError::new(403, "Forbidden", format!("serviceaccounts \"{name}\" is forbidden: {why}"));
    if user.is_some_and(|u| u.in_group(crate::authn::NODES)) && bound["kind"] != "Pod" {
        return Err(node_refusal("node requested token not bound to a pod"));
    }
    let pod = match bound["kind"].as_str() {
        None | Some("") => None,
        Some("Pod") => {
            let pod_name = bound["name"].as_str().unwrap_or_default();
            let pods = registry::find("", "v1", "pods").expect("registered");
            let p = app
                .store
                .get(&storage::key(pods, Some(ns), pod_name))
                .await?
                .ok_or_else(|| ApiError::not_found("pods", "", pod_name))?;
            if let Some(node) = user.and_then(crate::nodeauthz::node_of) {
                crate::nodeauthz::may_bind_token(node, &p.obj).map_err(|why| node_refusal(&why))?;
            }
            let uid = p.obj["metadata"]["uid"].as_str().unwrap_or_default().to_string();
            let pod_account = p.obj["spec"]["serviceAccountName"].as_str().unwrap_or("default");
            if pod_account != name {
                return Err(ApiError::bad_request(format!(
                    "cannot issue token for service account \"{ns}/{name}\" bound to pod \"{pod_name}\": the pod runs as service account \"{pod_account}\""
                )));
            }
            if let Some(want) = bound["uid"].as_str().filter(|u| !u.is_empty()) {
                if want != uid {
                    return Err(ApiError::bad_request(format!(
                        "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                    )));
                }
            }
            Some((pod_name.to_string(), uid))
        }
        Some(kind) => {
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of kind {kind}: only Pod is supported"
            )))
        }
    };
    let claims =
        crate::satoken::claims(ns, &sa.obj, pod.as_ref().map(|(n, u)| (n.as_str(), u.as_str())), &audiences, seconds);
    let token = app.sa_signer.sign(&claims);
    let mut out_spec = json!({"audiences": audiences, "expirationSeconds": seconds});
    if let Some((n, u)) = &pod {
        out_spec["boundObjectRef"] = json!({"kind": "Pod", "apiVersion": "v1", "name": n, "uid": u});
    }
    let resp = json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": out_spec,
        "status": {"token": token, "expirationTimestamp": crate::object::rfc3339(claims["exp"].as_i64().unwrap_or_default())},
    });
    Ok(json_response(201, &resp, fmt))
}

/// What a request asks to do, in RBAC's terms (Kubernetes' RequestInfo).
fn attributes(method: &Method, path: &str, q: &Query) -> crate::rbac::Attributes {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest: &[&str] = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => rest,
        ["apis", _, _, rest @ ..] if !rest.is_empty() => rest,
        _ => {
            let verb = match *method {
                Method::GET | Method::HEAD => "get".to_string(),
                ref m => m.as_str().to_ascii_lowercase(),
            };
            return crate::rbac::Attributes { verb, path: path.to_string(), ..Default::default() };
        }
    };
    let api_group = if segs[0] == "apis" { segs[1].to_string() } else { String::new() };
    let mut parts = rest;
    let mut namespace = String::new();
    if parts[0] == "namespaces" && parts.len() > 1 {
        namespace = parts[1].to_string();
        if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
            parts = &parts[2..];
        }
    }
    let resource = parts[0].to_string();
    let name = parts.get(1).map(|s| s.to_string()).unwrap_or_default();
    let subresource = parts.get(2).map(|s| s.to_string()).unwrap_or_default();
    let other;
    let verb = match (method, name.is_empty()) {
        // Streams into a pod are creations, whatever the method (Kubernetes asks the
        // same of WebSocket upgrades, which arrive as GET).
        _ if matches!(subresource.as_str(), "exec" | "attach" | "portforward") => "create",
        (&Method::GET | &Method::HEAD, true) if q.flag("watch") => "watch",
        (&Method::GET | &Method::HEAD, true) => "list",
        (&Method::GET | &Method::HEAD, false) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "deletecollection",
        (&Method::DELETE, false) => "delete",
        (m, _) => {
            other = m.as_str().to_ascii_lowercase();
            &other
        }
    };
    crate::rbac::Attributes {
        verb: verb.to_string(),
        resource_request: true,
        api_group,
        resource,
        subresource,
        namespace,
        name,
        path: path.to_string(),
    }
}

/// `SelfSubjectAccessReview`: may the caller do what the spec describes?
fn self_subject_access_review(
    app: &App,
    user: Option<&crate::authn::User>,
    content_type: &str,
    body: &[u8],
) -> ApiResult<Value> {
    let mut review: Value = if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        crate::protobuf::decode_self_subject_access_review(body)?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?
    };
    let spec = &review["spec"];
    let attrs = if let Some(r) = spec.get("resourceAttributes").filter(|r| r.is_object()) {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        crate::rbac::Attributes {
            verb: s("verb"),
            resource_request: true,
            api_group: s("group"),
            resource: s("resource"),
            subresource: s("subresource"),
            namespace: s("namespace"),
            name: s("name"),
            path: String::new(),
        }
    } else if let Some(n) = spec.get("nonResourceAttributes").filter(|n| n.is_object()) {
        crate::rbac::Attributes {
            verb: n["verb"].as_str().unwrap_or_default().to_string(),
            path: n["path"].as_str().unwrap_or_default().to_string(),
            ..Default::default()
        }
    } else {
        return Err(ApiError::invalid(
            "SelfSubjectAccessReview",
            "authorization.k8s.io",
            "",
            vec![(
                "spec.resourceAttributes".into(),
                "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified"
                    .into(),
            )],
        ));
    };
    let allowed = user.is_none_or(|u| app.rbac.allowed(u, &attrs));
    review["status"] = json!({"allowed": allowed});
    if review["metadata"].is_null() {
        review["metadata"] = json!({});
    }
    Ok(review)
}

/// `SelfSubjectReview` (`kubectl auth whoami`): who the caller is.
fn self_subject_review(user: Option<&crate::authn::User>) -> Value {
    let info = match user {
        Some(u) => json!({"username": u.name, "uid": u.uid, "groups": u.groups}),
        None => json!({"username": "system:unsecured", "groups": [crate::authn::MASTERS, crate::authn::AUTHENTICATED]}),
    };
    json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": info},
    })
}

async fn read_body(req: Request<Incoming>) -> ApiResult<(String, Bytes)> {
    let ct = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let body = limited.collect().await.map_err(|e| {
        if e.to_string().contains("length limit exceeded") {
            ApiError::new(413, "RequestEntityTooLarge", format!("Request entity too large: limit is {MAX_BODY}"))
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"))
        }
    })?;
    Ok((ct, body.to_bytes()))
}

/// Decodes a request body for resource `r` by its Content-Type (JSON when none is given).
fn decode_body(r: &Resource, ct: &str, body: &[u8]) -> ApiResult<Value> {
    let media = ct.split(';').next().unwrap_or("").trim();
    match media {
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode(r.group, r.version, body),
        "" | "application/json" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}"))),
        "application/yaml" | "application/apply-patch+yaml" => {
            let v: Value = serde_yaml::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}")))?;
            Ok(v)
        }
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

/// Decodes a body that is not an object of the resource (DeleteOptions, Binding, Eviction).
fn decode_any(ct: &str, body: &[u8]) -> ApiResult<Value> {
    match ct.split(';').next().unwrap_or("").trim() {
        "application/vnd.kubernetes.protobuf" => {
            Err(ApiError::unsupported_media_type("application/vnd.kubernetes.protobuf"))
        }
        media => {
            let v: Value = serde_yaml::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("the request body is not valid {media}: {e}")))?;
            Ok(v)
        }
    }
}

/// A `Status` saying a subresource request (binding, eviction) succeeded.
fn success(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code})
}

async fn route(app: Arc<App>, user: Option<crate::authn::User>, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query());
    let accept = req.headers().get("accept").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let fmt = Format::of(&accept);
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    match segs.as_slice() {
        ["version"] => Ok(json_response(200, &version(), fmt)),
        ["dashboard", rest @ ..] => dashboard(&app, rest, &query).await,
        ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"] if method == Method::POST => {
            let (ct, body) = read_body(req).await?;
            Ok(json_response(201, &self_subject_access_review(&app, user.as_ref(), &ct, &body)?, fmt))
        }
        ["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"] if method == Method::POST => {
            Ok(json_response(201, &self_subject_review(user.as_ref()), fmt))
        }
        ["metrics"] => Ok(respond(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            app.metrics.render() + &app.caches.render_metrics(),
        )),
        ["healthz" | "livez" | "readyz", ..] => match app.store.revision().await {
            Ok(_) => Ok(respond(200, "text/plain; charset=utf-8", "ok")),
            Err(e) => Ok(respond(500, "text/plain; charset=utf-8", format!("[-]etcd failed: {}\n", e.message))),
        },
        ["api"] if discovery::wants_aggregated(&accept) => {
            Ok(respond(200, discovery::AGGREGATED_CONTENT_TYPE, discovery::aggregated(true).to_string()))
        }
        ["apis"] if discovery::wants_aggregated(&accept) => {
            Ok(respond(200, discovery::AGGREGATED_CONTENT_TYPE, discovery::aggregated(false).to_string()))
        }
        ["api"] => Ok(json_response(200, &discovery::api_versions(), fmt)),
        ["apis"] => Ok(json_response(200, &discovery::api_group_list(), fmt)),
        ["api", "v1"] => Ok(json_response(200, &discovery::resource_list("", "v1").expect("core exists"), fmt)),
        ["apis", g] => registry::groups()
            .iter()
            .find(|(name, _)| name == g)
            .map(|(name, vs)| json_response(200, &discovery::api_group(name, vs), fmt))
            .ok_or_else(ApiError::not_found_path),
        ["apis", g, v] => {
            discovery::resource_list(g, v).map(|l| json_response(200, &l, fmt)).ok_or_else(ApiError::not_found_path)
        }
        // kubectl asks for v2 as protobuf, which is not served: it falls back to v3 (and to
        // its compiled-in patch metadata), as it does on a 404.
        ["openapi", "v2"] if accept.contains("protobuf") => Err(ApiError::not_found_path()),
        ["openapi", "v2"] => Ok(json_response(200, openapi::v2(), fmt)),
        ["openapi", "v3"] => Ok(json_response(200, &openapi::root(), fmt)),
        ["openapi", "v3", "api", v] => {
            openapi::group_version("", v).map(|d| json_response(200, d, fmt)).ok_or_else(ApiError::not_found_path)
        }
        ["openapi", "v3", "apis", g, v] => {
            openapi::group_version(g, v).map(|d| json_response(200, d, fmt)).ok_or_else(ApiError::not_found_path)
        }
        ["api", "v1", rest @ ..] => {
            let t = target("", "v1", rest)?;
            resource(app, user.as_ref(), t, method, query, fmt, req).await
        }
        ["apis", g, v, rest @ ..] => {
            let t = target(g, v, rest)?;
            resource(app, user.as_ref(), t, method, query, fmt, req).await
        }
        _ => Err(ApiError::not_found_path()),
    }
}

/// The dashboard's files and its two JSON documents (`dashboard.rs`).
async fn dashboard(app: &App, rest: &[&str], q: &Query) -> ApiResult<Response<Body>> {
    let (code, content_type, body): (u16, &str, Bytes) = match rest {
        ["api", "store"] => {
            (200, "application/json", crate::dashboard::store_members(&app.store).await?.to_string().into())
        }
        ["api", "usage"] => {
            let pods = q.get("pods") != Some("false");
            (200, "application/json", app.usage.to_json(pods, q.get("namespace")).into())
        }
        [] | [_] => match crate::dashboard::asset(rest.first().copied().unwrap_or("")) {
            Some((ct, text)) => (200, ct, Bytes::from_static(text.as_bytes())),
            None => return Err(ApiError::not_found_path()),
        },
        _ => return Err(ApiError::not_found_path()),
    };
    let mut resp = respond(code, content_type, body);
    for (k, v) in crate::dashboard::SECURITY_HEADERS {
        resp.headers_mut().insert(k, hyper::header::HeaderValue::from_static(v));
    }
    Ok(resp)
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-skiff",
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

async fn resource(
    app: Arc<App>,
    user: Option<&crate::authn::User>,
    t: Target,
    method: Method,
    q: Query,
    fmt: Format,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    if let (Some("log"), Some(name), Some(ns), true) =
        (t.sub.as_deref(), t.name.as_deref(), t.namespace.as_deref(), method == Method::GET)
    {
        return crate::nodeproxy::pod_log(&app.store, ns, name, q.get("container"), &q.0).await;
    }
    if let (Some(sub @ ("exec" | "attach")), Some(name), Some(ns)) =
        (t.sub.as_deref(), t.name.as_deref(), t.namespace.as_deref())
    {
        let container = q.get("container").map(String::from);
        let attach = sub == "attach";
        return crate::nodeproxy::pod_exec(&app.store, ns, name, container.as_deref(), attach, req).await;
    }
    if let (Some("token"), Some(name), Some(ns), &Method::POST) =
        (t.sub.as_deref(), t.name.as_deref(), t.namespace.as_deref(), &method)
    {
        return token_request(&app, user, ns, name, req, fmt).await;
    }
    if let (Some("portforward"), Some(name), Some(ns)) = (t.sub.as_deref(), t.name.as_deref(), t.namespace.as_deref()) {
        return crate::nodeproxy::pod_port_forward(&app.store, ns, name, req).await;
    }
    let warnings = Mutex::new(Vec::new());
    let h = Handler {
        store: &app.store,
        caches: &app.caches,
        ranges: &app.ranges,
        tolerations: app.tolerations,
        r: t.r,
        ns: t.namespace.as_deref(),
        q: &q,
        fmt,
        warnings: &warnings,
        user,
        rbac: &app.rbac,
    };
    let answer = match (method, t.name.as_deref(), t.sub.as_deref()) {
        (Method::GET, None, _) if q.flag("watch") => h.watch().await,
        (Method::GET, None, _) => h.list().await,
        (Method::GET, Some(name), None | Some("status") | Some("approval")) => {
            let s = h.get(name).await?;
            Ok(h.reply(200, &s.obj))
        }
        (Method::GET, Some(name), Some("scale")) => {
            let s = h.get(name).await?;
            Ok(json_response(200, &scale_of(&s.obj), fmt))
        }
        (Method::POST, None, _) => {
            let (ct, body) = read_body(req).await?;
            h.create(decode_body(t.r, &ct, &body)?).await
        }
        (Method::PUT, Some(name), sub) => {
            let (ct, body) = read_body(req).await?;
            h.update(name, sub, decode_body(t.r, &ct, &body)?).await
        }
        (Method::PATCH, Some(name), sub) => {
            let (ct, body) = read_body(req).await?;
            h.patch(name, sub, &ct, &body).await
        }
        (Method::POST, Some(name), Some("binding")) => {
            let (ct, body) = read_body(req).await?;
            h.bind(name, &decode_any(&ct, &body)?).await
        }
        (Method::POST, Some(name), Some("eviction")) => {
            let (ct, body) = read_body(req).await?;
            let eviction = decode_any(&ct, &body)?;
            let opts = h.delete_options(&eviction["deleteOptions"])?;
            h.delete(name, &opts).await?;
            Ok(json_response(201, &success(201), fmt))
        }
        (Method::DELETE, Some(name), None) => {
            let (ct, body) = read_body(req).await?;
            let opts = if body.is_empty() { json!({}) } else { decode_any(&ct, &body)? };
            let opts = h.delete_options(&opts)?;
            h.delete(name, &opts).await
        }
        (Method::DELETE, None, None) => {
            let (ct, body) = read_body(req).await?;
            let opts = if body.is_empty() { json!({}) } else { decode_any(&ct, &body)? };
            let opts = h.delete_options(&opts)?;
            h.delete_collection(&opts).await
        }
        (m, _, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {m}"
        ))),
    };
    let mut resp = answer?;
    for w in warnings.into_inner().unwrap_or_default() {
        // RFC 7234 warn-text: a quoted string with `\` and `"` escaped.
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = hyper::header::HeaderValue::from_str(&text) {
            resp.headers_mut().append("Warning", v);
        }
    }
    Ok(resp)
}

/// What admitting a create reads from the store (`Handler::admission_reads`).
#[derive(Default)]
struct AdmissionReads {
    namespace: Option<Stored>,
    quotas: Vec<Stored>,
    account: Option<Stored>,
    limit_ranges: Vec<Value>,
}

#[derive(Clone, Copy)]
struct Handler<'a> {
    store: &'a Store,
    caches: &'a watchcache::WatchCaches,
    ranges: &'a alloc::Ranges,
    tolerations: admission::Tolerations,
    r: &'static Resource,
    ns: Option<&'a str>,
    q: &'a Query,
    fmt: Format,
    /// Warnings for the client (`Warning: 299 - "..."` headers).
    warnings: &'a Mutex<Vec<String>>,
    /// Who asks (None on the insecure port), for the checks that depend on it.
    user: Option<&'a crate::authn::User>,
    rbac: &'a crate::rbac::Rbac,
}

/// The continue token: the revision of the first page and the last key returned.
fn encode_continue(rev: i64, last_key: &str) -> String {
    let v = json!({"v": "meta.k8s.io/v1", "rv": rev, "start": last_key});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn decode_continue(token: &str) -> ApiResult<(i64, String)> {
    let bad = || ApiError::bad_request("continue key is not valid: the token is malformed");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    Ok((v["rv"].as_i64().ok_or_else(bad)?, v["start"].as_str().ok_or_else(bad)?.to_string()))
}

/// The autoscaling/v1 Scale of a workload (its resourceVersion is the object's).
fn scale_of(o: &Value) -> Value {
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": o["metadata"]["name"],
            "namespace": o["metadata"]["namespace"],
            "uid": o["metadata"]["uid"],
            "resourceVersion": o["metadata"]["resourceVersion"],
            "creationTimestamp": o["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": o["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {
            "replicas": o["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector_string(&o["spec"]["selector"]),
        },
    })
}

fn selector_string(sel: &Value) -> String {
    sel["matchLabels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

impl Handler<'_> {
    fn key(&self, name: &str) -> String {
        storage::key(self.r, self.ns, name)
    }

    fn reply(&self, code: u16, obj: &Value) -> Response<Body> {
        if self.fmt.table {
            let rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or_default();
            return json_response(
                code,
                &table::table(self.r, std::slice::from_ref(obj), rv, None, true, self.q.get("includeObject")),
                Format::default(),
            );
        }
        json_response(code, obj, self.fmt)
    }

    fn not_found(&self, name: &str) -> ApiError {
        ApiError::not_found(self.r.plural, self.r.group, name)
    }

    async fn get(&self, name: &str) -> ApiResult<Stored> {
        let mut s = self.store.get(&self.key(name)).await?.ok_or_else(|| self.not_found(name))?;
        s.obj = convert::to_view(self.r, s.obj);
        Ok(s)
    }

    /// The watch cache's copy of the object, if it holds one, at revision `rv` when
    /// given: what a write may start from instead of reading the store. The write's
    /// compare-and-swap on that revision fails if the store has moved on since, and the
    /// write then reads the store (or answers 409 when the client named `rv`: the store
    /// no longer holds it either). kube-apiserver's writes start from the cached object
    /// the same way.
    fn cached(&self, name: &str, rv: Option<&str>) -> Option<Stored> {
        let key = self.key(name);
        let (obj, rev) = self.caches.peek(&storage::prefix(self.r, None), &key)?;
        if rv.is_some_and(|rv| rv != rev.to_string()) {
            return None;
        }
        Some(Stored { key, obj: convert::to_view(self.r, Value::clone(&obj)), rev })
    }

    /// The object a write starts from: the cached copy (at `rv`, if given) when
    /// `try_cache`, else the store's.
    async fn current(&self, name: &str, rv: Option<&str>, try_cache: bool) -> ApiResult<Stored> {
        match try_cache.then(|| self.cached(name, rv)).flatten() {
            Some(c) => Ok(c),
            None => self.get(name).await,
        }
    }

    fn selectors(&self) -> ApiResult<(LabelSelector, FieldSelector)> {
        Ok((
            LabelSelector::parse(self.q.get("labelSelector").unwrap_or_default())?,
            FieldSelector::parse(self.q.get("fieldSelector").unwrap_or_default())?,
        ))
    }

    /// Which revision a list must show: its `resourceVersion` and `resourceVersionMatch`
    /// read as kube-apiserver reads them (none: the latest; "0": any; otherwise not
    /// older than it, or exactly it).
    fn list_at(&self) -> ApiResult<watchcache::At> {
        use watchcache::At;
        let invalid = |msg: String| {
            ApiError::invalid("ListOptions", "meta.k8s.io", "", vec![("resourceVersionMatch".into(), msg)])
        };
        let rv = self.q.get("resourceVersion").filter(|s| !s.is_empty());
        let exact = match self.q.get("resourceVersionMatch").filter(|s| !s.is_empty()) {
            None | Some("NotOlderThan") => false,
            Some("Exact") => true,
            Some(m) => {
                return Err(invalid(format!("Unsupported value: {m:?}: supported values: \"Exact\", \"NotOlderThan\"")))
            }
        };
        let rv = match rv {
            None if self.q.get("resourceVersionMatch").is_some_and(|m| !m.is_empty()) => {
                return Err(invalid(
                    "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided".into(),
                ))
            }
            None => return Ok(At::Latest),
            Some("0") if exact => {
                return Err(invalid(
                    "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"".into(),
                ))
            }
            Some("0") => return Ok(At::Any),
            Some(v) => v.parse::<i64>().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?,
        };
        Ok(if exact { At::Exact(rv) } else { At::NotOlderThan(rv) })
    }

    /// A list (what `read_list` finds), its body encoded as it is sent.
    async fn list(&self) -> ApiResult<Response<Body>> {
        let (labels, fields) = self.selectors()?;
        let limit = self.q.int("limit")?.unwrap_or(0).max(0);
        let prefix = storage::prefix(self.r, self.ns);
        let (at, after) = match self.q.get("continue").filter(|c| !c.is_empty()) {
            Some(c) => {
                let (rev, start) = decode_continue(c)?;
                // A token names a key of the list it came from, never another.
                if !start.starts_with(&prefix) {
                    return Err(ApiError::bad_request("continue key is not valid: it belongs to another list"));
                }
                (watchcache::At::Exact(rev), Some(start))
            }
            None => (self.list_at()?, None),
        };
        let keep = |o: &Value| labels.matches(o) && fields.matches(o);
        let q =
            watchcache::ListQuery { range: &prefix, after: after.as_deref(), at, limit: limit as usize, keep: &keep };
        let (rev, items, cont) = self.read_list(&q).await?;
        let rv = rev.to_string();
        let form = match (self.fmt.table, self.fmt.partial) {
            (true, _) => listbody::Form::Row { include: self.q.get("includeObject").map(String::from) },
            (false, true) => listbody::Form::Partial,
            (false, false) => listbody::Form::Object,
        };
        if self.fmt.yaml && matches!(form, listbody::Form::Object) {
            let items: Vec<Value> = items.iter().map(|o| convert::to_view(self.r, Value::clone(o))).collect();
            let mut meta = json!({"resourceVersion": rv});
            if let Some(c) = &cont {
                meta["continue"] = json!(c);
            }
            let list = json!({"kind": format!("{}List", self.r.kind), "apiVersion": self.r.api_version(), "metadata": meta, "items": items});
            return Ok(json_response(200, &list, self.fmt));
        }
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header("Content-Type", "application/json")
            .header("Cache-Control", "no-cache, private")
            .body(listbody::ListBody::body(self.r, form, items, &rv, cont.as_deref()))
            .expect("a valid response"))
    }

    /// The objects a list asks for: (revision, items, continue token). From the watch
    /// cache when it can show the revision asked for (it holds every object of the
    /// resource), else from the store.
    async fn read_list(&self, q: &watchcache::ListQuery<'_>) -> ApiResult<(i64, Vec<Arc<Value>>, Option<String>)> {
        match self.caches.list(self.store, &storage::prefix(self.r, None), q).await? {
            Some(l) => Ok((l.rev, l.items, l.more_after.map(|k| encode_continue(l.rev, &k)))),
            None => self.list_from_store(q).await,
        }
    }

    /// A list read from the store, in pages, at one revision (0: the latest).
    async fn list_from_store(
        &self,
        q: &watchcache::ListQuery<'_>,
    ) -> ApiResult<(i64, Vec<Arc<Value>>, Option<String>)> {
        let mut rev = match q.at {
            watchcache::At::Exact(rev) => rev,
            _ => 0,
        };
        let limit = q.limit as i64;
        let mut after = q.after.map(String::from);
        let mut items = Vec::new();
        loop {
            let page = match self.store.list(q.range, after.as_deref(), limit, rev).await {
                Err(e) if e.code == 410 => {
                    return Err(ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."))
                }
                r => r?,
            };
            if rev == 0 {
                rev = page.revision;
            }
            let last_key = page.items.last().map(|s| s.key.clone());
            items.extend(page.items.into_iter().filter(|s| (q.keep)(&s.obj)).map(|s| Arc::new(s.obj)));
            if !page.more {
                return Ok((rev, items, None));
            }
            after = last_key;
            if limit > 0 && items.len() as i64 >= limit {
                return Ok((rev, items, after.map(|k| encode_continue(rev, &k))));
            }
        }
    }

    /// What admitting a new object reads from the store, in one round trip: its
    /// namespace and the namespace's ResourceQuotas and, for a pod, its service account
    /// and the namespace's LimitRanges. Nothing for an object outside namespaces.
    async fn admission_reads(&self, obj: &Value) -> ApiResult<AdmissionReads> {
        let Some(ns) = self.ns.filter(|_| self.r.namespaced) else { return Ok(AdmissionReads::default()) };
        let found = |g: &str, p: &str| registry::find(g, "v1", p).expect("registered");
        let ns_key = storage::key(found("", "namespaces"), None, ns);
        let quotas = storage::prefix(found("", "resourcequotas"), Some(ns));
        let pod = self.is("", "pods").then(|| {
            let account = obj["spec"]["serviceAccountName"]
                .as_str()
                .or(obj["spec"]["serviceAccount"].as_str())
                .filter(|n| !n.is_empty())
                .unwrap_or("default");
            (
                storage::key(found("", "serviceaccounts"), Some(ns), account),
                storage::prefix(found("", "limitranges"), Some(ns)),
            )
        });
        let mut reads = vec![storage::Read::Key(&ns_key), storage::Read::Prefix(&quotas)];
        if let Some((account, ranges)) = &pod {
            reads.extend([storage::Read::Key(account), storage::Read::Prefix(ranges)]);
        }
        let mut found = self.store.read_all(&reads).await?.into_iter();
        let mut next = || found.next().unwrap_or_default();
        let namespace = next().pop();
        let quotas = next();
        let (account, limit_ranges) = match pod {
            Some(_) => (next().pop(), next().into_iter().map(|s| s.obj).collect()),
            None => (None, Vec::new()),
        };
        Ok(AdmissionReads { namespace, quotas, account, limit_ranges })
    }

    /// A new object's namespace must exist and not be terminating.
    fn ensure_namespace(&self, namespace: Option<&Stored>) -> ApiResult<()> {
        let Some(ns) = self.ns.filter(|_| self.r.namespaced) else { return Ok(()) };
        match namespace {
            None => Err(ApiError::not_found("namespaces", "", ns)),
            Some(s) if s.obj["metadata"]["deletionTimestamp"].is_string() => Err(ApiError::new(
                403,
                "Forbidden",
                format!("unable to create new content in namespace {ns} because it is being terminated"),
            )),
            Some(_) => Ok(()),
        }
    }

    fn is(&self, group: &str, plural: &str) -> bool {
        self.r.group == group && self.r.plural == plural
    }

    /// Unknown fields, as `fieldValidation` asks: rejected (Strict), dropped with a
    /// warning (Warn, the default) or dropped silently (Ignore).
    fn check_fields(&self, obj: &mut Value) -> ApiResult<()> {
        let mode = self.q.get("fieldValidation").unwrap_or("Warn");
        if !matches!(mode, "Ignore" | "Warn" | "Strict") {
            return Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, not {mode:?}"
            )));
        }
        let unknown = openapi::unknown_fields(self.r, obj);
        if unknown.is_empty() || mode == "Ignore" {
            return Ok(());
        }
        let each: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
        if mode == "Strict" {
            let kind = self.r.kind;
            return Err(ApiError::bad_request(format!(
                "{kind} in version \"{}\" cannot be handled as a {kind}: strict decoding error: {}",
                self.r.version,
                each.join(", ")
            )));
        }
        self.warnings.lock().expect("warnings").extend(each);
        Ok(())
    }

    async fn create(&self, mut obj: Value) -> ApiResult<Response<Body>> {
        self.check_fields(&mut obj)?;
        self.check_decodes(&mut obj)?;
        object::prepare_create(self.r, &mut obj, self.ns.filter(|_| self.r.namespaced))?;
        if let Some(node) = self.user.and_then(crate::nodeauthz::node_of) {
            crate::nodeauthz::may_create(node, self.r.plural, &obj).map_err(|why| {
                let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                ApiError::new(403, "Forbidden", format!("{} \"{name}\" is forbidden: {why}", self.r.plural))
            })?;
        }
        defaults::apply(self.r, &mut obj);
        let reads = self.admission_reads(&obj).await?;
        if self.is("", "pods") {
            admission::default_tolerations(&mut obj, self.tolerations);
            admission::service_account(&mut obj, reads.account.as_ref().map(|s| &s.obj), &object::name_suffix());
            if let Err(problems) = admission::limit_ranger(&mut obj, &reads.limit_ranges) {
                let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                // One reason alone, several in brackets (Kubernetes' aggregate error).
                let why = match problems.as_slice() {
                    [one] => one.clone(),
                    many => format!("[{}]", many.join(", ")),
                };
                return Err(ApiError::new(403, "Forbidden", format!("pods \"{name}\" is forbidden: {why}")));
            }
        }
        if self.is("", "limitranges") {
            admission::default_limit_range(&mut obj);
        }
        if self.is("certificates.k8s.io", "certificatesigningrequests") {
            self.admit_csr(&mut obj)?;
        }
        if self.is("", "persistentvolumeclaims") {
            let r = registry::find("storage.k8s.io", "v1", "storageclasses").expect("storage classes are registered");
            let page = self.store.list(&storage::prefix(r, None), None, 0, 0).await?;
            let classes: Vec<Value> = page.items.into_iter().map(|s| s.obj).collect();
            admission::default_storage_class(&mut obj, &classes);
            admission::pvc_protection(&mut obj);
        }
        self.ensure_namespace(reads.namespace.as_ref())?;
        self.no_escalation(&obj)?;
        if self.is("", "pods") {
            self.pod_security(&obj, reads.namespace.as_ref())?;
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if self.q.dry_run() {
            if self.store.get(&self.key(&name)).await?.is_some() {
                return Err(ApiError::already_exists(self.r.plural, self.r.group, &name));
            }
            self.charges(&name, &obj, reads.quotas)?;
            return Ok(self.reply(201, &obj));
        }
        let taken = match self.is("", "services") {
            true => Some(alloc::allocate(self.store, self.ranges, &mut obj, None).await?),
            false => None,
        };
        let created = self.create_charged(&name, &obj, reads.quotas).await;
        match created {
            Ok(Some(rev)) => {
                obj["metadata"]["resourceVersion"] = json!(rev.to_string());
                Ok(self.reply(201, &obj))
            }
            other => {
                if let Some(t) = taken {
                    t.undo(self.store).await;
                }
                match other {
                    Err(e) => Err(e),
                    _ => Err(ApiError::already_exists(self.r.plural, self.r.group, &name)),
                }
            }
        }
    }

    /// A new CertificateSigningRequest: it must carry a readable, correctly signed
    /// request and a signer; who asked is recorded from the request itself.
    fn admit_csr(&self, obj: &mut Value) -> ApiResult<()> {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let mut causes = Vec::new();
        let pem =
            obj["spec"]["request"].as_str().and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
        match pem.as_deref().map(crate::csr::parse_pem) {
            None => causes.push(("spec.request".to_string(), "Required value".to_string())),
            Some(Err(e)) => causes.push(("spec.request".into(), format!("Invalid value: []byte{{...}}: {e}"))),
            Some(Ok(_)) => {}
        }
        if obj["spec"]["signerName"].as_str().is_none_or(str::is_empty) {
            causes.push(("spec.signerName".into(), "Required value".into()));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid("CertificateSigningRequest", "certificates.k8s.io", &name, causes));
        }
        let (user, uid, groups) = match self.user {
            Some(u) => (u.name.clone(), u.uid.clone(), u.groups.clone()),
            None => ("system:anonymous".to_string(), String::new(), Vec::new()),
        };
        obj["spec"]["username"] = json!(user);
        obj["spec"]["uid"] = json!(uid);
        obj["spec"]["groups"] = json!(groups);
        obj["status"] = json!({});
        Ok(())
    }

    /// The namespace's ResourceQuotas that `obj` counts against, each with the charge
    /// added (key, new quota, the revision it was read at); or Kubernetes' refusal.
    fn charges(&self, name: &str, obj: &Value, quotas: Vec<Stored>) -> ApiResult<Vec<(String, Value, i64)>> {
        let mut charges = Vec::new();
        for q in quotas {
            match crate::quota::charge(&q.obj, self.r, obj) {
                Ok(Some(charged)) => charges.push((q.key, charged, q.rev)),
                Ok(None) => {}
                Err(why) => {
                    let what = self.r.qualified();
                    return Err(ApiError::new(403, "Forbidden", format!("{what} \"{name}\" is forbidden: {why}")));
                }
            }
        }
        Ok(charges)
    }

    /// Stores a new object, charged to the quotas it counts against in the same
    /// transaction: the new resourceVersion, or None if the name is taken. `quotas` are
    /// the namespace's as admission read them.
    async fn create_charged(&self, name: &str, obj: &Value, quotas: Vec<Stored>) -> ApiResult<Option<i64>> {
        let (key, stored) = (self.key(name), convert::to_storage(self.r, obj));
        let mut quotas = Some(quotas);
        // A quota changed between reading and writing (another create charged it, or a
        // recount): read again and decide again.
        for _ in 0..32 {
            let quotas = match quotas.take() {
                Some(q) => q,
                None => {
                    let qr = registry::find("", "v1", "resourcequotas").expect("resource quotas are registered");
                    self.store.list(&storage::prefix(qr, self.ns), None, 0, 0).await?.items
                }
            };
            let charges = self.charges(name, obj, quotas)?;
            if charges.is_empty() {
                return self.store.create(&key, &stored).await;
            }
            match self.store.create_with(&key, &stored, &charges).await? {
                storage::Created::At(rev) => return Ok(Some(rev)),
                storage::Created::Exists => return Ok(None),
                storage::Created::Stale => tokio::task::yield_now().await,
            }
        }
        Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on resourcequotas: the quotas of namespace {} kept changing; please try again",
                self.ns.unwrap_or_default()
            ),
        ))
    }

    /// The body must decode as the kind's type (openapi::check_decodes), in Kubernetes'
    /// words for a body that does not.
    fn check_decodes(&self, obj: &mut Value) -> ApiResult<()> {
        if !obj.is_object() {
            return Ok(()); // prepare_create / prepare_update say what is wrong
        }
        // Go's base64 decoder skips line breaks (YAML `|` blocks wrap long values); they
        // are dropped here, so what is stored is what every client can decode.
        if self.is("", "secrets") {
            for v in obj["data"].as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
                if let Some(s) = v.as_str().filter(|s| s.contains(['\n', '\r'])) {
                    *v = Value::String(s.replace(['\n', '\r'], ""));
                }
            }
        }
        openapi::check_decodes(self.r, obj).map_err(|e| {
            let kind = self.r.kind;
            ApiError::bad_request(format!(
                "{kind} in version \"{}\" cannot be handled as a {kind}: {e}",
                self.r.version
            ))
        })
    }

    /// RBAC's escalation check on roles and bindings (rbac::Rbac::may_write).
    fn no_escalation(&self, obj: &Value) -> ApiResult<()> {
        let (Some(user), "rbac.authorization.k8s.io") = (self.user, self.r.group) else { return Ok(()) };
        let ns = if self.r.namespaced { self.ns } else { None };
        self.rbac.may_write(user, self.r.plural, ns, obj).map_err(|why| {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            ApiError::new(
                403,
                "Forbidden",
                format!("{}.rbac.authorization.k8s.io \"{name}\" is forbidden: {why}", self.r.plural),
            )
        })
    }

    /// Pod Security admission: refuses a pod its namespace's `enforce` level forbids,
    /// warns about what its `warn` level would.
    fn pod_security(&self, pod: &Value, namespace: Option<&Stored>) -> ApiResult<()> {
        let Some(namespace) = namespace else { return Ok(()) };
        if let Some((level, version)) = crate::podsecurity::policy(&namespace.obj, "enforce") {
            let v = crate::podsecurity::check(level, pod);
            if !v.is_empty() {
                let name = pod["metadata"]["name"].as_str().unwrap_or_default();
                let why = crate::podsecurity::describe(level, &version, &v);
                return Err(ApiError::new(403, "Forbidden", format!("pods \"{name}\" is forbidden: violates {why}")));
            }
        }
        if let Some((level, version)) = crate::podsecurity::policy(&namespace.obj, "warn") {
            let v = crate::podsecurity::check(level, pod);
            if !v.is_empty() {
                let why = crate::podsecurity::describe(level, &version, &v);
                self.warnings.lock().expect("warnings").push(format!("would violate {why}"));
            }
        }
        Ok(())
    }

    /// Writes `new` over `cur` (compare-and-swap on its revision). A marked object
    /// left with nothing to wait for is deleted instead.
    async fn write(&self, name: &str, sub: Option<&str>, mut new: Value, cur: &Stored) -> ApiResult<Value> {
        if sub == Some("status") {
            // Only the status came from the client: the rest is the stored object,
            // checked when it was written. A pod's status write (the agent's most
            // frequent request) then checks a third of the pod, not all of it.
            let mut part =
                json!({"apiVersion": new["apiVersion"], "kind": new["kind"], "status": new["status"].take()});
            self.check_fields(&mut part)?;
            self.check_decodes(&mut part)?;
            new["status"] = part["status"].take();
        } else {
            self.check_fields(&mut new)?;
            self.check_decodes(&mut new)?;
        }
        self.write_built(name, new, cur).await
    }

    /// `write` for an object the server built from the stored one (a binding): it has
    /// no fields a client sent, so the schema checks are skipped.
    async fn write_built(&self, name: &str, mut new: Value, cur: &Stored) -> ApiResult<Value> {
        object::prepare_update(self.r, &mut new, &cur.obj)?;
        if self.is("", "nodes") {
            object::keep_pod_cidrs(&new, &cur.obj)?;
        }
        defaults::apply(self.r, &mut new);
        if self.is("", "limitranges") {
            admission::default_limit_range(&mut new);
        }
        self.no_escalation(&new)?;
        if self.q.dry_run() {
            return Ok(new);
        }
        if lifecycle::finished(self.r, &new) {
            return match self.store.delete(&cur.key, cur.rev).await? {
                Ok(_) => {
                    self.deleted(&cur.obj).await;
                    Ok(new)
                }
                Err(None) => Err(self.not_found(name)),
                Err(Some(_)) => Err(ApiError::conflict(self.r.plural, self.r.group, name)),
            };
        }
        let taken = match self.is("", "services") {
            true => Some(alloc::allocate(self.store, self.ranges, &mut new, Some(&cur.obj)).await?),
            false => None,
        };
        let written = self.store.update(&self.key(name), &convert::to_storage(self.r, &new), cur.rev).await;
        match (written, taken) {
            (Ok(Ok(rev)), taken) => {
                if let Some(t) = taken {
                    t.commit(self.store).await;
                }
                new["metadata"]["resourceVersion"] = json!(rev.to_string());
                Ok(new)
            }
            (other, taken) => {
                if let Some(t) = taken {
                    t.undo(self.store).await;
                }
                match other? {
                    Err(None) => Err(self.not_found(name)),
                    _ => Err(ApiError::conflict(self.r.plural, self.r.group, name)),
                }
            }
        }
    }

    /// Cleans up after an object left the store: a Service's addresses and ports.
    async fn deleted(&self, obj: &Value) {
        if self.is("", "services") {
            for k in alloc::held(obj) {
                let _ = self.store.release(&k).await;
            }
        }
    }

    /// What a write may change of a CertificateSigningRequest, as Kubernetes' strategy
    /// for it: the request itself never; `Approved`/`Denied` only through `approval`,
    /// by a user who may `approve` its signer; the certificate only through `status`.
    fn guard_csr(&self, sub: Option<&str>, cur: &Value, mut new: Value) -> ApiResult<Value> {
        if !self.is("certificates.k8s.io", "certificatesigningrequests") {
            return Ok(new);
        }
        let decision = |c: &Value| c["type"] == "Approved" || c["type"] == "Denied";
        let conditions = |o: &Value| o["status"]["conditions"].as_array().cloned().unwrap_or_default();
        new["spec"] = cur["spec"].clone();
        match sub {
            None => new["status"] = cur["status"].clone(),
            Some("status") => {
                let mut kept: Vec<Value> = conditions(cur).into_iter().filter(decision).collect();
                kept.extend(conditions(&new).into_iter().filter(|c| !decision(c)));
                new["status"]["conditions"] = json!(kept);
            }
            Some("approval") => {
                new["status"]["certificate"] = cur["status"]["certificate"].clone();
                let changed = conditions(cur).into_iter().filter(decision).collect::<Vec<_>>()
                    != conditions(&new).into_iter().filter(decision).collect::<Vec<_>>();
                let signer = cur["spec"]["signerName"].as_str().unwrap_or_default();
                if changed && !self.may_approve(signer) {
                    let name = cur["metadata"]["name"].as_str().unwrap_or_default();
                    return Err(ApiError::new(
                        403,
                        "Forbidden",
                        format!(
                            "certificatesigningrequests.certificates.k8s.io \"{name}\" is forbidden: user not permitted to approve requests with signerName \"{signer}\""
                        ),
                    ));
                }
            }
            Some(_) => {}
        }
        Ok(new)
    }

    /// Whether the user may `approve` on `signers` named `signer` (or `<domain>/*`).
    fn may_approve(&self, signer: &str) -> bool {
        let Some(user) = self.user else { return true };
        let domain = signer.split('/').next().unwrap_or_default();
        [signer.to_string(), format!("{domain}/*")].into_iter().any(|name| {
            self.rbac.allowed(
                user,
                &crate::rbac::Attributes {
                    verb: "approve".into(),
                    resource_request: true,
                    api_group: "certificates.k8s.io".into(),
                    resource: "signers".into(),
                    name,
                    ..Default::default()
                },
            )
        })
    }

    /// The object a subresource write makes: only status, or only spec.replicas, change.
    fn apply_sub(sub: Option<&str>, cur: &Value, mut body: Value) -> ApiResult<Value> {
        match sub {
            None => Ok(body),
            Some("status") => {
                // The stored object with the body's status (the old status is not copied).
                let mut o: serde_json::Map<String, Value> = cur
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| k.as_str() != "status")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                o.insert("status".into(), body.get_mut("status").map(Value::take).unwrap_or_default());
                Ok(Value::Object(o))
            }
            Some("approval") => {
                // Only the Approved / Denied conditions change; the certificate stays.
                let conds = body["status"]["conditions"].clone();
                let has = |t: &str| conds.as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == t));
                if has("Approved") && has("Denied") {
                    let name = cur["metadata"]["name"].as_str().unwrap_or_default();
                    return Err(ApiError::invalid(
                        "CertificateSigningRequest",
                        "certificates.k8s.io",
                        name,
                        vec![(
                            "status.conditions".into(),
                            "Invalid value: \"Approved\": Approved and Denied conditions are mutually exclusive".into(),
                        )],
                    ));
                }
                let mut o = cur.clone();
                o["status"]["conditions"] = conds;
                Ok(o)
            }
            Some("finalize") => {
                let mut o = cur.clone();
                o["spec"]["finalizers"] = body["spec"]["finalizers"].clone();
                Ok(o)
            }
            Some("scale") => {
                let replicas = body["spec"]["replicas"]
                    .as_i64()
                    .ok_or_else(|| ApiError::bad_request("a Scale needs spec.replicas"))?;
                let mut o = cur.clone();
                o["spec"]["replicas"] = json!(replicas);
                Ok(o)
            }
            Some(other) => Err(ApiError::method_not_allowed(format!("{other} cannot be written"))),
        }
    }

    async fn update(&self, name: &str, sub: Option<&str>, body: Value) -> ApiResult<Response<Body>> {
        // A write naming its revision starts from the cached object at that revision:
        // if the store has moved on, the write gets 409 either way.
        let rv = body["metadata"]["resourceVersion"].as_str().filter(|s| !s.is_empty());
        let cur = self.current(name, rv, rv.is_some()).await?;
        if let Some(rv) = rv {
            if rv != cur.rev.to_string() {
                return Err(ApiError::conflict(self.r.plural, self.r.group, name));
            }
        }
        if body["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                body["metadata"]["name"].as_str().unwrap_or_default()
            )));
        }
        let mut body = body;
        if sub.is_none() && !body["metadata"]["name"].is_string() {
            body["metadata"]["name"] = json!(name);
        }
        let new = self.guard_csr(sub, &cur.obj, Self::apply_sub(sub, &cur.obj, body)?)?;
        let out = self.write(name, sub, new, &cur).await?;
        Ok(self.reply_written(sub, &out))
    }

    /// The answer to a write: the object, or its Scale when the scale subresource was written.
    fn reply_written(&self, sub: Option<&str>, out: &Value) -> Response<Body> {
        match sub {
            Some("scale") => json_response(200, &scale_of(out), self.fmt),
            _ => self.reply(200, out),
        }
    }

    async fn patch(&self, name: &str, sub: Option<&str>, ct: &str, body: &[u8]) -> ApiResult<Response<Body>> {
        let media = ct.split(';').next().unwrap_or("").trim().to_string();
        let p: Value = match media.as_str() {
            "application/apply-patch+yaml" => decode_body(self.r, &media, body)?,
            "application/merge-patch+json"
            | "application/strategic-merge-patch+json"
            | "application/json-patch+json" => serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?,
            other => return Err(ApiError::unsupported_media_type(other)),
        };
        if media == "application/apply-patch+yaml" && sub.is_none() {
            // Server-side apply types the whole configuration: undeclared fields are errors.
            let unknown = openapi::unknown_fields(self.r, &mut p.clone());
            if !unknown.is_empty() {
                let r = self.r;
                let ns = self.ns.map(|n| format!("{n}/")).unwrap_or_default();
                let fields: Vec<String> =
                    unknown.iter().map(|f| format!(".{f}: field not declared in schema")).collect();
                return Err(ApiError::bad_request(format!(
                    "failed to create typed patch object ({ns}{name}; {}, Kind={}): {}",
                    r.api_version(),
                    r.kind,
                    fields.join(", ")
                )));
            }
        }
        for attempt in 0..5 {
            let rv = p["metadata"]["resourceVersion"].as_str();
            let cached = if attempt == 0 { self.cached(name, rv) } else { None };
            let from_cache = cached.is_some();
            let found = match cached {
                Some(c) => Some(c),
                None => self.store.get(&self.key(name)).await?.map(|mut c| {
                    c.obj = convert::to_view(self.r, c.obj);
                    c
                }),
            };
            let cur = match found {
                Some(c) => c,
                // Server-side apply creates what is missing.
                None if media == "application/apply-patch+yaml" && sub.is_none() => {
                    let mut obj = p.clone();
                    if !obj["metadata"].is_object() {
                        obj["metadata"] = json!({});
                    }
                    obj["metadata"]["name"] = json!(name);
                    return self.create(obj).await;
                }
                None => return Err(self.not_found(name)),
            };
            if let Some(rv) = p["metadata"]["resourceVersion"].as_str() {
                if rv != cur.rev.to_string() {
                    return Err(ApiError::conflict(self.r.plural, self.r.group, name));
                }
            }
            let written = async {
                let mut patched = match sub {
                    Some("scale") => scale_of(&cur.obj),
                    _ => cur.obj.clone(),
                };
                match media.as_str() {
                    "application/json-patch+json" => patch::json_patch(&mut patched, &p)?,
                    "application/strategic-merge-patch+json" => patch::strategic_merge_patch(&mut patched, &p)?,
                    _ => patch::merge_patch(&mut patched, &p),
                }
                let new = self.guard_csr(sub, &cur.obj, Self::apply_sub(sub, &cur.obj, patched)?)?;
                self.write(name, sub, new, &cur).await
            };
            match written.await {
                Ok(out) => return Ok(self.reply_written(sub, &out)),
                // The cache's copy may be stale (a JSON patch's `test`, say, failed on
                // it): whatever went wrong, the store's copy decides.
                Err(_) if from_cache => continue,
                Err(e) if e.reason == "Conflict" && p["metadata"]["resourceVersion"].is_null() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::conflict(self.r.plural, self.r.group, name))
    }

    fn delete_options(&self, body: &Value) -> ApiResult<lifecycle::DeleteOptions> {
        let mut o = lifecycle::DeleteOptions::parse(body, |k| self.q.get(k).map(String::from))?;
        if o.precondition_rv.is_none() {
            o.precondition_rv = self.q.get("resourceVersion").filter(|s| !s.is_empty()).map(String::from);
        }
        Ok(o)
    }

    async fn delete(&self, name: &str, opts: &lifecycle::DeleteOptions) -> ApiResult<Response<Body>> {
        for _attempt in 0..5 {
            let cur = self.get(name).await?;
            let (rv, uid) = (cur.rev.to_string(), cur.obj["metadata"]["uid"].as_str().unwrap_or_default());
            if opts.precondition_rv.as_ref().is_some_and(|p| *p != rv)
                || opts.precondition_uid.as_ref().is_some_and(|p| p != uid)
            {
                return Err(ApiError::conflict(self.r.plural, self.r.group, name));
            }
            let now = object::parse_rfc3339(&object::now_rfc3339()).unwrap_or_default();
            match lifecycle::plan(self.r, &cur.obj, opts, now) {
                lifecycle::Deletion::Pending => return Ok(self.reply(200, &cur.obj)),
                lifecycle::Deletion::Mark(mut o) => {
                    if self.q.dry_run() {
                        return Ok(self.reply(200, &o));
                    }
                    match self.store.update(&cur.key, &convert::to_storage(self.r, &o), cur.rev).await? {
                        Ok(rev) => {
                            o["metadata"]["resourceVersion"] = json!(rev.to_string());
                            return Ok(self.reply(200, &o));
                        }
                        Err(_) => continue,
                    }
                }
                lifecycle::Deletion::Now => {
                    if self.q.dry_run() {
                        return Ok(self.reply(200, &cur.obj));
                    }
                    match self.store.delete(&cur.key, cur.rev).await? {
                        Ok(_) => {
                            self.deleted(&cur.obj).await;
                            return Ok(self.reply(200, &cur.obj));
                        }
                        Err(None) => return Err(self.not_found(name)),
                        Err(Some(_)) => continue,
                    }
                }
            }
        }
        Err(ApiError::conflict(self.r.plural, self.r.group, name))
    }

    async fn delete_collection(&self, opts: &lifecycle::DeleteOptions) -> ApiResult<Response<Body>> {
        let (labels, fields) = self.selectors()?;
        let page = self.store.list(&storage::prefix(self.r, self.ns), None, 0, 0).await?;
        let mut deleted = Vec::new();
        for s in page.items.into_iter().filter(|s| labels.matches(&s.obj) && fields.matches(&s.obj)) {
            let name = s.obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let ns = s.obj["metadata"]["namespace"].as_str().map(String::from);
            let h = Handler { ns: ns.as_deref(), ..*self };
            match h.delete(&name, opts).await {
                Ok(_) => deleted.push(convert::to_view(self.r, s.obj)),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let list = json!({"kind": format!("{}List", self.r.kind), "apiVersion": self.r.api_version(), "metadata": {"resourceVersion": page.revision.to_string()}, "items": deleted});
        Ok(json_response(200, &list, self.fmt))
    }

    /// pods/binding: assigns a pending pod to a node, once.
    async fn bind(&self, name: &str, binding: &Value) -> ApiResult<Response<Body>> {
        let node = binding["target"]["name"].as_str().filter(|n| !n.is_empty()).ok_or_else(|| {
            ApiError::invalid("Binding", "", name, vec![("target.name".into(), "Required value".into())])
        })?;
        for attempt in 0..5 {
            let cur = self.current(name, None, attempt == 0).await?;
            let conflict = |why: String| {
                ApiError::new(
                    409,
                    "Conflict",
                    format!("Operation cannot be fulfilled on pods/binding \"{name}\": {why}"),
                )
            };
            if cur.obj["metadata"]["deletionTimestamp"].is_string() {
                return Err(conflict(format!("pod {name} is being deleted, cannot be assigned to a host")));
            }
            if let Some(n) = cur.obj["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                return Err(conflict(format!("pod {name} is already assigned to node \"{n}\"")));
            }
            let mut o = cur.obj.clone();
            o["spec"]["nodeName"] = json!(node);
            let mut conds: Vec<Value> = o["status"]["conditions"].as_array().cloned().unwrap_or_default();
            conds.retain(|c| c["type"] != "PodScheduled");
            conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": object::now_rfc3339()}));
            o["status"]["conditions"] = json!(conds);
            match self.write_built(name, o, &cur).await {
                Ok(_) => return Ok(json_response(201, &success(201), self.fmt)),
                Err(e) if e.reason == "Conflict" => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::conflict("pods/binding", "", name))
    }

    async fn watch(&self) -> ApiResult<Response<Body>> {
        let (labels, fields) = self.selectors()?;
        let prefix = storage::prefix(self.r, self.ns);
        let rv = self.q.get("resourceVersion").filter(|s| !s.is_empty());
        let explicit_initial = self.q.flag("sendInitialEvents");
        let send_initial = explicit_initial || matches!(rv, None | Some("0"));
        let bookmarks = self.q.flag("allowWatchBookmarks");
        let timeout = self.q.int("timeoutSeconds")?.map(|s| Duration::from_secs(s.max(0) as u64));
        let from: i64 = match rv {
            Some(v) if v != "0" => {
                v.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?
            }
            _ => 0,
        };
        // The initial state, when asked for (or when no revision was given).
        let mut initial = Vec::new();
        let start = if send_initial && from == 0 {
            let keep = |o: &Value| labels.matches(o) && fields.matches(o);
            let at = if rv == Some("0") { watchcache::At::Any } else { watchcache::At::Latest };
            let q = watchcache::ListQuery { range: &prefix, after: None, at, limit: 0, keep: &keep };
            let rev;
            (rev, initial, _) = self.read_list(&q).await?;
            rev
        } else {
            from
        };
        let mut source = EventSource::open(self.store, self.caches, storage::prefix(self.r, None), start).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
        let r = self.r;
        let table = self.fmt.table;
        let include = self.q.get("includeObject").map(String::from);
        let everything = labels.is_empty() && fields.is_empty();
        tokio::spawn(async move {
            let mut out = Lines { r, table, headers: true, include };
            for o in &initial {
                if tx.send(out.line("ADDED", o)).await.is_err() {
                    return;
                }
            }
            if explicit_initial && bookmarks && tx.send(out.line("BOOKMARK", &bookmark(r, start, true))).await.is_err()
            {
                return;
            }
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            loop {
                // Also ends as soon as the client goes: a quiet watch would otherwise
                // hold its task and store watch until its next event.
                let next = tokio::select! {
                    _ = tx.closed() => return,
                    n = async {
                        match deadline {
                            Some(d) => tokio::time::timeout_at(d, source.next()).await.ok(),
                            None => Some(source.next().await),
                        }
                    } => match n {
                        Some(n) => n,
                        None => return,
                    },
                };
                let event = match next {
                    Next::Event(e) => e,
                    Next::Gone(compacted) => {
                        let e = ApiError::gone(format!("too old resource version: {start} ({compacted})"));
                        let _ = tx.send(out.line("ERROR", &e.to_status())).await;
                        return;
                    }
                    Next::End => return,
                };
                let line = match event {
                    watchcache::Event::Progress(rev) => {
                        if bookmarks && tx.send(out.line("BOOKMARK", &bookmark(r, rev, false))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    watchcache::Event::Change { key, rev, obj, prev, encoded } => {
                        // The cache may still be delivering changes the client's list
                        // already had; only later ones are news.
                        if !key.starts_with(&prefix) || rev <= start {
                            continue;
                        }
                        let matches = |o: &Option<std::sync::Arc<Value>>| {
                            o.as_deref().is_some_and(|o| labels.matches(o) && fields.matches(o))
                        };
                        // Without a selector, whether there was an object before is all
                        // that tells ADDED from MODIFIED: it is not decoded for that.
                        let prev_matched = match &prev {
                            None => false,
                            Some(_) if everything => true,
                            Some(p) => matches(&p.get()),
                        };
                        let (kind, obj) = match (prev_matched, matches(&obj)) {
                            (false, true) => ("ADDED", obj.expect("matched")),
                            (true, true) => ("MODIFIED", obj.expect("matched")),
                            (true, false) => {
                                // Deleted, or changed out of the selection: the last state
                                // that matched, at the revision of the change.
                                let Some(before) = prev.and_then(|p| p.get()) else { continue };
                                let mut o = Value::clone(&before);
                                o["metadata"]["resourceVersion"] = json!(rev.to_string());
                                ("DELETED", std::sync::Arc::new(o))
                            }
                            (false, false) => continue,
                        };
                        // Tables carry per-watch state (column headers on the first);
                        // everything else is the same bytes for every watcher.
                        match out.table {
                            true => out.line(kind, &obj),
                            false => encoded.get_or_make(r, kind, || out.line(kind, &obj)),
                        }
                    }
                };
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        });
        let body = StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b))),
        );
        let ct = if table { "application/json;as=Table;v=v1;g=meta.k8s.io" } else { "application/json" };
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header("Content-Type", ct)
            .header("Cache-Control", "no-cache, private")
            .body(BodyExt::boxed(body))
            .expect("a valid response"))
    }
}

fn bookmark(r: &Resource, rev: i64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": r.kind, "apiVersion": r.api_version(), "metadata": meta})
}

/// Watch events as JSON lines; Tables when asked, with column definitions only on the
/// first (as kube-apiserver does).
struct Lines {
    r: &'static Resource,
    table: bool,
    headers: bool,
    /// `includeObject` for Table rows.
    include: Option<String>,
}

impl Lines {
    fn line(&mut self, kind: &str, obj: &Value) -> Bytes {
        let event = kind != "ERROR" && kind != "BOOKMARK";
        let converted;
        let obj = if event && convert::needs_view(self.r, obj) {
            converted = convert::to_view(self.r, obj.clone());
            &converted
        } else {
            obj
        };
        let tabled;
        let obj = if self.table && event {
            let rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or_default();
            tabled = table::table(self.r, std::slice::from_ref(obj), rv, None, self.headers, self.include.as_deref());
            self.headers = false;
            &tabled
        } else {
            obj
        };
        // {"type":...,"object":...} written straight out, without building a Value of it.
        let mut b = Vec::with_capacity(1024);
        b.extend_from_slice(b"{\"type\":");
        serde_json::to_writer(&mut b, kind).expect("JSON strings serialize");
        b.extend_from_slice(b",\"object\":");
        serde_json::to_writer(&mut b, obj).expect("JSON values serialize");
        b.extend_from_slice(b"}\n");
        Bytes::from(b)
    }
}

enum Next {
    Event(watchcache::Event),
    /// The revision asked for was compacted (the compaction revision).
    Gone(i64),
    End,
}

/// Where a client watch's events come from: the resource's watch cache, or, for a
/// revision older than the cache's window, a store watch of its own.
enum EventSource {
    Cache {
        backlog: std::collections::VecDeque<watchcache::Event>,
        live: tokio::sync::broadcast::Receiver<watchcache::Event>,
    },
    Store {
        stream: Option<Box<etcd_client::WatchStream>>,
        pending: std::collections::VecDeque<watchcache::Event>,
    },
}

impl EventSource {
    async fn open(
        store: &Store,
        caches: &watchcache::WatchCaches,
        prefix: String,
        after: i64,
    ) -> ApiResult<EventSource> {
        match caches.subscribe(store, &prefix, after).await? {
            watchcache::Subscribe::Ok(s) => Ok(EventSource::Cache { backlog: s.backlog.into(), live: s.live }),
            watchcache::Subscribe::TooOld { .. } => {
                let stream = match store.watch(&prefix, after + 1).await {
                    Ok(s) => Some(Box::new(s)),
                    Err(e) if e.code == 410 => None,
                    Err(e) => return Err(e),
                };
                Ok(EventSource::Store { stream, pending: Default::default() })
            }
        }
    }

    async fn next(&mut self) -> Next {
        match self {
            EventSource::Cache { backlog, live } => {
                if let Some(e) = backlog.pop_front() {
                    return Next::Event(e);
                }
                match live.recv().await {
                    Ok(e) => Next::Event(e),
                    // Too slow to keep up, or the cache restarted: the client watches again.
                    Err(_) => Next::End,
                }
            }
            EventSource::Store { stream, pending } => loop {
                if let Some(e) = pending.pop_front() {
                    return Next::Event(e);
                }
                let Some(s) = stream.as_mut() else { return Next::Gone(0) };
                let resp = match s.message().await {
                    Ok(Some(r)) => r,
                    _ => return Next::End,
                };
                if resp.canceled() {
                    return Next::Gone(resp.compact_revision());
                }
                pending.extend(watchcache::events_of(&resp));
            },
        }
    }
}
