//! The `compute_gradient` Lambda function (deployed as `bootstrap` on `provided.al2023`).
//! One handler state lives for the whole execution environment, so warm invocations reuse
//! the store client, the model and the round's weights.

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use peerless_lambda::allowed::{ALLOWED_STORE_ENV, AllowedStore};
use peerless_lambda::faults::FaultPlan;
use peerless_lambda::{ComputeGradient, ComputeGradientError, ComputeGradientEvent};
use tokio::sync::Mutex;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    peerless_models::memory::retain_freed_memory();
    lambda_runtime::tracing::init_default_subscriber();
    let faults = FaultPlan::from_env()?;
    let allowed = AllowedStore::from_env();
    match &allowed {
        Some(store) => tracing::info!(store = store.url(), "events may only name this store"),
        None => tracing::warn!(
            "{ALLOWED_STORE_ENV} is not set: events may name any store the function's role \
             can reach; set it to the store this function serves"
        ),
    }
    let state = Arc::new(Mutex::new(
        ComputeGradient::new()
            .with_faults(faults)
            .with_allowed_store(allowed),
    ));
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ComputeGradientEvent>| {
            let state = state.clone();
            async move {
                let mut handler = state.lock().await;
                let result = handler.handle(&event.payload).await;
                match result {
                    Ok(mut response) => {
                        let config = &event.context.env_config;
                        response.runtime.function_name = Some(config.function_name.clone());
                        response.runtime.request_id = Some(event.context.request_id.clone());
                        response.runtime.memory_limit_mb = u32::try_from(config.memory).ok();
                        Ok(response)
                    }
                    Err(error) => {
                        tracing::error!(
                            error_type = error.error_type(),
                            batch_key = %event.payload.batch_key,
                            "{error}"
                        );
                        Err::<_, ComputeGradientError>(error)
                    }
                }
            }
        },
    ))
    .await
}
