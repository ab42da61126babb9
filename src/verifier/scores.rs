//! Turning a model's logits into host data in one transfer.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::CausalLm;

/// What a decoder asks the verifier to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreRequest {
    /// Ranked candidates per position (1: the argmax only).
    pub candidates: usize,
    /// Whether to run the proposal heads at the last committed position.
    pub heads: bool,
    /// Feed the prompt in blocks of at most this many tokens (cached verifiers).
    pub prefill_chunk: Option<usize>,
    /// Whether to also return each row's top-2 logit margin (for the tie guard).
    pub margins: bool,
    /// How many proposal heads the proposer can use (`None`: all); a block of `k` uses `k - 1`.
    /// Models skip the vocabulary projection of the others.
    pub head_count: Option<usize>,
    /// Whether to also return the raw logits of every scored row (and of the heads) as host
    /// data: sampling draws from them.
    pub logits: bool,
    /// Whether to keep the final hidden states of every committed token for
    /// [`Verifier::committed_hidden`](super::Verifier::committed_hidden) (feature-level drafts
    /// read them).
    pub hidden: bool,
}

impl Default for ScoreRequest {
    fn default() -> Self {
        ScoreRequest {
            candidates: 1,
            heads: false,
            prefill_chunk: None,
            margins: false,
            head_count: None,
            logits: false,
            hidden: false,
        }
    }
}

/// Rows of logits over the vocabulary, as host `f32` data (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct LogitRows {
    values: Vec<f32>,
    vocab: usize,
}

impl LogitRows {
    /// Rows of `vocab` logits each; `None` when `vocab` is 0 or does not divide the length.
    pub fn new(values: Vec<f32>, vocab: usize) -> Option<Self> {
        (vocab > 0 && values.len() % vocab == 0).then_some(LogitRows { values, vocab })
    }

    /// The last `rows` rows of `logits` (`[1, T, V]`, any float kind, any device), moved to the
    /// host in one transfer. A building block for verifiers of your own.
    pub fn from_tensor(logits: &Tensor, rows: usize) -> Result<Self> {
        let size = logits.size();
        let (t, vocab) = (size[1], size[2]);
        let tail = logits
            .f_narrow(1, t - rows as i64, rows as i64)?
            .f_to_kind(Kind::Float)?
            .f_to_device(Device::Cpu)?
            .f_contiguous()?;
        let values = Vec::<f32>::try_from(&tail.f_flatten(0, -1)?)?;
        Ok(LogitRows {
            values,
            vocab: vocab as usize,
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.values.len() / self.vocab
    }

    /// Logits per row.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Row `i`, or `None` past the end.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        self.values.get(i * self.vocab..(i + 1) * self.vocab)
    }
}

/// The proposal heads' outputs at the last committed position.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadOutputs {
    /// Each head's argmax: `argmax[h]` guesses the token `h + 1` places after the base model's
    /// next token.
    pub argmax: Vec<i64>,
    /// Each head's logits (one row per head), when [`ScoreRequest::logits`] asked for them.
    pub logits: Option<LogitRows>,
}

/// The base model's scores after every position of a verified block.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockScores {
    ranked: Vec<i64>,
    width: usize,
    margins: Option<Vec<f64>>,
    logits: Option<LogitRows>,
}

impl BlockScores {
    /// Ranked candidates, row-major: rows of `width` token ids, best first, one row per block
    /// position. `None` when `width` is 0 or does not divide the length.
    pub fn new(ranked: Vec<i64>, width: usize) -> Option<Self> {
        (width > 0 && ranked.len() % width == 0).then_some(BlockScores {
            ranked,
            width,
            margins: None,
            logits: None,
        })
    }

    /// The same scores with every row's raw logits.
    pub fn with_logits(mut self, logits: LogitRows) -> Self {
        self.logits = Some(logits);
        self
    }

    /// Every row's raw logits, when the verifier was asked for them ([`ScoreRequest::logits`]).
    pub fn logits(&self) -> Option<&LogitRows> {
        self.logits.as_ref()
    }

    /// The same scores with each row's top-2 logit margin (best minus second best).
    pub fn with_margins(mut self, margins: Vec<f64>) -> Self {
        self.margins = Some(margins);
        self
    }

    /// Each row's top-2 logit margin, when the verifier was asked for them.
    pub fn margins(&self) -> Option<&[f64]> {
        self.margins.as_deref()
    }

    /// Candidates per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Rows (block positions).
    pub fn len(&self) -> usize {
        self.ranked.len() / self.width
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.ranked.is_empty()
    }

    /// All rows, row-major.
    pub fn ranked(&self) -> &[i64] {
        &self.ranked
    }

    /// The base model's greedy token after block position `i`.
    pub fn greedy(&self, i: usize) -> i64 {
        self.ranked[i * self.width]
    }
}

/// The scores at one position (the last prompt token) and the heads' outputs there.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The base model's greedy next token.
    pub next: i64,
    /// The heads' outputs, when requested.
    pub heads: Option<HeadOutputs>,
    /// The base model's logits at that position (one row), when requested.
    pub logits: Option<LogitRows>,
}

/// The top `width` ids along the last dimension of `logits`, the argmax first (greedy
/// decoding's tie-breaking), then the rest of the top `width` in order: `[.., width]` int64.
pub(crate) fn ranked_candidates(logits: &Tensor, width: usize) -> Result<Tensor> {
    let argmax = logits.f_argmax(-1, true)?;
    if width <= 1 {
        return Ok(argmax);
    }
    let (_, idx) = logits.f_topk(width as i64, -1, true, true)?;
    let last = idx.dim() as i64 - 1;
    let rest = idx.f_narrow(last, 1, width as i64 - 1)?;
    Ok(Tensor::f_cat(&[argmax, rest], last)?)
}

/// Whether each of the last `rows` rows of `logits` (`[.., V]`) is finite, and its argmax (the
/// first index of its maximum: libtorch's tie-breaking), computed on the host in one pass over
/// the data where `logits` is a contiguous float32 CPU tensor (`None` elsewhere). On a CPU
/// model's outputs this replaces three libtorch operators (`isfinite`, `all`, `argmax`), which
/// cost a verify call of 16 SmolLM2 rows several milliseconds.
pub(crate) fn host_argmax(logits: &Tensor, rows: usize) -> Option<Vec<(bool, i64)>> {
    if logits.device() != Device::Cpu
        || logits.kind() != Kind::Float
        || !logits.is_contiguous()
        || logits.dim() == 0
    {
        return None;
    }
    let size = logits.size();
    let vocab = *size.last()? as usize;
    let numel = size.iter().product::<i64>() as usize;
    if vocab == 0 || rows * vocab > numel {
        return None;
    }
    // SAFETY: a contiguous float32 CPU tensor of `numel` elements, alive for this borrow.
    let data = unsafe { std::slice::from_raw_parts(logits.data_ptr() as *const f32, numel) };
    Some(
        data[numel - rows * vocab..]
            .chunks_exact(vocab)
            .map(row_argmax)
            .collect(),
    )
}

/// Whether `row` is finite, and the first index of its maximum. Lanes of 16 the compiler keeps
/// in vector registers, then the first index holding the maximum.
fn row_argmax(row: &[f32]) -> (bool, i64) {
    const LANES: usize = 16;
    let mut max = [f32::NEG_INFINITY; LANES];
    let mut bad = [false; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            bad[l] |= !c[l].is_finite();
            max[l] = if c[l] > max[l] { c[l] } else { max[l] };
        }
    }
    let mut top = f32::NEG_INFINITY;
    for &v in max.iter().chain(tail) {
        top = if v > top { v } else { top };
    }
    let finite = !bad.iter().any(|&b| b) && tail.iter().all(|v| v.is_finite());
    let at = row.iter().position(|&v| v == top).unwrap_or(0);
    (finite, at as i64)
}

/// Ranked candidates for the last `rows` positions of `logits` (`[1, T, V]`): column 0 is the
/// argmax (the same tie-breaking as greedy decoding), further columns the rest of the top-`width`.
/// Fails on non-finite logits. One device-to-host transfer. A building block for verifiers of
/// your own.
pub fn rank_rows(logits: &Tensor, rows: usize, width: usize) -> Result<BlockScores> {
    let t = logits.size()[1];
    let rows_i = rows as i64;
    let tail = logits.f_narrow(1, t - rows_i, rows_i)?.f_squeeze_dim(0)?; // [rows, V]
    let vocab = tail.size()[1];
    let width = width.max(1).min(vocab as usize);
    if width == 1 && logits.size()[0] == 1 {
        if let Some(best) = host_argmax(logits, rows) {
            let mut ranked = Vec::with_capacity(rows);
            for (r, (finite, at)) in best.into_iter().enumerate() {
                if !finite {
                    return Err(Error::NonFiniteLogits {
                        position: r,
                        sequence_position: None,
                    });
                }
                ranked.push(at);
            }
            return Ok(BlockScores {
                ranked,
                width,
                margins: None,
                logits: None,
            });
        }
    }
    let finite = tail
        .f_isfinite()?
        .f_all_dim(-1, false)?
        .f_to_kind(Kind::Int64)?; // [rows]
    let ranked = ranked_candidates(&tail, width)?; // [rows, width]
    let packed = Tensor::f_cat(&[finite.f_unsqueeze(1)?, ranked], 1)?.f_to_device(Device::Cpu)?;
    let flat: Vec<i64> = Vec::try_from(&packed.f_flatten(0, -1)?)?;
    let mut out = Vec::with_capacity(rows * width);
    for (r, row) in flat.chunks(width + 1).enumerate() {
        if row[0] == 0 {
            return Err(Error::NonFiniteLogits {
                position: r,
                sequence_position: None,
            });
        }
        out.extend_from_slice(&row[1..]);
    }
    Ok(BlockScores {
        ranked: out,
        width,
        margins: None,
        logits: None,
    })
}

/// What a verifier returns for a block: the ranked candidates of the last `rows` positions, with
/// their top-2 margins when `req.margins` asks for them.
pub(crate) fn block_scores(logits: &Tensor, rows: usize, req: ScoreRequest) -> Result<BlockScores> {
    let mut scores = rank_rows(logits, rows, req.candidates)?;
    if req.margins {
        scores = scores.with_margins(top2_margins(logits, rows)?);
    }
    if req.logits {
        scores = scores.with_logits(LogitRows::from_tensor(logits, rows)?);
    }
    Ok(scores)
}

/// What a verifier returns after scoring a sequence's last position (`logits`: `[1, T, V]`):
/// the greedy next token, the heads' outputs at `row` of `hidden` when `req.heads` is set, and
/// the raw logits when `req.logits` is set.
pub(crate) fn step_at(
    model: &dyn CausalLm,
    logits: &Tensor,
    hidden: Option<&Tensor>,
    row: usize,
    req: ScoreRequest,
) -> Result<Step> {
    let next = rank_rows(logits, 1, 1)?.greedy(0);
    Ok(Step {
        next,
        heads: head_outputs(model, hidden, row, req)?,
        logits: if req.logits {
            Some(LogitRows::from_tensor(logits, 1)?)
        } else {
            None
        },
    })
}

/// The top-2 logit margin (best minus second best, in float64) of the last `rows` positions of
/// `logits` (`[1, T, V]`). One device-to-host transfer.
pub fn top2_margins(logits: &Tensor, rows: usize) -> Result<Vec<f64>> {
    let t = logits.size()[1];
    let tail = logits
        .f_narrow(1, t - rows as i64, rows as i64)?
        .f_squeeze_dim(0)?
        .f_to_kind(Kind::Double)?;
    if tail.size()[1] < 2 {
        return Ok(vec![f64::INFINITY; rows]);
    }
    let (vals, _) = tail.f_topk(2, -1, true, true)?;
    let gap = vals.f_select(1, 0)?.f_sub(&vals.f_select(1, 1)?)?;
    Ok(Vec::try_from(&gap.f_to_device(Device::Cpu)?)?)
}

/// The argmax of the first `count` proposal heads (all when `None`) at row `row` of `hidden`
/// (`[1, T, D]`), or an error when the model has no heads. One device-to-host transfer. A
/// building block for verifiers of your own.
pub fn heads_at(
    model: &dyn CausalLm,
    hidden: Option<&Tensor>,
    row: usize,
    count: Option<usize>,
) -> Result<Vec<i64>> {
    let logits = checked_head_logits(model, hidden, row, count)?;
    head_argmax(&logits, row)
}

/// The heads' outputs at row `row` of `hidden` as `req` asks for them: `None` unless
/// `req.heads`; the first `req.head_count` heads' argmax, and their logits when `req.logits`.
/// A building block for verifiers of your own.
pub fn head_outputs(
    model: &dyn CausalLm,
    hidden: Option<&Tensor>,
    row: usize,
    req: ScoreRequest,
) -> Result<Option<HeadOutputs>> {
    if !req.heads {
        return Ok(None);
    }
    let logits = checked_head_logits(model, hidden, row, req.head_count)?; // [1, H, V]
    let argmax = head_argmax(&logits, row)?;
    let rows = logits.size()[1] as usize;
    let logits = if req.logits {
        Some(LogitRows::from_tensor(&logits, rows)?)
    } else {
        None
    };
    Ok(Some(HeadOutputs { argmax, logits }))
}

/// The first `count` heads' logits at `row`, shape-checked: `[1, H, V]`.
fn checked_head_logits(
    model: &dyn CausalLm,
    hidden: Option<&Tensor>,
    row: usize,
    count: Option<usize>,
) -> Result<Tensor> {
    let missing = Error::MissingCapability {
        component: "the heads proposer",
        capability: "final hidden states and proposal heads",
    };
    let hidden = hidden.ok_or(missing)?;
    let h = hidden.f_select(1, row as i64)?; // [1, D]
    let heads = model.info().num_heads;
    let count = count.unwrap_or(heads).min(heads);
    let logits = model
        .head_logits_first(&h, count)?
        .ok_or(Error::MissingCapability {
            component: "the heads proposer",
            capability: "proposal heads",
        })?; // [1, H, V]
    let size = logits.size();
    if size.len() != 3 || size[0] != 1 || size[2] != model.info().vocab_size {
        return Err(Error::BadOutputShape {
            output: "head_logits",
            expected: format!("[1, H, {}]", model.info().vocab_size),
            actual: size,
        });
    }
    Ok(logits)
}

/// Each head's argmax; NaN anywhere is an error at `row` (-inf is allowed: heads that score a
/// shortlist). One device-to-host transfer.
fn head_argmax(logits: &Tensor, row: usize) -> Result<Vec<i64>> {
    let finite = logits
        .f_isnan()?
        .f_any()?
        .f_logical_not()?
        .f_to_kind(Kind::Int64)?
        .f_reshape([1])?;
    let argmax = logits.f_argmax(-1, false)?.f_flatten(0, -1)?;
    let packed: Vec<i64> =
        Vec::try_from(&Tensor::f_cat(&[finite, argmax], 0)?.f_to_device(Device::Cpu)?)?;
    if packed[0] == 0 {
        return Err(Error::NonFiniteLogits {
            position: row,
            sequence_position: None,
        });
    }
    Ok(packed[1..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host pass agrees with libtorch's `argmax` (first maximum) and `isfinite`, on rows with
    /// ties, infinities and NaNs at every place of the lanes and the tail.
    #[test]
    fn host_argmax_matches_libtorch() {
        let mut seed = 7u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for vocab in [1usize, 5, 16, 33, 100, 49] {
            for trial in 0..40 {
                let rows = 3;
                let mut data: Vec<f32> = (0..rows * vocab)
                    // Few distinct values: ties are common.
                    .map(|_| (next() % 7) as f32 - 3.0)
                    .collect();
                if trial % 4 == 1 {
                    let at = next() as usize % data.len();
                    data[at] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][trial % 3];
                }
                let t = Tensor::from_slice(&data).view([1, rows as i64, vocab as i64]);
                let got = host_argmax(&t, rows).unwrap();
                let want: Vec<i64> = Vec::try_from(&t.argmax(-1, false).flatten(0, -1)).unwrap();
                let finite: Vec<bool> =
                    Vec::try_from(&t.isfinite().all_dim(-1, false).flatten(0, -1)).unwrap();
                for r in 0..rows {
                    assert_eq!(got[r].0, finite[r], "vocab {vocab} trial {trial} row {r}");
                    if finite[r] {
                        assert_eq!(got[r].1, want[r], "vocab {vocab} trial {trial} row {r}");
                    }
                }
                // The last rows only, and refusals of other tensors.
                assert_eq!(host_argmax(&t, 1).unwrap()[..], got[rows - 1..]);
                assert!(host_argmax(&t.to_kind(Kind::Double), 1).is_none());
                if vocab > 1 {
                    assert!(host_argmax(&t.transpose(1, 2), 1).is_none());
                }
            }
        }
    }
}
