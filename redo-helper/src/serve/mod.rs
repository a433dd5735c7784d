//! The helper's loopback HTTP listener: `/status` (JSON) and `/metrics` (Prometheus text).

use crate::service::SharedStatus;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::net::TcpListener;

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    req: Request<Incoming>,
    status: SharedStatus,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET {
        return Ok(response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is supported\n".into(),
        ));
    }
    let snapshot = status.snapshot();
    Ok(match req.uri().path() {
        "/status" => match serde_json::to_string_pretty(&snapshot) {
            Ok(json) => response(StatusCode::OK, "application/json", json + "\n"),
            Err(e) => response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            ),
        },
        "/metrics" => response(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            snapshot.prometheus(),
        ),
        _ => response(
            StatusCode::NOT_FOUND,
            "text/plain",
            "unknown path; try /status or /metrics\n".into(),
        ),
    })
}

/// Binds the listener (so the caller learns about a busy port at once) and serves forever.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        log::warn!(
            "listening on non-loopback address {addr}: the status and page API has no authentication"
        );
    }
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, status: SharedStatus) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("http accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = status.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, status.clone()));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                log::debug!("http connection: {e}");
            }
        });
    }
}
