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

/// The gradient of step `s`: varies per element and per step, so every state vector
/// matters to the next update.
fn varying_grad(n: usize, s: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 31 + s * 17) % 23) as f32 - 11.0) / 7.0)
        .collect()
}

/// Every optimizer, with options that give it every state vector it can have.
fn stateful_configs() -> Vec<(OptimizerKind, OptimizerConfig)> {
    let momentum = OptimizerConfig {
        momentum: Some(0.9),
        weight_decay: Some(0.01),
        ..Default::default()
    };
    vec![
        (OptimizerKind::Sgd, OptimizerConfig::default()),
        (OptimizerKind::Sgd, momentum),
        (
            OptimizerKind::Sgd,
            OptimizerConfig {
                nesterov: true,
                ..momentum
            },
        ),
        (OptimizerKind::Adam, OptimizerConfig::default()),
        (OptimizerKind::AdamW, OptimizerConfig::default()),
        (OptimizerKind::RmsProp, OptimizerConfig::default()),
        (OptimizerKind::RmsProp, momentum),
        (OptimizerKind::Adagrad, OptimizerConfig::default()),
    ]
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn restored_optimizers_continue_bit_identically() {
    let n = 37;
    for (kind, config) in stateful_configs() {
        let mut original = config.build(kind, n).unwrap();
        let mut w: Vec<f32> = (0..n).map(|i| (i as f32 - 18.0) / 10.0).collect();
        for s in 0..5 {
            original.step(&mut w, &varying_grad(n, s), 0.01).unwrap();
        }
        let w5 = w.clone();
        let state = original.state();
        assert_eq!(state.kind, kind);
        let mut restored = config.build(kind, n).unwrap();
        restored.restore(state.clone()).unwrap();
        assert_eq!(
            restored.state(),
            state,
            "{kind} {config:?}: state round trip"
        );
        let mut w_restored = w.clone();
        for s in 5..10 {
            let g = varying_grad(n, s);
            original.step(&mut w, &g, 0.01).unwrap();
            restored.step(&mut w_restored, &g, 0.01).unwrap();
        }
        assert_eq!(bits(&w), bits(&w_restored), "{kind} {config:?}");
        // A fresh optimizer (no restore) would have diverged: the state mattered.
        let mut fresh = config.build(kind, n).unwrap();
        let mut w_fresh = w5;
        for s in 5..10 {
            fresh.step(&mut w_fresh, &varying_grad(n, s), 0.01).unwrap();
        }
        if kind != OptimizerKind::Sgd || config.momentum.is_some() {
            assert_ne!(bits(&w), bits(&w_fresh), "{kind} {config:?}");
        }
    }
}

#[test]
fn exported_state_names_the_pytorch_vectors() {
    let names = |kind, config: OptimizerConfig| {
        let state = config.build(kind, 3).unwrap().state();
        state.vectors.keys().cloned().collect::<Vec<_>>()
    };
    let momentum = OptimizerConfig {
        momentum: Some(0.5),
        ..Default::default()
    };
    assert_eq!(
        names(OptimizerKind::Sgd, OptimizerConfig::default()),
        [""; 0]
    );
    assert_eq!(names(OptimizerKind::Sgd, momentum), ["momentum_buffer"]);
    assert_eq!(
        names(OptimizerKind::Adam, OptimizerConfig::default()),
        ["exp_avg", "exp_avg_sq"]
    );
    assert_eq!(
        names(OptimizerKind::RmsProp, momentum),
        ["momentum_buffer", "square_avg"]
    );
    assert_eq!(
        names(OptimizerKind::Adagrad, OptimizerConfig::default()),
        ["sum"]
    );
    let mut adam = OptimizerConfig::default()
        .build(OptimizerKind::Adam, 2)
        .unwrap();
    for _ in 0..3 {
        adam.step(&mut [1.0, 2.0], &[0.1, 0.2], 0.1).unwrap();
    }
    assert_eq!(adam.state().step, 3);
}

#[test]
fn mismatched_states_are_refused_and_leave_the_optimizer_unchanged() {
    let n = 4;
    let momentum = OptimizerConfig {
        momentum: Some(0.9),
        ..Default::default()
    };
    let mut adam = OptimizerConfig::default()
        .build(OptimizerKind::Adam, n)
        .unwrap();
    adam.step(&mut [1.0; 4], &[0.5; 4], 0.1).unwrap();
    let before = adam.state();

    // Another kind.
    let adamw = OptimizerConfig::default()
        .build(OptimizerKind::AdamW, n)
        .unwrap()
        .state();
    let err = adam.restore(adamw).unwrap_err().to_string();
    assert!(err.contains("adam") && err.contains("adamw"), "{err}");

    // Another length.
    let short = OptimizerConfig::default()
        .build(OptimizerKind::Adam, n - 1)
        .unwrap()
        .state();
    let err = adam.restore(short).unwrap_err().to_string();
    assert!(
        err.contains("exp_avg") && err.contains('3') && err.contains('4'),
        "{err}"
    );

    // A missing vector.
    let mut missing = before.clone();
    missing.vectors.remove("exp_avg_sq");
    let err = adam.restore(missing).unwrap_err().to_string();
    assert!(
        err.contains("exp_avg_sq") && err.contains("missing"),
        "{err}"
    );

    // A step counter Adam cannot hold.
    let mut huge = before.clone();
    huge.step = u64::MAX;
    assert!(matches!(
        adam.restore(huge),
        Err(ModelError::OptimizerState {
            optimizer: "adam",
            ..
        })
    ));
    assert_eq!(adam.state(), before, "failed restores changed nothing");

    // SGD with momentum into SGD without: an unexpected vector.
    let with_momentum = momentum.build(OptimizerKind::Sgd, n).unwrap().state();
    let mut plain = OptimizerConfig::default()
        .build(OptimizerKind::Sgd, n)
        .unwrap();
    let err = plain.restore(with_momentum).unwrap_err().to_string();
    assert!(err.contains("momentum_buffer"), "{err}");
}
