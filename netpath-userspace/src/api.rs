//! The versioned JSON API on a root-only Unix socket. `curl --unix-socket
//! /run/netpath/default/api.sock http://localhost/v1/status` works.

use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use anyhow::{bail, Context as _, Result};
use axum::{
    body::Bytes,
    extract::{Path as UrlPath, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};

use crate::{
    agent::{Agent, AgentError},
    model::{
        ApiErrorBody, ContainerRequest, DefaultRequest, ErrorReason, GcRequest, MappingRequest, PolicyView,
        RuleRequest, Settings, StatsView, API_PREFIX,
    },
    policy::Rule,
};

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status = match &self {
            AgentError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AgentError::NotFound(_) => StatusCode::NOT_FOUND,
            AgentError::Conflict(_) => StatusCode::CONFLICT,
            AgentError::Refused { reason, .. } => match reason {
                ErrorReason::NotFound => StatusCode::NOT_FOUND,
                ErrorReason::NetnsMissing => StatusCode::BAD_REQUEST,
                ErrorReason::AddressInUse
                | ErrorReason::AddressPoolExhausted
                | ErrorReason::MacInUse
                | ErrorReason::PortInUse
                | ErrorReason::NetnsInUse
                | ErrorReason::NameInUse
                | ErrorReason::InstanceFull => StatusCode::CONFLICT,
            },
            AgentError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(ApiErrorBody { error: self.to_string(), reason: self.reason() })).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, AgentError>;

pub fn router(agent: Arc<Agent>) -> Router {
    let v1 = Router::new()
        .route("/status", get(status))
        .route("/containers", get(list_containers).post(add_container))
        .route("/containers/{name}", get(get_container).delete(del_container))
        .route("/containers/{name}/check", get(check_container))
        // Not under /containers/: a container may be named "gc".
        .route("/gc", axum::routing::post(gc_containers))
        .route("/network", get(network))
        .route("/mappings", get(list_mappings).post(add_mapping))
        .route("/mappings/unmap", axum::routing::post(del_mapping))
        .route("/conntrack", get(list_flows).delete(flush_flows))
        .route("/policies", get(list_policies).post(add_rule))
        .route("/policies/remove", axum::routing::post(remove_rule))
        .route("/policies/{name}", get(get_policy))
        .route("/policies/{name}/default", axum::routing::put(set_default))
        .route("/settings", get(get_settings).put(put_settings))
        .route("/reload", axum::routing::post(reload))
        .route("/stats", get(stats))
        .route("/monitor", get(monitor))
        .route_layer(axum::middleware::from_fn_with_state(agent.clone(), crate::metrics::track));
    Router::new()
        .nest(API_PREFIX, v1)
        .route("/metrics", get(metrics))
        .fallback(|| async { AgentError::NotFound(format!("no such API route (this agent serves {API_PREFIX}/...)")) })
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(agent)
}

/// Largest request body: room for a bulk request that fills the mapping
/// table (131072 specs of up to ~45 bytes, JSON-quoted) in one atomic call.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// Longest error text kept from a rejection's plain-text body.
const MAX_ERROR_TEXT: usize = 4096;

/// Every error answer is `{"error": "..."}`, also the ones axum gives before
/// a handler runs (a body that cannot be read or is too large, a malformed
/// path or query, a method the route does not have): their plain text (or
/// the status's reason) becomes the message.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let error =
        if text.is_empty() { status.canonical_reason().unwrap_or("request refused").to_lowercase() } else { text };
    let mut out = (status, Json(ApiErrorBody { error, reason: None })).into_response();
    // Keep what the protocol needs (e.g. `Allow` on 405), not the old body's
    // type and length.
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Prometheus metrics (also on `metrics_address`, see [`metrics_router`]).
async fn metrics(State(agent): State<Arc<Agent>>) -> Result<Response, AgentError> {
    let text = crate::metrics::render(&agent).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// `/metrics` alone, for the TCP address `metrics_address`: nothing else
/// of the API is served beyond the root-only socket.
pub fn metrics_router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { AgentError::NotFound("only /metrics is served here".into()) })
        .with_state(agent)
}

/// Binds `metrics_address` (before the agent reports ready: a bad address
/// stops the start).
pub async fn bind_metrics(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding metrics_address {addr}"))?;
    tracing::info!("metrics on http://{addr}/metrics");
    Ok(listener)
}

/// A client of `metrics_address` gets this long to send its request's
/// head: the address may face a network, and a client that never finishes
/// must not hold a connection (and the agent's file descriptors) forever.
pub const METRICS_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Most connections `metrics_address` holds at once; more wait in the
/// listen backlog.
const METRICS_MAX_CONNECTIONS: usize = 256;

/// Serves [`metrics_router`] on `listener` until `shutdown` completes.
pub async fn serve_metrics(
    agent: Arc<Agent>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let service = hyper_util::service::TowerToHyperService::new(metrics_router(agent));
    let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            slot = Arc::clone(&slots).acquire_owned() => slot.context("metrics connection slots")?,
        };
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("metrics_address: accept: {e}");
                    continue;
                }
            },
        };
        let service = service.clone();
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(METRICS_HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!("metrics connection: {e}");
            }
            drop(slot);
        });
    }
}

async fn reload(State(agent): State<Arc<Agent>>) -> ApiResult<crate::agent::ReloadReport> {
    Ok(Json(agent.reload_config().await?))
}

async fn status(State(agent): State<Arc<Agent>>) -> ApiResult<crate::model::Status> {
    Ok(Json(agent.status().await?))
}

async fn list_containers(State(agent): State<Arc<Agent>>) -> ApiResult<Vec<crate::model::Container>> {
    Ok(Json(agent.containers().await?))
}

async fn get_container(
    State(agent): State<Arc<Agent>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<crate::model::ContainerStatus> {
    Ok(Json(agent.container(&name).await?))
}

async fn add_container(
    State(agent): State<Arc<Agent>>,
    body: Bytes,
) -> Result<(StatusCode, Json<crate::model::Container>), AgentError> {
    let req: ContainerRequest = parse_body(&body, "container request")?;
    Ok((StatusCode::CREATED, Json(agent.add_container(req).await?)))
}

async fn del_container(
    State(agent): State<Arc<Agent>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<crate::model::Container> {
    Ok(Json(agent.del_container(&name).await?))
}

async fn gc_containers(State(agent): State<Arc<Agent>>, body: Bytes) -> ApiResult<Vec<crate::model::Container>> {
    let req: GcRequest = parse_body(&body, "gc request")?;
    Ok(Json(agent.gc_containers(req).await?))
}

async fn check_container(
    State(agent): State<Arc<Agent>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<crate::model::CheckReport> {
    Ok(Json(agent.check_container(&name).await?))
}

async fn network(State(agent): State<Arc<Agent>>) -> ApiResult<crate::model::NetworkInfo> {
    Ok(Json(agent.network().await))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, AgentError> {
    serde_json::from_slice(body).map_err(|e| AgentError::BadRequest(format!("invalid {what}: {e}")))
}

async fn list_mappings(State(agent): State<Arc<Agent>>) -> ApiResult<Vec<crate::model::Mapping>> {
    Ok(Json(agent.mappings().await?))
}

async fn add_mapping(
    State(agent): State<Arc<Agent>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Vec<crate::model::Mapping>>), AgentError> {
    let req: MappingRequest = parse_body(&body, "mapping request")?;
    let specs = req.specs().map_err(AgentError::BadRequest)?;
    Ok((StatusCode::CREATED, Json(agent.publish_all(&specs).await?)))
}

async fn del_mapping(State(agent): State<Arc<Agent>>, body: Bytes) -> ApiResult<Vec<crate::model::Mapping>> {
    let req: MappingRequest = parse_body(&body, "mapping request")?;
    let specs = req.specs().map_err(AgentError::BadRequest)?;
    Ok(Json(agent.unpublish_all(&specs).await?))
}

async fn list_flows(State(agent): State<Arc<Agent>>) -> ApiResult<Vec<crate::model::Flow>> {
    Ok(Json(agent.flows().await?))
}

async fn flush_flows(State(agent): State<Arc<Agent>>) -> ApiResult<crate::model::FlushResult> {
    Ok(Json(crate::model::FlushResult { flows: agent.flush_flows().await? }))
}

async fn list_policies(State(agent): State<Arc<Agent>>) -> ApiResult<Vec<PolicyView>> {
    Ok(Json(agent.policies().await?))
}

async fn get_policy(State(agent): State<Arc<Agent>>, UrlPath(name): UrlPath<String>) -> ApiResult<PolicyView> {
    Ok(Json(agent.policy(&name).await?))
}

/// One rule (answered with the rule), or `{"rules": [...]}` added all or
/// nothing (answered with the list).
async fn add_rule(State(agent): State<Arc<Agent>>, body: Bytes) -> Result<Response, AgentError> {
    let bulk = serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v.get("rules").is_some());
    if bulk {
        let req: crate::model::RulesRequest = parse_body(&body, "policy rules")?;
        return Ok((StatusCode::CREATED, Json(agent.add_rules(&req.rules).await?)).into_response());
    }
    let req: RuleRequest = parse_body(&body, "policy rule")?;
    Ok((StatusCode::CREATED, Json(agent.add_rule(req).await?)).into_response())
}

async fn remove_rule(State(agent): State<Arc<Agent>>, body: Bytes) -> ApiResult<Rule> {
    let req: RuleRequest = parse_body(&body, "policy rule")?;
    Ok(Json(agent.remove_rule(req).await?))
}

async fn set_default(
    State(agent): State<Arc<Agent>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult<PolicyView> {
    let req: DefaultRequest = parse_body(&body, "default policy")?;
    Ok(Json(agent.set_default(&name, req.direction, req.action).await?))
}

async fn get_settings(State(agent): State<Arc<Agent>>) -> ApiResult<Settings> {
    Ok(Json(agent.settings().await))
}

async fn put_settings(State(agent): State<Arc<Agent>>, body: Bytes) -> ApiResult<Settings> {
    let req: Settings = parse_body(&body, "settings")?;
    Ok(Json(agent.set_settings(req).await?))
}

#[derive(serde::Deserialize)]
struct StatsQuery {
    container: Option<String>,
}

async fn stats(State(agent): State<Arc<Agent>>, Query(q): Query<StatsQuery>) -> ApiResult<StatsView> {
    Ok(Json(agent.stats(q.container.as_deref()).await?))
}

#[derive(serde::Deserialize)]
struct MonitorQuery {
    container: Option<String>,
    #[serde(default)]
    flows: bool,
}

/// Streams events as newline-delimited JSON until the client goes away.
async fn monitor(State(agent): State<Arc<Agent>>, Query(mut q): Query<MonitorQuery>) -> Result<Response, AgentError> {
    if let Some(name) = &q.container {
        // 404 for an unknown container; events carry its own name.
        q.container = Some(agent.policy(name).await?.container);
    }
    let (rx, watch) = agent.subscribe(q.flows).await?;
    let state = (rx, watch, agent, q);
    let stream = futures::stream::unfold(state, |(mut rx, watch, agent, q)| async move {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    let ev = agent.describe(&e);
                    if (ev.kind == "flow" && !q.flows)
                        || q.container.as_ref().is_some_and(|c| ev.container.as_ref() != Some(c))
                    {
                        continue;
                    }
                    let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                    line.push(b'\n');
                    return Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), (rx, watch, agent, q)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("monitor fell behind, {n} events lost");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(axum::body::Body::from_stream(stream))
        .map_err(|e| AgentError::Internal(e.into()))
}

/// Binds the API socket (0600: root only). Refuses to steal the socket of
/// a live agent. Connections queue from here on, before [`serve`] runs:
/// the agent tells its service manager it is ready in between.
pub async fn bind(socket: &Path) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        prepare_socket_dir(dir)?;
    }
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            bail!("another agent is serving {}", socket.display());
        }
        std::fs::remove_file(socket).with_context(|| format!("removing stale socket {}", socket.display()))?;
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = tokio::net::UnixListener::bind(socket);
    nix::sys::stat::umask(old);
    let listener = listener.with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", socket.display()))?;
    tracing::info!("API listening on {}", socket.display());
    Ok(listener)
}

/// Serves the API on `listener` (bound to `socket` by [`bind`]) until
/// `shutdown` completes, then removes the socket.
pub async fn serve(
    agent: Arc<Agent>,
    listener: tokio::net::UnixListener,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, router(agent)).with_graceful_shutdown(shutdown).await.context("serving the API")?;
    let _ = std::fs::remove_file(socket);
    Ok(())
}

/// Creates the socket's directory if it is missing, root only (0700). A
/// directory that exists keeps its mode: it may be shared (`/run`, or one
/// the operator made), and the socket's own 0600 already keeps others out.
fn prepare_socket_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        // Ours: 0700 whatever the umask left.
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to root", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating the socket directory {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn socket_dir_is_restricted_only_when_the_agent_creates_it() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_socket_dir(&shared).unwrap();
        assert_eq!(mode(&shared), 0o755, "an existing directory keeps its mode");
        let own = shared.join("netpath").join("lab");
        prepare_socket_dir(&own).unwrap();
        assert_eq!(mode(&own), 0o700, "the agent's own directory is root only");
        assert_eq!(mode(&shared), 0o755);
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = format!("{:#}", prepare_socket_dir(&file).unwrap_err());
        assert!(err.contains("socket directory"), "{err}");
    }
}
