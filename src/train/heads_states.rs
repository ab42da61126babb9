//! Proposal heads trained on stored hidden states: the teacher-forced data a feature-level
//! draft trains on ([`DraftData`]), so that heads and drafts can be compared on the same data
//! without running the base model again.

use std::time::Instant;

use tch::{Kind, Reduction, Tensor};

use super::adamw::AdamW;
use super::draft_data::DraftData;
use super::heads::{shortlist_targets, HeadsLog, HeadsReport, HeadsTrainConfig};
use super::trainee::HeadsTrainee;
use crate::error::{Error, Result};
use crate::heads::Dropout;
use crate::rng::SeededRng;

/// Trains `model`'s heads (frozen base) on `data`'s hidden states: head `h` at position `t`
/// learns the base model's argmax at position `t + h + 1` of the same sequence — its greedy
/// token `h + 2` places after `t`'s input given the sequence so far, which is what
/// verification checks when the sequence is the base's own output. Each step draws
/// `batch_size · seq_len` positions. Checkpoints, validation and fine-tuning are not offered
/// here (`checkpoint_every`, `validate_every` and `train_base` must be off); training is cheap,
/// since the base never runs.
pub fn train_heads_on_states<T: HeadsTrainee + ?Sized>(
    model: &mut T,
    data: &DraftData,
    config: &HeadsTrainConfig,
    mut progress: impl FnMut(&HeadsLog),
) -> Result<HeadsReport> {
    config.validate()?;
    if config.train_base || config.checkpoint_every > 0 || config.validate_every > 0 {
        return Err(Error::config(
            "heads training on stored states",
            "trains the heads of a frozen base without checkpoints or validation; set \
             train_base false and checkpoint_every, validate_every 0",
        ));
    }
    let heads = model.heads().num_heads();
    let info = model.as_lm().info().clone();
    if data.width() != model.heads().d_model() {
        return Err(Error::config(
            "draft data",
            format!(
                "holds hidden states of width {}; the heads read {}",
                data.width(),
                model.heads().d_model()
            ),
        ));
    }
    // Positions whose first head has a target, and where each position's sequence ends.
    let mut positions = Vec::new();
    let mut ends = vec![0i64; data.len()];
    for w in data.offsets.windows(2) {
        for t in w[0]..w[1] {
            ends[t] = w[1] as i64;
            if t + 1 < w[1] {
                positions.push(t as i64);
            }
        }
    }
    if positions.is_empty() {
        return Err(Error::config(
            "draft data",
            "has no sequence of 2 tokens or more",
        ));
    }
    let device = info.device;
    let mut opt = AdamW::new(model.var_store(), config.optim, |n| model.is_head_var(n))?;
    let mut rng = SeededRng::new(config.seed);
    let argmax: Vec<i64> = Vec::try_from(&data.argmax)?;
    let n = config.batch_size * config.seq_len;
    let t0 = Instant::now();
    let (mut sum, mut count) = (0.0, 0usize);
    let mut logs = Vec::new();
    for step in 0..config.steps {
        let rows: Vec<i64> = (0..n)
            .map(|_| positions[rng.below(positions.len() as u64) as usize])
            .collect();
        let mut targets = vec![-100i64; n * heads];
        for (i, &t) in rows.iter().enumerate() {
            for h in 0..heads {
                let at = t + 1 + h as i64;
                if at < ends[t as usize] {
                    targets[i * heads + h] = argmax[at as usize];
                }
            }
        }
        let hidden = data
            .hidden
            .f_index_select(0, &Tensor::from_slice(&rows))?
            .f_to_kind(Kind::Float)?
            .f_to_device(device)?;
        let targets = Tensor::from_slice(&targets)
            .f_view([n as i64, heads as i64])?
            .f_to_device(device)?;
        let targets = shortlist_targets(model.target_map(), &targets)?;
        let mut dropout = Dropout {
            p: config.dropout,
            rng: &mut rng,
        };
        let states = model.heads().forward(&hidden, Some(&mut dropout))?;
        let logits = model.project(&states, false)?;
        let v = logits.size()[2];
        let loss = logits.f_reshape([-1, v])?.f_cross_entropy_loss::<Tensor>(
            &targets.f_reshape([-1])?,
            None,
            Reduction::Mean,
            -100,
            0.0,
        )?;
        opt.zero_grad()?;
        loss.f_backward()?;
        let grad_norm = opt.clip()?;
        let lr = config.lr.at(step, config.steps);
        opt.step(lr)?;
        sum += f64::try_from(&loss)?;
        count += 1;
        let done = step + 1;
        if done == config.steps || (config.log_every > 0 && done % config.log_every == 0) {
            let elapsed_s = t0.elapsed().as_secs_f64();
            logs.push(HeadsLog {
                step: done,
                steps: config.steps,
                loss: sum / count as f64,
                lm_loss: None,
                lr,
                grad_norm,
                elapsed_s,
                eta_s: (config.steps - done) as f64 * elapsed_s / done as f64,
                mean_accepted: None,
            });
            (sum, count) = (0.0, 0);
            progress(logs.last().expect("just pushed"));
        }
    }
    Ok(HeadsReport {
        final_loss: logs.last().map_or(f64::NAN, |l| l.loss),
        logs,
        mean_accepted: None,
        resumed_from: None,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}
