//! `process_input` expansion and the JSON shape of the events.

mod common;

use peerless_lambda::process_input::{STEP_FUNCTIONS_STATE_LIMIT, expand};
use peerless_lambda::{
    ComputeGradientEvent, ProcessInputError, ProcessInputRequest, batch_seed, gradient_key,
};
use serde_json::json;

async fn request(batch_count: u32, first_batch: u32) -> ProcessInputRequest {
    let f = common::fixture().await;
    ProcessInputRequest {
        context: f.context(7, 1, "runs/x/weights-7.bin"),
        batch_count,
        first_batch,
        seed: 1234,
        batch_prefix: String::new(),
        gradient_prefix: "runs/x/grads".into(),
    }
}

#[tokio::test]
async fn expands_one_event_per_batch() {
    let req = request(3, 2).await;
    let out = expand(&req).unwrap();
    assert_eq!(out.events.len(), 3);
    for (i, e) in out.events.iter().enumerate() {
        let b = 2 + i as u32;
        assert_eq!(e.batch, b);
        assert_eq!(e.context, req.context);
        assert_eq!(e.batch_key, format!("peer-1/batch-{b:04}.bin"));
        assert_eq!(
            e.gradient_key,
            format!("runs/x/grads/round-000007/rank-001/batch-{b:04}.grad")
        );
        assert_eq!(e.augment_seed, batch_seed(1234, 7, 1, b));
    }
    let seeds: std::collections::HashSet<u64> = out.events.iter().map(|e| e.augment_seed).collect();
    assert_eq!(seeds.len(), 3, "batches share an augmentation seed");
    assert!(seeds.iter().all(|&s| s < 1 << 53));
    assert_ne!(batch_seed(1234, 7, 1, 2), batch_seed(1234, 8, 1, 2));
    assert_ne!(batch_seed(1234, 7, 1, 2), batch_seed(1234, 7, 0, 2));
    assert_ne!(batch_seed(1234, 7, 1, 2), batch_seed(1235, 7, 1, 2));

    let mut prefixed = req.clone();
    prefixed.batch_prefix = "splits/fmnist/".into();
    prefixed.gradient_prefix = String::new();
    let e = &expand(&prefixed).unwrap().events[0];
    assert_eq!(e.batch_key, "splits/fmnist/peer-1/batch-0002.bin");
    assert_eq!(e.gradient_key, gradient_key("", 7, 1, 2));
    assert_eq!(e.gradient_key, "round-000007/rank-001/batch-0002.grad");
}

#[tokio::test]
async fn accepts_the_original_field_names_and_flat_json() {
    let req = request(2, 0).await;
    let mut value = serde_json::to_value(&req).unwrap();
    // Flattened: the context's fields sit at the top level.
    assert_eq!(value["round"], json!(7));
    assert_eq!(value["weights_key"], json!("runs/x/weights-7.bin"));
    let obj = value.as_object_mut().unwrap();
    let rank = obj.remove("rank").unwrap();
    let count = obj.remove("batch_count").unwrap();
    obj.insert("worker".into(), rank);
    obj.insert("batch_number".into(), count);
    obj.remove("first_batch");
    let parsed: ProcessInputRequest = serde_json::from_value(value).unwrap();
    assert_eq!(parsed, req);

    let event = &expand(&req).unwrap().events[1];
    let v = serde_json::to_value(event).unwrap();
    for field in [
        "run_id",
        "round",
        "rank",
        "world_size",
        "model",
        "loss",
        "transform",
        "store",
        "weights_key",
        "batch",
        "augment_seed",
        "batch_key",
        "gradient_key",
    ] {
        assert!(v.get(field).is_some(), "event JSON lacks {field}: {v}");
    }
    assert_eq!(v["model"]["arch"], json!("tiny_cnn"));
    assert_eq!(v["loss"], json!("cross_entropy"));
    assert_eq!(v["transform"]["size"], json!([12, 12]));
    let back: ComputeGradientEvent = serde_json::from_value(v).unwrap();
    assert_eq!(&back, event);
}

#[tokio::test]
async fn refuses_bad_requests() {
    let mut req = request(0, 0).await;
    let err = expand(&req).unwrap_err();
    assert!(err.to_string().contains("batch_count is 0"), "{err}");
    req.batch_count = 1;
    req.context.rank = 2;
    assert!(
        expand(&req)
            .unwrap_err()
            .to_string()
            .contains("rank 2 is not below world_size 2")
    );
    req.context.rank = 0;
    req.context.run_id = "xyz".into();
    assert_eq!(expand(&req).unwrap_err().error_type(), "InvalidRequest");
    req.context.run_id = common::fixture().await.run_id.to_string();
    req.gradient_prefix = "bad prefix".into();
    assert!(expand(&req).unwrap_err().to_string().contains("bad prefix"));
    req.gradient_prefix = "g".into();
    req.batch_count = 2000;
    match expand(&req).unwrap_err() {
        ProcessInputError::TooLarge {
            bytes,
            limit,
            batches,
        } => {
            assert_eq!(limit, STEP_FUNCTIONS_STATE_LIMIT);
            assert_eq!(batches, 2000);
            assert!(bytes > limit);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}
