//! Load shedding at the door: at most `limit` requests of the limited RPCs are processed
//! at once; one more is answered RESOURCE_EXHAUSTED at once, before its body is even
//! read, instead of queueing into a timeout. A fast "no" lets the client back off or go
//! elsewhere, keeps latency normal for the requests that are admitted, bounds memory to
//! `limit` requests, and recovers the moment load drops (nothing queued to drain).
//!
//! The same layer maps tonic's "message too large" (OUT_OF_RANGE) to RESOURCE_EXHAUSTED
//! with the server's limit in the message, as the gRPC spec asks of servers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::codegen::http;
use tonic::{Code, Status};

/// Called with the RPC path of each request refused (for metrics).
pub type OnShed = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    limit: usize,
    paths: Arc<[&'static str]>,
    on_shed: OnShed,
}

impl Admission {
    /// Limits the RPCs at `paths` (e.g. `/shardrank.v1.Shard/Rank`) to `limit` at once;
    /// health, reflection and info calls are never limited.
    pub fn new(limit: usize, paths: &[&'static str], on_shed: OnShed) -> Self {
        Admission {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            paths: paths.into(),
            on_shed,
        }
    }

    /// Requests being processed now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.permits.available_permits()
    }

    /// Admits one request of `path` (a limited RPC, or a message of a stream whose
    /// messages are requests): its permit, held while it is processed, or the
    /// RESOURCE_EXHAUSTED answer (counted by `on_shed`).
    pub fn try_admit(&self, path: &str) -> Result<OwnedSemaphorePermit, Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            (self.on_shed)(path);
            Status::resource_exhausted(format!(
                "overloaded: {} requests already in flight (the server's --max-in-flight); retry later or elsewhere",
                self.limit
            ))
        })
    }
}

impl<S> tower::Layer<S> for Admission {
    type Service = AdmissionService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            admission: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AdmissionService<S> {
    inner: S,
    admission: Admission,
}

/// A tonic "message too large" answer, rewritten as RESOURCE_EXHAUSTED.
fn remap_too_large<B: Default>(resp: http::Response<B>) -> http::Response<B> {
    let too_large = resp
        .extensions()
        .get::<Status>()
        .filter(|s| s.code() == Code::OutOfRange && s.message().contains("length too large"))
        .map(|s| s.message().to_string());
    match too_large {
        Some(msg) => Status::resource_exhausted(format!(
            "message too large for this server: {msg} (the server's --max-message-bytes)"
        ))
        .into_http(),
        None => resp,
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for AdmissionService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let permit = if self.admission.paths.contains(&path) {
            match self.admission.try_admit(path) {
                Ok(p) => Some(p),
                Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
            }
        } else {
            None
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            drop(permit);
            res.map(remap_too_large)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{Layer, Service, ServiceExt};

    /// An inner service that waits for the gate to open before answering.
    #[derive(Clone)]
    struct Gate(Arc<tokio::sync::Semaphore>);

    impl tower::Service<http::Request<()>> for Gate {
        type Response = http::Response<String>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let gate = self.0.clone();
            Box::pin(async move {
                let _open = gate.acquire().await;
                Ok(http::Response::new("ok".to_string()))
            })
        }
    }

    fn req(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn grpc_status(r: &http::Response<String>) -> Option<&str> {
        r.headers().get("grpc-status").map(|v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn beyond_the_limit_is_refused_at_once_and_recovers() {
        let shed = Arc::new(AtomicUsize::new(0));
        let s2 = shed.clone();
        let adm = Admission::new(
            2,
            &["/x.S/Rank"],
            Arc::new(move |_| {
                s2.fetch_add(1, Ordering::Relaxed);
            }),
        );
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut svc = adm.layer(Gate(gate.clone()));
        let a = tokio::spawn(svc.clone().oneshot(req("/x.S/Rank")));
        let b = tokio::spawn(svc.clone().oneshot(req("/x.S/Rank")));
        while adm.in_flight() < 2 {
            tokio::task::yield_now().await;
        }
        let refused = svc
            .ready()
            .await
            .unwrap()
            .call(req("/x.S/Rank"))
            .await
            .unwrap();
        assert_eq!(grpc_status(&refused), Some("8"), "RESOURCE_EXHAUSTED");
        assert_eq!(shed.load(Ordering::Relaxed), 1);
        // Other RPCs (health, info) are never limited.
        let other = tokio::spawn(svc.clone().oneshot(req("/grpc.health.v1.Health/Check")));
        gate.add_permits(3);
        for h in [a, b, other] {
            let r = h.await.unwrap().unwrap();
            assert_eq!(grpc_status(&r), None);
        }
        assert_eq!(adm.in_flight(), 0, "permits come back");
        let c = tokio::spawn(svc.clone().oneshot(req("/x.S/Rank")));
        gate.add_permits(1);
        assert_eq!(grpc_status(&c.await.unwrap().unwrap()), None);
    }

    #[test]
    fn too_large_becomes_resource_exhausted() {
        let r: http::Response<String> = Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
        )
        .into_http();
        let r = remap_too_large(r);
        assert_eq!(grpc_status(&r), Some("8"));
        let other: http::Response<String> = Status::out_of_range("something else").into_http();
        assert_eq!(grpc_status(&remap_too_large(other)), Some("11"));
    }
}
