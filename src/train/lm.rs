//! Next-token language-model training of the built-in transformer on a token corpus.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{AdamW, LrSchedule, OptimConfig};
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::rng::SeededRng;
use crate::transformer::Transformer;

/// Settings of [`train_lm`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmTrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Tokens per sequence (at most the model's context).
    pub seq_len: usize,
    /// Learning rate over the run.
    pub lr: LrSchedule,
    /// AdamW settings, gradient clipping and weight decay.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Seed of the batch sampler.
    #[serde(default)]
    pub seed: u64,
    /// Report every this many steps (0: only the last).
    #[serde(default)]
    pub log_every: usize,
}

impl Default for LmTrainConfig {
    fn default() -> Self {
        LmTrainConfig {
            steps: 200,
            batch_size: 16,
            seq_len: 64,
            lr: LrSchedule {
                peak: 3e-3,
                warmup_steps: 20,
                decay: Default::default(),
                min_ratio: 0.1,
            },
            optim: OptimConfig::default(),
            seed: 0,
            log_every: 20,
        }
    }
}

/// One progress report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// Steps done.
    pub step: usize,
    /// Of this many.
    pub steps: usize,
    /// Mean training loss (nats per token) since the last report.
    pub loss: f64,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Gradient norm before clipping, last step.
    pub grad_norm: f64,
    /// Seconds since the start.
    pub elapsed_s: f64,
    /// Estimated seconds left.
    pub eta_s: f64,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Every progress report.
    pub logs: Vec<StepLog>,
    /// Mean training loss over the last report's steps.
    pub final_loss: f64,
    /// Wall time, seconds.
    pub wall_s: f64,
}

/// Mean next-token cross-entropy (nats per token) of `model` on `batch` (`[B, T + 1]`).
fn lm_loss(model: &Transformer, batch: &Tensor) -> Result<Tensor> {
    let (_, t1) = batch.size2()?;
    let inputs = batch.f_narrow(1, 0, t1 - 1)?;
    let targets = batch.f_narrow(1, 1, t1 - 1)?;
    let logits = model.forward_sequences(&inputs)?.logits;
    let v = logits.size()[2];
    Ok(logits
        .f_to_kind(Kind::Float)?
        .f_view([-1, v])?
        .f_cross_entropy_loss::<Tensor>(
            &targets.f_reshape([-1])?,
            None,
            tch::Reduction::Mean,
            -100,
            0.0,
        )?)
}

fn check_corpus(tokens: &[i64], window: usize, vocab: i64) -> Result<()> {
    if tokens.len() < window {
        return Err(Error::config(
            "corpus",
            format!(
                "has {} tokens, fewer than one sequence of {window}",
                tokens.len()
            ),
        ));
    }
    crate::model::check_tokens("corpus", tokens, vocab)
}

/// Trains `model` (every variable, proposal heads excepted) to predict the next token of
/// random windows of `tokens`, calling `log` with progress. Dropout is not used.
pub fn train_lm(
    model: &mut Transformer,
    tokens: &[i64],
    config: &LmTrainConfig,
    mut log: impl FnMut(&StepLog),
) -> Result<TrainReport> {
    config.lr.validate()?;
    if config.steps == 0 || config.batch_size == 0 || config.seq_len == 0 {
        return Err(Error::config(
            "train",
            "steps, batch_size and seq_len must be at least 1",
        ));
    }
    if config.seq_len > model.config().max_context {
        return Err(Error::config(
            "seq_len",
            format!(
                "is {}, longer than the model's context of {}",
                config.seq_len,
                model.config().max_context
            ),
        ));
    }
    let window = config.seq_len + 1;
    check_corpus(tokens, window, model.config().vocab_size)?;
    let device = model.info().device;
    let mut opt = AdamW::new(model.var_store(), config.optim, |name| {
        !name.starts_with("heads")
    })?;
    let mut rng = SeededRng::new(config.seed);
    let t0 = Instant::now();
    let mut logs = Vec::new();
    let (mut sum, mut count) = (0.0, 0usize);
    for step in 0..config.steps {
        let mut flat = Vec::with_capacity(config.batch_size * window);
        for _ in 0..config.batch_size {
            let start = rng.below((tokens.len() - window + 1) as u64) as usize;
            flat.extend_from_slice(&tokens[start..start + window]);
        }
        let batch = Tensor::from_slice(&flat)
            .f_view([config.batch_size as i64, window as i64])?
            .f_to_device(device)?;
        opt.zero_grad()?;
        let loss = lm_loss(model, &batch)?;
        loss.f_backward()?;
        let grad_norm = opt.clip()?;
        let lr = config.lr.at(step, config.steps);
        opt.step(lr)?;
        sum += f64::try_from(&loss)?;
        count += 1;
        let done = step + 1;
        if done == config.steps || (config.log_every > 0 && done % config.log_every == 0) {
            let elapsed_s = t0.elapsed().as_secs_f64();
            let entry = StepLog {
                step: done,
                steps: config.steps,
                loss: sum / count as f64,
                lr,
                grad_norm,
                elapsed_s,
                eta_s: elapsed_s / done as f64 * (config.steps - done) as f64,
            };
            log(&entry);
            logs.push(entry);
            (sum, count) = (0.0, 0);
        }
    }
    let final_loss = logs.last().map_or(f64::NAN, |l| l.loss);
    Ok(TrainReport {
        logs,
        final_loss,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}

/// Mean next-token loss (nats per token) of `model` over consecutive windows of `seq_len + 1`
/// tokens of `tokens` (at most `max_windows` of them), without gradients.
pub fn evaluate_lm(
    model: &Transformer,
    tokens: &[i64],
    seq_len: usize,
    max_windows: usize,
) -> Result<f64> {
    let window = seq_len + 1;
    check_corpus(tokens, window, model.config().vocab_size)?;
    let _guard = tch::no_grad_guard();
    let device = model.info().device;
    let mut total = 0.0;
    let mut n = 0;
    for chunk in tokens.chunks_exact(window).take(max_windows.max(1)) {
        let batch = Tensor::from_slice(chunk)
            .f_view([1, window as i64])?
            .f_to_device(device)?;
        total += f64::try_from(lm_loss(model, &batch)?)?;
        n += 1;
    }
    Ok(total / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::TransformerConfig;
    use crate::DType;

    #[test]
    fn loss_falls_on_a_repeating_corpus() {
        let mut cfg = TransformerConfig::tiny(12, 0);
        cfg.dtype = DType::F32;
        let mut model = Transformer::new_for_training(cfg, 3, tch::Device::Cpu).unwrap();
        let corpus: Vec<i64> = (0..600).map(|i| [1, 5, 2, 9, 4][i % 5]).collect();
        let before = evaluate_lm(&model, &corpus, 16, 8).unwrap();
        let config = LmTrainConfig {
            steps: 60,
            batch_size: 8,
            seq_len: 16,
            log_every: 20,
            ..LmTrainConfig::default()
        };
        let mut seen = 0;
        let report = train_lm(&mut model, &corpus, &config, |_| seen += 1).unwrap();
        let after = evaluate_lm(&model, &corpus, 16, 8).unwrap();
        assert_eq!(seen, 3);
        assert!(after < before * 0.2, "loss {before:.3} -> {after:.3}");
        assert!(report.logs[2].loss < report.logs[0].loss);
    }

    #[test]
    fn bad_settings_are_errors() {
        let mut model =
            Transformer::new_seeded(TransformerConfig::tiny(12, 0), 3, tch::Device::Cpu).unwrap();
        let corpus: Vec<i64> = vec![1; 100];
        let long = LmTrainConfig {
            seq_len: 1000,
            ..LmTrainConfig::default()
        };
        assert!(train_lm(&mut model, &corpus, &long, |_| {}).is_err());
        let short = LmTrainConfig {
            seq_len: 120,
            ..LmTrainConfig::default()
        };
        assert!(train_lm(&mut model, &corpus, &short, |_| {}).is_err());
        let oov = vec![99i64; 100];
        let ok = LmTrainConfig {
            seq_len: 16,
            ..LmTrainConfig::default()
        };
        assert!(train_lm(&mut model, &oov, &ok, |_| {}).is_err());
    }
}
