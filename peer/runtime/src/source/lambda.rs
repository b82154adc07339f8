//! `--serverless lambda`: one synchronous AWS Lambda invocation per offloaded batch
//! (aws-sdk-lambda; a custom endpoint reaches emulators such as `cargo lambda watch`), at
//! most `--function-concurrency` at once, each retried on failure.

use anyhow::{Context, Result, anyhow, bail};
use aws_sdk_lambda::Client;
use aws_sdk_lambda::config::retry::RetryConfig;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{InvocationType, LogType};
use base64::Engine;
use peerless_lambda::billing::parse_report;
use peerless_lambda::{ComputeGradientEvent, ComputeGradientResponse, ProcessInputRequest};

use super::functions::{Attempt, CallPolicy, Functions, FunctionsRound, call_each};

/// Where the function is and how to call it.
#[derive(Clone, Debug)]
pub struct LambdaSettings {
    /// Function name or ARN (optionally with `:alias`).
    pub function: String,
    /// Custom Lambda endpoint (emulators); `None` uses AWS or `AWS_ENDPOINT_URL_LAMBDA`.
    pub endpoint_url: Option<String>,
    /// Region; `None` uses the AWS default chain.
    pub region: Option<String>,
    /// Concurrency, retries and time limit of each invocation.
    pub policy: CallPolicy,
    /// Memory size assumed for billing when the platform does not report one.
    pub memory_mb: u32,
}

/// Invokes the deployed `compute_gradient` function directly.
pub struct LambdaFunctions {
    client: Client,
    settings: LambdaSettings,
}

impl LambdaFunctions {
    /// A client with credentials from the AWS default chain. The SDK's own retries are off:
    /// [`call_each`] retries every kind of failure the same way and counts attempts.
    pub async fn connect(settings: LambdaSettings) -> Self {
        let sdk = peerless_data::store::s3::load_sdk_config(settings.region.as_deref()).await;
        let mut config =
            aws_sdk_lambda::config::Builder::from(&sdk).retry_config(RetryConfig::disabled());
        if let Some(endpoint) = &settings.endpoint_url {
            config = config.endpoint_url(endpoint);
        }
        LambdaFunctions {
            client: Client::from_conf(config.build()),
            settings,
        }
    }

    async fn call(&self, event: ComputeGradientEvent) -> Result<Attempt> {
        let payload = serde_json::to_vec(&event).context("serialising the event")?;
        let output = self
            .client
            .invoke()
            .function_name(&self.settings.function)
            .invocation_type(InvocationType::RequestResponse)
            .log_type(LogType::Tail)
            .payload(Blob::new(payload))
            .send()
            .await
            .map_err(|e| anyhow!("invoking {}: {}", self.settings.function, sdk_error(&e)))?;
        let body = output.payload().map(|b| b.as_ref()).unwrap_or_default();
        if let Some(kind) = output.function_error() {
            bail!(
                "{} failed ({kind}): {}",
                self.settings.function,
                error_message(body)
            );
        }
        let response: ComputeGradientResponse =
            serde_json::from_slice(body).with_context(|| {
                format!(
                    "{} returned something that is not a compute_gradient response: {}",
                    self.settings.function,
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                )
            })?;
        let report = output
            .log_result()
            .and_then(|tail| base64::engine::general_purpose::STANDARD.decode(tail).ok())
            .and_then(|log| parse_report(&String::from_utf8_lossy(&log)));
        Ok(Attempt { response, report })
    }
}

impl Functions for LambdaFunctions {
    async fn run(
        &self,
        _request: &ProcessInputRequest,
        events: &[ComputeGradientEvent],
    ) -> FunctionsRound {
        let outcomes = call_each(
            events,
            self.settings.policy,
            self.settings.memory_mb,
            |event| self.call(event),
        )
        .await;
        FunctionsRound {
            outcomes,
            ..FunctionsRound::default()
        }
    }

    fn concurrency(&self) -> usize {
        self.settings.policy.concurrency.max(1)
    }
}

/// A short description of a failed call: for an HTTP error the status and the body (a
/// function error from an emulator, a missing function), else the SDK's own chain.
fn sdk_error<E: std::error::Error + 'static>(
    error: &aws_sdk_lambda::error::SdkError<E, aws_sdk_lambda::config::http::HttpResponse>,
) -> String {
    match error {
        aws_sdk_lambda::error::SdkError::ServiceError(e) => {
            let raw = e.raw();
            let body = raw.body().bytes().unwrap_or_default();
            format!("HTTP {}: {}", raw.status().as_u16(), error_message(body))
        }
        other => aws_sdk_lambda::error::DisplayErrorContext(other).to_string(),
    }
}

/// The `errorType: errorMessage` of a Lambda error payload, or the raw payload.
pub fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct LambdaError {
        #[serde(rename = "errorType", default)]
        error_type: String,
        #[serde(rename = "errorMessage", default)]
        error_message: String,
    }
    match serde_json::from_slice::<LambdaError>(body) {
        Ok(e) if !e.error_message.is_empty() => format!("{}: {}", e.error_type, e.error_message),
        _ => String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
    }
}
