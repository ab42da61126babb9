//! Scoring with explicit positions and an explicit attention mask: what batched rows of
//! different lengths and tree verification need from a model.
//!
//! A [`MaskedLm`] keeps a cache of `B` rows of *slots*. Every call appends `T` slots to every
//! row (the same slots for all rows) and never overwrites one; which slots a query may attend
//! is the mask's business, and where a token stands in its sequence is the position's. So a
//! row that accepted fewer tokens than another simply never attends its rejected slots again,
//! and a rejected tree branch is forgotten the same way. [`MaskedLm::compact`] moves each
//! row's live slots to the front when the slots run out.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::{check_tokens, CausalLm, ModelOutput};

/// A causal language model that scores blocks with explicit positions and attention masks over
/// a batched cache of slots. See the [module documentation](self).
pub trait MaskedLm: CausalLm {
    /// Empties the batched cache and makes room for `batch` rows of `slots` slots each.
    fn begin_batch(&mut self, batch: usize, slots: usize) -> Result<()>;

    /// Slots written so far in every row.
    fn slots_used(&self) -> usize;

    /// Slots each row holds (what [`MaskedLm::begin_batch`] was given).
    fn slot_capacity(&self) -> usize;

    /// Scores `tokens` (`[B, T]` int64) written at slots `slots_used()..slots_used() + T` of
    /// each row. `positions` (`[B, T]` int64) are the tokens' positions in their sequences;
    /// `mask` (`[B, T, slots_used() + T]` bool) is true where a query may attend a slot. Every
    /// query must be allowed at least its own slot. Returns logits `[B, T, V]` and, when the
    /// model exposes them, hidden states `[B, T, D]` (with feature taps after them, as
    /// [`CausalLm::forward`](crate::CausalLm::forward) returns them).
    fn forward_masked(
        &mut self,
        tokens: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
    ) -> Result<ModelOutput>;

    /// Keeps, in every row `b`, the slots `index[b]` (`[B, n]` int64, each `< slots_used()`)
    /// as slots `0..n`, in that order; later slots are forgotten. Entries with `index[b][j] ==
    /// j` keep their slot where it is, and an implementation should move only the others
    /// ([`in_place_prefix`] gives how many leading slots every row keeps in place): the batch
    /// decoder compacts before almost every call, when the last call's accepted slots are
    /// about all it has to move.
    fn compact(&mut self, index: &Tensor) -> Result<()>;
}

/// How many leading slots every row of a [`MaskedLm::compact`] index (`[B, n]` int64) keeps in
/// place: the first `j` with `index[b][j] != j` in any row, or `n`. Slots before it need no
/// copy, so an implementation can gather only slots `p..n` (one small host copy of the index).
pub fn in_place_prefix(index: &Tensor) -> Result<usize> {
    let size = index.size();
    let n = match size[..] {
        [_, n] => n.max(0) as usize,
        _ => {
            return Err(Error::Contract {
                component: "compaction",
                problem: format!("index of shape {size:?}, expected [rows, slots]"),
            })
        }
    };
    if n == 0 {
        return Ok(0);
    }
    let flat: Vec<i64> = Vec::try_from(
        &index
            .f_to_device(tch::Device::Cpu)?
            .f_to_kind(Kind::Int64)?
            .f_flatten(0, -1)?,
    )?;
    Ok(flat
        .chunks(n)
        .map(|r| {
            r.iter()
                .enumerate()
                .position(|(j, &s)| s != j as i64)
                .unwrap_or(n)
        })
        .min()
        .unwrap_or(n))
}

impl<M: MaskedLm + ?Sized> MaskedLm for &mut M {
    fn begin_batch(&mut self, batch: usize, slots: usize) -> Result<()> {
        (**self).begin_batch(batch, slots)
    }
    fn slots_used(&self) -> usize {
        (**self).slots_used()
    }
    fn slot_capacity(&self) -> usize {
        (**self).slot_capacity()
    }
    fn forward_masked(
        &mut self,
        tokens: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
    ) -> Result<ModelOutput> {
        (**self).forward_masked(tokens, positions, mask)
    }
    fn compact(&mut self, index: &Tensor) -> Result<()> {
        (**self).compact(index)
    }
}

impl<M: MaskedLm + ?Sized> MaskedLm for Box<M> {
    fn begin_batch(&mut self, batch: usize, slots: usize) -> Result<()> {
        (**self).begin_batch(batch, slots)
    }
    fn slots_used(&self) -> usize {
        (**self).slots_used()
    }
    fn slot_capacity(&self) -> usize {
        (**self).slot_capacity()
    }
    fn forward_masked(
        &mut self,
        tokens: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
    ) -> Result<ModelOutput> {
        (**self).forward_masked(tokens, positions, mask)
    }
    fn compact(&mut self, index: &Tensor) -> Result<()> {
        (**self).compact(index)
    }
}

/// Checks the arguments of [`MaskedLm::begin_batch`]: at least one row and one slot.
pub fn check_batch(batch: usize, slots: usize) -> Result<()> {
    if batch == 0 || slots == 0 {
        return Err(Error::config(
            "batch",
            format!("a batch needs at least one row and one slot, got {batch} x {slots}"),
        ));
    }
    Ok(())
}

/// Checks the inputs of [`MaskedLm::forward_masked`] against the calling convention and returns
/// `(B, T)`: shapes and kinds, token ids in the vocabulary, positions in `0..max_context`
/// (one host transfer of ids and positions).
pub fn check_masked_input(
    tokens: &Tensor,
    positions: &Tensor,
    mask: &Tensor,
    slots_used: usize,
    vocab_size: i64,
    max_context: usize,
) -> Result<(usize, usize)> {
    let contract = |problem: String| Error::Contract {
        component: "MaskedLm::forward_masked",
        problem,
    };
    let size = tokens.size();
    let (b, t) = match size[..] {
        [b, t] if b >= 1 && t >= 1 && tokens.kind() == Kind::Int64 => (b, t),
        _ => {
            return Err(contract(format!(
                "token ids must be int64 [B, T] with B, T >= 1, got {:?} {size:?}",
                tokens.kind()
            )))
        }
    };
    if positions.size() != [b, t] || positions.kind() != Kind::Int64 {
        return Err(contract(format!(
            "positions must be int64 [{b}, {t}], got {:?} {:?}",
            positions.kind(),
            positions.size()
        )));
    }
    let keys = slots_used as i64 + t;
    if mask.size() != [b, t, keys] || mask.kind() != Kind::Bool {
        return Err(contract(format!(
            "the mask must be bool [{b}, {t}, {keys}], got {:?} {:?}",
            mask.kind(),
            mask.size()
        )));
    }
    let ids: Vec<i64> = Vec::try_from(&tokens.f_flatten(0, -1)?.f_to_device(tch::Device::Cpu)?)?;
    check_tokens("model input", &ids, vocab_size)?;
    let pos: Vec<i64> = Vec::try_from(&positions.f_flatten(0, -1)?.f_to_device(tch::Device::Cpu)?)?;
    if let Some(&p) = pos.iter().find(|&&p| p < 0 || p as usize >= max_context) {
        return Err(Error::BlockBeyondContext {
            start: p.max(0) as usize,
            block_len: 1,
            max_context,
        });
    }
    Ok((b as usize, t as usize))
}
