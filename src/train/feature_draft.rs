//! Training a feature-level draft: the draft learns to predict the base model's next hidden
//! state (and the base's greedy token from it) from the current state and the next token's
//! embedding, unrolled over several draft steps on its own predictions, so that later draft
//! positions are trained on the inputs they will see when drafting.
//!
//! Unrolling (EAGLE-3's "training-time test"): pass 1 feeds the true states. Pass `d` feeds,
//! at every position, the state pass `d - 1` predicted for it, and its attention sees what the
//! draft's cache would hold `d - 1` steps into a block — the true states up to `d - 1`
//! positions back and the draft's own inputs of passes `2..d` after them.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use super::adamw::{AdamW, OptimConfig};
use super::checkpoint::{resume, save_checkpoint, CheckpointState};
use super::draft_data::DraftData;
use super::schedule::LrSchedule;
use crate::error::{Error, Result};
use crate::feature::{FeatureDraft, VocabProjection};
use crate::rng::SeededRng;

/// Settings of [`train_feature_draft`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftTrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Windows per step.
    pub batch_size: usize,
    /// Positions per window (windows may span several sequences; attention and targets never
    /// cross a sequence boundary).
    pub seq_len: usize,
    /// Draft steps trained per window (1: the true states only).
    pub unroll: usize,
    /// Weight of the hidden-state regression (smooth L1) next to the token cross-entropy.
    pub reg_weight: f64,
    /// Weight of the base's whole distribution over the shortlist (the softmax of its own
    /// projection of the next true state) against its argmax alone in the token loss: 0 trains
    /// on the greedy token only, 1 on the distribution only (the soft targets EAGLE trains on,
    /// which tell the draft how close the runners-up were).
    #[serde(default)]
    pub soft_targets: f64,
    /// The float kind of the step's matrix products (default `f32`); the weights, the
    /// optimiser and the losses stay float32 either way.
    #[serde(default)]
    pub products: Products,
    /// Learning rate over the run.
    pub lr: LrSchedule,
    /// AdamW, gradient clipping, weight decay.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Seed of the batches.
    #[serde(default)]
    pub seed: u64,
    /// Report every this many steps (0: only at the end).
    #[serde(default)]
    pub log_every: usize,
    /// Write a checkpoint every this many steps (0: only at the end, when a checkpoint folder
    /// is given).
    #[serde(default)]
    pub checkpoint_every: usize,
}

/// The float kind of a training step's matrix products (the draft's linear maps and the
/// vocabulary projection; attention and the losses stay float32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Products {
    /// float32 throughout.
    #[default]
    F32,
    /// bfloat16 inputs and weights, products accumulated by libtorch and cast back to float32
    /// (mixed precision). On a 2-core Intel Xeon with AMX a step of the shipped settings
    /// took 0.73 s against 1.19 s; on CPUs without bfloat16 instructions it is not measured
    /// and may be slower than `f32`.
    Bf16,
}

impl Products {
    fn kind(self) -> Option<Kind> {
        match self {
            Products::F32 => None,
            Products::Bf16 => Some(Kind::BFloat16),
        }
    }
}

impl Default for DraftTrainConfig {
    fn default() -> Self {
        DraftTrainConfig {
            steps: 300,
            batch_size: 8,
            seq_len: 256,
            unroll: 3,
            reg_weight: 1.0,
            soft_targets: 0.0,
            products: Products::F32,
            lr: LrSchedule {
                peak: 1e-3,
                warmup_steps: 30,
                decay: Default::default(),
                min_ratio: 0.1,
            },
            optim: OptimConfig::default(),
            seed: 0,
            log_every: 20,
            checkpoint_every: 0,
        }
    }
}

impl DraftTrainConfig {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<()> {
        self.lr.validate()?;
        self.optim.validate()?;
        if self.steps == 0 || self.batch_size == 0 || self.seq_len < 2 || self.unroll == 0 {
            return Err(Error::config(
                "draft training",
                "steps, batch_size and unroll must be at least 1 and seq_len at least 2",
            ));
        }
        if !(self.reg_weight >= 0.0 && self.reg_weight.is_finite()) {
            return Err(Error::config(
                "reg_weight",
                format!("must be a finite weight >= 0, got {}", self.reg_weight),
            ));
        }
        if !(0.0..=1.0).contains(&self.soft_targets) {
            return Err(Error::config(
                "soft_targets",
                format!("must be a weight in [0, 1], got {}", self.soft_targets),
            ));
        }
        Ok(())
    }
}

/// One progress report of [`train_feature_draft`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DraftLog {
    /// Steps done.
    pub step: usize,
    /// Of this many.
    pub steps: usize,
    /// Mean loss since the last report.
    pub loss: f64,
    /// Mean top-1 agreement with the base's greedy token since the last report, per unrolled
    /// step.
    pub accuracy: Vec<f64>,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Seconds of training so far (resumed runs included).
    pub elapsed_s: f64,
    /// Estimated seconds left.
    pub eta_s: f64,
}

/// What [`train_feature_draft`] returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DraftReport {
    /// Every progress report (those before a resumption included).
    pub logs: Vec<DraftLog>,
    /// Mean loss over the last report's steps.
    pub final_loss: f64,
    /// The step a checkpoint was resumed from.
    pub resumed_from: Option<usize>,
    /// Seconds this call took.
    pub wall_s: f64,
}

/// A batch of windows, gathered from the data.
struct Windows {
    /// The states the draft reads at each window position `[B, T, D]` (float32: the final
    /// states, plus the taps' map of the inner layers' when the draft has taps).
    hidden: Tensor,
    /// Hidden states one position later (the regression target) `[B, T, D]`.
    target_hidden: Tensor,
    /// Embeddings of the token after each position `[B, T, D]`.
    next_embedded: Tensor,
    /// The base's argmax one position later (the token target), `[B, T]`.
    target_token: Tensor,
    /// Sequence id of each position `[B, T]`, and of the position after it.
    seg: Tensor,
    seg_next: Tensor,
}

fn gather(
    draft: &FeatureDraft,
    data: &DraftData,
    seg: &Tensor,
    embeddings: &Tensor,
    starts: &[i64],
    t: i64,
    device: Device,
) -> Result<Windows> {
    let b = starts.len() as i64;
    let base = Tensor::from_slice(starts).f_view([b, 1])?;
    let idx = base.f_add(&Tensor::f_arange(t, (Kind::Int64, Device::Cpu))?.f_view([1, t])?)?;
    let next = idx.f_add_scalar(1)?;
    let (width, d) = (data.width(), draft.config().d_model);
    let rows = |index: &Tensor| -> Result<Tensor> {
        Ok(data
            .hidden
            .f_index_select(0, &index.f_flatten(0, -1)?)?
            .f_to_kind(Kind::Float)?
            .f_view([b, t, width])?
            .f_to_device(device)?)
    };
    let flat_next = next.f_flatten(0, -1)?;
    let next_tokens = data
        .tokens
        .f_index_select(0, &flat_next)?
        .f_to_device(device)?;
    Ok(Windows {
        hidden: draft.true_state(&rows(&idx)?)?,
        target_hidden: rows(&next)?.f_narrow(-1, 0, d)?,
        next_embedded: embeddings
            .f_index_select(0, &next_tokens)?
            .f_to_kind(Kind::Float)?
            .f_view([b, t, d])?,
        target_token: data
            .argmax
            .f_index_select(0, &flat_next)?
            .f_view([b, t])?
            .f_to_device(device)?,
        seg: seg
            .f_index_select(0, &idx.f_flatten(0, -1)?)?
            .f_view([b, t])?
            .f_to_device(device)?,
        seg_next: seg
            .f_index_select(0, &flat_next)?
            .f_view([b, t])?
            .f_to_device(device)?,
    })
}

/// Shifts `x` by `n` places to later positions along `dim`, filling with `fill`.
fn shift(x: &Tensor, dim: i64, n: i64, fill: f64) -> Result<Tensor> {
    if n == 0 {
        return Ok(x.shallow_clone());
    }
    let t = x.size()[dim as usize];
    let n = n.min(t);
    let mut pad_size = x.size();
    pad_size[dim as usize] = n;
    let pad = Tensor::f_full(pad_size.as_slice(), fill, (x.kind(), x.device()))?;
    Ok(Tensor::f_cat(&[pad, x.f_narrow(dim, 0, t - n)?], dim)?)
}

/// The draft's outputs `[B, T, D]` for every unrolled pass, and per pass the positions whose
/// loss counts `[B, T]`.
fn unrolled(draft: &FeatureDraft, w: &Windows, unroll: usize) -> Result<Vec<(Tensor, Tensor)>> {
    let (_, t, _) = w.hidden.size3()?;
    let device = w.hidden.device();
    let pos = Tensor::f_arange(t, (Kind::Int64, device))?;
    // Every pass computes at the window's own positions (rotary positions count differences).
    let positions: Vec<i64> = (0..t).collect();
    let same_seq = w.seg.f_unsqueeze(2)?.f_eq_tensor(&w.seg.f_unsqueeze(1)?)?; // [B, T, T]
    let target_ok = w.seg_next.f_eq_tensor(&w.seg)?;
    let starts = shift(&w.seg, 1, 1, -1.0)?
        .f_ne_tensor(&w.seg)?
        .f_unsqueeze(2)?; // [B,T,1]
    let mut passes: Vec<(Tensor, Tensor)> = Vec::with_capacity(unroll);
    // Per layer, the (k, v) of each pass.
    let mut keys: Vec<Vec<(Tensor, Tensor)>> = (0..draft.n_layers())
        .map(|_| Vec::with_capacity(unroll))
        .collect();
    for d in 1..=unroll as i64 {
        let input = match passes.last() {
            None => w.hidden.shallow_clone(),
            // The state the previous pass predicted for each position (the true one at a
            // sequence's first position, which nothing predicts).
            Some((prev, _)) => {
                let shifted = shift(prev, 1, 1, 0.0)?;
                w.hidden.f_where_self(&starts, &shifted)?
            }
        };
        // Pass-1 keys: true states at positions j <= t - (d - 1) of the same sequence.
        let reach = pos
            .f_unsqueeze(0)?
            .f_le_tensor(&pos.f_sub_scalar(d - 1)?.f_unsqueeze(1)?)?;
        let mask1 = same_seq
            .f_logical_and(&reach.f_unsqueeze(0)?)?
            .f_unsqueeze(1)?; // [B,1,T,T]
        let mut x = draft.fuse(&input, &w.next_embedded)?;
        for (layer, keys) in keys.iter_mut().enumerate() {
            let qkv = draft.qkv(layer, &x, &positions)?;
            keys.push((qkv.k.shallow_clone(), qkv.v.shallow_clone()));
            let attended = unrolled_attention(&qkv.q, keys, &mask1, &w.seg, d, draft.scale())?;
            x = draft.finish(layer, &x, &attended)?;
        }
        // A pass-d output counts where its unrolled chain stays inside one sequence.
        let chain_ok = shift(&w.seg, 1, d - 1, -1.0)?.f_eq_tensor(&w.seg)?;
        passes.push((x, target_ok.f_logical_and(&chain_ok)?));
    }
    Ok(passes)
}

/// Pass `d`'s attention in one layer: queries `q` (`[B, H, T, Dh]`) over pass 1's keys at the
/// positions `mask1` allows and, for each later pass `i` (of `keys`, one `(k, v)` per pass so
/// far), the one key pass `i` computed for the draft's own input `d - i` positions back, as
/// decoding's cache holds them.
fn unrolled_attention(
    q: &Tensor,
    keys: &[(Tensor, Tensor)],
    mask1: &Tensor,
    seg: &Tensor,
    d: i64,
    scale: f64,
) -> Result<Tensor> {
    let t = q.size()[2];
    let (k1, v1) = &keys[0];
    let mut scores = vec![q
        .f_matmul(&k1.f_transpose(-2, -1)?)?
        .f_mul_scalar(scale)?
        .f_masked_fill(&mask1.f_logical_not()?, f64::NEG_INFINITY)?];
    let mut shifted_values = Vec::new();
    // Passes 2..=d: one key each, the draft's own input `d - i` positions back.
    for (i, (ki, vi)) in keys.iter().enumerate().skip(1) {
        let back = d - 1 - i as i64;
        let ks = shift(ki, 2, back, 0.0)?;
        let vs = shift(vi, 2, back, 0.0)?;
        let ok = shift(seg, 1, back, -1.0)?
            .f_eq_tensor(seg)?
            .f_unsqueeze(1)?
            .f_unsqueeze(3)?; // [B,1,T,1]
        let s = q
            .f_mul(&ks)?
            .f_sum_dim_intlist(-1, true, Kind::Float)?
            .f_mul_scalar(scale)?
            .f_masked_fill(&ok.f_logical_not()?, f64::NEG_INFINITY)?;
        scores.push(s);
        shifted_values.push(vs);
    }
    let weights = Tensor::f_cat(&scores, -1)?.f_softmax(-1, Kind::Float)?;
    let mut attended = weights.f_narrow(-1, 0, t)?.f_matmul(v1)?;
    for (j, vs) in shifted_values.iter().enumerate() {
        let wj = weights.f_narrow(-1, t + j as i64, 1)?;
        attended = attended.f_add(&wj.f_mul(vs)?)?;
    }
    Ok(attended)
}

/// Loss and per-pass (correct, counted) of a batch.
fn batch_loss(
    draft: &FeatureDraft,
    projection: &VocabProjection,
    w: &Windows,
    config: &DraftTrainConfig,
) -> Result<(Tensor, Vec<(i64, i64)>)> {
    let passes = unrolled(draft, w, config.unroll)?;
    let targets = projection.columns(&w.target_token)?;
    let w_soft = config.soft_targets;
    // The base's distribution over the shortlist after each position `[B*T, V]`.
    let soft = if w_soft > 0.0 {
        let logits = projection.logits(&w.target_hidden)?;
        let v = logits.size()[2];
        Some(logits.f_view([-1, v])?.f_softmax(-1, Kind::Float)?)
    } else {
        None
    };
    let mut total = Tensor::f_zeros([], (Kind::Float, w.hidden.device()))?;
    let mut hits = Vec::with_capacity(passes.len());
    for (out, ok) in &passes {
        let scored = ok.f_logical_and(&targets.f_ne(-100)?)?;
        let tgt = targets
            .f_where_scalarother(&scored, -100)?
            .f_flatten(0, -1)?;
        let logits = projection.logits(out)?;
        let v = logits.size()[2];
        let flat = logits.f_view([-1, v])?;
        let count = i64::try_from(scored.f_sum(Kind::Int64)?)?;
        if count == 0 {
            hits.push((0, 0));
            continue;
        }
        let mut ce = flat.f_cross_entropy_loss::<Tensor>(&tgt, None, Reduction::Mean, -100, 0.0)?;
        let okf = ok.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?;
        // Positions whose chain stays in one sequence (the regression's and soft loss's count).
        let counted = i64::try_from(ok.f_sum(Kind::Int64)?)?.max(1);
        if let Some(p) = &soft {
            let soft_ce = p
                .f_mul(&flat.f_log_softmax(-1, Kind::Float)?)?
                .f_sum_dim_intlist(-1, false, Kind::Float)?
                .f_mul(&okf.f_flatten(0, -1)?)?
                .f_sum(Kind::Float)?
                .f_div_scalar(-(counted as f64))?;
            ce = ce
                .f_mul_scalar(1.0 - w_soft)?
                .f_add(&soft_ce.f_mul_scalar(w_soft)?)?;
        }
        let reg = out
            .f_smooth_l1_loss(&w.target_hidden, Reduction::None, 1.0)?
            .f_mul(&okf)?
            .f_sum(Kind::Float)?
            .f_div_scalar((counted * out.size()[2]) as f64)?;
        total = total.f_add(&ce.f_add(&reg.f_mul_scalar(config.reg_weight)?)?)?;
        let correct = flat
            .f_argmax(-1, false)?
            .f_eq_tensor(&tgt)?
            .f_sum(Kind::Int64)?;
        hits.push((i64::try_from(correct)?, count));
    }
    Ok((total.f_div_scalar(passes.len() as f64)?, hits))
}

/// Sequence id of every position of `data` `[N]`.
fn segments(data: &DraftData) -> Tensor {
    let mut seg = vec![0i64; data.len()];
    for (i, w) in data.offsets.windows(2).enumerate() {
        seg[w[0]..w[1]].iter_mut().for_each(|s| *s = i as i64);
    }
    Tensor::from_slice(&seg)
}

fn check_data(data: &DraftData, draft: &FeatureDraft, embeddings: &Tensor, t: usize) -> Result<()> {
    let config = draft.config();
    if data.width() != config.feature_width() {
        return Err(Error::config(
            "draft data",
            format!(
                "holds hidden states of width {}; the draft reads {}{}",
                data.width(),
                config.feature_width(),
                match &config.taps {
                    None => String::new(),
                    Some(t) => format!(" (the final states, then layers {t:?})"),
                }
            ),
        ));
    }
    if embeddings.size() != [config.vocab_size, config.d_model] {
        return Err(Error::BadOutputShape {
            output: "token embeddings",
            expected: format!("[{}, {}]", config.vocab_size, config.d_model),
            actual: embeddings.size(),
        });
    }
    if data.len() < t + 1 {
        return Err(Error::config(
            "draft data",
            format!("holds {} tokens; a window needs {}", data.len(), t + 1),
        ));
    }
    Ok(())
}

/// Trains `draft` on `data` against the base whose token embeddings are `embeddings`
/// (`[V, D]`, frozen), calling `progress` at every report. With `checkpoint`, writes a
/// checkpoint there every `checkpoint_every` steps and at the end, and resumes from one that is
/// already there (the settings must be the same).
pub fn train_feature_draft(
    draft: &mut FeatureDraft,
    embeddings: &Tensor,
    data: &DraftData,
    config: &DraftTrainConfig,
    checkpoint: Option<&Path>,
    progress: impl FnMut(&DraftLog),
) -> Result<DraftReport> {
    config.validate()?;
    draft.set_products(config.products.kind());
    let report = train_steps(draft, embeddings, data, config, checkpoint, progress);
    // The draft leaves training computing in float32 again, whatever happened.
    draft.set_products(None);
    report
}

/// [`train_feature_draft`]'s steps, the draft's products already set.
fn train_steps(
    draft: &mut FeatureDraft,
    embeddings: &Tensor,
    data: &DraftData,
    config: &DraftTrainConfig,
    checkpoint: Option<&Path>,
    mut progress: impl FnMut(&DraftLog),
) -> Result<DraftReport> {
    let t = config.seq_len.min(data.len().saturating_sub(1)).max(1);
    check_data(data, draft, embeddings, t)?;
    let device = draft.var_store().device();
    let embeddings = embeddings.f_detach()?.f_to_device(device)?;
    let mut projection = draft.projection(&embeddings)?;
    projection.set_products(config.products.kind())?;
    let seg = segments(data);
    let mut opt = AdamW::new(draft.var_store(), config.optim, |_| true)?;
    let mut rng = SeededRng::new(config.seed);
    let mut logs: Vec<DraftLog> = Vec::new();
    let mut start = 0;
    let mut resumed_from = None;
    let state: Option<CheckpointState<DraftTrainConfig, DraftLog>> =
        resume(checkpoint, draft.var_store(), &mut opt, config)?;
    if let Some(state) = state {
        start = state.step;
        rng = SeededRng::from_state(state.rng_state);
        logs = state.logs;
        resumed_from = Some(start);
    }
    let t0 = Instant::now();
    let elapsed_before = logs.last().map_or(0.0, |l| l.elapsed_s);
    let (mut sum, mut count) = (0.0, 0usize);
    let mut hits = vec![(0i64, 0i64); config.unroll];
    let last_start = (data.len() - t - 1) as u64;
    for step in start..config.steps {
        let starts: Vec<i64> = (0..config.batch_size)
            .map(|_| rng.below(last_start + 1) as i64)
            .collect();
        let w = gather(draft, data, &seg, &embeddings, &starts, t as i64, device)?;
        let (loss, h) = batch_loss(draft, &projection, &w, config)?;
        opt.zero_grad()?;
        loss.f_backward()?;
        opt.clip()?;
        let lr = config.lr.at(step, config.steps);
        opt.step(lr)?;
        sum += f64::try_from(&loss)?;
        count += 1;
        for (acc, (c, n)) in hits.iter_mut().zip(h) {
            acc.0 += c;
            acc.1 += n;
        }
        let done = step + 1;
        let last = done == config.steps;
        let report = last || (config.log_every > 0 && done % config.log_every == 0);
        let save = checkpoint.is_some()
            && (last || (config.checkpoint_every > 0 && done % config.checkpoint_every == 0));
        if report {
            let rate = (done - start) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            logs.push(DraftLog {
                step: done,
                steps: config.steps,
                loss: sum / count.max(1) as f64,
                accuracy: hits
                    .iter()
                    .map(|&(c, n)| c as f64 / n.max(1) as f64)
                    .collect(),
                lr,
                elapsed_s: elapsed_before + t0.elapsed().as_secs_f64(),
                eta_s: (config.steps - done) as f64 / rate,
            });
            (sum, count) = (0.0, 0);
            hits.iter_mut().for_each(|h| *h = (0, 0));
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
                draft.var_store(),
                &opt,
                &state,
            )?;
        }
        if report {
            progress(logs.last().expect("just pushed"));
        }
    }
    Ok(DraftReport {
        final_loss: logs.last().map_or(f64::NAN, |l| l.loss),
        logs,
        resumed_from,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}

/// Top-1 agreement of the draft with the base's greedy token on `data` (for example held-out
/// data), per unrolled draft step, over windows of `seq_len` positions (all of them, or
/// `max_windows` spread evenly over the data). Positions whose target lies outside the
/// shortlist count as misses. Every position counts, prompts included: see [`evaluate_feature_draft_on_answers`].
pub fn evaluate_feature_draft(
    draft: &FeatureDraft,
    embeddings: &Tensor,
    data: &DraftData,
    seq_len: usize,
    unroll: usize,
    max_windows: usize,
) -> Result<Vec<f64>> {
    agreement(draft, embeddings, data, seq_len, unroll, max_windows, None)
}

/// [`evaluate_feature_draft`] over the guesses decoding asks for only: draft step `d` counts
/// at a position when the chain it belongs to started at the prompt's last token or later (so
/// its context token and its target are answer tokens), as the first guess after a prompt
/// does. Needs [`DraftData::prompt_lens`] (the model's own answers record them); an error
/// otherwise, or when no position qualifies. Prompts inflate agreement: a chat template's
/// fixed system turn is the same in every sequence.
pub fn evaluate_feature_draft_on_answers(
    draft: &FeatureDraft,
    embeddings: &Tensor,
    data: &DraftData,
    seq_len: usize,
    unroll: usize,
    max_windows: usize,
) -> Result<Vec<f64>> {
    let lens = data.prompt_lens.as_ref().ok_or_else(|| {
        Error::config(
            "draft data",
            "does not record where its answers start (prompt_lens): only the model's own \
             answers do",
        )
    })?;
    if lens.len() != data.sequences() {
        return Err(Error::config(
            "draft data",
            format!(
                "has {} prompt lengths for {} sequences",
                lens.len(),
                data.sequences()
            ),
        ));
    }
    // Per position, the first position a chain may start at: the prompt's last token.
    let mut from = Vec::with_capacity(data.len());
    for (w, &p) in data.offsets.windows(2).zip(lens) {
        from.extend(std::iter::repeat_n(w[0] as i64 + p as i64 - 1, w[1] - w[0]));
    }
    agreement(
        draft,
        embeddings,
        data,
        seq_len,
        unroll,
        max_windows,
        Some(&Tensor::from_slice(&from)),
    )
}

/// Starts of at most `max_windows` windows of `t` positions over `n` positions: consecutive
/// windows from the start where all fit, otherwise that many spread evenly over the whole
/// (so data made of several sets is measured on all of them, not on the first alone).
fn window_starts(n: usize, t: usize, max_windows: usize) -> Vec<i64> {
    let available = n.saturating_sub(1) / t;
    let count = available.min(max_windows);
    (0..count)
        .map(|i| (i * available / count * t) as i64)
        .collect()
}

/// Agreement per draft step; with `from` (`[N]`), a pass-`d` output at position `p` counts
/// only when `p - (d - 1) >= from[p]`.
fn agreement(
    draft: &FeatureDraft,
    embeddings: &Tensor,
    data: &DraftData,
    seq_len: usize,
    unroll: usize,
    max_windows: usize,
    from: Option<&Tensor>,
) -> Result<Vec<f64>> {
    let _guard = tch::no_grad_guard();
    let t = seq_len.min(data.len().saturating_sub(1)).max(1);
    check_data(data, draft, embeddings, t)?;
    let device = draft.var_store().device();
    let embeddings = embeddings.f_detach()?.f_to_device(device)?;
    let projection = draft.projection(&embeddings)?;
    let seg = segments(data);
    let mut hits = vec![(0i64, 0i64); unroll.max(1)];
    for start in window_starts(data.len(), t, max_windows) {
        let w = gather(draft, data, &seg, &embeddings, &[start], t as i64, device)?;
        let passes = unrolled(draft, &w, unroll.max(1))?;
        let targets = projection.columns(&w.target_token)?;
        for (d, ((out, ok), acc)) in passes.iter().zip(hits.iter_mut()).enumerate() {
            let ok = match from {
                None => ok.shallow_clone(),
                Some(from) => {
                    let chain_start = Tensor::f_arange(t as i64, (Kind::Int64, Device::Cpu))?
                        .f_add_scalar(start - d as i64)?;
                    let counted = chain_start
                        .f_ge_tensor(&from.f_narrow(0, start, t as i64)?)?
                        .f_unsqueeze(0)?
                        .f_to_device(device)?;
                    ok.f_logical_and(&counted)?
                }
            };
            let guess = projection.logits(out)?.f_argmax(-1, false)?;
            let right = guess.f_eq_tensor(&targets)?.f_logical_and(&ok)?;
            acc.0 += i64::try_from(right.f_sum(Kind::Int64)?)?;
            acc.1 += i64::try_from(ok.f_sum(Kind::Int64)?)?;
        }
    }
    if from.is_some() && hits.first().is_some_and(|h| h.1 == 0) {
        return Err(Error::config(
            "draft data",
            "has no answer position to measure within the windows read",
        ));
    }
    Ok(hits
        .iter()
        .map(|&(c, n)| c as f64 / n.max(1) as f64)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feature::FeatureDraftConfig;

    /// A two-layer draft with every weight drawn at random, with or without rotary positions.
    fn random_draft(rope_theta: Option<f64>) -> FeatureDraft {
        let config = FeatureDraftConfig {
            n_layers: 2,
            rope_theta,
            ..FeatureDraftConfig::for_base(32, 40)
        };
        let draft = FeatureDraft::new(config, 0, Device::Cpu).unwrap();
        tch::manual_seed(4);
        let mut vars: Vec<(String, Tensor)> = draft.var_store().variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| {
            for (_, mut v) in vars {
                v.copy_(&(Tensor::randn(v.size(), (Kind::Float, Device::Cpu)) * 0.2));
            }
        });
        draft
    }

    /// The state a decoding chain predicts `d` draft steps after it starts at position `s`:
    /// the true inputs of positions `0..=s` first, then one row at a time, each the last
    /// prediction with the next embedding, at the next position, attending everything before.
    fn chain_state(draft: &FeatureDraft, w: &Windows, s: i64, d: i64) -> Tensor {
        let mut cache: Vec<(Tensor, Tensor)> = Vec::new();
        let mut step = |x: &Tensor, from: i64| -> Tensor {
            let t = x.size()[1];
            let positions: Vec<i64> = (from..from + t).collect();
            let mut x = x.shallow_clone();
            for layer in 0..draft.n_layers() {
                let qkv = draft.qkv(layer, &x, &positions).unwrap();
                let (k, v) = match cache.get(layer) {
                    Some((k, v)) => (Tensor::cat(&[k, &qkv.k], 2), Tensor::cat(&[v, &qkv.v], 2)),
                    None => (qkv.k.shallow_clone(), qkv.v.shallow_clone()),
                };
                let mask =
                    crate::transformer::layers::causal_mask(from as usize, t as usize, Device::Cpu)
                        .unwrap();
                let attended = draft.attend(&qkv.q, &k, &v, Some(&mask)).unwrap();
                match cache.get_mut(layer) {
                    Some(slot) => *slot = (k, v),
                    None => cache.push((k, v)),
                }
                x = draft.finish(layer, &x, &attended).unwrap();
            }
            x.narrow(1, t - 1, 1)
        };
        let x = draft
            .fuse(
                &w.hidden.narrow(1, 0, s + 1),
                &w.next_embedded.narrow(1, 0, s + 1),
            )
            .unwrap();
        let mut state = step(&x, 0);
        for i in 1..d {
            let x = draft
                .fuse(&state, &w.next_embedded.narrow(1, s + i, 1))
                .unwrap();
            state = step(&x, s + i);
        }
        state.squeeze()
    }

    #[test]
    fn unrolled_passes_predict_what_decoding_chains_predict() {
        let _guard = tch::no_grad_guard();
        for rope_theta in [None, Some(100.0)] {
            let draft = random_draft(rope_theta);
            let t = 8;
            let zeros = Tensor::zeros([1, t], (Kind::Int64, Device::Cpu));
            let w = Windows {
                hidden: Tensor::randn([1, t, 32], (Kind::Float, Device::Cpu)),
                target_hidden: Tensor::randn([1, t, 32], (Kind::Float, Device::Cpu)),
                next_embedded: Tensor::randn([1, t, 32], (Kind::Float, Device::Cpu)),
                target_token: zeros.shallow_clone(),
                seg: zeros.shallow_clone(),
                seg_next: zeros,
            };
            let passes = unrolled(&draft, &w, 3).unwrap();
            // Pass d at window position p continues the chain that started at p - (d - 1).
            for (i, (out, _)) in passes.iter().enumerate() {
                let d = i as i64 + 1;
                for p in d - 1..t {
                    let expected = chain_state(&draft, &w, p - (d - 1), d);
                    let diff = f64::try_from((out.get(0).get(p) - &expected).abs().max()).unwrap();
                    assert!(
                        diff < 1e-4,
                        "rope {rope_theta:?}, pass {d}, position {p}: differs by {diff}"
                    );
                }
            }
        }
    }

    #[test]
    fn measuring_windows_cover_the_whole_data_when_capped() {
        // All fit: consecutive from the start.
        assert_eq!(
            window_starts(1001, 100, 64),
            (0..10).map(|i| i * 100).collect::<Vec<_>>()
        );
        // Capped: spread over all 40 windows, the last quarter included.
        let starts = window_starts(4001, 100, 8);
        assert_eq!(starts, vec![0, 500, 1000, 1500, 2000, 2500, 3000, 3500]);
        assert!(
            starts.windows(2).all(|w| w[1] - w[0] >= 100),
            "windows overlap"
        );
        assert!(window_starts(50, 100, 8).is_empty());
        assert!(window_starts(4001, 100, 0).is_empty());
    }

    /// A window of 8 positions over two sequences (the position before the boundary has no
    /// target), with random states of width 32 and targets among 40 tokens.
    fn two_sequence_window() -> Windows {
        let t = 8;
        let seg = Tensor::from_slice(&[0i64, 0, 0, 0, 0, 1, 1, 1]).view([1, t]);
        let seg_next = Tensor::from_slice(&[0i64, 0, 0, 0, 1, 1, 1, 1]).view([1, t]);
        Windows {
            hidden: Tensor::randn([1, t, 32], (Kind::Float, Device::Cpu)),
            target_hidden: Tensor::randn([1, t, 32], (Kind::Float, Device::Cpu)),
            next_embedded: Tensor::randn([1, t, 32], (Kind::Float, Device::Cpu)),
            target_token: Tensor::from_slice(&[3i64, 7, 1, 0, 5, 9, 2, 4]).view([1, t]),
            seg,
            seg_next,
        }
    }

    #[test]
    fn bfloat16_products_train_the_float32_weights_and_end_with_training() {
        let mut draft = random_draft(None);
        let embeddings = Tensor::randn([40, 32], (Kind::Float, Device::Cpu));
        let mut projection = draft.projection(&embeddings).unwrap();
        let w = two_sequence_window();
        let config = DraftTrainConfig {
            unroll: 2,
            ..DraftTrainConfig::default()
        };
        let loss = |draft: &FeatureDraft, projection: &VocabProjection| {
            f64::try_from(batch_loss(draft, projection, &w, &config).unwrap().0).unwrap()
        };
        let full = loss(&draft, &projection);
        draft.set_products(Some(Kind::BFloat16));
        projection.set_products(Some(Kind::BFloat16)).unwrap();
        let (narrow_loss, _) = batch_loss(&draft, &projection, &w, &config).unwrap();
        let narrow = f64::try_from(&narrow_loss).unwrap();
        // Close to the float32 loss, but computed differently (the casts took effect).
        assert!(
            narrow != full,
            "bfloat16 products gave the float32 loss {full}"
        );
        assert!(
            (narrow - full).abs() < 0.02 * full.abs(),
            "bfloat16 {narrow} against float32 {full}"
        );
        // Gradients reach every float32 weight through the casts.
        narrow_loss.backward();
        for (name, v) in draft.var_store().variables() {
            assert_eq!(v.kind(), Kind::Float, "{name}");
            let g = v.grad();
            assert!(g.defined(), "{name} has no gradient");
            assert!(
                f64::try_from(g.abs().sum(Kind::Float)).unwrap() > 0.0,
                "{name}'s gradient is zero"
            );
        }
        draft.set_products(None);
        projection.set_products(None).unwrap();
        assert_eq!(loss(&draft, &projection), full);
        // Training with bfloat16 products leaves the draft computing in float32.
        let config = DraftTrainConfig {
            steps: 2,
            batch_size: 1,
            seq_len: 8,
            log_every: 0,
            products: Products::Bf16,
            ..DraftTrainConfig::default()
        };
        let data = DraftData {
            tokens: Tensor::from_slice(&[1i64, 3, 7, 1, 0, 5, 9, 2, 4, 6, 8]),
            hidden: Tensor::randn([11, 32], (Kind::Float, Device::Cpu)),
            argmax: Tensor::from_slice(&[3i64, 7, 1, 0, 5, 9, 2, 4, 6, 8, 1]),
            offsets: vec![0, 11],
            prompt_lens: None,
        };
        train_feature_draft(&mut draft, &embeddings, &data, &config, None, |_| {}).unwrap();
        let trained = loss(&draft, &projection);
        draft.set_products(None);
        assert_eq!(loss(&draft, &projection), trained);
        assert!(trained != full, "two steps did not change the draft");
    }

    #[test]
    fn soft_targets_weigh_the_base_distribution_against_its_argmax() {
        let _guard = tch::no_grad_guard();
        let draft = random_draft(None);
        let embeddings = Tensor::randn([40, 32], (Kind::Float, Device::Cpu));
        let projection = draft.projection(&embeddings).unwrap();
        let w = two_sequence_window();
        let loss = |soft_targets: f64| {
            let config = DraftTrainConfig {
                unroll: 1,
                reg_weight: 0.0,
                soft_targets,
                ..DraftTrainConfig::default()
            };
            f64::try_from(batch_loss(&draft, &projection, &w, &config).unwrap().0).unwrap()
        };
        let (hard, soft, half) = (loss(0.0), loss(1.0), loss(0.5));
        // The soft loss by hand: cross-entropy of the draft's distribution against the
        // base's (its projection of the next true state), over the positions with a target.
        let (out, ok) = &unrolled(&draft, &w, 1).unwrap()[0];
        let p = projection
            .logits(&w.target_hidden)
            .unwrap()
            .softmax(-1, Kind::Float);
        let log_q = projection.logits(out).unwrap().log_softmax(-1, Kind::Float);
        let per_position = (p * log_q).sum_dim_intlist(-1, false, Kind::Float).neg();
        let okf = ok.to_kind(Kind::Float);
        let expected =
            f64::try_from((per_position * &okf).sum(Kind::Float) / okf.sum(Kind::Float)).unwrap();
        assert!(
            (soft - expected).abs() < 1e-5,
            "soft loss {soft}, by hand {expected}"
        );
        assert!(
            (hard - soft).abs() > 1e-3,
            "hard {hard} and soft {soft} agree"
        );
        assert!(
            (half - (hard + soft) / 2.0).abs() < 1e-5,
            "{half} is not the mean of {hard} and {soft}"
        );
        for bad in [-0.1, 1.5, f64::NAN] {
            let config = DraftTrainConfig {
                soft_targets: bad,
                ..DraftTrainConfig::default()
            };
            let e = config.validate().unwrap_err().to_string();
            assert!(e.contains("soft_targets"), "{e}");
        }
    }
}
