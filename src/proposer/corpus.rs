//! Corpus lookup: propose what most often followed the context's last tokens in a fixed body of
//! token sequences, such as the model's own answers to many requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::{Kind, Tensor};

use super::ngram::hash;
use super::{ProposalContext, Proposer};
use crate::decoder::DraftTree;
use crate::error::{Error, Result};

/// The longest n-gram a [`CorpusIndex`] keeps.
pub const MAX_CORPUS_NGRAM: usize = 8;

/// How many of an n-gram's followers a [`CorpusIndex`] keeps (the most frequent): the widest
/// a [`CorpusLookup`] tree branches.
pub const CORPUS_FOLLOWERS: usize = 4;

/// For every n-gram of `min_n..=max_n` tokens in a body of token sequences, the tokens that most
/// often followed it there (up to [`CORPUS_FOLLOWERS`], most frequent first, ties to the smaller
/// id), how often each did, and how often the n-gram was followed at all. Built once and shared
/// by every [`CorpusLookup`] that reads it (forks included). N-grams never cross the end of a
/// sequence.
///
/// N-grams are keyed by a 64-bit hash, and two different n-grams of one length that share a
/// hash share an entry: a collision can only make a guess wrong (the decoder verifies every
/// guess), never an output.
#[derive(Debug)]
pub struct CorpusIndex {
    min_n: usize,
    max_n: usize,
    /// Per n (index `n - min_n`): hash of an n-gram -> its entry.
    entries: Vec<HashMap<u64, Entry>>,
    /// Every entry's followers, one run per entry: (token, how often it followed).
    followers: Vec<(i64, u32)>,
    tokens: usize,
    sequences: usize,
}

/// An n-gram's followers (token, how often it followed), most frequent first, and how often the
/// n-gram was followed at all.
type Followers<'a> = (&'a [(i64, u32)], u32);

/// Where an n-gram's followers are in [`CorpusIndex::followers`], and how often it was followed.
#[derive(Debug, Clone, Copy)]
struct Entry {
    first: u32,
    len: u8,
    total: u32,
}

fn check_lengths(min_n: usize, max_n: usize) -> Result<()> {
    if min_n == 0 || min_n > max_n || max_n > MAX_CORPUS_NGRAM {
        return Err(Error::config(
            "corpus",
            format!("needs 1 <= min <= max <= {MAX_CORPUS_NGRAM}, got min {min_n}, max {max_n}"),
        ));
    }
    Ok(())
}

impl CorpusIndex {
    /// Indexes the n-grams of `min_n..=max_n` tokens (`1 <= min_n <= max_n <=`
    /// [`MAX_CORPUS_NGRAM`]) of `sequences`.
    pub fn new<S: AsRef<[i64]>>(sequences: &[S], min_n: usize, max_n: usize) -> Result<Self> {
        check_lengths(min_n, max_n)?;
        let mut entries = Vec::with_capacity(max_n - min_n + 1);
        let mut followers = Vec::new();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        for n in min_n..=max_n {
            // Every (n-gram, follower) pair, sorted, so equal pairs are neighbours to count.
            let mut pairs: Vec<(u64, i64)> = sequences
                .iter()
                .flat_map(|s| {
                    let s = s.as_ref();
                    (n..s.len()).map(move |p| (hash(&s[p - n..p]), s[p]))
                })
                .collect();
            pairs.sort_unstable();
            let mut level: HashMap<u64, Entry> = HashMap::new();
            let mut seen: Vec<(i64, u32)> = Vec::new();
            let mut i = 0;
            while i < pairs.len() {
                // One n-gram's pairs: its followers, each counted.
                let key = pairs[i].0;
                let end = i + pairs[i..].iter().take_while(|p| p.0 == key).count();
                seen.clear();
                let mut j = i;
                while j < end {
                    let run = pairs[j..end].iter().take_while(|&&p| p == pairs[j]).count();
                    seen.push((pairs[j].1, count(run)));
                    j += run;
                }
                // Most frequent first; the sort is stable, so ties keep the smaller id first.
                seen.sort_by_key(|f| std::cmp::Reverse(f.1));
                let kept = seen.len().min(CORPUS_FOLLOWERS);
                level.insert(
                    key,
                    Entry {
                        first: count(followers.len()),
                        len: kept as u8,
                        total: count(end - i),
                    },
                );
                followers.extend_from_slice(&seen[..kept]);
                i = end;
            }
            entries.push(level);
        }
        Ok(CorpusIndex {
            min_n,
            max_n,
            entries,
            followers,
            tokens: sequences.iter().map(|s| s.as_ref().len()).sum(),
            sequences: sequences.len(),
        })
    }

    /// Reads the token sequences of safetensors files (`path` is one, or a folder whose
    /// `*.safetensors` files are read in name order) and indexes them as [`CorpusIndex::new`].
    /// Each file holds `tokens` (integers, 1-D); with `offsets` (`[S + 1]`, where each sequence
    /// starts, then the end) it holds `S` sequences, else one; with `prompt_lens` (`[S]`) only
    /// each sequence's tokens after its prompt are kept. The shards that
    /// `draft_answers` writes are such files.
    pub fn load(path: impl AsRef<Path>, min_n: usize, max_n: usize) -> Result<Self> {
        check_lengths(min_n, max_n)?;
        let path = path.as_ref();
        let files = corpus_files(path)?;
        let mut sequences = Vec::new();
        for file in &files {
            sequences.extend(read_sequences(file)?);
        }
        Self::new(&sequences, min_n, max_n)
    }

    /// The token after `ngram` most often in the corpus, and how often, when it was seen
    /// (`ngram`'s length within `min_n..=max_n`).
    pub fn follower(&self, ngram: &[i64]) -> Option<(i64, u32)> {
        self.followers(ngram).map(|(f, _)| f[0])
    }

    /// The tokens after `ngram` most often in the corpus (up to [`CORPUS_FOLLOWERS`], most
    /// frequent first) with how often each followed, and how often `ngram` was followed at all,
    /// when it was seen (`ngram`'s length within `min_n..=max_n`).
    pub fn followers(&self, ngram: &[i64]) -> Option<(&[(i64, u32)], u32)> {
        let n = ngram.len();
        if n < self.min_n || n > self.max_n {
            return None;
        }
        let e = self.entries[n - self.min_n].get(&hash(ngram))?;
        let first = e.first as usize;
        Some((&self.followers[first..first + e.len as usize], e.total))
    }

    /// The shortest and longest n-gram lengths indexed.
    pub fn lengths(&self) -> (usize, usize) {
        (self.min_n, self.max_n)
    }

    /// How many tokens and sequences were indexed.
    pub fn size(&self) -> (usize, usize) {
        (self.tokens, self.sequences)
    }

    /// The longest indexed suffix of `context` that was seen: its followers and its length.
    fn longest_match(&self, context: &[i64]) -> Option<(Followers<'_>, usize)> {
        (self.min_n..=self.max_n.min(context.len()))
            .rev()
            .find_map(|n| {
                self.followers(&context[context.len() - n..])
                    .map(|f| (f, n))
            })
    }
}

/// The files a corpus path names: the file itself, or a folder's `*.safetensors` in name order.
fn corpus_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        if !path.is_file() {
            return Err(Error::io("reading", path)(
                std::io::ErrorKind::NotFound.into(),
            ));
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(Error::io("reading", path))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::config(
            "corpus",
            format!("`{}` holds no .safetensors files", path.display()),
        ));
    }
    Ok(files)
}

/// One file's sequences (the layout [`CorpusIndex::load`] describes).
fn read_sequences(file: &Path) -> Result<Vec<Vec<i64>>> {
    let bad = |problem: String| Error::config("corpus", format!("`{}`: {problem}", file.display()));
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(file)
        .map_err(|e| {
            bad(format!(
                "not a readable safetensors file ({})",
                crate::error::torch_summary(&e)
            ))
        })?
        .into_iter()
        .collect();
    let ints = |name: &str| -> Result<Option<Vec<i64>>> {
        let Some(t) = tensors.get(name) else {
            return Ok(None);
        };
        if t.dim() != 1 || t.is_floating_point() {
            return Err(bad(format!(
                "`{name}` must be 1-D integers, got {:?} of {:?}",
                t.size(),
                t.kind()
            )));
        }
        Ok(Some(Vec::<i64>::try_from(&t.to_kind(Kind::Int64))?))
    };
    let tokens = ints("tokens")?.ok_or_else(|| bad("no `tokens` tensor".into()))?;
    let offsets = ints("offsets")?.unwrap_or_else(|| vec![0, tokens.len() as i64]);
    let starts_ok = offsets.first() == Some(&0)
        && offsets.last() == Some(&(tokens.len() as i64))
        && offsets.windows(2).all(|w| w[0] <= w[1]);
    if !starts_ok {
        return Err(bad(format!(
            "`offsets` must rise from 0 to the {} tokens",
            tokens.len()
        )));
    }
    let sequences = offsets.len() - 1;
    let prompts = ints("prompt_lens")?.unwrap_or_else(|| vec![0; sequences]);
    if prompts.len() != sequences {
        return Err(bad(format!(
            "`prompt_lens` has {} entries for {sequences} sequences",
            prompts.len()
        )));
    }
    offsets
        .windows(2)
        .zip(&prompts)
        .map(|(w, &p)| {
            let (start, end) = (w[0] as usize, w[1] as usize);
            if p < 0 || p as usize > end - start {
                return Err(bad(format!(
                    "a prompt length of {p} in a sequence of {} tokens",
                    end - start
                )));
            }
            Ok(tokens[start + p as usize..end].to_vec())
        })
        .collect()
}

/// Corpus lookup ("corpus" on the command line): guesses what most often followed the
/// context's last tokens in a [`CorpusIndex`], one token at a time, each guess extending the
/// context the next is looked up with, up to the block size. Where prompt lookup ([`NGram`]
/// (super::NGram)) finds what this sequence repeats, corpus lookup finds what the model says
/// across many answers ("Here are some tips", list numbering, closing lines), from its own
/// answers to other requests.
///
/// It needs no model and no state beyond the index: its forks share the index.
#[derive(Debug, Clone)]
pub struct CorpusLookup {
    index: Arc<CorpusIndex>,
    /// The length of the first guess's match (0: none).
    matched: usize,
}

impl CorpusLookup {
    /// Lookup over `index`.
    pub fn new(index: Arc<CorpusIndex>) -> Self {
        CorpusLookup { index, matched: 0 }
    }

    /// The index it reads.
    pub fn index(&self) -> &Arc<CorpusIndex> {
        &self.index
    }

    /// The last `max_n` tokens of the context, the base model's next token included: what the
    /// first guess is looked up after.
    fn base_window(&self, ctx: &ProposalContext<'_>) -> Vec<i64> {
        let tail = ctx.tokens.len().saturating_sub(self.index.max_n - 1);
        let mut window = ctx.tokens[tail..].to_vec();
        window.push(ctx.next);
        window
    }
}

impl Proposer for CorpusLookup {
    fn propose(&mut self, ctx: &ProposalContext<'_>) -> Result<Vec<i64>> {
        let max_n = self.index.max_n;
        // Then each guess as it is made.
        let mut window = self.base_window(ctx);
        let mut guesses = Vec::with_capacity(ctx.max_tokens);
        self.matched = 0;
        while guesses.len() < ctx.max_tokens {
            let from = window.len().saturating_sub(max_n);
            let Some(((followers, _), n)) = self.index.longest_match(&window[from..]) else {
                break;
            };
            let token = followers[0].0;
            if guesses.is_empty() {
                self.matched = n;
            }
            guesses.push(token);
            window.push(token);
        }
        Ok(guesses)
    }

    /// A tree of the corpus's likeliest continuations, grown best first: a guess's weight is
    /// its share of its n-gram's followers (how often it followed over how often the n-gram was
    /// followed at all) times its parent's, each node's children are among its n-gram's
    /// [`CORPUS_FOLLOWERS`] most frequent followers, and the tree has at most `nodes` nodes and
    /// `ctx.max_tokens` levels. `None` when nothing matches.
    fn propose_tree(
        &mut self,
        ctx: &ProposalContext<'_>,
        nodes: usize,
    ) -> Result<Option<DraftTree>> {
        let max_n = self.index.max_n;
        let base = self.base_window(ctx);
        let mut tree = DraftTree::default();
        // Candidates not yet in the tree: (weight, parent as in `DraftTree::parents`, token,
        // level); the heaviest is added next, the first found among equals.
        let mut candidates: Vec<(f64, usize, i64, usize)> = Vec::new();
        let mut window = base.clone();
        self.matched = 0;
        let mut parent = 0;
        let mut weight = 1.0;
        let mut level = 0;
        while tree.len() < nodes {
            if level < ctx.max_tokens {
                let from = window.len().saturating_sub(max_n);
                if let Some(((followers, total), n)) = self.index.longest_match(&window[from..]) {
                    if parent == 0 {
                        self.matched = n;
                    }
                    for &(token, count) in followers {
                        let w = weight * f64::from(count) / f64::from(total.max(1));
                        candidates.push((w, parent, token, level + 1));
                    }
                }
            }
            let Some(best) = (0..candidates.len()).reduce(|a, b| {
                if candidates[b].0 > candidates[a].0 {
                    b
                } else {
                    a
                }
            }) else {
                break;
            };
            let (w, p, token, l) = candidates.remove(best);
            tree.tokens.push(token);
            tree.parents.push(p);
            // The new node's context: the base, then the path from the root down to it.
            let node = tree.len();
            let mut path = Vec::with_capacity(l);
            let mut at = node;
            while at != 0 {
                path.push(tree.tokens[at - 1]);
                at = tree.parents[at - 1];
            }
            window.truncate(base.len());
            window.extend(path.iter().rev());
            (parent, weight, level) = (node, w, l);
        }
        Ok((!tree.is_empty()).then_some(tree))
    }

    /// The length of the n-gram the first guess matched (0 when none matched).
    fn kind(&self) -> usize {
        self.matched
    }

    /// The same index, shared.
    fn fork(&self) -> Option<Box<dyn Proposer>> {
        Some(Box::new(CorpusLookup::new(Arc::clone(&self.index))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guesses_the_most_frequent_follower_of_the_longest_match() {
        // After "1 2": 3 twice, 4 once. After "9 1 2": 4. After "2 3": 5.
        let seqs = [vec![1, 2, 3, 5], vec![1, 2, 3, 5], vec![9, 1, 2, 4]];
        let index = Arc::new(CorpusIndex::new(&seqs, 1, 3).unwrap());
        assert_eq!(index.follower(&[1, 2]), Some((3, 2)));
        assert_eq!(index.follower(&[9, 1, 2]), Some((4, 1)));
        assert_eq!(index.size(), (12, 3));
        let mut p = CorpusLookup::new(Arc::clone(&index));
        // Context "7 1", next 2: "7 1 2" unseen, "1 2" -> 3, then "1 2 3" -> 5; nothing
        // follows "2 3 5" or "3 5" or "5" (the sequences end there).
        let got = p.propose(&ProposalContext::new(&[7, 1], 2, 4)).unwrap();
        assert_eq!(got, vec![3, 5]);
        assert_eq!(p.kind(), 2);
        // The longer match wins: "9 1 2" -> 4.
        let got = p.propose(&ProposalContext::new(&[9, 1], 2, 4)).unwrap();
        assert_eq!(got, vec![4]);
        assert_eq!(p.kind(), 3);
        // The block size bounds the guesses; an unseen token gives none.
        let got = p.propose(&ProposalContext::new(&[1], 2, 1)).unwrap();
        assert_eq!(got, vec![3]);
        assert!(p
            .propose(&ProposalContext::new(&[1], 42, 4))
            .unwrap()
            .is_empty());
        assert_eq!(p.kind(), 0);
    }

    #[test]
    fn trees_grow_the_likeliest_continuations_first() {
        // After "1": 2 three times, 3 once. After "1 2": 4 twice, 5 once. After "1 3": 6.
        let seqs = [vec![1, 2, 4], vec![1, 2, 4], vec![1, 2, 5], vec![1, 3, 6]];
        let index = Arc::new(CorpusIndex::new(&seqs, 1, 2).unwrap());
        assert_eq!(index.followers(&[1]), Some((&[(2, 3), (3, 1)][..], 4)));
        let mut p = CorpusLookup::new(index);
        let ctx = ProposalContext::new(&[9], 1, 3);
        // Weights: 2 0.75, 3 0.25; under 2: 4 0.5, 5 0.25. Nothing follows 4. Of 3 and 5
        // (0.25 each), 3 was found first.
        let t = p.propose_tree(&ctx, 4).unwrap().unwrap();
        assert_eq!(t.tokens, vec![2, 4, 3, 5]);
        assert_eq!(t.parents, vec![0, 1, 0, 1]);
        assert_eq!(p.kind(), 1);
        // Levels are bounded by the block; the budget by `nodes`.
        let shallow = ProposalContext::new(&[9], 1, 1);
        let t = p.propose_tree(&shallow, 8).unwrap().unwrap();
        assert_eq!(t.tokens, vec![2, 3]);
        assert_eq!(t.parents, vec![0, 0]);
        assert_eq!(p.propose_tree(&ctx, 1).unwrap().unwrap().tokens, vec![2]);
        // Nothing matches: no tree.
        assert!(p
            .propose_tree(&ProposalContext::new(&[9], 42, 3), 4)
            .unwrap()
            .is_none());
        // The chain is the tree's heaviest branch.
        assert_eq!(p.propose(&ctx).unwrap(), vec![2, 4]);
    }

    #[test]
    fn ties_go_to_the_smaller_id_and_sequences_do_not_join() {
        let seqs = [vec![5, 8], vec![5, 6], vec![7]];
        let index = CorpusIndex::new(&seqs, 1, 2).unwrap();
        assert_eq!(index.follower(&[5]), Some((6, 1)));
        // 8 ends its sequence: nothing follows it, and 7 is not its follower.
        assert_eq!(index.follower(&[8]), None);
        assert_eq!(index.follower(&[6, 7]), None);
    }

    #[test]
    fn bad_lengths_are_errors() {
        let seqs: [Vec<i64>; 0] = [];
        for (min, max) in [(0, 2), (3, 2), (1, MAX_CORPUS_NGRAM + 1)] {
            let e = CorpusIndex::new(&seqs, min, max).unwrap_err();
            assert!(e.to_string().contains("1 <= min <= max"), "{e}");
        }
        assert!(CorpusIndex::new(&seqs, 1, MAX_CORPUS_NGRAM).is_ok());
    }

    #[test]
    fn reads_draft_answer_shards_without_their_prompts() {
        let dir = std::env::temp_dir().join(format!("corpus-shards-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Two sequences: prompt 1 2 | answer 3 4, prompt 9 | answer 1 2 5.
        let tokens = Tensor::from_slice(&[1i64, 2, 3, 4, 9, 1, 2, 5]);
        let offsets = Tensor::from_slice(&[0i64, 4, 8]);
        let prompts = Tensor::from_slice(&[2i64, 1]);
        Tensor::write_safetensors(
            &[
                ("tokens", &tokens),
                ("offsets", &offsets),
                ("prompt_lens", &prompts),
            ],
            dir.join("a.safetensors"),
        )
        .unwrap();
        // A second file of one sequence, 32-bit ids, no offsets.
        let one = Tensor::from_slice(&[3i32, 4, 6]);
        Tensor::write_safetensors(&[("tokens", &one)], dir.join("b.safetensors")).unwrap();
        let index = CorpusIndex::load(&dir, 1, 2).unwrap();
        assert_eq!(index.size(), (8, 3));
        // "1 2" followed by 3 only in a prompt: the answers say 5.
        assert_eq!(index.follower(&[1, 2]), Some((5, 1)));
        assert_eq!(index.follower(&[3, 4]), Some((6, 1)));
        // Bad files say what is wrong.
        let bad = Tensor::from_slice(&[0i64, 9]);
        Tensor::write_safetensors(
            &[("tokens", &tokens), ("offsets", &bad)],
            dir.join("c.safetensors"),
        )
        .unwrap();
        let e = CorpusIndex::load(dir.join("c.safetensors"), 1, 2).unwrap_err();
        assert!(e.to_string().contains("`offsets` must rise"), "{e}");
        let e = CorpusIndex::load(dir.join("missing.safetensors"), 1, 2).unwrap_err();
        assert!(e.to_string().contains("missing.safetensors"), "{e}");
        std::fs::write(dir.join("text.safetensors"), "not tensors").unwrap();
        let e = CorpusIndex::load(dir.join("text.safetensors"), 1, 2).unwrap_err();
        assert!(
            e.to_string().contains("not a readable safetensors file"),
            "{e}"
        );
        std::fs::remove_file(dir.join("text.safetensors")).unwrap();
        let floats = Tensor::from_slice(&[1.0f32]);
        Tensor::write_safetensors(&[("tokens", &floats)], dir.join("d.safetensors")).unwrap();
        let e = CorpusIndex::load(dir.join("d.safetensors"), 1, 2).unwrap_err();
        assert!(e.to_string().contains("1-D integers"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn forks_share_the_index() {
        let index = Arc::new(CorpusIndex::new(&[vec![1i64, 2]], 1, 1).unwrap());
        let p = CorpusLookup::new(Arc::clone(&index));
        let mut f = p.fork().unwrap();
        assert_eq!(Arc::strong_count(&index), 3);
        assert_eq!(
            f.propose(&ProposalContext::new(&[], 1, 3)).unwrap(),
            vec![2]
        );
    }
}
