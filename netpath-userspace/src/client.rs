//! A small client for the agent's API (HTTP/1.1 over the Unix socket).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Bytes, Method, Request};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};

use crate::model::{ApiErrorBody, ErrorReason, API_PREFIX};

/// The agent refused a request; callers that act on the cause downcast
/// the `anyhow::Error` to this.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub reason: Option<ErrorReason>,
}

/// The agent's socket could not be reached (not running, wrong socket, or
/// no permission).
#[derive(Debug, thiserror::Error)]
#[error("cannot reach netpathd at {}{} (is the agent running, and are you root?)", socket.display(), waited_text(*waited))]
pub struct Unreachable {
    pub socket: PathBuf,
    /// How long the client waited for the agent to come up first.
    pub waited: Duration,
    #[source]
    pub source: std::io::Error,
}

fn waited_text(waited: Duration) -> String {
    if waited.is_zero() {
        String::new()
    } else {
        format!(" after waiting {:.1} s for it", waited.as_secs_f64())
    }
}

/// Does connecting fail because no agent serves the socket yet (none
/// bound, or a stale one left by an agent that is restarting)? Other
/// failures (permission) do not go away by waiting.
fn agent_not_up(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused)
}

/// A client of the agent's API. Paths are relative to the API version
/// (`/status`); the client puts [`API_PREFIX`] in front.
pub struct Client {
    socket: PathBuf,
    /// Put in front of every path: [`API_PREFIX`] for netpathd.
    prefix: String,
    /// How long a request waits for an agent that is not up (see
    /// [`Client::waiting_for_agent`]).
    agent_wait: Duration,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client::with_prefix(socket, API_PREFIX)
    }

    /// A client of another HTTP-over-Unix-socket API (dockerd's, `/v1.41`).
    pub fn with_prefix(socket: &Path, prefix: &str) -> Client {
        Client { socket: socket.to_path_buf(), prefix: prefix.to_string(), agent_wait: Duration::ZERO }
    }

    /// A client whose requests wait up to `wait` for an agent that is not
    /// up (its socket missing or refusing: the agent starting, or
    /// restarting), connecting again every so often. Only the connection
    /// is retried: nothing was sent before it succeeds, so a request is
    /// never made twice.
    pub fn waiting_for_agent(mut self, wait: Duration) -> Client {
        self.agent_wait = wait;
        self
    }

    /// Connects to the agent's socket, waiting as [`Client::waiting_for_agent`] says.
    async fn connect(&self) -> Result<tokio::net::UnixStream, Unreachable> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            match tokio::net::UnixStream::connect(&self.socket).await {
                Ok(stream) => return Ok(stream),
                Err(e) if agent_not_up(&e) && start.elapsed() + pause <= self.agent_wait => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
                Err(source) => {
                    let waited = if self.agent_wait.is_zero() { Duration::ZERO } else { start.elapsed() };
                    return Err(Unreachable { socket: self.socket.clone(), waited, source });
                }
            }
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::DELETE, path, None::<&()>).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call(Method::PUT, path, Some(body)).await
    }

    /// GETs a streaming endpoint and hands every line to `on_line` until
    /// the agent closes the stream.
    pub async fn stream_lines(&self, path: &str, mut on_line: impl FnMut(&str) -> Result<()>) -> Result<()> {
        let resp = self.send(Method::GET, path, None::<&()>).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            bail!("{}", error_text(&bytes));
        }
        let mut pending: Vec<u8> = vec![];
        while let Some(frame) = body.frame().await {
            let frame = frame.context("reading the event stream")?;
            if let Some(data) = frame.data_ref() {
                pending.extend_from_slice(data);
                while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=pos).collect();
                    on_line(String::from_utf8_lossy(&line[..line.len() - 1]).as_ref())?;
                }
            }
        }
        Ok(())
    }

    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let stream = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let body = match body {
            Some(b) => Full::new(Bytes::from(serde_json::to_vec(b)?)),
            None => Full::new(Bytes::new()),
        };
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header("host", "netpathd")
            .header("content-type", "application/json")
            .body(body)?;
        sender.send_request(req).await.context("sending the request to netpathd")
    }

    async fn call<B: Serialize, T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&B>) -> Result<T> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let (message, reason) = match serde_json::from_slice::<ApiErrorBody>(&bytes) {
                Ok(b) => (b.error, b.reason),
                Err(_) => (String::from_utf8_lossy(&bytes).into_owned(), None),
            };
            return Err(ApiError { status: status.as_u16(), message, reason }.into());
        }
        serde_json::from_slice(&bytes).map_err(|e| anyhow!("unexpected answer from netpathd: {e}"))
    }
}

fn error_text(bytes: &[u8]) -> String {
    serde_json::from_slice::<ApiErrorBody>(bytes)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}
