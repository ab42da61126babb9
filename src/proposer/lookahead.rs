//! Lookahead decoding (Fu et al., "Break the Sequential Dependency of LLM Inference Using
//! Lookahead Decoding", 2024): no draft and no training. Every call that verifies candidates also
//! runs one Jacobi iteration over a window of guessed future tokens; the n-grams those
//! iterations produce, and those of the prompt and the accepted text, fill a pool keyed by first
//! token, and the pool's n-grams that start with the current token are the next candidates.

use std::collections::{HashMap, VecDeque};

use super::{ProposalContext, Proposer};
use crate::decoder::DraftTree;
use crate::error::{Error, Result};

/// The lookahead proposer: window `W` (Jacobi positions per call), n-gram size `N` (the pool's
/// n-grams: a first token and `N - 1` that follow it), `G` verification candidates per call.
///
/// With a decoder that verifies trees ([`BatchBlockwise`](crate::BatchBlockwise) with a dynamic
/// tree, `decode --tree dynamic:NODES`), one call holds both branches: under the current token,
/// the Jacobi window as one chain and the pool's candidates as others, so the lookahead and the
/// verification share the call, as in the paper. With a chain decoder
/// ([`Blockwise`](crate::Blockwise)) each block is the best pool candidate when there is one and
/// otherwise the Jacobi window itself (plain Jacobi decoding). Either way the decoder keeps only
/// what the model would have decoded greedily.
#[derive(Debug, Clone)]
pub struct Lookahead {
    window: usize,
    ngram: usize,
    candidates: usize,
    /// Prompt and accepted tokens.
    seq: Vec<i64>,
    /// The Jacobi window: guesses for the positions after the next token.
    guesses: Vec<i64>,
    /// First token -> the latest (at most `candidates`) continuations of `ngram - 1` tokens,
    /// oldest first.
    pool: HashMap<i64, VecDeque<Vec<i64>>>,
    /// The last proposal: its root, and how many of its first nodes are the Jacobi window.
    root: i64,
    branch: usize,
    /// Fills new window positions with tokens of the sequence (deterministic).
    fill: u64,
}

impl Default for Lookahead {
    /// W = 4, N = 3, G = 4.
    fn default() -> Self {
        Lookahead::new(4, 3, 4).expect("the defaults are valid")
    }
}

impl Lookahead {
    /// Window `window` >= 1, n-grams of `ngram` >= 2 tokens, `candidates` >= 1 per call.
    pub fn new(window: usize, ngram: usize, candidates: usize) -> Result<Self> {
        if window == 0 || window > 64 {
            return Err(Error::config(
                "lookahead",
                format!("the window must be 1..=64 positions, got {window}"),
            ));
        }
        if !(2..=16).contains(&ngram) {
            return Err(Error::config(
                "lookahead",
                format!("the n-gram size must be 2..=16 tokens, got {ngram}"),
            ));
        }
        if candidates == 0 || candidates > 64 {
            return Err(Error::config(
                "lookahead",
                format!("the candidates per call must be 1..=64, got {candidates}"),
            ));
        }
        Ok(Lookahead {
            window,
            ngram,
            candidates,
            seq: Vec::new(),
            guesses: Vec::new(),
            pool: HashMap::new(),
            root: 0,
            branch: 0,
            fill: 0,
        })
    }

    /// The window, n-gram size and candidates per call.
    pub fn settings(&self) -> (usize, usize, usize) {
        (self.window, self.ngram, self.candidates)
    }

    /// Adds an n-gram to the pool (the most recent of its first token's continuations).
    fn remember(&mut self, ngram: &[i64]) {
        let Some((&first, rest)) = ngram.split_first() else {
            return;
        };
        let entry = self.pool.entry(first).or_default();
        if let Some(i) = entry.iter().position(|c| c.as_slice() == rest) {
            entry.remove(i);
        }
        entry.push_back(rest.to_vec());
        if entry.len() > self.candidates {
            entry.pop_front();
        }
    }

    /// The n-gram of the sequence that ends at position `p`, into the pool.
    fn remember_sequence_at(&mut self, p: usize) {
        if p + 1 >= self.ngram {
            let gram = self.seq[p + 1 - self.ngram..=p].to_vec();
            self.remember(&gram);
        }
    }

    /// The Jacobi window for `len` positions: the current guesses, topped up with tokens of the
    /// sequence.
    fn window_of(&mut self, len: usize) -> Vec<i64> {
        while self.guesses.len() < len {
            // A fixed-increment walk over the sequence: deterministic, and varied.
            self.fill = self
                .fill
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let t = if self.seq.is_empty() {
                0
            } else {
                self.seq[(self.fill >> 33) as usize % self.seq.len()]
            };
            self.guesses.push(t);
        }
        self.guesses[..len].to_vec()
    }

    /// The pool's continuations of `first`, most recent first.
    fn candidates_of(&self, first: i64) -> Vec<Vec<i64>> {
        self.pool
            .get(&first)
            .map(|c| c.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

/// Inserts `tokens` under the root of `tree` as a path, sharing existing prefixes; stops at
/// `nodes` nodes.
fn insert_path(tree: &mut DraftTree, tokens: &[i64], nodes: usize) {
    let mut parent = 0; // 0: the root; j + 1: node j
    for &t in tokens {
        let existing =
            (0..tree.tokens.len()).find(|&i| tree.parents[i] == parent && tree.tokens[i] == t);
        parent = match existing {
            Some(i) => i + 1,
            None => {
                if tree.tokens.len() >= nodes {
                    return;
                }
                tree.tokens.push(t);
                tree.parents.push(parent);
                tree.tokens.len()
            }
        };
    }
}

impl Proposer for Lookahead {
    /// The same settings, an empty pool and window (a batch row's or a chain member's fork).
    fn fork(&self) -> Option<Box<dyn Proposer>> {
        Some(Box::new(
            Lookahead::new(self.window, self.ngram, self.candidates).ok()?,
        ))
    }

    fn begin(&mut self, prompt: &[i64]) -> Result<()> {
        self.seq = prompt.to_vec();
        self.guesses.clear();
        self.pool.clear();
        self.branch = 0;
        self.fill = prompt.len() as u64;
        for p in 0..self.seq.len() {
            self.remember_sequence_at(p);
        }
        Ok(())
    }

    /// A chain: the most recent pool n-gram that starts with the next token, or else the
    /// Jacobi window.
    fn propose(&mut self, ctx: &ProposalContext<'_>) -> Result<Vec<i64>> {
        self.root = ctx.next;
        if let Some(best) = self.candidates_of(ctx.next).into_iter().next() {
            self.branch = 0;
            return Ok(best.into_iter().take(ctx.max_tokens).collect());
        }
        let len = self.window.min(ctx.max_tokens);
        self.branch = len;
        Ok(self.window_of(len))
    }

    /// The Jacobi window as the first chain under the next token, then the pool's candidates
    /// for it (merged where they share a prefix), at most `nodes` nodes and `ctx.max_tokens`
    /// deep.
    fn propose_tree(
        &mut self,
        ctx: &ProposalContext<'_>,
        nodes: usize,
    ) -> Result<Option<DraftTree>> {
        self.root = ctx.next;
        let depth = ctx.max_tokens;
        let len = self.window.min(depth).min(nodes);
        let window = self.window_of(len);
        let mut tree = DraftTree::chain(&window);
        self.branch = len;
        for candidate in self.candidates_of(ctx.next) {
            let keep = candidate.len().min(depth);
            insert_path(&mut tree, &candidate[..keep], nodes);
        }
        Ok(Some(tree))
    }

    /// One Jacobi iteration: the model's greedy token after each window position is the new
    /// guess for the position after it, and each stretch of `N - 1` window tokens with the
    /// model's token after it is an n-gram for the pool.
    fn observe_tree(&mut self, tree: &DraftTree, greedy: &[i64]) -> Result<()> {
        if greedy.len() != tree.tokens.len() + 1 {
            return Err(Error::Contract {
                component: "decoder",
                problem: format!(
                    "handed {} greedy tokens for a tree of {} nodes (expected one per node and \
                     one for the root)",
                    greedy.len(),
                    tree.tokens.len()
                ),
            });
        }
        // The window's nodes that were verified: a chain from the root, in order.
        let verified = (0..self.branch.min(tree.tokens.len()))
            .take_while(|&i| tree.parents[i] == i && self.guesses.get(i) == Some(&tree.tokens[i]))
            .count();
        if self.branch > 0 && verified == 0 && !tree.tokens.is_empty() {
            // Nothing of the window reached the model (cut by the decoder): keep the guesses.
            return Ok(());
        }
        let mut input = Vec::with_capacity(verified + 1);
        input.push(self.root);
        input.extend_from_slice(&tree.tokens[..verified]);
        for j in 0..input.len() {
            if j + 2 >= self.ngram {
                let mut gram = input[j + 2 - self.ngram..=j].to_vec();
                gram.push(greedy[j]);
                self.remember(&gram);
            }
        }
        if self.branch > 0 {
            // Positions after the root: the model's tokens after the root and each window node.
            self.guesses = greedy[..=verified].to_vec();
        }
        Ok(())
    }

    /// The accepted tokens join the sequence and its n-grams the pool; the window moves past
    /// them.
    fn observe(&mut self, accepted: &[i64]) -> Result<()> {
        for &t in accepted {
            self.seq.push(t);
            self.remember_sequence_at(self.seq.len() - 1);
        }
        // The window held guesses for the positions after the root; the root and the rest of
        // the accepted tokens are behind it now, and the next token is decided.
        let behind = accepted.len().min(self.guesses.len());
        self.guesses.drain(..behind);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_out_of_range_are_refused() {
        assert!(Lookahead::new(0, 3, 4).is_err());
        assert!(Lookahead::new(4, 1, 4).is_err());
        assert!(Lookahead::new(4, 3, 0).is_err());
        assert!(Lookahead::new(65, 3, 4).is_err());
        assert_eq!(Lookahead::default().settings(), (4, 3, 4));
    }

    #[test]
    fn the_prompt_seeds_the_pool_and_the_newest_candidate_comes_first() {
        let mut p = Lookahead::new(3, 3, 2).unwrap();
        p.begin(&[5, 6, 7, 1, 5, 6, 8]).unwrap();
        // 5 was followed by [6, 7] and later by [6, 8].
        assert_eq!(p.candidates_of(5), vec![vec![6, 8], vec![6, 7]]);
        let ctx = ProposalContext::new(&[5, 6, 7, 1, 5, 6, 8], 5, 4);
        assert_eq!(p.propose(&ctx).unwrap(), vec![6, 8]);
        // A token the pool does not know: the Jacobi window, of W tokens of the sequence.
        let ctx = ProposalContext::new(&[5, 6, 7, 1, 5, 6, 8], 9, 4);
        let window = p.propose(&ctx).unwrap();
        assert_eq!(window.len(), 3);
        assert!(window.iter().all(|t| [5, 6, 7, 1, 8].contains(t)));
    }

    #[test]
    fn a_fork_has_the_settings_and_an_empty_pool() {
        let mut p = Lookahead::new(3, 2, 2).unwrap();
        p.begin(&[5, 6, 7, 1, 5, 9]).unwrap();
        let mut fork = p.fork().unwrap();
        let mut fresh = Lookahead::new(3, 2, 2).unwrap();
        let seq = [4, 2, 4, 3, 8];
        fork.begin(&seq).unwrap();
        fresh.begin(&seq).unwrap();
        // 4 was followed by 2 and 3 here, by nothing in the original's prompt; 5 by nothing
        // here (the window: W tokens).
        for next in [4, 5] {
            let ctx = ProposalContext::new(&seq, next, 4);
            assert_eq!(fork.propose(&ctx).unwrap(), fresh.propose(&ctx).unwrap());
        }
        let ctx = ProposalContext::new(&seq, 4, 4);
        assert_eq!(fork.propose(&ctx).unwrap(), vec![3]);
        assert_eq!(
            fork.propose(&ProposalContext::new(&seq, 5, 4))
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn a_jacobi_iteration_moves_the_window_and_fills_the_pool() {
        let mut p = Lookahead::new(3, 3, 4).unwrap();
        p.begin(&[1, 2]).unwrap();
        p.guesses = vec![10, 11, 12];
        let ctx = ProposalContext::new(&[1, 2], 3, 4);
        let tree = p.propose_tree(&ctx, 16).unwrap().unwrap();
        // The window is the first chain under the root (3).
        assert_eq!(&tree.tokens[..3], &[10, 11, 12]);
        assert_eq!(&tree.parents[..3], &[0, 1, 2]);
        // The model's greedy tokens after the root and after each window node.
        p.observe_tree(&tree, &[20, 21, 22, 23]).unwrap();
        assert_eq!(p.guesses, vec![20, 21, 22, 23]);
        // Stretches of N - 1 = 2 inputs with the model's token after them: (3, 10) -> 21,
        // (10, 11) -> 22, (11, 12) -> 23.
        assert_eq!(p.candidates_of(3), vec![vec![10, 21]]);
        assert_eq!(p.candidates_of(10), vec![vec![11, 22]]);
        assert_eq!(p.candidates_of(11), vec![vec![12, 23]]);
        // Two tokens accepted (the root and one more): the window moves past them.
        p.observe(&[3, 20]).unwrap();
        assert_eq!(p.guesses, vec![22, 23]);
        // The next tree's window is topped up to W from the sequence.
        let ctx = ProposalContext::new(&[1, 2, 3, 20], 21, 4);
        let tree = p.propose_tree(&ctx, 16).unwrap().unwrap();
        assert_eq!(&tree.tokens[..2], &[22, 23]);
        assert_eq!(tree.parents[..3], [0, 1, 2]);
    }

    #[test]
    fn candidates_share_prefixes_and_respect_the_limits() {
        let mut p = Lookahead::new(2, 3, 4).unwrap();
        p.begin(&[7, 1, 2, 7, 1, 3]).unwrap();
        p.guesses = vec![1, 2];
        let ctx = ProposalContext::new(&[7, 1, 2, 7, 1, 3], 7, 4);
        let tree = p.propose_tree(&ctx, 16).unwrap().unwrap();
        // Window [1, 2] under the root; the candidates [1, 3] and [1, 2] share its first node.
        assert_eq!(tree.tokens, vec![1, 2, 3]);
        assert_eq!(tree.parents, vec![0, 1, 1]);
        let tree = p.propose_tree(&ctx, 2).unwrap().unwrap();
        assert_eq!(tree.tokens.len(), 2);
        let shallow = ProposalContext::new(&[7, 1, 2, 7, 1, 3], 7, 1);
        let tree = p.propose_tree(&shallow, 16).unwrap().unwrap();
        assert_eq!(tree.tokens, vec![1]);
    }
}
