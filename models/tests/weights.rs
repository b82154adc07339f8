//! Weights round trips (bytes and safetensors) reproduce identical outputs; bad files are
//! rejected naming the offending keys.

mod common;

use std::collections::HashMap;

use common::{model, random_batch};
use peerless_models::{Architecture, Batch, Model, weights};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

fn outputs(m: &Model) -> Vec<f32> {
    let size = m.spec().arch.default_input_size();
    let (images, labels, shape) = random_batch(m.spec(), 2, size, 42);
    m.predict(&Batch {
        images: &images,
        labels: &labels,
        shape,
    })
    .unwrap()
}

#[test]
fn bytes_round_trip_reproduces_outputs_bit_for_bit() {
    let a = model(Architecture::MobileNetV3Small, 1);
    let mut b = model(Architecture::MobileNetV3Small, 2);
    assert_ne!(outputs(&a), outputs(&b));
    b.load_bytes(&a.to_bytes().unwrap()).unwrap();
    assert_eq!(outputs(&a), outputs(&b));
    assert_eq!(a.buffers().unwrap(), b.buffers().unwrap());
}

#[test]
fn corrupted_truncated_or_foreign_blobs_are_rejected() {
    let a = model(Architecture::TinyCnn, 1);
    let blob = a.to_bytes().unwrap();
    let mut flipped = blob.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(
        weights::decode(&flipped)
            .unwrap_err()
            .to_string()
            .contains("checksum")
    );
    assert!(
        weights::decode(&blob[..blob.len() - 4])
            .unwrap_err()
            .to_string()
            .contains("truncated")
    );
    assert!(
        weights::decode(b"GIF89a....")
            .unwrap_err()
            .to_string()
            .contains("magic")
    );
    let mut other = model(Architecture::SqueezeNet1_1, 1);
    assert!(
        other
            .load_bytes(&blob)
            .unwrap_err()
            .to_string()
            .contains("TinyCnn")
    );
}

#[test]
fn safetensors_round_trip_uses_torchvision_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let a = model(Architecture::MobileNetV3Small, 1);
    a.save_safetensors(&path).unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let names = file.names();
    assert!(names.contains(&"features.0.0.weight"));
    assert!(names.contains(&"features.0.1.num_batches_tracked"));
    assert!(names.contains(&"classifier.3.bias"));
    assert_eq!(
        file.tensor("classifier.0.weight").unwrap().shape(),
        [1024, 576]
    );

    let mut b = model(Architecture::MobileNetV3Small, 2);
    b.load_safetensors(&path).unwrap();
    assert_eq!(outputs(&a), outputs(&b));
}

#[test]
fn safetensors_mismatches_name_every_offending_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let a = model(Architecture::TinyCnn, 1);
    let good =
        weights::to_safetensors(a.table(), &a.params().unwrap(), &a.buffers().unwrap()).unwrap();
    let file = SafeTensors::deserialize(&good).unwrap();

    let mut tensors: HashMap<String, TensorView<'_>> = file.tensors().into_iter().collect();
    tensors.remove("fc1.bias");
    let wrong = vec![0u8; 4 * 3];
    tensors.insert(
        "fc2.bias".into(),
        TensorView::new(Dtype::F32, vec![3], &wrong).unwrap(),
    );
    tensors.insert(
        "extra.weight".into(),
        TensorView::new(Dtype::F32, vec![3], &wrong).unwrap(),
    );
    std::fs::write(&path, safetensors::serialize(tensors, None).unwrap()).unwrap();

    let mut b = model(Architecture::TinyCnn, 2);
    let err = b.load_safetensors(&path).unwrap_err().to_string();
    assert!(err.contains("missing `fc1.bias`"), "{err}");
    assert!(err.contains("`fc2.bias` has shape [3]"), "{err}");
    assert!(err.contains("unexpected `extra.weight`"), "{err}");

    std::fs::write(&path, b"not a safetensors file").unwrap();
    let err = b.load_safetensors(&path).unwrap_err().to_string();
    assert!(err.contains("cannot parse"), "{err}");
    let err = b
        .load_safetensors(&dir.path().join("missing.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.safetensors"), "{err}");
}

#[test]
fn set_params_rejects_a_wrong_length_naming_both() {
    let mut m = model(Architecture::TinyCnn, 1);
    let n = m.num_params();
    let err = m.set_params(&vec![0.0; n + 1]).unwrap_err().to_string();
    assert!(
        err.contains(&n.to_string()) && err.contains(&(n + 1).to_string()),
        "{err}"
    );
}
