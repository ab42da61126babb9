//! Prompt lookup: propose what followed the most recent earlier occurrence of the last n tokens.

use std::collections::HashMap;

use super::{ProposalContext, Proposer};
use crate::error::{Error, Result};

/// The longest n-gram an [`NGram`] proposer matches (it keeps one index per length).
pub const MAX_NGRAM: usize = 64;

/// N-gram (prompt lookup) proposer. For `n` from `max_n` down to `min_n`, it looks up the most
/// recent earlier occurrence of the context's last `n` tokens (the base model's next token
/// included) in prompt plus generated text, and proposes the tokens that followed it.
///
/// The index is updated incrementally as tokens are accepted: O(`max_n - min_n + 1`) per token,
/// never a rescan of the context.
#[derive(Debug, Clone)]
pub struct NGram {
    min_n: usize,
    max_n: usize,
    tokens: Vec<i64>,
    /// Per n (index `n - min_n`): hash of an n-gram -> the position of the token that followed its
    /// most recent occurrence.
    index: Vec<HashMap<u64, usize>>,
    /// The length of the last proposal's match (0: none).
    matched: usize,
}

/// FNV-1a over an n-gram's ids (prompt lookup catches collisions by comparing the tokens on
/// lookup; corpus lookup accepts them).
pub(super) fn hash(ngram: &[i64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &t in ngram {
        for b in t.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl NGram {
    /// Matches of `min_n..=max_n` tokens; `1 <= min_n <= max_n`.
    pub fn new(min_n: usize, max_n: usize) -> Result<Self> {
        if min_n == 0 || min_n > max_n || max_n > MAX_NGRAM {
            return Err(Error::config(
                "ngram",
                format!("needs 1 <= min <= max <= {MAX_NGRAM}, got min {min_n}, max {max_n}"),
            ));
        }
        Ok(NGram {
            min_n,
            max_n,
            tokens: Vec::new(),
            index: vec![HashMap::new(); max_n - min_n + 1],
            matched: 0,
        })
    }

    /// Records the n-grams that end just before position `p` (whose follower is `tokens[p]`).
    fn index_follower(&mut self, p: usize) {
        for n in self.min_n..=self.max_n.min(p) {
            let key = hash(&self.tokens[p - n..p]);
            self.index[n - self.min_n].insert(key, p);
        }
    }

    fn push(&mut self, token: i64) {
        self.tokens.push(token);
        let p = self.tokens.len() - 1;
        self.index_follower(p);
    }

    fn reset(&mut self, tokens: &[i64]) {
        self.tokens.clear();
        self.index.iter_mut().for_each(HashMap::clear);
        for &t in tokens {
            self.push(t);
        }
    }

    /// The continuation after the most recent earlier occurrence of `suffix` (`n` tokens), if any.
    fn lookup(&self, suffix: &[i64]) -> Option<usize> {
        let n = suffix.len();
        let &p = self.index[n - self.min_n].get(&hash(suffix))?;
        (self.tokens[p - n..p] == *suffix).then_some(p)
    }
}

impl Proposer for NGram {
    /// The length of the n-gram the last proposal matched (0 when it found none): longer
    /// matches are more often right, and block policies keep their rates apart.
    fn kind(&self) -> usize {
        self.matched
    }

    fn begin(&mut self, prompt: &[i64]) -> Result<()> {
        self.reset(prompt);
        Ok(())
    }

    fn observe(&mut self, accepted: &[i64]) -> Result<()> {
        for &t in accepted {
            self.push(t);
        }
        Ok(())
    }

    fn propose(&mut self, ctx: &ProposalContext<'_>) -> Result<Vec<i64>> {
        if self.tokens.as_slice() != ctx.tokens {
            // Used outside the decoder's begin/observe protocol: resynchronise.
            self.reset(ctx.tokens);
        }
        self.matched = 0;
        let mut query = Vec::with_capacity(self.max_n);
        for n in (self.min_n..=self.max_n).rev() {
            if n > ctx.tokens.len() + 1 {
                continue;
            }
            query.clear();
            query.extend_from_slice(&ctx.tokens[ctx.tokens.len() + 1 - n..]);
            query.push(ctx.next);
            if let Some(p) = self.lookup(&query) {
                let end = (p + ctx.max_tokens).min(self.tokens.len());
                self.matched = n;
                return Ok(self.tokens[p..end].to_vec());
            }
        }
        Ok(Vec::new())
    }

    /// The same n-gram lengths, nothing indexed (a batch row's or a chain member's fork).
    fn fork(&self) -> Option<Box<dyn Proposer>> {
        Some(Box::new(NGram::new(self.min_n, self.max_n).ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absurd_n_gram_length_is_an_error_not_an_abort() {
        // It once allocated one index per length up to max: `ngram:1:99999999999` aborted.
        let e = NGram::new(1, usize::MAX).unwrap_err();
        assert!(e.to_string().contains("max <= 64"), "{e}");
        assert!(NGram::new(1, MAX_NGRAM).is_ok());
        assert!(NGram::new(1, MAX_NGRAM + 1).is_err());
    }

    #[test]
    fn a_fork_keeps_the_lengths_and_none_of_the_sequence() {
        let mut g = NGram::new(2, 3).unwrap();
        g.begin(&[1, 2, 3, 4, 1, 2]).unwrap();
        let mut f = g.fork().unwrap();
        // The fork's own sequence: "7 8" was followed by 9 5; a one-token match ("5" then 6)
        // is below its shortest length, as for the original.
        let seq = [7, 8, 9, 5, 6, 7];
        f.begin(&seq).unwrap();
        assert_eq!(
            f.propose(&ProposalContext::new(&seq, 8, 2)).unwrap(),
            vec![9, 5]
        );
        let seq = [5, 6, 1];
        f.begin(&seq).unwrap();
        assert!(f
            .propose(&ProposalContext::new(&seq, 5, 2))
            .unwrap()
            .is_empty());
        // The original still proposes from its own: "1 2" then 3 4.
        let own = [1, 2, 3, 4, 1];
        assert_eq!(
            g.propose(&ProposalContext::new(&own, 2, 2)).unwrap(),
            vec![3, 4]
        );
    }

    #[test]
    fn proposes_what_followed_the_latest_match() {
        let mut g = NGram::new(1, 3).unwrap();
        let ctx_tokens = [1, 2, 3, 4, 9, 2, 3, 5, 6, 7, 2];
        g.begin(&ctx_tokens).unwrap();
        // Context ends ... 2, next = 3: "2 3" last seen at 5..7, followed by 5 6 7 2.
        let p = g.propose(&ProposalContext::new(&ctx_tokens, 3, 3)).unwrap();
        assert_eq!(p, vec![5, 6, 7]);
        // No match for an unseen token.
        assert!(g
            .propose(&ProposalContext::new(&ctx_tokens, 42, 3))
            .unwrap()
            .is_empty());
        // Observing extends the index.
        g.observe(&[3, 5]).unwrap();
        let mut longer = ctx_tokens.to_vec();
        longer.extend([3, 5]);
        let p = g.propose(&ProposalContext::new(&longer, 6, 2)).unwrap();
        assert_eq!(p, vec![7, 2]);
        assert!(NGram::new(0, 2).is_err());
        assert!(NGram::new(3, 2).is_err());
    }

    #[test]
    fn longest_match_wins() {
        let mut g = NGram::new(1, 2).unwrap();
        // "8" is followed by 1 most recently, but "7 8" by 2.
        let t = [7, 8, 2, 0, 8, 1, 0, 7];
        g.begin(&t).unwrap();
        assert_eq!(g.propose(&ProposalContext::new(&t, 8, 1)).unwrap(), vec![2]);
        assert_eq!(g.kind(), 2);
    }
}
