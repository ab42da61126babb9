//! Training data for feature-level drafts: token sequences with the base model's final hidden
//! state and greedy (argmax) next token at every position, computed by teacher forcing — one
//! base-model pass per sequence.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::{prefill, CausalLm};

/// Sequences with the base model's hidden state and argmax after every token, concatenated:
/// sequence `i` spans positions `offsets[i]..offsets[i + 1]`.
#[derive(Debug)]
pub struct DraftData {
    /// Token ids `[N]` (int64).
    pub tokens: Tensor,
    /// The base model's final hidden state after each token `[N, D]` (any float kind).
    pub hidden: Tensor,
    /// The base model's argmax after each token `[N]` (int64): its greedy next token.
    pub argmax: Tensor,
    /// Where each sequence starts, and the end (`S + 1` entries).
    pub offsets: Vec<usize>,
    /// How many leading tokens of each sequence are its prompt (chat template and request),
    /// where the data knows (`S` entries; the model's own answers); `None` for teacher-forced
    /// text. [`crate::train::evaluate_feature_draft_on_answers`] counts only what follows.
    pub prompt_lens: Option<Vec<usize>>,
}

impl DraftData {
    /// Runs `model` over each sequence from position 0 (teacher forcing: one pass, the
    /// sequence's own tokens as input) and keeps its hidden states, stored as `kind`, and
    /// argmaxes. The model must return hidden states.
    pub fn teacher_forced(
        model: &mut dyn CausalLm,
        sequences: &[Vec<i64>],
        kind: Kind,
    ) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        let (mut tokens, mut hidden, mut argmax) = (Vec::new(), Vec::new(), Vec::new());
        let mut offsets = vec![0usize];
        for seq in sequences.iter().filter(|s| !s.is_empty()) {
            model.truncate(0)?;
            let out = prefill(model, seq, None)?;
            let h = out.hidden.ok_or(Error::MissingCapability {
                component: "DraftData::teacher_forced",
                capability: "a model that returns final hidden states",
            })?;
            hidden.push(
                h.f_squeeze_dim(0)?
                    .f_to_kind(kind)?
                    .f_to_device(Device::Cpu)?,
            );
            argmax.push(
                out.logits
                    .f_argmax(-1, false)?
                    .f_squeeze_dim(0)?
                    .f_to_device(Device::Cpu)?,
            );
            tokens.push(Tensor::from_slice(seq));
            offsets.push(offsets.last().copied().unwrap_or(0) + seq.len());
        }
        model.truncate(0)?;
        if tokens.is_empty() {
            return Err(Error::config("data", "has no non-empty sequence"));
        }
        Ok(DraftData {
            tokens: Tensor::f_cat(&tokens, 0)?,
            hidden: Tensor::f_cat(&hidden, 0)?,
            argmax: Tensor::f_cat(&argmax, 0)?,
            offsets,
            prompt_lens: None,
        })
    }

    /// Reads the shards `SPLIT-*.safetensors` of `dir` (written by
    /// `scripts/make_draft_data.py`: `tokens`, `hidden`, `argmax`, `offsets`, and from the
    /// model's own answers `prompt_lens`), in name order, stopping once `max_tokens` tokens are
    /// read (whole sequences only). [`DraftData::prompt_lens`] is kept when every shard read
    /// has them.
    pub fn load(dir: &Path, split: &str, max_tokens: Option<usize>) -> Result<Self> {
        Self::load_weighted(dir, split, max_tokens, &BTreeMap::new())
    }

    /// [`DraftData::load`], with the sequences of every shard whose file name starts with a key
    /// of `weights` repeated that many times (`{"train-answers": 4}`: the model's own answers
    /// weigh four times their share). `max_tokens` counts the tokens read, before repeating.
    pub fn load_weighted(
        dir: &Path,
        split: &str,
        max_tokens: Option<usize>,
        weights: &BTreeMap<String, usize>,
    ) -> Result<Self> {
        if let Some((prefix, _)) = weights.iter().find(|(_, &w)| w == 0) {
            return Err(Error::config(
                "draft data",
                format!("weight 0 for `{prefix}`: leave its shards out of the folder instead"),
            ));
        }
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .map_err(Error::io("reading", dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("{split}-")) && n.ends_with(".safetensors")
                })
            })
            .collect();
        names.sort();
        if names.is_empty() {
            return Err(Error::io(
                "reading",
                dir.join(format!("{split}-*.safetensors")),
            )(std::io::ErrorKind::NotFound.into()));
        }
        let (mut tokens, mut hidden, mut argmax) = (Vec::new(), Vec::new(), Vec::new());
        let mut offsets = vec![0usize];
        let mut prompt_lens: Option<Vec<usize>> = Some(Vec::new());
        let limit = max_tokens.unwrap_or(usize::MAX);
        let mut read = 0usize;
        'shards: for path in names {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let weight = weights
                .iter()
                .find(|(prefix, _)| name.starts_with(prefix.as_str()))
                .map_or(1, |(_, &w)| w);
            let mut parts: std::collections::HashMap<String, Tensor> =
                Tensor::read_safetensors(&path)?.into_iter().collect();
            let mut take = |name: &str| {
                parts.remove(name).ok_or_else(|| {
                    Error::config("draft data", format!("{} has no `{name}`", path.display()))
                })
            };
            let (t, h, a, o) = (
                take("tokens")?,
                take("hidden")?,
                take("argmax")?,
                take("offsets")?,
            );
            let o: Vec<i64> = Vec::try_from(&o.f_to_kind(Kind::Int64)?)?;
            let lens: Option<Vec<i64>> = match parts.remove("prompt_lens") {
                Some(l) => Some(Vec::try_from(&l.f_to_kind(Kind::Int64)?)?),
                None => None,
            };
            let n = t.size()[0];
            let bad = o.first() != Some(&0)
                || o.last() != Some(&n)
                || o.windows(2).any(|w| w[1] < w[0])
                || h.size().first() != Some(&n)
                || a.size() != [n]
                || lens.as_ref().is_some_and(|l| {
                    l.len() + 1 != o.len()
                        || l.iter()
                            .zip(o.windows(2))
                            .any(|(&p, w)| p < 0 || p > w[1] - w[0])
                });
            if bad {
                return Err(Error::config(
                    "draft data",
                    format!("{} has inconsistent shapes or offsets", path.display()),
                ));
            }
            let room = limit.saturating_sub(read);
            // Whole sequences only, up to the limit.
            let keep = o.iter().take_while(|&&x| x as usize <= room).count();
            let end = o[keep - 1];
            if end > 0 {
                read += end as usize;
                let (t, h, a) = (
                    t.f_narrow(0, 0, end)?.f_to_kind(Kind::Int64)?,
                    h.f_narrow(0, 0, end)?,
                    a.f_narrow(0, 0, end)?.f_to_kind(Kind::Int64)?,
                );
                for _ in 0..weight {
                    let base = *offsets.last().expect("starts with 0");
                    tokens.push(t.shallow_clone());
                    hidden.push(h.shallow_clone());
                    argmax.push(a.shallow_clone());
                    offsets.extend(o[1..keep].iter().map(|&x| base + x as usize));
                    match (&mut prompt_lens, &lens) {
                        (Some(all), Some(l)) => {
                            all.extend(l[..keep - 1].iter().map(|&x| x as usize))
                        }
                        _ => prompt_lens = None,
                    }
                }
            }
            if keep < o.len() {
                break 'shards;
            }
        }
        if tokens.is_empty() {
            return Err(Error::config(
                "draft data",
                "holds no whole sequence within the limit",
            ));
        }
        Ok(DraftData {
            tokens: Tensor::f_cat(&tokens, 0)?,
            hidden: Tensor::f_cat(&hidden, 0)?,
            argmax: Tensor::f_cat(&argmax, 0)?,
            offsets,
            prompt_lens,
        })
    }

    /// The sequences of `parts`, one after another.
    pub fn concat(parts: &[DraftData]) -> Result<Self> {
        if parts.is_empty() {
            return Err(Error::config("data", "has no part to concatenate"));
        }
        if parts.iter().any(|p| p.width() != parts[0].width()) {
            return Err(Error::config(
                "data",
                "parts of different hidden widths cannot be concatenated",
            ));
        }
        let mut offsets = vec![0usize];
        for p in parts {
            let base = *offsets.last().expect("starts with 0");
            offsets.extend(p.offsets[1..].iter().map(|&o| base + o));
        }
        let cat = |f: fn(&DraftData) -> &Tensor| -> Result<Tensor> {
            Ok(Tensor::f_cat(&parts.iter().map(f).collect::<Vec<_>>(), 0)?)
        };
        let prompt_lens = parts
            .iter()
            .map(|p| p.prompt_lens.clone())
            .collect::<Option<Vec<_>>>()
            .map(|l| l.concat());
        Ok(DraftData {
            tokens: cat(|p| &p.tokens)?,
            hidden: cat(|p| &p.hidden)?,
            argmax: cat(|p| &p.argmax)?,
            offsets,
            prompt_lens,
        })
    }

    /// Writes the data as one shard (`tokens`, `hidden`, `argmax`, `offsets`, and
    /// `prompt_lens` when known) that [`DraftData::load`] reads, for example
    /// `DIR/train-chat-00000.safetensors`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let as_i64 =
            |v: &[usize]| Tensor::from_slice(&v.iter().map(|&x| x as i64).collect::<Vec<_>>());
        let mut named = vec![
            ("tokens", self.tokens.shallow_clone()),
            ("hidden", self.hidden.shallow_clone()),
            ("argmax", self.argmax.shallow_clone()),
            ("offsets", as_i64(&self.offsets)),
        ];
        if let Some(l) = &self.prompt_lens {
            named.push(("prompt_lens", as_i64(l)));
        }
        Tensor::write_safetensors(&named, path)?;
        Ok(())
    }

    /// The same sequences `r` times over (to weight them next to other data).
    pub fn repeated(&self, r: usize) -> Result<Self> {
        let r = r.max(1);
        let n = self.len();
        let mut offsets = Vec::with_capacity(self.sequences() * r + 1);
        offsets.push(0);
        for k in 0..r {
            offsets.extend(self.offsets[1..].iter().map(|&o| k * n + o));
        }
        let rep = |t: &Tensor| -> Result<Tensor> {
            let parts: Vec<Tensor> = (0..r).map(|_| t.shallow_clone()).collect();
            Ok(Tensor::f_cat(&parts, 0)?)
        };
        Ok(DraftData {
            tokens: rep(&self.tokens)?,
            hidden: rep(&self.hidden)?,
            argmax: rep(&self.argmax)?,
            offsets,
            prompt_lens: self.prompt_lens.as_ref().map(|l| l.repeat(r)),
        })
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        *self.offsets.last().unwrap_or(&0)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sequences held.
    pub fn sequences(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Width of the hidden states.
    pub fn width(&self) -> i64 {
        self.hidden.size().get(1).copied().unwrap_or(0)
    }

    /// The `n` token ids the base model predicts most often here (its argmaxes), most frequent
    /// first, ties by id: a frequency-ranked shortlist for the draft.
    pub fn shortlist(&self, n: usize, vocab_size: i64) -> Result<Vec<i64>> {
        let counts = self
            .argmax
            .f_bincount::<Tensor>(None, vocab_size)?
            .f_to_kind(Kind::Int64)?;
        let counts: Vec<i64> = Vec::try_from(&counts)?;
        let mut ids: Vec<i64> = (0..vocab_size).collect();
        ids.sort_by_key(|&i| (-counts[i as usize], i));
        ids.truncate(n.min(vocab_size as usize));
        Ok(ids)
    }

    /// The share of positions whose argmax is among `ids`.
    pub fn coverage(&self, ids: &[i64]) -> Result<f64> {
        let counts: Vec<i64> = Vec::try_from(
            &self
                .argmax
                .f_bincount::<Tensor>(None, 0)?
                .f_to_kind(Kind::Int64)?,
        )?;
        let hit: i64 = ids.iter().filter_map(|&i| counts.get(i as usize)).sum();
        Ok(hit as f64 / self.len().max(1) as f64)
    }
}
