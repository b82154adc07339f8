//! [`FaultProxy`]: an HTTP/1.1 reverse proxy on a free loopback port in front of a
//! [`crate::moto::MotoServer`] (or any `http://host:port`), forwarding requests unchanged
//! until told to fail some: the next `count` requests matching a [`FaultRule`] get an S3
//! error answer, a dropped connection or a delay, so tests can show that store blips are
//! retried and that failures which outlast the retries are handled, against the real
//! client and a real server.
//!
//! Every request is recorded ([`FaultProxy::log`]) and every rule counts what it injected
//! ([`RuleHandle::injected`]), so a test can assert that the faults really happened.
//! The proxy runs on a thread of its own with its own Tokio runtime (it serves sync and
//! async tests alike) and stops when the value is dropped.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::serve::{LoopbackServer, ProxyBody, plain};

/// HTTP methods, as rules name them.
pub use hyper::Method;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// The upstream is not an `http://host:port` URL.
    #[error("invalid upstream {upstream:?} for the fault proxy: {reason}")]
    InvalidUpstream {
        /// The URL given.
        upstream: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Binding the port or starting the runtime or thread failed.
    #[error("starting the fault proxy: {what}: {source}")]
    Start {
        /// The step that failed.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
}

/// What a matching request gets instead of a plain forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// An answer with this status and an S3 error document, without reaching the
    /// upstream: 503 `SlowDown`, 500 `InternalError`, 502 `BadGateway`, 504
    /// `GatewayTimeout`, 403 `AccessDenied`, 404 `NoSuchKey`, others `InjectedFault`.
    Status(u16),
    /// The connection is closed without an answer (after reading the request), as when a
    /// server crashes or a network path breaks.
    Disconnect,
    /// The request is held this long, then forwarded: a slow server, for timeouts.
    Delay(Duration),
}

/// Which requests to fail and how: the next `count` requests whose method and path (with
/// query) match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRule {
    /// Only requests with this method (`None`: any).
    pub method: Option<Method>,
    /// Only requests whose path and query contain this text (`None`: any).
    pub path_contains: Option<String>,
    /// How many matching requests to fail; later ones pass.
    pub count: usize,
    /// What they get.
    pub fault: Fault,
}

impl FaultRule {
    /// The next `count` requests of any method and path get `fault`.
    pub fn new(fault: Fault, count: usize) -> Self {
        FaultRule {
            method: None,
            path_contains: None,
            count,
            fault,
        }
    }

    /// The next `count` requests get an answer with `status` (see [`Fault::Status`]).
    pub fn status(status: u16, count: usize) -> Self {
        Self::new(Fault::Status(status), count)
    }

    /// Restricts the rule to requests with `method`.
    pub fn method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// Restricts the rule to requests whose path and query contain `text` (an object key,
    /// say).
    pub fn path_contains(mut self, text: impl Into<String>) -> Self {
        self.path_contains = Some(text.into());
        self
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|text| path.contains(text))
    }
}

/// One request the proxy saw, for assertions and failure messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Its method.
    pub method: Method,
    /// Its path and query.
    pub path: String,
    /// The status answered (`None`: the connection was dropped, or the upstream's answer
    /// is still being forwarded).
    pub status: Option<u16>,
    /// Whether a rule acted on it.
    pub injected: bool,
}

/// A rule added by [`FaultProxy::fail_next`], to ask what it did.
#[derive(Clone, Debug)]
pub struct RuleHandle {
    shared: Arc<Mutex<Shared>>,
    index: usize,
}

impl RuleHandle {
    /// How many requests this rule has failed so far.
    pub fn injected(&self) -> usize {
        lock(&self.shared).rules[self.index].injected
    }

    /// How many more matching requests it will fail.
    pub fn remaining(&self) -> usize {
        let shared = lock(&self.shared);
        let rule = &shared.rules[self.index];
        rule.rule.count - rule.injected
    }
}

#[derive(Debug, Default)]
struct Shared {
    rules: Vec<RuleState>,
    log: Vec<Seen>,
}

#[derive(Debug)]
struct RuleState {
    rule: FaultRule,
    injected: usize,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock leaves plain counters behind: still usable.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running proxy on `127.0.0.1:<free port>` forwarding to one upstream, stopped on drop.
#[derive(Debug)]
pub struct FaultProxy {
    endpoint: String,
    upstream: String,
    shared: Arc<Mutex<Shared>>,
    _server: LoopbackServer,
}

impl FaultProxy {
    /// Starts a proxy forwarding to `upstream` (`http://host:port`, e.g.
    /// [`crate::moto::MotoServer::endpoint`]); it listens once this returns.
    pub fn start(upstream: &str) -> Result<Self, FaultError> {
        let invalid = |reason| FaultError::InvalidUpstream {
            upstream: upstream.to_owned(),
            reason,
        };
        let uri: Uri = upstream
            .parse()
            .map_err(|_| invalid("not a URL; expected http://host:port"))?;
        if uri.scheme_str() != Some("http") {
            return Err(invalid("only http:// upstreams are supported"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| invalid("no host:port"))?
            .clone();
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(invalid("expected no path: http://host:port"));
        }
        let shared = Arc::new(Mutex::new(Shared::default()));
        let forward = Arc::new(Forward {
            authority: authority.to_string(),
            // A fresh upstream connection per request: no race with the upstream closing
            // an idle pooled connection, which would show up as a fault nobody injected.
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
            shared: shared.clone(),
        });
        let server = LoopbackServer::start("fault-proxy", move |request| {
            let forward = forward.clone();
            async move { forward.handle(request).await }
        })
        .map_err(|(what, source)| FaultError::Start { what, source })?;
        let addr = server.addr();
        Ok(FaultProxy {
            endpoint: format!("http://{addr}"),
            upstream: upstream.trim_end_matches('/').to_owned(),
            shared,
            _server: server,
        })
    }

    /// The proxy's endpoint for clients, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The server requests are forwarded to.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Adds a rule; rules are tried in the order they were added and a request meets at
    /// most one (the first that matches and has failures left).
    pub fn fail_next(&self, rule: FaultRule) -> RuleHandle {
        let mut shared = lock(&self.shared);
        shared.rules.push(RuleState { rule, injected: 0 });
        RuleHandle {
            shared: self.shared.clone(),
            index: shared.rules.len() - 1,
        }
    }

    /// Ends every rule: from now on every request is forwarded.
    pub fn clear_rules(&self) {
        for rule in &mut lock(&self.shared).rules {
            rule.rule.count = rule.injected;
        }
    }

    /// Requests seen so far.
    pub fn requests(&self) -> usize {
        lock(&self.shared).log.len()
    }

    /// Requests some rule acted on so far.
    pub fn injected(&self) -> usize {
        lock(&self.shared).log.iter().filter(|s| s.injected).count()
    }

    /// Every request seen so far, in arrival order.
    pub fn log(&self) -> Vec<Seen> {
        lock(&self.shared).log.clone()
    }
}

/// Where and how requests go on.
struct Forward {
    authority: String,
    client: Client<HttpConnector, Incoming>,
    shared: Arc<Mutex<Shared>>,
}

/// The service error that makes hyper close the connection without an answer.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by an injected fault")]
struct Dropped;

impl Forward {
    async fn handle(&self, mut request: Request<Incoming>) -> Result<Response<ProxyBody>, Dropped> {
        let method = request.method().clone();
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let (fault, entry) = {
            let mut shared = lock(&self.shared);
            let fault = shared
                .rules
                .iter_mut()
                .find(|r| r.injected < r.rule.count && r.rule.matches(&method, &path))
                .map(|r| {
                    r.injected += 1;
                    r.rule.fault.clone()
                });
            shared.log.push(Seen {
                method: method.clone(),
                path: path.clone(),
                status: None,
                injected: fault.is_some(),
            });
            (fault, shared.log.len() - 1)
        };
        let record = |status: u16| lock(&self.shared).log[entry].status = Some(status);
        match fault {
            Some(Fault::Status(code)) => {
                // Read the whole request first: answering while the client still sends
                // would turn the injected status into a broken pipe on its side.
                let _ = request.into_body().collect().await;
                tracing::debug!(%method, path, code, "injected status");
                record(code);
                return Ok(error_response(code, &path, entry));
            }
            Some(Fault::Disconnect) => {
                let _ = request.into_body().collect().await;
                tracing::debug!(%method, path, "injected disconnect");
                return Err(Dropped);
            }
            Some(Fault::Delay(delay)) => {
                tracing::debug!(%method, path, ?delay, "injected delay");
                tokio::time::sleep(delay).await;
            }
            None => {}
        }
        let uri = format!("http://{}{path}", self.authority);
        match uri.parse() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => {
                record(400);
                return Ok(plain(StatusCode::BAD_REQUEST, "unparsable request path"));
            }
        }
        match self.client.request(request).await {
            Ok(response) => {
                record(response.status().as_u16());
                Ok(response.map(Either::Left))
            }
            Err(e) => {
                record(502);
                let message = format!("fault proxy: upstream {} failed: {e}", self.authority);
                Ok(plain(StatusCode::BAD_GATEWAY, &message))
            }
        }
    }
}

/// An S3 error document as S3 sends it with `code`, naming the request's path.
fn error_response(code: u16, path: &str, request: usize) -> Response<ProxyBody> {
    let (error, message) = match code {
        500 => (
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
        502 => ("BadGateway", "Bad gateway (injected)."),
        503 => ("SlowDown", "Please reduce your request rate."),
        504 => ("GatewayTimeout", "Gateway timeout (injected)."),
        403 => ("AccessDenied", "Access Denied"),
        404 => ("NoSuchKey", "The specified key does not exist."),
        _ => ("InjectedFault", "A fault injected by the test's proxy."),
    };
    let resource = path
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{error}</Code>\
         <Message>{message}</Message><Resource>{resource}</Resource>\
         <RequestId>injected-{request}</RequestId></Error>"
    );
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/xml"),
    );
    response
}
