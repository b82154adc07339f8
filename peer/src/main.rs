//! `peerless`: peer-to-peer data-parallel training with and without serverless gradient
//! offload, and the tools around it.

mod cli;
mod cmd;
mod config;
mod progress;

use std::io::IsTerminal;
use std::process::ExitCode;

use cli::Command;
use peerless_comm::mask_passwords_in;

fn main() -> ExitCode {
    peerless_models::memory::retain_freed_memory();
    let args = match config::expand_args(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {}", mask_passwords_in(&format!("{e:#}")));
            return ExitCode::from(2);
        }
    };
    let cli = args.parse();
    init_logging(cli.verbose, cli.quiet);
    args.log_skipped();
    let result = match cli.command {
        Command::Models(a) => cmd::models::run(a),
        Command::Bench(a) => cmd::bench::run(a, cli.device),
        Command::Train(a) => cmd::train::run(a, cli.device),
        Command::Data(cli::DataCommand::Split(a)) => cmd::split::run(a),
        Command::Peer(a) => cmd::peer::run(a, cli.device),
        Command::Run(a) => cmd::run::run(a, cli.device),
        Command::Stepfn(cli::StepfnCommand::Generate(a)) => cmd::stepfn::generate(a),
        Command::Keys(cli::KeysCommand::Generate(a)) => cmd::keys::generate(a),
        Command::Study(a) => cmd::study::run(a, cli.config.clone(), cli.device),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors may quote a URL from a flag, a file or a library: never its password.
            eprintln!("error: {}", mask_passwords_in(&format!("{e:#}")));
            // A configuration that cannot run is a usage error, like a bad flag.
            if e.chain().any(|c| c.is::<peerless_runtime::ConfigError>()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    // The function pool runs the Lambda handler in-process: its one line per invocation
    // (useful in CloudWatch) would drown a peer's output, so it shows from -v on.
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info,peerless_lambda=warn",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PEERLESS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| MaskedStderr)
        // Colours only on a terminal: logs redirected to a file (EC2 user data, CI) stay text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Standard error for log lines, with the password of every URL masked: a library may log
/// a connection string (at debug level, in an error it passes on), and logs get shared.
struct MaskedStderr;

impl std::io::Write for MaskedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The formatter writes each event whole, so a URL is never split between calls.
        let mut stderr = std::io::stderr().lock();
        if buf.contains(&b'@') {
            let text = String::from_utf8_lossy(buf);
            stderr.write_all(mask_passwords_in(&text).as_bytes())?;
        } else {
            stderr.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
