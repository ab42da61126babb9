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
}

impl Default for ScoreRequest {
    fn default() -> Self {
        ScoreRequest {
            candidates: 1,
            heads: false,
            prefill_chunk: None,
            margins: false,
            head_count: None,
        }
    }
}

/// The base model's scores after every position of a verified block.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockScores {
    ranked: Vec<i64>,
    width: usize,
    margins: Option<Vec<f64>>,
}

impl BlockScores {
    /// Ranked candidates, row-major: rows of `width` token ids, best first, one row per block
    /// position. `None` when `width` is 0 or does not divide the length.
    pub fn new(ranked: Vec<i64>, width: usize) -> Option<Self> {
        (width > 0 && ranked.len() % width == 0).then_some(BlockScores {
            ranked,
            width,
            margins: None,
        })
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

/// The scores at one position (the last prompt token) and the heads' argmax there.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The base model's greedy next token.
    pub next: i64,
    /// The heads' argmax, when requested.
    pub heads: Option<Vec<i64>>,
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
    let finite = tail
        .f_isfinite()?
        .f_all_dim(-1, false)?
        .f_to_kind(Kind::Int64)?; // [rows]
    let argmax = tail.f_argmax(-1, true)?; // [rows, 1]
    let ranked = if width == 1 {
        argmax
    } else {
        let (_, idx) = tail.f_topk(width as i64, -1, true, true)?;
        let rest = idx.f_narrow(1, 1, width as i64 - 1)?;
        Tensor::f_cat(&[argmax, rest], 1)?
    };
    let packed = Tensor::f_cat(&[finite.f_unsqueeze(1)?, ranked], 1)?.f_to_device(Device::Cpu)?;
    let flat: Vec<i64> = Vec::try_from(&packed.f_flatten(0, -1)?)?;
    let mut out = Vec::with_capacity(rows * width);
    for (r, row) in flat.chunks(width + 1).enumerate() {
        if row[0] == 0 {
            return Err(Error::NonFiniteLogits { position: r });
        }
        out.extend_from_slice(&row[1..]);
    }
    Ok(BlockScores {
        ranked: out,
        width,
        margins: None,
    })
}

/// What a verifier returns for a block: the ranked candidates of the last `rows` positions, with
/// their top-2 margins when `req.margins` asks for them.
pub(crate) fn block_scores(logits: &Tensor, rows: usize, req: ScoreRequest) -> Result<BlockScores> {
    let scores = rank_rows(logits, rows, req.candidates)?;
    Ok(if req.margins {
        scores.with_margins(top2_margins(logits, rows)?)
    } else {
        scores
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
    // -inf is allowed (heads that score a shortlist); NaN is not.
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
        return Err(Error::NonFiniteLogits { position: row });
    }
    Ok(packed[1..].to_vec())
}
