//! `peerless train`: single-process training with validation, test accuracy, early stopping,
//! ReduceLROnPlateau and per-epoch metrics.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use peerless_data::partition::train_val_split;
use peerless_data::{Partition, Split, load};
use peerless_models::{DeviceChoice, Model, Trainer, select_device};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use peerless_runtime::eval::evaluate;
use peerless_runtime::pipeline::{BatchBuffers, Pipeline};

use crate::cli::TrainArgs;

/// One line of `--metrics-out`.
#[derive(Serialize)]
struct EpochMetrics {
    epoch: u32,
    lr: f32,
    train_loss: f64,
    train_accuracy: f64,
    val_loss: f64,
    val_accuracy: f64,
    test_loss: f64,
    test_accuracy: f64,
    train_time_s: f64,
    eval_time_s: f64,
    elapsed_s: f64,
    images_per_s: f64,
    peak_rss_bytes: Option<u64>,
    cpu_time_s: Option<f64>,
}

pub fn run(args: TrainArgs, device: DeviceChoice) -> Result<()> {
    let t = &args.training;
    let config = t.to_config();
    let device = select_device(device)?;
    let kind = args.data.dataset;
    let dir = args.data.data_dir.as_deref();
    let mut train_set = load(kind, dir, Split::Train).context("loading the training set")?;
    let test_set = load(kind, dir, Split::Test).context("loading the test set")?;
    if let Some(limit) = args.limit {
        let n = (limit as usize).min(train_set.len());
        train_set = train_set.slice(0..n)?;
    }
    // One shard holding everything, split 90/10 into train and validation as each peer does.
    let shard = Partition::Iid
        .assign(train_set.labels(), 1, t.seed, 2)
        .context("splitting train/validation")?
        .remove(0);
    let (train_idx, val_idx) = train_val_split(&shard);
    let val_set = train_set.subset(val_idx)?;
    let train_idx = train_idx.to_vec();

    let pipeline = Pipeline::new(
        t.model,
        kind,
        train_set.shape(),
        train_set.num_classes(),
        args.data.resize.map(|r| r as usize),
    )?;
    let (mut train_tf, mut eval_tf) = pipeline.transforms(kind, train_set.shape())?;
    let model = Model::new(pipeline.spec, &device, t.seed)?;
    tracing::info!(
        model = %t.model,
        parameters = model.num_params(),
        dataset = %kind,
        train = train_idx.len(),
        validation = val_set.len(),
        test = test_set.len(),
        "training"
    );
    let mut trainer = Trainer::new(model, t.loss, t.optimizer, &config.optimizer_config())?;
    let (mut plateau, mut stopper) = config.schedule()?;
    let mut metrics = match &t.metrics_out {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("creating metrics file {}", path.display()))?,
        )),
        None => None,
    };

    let batch_size = t.batch_size as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(t.seed);
    let mut buffers = BatchBuffers::default();
    let start = Instant::now();
    let mut order = train_idx;
    for epoch in 1..=t.epochs {
        let lr = plateau.lr();
        order.shuffle(&mut rng);
        let bar = crate::progress::bar(order.len() as u64, &format!("epoch {epoch}"));
        let epoch_start = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        for chunk in order.chunks(batch_size) {
            let batch = buffers.fill(&mut train_tf, &train_set, chunk, &mut rng)?;
            let stats = trainer.step(&batch, lr)?;
            loss_sum += stats.loss as f64 * chunk.len() as f64;
            correct += stats.correct;
            seen += chunk.len();
            bar.inc(chunk.len() as u64);
            bar.set_message(format!(
                "loss {:.4} {:.0} img/s",
                loss_sum / seen as f64,
                seen as f64 / epoch_start.elapsed().as_secs_f64()
            ));
        }
        bar.finish_and_clear();
        let train_time = epoch_start.elapsed().as_secs_f64();
        let eval_start = Instant::now();
        let model = trainer.model();
        let val = evaluate(model, &val_set, &mut eval_tf, t.loss, 256)?;
        let test = evaluate(model, &test_set, &mut eval_tf, t.loss, 256)?;
        let eval_time = eval_start.elapsed().as_secs_f64();
        let m = EpochMetrics {
            epoch,
            lr,
            train_loss: loss_sum / seen as f64,
            train_accuracy: correct as f64 / seen as f64,
            val_loss: val.loss,
            val_accuracy: val.accuracy,
            test_loss: test.loss,
            test_accuracy: test.accuracy,
            train_time_s: train_time,
            eval_time_s: eval_time,
            elapsed_s: start.elapsed().as_secs_f64(),
            images_per_s: seen as f64 / train_time,
            peak_rss_bytes: peerless_runtime::sys::peak_rss_bytes(),
            cpu_time_s: peerless_runtime::sys::cpu_time_s(),
        };
        tracing::info!(
            "epoch {epoch}: train loss {:.4}, val loss {:.4}, test accuracy {:.2}%, {:.0} img/s, {:.1}s",
            m.train_loss,
            m.val_loss,
            100.0 * m.test_accuracy,
            m.images_per_s,
            m.elapsed_s
        );
        if let Some(w) = metrics.as_mut() {
            serde_json::to_writer(&mut *w, &m)?;
            writeln!(w)?;
            w.flush()?;
        }
        plateau.step(val.loss as f32);
        if stopper.should_stop(val.loss as f32) {
            tracing::info!(
                "early stopping: no better validation loss for {} epochs",
                t.patience
            );
            break;
        }
    }
    if let Some(path) = &args.save {
        trainer.model().save_safetensors(path)?;
        tracing::info!("saved weights to {}", path.display());
    }
    Ok(())
}
