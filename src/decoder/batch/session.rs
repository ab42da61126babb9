//! The batch loop, one step at a time: open a batch of rows, admit prompts into free rows,
//! step (one model call for every row), cancel rows. [`BatchBlockwise::decode_batch`] is this
//! loop run to the end; a server runs it forever, admitting requests as rows free up.

use std::time::Instant;

use super::{hand_hidden, masked, sampling_refused, BatchBlockwise, Part, Row};
use crate::config::DecodeConfig;
use crate::decoder::tree::TokenTree;
use crate::decoder::{seconds_since, Budget, DecodeOutput};
use crate::error::{Error, Result};
use crate::masked::check_batch;
use crate::model::CausalLm;
use crate::stats::{DecodeStats, StopReason};

/// A request's row in an open batch; ids are never reused by one decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowId(u64);

/// What one [`BatchBlockwise::step`] did for one row.
#[derive(Debug)]
#[non_exhaustive]
pub struct RowUpdate {
    /// The row.
    pub row: RowId,
    /// Tokens it emitted in this step (an accepted block; empty while its prompt is read).
    pub tokens: Vec<i64>,
    /// Set when the row has finished and left the batch: its whole output, or the error that
    /// ended it (a proposer or criterion that broke its contract fails its own row only).
    pub finished: Option<Result<DecodeOutput>>,
}

/// The rows of an open batch; `None` is a free row.
pub(super) struct Live {
    rows: Vec<Option<Row>>,
}

impl Row {
    /// Applies what needs no model call: a finished budget stops the row, and a block that can
    /// hold only the token the last call chose (room for one, or an end token) emits it.
    pub(super) fn settle(&mut self) -> Result<()> {
        while self.stop.is_none() {
            let emitted = self.seq.len() - self.prompt_len;
            let room = self.budget.remaining(emitted, self.seq.len());
            if room == 0 {
                self.stop = Some(
                    self.budget
                        .exhausted(emitted, self.config.on_context_full)?,
                );
            } else if room == 1 || self.config.is_eos(self.next) {
                self.seq.push(self.next);
                self.stats.record_free_iteration();
                if self.config.is_eos(self.next) {
                    self.stop = Some(StopReason::Eos);
                }
            } else {
                break;
            }
        }
        Ok(())
    }

    fn prefilling(&self) -> bool {
        self.prefilled < self.prompt_len
    }

    fn into_output(mut self) -> DecodeOutput {
        self.stats.finish(seconds_since(self.started));
        DecodeOutput {
            tokens: self.seq[self.prompt_len..].to_vec(),
            stats: self.stats,
            stop: self.stop.unwrap_or(StopReason::MaxNewTokens),
        }
    }
}

impl<M: CausalLm> BatchBlockwise<M> {
    /// Opens a batch of `rows` rows sharing `slots` cache slots each (every admitted row needs
    /// its longest sequence plus one block). Refused while rows of an earlier batch are still
    /// decoding.
    pub fn open(&mut self, rows: usize, slots: usize) -> Result<()> {
        if self.busy_rows() > 0 {
            return Err(Error::config(
                "batch",
                format!(
                    "{} rows of the open batch are still decoding; step or cancel them first",
                    self.busy_rows()
                ),
            ));
        }
        check_batch(rows, slots)?;
        masked(&mut self.model)?.begin_batch(rows, slots)?;
        self.live = Some(Live {
            rows: (0..rows).map(|_| None).collect(),
        });
        Ok(())
    }

    /// Rows of the open batch (0 when none is open).
    pub fn capacity(&self) -> usize {
        self.live.as_ref().map_or(0, |l| l.rows.len())
    }

    /// Rows decoding now.
    pub fn busy_rows(&self) -> usize {
        self.live
            .as_ref()
            .map_or(0, |l| l.rows.iter().flatten().count())
    }

    /// Puts `prompt` into a free row of the open batch; it is read in the next steps (in
    /// chunks of `config.prefill_chunk`) while the other rows go on decoding. Refused when no
    /// batch is open, every row is busy, the request cannot fit the batch's slots, or the
    /// config asks for sampling.
    pub fn admit(&mut self, prompt: &[i64], config: &DecodeConfig) -> Result<RowId> {
        let info = self.model.info().clone();
        if config.sampling.is_some() {
            return Err(sampling_refused());
        }
        config.check(prompt, &info)?;
        let capacity = masked(&mut self.model)?.slot_capacity();
        let max_block = self.max_block();
        let Some(live) = self.live.as_ref() else {
            return Err(Error::config(
                "batch",
                "no batch is open: call BatchBlockwise::open first",
            ));
        };
        let Some(free) = live.rows.iter().position(Option::is_none) else {
            return Err(Error::config(
                "batch",
                format!("all {} rows are busy", live.rows.len()),
            ));
        };
        let longest = (prompt.len() + config.max_new_tokens).min(info.max_context);
        if longest + max_block > capacity {
            return Err(Error::config(
                "max_new_tokens",
                format!(
                    "a prompt of {} tokens with {} new ones needs {} cache slots; the open batch \
                     has {capacity}",
                    prompt.len(),
                    config.max_new_tokens,
                    longest + max_block
                ),
            ));
        }
        let budget = Budget::new(config, info.max_context);
        let stop = match budget.remaining(0, prompt.len()) {
            0 => Some(budget.exhausted(0, config.on_context_full)?),
            _ => None,
        };
        let mut proposer = (self.proposers)()?;
        proposer.begin(prompt)?;
        let id = RowId(self.next_row);
        self.next_row += 1;
        let row = Row {
            id,
            config: config.clone(),
            budget,
            prefilled: 0,
            reported: 0,
            started: Instant::now(),
            prompt_len: prompt.len(),
            seq: prompt.to_vec(),
            proposer,
            stats: DecodeStats::new(prompt.len(), self.block_size),
            stop,
            live: Vec::new(),
            next: 0,
            heads: Vec::new(),
        };
        if let Some(live) = self.live.as_mut() {
            live.rows[free] = Some(row);
        }
        Ok(id)
    }

    /// Takes `row` out of the batch now (a client that went away, a stop string found); its
    /// cache slots are never attended again. Returns what the row cost so far, or `None` when
    /// it is not in the batch (finished, or never admitted).
    pub fn cancel(&mut self, row: RowId) -> Option<DecodeStats> {
        let live = self.live.as_mut()?;
        let slot = live
            .rows
            .iter_mut()
            .find(|r| r.as_ref().is_some_and(|r| r.id == row))?;
        slot.take().map(|r| r.into_output().stats)
    }

    /// One iteration of every busy row in one model call: rows still reading their prompt send
    /// their next chunk, the others predict a block and keep what is accepted. Returns an update
    /// for every row that emitted tokens or finished; finished rows leave the batch and their
    /// rows are free for [`BatchBlockwise::admit`]. An error here (the model call failed) ends
    /// the whole batch.
    pub fn step(&mut self) -> Result<Vec<RowUpdate>> {
        let _guard = tch::no_grad_guard();
        let mut live = self.live.take().ok_or(Error::config(
            "batch",
            "no batch is open: call BatchBlockwise::open first",
        ))?;
        let result = self.step_rows(&mut live.rows);
        self.live = Some(live);
        result
    }

    fn step_rows(&mut self, rows: &mut [Option<Row>]) -> Result<Vec<RowUpdate>> {
        // A prompt chunk must fit after the longest row once the cache is compacted.
        let capacity = masked(&mut self.model)?.slot_capacity();
        let longest_live = rows.iter().flatten().map(|r| r.live.len()).max();
        let room = capacity.saturating_sub(longest_live.unwrap_or(0)).max(1);
        let mut failed: Vec<Option<Error>> = (0..rows.len()).map(|_| None).collect();
        let busy = rows.iter().flatten().filter(|r| r.stop.is_none()).count();
        self.speculating = self.speculate_up_to.is_none_or(|limit| busy <= limit);
        let mut parts = Vec::with_capacity(rows.len());
        for (b, slot) in rows.iter_mut().enumerate() {
            let part = match slot {
                Some(row) if row.stop.is_none() && row.prefilling() => {
                    let chunk = row.config.prefill_chunk.unwrap_or(row.prompt_len);
                    let end = (row.prefilled + chunk.min(room)).min(row.prompt_len);
                    Some(Part {
                        tree: TokenTree::chain(
                            row.seq[row.prefilled],
                            &row.seq[row.prefilled + 1..end],
                        ),
                        first_position: row.prefilled,
                    })
                }
                Some(row) if !row.prefilling() => match self.predict(row) {
                    Ok(part) => part,
                    Err(e) => {
                        failed[b] = Some(e);
                        None
                    }
                },
                _ => None,
            };
            parts.push(part);
        }
        if parts.iter().any(Option::is_some) {
            let width = self.criterion.candidates_needed().max(1);
            let tm = Instant::now();
            let scored = self.call(rows, &parts, width)?;
            let model_s = seconds_since(tm);
            let mut last = vec![None; rows.len()];
            for (b, (slot, part)) in rows.iter_mut().zip(&parts).enumerate() {
                let (Some(row), Some(part)) = (slot.as_mut(), part) else {
                    continue;
                };
                row.stats.model_s += model_s;
                let kept = if row.prefilling() {
                    self.read_prompt(row, part, &scored, b)
                } else {
                    self.keep(row, part, &scored, b)
                };
                match kept {
                    Ok(end) => last[b] = end,
                    Err(e) => failed[b] = Some(e),
                }
            }
            self.refresh_heads(rows, &scored, &last)?;
        }
        let mut updates = Vec::new();
        for (slot, failure) in rows.iter_mut().zip(failed) {
            let Some(row) = slot.as_mut() else { continue };
            let failure = match failure {
                Some(e) => Some(e),
                None if !row.prefilling() => row.settle().err(),
                None => None,
            };
            let emitted = row.seq.len() - row.prompt_len;
            let tokens = row.seq[row.prompt_len + row.reported..].to_vec();
            row.reported = emitted;
            let id = row.id;
            let finished = match failure {
                Some(e) => {
                    *slot = None;
                    Some(Err(e))
                }
                None if row.stop.is_some() => slot.take().map(|r| Ok(r.into_output())),
                None => None,
            };
            if !tokens.is_empty() || finished.is_some() {
                updates.push(RowUpdate {
                    row: id,
                    tokens,
                    finished,
                });
            }
        }
        Ok(updates)
    }

    /// A prompt chunk went through: its slots are kept, and after the last chunk the row knows
    /// its first token. Returns the node whose hidden state the heads read next, if any.
    fn read_prompt(
        &mut self,
        row: &mut Row,
        part: &Part,
        scored: &super::Scored,
        b: usize,
    ) -> Result<Option<usize>> {
        let n = part.tree.len();
        hand_hidden(row, scored, b, &(0..n).collect::<Vec<_>>())?;
        row.live.extend((0..n as i64).map(|i| scored.base + i));
        row.prefilled += n;
        if row.prefilling() {
            return Ok(None);
        }
        row.next = scored.ranked[b][(n - 1) * scored.width];
        row.stats.model_calls += 1;
        Ok(Some(n - 1))
    }

    /// A block was verified: the accepted path is kept and handed to the proposer. Returns the
    /// node after which the row goes on.
    fn keep(
        &mut self,
        row: &mut Row,
        part: &Part,
        scored: &super::Scored,
        b: usize,
    ) -> Result<Option<usize>> {
        row.stats.model_calls += 1;
        let path = self.accept(&part.tree, &scored.ranked[b], scored.width)?;
        let kept: Vec<i64> = path.iter().map(|&n| part.tree.tokens[n]).collect();
        row.live
            .extend(path.iter().map(|&n| scored.base + n as i64));
        row.seq.extend_from_slice(&kept);
        row.stats.record_iteration(kept.len());
        row.stats.proposed += part.tree.len() - 1;
        hand_hidden(row, scored, b, &path)?;
        let tp = Instant::now();
        let greedy: Vec<i64> = (0..part.tree.len())
            .map(|n| scored.ranked[b][n * scored.width])
            .collect();
        row.proposer.observe_tree(&part.tree.as_draft(), &greedy)?;
        row.proposer.observe(&kept)?;
        row.stats.proposer_s += seconds_since(tp);
        let end = *path.last().expect("a path holds the root");
        row.next = scored.ranked[b][end * scored.width];
        if kept.iter().any(|&t| row.config.is_eos(t)) {
            row.stop = Some(StopReason::Eos);
        }
        Ok(Some(end))
    }
}
