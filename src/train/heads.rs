//! Training proposal heads (Stern et al. §6, Medusa): a loss over the `H` future tokens the
//! heads predict, with the base frozen or fine-tuned alongside, on a corpus or on the base's
//! own greedy decodes (sequence-level distillation), with checkpoints that resume and a
//! validation pass that measures the mean accepted block size.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use super::checkpoint::{resume, save_checkpoint, CheckpointState};
use super::trainee::HeadsTrainee;
use super::{AdamW, LrSchedule, OptimConfig};
use crate::acceptance::Exact;
use crate::config::DecodeConfig;
use crate::decoder::{Blockwise, BlockwiseDecoder};
use crate::error::{Error, Result};
use crate::heads::Dropout;
use crate::proposer::HeadsProposer;
use crate::rng::SeededRng;

/// Stern et al.'s training regimes. Distillation is a property of the data (the base model's
/// own greedy decodes, see [`distill`](super::distill)); fine-tuning trains the base too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Regime {
    /// Heads only, on the corpus.
    Frozen,
    /// Base and heads, on the corpus.
    FineTuned,
    /// Heads only, on the base's greedy decodes.
    Distilled,
    /// Base and heads, on the base's greedy decodes.
    FineTunedDistilled,
}

impl Regime {
    /// All four, in the paper's order.
    pub const ALL: [Regime; 4] = [
        Regime::Frozen,
        Regime::FineTuned,
        Regime::Distilled,
        Regime::FineTunedDistilled,
    ];

    /// Whether the base model is trained too.
    pub fn train_base(self) -> bool {
        matches!(self, Regime::FineTuned | Regime::FineTunedDistilled)
    }

    /// Whether the training data are the base model's own greedy decodes.
    pub fn distilled(self) -> bool {
        matches!(self, Regime::Distilled | Regime::FineTunedDistilled)
    }

    /// The kebab-case name (`fine-tuned-distilled`).
    pub fn name(self) -> &'static str {
        match self {
            Regime::Frozen => "frozen",
            Regime::FineTuned => "fine-tuned",
            Regime::Distilled => "distilled",
            Regime::FineTunedDistilled => "fine-tuned-distilled",
        }
    }
}

impl std::fmt::Display for Regime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Regime {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Regime::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                Error::config(
                    "regime",
                    format!(
                        "`{s}` is not one of frozen, fine-tuned, distilled, fine-tuned-distilled"
                    ),
                )
            })
    }
}

/// Which heads contribute to each step's loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadLoss {
    /// The mean over every head.
    #[default]
    All,
    /// One head drawn at random per step (Stern et al., to save memory and time).
    Sampled,
}

fn one() -> f64 {
    1.0
}

/// Settings of [`train_heads`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadsTrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Longest sequence: training sequences are cut into consecutive windows of this length.
    pub seq_len: usize,
    /// Learning rate over the run.
    pub lr: LrSchedule,
    /// AdamW, gradient clipping, weight decay.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Train the base model too (fine-tuning); only the built-in transformer can.
    #[serde(default)]
    pub train_base: bool,
    /// Weight of the base's next-token loss when fine-tuning.
    #[serde(default = "one")]
    pub lm_weight: f64,
    /// Every head per step, or one sampled head.
    #[serde(default)]
    pub head_loss: HeadLoss,
    /// Dropout on the heads' hidden activations, in `[0, 1)`.
    #[serde(default)]
    pub dropout: f64,
    /// Keep each window's hidden states after computing them once (frozen base only; worth it
    /// for a large base and a small data set).
    #[serde(default)]
    pub cache_hidden: bool,
    /// Seed of batches, sampled heads and dropout masks.
    #[serde(default)]
    pub seed: u64,
    /// Report every this many steps (0: only at the end).
    #[serde(default)]
    pub log_every: usize,
    /// Validate every this many steps (0: only at the end, when validation is given).
    #[serde(default)]
    pub validate_every: usize,
    /// Write a checkpoint every this many steps (0: only at the end, when a checkpoint folder
    /// is given).
    #[serde(default)]
    pub checkpoint_every: usize,
}

impl Default for HeadsTrainConfig {
    fn default() -> Self {
        HeadsTrainConfig {
            steps: 300,
            batch_size: 16,
            seq_len: 128,
            lr: LrSchedule {
                peak: 1e-3,
                warmup_steps: 30,
                decay: Default::default(),
                min_ratio: 0.1,
            },
            optim: OptimConfig::default(),
            train_base: false,
            lm_weight: 1.0,
            head_loss: HeadLoss::All,
            dropout: 0.0,
            cache_hidden: false,
            seed: 0,
            log_every: 20,
            validate_every: 0,
            checkpoint_every: 0,
        }
    }
}

impl HeadsTrainConfig {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<()> {
        self.lr.validate()?;
        self.optim.validate()?;
        if self.steps == 0 || self.batch_size == 0 {
            return Err(Error::config(
                "steps",
                "steps and batch_size must be at least 1",
            ));
        }
        if self.seq_len < 3 {
            return Err(Error::config(
                "seq_len",
                format!(
                    "must be at least 3 (a token and two to predict), got {}",
                    self.seq_len
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config(
                "dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            ));
        }
        if !(self.lm_weight >= 0.0 && self.lm_weight.is_finite()) {
            return Err(Error::config("lm_weight", "must be a number >= 0"));
        }
        if self.cache_hidden && self.train_base {
            return Err(Error::config(
                "cache_hidden",
                "needs a frozen base (the hidden states change while fine-tuning)",
            ));
        }
        Ok(())
    }
}

/// Held-out prompts decoded with the heads during training, to report the mean accepted block
/// size under exact acceptance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// Prompts (token ids).
    pub prompts: Vec<Vec<i64>>,
    /// Block size `k` (at most the number of heads plus one).
    pub block_size: usize,
    /// Tokens to generate per prompt.
    pub max_new_tokens: usize,
    /// Ids that end a sequence.
    #[serde(default)]
    pub eos: Vec<i64>,
}

/// One progress report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadsLog {
    /// Steps done.
    pub step: usize,
    /// Of this many.
    pub steps: usize,
    /// Mean heads loss (nats per predicted token) since the last report.
    pub loss: f64,
    /// Mean base next-token loss since the last report, when fine-tuning.
    pub lm_loss: Option<f64>,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Gradient norm before clipping, last step.
    pub grad_norm: f64,
    /// Seconds of training so far (across resumptions).
    pub elapsed_s: f64,
    /// Estimated seconds left.
    pub eta_s: f64,
    /// Mean accepted block size on the validation prompts, when validated at this report.
    pub mean_accepted: Option<f64>,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadsReport {
    /// Every progress report (those before a resumption included).
    pub logs: Vec<HeadsLog>,
    /// Mean heads loss over the last report's steps.
    pub final_loss: f64,
    /// Mean accepted block size at the end, when validation was given.
    pub mean_accepted: Option<f64>,
    /// The step the run resumed from, if it did.
    pub resumed_from: Option<usize>,
    /// Wall time of this call, seconds.
    pub wall_s: f64,
}

/// Mean accepted block size (tokens per iteration) of exact blockwise decoding with the
/// model's heads over the validation prompts.
pub fn mean_accepted_with_heads(
    model: &mut dyn crate::model::CausalLm,
    validation: &Validation,
) -> Result<f64> {
    let _guard = tch::no_grad_guard();
    let mut decoder = Blockwise::builder(model)
        .block_size(validation.block_size)
        .proposer(HeadsProposer)
        .criterion(Exact)
        .build()?;
    let config = DecodeConfig::new(validation.max_new_tokens).with_eos(validation.eos.clone());
    let (mut tokens, mut iterations) = (0usize, 0usize);
    for prompt in &validation.prompts {
        let out = decoder.decode(prompt, &config)?;
        tokens += out.stats.new_tokens;
        iterations += out.stats.iterations;
    }
    Ok(if iterations == 0 {
        0.0
    } else {
        tokens as f64 / iterations as f64
    })
}

/// Consecutive windows of at most `seq_len` tokens of each sequence (shorter than 3 dropped).
fn windows(data: &[Vec<i64>], seq_len: usize) -> Vec<&[i64]> {
    data.iter()
        .flat_map(|s| s.chunks(seq_len))
        .filter(|w| w.len() >= 3)
        .collect()
}

struct Batch {
    tokens: Tensor,
    /// `[B, T, H]` targets of the heads (`-100` where none).
    head_targets: Tensor,
    /// `[B, T - 1]` next-token targets (`-100` on padding).
    lm_targets: Tensor,
    rows: Vec<usize>,
}

fn make_batch(wins: &[&[i64]], rows: Vec<usize>, heads: usize, device: Device) -> Result<Batch> {
    let t = rows.iter().map(|&r| wins[r].len()).max().unwrap_or(0);
    let b = rows.len();
    let mut tokens = vec![0i64; b * t];
    let mut head_targets = vec![-100i64; b * t * heads];
    let mut lm_targets = vec![-100i64; b * (t - 1)];
    for (i, &r) in rows.iter().enumerate() {
        let w = wins[r];
        tokens[i * t..i * t + w.len()].copy_from_slice(w);
        for p in 0..w.len() {
            if p + 1 < w.len() {
                lm_targets[i * (t - 1) + p] = w[p + 1];
            }
            for h in 0..heads {
                if p + 2 + h < w.len() {
                    head_targets[(i * t + p) * heads + h] = w[p + 2 + h];
                }
            }
        }
    }
    let to = |v: Vec<i64>, shape: &[i64]| -> Result<Tensor> {
        Ok(Tensor::from_slice(&v).f_view(shape)?.f_to_device(device)?)
    };
    Ok(Batch {
        tokens: to(tokens, &[b as i64, t as i64])?,
        head_targets: to(head_targets, &[b as i64, t as i64, heads as i64])?,
        lm_targets: to(lm_targets, &[b as i64, t as i64 - 1])?,
        rows,
    })
}

/// Vocabulary ids as columns of a shortlisted projection (`map`: id → column or `-100`);
/// `-100` (not scored) stays. Without a map the ids are the columns.
pub(super) fn shortlist_targets(map: Option<&Tensor>, targets: &Tensor) -> Result<Tensor> {
    let Some(map) = map else {
        return Ok(targets.shallow_clone());
    };
    let valid = targets.f_ne(-100)?;
    let mapped = map.f_index_select(0, &targets.f_clamp_min(0)?.f_reshape([-1])?)?;
    Ok(mapped
        .f_view(targets.size().as_slice())?
        .f_where_self(&valid, targets)?)
}

/// Sum of cross-entropies and the number of scored targets.
fn ce_sum(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, i64)> {
    let v = *logits
        .size()
        .last()
        .expect("logits have a vocabulary dimension");
    let targets = targets.f_reshape([-1])?;
    let count = i64::try_from(targets.f_ne(-100)?.f_sum(Kind::Int64)?)?;
    let sum = logits
        .f_to_kind(Kind::Float)?
        .f_reshape([-1, v])?
        .f_cross_entropy_loss::<Tensor>(&targets, None, Reduction::Sum, -100, 0.0)?;
    Ok((sum, count))
}

/// Trains `model`'s proposal heads (and, with `train_base`, the model) on windows of `data`,
/// calling `progress` at every report. With `checkpoint`, writes a checkpoint there every
/// `checkpoint_every` steps and at the end, and — when one is already there — resumes from it
/// (the settings must be the same), so that an interrupted run ends in the same state as an
/// uninterrupted one.
pub fn train_heads<T: HeadsTrainee + ?Sized>(
    model: &mut T,
    data: &[Vec<i64>],
    validation: Option<&Validation>,
    config: &HeadsTrainConfig,
    checkpoint: Option<&Path>,
    mut progress: impl FnMut(&HeadsLog),
) -> Result<HeadsReport> {
    config.validate()?;
    if config.train_base && !model.can_train_base() {
        return Err(Error::config(
            "train_base",
            "this model's base cannot be trained (only its heads)",
        ));
    }
    let num_heads = model.heads().num_heads();
    if let Some(v) = validation {
        if v.block_size < 1 || v.block_size > num_heads + 1 {
            return Err(Error::config(
                "validation.block_size",
                format!(
                    "must be in 1..={} (heads + 1), got {}",
                    num_heads + 1,
                    v.block_size
                ),
            ));
        }
    }
    let info = model.as_lm().info().clone();
    if config.seq_len > info.max_context {
        return Err(Error::config(
            "seq_len",
            format!(
                "is {}, longer than the model's context of {}",
                config.seq_len, info.max_context
            ),
        ));
    }
    for seq in data {
        crate::model::check_tokens("training data", seq, info.vocab_size)?;
    }
    let wins = windows(data, config.seq_len);
    if wins.is_empty() {
        return Err(Error::config(
            "data",
            "has no sequence of 3 tokens or more to train on",
        ));
    }
    let device = info.device;
    let train_base = config.train_base;
    let mut opt = {
        let select = |name: &str| train_base || model.is_head_var(name);
        AdamW::new(model.var_store(), config.optim, select)?
    };
    let mut rng = SeededRng::new(config.seed);
    let mut logs: Vec<HeadsLog> = Vec::new();
    let mut start = 0;
    let mut resumed_from = None;
    let state: Option<CheckpointState<HeadsTrainConfig, HeadsLog>> =
        resume(checkpoint, model.var_store(), &mut opt, config)?;
    if let Some(state) = state {
        start = state.step;
        rng = SeededRng::from_state(state.rng_state);
        logs = state.logs;
        resumed_from = Some(start);
    }
    let t0 = Instant::now();
    let elapsed_before = logs.last().map_or(0.0, |l| l.elapsed_s);
    let mut cache: HashMap<usize, Tensor> = HashMap::new();
    let (mut sum, mut lm_sum, mut count) = (0.0, 0.0, 0usize);
    let mut mean_accepted = None;
    for step in start..config.steps {
        let rows: Vec<usize> = (0..config.batch_size)
            .map(|_| rng.below(wins.len() as u64) as usize)
            .collect();
        let batch = make_batch(&wins, rows, num_heads, device)?;
        let hidden = if config.cache_hidden {
            cached_hidden(model, &wins, &batch, &mut cache)?
        } else {
            model.hidden_states(&batch.tokens, train_base)?
        };
        let (b, t, d) = hidden.size3()?;
        let flat = hidden.f_reshape([b * t, d])?;
        let mut dropout = Dropout {
            p: config.dropout,
            rng: &mut rng,
        };
        let states = model.heads().forward(&flat, Some(&mut dropout))?;
        let mut targets = batch.head_targets.f_reshape([b * t, num_heads as i64])?;
        let states = match config.head_loss {
            HeadLoss::All => states,
            HeadLoss::Sampled => {
                let h = rng.below(num_heads as u64) as i64;
                targets = targets.f_narrow(1, h, 1)?;
                states.f_narrow(1, h, 1)?
            }
        };
        targets = shortlist_targets(model.target_map(), &targets)?;
        let logits = model.project(&states, train_base)?;
        let (head_sum, head_count) = ce_sum(&logits, &targets)?;
        let head_loss = head_sum.f_div_scalar(head_count.max(1) as f64)?;
        let mut loss = head_loss.shallow_clone();
        let mut lm_value = None;
        if train_base {
            let lm_logits = model.lm_logits(&hidden.f_narrow(1, 0, t - 1)?)?;
            let (lm_s, lm_c) = ce_sum(&lm_logits, &batch.lm_targets)?;
            let lm_loss = lm_s.f_div_scalar(lm_c.max(1) as f64)?;
            lm_value = Some(f64::try_from(&lm_loss)?);
            loss = loss.f_add(&lm_loss.f_mul_scalar(config.lm_weight)?)?;
        }
        opt.zero_grad()?;
        loss.f_backward()?;
        let grad_norm = opt.clip()?;
        let lr = config.lr.at(step, config.steps);
        opt.step(lr)?;
        sum += f64::try_from(&head_loss)?;
        lm_sum += lm_value.unwrap_or(0.0);
        count += 1;
        let done = step + 1;
        let last = done == config.steps;
        let report = last || (config.log_every > 0 && done % config.log_every == 0);
        let validate = validation.is_some()
            && (last || (config.validate_every > 0 && done % config.validate_every == 0));
        let save = checkpoint.is_some()
            && (last || (config.checkpoint_every > 0 && done % config.checkpoint_every == 0));
        if report || validate {
            let accepted = match validation.filter(|_| validate) {
                Some(v) => Some(mean_accepted_with_heads(model.as_lm(), v)?),
                None => None,
            };
            if accepted.is_some() {
                mean_accepted = accepted;
            }
            let elapsed_s = elapsed_before + t0.elapsed().as_secs_f64();
            let rate = (done - start) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            let entry = HeadsLog {
                step: done,
                steps: config.steps,
                loss: sum / count.max(1) as f64,
                lm_loss: train_base.then(|| lm_sum / count.max(1) as f64),
                lr,
                grad_norm,
                elapsed_s,
                eta_s: (config.steps - done) as f64 / rate,
                mean_accepted: accepted,
            };
            logs.push(entry);
            (sum, lm_sum, count) = (0.0, 0.0, 0);
        }
        if save {
            let state = CheckpointState {
                config: config.clone(),
                step: done,
                optimizer_steps: opt.steps(),
                rng_state: rng.state(),
                logs: logs.clone(),
            };
            save_checkpoint(
                checkpoint.expect("checked"),
                model.var_store(),
                &opt,
                &state,
            )?;
        }
        if report || validate {
            // After the checkpoint, so that a caller who stops here loses nothing.
            progress(logs.last().expect("just pushed"));
        }
    }
    let final_loss = logs.last().map_or(f64::NAN, |l| l.loss);
    if mean_accepted.is_none() {
        mean_accepted = logs.iter().rev().find_map(|l| l.mean_accepted);
    }
    Ok(HeadsReport {
        logs,
        final_loss,
        mean_accepted,
        resumed_from,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}

/// The batch's hidden states, computing (and keeping) only those of windows not seen before.
fn cached_hidden<T: HeadsTrainee + ?Sized>(
    model: &mut T,
    wins: &[&[i64]],
    batch: &Batch,
    cache: &mut HashMap<usize, Tensor>,
) -> Result<Tensor> {
    let t = batch.tokens.size()[1];
    let mut rows = Vec::with_capacity(batch.rows.len());
    for &r in &batch.rows {
        if !cache.contains_key(&r) {
            let w = wins[r];
            let tokens = Tensor::from_slice(w)
                .f_view([1, w.len() as i64])?
                .f_to_device(batch.tokens.device())?;
            let h = model.hidden_states(&tokens, false)?.f_squeeze_dim(0)?;
            cache.insert(r, h);
        }
        let h = &cache[&r];
        let pad = t - h.size()[0];
        rows.push(if pad > 0 {
            h.f_constant_pad_nd([0, 0, 0, pad])?
        } else {
            h.shallow_clone()
        });
    }
    Ok(Tensor::f_stack(&rows, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Head `h` at window position `p` is trained on the token `h + 2` places after `p`'s
    /// input token — the token the decoder's head `h` guesses after the block's first token.
    #[test]
    fn head_targets_are_the_tokens_h_plus_2_ahead() {
        let seq: Vec<i64> = (0..20).map(|i| (i * 7 + 3) % 11).collect();
        let data = vec![seq.clone()];
        let wins = windows(&data, 8);
        assert_eq!(wins.len(), 3);
        let heads = 3;
        let batch = make_batch(&wins, vec![0, 1, 2], heads, Device::Cpu).unwrap();
        let targets: Vec<i64> = Vec::try_from(&batch.head_targets.flatten(0, -1)).unwrap();
        let t = 8;
        for (i, w) in wins.iter().enumerate() {
            let offset = seq
                .windows(w.len())
                .position(|s| s == *w)
                .expect("a window is a slice of the sequence");
            for p in 0..w.len() {
                for h in 0..heads {
                    let want = if p + 2 + h < w.len() {
                        seq[offset + p + 2 + h]
                    } else {
                        -100 // past the window's end: not scored
                    };
                    assert_eq!(
                        targets[(i * t + p) * heads + h],
                        want,
                        "window {i} p {p} h {h}"
                    );
                }
            }
        }
    }
}
