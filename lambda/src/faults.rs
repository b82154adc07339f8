//! Deliberate failures and delays, for rehearsing what a deployment does when functions
//! fail or hang (retries, timeouts, falling back to the peer) with the real function code.
//! Off unless the environment asks: `PEERLESS_INJECT_FAILURES=N` makes the first N
//! invocations of each handler state fail, `PEERLESS_INJECT_DELAY_MS=M` delays every
//! invocation by M milliseconds before it starts, `PEERLESS_INJECT_CORRUPTION=nan` makes
//! every gradient hold a NaN and `=wrong-key` makes every response name another gradient
//! key (what the peer's checks must catch).

use std::time::Duration;

/// Environment variable: number of first invocations per handler state that fail.
pub const FAILURES_ENV: &str = "PEERLESS_INJECT_FAILURES";
/// Environment variable: milliseconds every invocation waits before it starts.
pub const DELAY_ENV: &str = "PEERLESS_INJECT_DELAY_MS";

/// Environment variable: `nan` or `wrong-key`, a corruption of every answer.
pub const CORRUPTION_ENV: &str = "PEERLESS_INJECT_CORRUPTION";

/// A wrong answer a function gives while looking successful.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// The gradient written holds a NaN.
    Nan,
    /// The response names a gradient key the event did not ask for.
    WrongKey,
}

/// Which failures a handler state injects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// The first this-many invocations fail with `InjectedFailure`.
    pub fail_first: u64,
    /// Every invocation first sleeps this long.
    pub delay: Duration,
    /// Every successful invocation answers wrongly this way.
    pub corruption: Option<Corruption>,
}

impl FaultPlan {
    /// The plan the environment asks for; no faults when the variables are unset.
    pub fn from_env() -> Result<Self, String> {
        let read = |name: &str| -> Result<u64, String> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}={v:?} is not a whole number")),
                Err(_) => Ok(0),
            }
        };
        let corruption = match std::env::var(CORRUPTION_ENV).as_deref().map(str::trim) {
            Err(_) | Ok("") => None,
            Ok("nan") => Some(Corruption::Nan),
            Ok("wrong-key") => Some(Corruption::WrongKey),
            Ok(other) => {
                return Err(format!(
                    "{CORRUPTION_ENV}={other:?} is not `nan` or `wrong-key`"
                ));
            }
        };
        Ok(FaultPlan {
            fail_first: read(FAILURES_ENV)?,
            delay: Duration::from_millis(read(DELAY_ENV)?),
            corruption,
        })
    }

    /// Whether any fault is planned (worth a warning in the logs).
    pub fn is_active(&self) -> bool {
        self.fail_first > 0 || !self.delay.is_zero() || self.corruption.is_some()
    }
}
