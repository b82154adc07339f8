//! [`FunctionRouter`]: the Lambda Invoke API under the names a deployment gives its
//! functions (`STACK-compute-gradient`, or its ARN), in front of cargo-lambda's
//! [`crate::emulator::Emulator`], which serves a function only under the name of its
//! binary (`compute_gradient`) and does not take ARNs. A peer invokes the deployed name
//! through it, and moto's Step Functions, started with
//! [`crate::moto::MotoOptions::lambda_port`] at the router, runs its Lambda tasks, named
//! by ARN in the state machine, on the real function binaries.
//!
//! Every invocation is recorded ([`FunctionRouter::invocations`]), so a test can assert
//! which deployed functions were called.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::serve::{LoopbackServer, ProxyBody, plain};

/// The Invoke API's path before the function's name or ARN.
const INVOKE_PREFIX: &str = "/2015-03-31/functions/";

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The emulator's endpoint is not an `http://host:port` URL.
    #[error("invalid emulator endpoint {0:?}: expected http://host:port")]
    InvalidEmulator(String),
    /// Binding the port or starting the runtime or thread failed.
    #[error("starting the function router: {what}: {source}")]
    Start {
        /// The step that failed.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// One invocation the router saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    /// The deployed function's name, from the name or ARN the caller gave.
    pub function: String,
    /// The emulator's function (binary) it went to; `None`: unknown, answered 404.
    pub binary: Option<String>,
    /// The emulator's status (502 when it could not be reached).
    pub status: Option<u16>,
}

/// A running router on `127.0.0.1:<free port>`, stopped on drop.
#[derive(Debug)]
pub struct FunctionRouter {
    endpoint: String,
    port: u16,
    seen: Arc<Mutex<Vec<Routed>>>,
    _server: LoopbackServer,
}

impl FunctionRouter {
    /// Starts a router forwarding invocations of each deployed function name in `routes`
    /// (by name, full ARN or partial ARN, any qualifier ignored) to the emulator's function
    /// of the paired binary name; anything else gets the 404 `ResourceNotFoundException`
    /// Lambda answers.
    pub fn start(emulator: &str, routes: &[(&str, &str)]) -> Result<Self, RouterError> {
        let uri: Uri = emulator
            .parse()
            .map_err(|_| RouterError::InvalidEmulator(emulator.to_owned()))?;
        let authority = match (uri.scheme_str(), uri.authority()) {
            (Some("http"), Some(a)) => a.to_string(),
            _ => return Err(RouterError::InvalidEmulator(emulator.to_owned())),
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let route = Arc::new(Route {
            authority,
            routes: routes
                .iter()
                .map(|(name, binary)| (name.to_string(), binary.to_string()))
                .collect(),
            // A fresh connection per invocation, as FaultProxy does.
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
            seen: seen.clone(),
        });
        let server = LoopbackServer::start("function-router", move |request| {
            let route = route.clone();
            async move { Ok::<_, std::convert::Infallible>(route.handle(request).await) }
        })
        .map_err(|(what, source)| RouterError::Start { what, source })?;
        let addr = server.addr();
        Ok(Self {
            endpoint: format!("http://{addr}"),
            port: addr.port(),
            seen,
            _server: server,
        })
    }

    /// The endpoint for a Lambda client, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Its port, for [`crate::moto::MotoOptions::lambda_port`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every invocation so far, in arrival order.
    pub fn invocations(&self) -> Vec<Routed> {
        lock(&self.seen).clone()
    }

    /// How many invocations of the deployed function `function` so far.
    pub fn count(&self, function: &str) -> usize {
        lock(&self.seen)
            .iter()
            .filter(|r| r.function == function)
            .count()
    }
}

fn lock(seen: &Mutex<Vec<Routed>>) -> MutexGuard<'_, Vec<Routed>> {
    // A panic while holding the lock leaves a plain list behind: still usable.
    seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Route {
    authority: String,
    routes: HashMap<String, String>,
    client: Client<HttpConnector, Incoming>,
    seen: Arc<Mutex<Vec<Routed>>>,
}

impl Route {
    async fn handle(&self, mut request: Request<Incoming>) -> Response<ProxyBody> {
        let path = request.uri().path().to_owned();
        let Some(function) = function_name(&path) else {
            return plain(
                StatusCode::NOT_FOUND,
                "function router: not an Invoke request",
            );
        };
        let binary = self.routes.get(&function).cloned();
        let entry = {
            let mut seen = lock(&self.seen);
            seen.push(Routed {
                function: function.clone(),
                binary: binary.clone(),
                status: None,
            });
            seen.len() - 1
        };
        let record = |status: u16| lock(&self.seen)[entry].status = Some(status);
        let Some(binary) = binary else {
            record(404);
            return not_found(&function);
        };
        let query = request
            .uri()
            .query()
            .map_or(String::new(), |q| format!("?{q}"));
        let uri = format!(
            "http://{}{INVOKE_PREFIX}{binary}/invocations{query}",
            self.authority
        );
        match uri.parse() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => {
                record(400);
                return plain(StatusCode::BAD_REQUEST, "unparsable request query");
            }
        }
        match self.client.request(request).await {
            Ok(response) => {
                record(response.status().as_u16());
                response.map(http_body_util::Either::Left)
            }
            Err(e) => {
                record(502);
                let message = format!("function router: the emulator failed: {e}");
                plain(StatusCode::BAD_GATEWAY, &message)
            }
        }
    }
}

/// The function name of an Invoke path `/2015-03-31/functions/ID/invocations`, where ID
/// (percent-encoded) is a name, `ACCOUNT:function:NAME` or
/// `arn:aws:lambda:REGION:ACCOUNT:function:NAME`, each optionally `:QUALIFIER`.
fn function_name(path: &str) -> Option<String> {
    let id = path
        .strip_prefix(INVOKE_PREFIX)?
        .strip_suffix("/invocations")?;
    let id = percent_decode(id)?;
    let name = match id.split_once(":function:") {
        Some((_, rest)) => rest,
        None => id.as_str(),
    };
    let name = name.split(':').next().unwrap_or_default();
    (!name.is_empty() && !name.contains('/')).then(|| name.to_owned())
}

/// `%XX` sequences decoded; `None` for a malformed one or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Lambda's answer for a function that does not exist.
fn not_found(function: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "Type": "User",
        "Message": format!("Function not found: {function} (not routed to the emulator)"),
    });
    let mut response = plain(StatusCode::NOT_FOUND, &body.to_string());
    let headers = response.headers_mut();
    headers.insert(
        "x-amzn-errortype",
        hyper::header::HeaderValue::from_static("ResourceNotFoundException"),
    );
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::function_name;

    #[test]
    fn names_arns_and_qualifiers_name_the_function() {
        let cases = [
            (
                "/2015-03-31/functions/pst-compute-gradient/invocations",
                Some("pst-compute-gradient"),
            ),
            (
                "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Apst-process-input/invocations",
                Some("pst-process-input"),
            ),
            (
                "/2015-03-31/functions/arn:aws:lambda:us-east-1:123456789012:function:f:$LATEST/invocations",
                Some("f"),
            ),
            (
                "/2015-03-31/functions/123456789012%3Afunction%3Af/invocations",
                Some("f"),
            ),
            ("/2015-03-31/functions/f", None),
            ("/2015-03-31/functions//invocations", None),
            ("/2015-03-31/functions/%zz/invocations", None),
            ("/moto-api/", None),
        ];
        for (path, want) in cases {
            assert_eq!(function_name(path).as_deref(), want, "{path}");
        }
    }
}
