//! Optimizer steps against values computed by hand from PyTorch's update rules.

use super::*;

fn run(kind: OptimizerKind, config: OptimizerConfig, lr: f32, steps: usize) -> Vec<f32> {
    let mut w = vec![1.0f32, -2.0];
    let g = vec![0.5f32, -0.25];
    let mut opt = config.build(kind, 2).unwrap();
    for _ in 0..steps {
        opt.step(&mut w, &g, lr).unwrap();
    }
    w
}

fn assert_close(got: &[f32], want: &[f32]) {
    for (a, b) in got.iter().zip(want) {
        assert!((a - b).abs() < 1e-5, "got {got:?}, want {want:?}");
    }
}

#[test]
fn sgd_plain() {
    assert_close(
        &run(OptimizerKind::Sgd, OptimizerConfig::default(), 0.1, 1),
        &[0.95, -1.975],
    );
}

#[test]
fn sgd_momentum_and_weight_decay_two_steps() {
    let config = OptimizerConfig {
        momentum: Some(0.9),
        weight_decay: Some(0.1),
        ..Default::default()
    };
    // step 1: d = g + 0.1 w = [0.6, -0.45]; buf = d; w = [0.94, -1.955]
    // step 2: d = [0.594, -0.4455]; buf = 0.9 [0.6, -0.45] + d = [1.134, -0.8505]
    //         w = [0.94 - 0.1134, -1.955 + 0.08505]
    assert_close(
        &run(OptimizerKind::Sgd, config, 0.1, 2),
        &[0.8266, -1.86995],
    );
}

#[test]
fn adam_first_step_is_lr_times_sign() {
    assert_close(
        &run(OptimizerKind::Adam, OptimizerConfig::default(), 0.1, 1),
        &[0.9, -1.9],
    );
}

#[test]
fn adamw_decays_weights_before_the_adam_step() {
    // w *= 1 - 0.1 * 0.01, then w -= 0.1 * sign(g)
    assert_close(
        &run(OptimizerKind::AdamW, OptimizerConfig::default(), 0.1, 1),
        &[0.999 - 0.1, -1.998 + 0.1],
    );
}

#[test]
fn rmsprop_first_step() {
    // sq = 0.01 g^2, g / sqrt(sq) = 10 sign(g)
    assert_close(
        &run(OptimizerKind::RmsProp, OptimizerConfig::default(), 0.01, 1),
        &[0.9, -1.9],
    );
}

#[test]
fn adagrad_two_steps() {
    let s = 0.1 / 2f32.sqrt();
    assert_close(
        &run(OptimizerKind::Adagrad, OptimizerConfig::default(), 0.1, 2),
        &[0.9 - s, -1.9 + s],
    );
}

#[test]
fn parallel_chunks_give_the_same_result_as_one_loop() {
    let n = 3 * CHUNK + 17;
    let g: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let mut w: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut reference = w.clone();
    let mut opt = OptimizerConfig::default()
        .build(OptimizerKind::Adam, n)
        .unwrap();
    opt.step(&mut w, &g, 0.01).unwrap();
    for i in 0..n {
        let (b1, b2) = (0.9f32, 0.999f32);
        let m = (1.0 - b1) * g[i];
        let v = (1.0 - b2) * g[i] * g[i];
        let denom = v.sqrt() / (1.0 - b2).sqrt() + 1e-8;
        reference[i] -= 0.01 / (1.0 - b1) * m / denom;
    }
    assert_eq!(w, reference);
}

#[test]
fn wrong_gradient_length_names_both_lengths() {
    let mut opt = OptimizerConfig::default()
        .build(OptimizerKind::Sgd, 3)
        .unwrap();
    let err = opt
        .step(&mut [0.0; 3], &[0.0; 2], 0.1)
        .unwrap_err()
        .to_string();
    assert!(err.contains('2') && err.contains('3'), "{err}");
}

#[test]
fn unknown_optimizer_lists_valid_ones() {
    let err = "lbfgs".parse::<OptimizerKind>().unwrap_err().to_string();
    for name in ["sgd", "adam", "adamw", "rmsprop", "adagrad"] {
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn invalid_hyper_parameters_are_rejected() {
    let bad = OptimizerConfig {
        momentum: Some(1.5),
        ..Default::default()
    };
    assert!(bad.build(OptimizerKind::Sgd, 1).is_err());
}
