//! The flat-gradient step: gradients against finite differences, loss definitions, buffers,
//! and training making the loss go down.

mod common;

use common::{model, random_batch};
use peerless_models::optim::{OptimizerConfig, OptimizerKind};
use peerless_models::{Architecture, Batch, Loss, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn tiny_cnn_gradient_matches_finite_differences() {
    let mut m = model(Architecture::TinyCnn, 11);
    let (images, labels, shape) = random_batch(m.spec(), 8, 12, 5);
    let batch = Batch {
        images: &images,
        labels: &labels,
        shape,
    };
    let mut grad = vec![0.0; m.num_params()];
    m.grad_step(&batch, Loss::CrossEntropy, &mut grad).unwrap();
    let weights = m.params().unwrap();

    // Probe coordinates in every tensor, with the largest gradients of each so the
    // comparison is not dominated by round-off.
    let mut coords = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for info in m.table().trainable() {
        let r = info.range();
        let best = r
            .clone()
            .max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs()))
            .unwrap();
        coords.push(best);
        coords.push(rng.random_range(r));
    }
    let eps = 1e-3f32;
    let mut checked = 0;
    for &i in &coords {
        let mut w = weights.clone();
        w[i] = weights[i] + eps;
        m.set_params(&w).unwrap();
        let plus = m.evaluate(&batch, Loss::CrossEntropy).unwrap().loss;
        w[i] = weights[i] - eps;
        m.set_params(&w).unwrap();
        let minus = m.evaluate(&batch, Loss::CrossEntropy).unwrap().loss;
        let fd = (plus - minus) / (2.0 * eps);
        let tol = 2e-3 + 0.05 * grad[i].abs();
        assert!(
            (fd - grad[i]).abs() <= tol,
            "coordinate {i} ({}): backward {} vs finite difference {fd}",
            m.table()
                .entries()
                .iter()
                .find(|e| e.range().contains(&i))
                .unwrap()
                .name,
            grad[i]
        );
        checked += 1;
    }
    assert_eq!(checked, coords.len());
    assert!(grad.iter().any(|&g| g.abs() > 1e-3), "gradient is all zero");
}

#[test]
fn cross_entropy_of_zero_logits_is_ln_classes_and_nll_gives_the_same_gradient() {
    let m = model(Architecture::TinyCnn, 1);
    let zeros = vec![0.0; m.num_params()];
    let mut m0 = model(Architecture::TinyCnn, 1);
    m0.set_params(&zeros).unwrap();
    let (images, labels, shape) = random_batch(m.spec(), 4, 28, 2);
    let batch = Batch {
        images: &images,
        labels: &labels,
        shape,
    };
    let ce = m0.evaluate(&batch, Loss::CrossEntropy).unwrap().loss;
    assert!((ce - 10f32.ln()).abs() < 1e-5, "{ce}");

    let mut g_ce = vec![0.0; m.num_params()];
    let mut g_nll = vec![0.0; m.num_params()];
    let a = m.grad_step(&batch, Loss::CrossEntropy, &mut g_ce).unwrap();
    let b = m.grad_step(&batch, Loss::Nll, &mut g_nll).unwrap();
    assert!((a.loss - b.loss).abs() < 1e-5);
    for (x, y) in g_ce.iter().zip(&g_nll) {
        assert!((x - y).abs() < 1e-5);
    }
}

#[test]
fn gradient_step_is_deterministic_and_rejects_a_wrong_buffer() {
    let m = model(Architecture::TinyCnn, 4);
    let (images, labels, shape) = random_batch(m.spec(), 4, 28, 9);
    let batch = Batch {
        images: &images,
        labels: &labels,
        shape,
    };
    let mut g1 = vec![0.0; m.num_params()];
    let mut g2 = vec![1.0; m.num_params()];
    m.grad_step(&batch, Loss::CrossEntropy, &mut g1).unwrap();
    m.grad_step(&batch, Loss::CrossEntropy, &mut g2).unwrap();
    assert_eq!(g1, g2);
    let mut short = vec![0.0; 10];
    let err = m
        .grad_step(&batch, Loss::CrossEntropy, &mut short)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("10") && err.contains(&m.num_params().to_string()),
        "{err}"
    );
}

#[test]
fn batch_norm_uses_batch_statistics_and_updates_running_stats() {
    let m = model(Architecture::MobileNetV3Small, 2);
    let before = m.buffers().unwrap();
    let (images, labels, shape) = random_batch(m.spec(), 4, 29, 3);
    let batch = Batch {
        images: &images,
        labels: &labels,
        shape,
    };
    let mut grad = vec![0.0; m.num_params()];
    let stats = m.grad_step(&batch, Loss::CrossEntropy, &mut grad).unwrap();
    assert!(stats.loss.is_finite());
    let after = m.buffers().unwrap();
    let mean = m.table().get("features.0.1.running_mean").unwrap().range();
    assert_ne!(
        before[mean.clone()],
        after[mean],
        "running mean did not move"
    );
    // Every trainable tensor receives a gradient (dropout may zero a few coordinates).
    for info in m.table().trainable() {
        assert!(
            grad[info.range()].iter().any(|&g| g != 0.0),
            "{} has no gradient",
            info.name
        );
    }
}

#[test]
fn sgd_training_lowers_the_loss_on_a_learnable_task() {
    // Class = which quadrant of the image is bright: learnable in a few dozen steps.
    let m = model(Architecture::TinyCnn, 5);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (n, size) = (32, 12);
    let mut images = vec![0.0f32; n * size * size];
    let mut labels = vec![0i64; n];
    for (i, label) in labels.iter_mut().enumerate() {
        let class = i % 4;
        *label = class as i64;
        let (oy, ox) = ((class / 2) * size / 2, (class % 2) * size / 2);
        for y in 0..size {
            for x in 0..size {
                let bright = (oy..oy + size / 2).contains(&y) && (ox..ox + size / 2).contains(&x);
                images[i * size * size + y * size + x] =
                    if bright { 1.0 } else { 0.0 } + rng.random_range(-0.2..0.2);
            }
        }
    }
    let batch = Batch {
        images: &images,
        labels: &labels,
        shape: [n, 1, size, size],
    };
    let config = OptimizerConfig {
        momentum: Some(0.9),
        ..Default::default()
    };
    let mut t = Trainer::new(m, Loss::CrossEntropy, OptimizerKind::Sgd, &config).unwrap();
    let first = t.model().evaluate(&batch, Loss::CrossEntropy).unwrap();
    for _ in 0..60 {
        t.step(&batch, 0.05).unwrap();
    }
    let last = t.model().evaluate(&batch, Loss::CrossEntropy).unwrap();
    assert!(
        last.loss < 0.5 * first.loss,
        "loss {} -> {}",
        first.loss,
        last.loss
    );
    assert!(last.correct >= n * 3 / 4, "{} of {n} correct", last.correct);
    assert_eq!(t.weights(), t.model().params().unwrap().as_slice());
}

/// Dropout masks from an explicit seed: two separately built models (as two processes, or
/// a peer and a function, would hold) give the same gradient bits for the same seed, and
/// another seed draws other masks.
#[test]
fn seeded_steps_give_the_same_gradient_in_separate_models() {
    let a = model(Architecture::MobileNetV3Small, 4);
    let b = model(Architecture::MobileNetV3Small, 4);
    // Eight images: the CPU step runs in two parts, each drawing its rows of the masks.
    let (images, labels, shape) = random_batch(a.spec(), 8, 8, 6);
    let batch = Batch {
        images: &images,
        labels: &labels,
        shape,
    };
    let step = |m: &peerless_models::Model, seed: u64| {
        let mut grad = vec![0.0f32; m.num_params()];
        let stats = m
            .grad_step_seeded(&batch, Loss::CrossEntropy, &mut grad, seed)
            .unwrap();
        (grad.iter().map(|g| g.to_bits()).collect::<Vec<_>>(), stats)
    };
    let (ga, sa) = step(&a, 77);
    let (gb, sb) = step(&b, 77);
    assert_eq!(ga, gb, "same seed, same gradient bits");
    assert_eq!(sa.loss.to_bits(), sb.loss.to_bits());
    let (gc, _) = step(&a, 78);
    assert_ne!(ga, gc, "another seed, other dropout masks");
    let (ga2, _) = step(&a, 77);
    assert_eq!(ga, ga2, "the device's generator plays no part");
}
