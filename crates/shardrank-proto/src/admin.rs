//! The admin HTTP port every server has beside its gRPC port: `GET /metrics`
//! (Prometheus text format) and `GET /healthz` (200 when serving, 503 otherwise),
//! served with hyper. Kept apart from gRPC so that scrapers and probes never queue
//! behind ranking traffic.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the admin port answers from.
pub struct Admin {
    pub registry: Registry,
    pub serving: AtomicBool,
}

/// Parses `--admin-listen`: an address, `none`, or absent (the gRPC port + 1000 on the
/// same host, so that several servers on one machine never collide).
pub fn admin_addr(flag: Option<&str>, grpc: SocketAddr) -> Result<Option<SocketAddr>, String> {
    match flag {
        Some("none") => Ok(None),
        Some(a) => a
            .parse()
            .map(Some)
            .map_err(|e| format!("--admin-listen {a:?}: {e}")),
        None => {
            let port = if grpc.port() == 0 {
                Some(0)
            } else {
                grpc.port().checked_add(1000)
            };
            let port = port.ok_or_else(|| {
                format!(
                    "--listen port {} + 1000 is not a port; give --admin-listen",
                    grpc.port()
                )
            })?;
            Ok(Some(SocketAddr::new(grpc.ip(), port)))
        }
    }
}

fn respond(admin: &Admin, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, ctype: &'static str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts")
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &admin.registry) {
                Ok(()) => text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("encoding metrics: {e}\n"),
                ),
            }
        }
        (&Method::GET, "/healthz") => {
            if admin.serving.load(Ordering::Relaxed) {
                text(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not serving\n".into(),
                )
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /healthz\n".into(),
        ),
    }
}

/// Binds `addr` (errors before anything is served) and serves in the background.
pub async fn serve(addr: SocketAddr, admin: Arc<Admin>) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--admin-listen {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let resp = respond(&admin, &req);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

/// GET `path` from an admin port: its status and body. For supervisors and tests (up
/// waits on the coordinator's /metrics); a plain HTTP/1.1 request, closed after.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = fetch
        .await
        .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET http://{addr}{path}: no complete HTTP response"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET http://{addr}{path}: bad status line"))?;
    Ok((status, body.to_string()))
}

/// A gRPC code as the label value Prometheus users expect (OK, INVALID_ARGUMENT, ...).
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_labels_are_the_grpc_names() {
        assert_eq!(code_label(tonic::Code::Ok), "OK");
        assert_eq!(
            code_label(tonic::Code::FailedPrecondition),
            "FAILED_PRECONDITION"
        );
        assert_eq!(
            code_label(tonic::Code::ResourceExhausted),
            "RESOURCE_EXHAUSTED"
        );
    }

    #[test]
    fn admin_address_defaults_beside_the_grpc_port() {
        let grpc: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        assert_eq!(
            admin_addr(None, grpc).unwrap(),
            Some("127.0.0.1:8001".parse().unwrap())
        );
        assert_eq!(admin_addr(Some("none"), grpc).unwrap(), None);
        assert_eq!(
            admin_addr(Some("0.0.0.0:9090"), grpc).unwrap(),
            Some("0.0.0.0:9090".parse().unwrap())
        );
        assert!(admin_addr(Some("nope"), grpc)
            .unwrap_err()
            .contains("--admin-listen"));
        assert!(admin_addr(None, "127.0.0.1:65000".parse().unwrap()).is_err());
    }
}
