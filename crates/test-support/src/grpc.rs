//! A real gRPC app and client for end-to-end tests: tonic's server and client machinery over
//! hyper, with hand-written prost messages (no protoc).
//!
//! The app ([`grpc_app`]) answers every method of every service with an [`Answer`] naming
//! itself and the method path and `:authority` it saw. A call's metadata steers it:
//! `x-fail-every: n` fails every n-th call to the app `UNAVAILABLE`, `x-delay-ms: ms` delays
//! the answer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::metadata::{MetadataKey, MetadataValue};

/// The request of every test method.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ask {
    /// Free text.
    #[prost(string, tag = "1")]
    pub text: String,
}

/// The answer of every test method.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Answer {
    /// Which app answered.
    #[prost(string, tag = "1")]
    pub app: String,
    /// The method path it saw (`/package.Service/Method`).
    #[prost(string, tag = "2")]
    pub path: String,
    /// The `:authority` it saw.
    #[prost(string, tag = "3")]
    pub authority: String,
}

/// One unary call, served by tonic's server machinery.
struct Unary {
    answer: Answer,
    calls: Arc<AtomicU64>,
}

impl tonic::server::UnaryService<Ask> for Unary {
    type Response = Answer;
    type Future =
        Pin<Box<dyn Future<Output = Result<tonic::Response<Answer>, tonic::Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<Ask>) -> Self::Future {
        let number = |key: &str| {
            request
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let fail_every = number("x-fail-every");
        let delay = number("x-delay-ms");
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = self.answer.clone();
        Box::pin(async move {
            if let Some(ms) = delay {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if fail_every.is_some_and(|k| n.is_multiple_of(k)) {
                return Err(tonic::Status::unavailable("flaky by request"));
            }
            Ok(tonic::Response::new(answer))
        })
    }
}

/// A running [`grpc_app`]: where it listens and how many calls it received.
#[derive(Clone, Debug)]
pub struct GrpcApp {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Calls received (failed ones included).
    pub calls: Arc<AtomicU64>,
}

/// Starts a gRPC server (h2c) on a free loopback port, answering every method of every service
/// as the app `name`. It runs on the calling runtime until the test ends.
pub async fn grpc_app(name: &str) -> GrpcApp {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a gRPC app");
    let port = listener.local_addr().expect("its address").port();
    let calls = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&calls);
    let name = name.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let calls = Arc::clone(&calls);
            let name = name.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let answer = Answer {
                            app: name.clone(),
                            path: req.uri().path().to_string(),
                            authority: req
                                .uri()
                                .authority()
                                .map(|a| a.to_string())
                                .unwrap_or_default(),
                        };
                        let calls = Arc::clone(&calls);
                        async move {
                            let codec = tonic_prost::ProstCodec::<Answer, Ask>::default();
                            let mut grpc = tonic::server::Grpc::new(codec);
                            Ok::<_, Infallible>(grpc.unary(Unary { answer, calls }, req).await)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    GrpcApp {
        port,
        calls: counter,
    }
}

/// A gRPC channel to 127.0.0.1:`port` whose calls carry `:authority` `authority` (e.g. an
/// Envoy's egress port and `<service>:<port>`: the explicit-mode way for a gRPC client to
/// reach a backend). Lazy: it connects (and reconnects) on use, so it may be made before
/// anything listens. Must be made inside a Tokio runtime.
pub fn channel(port: u16, authority: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("an endpoint URI")
        .origin(
            format!("http://{authority}")
                .parse()
                .unwrap_or_else(|e| panic!("authority {authority}: {e}")),
        )
        .connect_lazy()
}

/// One unary call of `path` (`/package.Service/Method`) on `channel` with `metadata`, and
/// `deadline` sent as `grpc-timeout` if given: the answer, or the call's status.
pub async fn call(
    channel: &tonic::transport::Channel,
    path: &str,
    metadata: &[(&str, &str)],
    deadline: Option<Duration>,
) -> Result<Answer, tonic::Status> {
    let mut client = tonic::client::Grpc::new(channel.clone());
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(Ask {
        text: "hello".to_string(),
    });
    for (k, v) in metadata {
        let key = MetadataKey::from_bytes(k.as_bytes())
            .unwrap_or_else(|e| panic!("metadata key {k}: {e}"));
        let value =
            MetadataValue::try_from(*v).unwrap_or_else(|e| panic!("metadata value {v}: {e}"));
        request.metadata_mut().insert(key, value);
    }
    if let Some(d) = deadline {
        request.set_timeout(d);
    }
    let path = http::uri::PathAndQuery::try_from(path)
        .unwrap_or_else(|e| panic!("method path {path}: {e}"));
    client
        .unary(
            request,
            path,
            tonic_prost::ProstCodec::<Ask, Answer>::default(),
        )
        .await
        .map(tonic::Response::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_app_answers_with_its_name_and_the_method_it_saw() {
        let app = grpc_app("alpha").await;
        let channel = channel(app.port, "rpc.local:50051");
        let answer = call(&channel, "/weft.Colors/Get", &[], None).await.unwrap();
        assert_eq!(
            (
                answer.app.as_str(),
                answer.path.as_str(),
                answer.authority.as_str()
            ),
            ("alpha", "/weft.Colors/Get", "rpc.local:50051")
        );
    }

    #[tokio::test]
    async fn fail_every_makes_every_nth_call_unavailable() {
        let app = grpc_app("flaky").await;
        let channel = channel(app.port, "rpc.local");
        let codes: Vec<_> = call_codes(&channel, 4).await;
        assert_eq!(
            codes,
            [
                tonic::Code::Ok,
                tonic::Code::Unavailable,
                tonic::Code::Ok,
                tonic::Code::Unavailable
            ]
        );
        assert_eq!(app.calls.load(Ordering::SeqCst), 4);
    }

    async fn call_codes(channel: &tonic::transport::Channel, n: usize) -> Vec<tonic::Code> {
        let mut codes = Vec::new();
        for _ in 0..n {
            let result = call(channel, "/weft.Flaky/Call", &[("x-fail-every", "2")], None).await;
            codes.push(result.map_or_else(|s| s.code(), |_| tonic::Code::Ok));
        }
        codes
    }
}
