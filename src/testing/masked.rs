//! The [`MaskedLm`] contract as a check: compaction keeps exactly what attention sees.

use tch::{Kind, Tensor};

use super::checks::{invariants::COMPACTION, ConformanceFailure};
use crate::masked::MaskedLm;

/// Checks [`MaskedLm::compact`] on `model`: two rows read a prompt, then a tree of candidates
/// each; every row keeps a different scattered set of slots (a path through its tree, some
/// prompt slots dropped, one row already in place up to its tree). A query block scored over
/// the kept slots where they lie, by mask, must score the same (largest logit difference at
/// most `tolerance`; 0 for a model whose attention is exact under masks) after the kept slots
/// are compacted to the front, by a mask over `0..kept`. Covers the index entries that keep a
/// slot in place (`index[b][j] == j`), which an implementation may skip copying.
///
/// Opens a batch of 2 rows of 48 slots (`begin_batch`), so the model needs a vocabulary of at
/// least 16 tokens and a context of 48.
pub fn check_compaction(
    model: &mut dyn MaskedLm,
    tolerance: f64,
) -> std::result::Result<(), ConformanceFailure> {
    let fail = |detail: String| ConformanceFailure {
        invariant: COMPACTION,
        detail,
        case: None,
    };
    let model_err = |e: crate::Error| fail(format!("the model returned an error: {e}"));
    let vocab = model.info().vocab_size;
    if vocab < 16 || model.info().max_context < 48 {
        return Err(fail(format!(
            "the check needs a vocabulary of 16 and a context of 48 (the model has {vocab} and \
             {})",
            model.info().max_context
        )));
    }
    let device = model.info().device;
    let (b, prompt, tree) = (2usize, 10usize, 5usize);
    model.begin_batch(b, 48).map_err(model_err)?;
    // Call 1: each row reads its prompt (causal).
    let tok = |r: usize, i: usize| ((r * 7 + i * 5 + 3) as i64) % vocab;
    let call = |model: &mut dyn MaskedLm,
                tokens: Vec<i64>,
                positions: Vec<i64>,
                mask: Vec<bool>,
                t: usize|
     -> crate::Result<Tensor> {
        let keys = mask.len() / (b * t);
        let out = model.forward_masked(
            &Tensor::from_slice(&tokens)
                .view([b as i64, t as i64])
                .to_device(device),
            &Tensor::from_slice(&positions)
                .view([b as i64, t as i64])
                .to_device(device),
            &Tensor::from_slice(&mask)
                .view([b as i64, t as i64, keys as i64])
                .to_device(device),
        )?;
        Ok(out.logits.to_kind(Kind::Double).to_device(tch::Device::Cpu))
    };
    let mut tokens = Vec::new();
    let mut mask = vec![false; b * prompt * prompt];
    for r in 0..b {
        for i in 0..prompt {
            tokens.push(tok(r, i));
            for j in 0..=i {
                mask[(r * prompt + i) * prompt + j] = true;
            }
        }
    }
    let positions: Vec<i64> = (0..b).flat_map(|_| 0..prompt as i64).collect();
    let _ = call(model, tokens, positions, mask, prompt).map_err(model_err)?;
    // Call 2: a tree per row at slots 10..15: node 0 under the prompt, 1 and 2 under 0, 3
    // under 1, 4 under 3. Row 0 sees its whole prompt; row 1 all of it but slot 4.
    let parents = [usize::MAX, 0, 0, 1, 3];
    let depth = [0i64, 1, 1, 2, 3];
    let seen = |r: usize, s: usize| !(r == 1 && s == 4);
    let keys = prompt + tree;
    let mut tokens = Vec::new();
    let mut positions = Vec::new();
    let mut mask = vec![false; b * tree * keys];
    for r in 0..b {
        for (i, d) in depth.iter().enumerate() {
            tokens.push(tok(r, 20 + i));
            positions.push(prompt as i64 + d);
            let q = (r * tree + i) * keys;
            for s in (0..prompt).filter(|&s| seen(r, s)) {
                mask[q + s] = true;
            }
            let mut a = i;
            loop {
                mask[q + prompt + a] = true;
                if parents[a] == usize::MAX {
                    break;
                }
                a = parents[a];
            }
        }
    }
    let _ = call(model, tokens, positions, mask, tree).map_err(model_err)?;
    // Kept: row 0 its prompt and the path 0, 1, 3 (in place up to slot 11); row 1 its prompt
    // less slot 4 and the path 0, 2.
    let live: [Vec<i64>; 2] = [
        (0..prompt as i64).chain([10, 11, 13]).collect(),
        (0..prompt as i64)
            .filter(|&s| s != 4)
            .chain([10, 12])
            .collect(),
    ];
    let n = live.iter().map(Vec::len).max().unwrap_or(0);
    let used = prompt + tree;
    // A query block of 2 tokens per row after its kept slots, by mask over the scattered
    // slots; then forgotten again (compaction to the slots used before it).
    let query = |model: &mut dyn MaskedLm, scattered: bool| -> crate::Result<Tensor> {
        let start = model.slots_used();
        let keys = start + 2;
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut mask = vec![false; b * 2 * keys];
        for (r, kept) in live.iter().enumerate() {
            for i in 0..2 {
                tokens.push(tok(r, 40 + i));
                positions.push((kept.len() + i) as i64);
                let q = (r * 2 + i) * keys;
                if scattered {
                    for &s in kept {
                        mask[q + s as usize] = true;
                    }
                } else {
                    for s in 0..kept.len() {
                        mask[q + s] = true;
                    }
                }
                for j in 0..=i {
                    mask[q + start + j] = true;
                }
            }
        }
        call(model, tokens, positions, mask, 2)
    };
    // Compacts to `index` (`[B, kept]`) and checks that `kept` slots are left in use.
    let compact = |model: &mut dyn MaskedLm, index: &Tensor, kept: usize| {
        model.compact(index).map_err(model_err)?;
        match model.slots_used() {
            left if left == kept => Ok(()),
            left => Err(fail(format!(
                "compact to {kept} slots left slots_used() = {left}"
            ))),
        }
    };
    let before = query(model, true).map_err(model_err)?;
    let restore = Tensor::from_slice(&(0..used as i64).collect::<Vec<_>>())
        .view([1, used as i64])
        .repeat([b as i64, 1])
        .to_device(device);
    compact(model, &restore, used)?;
    let index: Vec<i64> = live
        .iter()
        .flat_map(|kept| kept.iter().copied().chain(kept.len() as i64..n as i64))
        .collect();
    let index = Tensor::from_slice(&index)
        .view([b as i64, n as i64])
        .to_device(device);
    compact(model, &index, n)?;
    let after = query(model, false).map_err(model_err)?;
    let diff = (&before - &after).abs().max().double_value(&[]);
    if diff.is_nan() || diff > tolerance {
        return Err(fail(format!(
            "the query's logits moved by {diff} (tolerance {tolerance}) once its kept slots \
             were compacted to the front"
        )));
    }
    Ok(())
}
