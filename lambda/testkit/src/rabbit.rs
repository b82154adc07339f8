//! A private RabbitMQ node for fault tests: `rabbitmq-server` started as a child process
//! with its own node name, ports, data directory, configuration and Erlang cookie, so a
//! test can stop, restart and shut it down without touching any shared broker.
//!
//! Facts this module relies on (RabbitMQ 3.10, Erlang/OTP 25 as Debian packages them):
//! `/usr/sbin/rabbitmq-server` is a wrapper that re-runs the real script as the `rabbitmq`
//! user through `su`, which starts a new session (so the node would escape our process
//! group) and reads another Erlang cookie; the real scripts live in `/usr/lib/rabbitmq/bin`
//! and run as any user. The distribution port defaults to the AMQP port + 20000, which may
//! be taken, so it is set explicitly. `rabbitmqctl await_startup` fails at once while the
//! node is not yet registered with epmd, so readiness is first the AMQP port accepting
//! connections. The node registers with the machine's epmd (started on first use as a
//! daemon that outlives the node, as usual for Erlang).

use std::fs::File;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How to install what [`RabbitNode::start`] needs.
pub const INSTALL_HINT: &str =
    "RabbitMQ must be installed: `apt-get install rabbitmq-server` (Debian/Ubuntu)";

/// Where distribution packages put the real (unwrapped) scripts.
const PACKAGED_BIN_DIR: &str = "/usr/lib/rabbitmq/bin";

/// How long a node may take to boot (about 5 s on a 2-core machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Time limit of one `rabbitmqctl` command.
const CTL_TIMEOUT: Duration = Duration::from_secs(60);

/// Nodes started by this process so far, for unique node names.
static NODES: AtomicU32 = AtomicU32::new(0);

/// Why a node could not be started or a control command failed.
#[derive(Debug, thiserror::Error)]
pub enum RabbitError {
    /// No `rabbitmq-server` script was found.
    #[error("rabbitmq-server not found in {PACKAGED_BIN_DIR} nor on PATH; {INSTALL_HINT}")]
    NotInstalled,
    /// Setting up ports, files or the process failed.
    #[error("starting RabbitMQ node {node}: {what}: {source}")]
    Start {
        /// The node name.
        node: String,
        /// The step that failed.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The server exited while it was expected to run.
    #[error("RabbitMQ node {node} exited with {status}; its log:\n{log}")]
    Exited {
        /// The node name.
        node: String,
        /// Its exit status.
        status: ExitStatus,
        /// The tail of its output.
        log: String,
    },
    /// The node did not accept AMQP connections in time.
    #[error("RabbitMQ node {node} did not listen on {addr} within {timeout:?}; its log:\n{log}")]
    NotReady {
        /// The node name.
        node: String,
        /// The AMQP address.
        addr: SocketAddr,
        /// How long it was given.
        timeout: Duration,
        /// The tail of its output.
        log: String,
    },
    /// A `rabbitmqctl` command failed or timed out.
    #[error("`rabbitmqctl -n {node} {command}` failed: {message}")]
    Ctl {
        /// The node name.
        node: String,
        /// The subcommand and its arguments.
        command: String,
        /// Exit status and output, or why it could not run.
        message: String,
    },
}

/// Settings of a [`RabbitNode`] that tests vary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RabbitOptions {
    /// The broker's `max_message_size` in bytes (RabbitMQ's default, 128 MiB, when `None`);
    /// larger publishes make the broker close the channel.
    pub max_message_size: Option<usize>,
}

/// A running RabbitMQ node on `127.0.0.1:<free port>` with user `guest`, shut down and
/// removed with its data when dropped; the broker that broker-fault tests restart.
#[derive(Debug)]
pub struct RabbitNode {
    child: Child,
    node: String,
    port: u16,
    bin_dir: PathBuf,
    dir: tempfile::TempDir,
}

impl RabbitNode {
    /// Starts a node with default settings and waits until it accepts AMQP connections.
    pub fn start() -> Result<Self, RabbitError> {
        Self::start_with(RabbitOptions::default())
    }

    /// Starts a node with `options` and waits until it accepts AMQP connections; fails
    /// with [`INSTALL_HINT`] when RabbitMQ is not installed.
    pub fn start_with(options: RabbitOptions) -> Result<Self, RabbitError> {
        let bin_dir = find_bin_dir().ok_or(RabbitError::NotInstalled)?;
        let node = format!(
            "peerless-test-{}-{}@localhost",
            std::process::id(),
            NODES.fetch_add(1, Ordering::Relaxed)
        );
        let start = |what| {
            let node = node.clone();
            move |source| RabbitError::Start { node, what, source }
        };
        let port = free_port().map_err(start("finding a free AMQP port"))?;
        let dist_port = free_port().map_err(start("finding a free distribution port"))?;
        let dir = tempfile::Builder::new()
            .prefix("peerless-rabbit-")
            .tempdir()
            .map_err(start("creating the node directory"))?;
        write_files(dir.path(), port, &options).map_err(start("writing the configuration"))?;
        let log =
            File::create(dir.path().join("server.log")).map_err(start("creating the log file"))?;
        let err = log.try_clone().map_err(start("creating the log file"))?;
        let mut command = Command::new(bin_dir.join("rabbitmq-server"));
        set_env(&mut command, dir.path(), &node);
        command
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own process group: the script and the Erlang VM it starts die together.
            .process_group(0);
        let child = command.spawn().map_err(start("spawning rabbitmq-server"))?;
        let mut rabbit = RabbitNode {
            child,
            node,
            port,
            bin_dir,
            dir,
        };
        rabbit.wait_ready(START_TIMEOUT)?;
        Ok(rabbit)
    }

    /// The AMQP URL of the node for user `guest`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The AMQP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Erlang node name, e.g. `peerless-test-4242-0@localhost`.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The last lines the server printed, for failure messages.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Stops the RabbitMQ application but keeps the Erlang node running (as
    /// `rabbitmqctl stop_app` does): every connection is closed and the port stops
    /// accepting connections until [`RabbitNode::start_app`].
    pub fn stop_app(&self) -> Result<(), RabbitError> {
        self.ctl(&["stop_app"]).map(drop)
    }

    /// Starts the application again after [`RabbitNode::stop_app`]; returns once it runs
    /// and accepts connections.
    pub fn start_app(&mut self) -> Result<(), RabbitError> {
        // `start_app` returns once the application has started: only the port is left.
        self.ctl(&["start_app"])?;
        self.wait_port(START_TIMEOUT)
    }

    /// A broker restart as an operator does it: `stop_app`, `pause`, `start_app`, and
    /// waits until the port accepts connections again.
    pub fn restart_app(&mut self, pause: Duration) -> Result<(), RabbitError> {
        self.stop_app()?;
        std::thread::sleep(pause);
        self.start_app()
    }

    /// Waits until the AMQP port accepts connections and the node reports itself
    /// started; fails at once when the server process has exited.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), RabbitError> {
        let deadline = Instant::now() + timeout;
        self.wait_port(timeout)?;
        let secs = deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
            .max(1)
            .to_string();
        self.ctl(&["await_startup", "--timeout", &secs]).map(drop)
    }

    /// Waits until the AMQP port accepts connections; fails at once when the server
    /// process has exited.
    fn wait_port(&mut self, timeout: Duration) -> Result<(), RabbitError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + timeout;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(RabbitError::Exited {
                    node: self.node.clone(),
                    status,
                    log: self.log(),
                });
            }
            if Instant::now() > deadline {
                return Err(RabbitError::NotReady {
                    node: self.node.clone(),
                    addr,
                    timeout,
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Runs `rabbitmqctl -n NODE args` with the node's environment (so it finds the node
    /// and its cookie) and returns its output; fails on a non-zero exit or after
    /// [`CTL_TIMEOUT`].
    pub fn ctl(&self, args: &[&str]) -> Result<String, RabbitError> {
        let fail = |message: String| RabbitError::Ctl {
            node: self.node.clone(),
            command: args.join(" "),
            message,
        };
        // A file of its own per command: calls may overlap.
        let out_file = tempfile::NamedTempFile::new_in(self.dir.path())
            .map_err(|e| fail(format!("output file: {e}")))?;
        let out_path = out_file.path().to_path_buf();
        let out = out_file
            .reopen()
            .map_err(|e| fail(format!("output file: {e}")))?;
        let err = out
            .try_clone()
            .map_err(|e| fail(format!("output file: {e}")))?;
        let mut command = Command::new(self.bin_dir.join("rabbitmqctl"));
        set_env(&mut command, self.dir.path(), &self.node);
        let mut child = command
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| fail(format!("cannot run rabbitmqctl: {e}")))?;
        let deadline = Instant::now() + CTL_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(None) => {
                    kill_group(&mut child);
                    return Err(fail(format!("no answer within {CTL_TIMEOUT:?}")));
                }
                Err(e) => return Err(fail(format!("waiting for rabbitmqctl: {e}"))),
            }
        };
        let output = std::fs::read_to_string(&out_path).unwrap_or_default();
        if status.success() {
            Ok(output)
        } else {
            Err(fail(format!("{status}: {}", output.trim())))
        }
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait()
            && let Err(e) = self.ctl(&["shutdown"])
        {
            tracing::warn!("{e}; killing the node");
        }
        // Whatever is left of the script and the VM (also after a clean shutdown: the
        // script's own process may linger a moment).
        kill_group(&mut self.child);
    }
}

/// The directory holding the real `rabbitmq-server` and `rabbitmqctl` scripts.
fn find_bin_dir() -> Option<PathBuf> {
    let packaged = Path::new(PACKAGED_BIN_DIR);
    if packaged.join("rabbitmq-server").is_file() {
        return Some(packaged.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .find(|dir| dir.join("rabbitmq-server").is_file() && dir.join("rabbitmqctl").is_file())
}

/// A port the OS considers free on 127.0.0.1 (free again once the probe is closed).
fn free_port() -> io::Result<u16> {
    TcpListener::bind("127.0.0.1:0")?
        .local_addr()
        .map(|a| a.port())
}

/// The configuration, an empty environment file (so the machine's
/// `/etc/rabbitmq/rabbitmq-env.conf` does not rename the node), no plugins, and a cookie
/// of the node's own.
fn write_files(dir: &Path, port: u16, options: &RabbitOptions) -> io::Result<()> {
    let mut conf = format!("listeners.tcp.default = 127.0.0.1:{port}\n");
    if let Some(max) = options.max_message_size {
        conf.push_str(&format!("max_message_size = {max}\n"));
    }
    std::fs::write(dir.join("rabbitmq.conf"), conf)?;
    std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
    std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
    let cookie_path = dir.join(".erlang.cookie");
    let mut cookie = File::create(&cookie_path)?;
    // Uniqueness, not secrecy: the node listens on loopback only.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    writeln!(cookie, "PEERLESSTEST{seed}X{}", std::process::id())?;
    drop(cookie);
    std::fs::set_permissions(&cookie_path, std::fs::Permissions::from_mode(0o400))
}

/// The environment shared by the server and `rabbitmqctl`: everything inside `dir`.
fn set_env(command: &mut Command, dir: &Path, node: &str) {
    command
        .current_dir(dir)
        // Erlang reads its cookie from $HOME/.erlang.cookie.
        .env("HOME", dir)
        .env("RABBITMQ_NODENAME", node)
        .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
        .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
        .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
        .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir.join("plugins-expand"))
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"))
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .env(
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
            "-kernel inet_dist_use_interface {127,0,0,1}",
        )
        // Erlang flags of the caller's environment would apply to the node too.
        .env_remove("ERL_FLAGS")
        .env_remove("ERL_AFLAGS")
        .env_remove("ERL_ZFLAGS");
}

/// Kills the process group `child` leads (it was spawned with `process_group(0)`) and
/// reaps `child`.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is
        // touched. The group is the child's own, so nothing else is hit.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
