//! The `process_input` Lambda function (deployed as `bootstrap` on `provided.al2023`):
//! the first task of the Step Functions round, expanding a peer's request into one
//! `compute_gradient` event per batch.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use peerless_lambda::{ProcessInputError, ProcessInputOutput, ProcessInputRequest, process_input};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ProcessInputRequest>| async move {
            let request = &event.payload;
            let result: Result<ProcessInputOutput, ProcessInputError> =
                process_input::expand(request);
            match &result {
                Ok(output) => tracing::info!(
                    rank = request.context.rank,
                    round = request.context.round,
                    events = output.events.len(),
                    "request expanded"
                ),
                Err(error) => tracing::error!(error_type = error.error_type(), "{error}"),
            }
            result
        },
    ))
    .await
}
