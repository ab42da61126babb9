//! Batched blockwise decoding, with chains or candidate trees: many prompts per model call,
//! each row accepting its own number of tokens and finishing on its own. The loop itself is in
//! [`session`]: [`BatchBlockwise::decode_batch`] opens a batch, admits every prompt and steps it
//! to the end; a server admits and cancels rows between steps.

mod config;
mod session;

pub use config::TreeConfig;
pub use session::{RowId, RowUpdate};

use std::time::Instant;

use tch::{Kind, Tensor};

use super::tree::{TokenTree, TreeShape, MAX_TREE_NODES};
use super::{seconds_since, BlockwiseDecoder, Budget, DecodeOutput};
use crate::acceptance::{AcceptanceCriterion, BlockView, Exact};
use crate::config::DecodeConfig;
use crate::error::{Error, Result};
use crate::masked::MaskedLm;
use crate::model::{check_tokens, CausalLm};
use crate::proposer::{NoProposer, ProposalContext, Proposer};
use crate::stats::{DecodeStats, StopReason};
use crate::verifier::{host_argmax, ranked_candidates};
use session::Live;

/// Makes one proposer per row (proposers such as n-gram lookup or a draft model keep per-sequence
/// state).
pub type ProposerFactory = Box<dyn FnMut() -> Result<Box<dyn Proposer>>>;

/// Blockwise decoding of a batch of prompts through a [`MaskedLm`]: every iteration verifies
/// one block (a chain, or a tree of candidates) per unfinished row in one model call, and each
/// row keeps what its own acceptance allows. Under [`Exact`] acceptance every row's output equals
/// that row decoded alone by [`GreedyDecoder`](super::GreedyDecoder).
///
/// Rows share the model's slot cache: each call appends the same number of slots to every row
/// (shorter blocks are padded), and a row's attention mask lists the slots it keeps — its prompt
/// and its accepted tokens — so rejected tokens and other rows' padding are never attended.
/// Positions are explicit, so every row counts its own. Each row's kept slots are moved to the
/// front ([`MaskedLm::compact`]) when the slots run out, when most are dead, and before any call
/// where that moves only a few slots per row (the last call's accepted ones).
///
/// With a [`TreeShape`] (heads only) the block is a tree: under the model's own next token the
/// top candidates of the first head, under each of them the second head's, and so on, all
/// verified in one call with a tree attention mask; the longest branch the model agrees with is
/// kept.
///
/// ```no_run
/// use blockwise::decoder::BatchBlockwise;
/// use blockwise::{DecodeConfig, HeadsProposer, Transformer, TransformerConfig};
/// # fn main() -> blockwise::Result<()> {
/// let model = Transformer::new_seeded(TransformerConfig::tiny(100, 3), 7, tch::Device::Cpu)?;
/// let mut decoder = BatchBlockwise::builder(model)
///     .block_size(4)
///     .proposer(HeadsProposer)
///     .tree("2,2,1".parse()?)
///     .build()?;
/// let outs = decoder.decode_batch(&[vec![1, 2, 3], vec![4, 5]], &DecodeConfig::new(20))?;
/// for out in outs {
///     println!("{:?} in {} iterations", out.tokens, out.stats.iterations);
/// }
/// # Ok(()) }
/// ```
pub struct BatchBlockwise<M> {
    model: M,
    proposers: ProposerFactory,
    needs_heads: bool,
    criterion: Box<dyn AcceptanceCriterion>,
    block_size: usize,
    tree: Option<TreeShape>,
    dynamic: Option<usize>,
    slots: Option<usize>,
    /// Proposals only while at most this many rows are busy ([`BatchBuilder::speculate_up_to`]).
    speculate_up_to: Option<usize>,
    /// Whether this step's blocks hold proposals (set per step from the busy rows).
    speculating: bool,
    /// The open batch ([`BatchBlockwise::open`]), if any.
    live: Option<Live>,
    /// The id the next admitted row gets (never reused).
    next_row: u64,
}

impl<M> std::fmt::Debug for BatchBlockwise<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchBlockwise")
            .field("block_size", &self.block_size)
            .field("tree", &self.tree)
            .finish_non_exhaustive()
    }
}

/// Assembles a [`BatchBlockwise`]; [`BatchBuilder::build`] checks the parts fit.
pub struct BatchBuilder<M> {
    model: M,
    proposers: ProposerFactory,
    needs_heads: bool,
    criterion: Option<Box<dyn AcceptanceCriterion>>,
    block_size: usize,
    tree: Option<TreeShape>,
    dynamic: Option<usize>,
    slots: Option<usize>,
    speculate_up_to: Option<usize>,
}

impl<M: CausalLm> BatchBuilder<M> {
    /// Proposals only while at most `rows` rows of the batch are busy (default: always). With
    /// more, every row takes plain greedy steps, one token a call, its proposer still told what
    /// was accepted: a call over many rows costs about what their tokens do, so under load the
    /// rows' proposals cost more than they save (docs/serving.md, "Proposals under load").
    /// Output is the same either way.
    pub fn speculate_up_to(mut self, rows: usize) -> Self {
        self.speculate_up_to = Some(rows);
        self
    }

    /// Cache slots per row (default: twice the longest sequence plus one block). Fewer slots
    /// use less memory and compact more often; never fewer than the longest sequence plus one
    /// block are allocated.
    pub fn slots(mut self, slots: usize) -> Self {
        self.slots = Some(slots);
        self
    }

    /// Block size `k` (default 4): the always-right token plus up to `k - 1` proposals (a
    /// tree's depth counts as its proposals).
    pub fn block_size(mut self, k: usize) -> Self {
        self.block_size = k;
        self
    }

    /// One proposer, cloned for every row.
    pub fn proposer<P: Proposer + Clone + 'static>(mut self, proposer: P) -> Self {
        self.needs_heads = proposer.needs_heads();
        self.proposers = Box::new(move || Ok(Box::new(proposer.clone()) as Box<dyn Proposer>));
        self
    }

    /// A proposer per row from `make` (for proposers that cannot be cloned, such as a draft
    /// model with its own cache). `needs_heads` says whether they read the model's heads.
    pub fn proposer_factory(
        mut self,
        needs_heads: bool,
        make: impl FnMut() -> Result<Box<dyn Proposer>> + 'static,
    ) -> Self {
        self.needs_heads = needs_heads;
        self.proposers = Box::new(make);
        self
    }

    /// The acceptance criterion of chain blocks (default: [`Exact`]). Trees are verified
    /// exactly.
    pub fn criterion(mut self, criterion: impl AcceptanceCriterion + 'static) -> Self {
        self.criterion = Some(Box::new(criterion));
        self
    }

    /// Verify candidate trees of this shape instead of chains (reads the model's proposal
    /// heads; the proposer is then not used).
    pub fn tree(mut self, shape: TreeShape) -> Self {
        self.tree = Some(shape);
        self
    }

    /// Verify trees the proposer builds ([`Proposer::propose_tree`], for example a
    /// feature-level draft's, grown by its own confidence) of at most `nodes` nodes, instead of
    /// chains; a proposer that builds no trees has its chains verified.
    pub fn dynamic_tree(mut self, nodes: usize) -> Self {
        self.dynamic = Some(nodes);
        self
    }

    /// Checks the block size, the tree and the heads against the model, and that the model
    /// takes explicit positions and attention masks ([`CausalLm::as_masked`]).
    pub fn build(mut self) -> Result<BatchBlockwise<M>> {
        masked(&mut self.model)?;
        let k = self.block_size;
        if k == 0 {
            return Err(Error::config(
                "block_size",
                "must be at least 1 (1 is plain greedy decoding)",
            ));
        }
        let context = self.model.info().max_context;
        if k > context {
            return Err(Error::config(
                "block_size",
                format!("is {k}, more than the model's context of {context} tokens"),
            ));
        }
        let heads = self.model.info().num_heads;
        if let Some(nodes) = self.dynamic {
            if self.tree.is_some() {
                return Err(Error::config(
                    "tree",
                    "a fixed tree shape and a dynamic tree were both asked for; choose one",
                ));
            }
            if nodes == 0 || nodes > MAX_TREE_NODES {
                return Err(Error::config(
                    "tree",
                    format!("a dynamic tree needs 1 to {MAX_TREE_NODES} nodes, got {nodes}"),
                ));
            }
            if self.criterion.is_some() {
                return Err(Error::config(
                    "acceptance",
                    "tree blocks are verified exactly; leave the criterion at its default",
                ));
            }
        }
        if let Some(shape) = &self.tree {
            if shape.depth() > k - 1 {
                return Err(Error::config(
                    "tree",
                    format!(
                        "{shape} is {} deep; a block of k = {k} holds at most {} proposals",
                        shape.depth(),
                        k - 1
                    ),
                ));
            }
            if heads < shape.depth() {
                return Err(Error::config(
                    "tree",
                    format!(
                        "{shape} reads {} proposal heads; the model has {heads}",
                        shape.depth()
                    ),
                ));
            }
            if self.criterion.is_some() {
                return Err(Error::config(
                    "acceptance",
                    "tree blocks are verified exactly; leave the criterion at its default",
                ));
            }
        }
        if self.needs_heads && k > 1 && heads < k - 1 {
            return Err(Error::config(
                "block_size",
                format!(
                    "is {k}, which needs {} proposal heads; the model has {heads}",
                    k - 1
                ),
            ));
        }
        Ok(BatchBlockwise {
            model: self.model,
            proposers: self.proposers,
            needs_heads: self.needs_heads || self.tree.is_some(),
            criterion: self.criterion.unwrap_or_else(|| Box::new(Exact)),
            block_size: k,
            tree: self.tree,
            dynamic: self.dynamic,
            slots: self.slots,
            speculate_up_to: self.speculate_up_to,
            speculating: true,
            live: None,
            next_row: 0,
        })
    }
}

/// One row of the batch while it decodes.
struct Row {
    id: RowId,
    /// What this row's request asked for (its budget, end tokens, prefill chunk).
    config: DecodeConfig,
    budget: Budget,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// New tokens already handed out in a [`RowUpdate`].
    reported: usize,
    started: Instant,
    prompt_len: usize,
    seq: Vec<i64>,
    proposer: Box<dyn Proposer>,
    stats: DecodeStats,
    stop: Option<StopReason>,
    /// Cache slots this row attends, in sequence order.
    live: Vec<i64>,
    next: i64,
    /// Ranked candidates of each proposal head after the last kept token.
    heads: Vec<Vec<i64>>,
}

/// One row's part of a call: tokens, positions, and which earlier part-nodes each node sees.
struct Part {
    tree: TokenTree,
    first_position: usize,
}

/// What a batched call returns, on the host: each row's ranked candidates per node, and the
/// device tensors the heads need.
struct Scored {
    /// `[B][T * width]` ranked candidates (argmax first).
    ranked: Vec<Vec<i64>>,
    width: usize,
    hidden: Option<Tensor>,
    /// The first slot of this call.
    base: i64,
}

impl<M: CausalLm> BatchBlockwise<M> {
    /// Starts assembling a decoder around `model` (which may be a `&mut` borrow).
    pub fn builder(model: M) -> BatchBuilder<M> {
        BatchBuilder {
            model,
            proposers: Box::new(|| Ok(Box::new(NoProposer) as Box<dyn Proposer>)),
            needs_heads: false,
            criterion: None,
            block_size: 4,
            tree: None,
            dynamic: None,
            slots: None,
            speculate_up_to: None,
        }
    }

    /// The block size `k`.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The model back.
    pub fn into_model(self) -> M {
        self.model
    }

    /// Widest block a row may send: the tree's nodes plus the root, or `k`. A dynamic-tree
    /// decoder also sends chains of up to `k` (from a proposer that builds no tree).
    fn max_block(&self) -> usize {
        match (&self.tree, self.dynamic) {
            (Some(t), _) => t.nodes() + 1,
            (None, Some(nodes)) => (nodes + 1).max(self.block_size),
            (None, None) => self.block_size,
        }
    }

    /// Decodes every prompt; output `i` belongs to `prompts[i]`. Greedy decoding only
    /// (`config.sampling` must be `None`). Every output's `wall_s` is the whole batch's.
    pub fn decode_batch(
        &mut self,
        prompts: &[Vec<i64>],
        config: &DecodeConfig,
    ) -> Result<Vec<DecodeOutput>> {
        let t0 = Instant::now();
        let info = self.model.info().clone();
        if config.sampling.is_some() {
            return Err(sampling_refused());
        }
        for p in prompts {
            config.check(p, &info)?;
        }
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
        let longest_seq = (longest + config.max_new_tokens).min(info.max_context);
        let least = longest_seq + self.max_block();
        let slots = self.slots.unwrap_or(2 * longest_seq).max(least);
        self.open(prompts.len(), slots)?;
        let result = self.run_to_end(prompts, config);
        // A failed batch leaves nothing behind for the next one.
        self.live = None;
        let wall = seconds_since(t0);
        let mut outs = result?;
        for out in &mut outs {
            out.stats.finish(wall);
        }
        Ok(outs)
    }

    /// Admits every prompt into the open batch and steps until each has finished.
    fn run_to_end(
        &mut self,
        prompts: &[Vec<i64>],
        config: &DecodeConfig,
    ) -> Result<Vec<DecodeOutput>> {
        let ids = prompts
            .iter()
            .map(|p| self.admit(p, config))
            .collect::<Result<Vec<_>>>()?;
        let mut outs: Vec<Option<DecodeOutput>> = vec![None; prompts.len()];
        while outs.iter().any(Option::is_none) {
            if self.busy_rows() == 0 {
                return Err(Error::Contract {
                    component: "BatchBlockwise",
                    problem: "a row left the batch without an output".into(),
                });
            }
            for update in self.step()? {
                if let Some(out) = update.finished {
                    let i = ids
                        .iter()
                        .position(|&id| id == update.row)
                        .ok_or(Error::Contract {
                            component: "BatchBlockwise",
                            problem: "an update for a row this batch never admitted".into(),
                        })?;
                    outs[i] = Some(out?);
                }
            }
        }
        Ok(outs.into_iter().flatten().collect())
    }

    /// This row's block for the next call, or `None` when it has finished (its stop set).
    fn predict(&mut self, row: &mut Row) -> Result<Option<Part>> {
        row.settle()?;
        if row.stop.is_some() {
            return Ok(None);
        }
        let config = row.config.clone();
        let emitted = row.seq.len() - row.prompt_len;
        let room = row.budget.remaining(emitted, row.seq.len());
        let max_tokens = match self.speculating {
            true => (self.block_size - 1).min(room - 1),
            false => 0,
        };
        let argmax: Vec<i64> = row
            .heads
            .iter()
            .filter_map(|c| c.first().copied())
            .collect();
        let grown = match self.dynamic {
            Some(nodes) if max_tokens > 0 => {
                let ctx = ProposalContext::new(&row.seq, row.next, max_tokens)
                    .with_heads(self.needs_heads.then_some(argmax.as_slice()));
                let tp = Instant::now();
                let tree = row.proposer.propose_tree(&ctx, nodes)?;
                row.stats.proposer_s += seconds_since(tp);
                match tree {
                    Some(t) => {
                        check_tokens("proposal", &t.tokens, self.model.info().vocab_size)?;
                        Some(TokenTree::from_draft(
                            row.next,
                            &t,
                            max_tokens,
                            nodes,
                            |t| config.is_eos(t),
                        )?)
                    }
                    None => None,
                }
            }
            _ => None,
        };
        let tree = match (&self.tree, grown) {
            (_, Some(tree)) => tree,
            (Some(shape), None) => {
                TokenTree::product(row.next, &row.heads, shape.widths(), max_tokens, |t| {
                    config.is_eos(t)
                })
            }
            (None, None) => {
                let ctx = ProposalContext::new(&row.seq, row.next, max_tokens)
                    .with_heads(self.needs_heads.then_some(argmax.as_slice()));
                let tp = Instant::now();
                let mut guess = if max_tokens == 0 {
                    Vec::new()
                } else {
                    row.proposer.propose(&ctx)?
                };
                row.stats.proposer_s += seconds_since(tp);
                guess.truncate(max_tokens);
                check_tokens("proposal", &guess, self.model.info().vocab_size)?;
                if let Some(eos) = guess.iter().position(|&t| config.is_eos(t)) {
                    guess.truncate(eos + 1);
                }
                TokenTree::chain(row.next, &guess)
            }
        };
        Ok(Some(Part {
            tree,
            first_position: row.seq.len(),
        }))
    }

    /// The kept path of one row's block: the whole chain prefix the criterion accepts, or the
    /// tree's longest branch the model agrees with.
    fn accept(&self, tree: &TokenTree, ranked: &[i64], width: usize) -> Result<Vec<usize>> {
        if self.tree.is_some() || self.dynamic.is_some() {
            let argmax: Vec<i64> = ranked.chunks(width).map(|c| c[0]).collect();
            return Ok(tree.walk(&argmax));
        }
        let proposed = &tree.tokens[1..];
        let view = BlockView::new(proposed, &ranked[..tree.len() * width], width).ok_or(
            Error::Contract {
                component: "BatchBlockwise",
                problem: "too few ranked candidates".into(),
            },
        )?;
        let accepted = self.criterion.accept(&view);
        if accepted > proposed.len() {
            return Err(Error::Contract {
                component: "acceptance criterion",
                problem: format!("accepted {accepted} of {} proposed tokens", proposed.len()),
            });
        }
        Ok((0..=accepted).collect())
    }

    /// One model call over every row's part (rows without one send a padding token that only
    /// sees itself). Compacts the cache first when the slots would run out. Returns each row's
    /// ranked candidates per node (argmax first, then the rest of the top `width`), checked
    /// finite.
    fn call(
        &mut self,
        rows: &mut [Option<Row>],
        parts: &[Option<Part>],
        width: usize,
    ) -> Result<Scored> {
        let t = parts
            .iter()
            .map(|p| p.as_ref().map_or(1, |p| p.tree.len()))
            .max()
            .unwrap_or(1);
        // Compact when the slots run out, when most used slots are dead (rejected blocks,
        // padding, rows that left: a call attends every used slot, so a long-open batch, a
        // server's, would otherwise pay for up to its whole capacity each call), and whenever
        // there are dead slots and the only live ones out of place are a few per row (the last
        // call's accepted ones, moved over its rejected ones; none when it kept a prefix, and
        // then the rejected tail is only forgotten): a row whose slots are one run from slot 0
        // is attended as one, and one scattered among dead slots cost a native SmolLM2 call
        // 3-8% more (docs/batching.md, "Dead slots").
        let longest = rows
            .iter()
            .flatten()
            .map(|r| r.live.len())
            .max()
            .unwrap_or(0);
        let m = masked(&mut self.model)?;
        let used = m.slots_used();
        let cheap = used > longest
            && rows
                .iter()
                .flatten()
                .all(|r| out_of_place(&r.live) <= CHEAP_MOVE);
        if cheap || used + t > m.slot_capacity() || used > 2 * longest + 64 {
            self.compact(rows)?;
        }
        let s = masked(&mut self.model)?.slots_used();
        let keys = s + t;
        let b = rows.len();
        let mut tokens = vec![0i64; b * t];
        let mut positions = vec![0i64; b * t];
        let mut mask = vec![false; b * t * keys];
        for (r, (row, part)) in rows.iter().zip(parts).enumerate() {
            for i in 0..t {
                let q = (r * t + i) * keys;
                // Every query sees its own slot (padding included: no empty softmax).
                mask[q + s + i] = true;
            }
            let (Some(row), Some(part)) = (row, part) else {
                continue;
            };
            for (i, &token) in part.tree.tokens.iter().enumerate() {
                tokens[r * t + i] = token;
                positions[r * t + i] = (part.first_position + part.tree.depths[i]) as i64;
                let q = (r * t + i) * keys;
                for &slot in &row.live {
                    mask[q + slot as usize] = true;
                }
                for j in 0..i {
                    if part.tree.sees(i, j) {
                        mask[q + s + j] = true;
                    }
                }
            }
        }
        let device = self.model.info().device;
        let dims = [b as i64, t as i64];
        let tokens = Tensor::from_slice(&tokens)
            .f_view(dims)?
            .f_to_device(device)?;
        let positions = Tensor::from_slice(&positions)
            .f_view(dims)?
            .f_to_device(device)?;
        let mask = Tensor::from_slice(&mask)
            .f_view([b as i64, t as i64, keys as i64])?
            .f_to_device(device)?;
        let out = masked(&mut self.model)?.forward_masked(&tokens, &positions, &mask)?;
        let vocab = self.model.info().vocab_size;
        let size = out.logits.size();
        if size != [b as i64, t as i64, vocab] {
            return Err(Error::BadOutputShape {
                output: "logits",
                expected: format!("[{b}, {t}, {vocab}] (batch, block, vocabulary)"),
                actual: size,
            });
        }
        let width = width.min(vocab as usize);
        // Per node: whether its logits are finite, then its ranked candidates.
        let flat: Vec<i64> = match host_argmax(&out.logits, b * t).filter(|_| width <= 1) {
            Some(best) => best
                .into_iter()
                .flat_map(|(finite, at)| [i64::from(finite), at])
                .collect(),
            None => {
                let ranked = ranked_candidates(&out.logits, width)?; // [B, T, width]
                let finite = out
                    .logits
                    .f_isfinite()?
                    .f_all_dim(-1, true)?
                    .f_to_kind(Kind::Int64)?;
                let packed = Tensor::f_cat(&[finite, ranked], 2)?.f_to_device(tch::Device::Cpu)?;
                Vec::try_from(&packed.f_flatten(0, -1)?)?
            }
        };
        let mut per_row = Vec::with_capacity(b);
        for (r, row_flat) in flat.chunks(t * (width + 1)).enumerate() {
            let used = parts[r].as_ref().map_or(0, |p| p.tree.len());
            let mut ranked = Vec::with_capacity(t * width);
            for (i, node) in row_flat.chunks(width + 1).enumerate() {
                if i < used && node[0] == 0 {
                    return Err(Error::NonFiniteLogits {
                        position: i,
                        sequence_position: None,
                    });
                }
                ranked.extend_from_slice(&node[1..]);
            }
            per_row.push(ranked);
        }
        Ok(Scored {
            ranked: per_row,
            width,
            hidden: out.hidden,
            base: s as i64,
        })
    }

    /// Moves every row's live slots to the front of its cache row.
    fn compact(&mut self, rows: &mut [Option<Row>]) -> Result<()> {
        let n = rows
            .iter()
            .flatten()
            .map(|r| r.live.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut index = Vec::with_capacity(rows.len() * n);
        for row in rows.iter() {
            let live = row.as_ref().map_or(&[][..], |r| &r.live[..]);
            index.extend_from_slice(live);
            // Past a row's live slots it keeps whatever is there (never attended): no copy.
            index.extend(live.len() as i64..n as i64);
        }
        let device = self.model.info().device;
        let index = Tensor::from_slice(&index)
            .f_view([rows.len() as i64, n as i64])?
            .f_to_device(device)?;
        masked(&mut self.model)?.compact(&index)?;
        for row in rows.iter_mut().flatten() {
            row.live = (0..row.live.len() as i64).collect();
        }
        Ok(())
    }

    /// The heads' ranked candidates after each row's last kept node (`last[b]`), for rows that
    /// go on; one head call and one transfer for the batch.
    fn refresh_heads(
        &self,
        rows: &mut [Option<Row>],
        scored: &Scored,
        last: &[Option<usize>],
    ) -> Result<()> {
        if !self.needs_heads || self.block_size < 2 {
            return Ok(());
        }
        let Some(hidden) = &scored.hidden else {
            return Err(Error::MissingCapability {
                component: "proposal heads",
                capability: "final hidden states in the model output",
            });
        };
        let picks: Vec<(usize, i64)> = last
            .iter()
            .enumerate()
            .filter_map(|(b, n)| n.map(|n| (b, n as i64)))
            .collect();
        if picks.is_empty() {
            return Ok(());
        }
        let device = hidden.device();
        let (bs, ns): (Vec<i64>, Vec<i64>) = picks.iter().map(|&(b, n)| (b as i64, n)).unzip();
        let states = hidden.f_index(&[
            Some(Tensor::from_slice(&bs).f_to_device(device)?),
            Some(Tensor::from_slice(&ns).f_to_device(device)?),
        ])?; // [P, D]
        let depth = self.block_size - 1;
        let logits =
            self.model
                .head_logits_first(&states, depth)?
                .ok_or(Error::MissingCapability {
                    component: "proposal heads",
                    capability: "proposal heads (num_proposal_heads > 0)",
                })?; // [P, H, V]
        let width = self
            .tree
            .as_ref()
            .map_or(1, |t| t.widths().iter().copied().max().unwrap_or(1));
        let heads = logits.size()[1] as usize;
        let ranked = ranked_candidates(&logits, width)?; // [P, H, width]
        let flat: Vec<i64> =
            Vec::try_from(&ranked.f_flatten(0, -1)?.f_to_device(tch::Device::Cpu)?)?;
        for ((b, _), chunk) in picks.iter().zip(flat.chunks(heads * width)) {
            if let Some(row) = rows[*b].as_mut() {
                row.heads = chunk.chunks(width).map(<[i64]>::to_vec).collect();
            }
        }
        Ok(())
    }
}

impl<M: CausalLm> BlockwiseDecoder for BatchBlockwise<M> {
    /// A batch of one.
    fn decode(&mut self, prompt: &[i64], config: &DecodeConfig) -> Result<DecodeOutput> {
        let mut outs = self.decode_batch(&[prompt.to_vec()], config)?;
        outs.pop().ok_or(Error::Contract {
            component: "BatchBlockwise",
            problem: "no output for the one prompt".into(),
        })
    }
}

/// The most slots one row may have out of place for the batch to be compacted before a call
/// although its slots have not run out: about two blocks' worth, a copy of well under a
/// millisecond for SmolLM2.
const CHEAP_MOVE: usize = 32;

/// How many of a row's live slots compaction would move (those not yet at their place).
fn out_of_place(live: &[i64]) -> usize {
    live.iter()
        .enumerate()
        .filter(|&(j, &s)| s != j as i64)
        .count()
}

/// Hands a row's proposer the hidden states of the call's nodes `nodes` (just committed), when
/// it reads them.
fn hand_hidden(row: &mut Row, scored: &Scored, b: usize, nodes: &[usize]) -> Result<()> {
    if !row.proposer.needs_hidden() {
        return Ok(());
    }
    let hidden = scored.hidden.as_ref().ok_or(Error::MissingCapability {
        component: "a feature-level draft",
        capability: "final hidden states in the model output",
    })?;
    let idx: Vec<i64> = nodes.iter().map(|&n| n as i64).collect();
    let rows = hidden
        .f_select(0, b as i64)?
        .f_index_select(0, &Tensor::from_slice(&idx).f_to_device(hidden.device())?)?;
    let tp = Instant::now();
    row.proposer.observe_hidden(&rows)?;
    row.stats.proposer_s += seconds_since(tp);
    Ok(())
}

/// Why a batch refuses sampling.
fn sampling_refused() -> Error {
    Error::config(
        "sampling",
        "batched and tree decoding are greedy; decode rows one at a time with Blockwise to \
         sample",
    )
}

/// The model's masked calling convention, or the error that says it has none.
fn masked<M: CausalLm>(model: &mut M) -> Result<&mut dyn MaskedLm> {
    model.as_masked().ok_or(Error::MissingCapability {
        component: "batched and tree decoding",
        capability: "explicit positions and attention masks (MaskedLm: the built-in \
                     Transformer, TorchScript exports with the masked form)",
    })
}
