//! cargo-lambda's Lambda Runtime API emulator (`cargo lambda watch --only-lambda-apis`,
//! cargo-lambda 1.9.2 from PyPI) on a free loopback port, with real function binaries
//! polling it, so tests invoke the deployed code through the Lambda Invoke API as on AWS.
//!
//! With `--only-lambda-apis` the emulator serves the runtime API of function `NAME` under
//! `/.rt/NAME` and queues invocations there until a process polls; every process started
//! with [`Emulator::start_function`] is one execution environment, so `instances` processes
//! serve that many invocations of a function at once (the emulator's own `--concurrency`
//! only applies to functions it builds and starts itself, which this module does not use).
//!
//! Unlike AWS, which answers a function error with HTTP 200 and `X-Amz-Function-Error:
//! Unhandled`, the emulator answers HTTP 500 with the same `{errorType, errorMessage}` body;
//! clients should disable SDK retries and treat both forms as a function error.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Environment variable naming the Python venv that holds `bin/cargo-lambda`.
pub const CARGO_LAMBDA_VENV_ENV: &str = "PEERLESS_CARGO_LAMBDA";

/// The cargo-lambda version the emulator is tested with.
pub const CARGO_LAMBDA_VERSION: &str = "1.9.2";

/// How long the emulator may take to listen (it runs `cargo metadata` first).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the emulator or a function process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// `bin/cargo-lambda` is missing from the venv.
    #[error(
        "cargo-lambda not found at {}: install it with `python3 -m venv {venv} && \
         {venv}/bin/pip install cargo-lambda=={CARGO_LAMBDA_VERSION}` (or point \
         {CARGO_LAMBDA_VENV_ENV} at another venv that has it)",
        path.display(), venv = venv.display()
    )]
    NotInstalled {
        /// The executable looked for.
        path: PathBuf,
        /// The venv it was looked for in.
        venv: PathBuf,
    },
    /// A function name that cannot be a URL path segment.
    #[error("invalid function name {0:?}: use 1-64 characters of A-Z a-z 0-9 - _")]
    InvalidName(String),
    /// Setting up the port, a log file or a process failed.
    #[error("starting {name}: {what}: {source}")]
    Start {
        /// The emulator or the function.
        name: String,
        /// The step that failed.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The emulator exited before it listened.
    #[error("the emulator exited with {status} before listening on {addr}\n{log}")]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// The address it was to listen on.
        addr: SocketAddr,
        /// Its output.
        log: String,
    },
    /// The emulator did not listen in time.
    #[error("the emulator did not listen on {addr} within {timeout:?}\n{log}")]
    NotReady {
        /// The address it was to listen on.
        addr: SocketAddr,
        /// How long it was given.
        timeout: Duration,
        /// Its output.
        log: String,
    },
}

/// The venv named by `$PEERLESS_CARGO_LAMBDA`, by default `$HOME/.cache/peerless/cargo-lambda`
/// (where `scripts/setup.sh` installs cargo-lambda).
pub fn cargo_lambda_venv() -> PathBuf {
    if let Some(dir) = std::env::var_os(CARGO_LAMBDA_VENV_ENV) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| OsString::from("/root"));
    Path::new(&home).join(".cache/peerless/cargo-lambda")
}

/// One function served through the emulator: the binary, its Lambda configuration and how
/// many execution environments (processes) serve it.
#[derive(Clone, Debug)]
pub struct FunctionConfig {
    /// Function name, as used in the invoke URL (`/2015-03-31/functions/NAME/invocations`).
    pub name: String,
    /// The function executable, e.g. `env!("CARGO_BIN_EXE_compute_gradient")` in a test.
    pub binary: PathBuf,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` the function sees, in MB.
    pub memory_mb: u32,
    /// Processes polling for this function's invocations: its concurrency.
    pub instances: usize,
    /// Extra environment variables of the processes (they also inherit this process's).
    pub env: Vec<(String, String)>,
}

impl FunctionConfig {
    /// One instance with 1024 MB and `RUST_LOG=info`.
    pub fn new(name: impl Into<String>, binary: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            binary: binary.into(),
            memory_mb: 1024,
            instances: 1,
            env: vec![("RUST_LOG".into(), "info".into())],
        }
    }
}

/// A child process with its output in a log file, killed when dropped.
#[derive(Debug)]
struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: String, mut command: Command, log_dir: &Path) -> Result<Self, EmulatorError> {
        let fail = |what| {
            let name = name.clone();
            move |source| EmulatorError::Start { name, what, source }
        };
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(fail("creating the log file"))?;
        let err = out.try_clone().map_err(fail("creating the log file"))?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command.spawn().map_err(fail("spawning the process"))?;
        Ok(Self { name, child, log })
    }

    fn log(&self) -> String {
        format!(
            "--- {} log ---\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running Lambda Runtime API emulator and the function processes behind it; all are
/// killed on drop (also when a test panics).
#[derive(Debug)]
pub struct Emulator {
    // Field order: the functions stop before the emulator they poll.
    functions: Vec<Process>,
    emulator: Process,
    addr: SocketAddr,
    endpoint: String,
    log_dir: tempfile::TempDir,
}

impl Emulator {
    /// Starts `cargo lambda watch --only-lambda-apis` from the venv of
    /// [`cargo_lambda_venv`] on a free loopback port and waits until it listens.
    pub fn start() -> Result<Self, EmulatorError> {
        let venv = cargo_lambda_venv();
        let path = venv.join("bin/cargo-lambda");
        if !path.is_file() {
            return Err(EmulatorError::NotInstalled { path, venv });
        }
        let start = |what| {
            move |source| EmulatorError::Start {
                name: "emulator".into(),
                what,
                source,
            }
        };
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(start("finding a free loopback port"))?;
        let log_dir = tempfile::tempdir().map_err(start("creating the log directory"))?;
        let mut command = Command::new(&path);
        command.args([
            "lambda",
            "watch",
            "--only-lambda-apis",
            "--ignore-changes",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
            &addr.port().to_string(),
            // It reads a manifest's metadata even when it builds nothing.
            "--manifest-path",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        ]);
        let mut emulator = Process::spawn("emulator".into(), command, log_dir.path())?;
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = emulator.child.try_wait() {
                return Err(EmulatorError::Exited {
                    status,
                    addr,
                    log: emulator.log(),
                });
            }
            if Instant::now() > deadline {
                return Err(EmulatorError::NotReady {
                    addr,
                    timeout: READY_TIMEOUT,
                    log: emulator.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            functions: Vec::new(),
            emulator,
            addr,
            endpoint: format!("http://{addr}"),
            log_dir,
        })
    }

    /// The endpoint URL for a Lambda client (`endpoint_url` of aws-sdk-lambda), e.g.
    /// `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The URL a plain HTTP client POSTs an event to in order to invoke `function`.
    pub fn invocation_url(&self, function: &str) -> String {
        format!(
            "{}/2015-03-31/functions/{function}/invocations",
            self.endpoint
        )
    }

    /// The `AWS_LAMBDA_RUNTIME_API` a process serving `function` polls.
    pub fn runtime_api(&self, function: &str) -> String {
        format!("http://{}/.rt/{function}", self.addr)
    }

    /// Starts `config.instances` processes of `config.binary` polling the runtime API of
    /// `config.name`, with the variables the Lambda service sets
    /// (`AWS_LAMBDA_FUNCTION_NAME`, `..._MEMORY_SIZE`, `..._VERSION`). Invocations sent
    /// before a process polls wait in the emulator's queue.
    pub fn start_function(&mut self, config: &FunctionConfig) -> Result<(), EmulatorError> {
        let name = &config.name;
        let valid = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        if !valid {
            return Err(EmulatorError::InvalidName(name.clone()));
        }
        for instance in 0..config.instances {
            let mut command = Command::new(&config.binary);
            command
                .env("AWS_LAMBDA_RUNTIME_API", self.runtime_api(name))
                .env("AWS_LAMBDA_FUNCTION_NAME", name)
                .env(
                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                    config.memory_mb.to_string(),
                )
                .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
                .envs(config.env.iter().map(|(k, v)| (k, v)));
            let process =
                Process::spawn(format!("{name}-{instance}"), command, self.log_dir.path())?;
            self.functions.push(process);
        }
        Ok(())
    }

    /// The output of the emulator and of every function process so far, for failure
    /// messages.
    pub fn logs(&self) -> String {
        std::iter::once(&self.emulator)
            .chain(&self.functions)
            .map(Process::log)
            .collect::<Vec<_>>()
            .join("\n")
    }
}
