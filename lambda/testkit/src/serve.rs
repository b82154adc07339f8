//! The HTTP/1.1 server under the test kit's proxies ([`crate::faults::FaultProxy`],
//! [`crate::lambda_router::FunctionRouter`]): a free loopback port served on a thread of
//! its own with its own Tokio runtime (so sync and async tests alike can use it), stopped
//! when the value is dropped.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

/// What the proxies answer: an upstream's streamed body or a document of their own.
pub(crate) type ProxyBody = Either<Incoming, Full<Bytes>>;

/// A plain-text answer of a proxy itself.
pub(crate) fn plain(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(text.to_owned()))));
    *response.status_mut() = status;
    response
}

/// A running server; dropping it stops accepting and ends the connections still open.
#[derive(Debug)]
pub(crate) struct LoopbackServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoopbackServer {
    /// Binds `127.0.0.1:<free port>` and serves every request with `handler` (an `Err` closes
    /// the connection without an answer); it listens once this returns. On failure, the
    /// step that failed and why.
    pub(crate) fn start<H, F, E>(name: &str, handler: H) -> Result<Self, (&'static str, io::Error)>
    where
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<ProxyBody>, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| ("binding a loopback port", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ("reading the bound address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ("making the listener non-blocking", e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ("building its runtime", e))?;
        let (shutdown, stop) = oneshot::channel();
        let handler = Arc::new(handler);
        let thread = std::thread::Builder::new()
            .name(format!("{name}-{}", addr.port()))
            .spawn(move || runtime.block_on(serve(listener, handler, stop)))
            .map_err(|e| ("spawning its thread", e))?;
        Ok(Self {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections until `stop` fires; dropping the runtime afterwards ends the
/// connections still open.
async fn serve<H, F, E>(listener: TcpListener, handler: Arc<H>, mut stop: oneshot::Receiver<()>)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<ProxyBody>, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("test proxy cannot listen: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| (*handler)(request));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}
