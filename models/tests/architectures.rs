//! Each architecture against torchvision: exact parameter counts, `state_dict` keys and
//! shapes, output shapes, and input validation.

mod common;

use common::{cpu, model, random_batch};
use peerless_models::{Architecture, Batch, Loss, Model, ModelSpec};

fn shape_of(m: &Model, key: &str) -> Vec<usize> {
    m.table()
        .get(key)
        .unwrap_or_else(|| panic!("no tensor `{key}`"))
        .shape
        .clone()
}

fn output_shape(m: &Model, n: usize) -> usize {
    let size = m.spec().arch.default_input_size();
    let (images, labels, shape) = random_batch(m.spec(), n, size, 1);
    let out = m
        .predict(&Batch {
            images: &images,
            labels: &labels,
            shape,
        })
        .unwrap();
    out.len()
}

#[test]
fn squeezenet1_1_matches_torchvision() {
    let m = model(Architecture::SqueezeNet1_1, 0);
    assert_eq!(m.num_params(), 727_626);
    assert_eq!(m.table().num_buffers(), 0);
    assert_eq!(m.table().entries().len(), 52);
    assert_eq!(shape_of(&m, "features.0.weight"), [64, 3, 3, 3]);
    assert_eq!(shape_of(&m, "features.3.squeeze.weight"), [16, 64, 1, 1]);
    assert_eq!(
        shape_of(&m, "features.12.expand3x3.weight"),
        [256, 64, 3, 3]
    );
    assert_eq!(shape_of(&m, "classifier.1.weight"), [10, 512, 1, 1]);
    assert_eq!(output_shape(&m, 2), 2 * 10);
}

#[test]
fn mobilenet_v3_small_matches_torchvision() {
    let m = model(Architecture::MobileNetV3Small, 0);
    assert_eq!(m.num_params(), 1_528_106);
    assert_eq!(shape_of(&m, "features.0.0.weight"), [16, 3, 3, 3]);
    assert_eq!(shape_of(&m, "features.0.1.weight"), [16]);
    assert_eq!(shape_of(&m, "features.0.1.running_var"), [16]);
    // Block 1 has no expansion: depthwise, squeeze-excitation, projection.
    assert_eq!(shape_of(&m, "features.1.block.0.0.weight"), [16, 1, 3, 3]);
    assert_eq!(shape_of(&m, "features.1.block.1.fc1.weight"), [8, 16, 1, 1]);
    assert_eq!(shape_of(&m, "features.1.block.2.0.weight"), [16, 16, 1, 1]);
    assert_eq!(shape_of(&m, "features.4.block.1.0.weight"), [96, 1, 5, 5]);
    assert_eq!(shape_of(&m, "features.12.0.weight"), [576, 96, 1, 1]);
    assert_eq!(shape_of(&m, "classifier.0.weight"), [1024, 576]);
    assert_eq!(shape_of(&m, "classifier.3.weight"), [10, 1024]);
    assert_eq!(output_shape(&m, 2), 2 * 10);
}

#[test]
fn vgg11_matches_torchvision() {
    let m = model(Architecture::Vgg11, 0);
    assert_eq!(m.num_params(), 128_807_306);
    assert_eq!(m.table().entries().len(), 22);
    assert_eq!(shape_of(&m, "features.0.weight"), [64, 3, 3, 3]);
    assert_eq!(shape_of(&m, "features.18.weight"), [512, 512, 3, 3]);
    assert_eq!(shape_of(&m, "classifier.0.weight"), [4096, 25088]);
    assert_eq!(shape_of(&m, "classifier.6.weight"), [10, 4096]);
    assert_eq!(output_shape(&m, 1), 10);
}

#[test]
fn tiny_cnn_is_small_and_takes_gray_images() {
    let m = model(Architecture::TinyCnn, 0);
    assert!(
        (1_000..=100_000).contains(&m.num_params()),
        "{}",
        m.num_params()
    );
    assert_eq!(m.spec().in_channels, 1);
    assert_eq!(output_shape(&m, 3), 3 * 10);
}

#[test]
fn num_classes_and_in_channels_change_the_stem_and_head() {
    let spec = ModelSpec::new(Architecture::SqueezeNet1_1)
        .with_num_classes(100)
        .with_in_channels(1);
    let m = Model::new(spec, &cpu(), 0).unwrap();
    assert_eq!(shape_of(&m, "features.0.weight"), [64, 1, 3, 3]);
    assert_eq!(shape_of(&m, "classifier.1.weight"), [100, 512, 1, 1]);
    assert_eq!(m.num_params(), 727_626 - 64 * 2 * 9 + 90 * 513);
}

#[test]
fn same_seed_same_weights_other_seed_other_weights() {
    let a = model(Architecture::MobileNetV3Small, 7).params().unwrap();
    let b = model(Architecture::MobileNetV3Small, 7).params().unwrap();
    let c = model(Architecture::MobileNetV3Small, 8).params().unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn initialisation_follows_torchvision_statistics() {
    let m = model(Architecture::Vgg11, 3);
    let w = m.params().unwrap();
    let std_of = |key: &str| {
        let r = m.table().get(key).unwrap().range();
        let v = &w[r];
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    };
    // kaiming_normal_(fan_out): std = sqrt(2 / (512 * 9)); linear: normal(0, 0.01); biases 0.
    assert!((std_of("features.18.weight") - (2.0f64 / 4608.0).sqrt()).abs() < 1e-3);
    assert!((std_of("classifier.0.weight") - 0.01).abs() < 1e-4);
    let bias = m.table().get("classifier.0.bias").unwrap().range();
    assert!(w[bias].iter().all(|&x| x == 0.0));
    let mb = model(Architecture::MobileNetV3Small, 3);
    let buffers = mb.buffers().unwrap();
    let var = mb.table().get("features.0.1.running_var").unwrap().range();
    assert!(buffers[var].iter().all(|&x| x == 1.0));
}

#[test]
fn bad_batches_are_rejected_with_the_reason() {
    let m = model(Architecture::SqueezeNet1_1, 0);
    let mut grad = vec![0.0; m.num_params()];
    let (images, labels, shape) = random_batch(m.spec(), 2, 16, 1);
    let err = m
        .grad_step(
            &Batch {
                images: &images,
                labels: &labels,
                shape,
            },
            Loss::CrossEntropy,
            &mut grad,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 17x17"), "{err}");

    let (images, mut labels, shape) = random_batch(m.spec(), 2, 21, 1);
    labels[1] = 10;
    let err = m
        .evaluate(
            &Batch {
                images: &images,
                labels: &labels,
                shape,
            },
            Loss::CrossEntropy,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 10"), "{err}");

    let err = m
        .grad_step(
            &Batch {
                images: &images[1..],
                labels: &labels,
                shape,
            },
            Loss::CrossEntropy,
            &mut grad,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("pixel values"), "{err}");
}

#[test]
fn unknown_names_list_the_valid_ones() {
    let err = "resnet50".parse::<Architecture>().unwrap_err().to_string();
    for name in ["tiny_cnn", "squeezenet1_1", "mobilenet_v3_small", "vgg11"] {
        assert!(err.contains(name), "{err}");
    }
    let err = "mse".parse::<Loss>().unwrap_err().to_string();
    assert!(
        err.contains("cross_entropy") && err.contains("nll"),
        "{err}"
    );
    assert_eq!(
        "mobilenet-v3-small".parse::<Architecture>().unwrap(),
        Architecture::MobileNetV3Small
    );
}
