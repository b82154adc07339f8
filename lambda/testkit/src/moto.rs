//! moto's server (`python3 -m moto.server`, moto 5.2.1) on a free loopback port as a local
//! stand-in for S3, Lambda and Step Functions, driven through its `/moto-api` control
//! endpoints; the server dies with the value.
//!
//! Facts about moto 5.2.1 this module relies on: after
//! [`MotoServer::enable_stepfunctions_execution`] Step Functions really runs the definition,
//! and its Lambda tasks return the responses queued by
//! [`MotoServer::queue_lambda_responses`] (or echo their input when the queue is empty).
//! Only the first `StartExecution` per region succeeds: later ones, on any state machine of
//! that region, fail with HTTP 500 (moto deep-copies the state machine, which references
//! the region's backend and through it the earlier execution's thread lock). Start each
//! execution in a fresh region, or call [`MotoServer::reset`] in between.
//!
//! moto 5.2.5 fixes that (getmoto/moto#10077): [`MotoServer::start_with`] and
//! [`MotoOptions::executing`] run it from its own venv ([`executing_venv`], installed by
//! `scripts/setup.sh`), for tests whose peers start many executions of one state machine.
//! Its Step Functions engine sends its Lambda tasks' Invoke calls over HTTP to
//! `localhost:$MOTO_PORT` (moto's own port unless [`MotoOptions::lambda_port`] names
//! another server, such as [`crate::lambda_router::FunctionRouter`] in front of the real
//! functions).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

/// How to install what [`MotoServer::start`] needs.
pub const INSTALL_HINT: &str = "moto's server must be importable by the system python3: \
    install it with `python3 -m pip install 'moto[server]==5.2.1'`";

/// The Python interpreter that runs moto by default.
const PYTHON: &str = "python3";

/// Environment variable naming the venv of [`executing_venv`].
pub const EXECUTING_VENV_ENV: &str = "PEERLESS_MOTO_EXECUTING";

/// The moto version of [`executing_venv`]: the first whose Step Functions runs a state
/// machine more than once.
pub const EXECUTING_VERSION: &str = "5.2.5";

/// The venv named by `$PEERLESS_MOTO_EXECUTING`, by default
/// `$HOME/.cache/peerless/moto-executing`, where `scripts/setup.sh` installs moto
/// [`EXECUTING_VERSION`] beside the system python3's 5.2.1 (the version every other test
/// runs).
pub fn executing_venv() -> PathBuf {
    if let Some(dir) = std::env::var_os(EXECUTING_VENV_ENV) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| OsString::from("/root"));
    Path::new(&home).join(".cache/peerless/moto-executing")
}

/// How to start moto: which Python runs it and where its Step Functions sends Lambda calls.
#[derive(Clone, Debug)]
pub struct MotoOptions {
    /// The interpreter that runs `-m moto.server`.
    pub python: PathBuf,
    /// How to install moto for `python`, for the error when it cannot import it.
    pub install_hint: String,
    /// The loopback port Step Functions' Lambda tasks invoke (`MOTO_PORT`); `None`: moto's
    /// own port, whose Lambda answers from [`MotoServer::queue_lambda_responses`].
    pub lambda_port: Option<u16>,
}

impl Default for MotoOptions {
    /// The system python3's moto (5.2.1), Lambda tasks answered by moto itself.
    fn default() -> Self {
        Self {
            python: PathBuf::from(PYTHON),
            install_hint: INSTALL_HINT.to_owned(),
            lambda_port: None,
        }
    }
}

impl MotoOptions {
    /// moto [`EXECUTING_VERSION`] from [`executing_venv`], whose Step Functions runs a
    /// state machine any number of times.
    pub fn executing() -> Self {
        let venv = executing_venv();
        Self {
            install_hint: format!(
                "run scripts/setup.sh, or `python3 -m venv {venv} && {venv}/bin/pip install \
                 'moto[server]=={EXECUTING_VERSION}'` (or point {EXECUTING_VENV_ENV} at a venv \
                 that has it)",
                venv = venv.display()
            ),
            python: venv.join("bin/python"),
            lambda_port: None,
        }
    }

    /// Sends Step Functions' Lambda tasks to `localhost:port` instead of moto's own Lambda.
    pub fn lambda_port(mut self, port: u16) -> Self {
        self.lambda_port = Some(port);
        self
    }
}

/// How long the server may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Time limit of one attempt of a control request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Attempts of a control request that may be repeated (resetting, configuring, creating a
/// bucket): once, under load, moto left a reset unanswered for a minute while a new
/// connection is served at once.
const IDEMPOTENT_ATTEMPTS: usize = 3;

/// Why moto could not be started or a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    /// The interpreter cannot import moto's server (or is missing).
    #[error("moto is not available to {} ({detail}); {hint}", python.display())]
    NotInstalled {
        /// The interpreter.
        python: PathBuf,
        /// What it said.
        detail: String,
        /// How to install moto for it.
        hint: String,
    },
    /// Setting up the port, the log file or the process failed.
    #[error("starting moto.server: {what}: {source}")]
    Start {
        /// The step that failed.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The server exited before it listened.
    #[error("moto.server exited with {status} before listening on {addr}; its log:\n{log}")]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// The address it was to listen on.
        addr: SocketAddr,
        /// Its output.
        log: String,
    },
    /// The server did not listen in time.
    #[error("moto.server did not listen on {addr} within {timeout:?}; its log:\n{log}")]
    NotReady {
        /// The address it was to listen on.
        addr: SocketAddr,
        /// How long it was given.
        timeout: Duration,
        /// Its output.
        log: String,
    },
    /// A control request failed or was refused.
    #[error("request {path} to moto at {endpoint} failed: {message}")]
    Request {
        /// The control path.
        path: String,
        /// The server's endpoint.
        endpoint: String,
        /// The transport error or the HTTP status line and body.
        message: String,
    },
}

/// A running moto server on `127.0.0.1:<free port>`, killed on drop; shared by the tests of
/// several crates so each starts its own isolated instance the same way.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    addr: SocketAddr,
    endpoint: String,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl MotoServer {
    /// Starts the system python3's moto server on a free loopback port and waits until it
    /// accepts connections; fails with [`INSTALL_HINT`] when moto is not importable.
    pub fn start() -> Result<Self, MotoError> {
        Self::start_with(&MotoOptions::default())
    }

    /// [`MotoServer::start`] with another interpreter or Lambda port.
    pub fn start_with(options: &MotoOptions) -> Result<Self, MotoError> {
        let python = &options.python;
        let not_installed = |detail: String| MotoError::NotInstalled {
            python: python.clone(),
            detail,
            hint: options.install_hint.clone(),
        };
        let check = Command::new(python)
            .args(["-c", "import moto, moto.server, flask"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| not_installed(format!("cannot run it: {e}")))?;
        if !check.status.success() {
            let stderr = String::from_utf8_lossy(&check.stderr);
            let detail = stderr.lines().last().unwrap_or("import failed").to_owned();
            return Err(not_installed(detail));
        }
        let start = |what| move |source| MotoError::Start { what, source };
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(start("finding a free loopback port"))?;
        let log_dir = tempfile::tempdir().map_err(start("creating the log directory"))?;
        let log = log_dir.path().join("moto.log");
        let out = File::create(&log).map_err(start("creating the log file"))?;
        let err = out.try_clone().map_err(start("creating the log file"))?;
        let port = addr.port().to_string();
        let lambda_port = options.lambda_port.map_or(port.clone(), |p| p.to_string());
        let mut child = Command::new(python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port])
            // Where moto's Step Functions engine sends its Lambda calls (it defaults to
            // port 5000).
            .env("MOTO_PORT", &lambda_port)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(start("spawning python -m moto.server"))?;
        let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(MotoError::Exited {
                    status,
                    addr,
                    log: read_log(),
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(MotoError::NotReady {
                    addr,
                    timeout: READY_TIMEOUT,
                    log: read_log(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            child,
            addr,
            endpoint: format!("http://{addr}"),
            log,
            _log_dir: log_dir,
        })
    }

    /// The endpoint URL for SDK clients, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Everything the server printed so far (one line per request, tracebacks), for
    /// failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Makes Step Functions really execute definitions (instead of only recording
    /// executions) and Lambda tasks answer without Docker, from the queued responses.
    pub fn enable_stepfunctions_execution(&self) -> Result<(), MotoError> {
        let body = json!({
            "stepfunctions": { "execute_state_machine": true },
            "lambda": { "use_docker": false },
        });
        self.post("/moto-api/config", &body, IDEMPOTENT_ATTEMPTS)
    }

    /// Queues `results` as the next Lambda invocation results in `region` (the region of
    /// the invoked function's ARN, not of the state machine), returned one per invocation
    /// in order, whatever function is invoked. Each result is the raw response payload
    /// (usually JSON text); moto treats every one as a success, except a payload over
    /// 6,000,000 bytes, which it answers as the function error
    /// `Function.ResponseSizeTooLarge`.
    pub fn queue_lambda_responses(
        &self,
        region: &str,
        results: &[String],
    ) -> Result<(), MotoError> {
        let body = json!({ "region": region, "results": results });
        // Not repeated: a retry after a lost answer would queue the results twice.
        self.post("/moto-api/static/lambda-simple/response", &body, 1)
    }

    /// Drops every resource of every service (buckets, state machines, executions, queued
    /// Lambda responses); the configuration set by
    /// [`MotoServer::enable_stepfunctions_execution`] stays.
    pub fn reset(&self) -> Result<(), MotoError> {
        self.post("/moto-api/reset", &json!({}), IDEMPOTENT_ATTEMPTS)
    }

    /// Creates an S3 bucket (moto accepts unsigned requests), for tests that need one
    /// before any peerless command runs.
    pub fn create_bucket(&self, bucket: &str) -> Result<(), MotoError> {
        self.request("PUT", &format!("/{bucket}"), "", IDEMPOTENT_ATTEMPTS)
    }

    /// An HTTP/1.1 POST of a JSON body, see [`MotoServer::request`].
    fn post(
        &self,
        path: &'static str,
        body: &serde_json::Value,
        attempts: usize,
    ) -> Result<(), MotoError> {
        self.request("POST", path, &body.to_string(), attempts)
    }

    /// An HTTP/1.1 request over a fresh connection, tried up to `attempts` times while moto
    /// does not answer within [`REQUEST_TIMEOUT`]; any 2xx status succeeds.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: &str,
        attempts: usize,
    ) -> Result<(), MotoError> {
        let fail = |message: String| MotoError::Request {
            path: path.to_owned(),
            endpoint: self.endpoint.clone(),
            message,
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        let exchange = || -> io::Result<Vec<u8>> {
            let mut stream = TcpStream::connect_timeout(&self.addr, REQUEST_TIMEOUT)?;
            stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
            stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
            stream.write_all(request.as_bytes())?;
            stream.write_all(body.as_bytes())?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response)?;
            Ok(response)
        };
        let timed_out = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            )
        };
        let mut tried = 0;
        let response = loop {
            tried += 1;
            match exchange() {
                Ok(response) => break response,
                Err(e) if timed_out(&e) && tried < attempts => continue,
                Err(e) if timed_out(&e) => {
                    return Err(fail(format!(
                        "no answer within {REQUEST_TIMEOUT:?} ({tried} attempts)"
                    )));
                }
                Err(e) => return Err(fail(e.to_string())),
            }
        };
        let text = String::from_utf8_lossy(&response);
        let status_line = text.lines().next().unwrap_or_default();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok());
        match status {
            Some(200..=299) => Ok(()),
            _ => {
                let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
                let excerpt: String = body.chars().take(500).collect();
                Err(fail(format!("{status_line}: {excerpt}")))
            }
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
