//! Health and metrics over HTTP, for localhost: `GET /health` (JSON; 200 when ok, 503 when
//! degraded) and `GET /metrics` (Prometheus). Anything else is 404 (405 for another method on
//! a known path). Request bodies are never read; headers are bounded in size and time, and each
//! connection in duration and number.
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info_span, warn};

use super::metrics::{self, Metrics};
use super::status::{HealthStatus, StatusReport};

/// The server's bounds.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// How long a client may take to send its request headers.
    pub header_timeout: Duration,
    /// How long one connection may stay open.
    pub connection_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 16,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
        }
    }
}

/// Headers larger than this are refused (hyper's smallest buffer).
const MAX_HEADER_BYTES: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("binding the health and metrics listener on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// A bound listener, ready to [`serve`](HttpServer::serve).
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
    limits: HttpLimits,
}

impl HttpServer {
    /// Binds `addr` (meant to be a loopback address such as `127.0.0.1:9187`).
    pub async fn bind(addr: SocketAddr, limits: HttpLimits) -> Result<Self, HttpError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| HttpError::Bind { addr, source })?;
        Ok(HttpServer { listener, limits })
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        status: watch::Receiver<StatusReport>,
        metrics: Metrics,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        while tasks.try_join_next().is_some() {}
                        if tasks.len() >= self.limits.max_connections {
                            warn!(%peer, "health and metrics listener busy: connection dropped");
                            continue;
                        }
                        let (status, metrics) = (status.clone(), metrics.clone());
                        let service = service_fn(move |req| {
                            let response = route(&req, &status, &metrics);
                            async move { Ok::<_, Infallible>(response) }
                        });
                        let conn = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(self.limits.header_timeout)
                            .max_buf_size(MAX_HEADER_BYTES)
                            .keep_alive(false)
                            .serve_connection(TokioIo::new(stream), service);
                        let limit = self.limits.connection_timeout;
                        tasks.spawn(
                            async move {
                                match tokio::time::timeout(limit, conn).await {
                                    Ok(Ok(())) => {}
                                    Ok(Err(error)) => debug!(%error, "http connection"),
                                    Err(_) => debug!("http connection timed out"),
                                }
                            }
                            .instrument(info_span!("http", %peer)),
                        );
                    }
                    Err(error) => {
                        warn!(%error, "accepting an http connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        tasks.shutdown().await;
    }
}

type Response = hyper::Response<Full<Bytes>>;

fn route<B>(req: &Request<B>, status: &watch::Receiver<StatusReport>, metrics: &Metrics) -> Response {
    let path = req.uri().path();
    if !matches!(path, "/health" | "/metrics") {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /health or /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "use GET\n");
        response.headers_mut().insert("allow", HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let report = status.borrow().clone().stamp(super::unix_now());
    if path == "/metrics" {
        return reply(StatusCode::OK, metrics::CONTENT_TYPE, metrics.render(&report));
    }
    let code = match report.health.status {
        HealthStatus::Ok => StatusCode::OK,
        HealthStatus::Degraded => StatusCode::SERVICE_UNAVAILABLE,
    };
    reply(code, "application/json", format!("{}\n", health_json(&report)))
}

/// The `/health` body: the verdict, its reasons and a short summary.
pub fn health_json(report: &StatusReport) -> serde_json::Value {
    serde_json::json!({
        "status": report.health.status,
        "reasons": report.health.reasons,
        "version": report.version,
        "address": report.address,
        "registration": report.registration.state.name(),
        "agreements": report.agreements.len(),
        "chain": {
            "connected": report.chain.connected,
            "head_block": report.chain.head_block,
            "processed_block": report.chain.processed_block,
            "lag_blocks": report.chain.lag_blocks,
            "last_sync": report.chain.last_sync,
        },
        "transactions_in_flight": report.transactions_in_flight.len(),
        "uptime_secs": report.uptime_secs,
    })
}

fn reply(code: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response {
    let mut response = hyper::Response::new(Full::new(body.into()));
    *response.status_mut() = code;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
