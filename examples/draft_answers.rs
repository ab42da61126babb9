//! The model's own greedy answers as feature-draft training data: decodes chat prompts with the
//! batched decoder (greedy, rows of different lengths in one call) and keeps, for every row, the
//! final hidden states the decoder computed anyway (handed over through
//! `Proposer::observe_hidden`, the path a feature draft reads at inference), so no second pass
//! over the answers is needed. The argmax after each position is the next token on the answer (a
//! greedy sequence) and, on the prompt, the tied vocabulary projection of its hidden state.
//! Writes resumable shards that `DraftData::load` reads with the teacher-forced text; each
//! records its prompts' lengths (`DraftData::prompt_lens`), so agreement can be measured on the
//! answers alone.
//!
//! ```text
//! cargo run --release --example draft_answers -- --prompts target/heads/smollm2-chat.txt \
//!     --out target/draft-data/train-answers [--model models/smollm2] [--limit N] \
//!     [--new-tokens 64] [--batch 64] [--shard 512] [--repeat 1] [--dtype f32] \
//!     [--backend torchscript] [--taps 2,15,27]
//! ```
//!
//! Writes `OUT-00000.safetensors`, `OUT-00001.safetensors`, ... of `--shard` prompts each and
//! skips shards already written (so an interrupted run resumes). `--repeat R` writes every
//! sequence R times (weighting the answers in training). `--dtype bf16` decodes in bfloat16
//! (about twice the answer tokens per second on CPUs with AVX-512 BF16; the answers are then
//! the bf16 model's greedy ones, which part from f32's after a near-tie, and the hidden states
//! are stored in half precision either way). `--taps 2,15,27` also keeps the residual states
//! after those layers of the base, after each final state (`CausalLm::set_feature_taps`; the
//! native backend, `--backend native`), for a draft that reads them (`taps` in `train_draft`'s
//! config).

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use blockwise::bundle::{Backend, BundleOptions, HeadsChoice, ModelBundle};
use blockwise::decoder::BatchBlockwise;
use blockwise::proposer::{ProposalContext, Proposer};
use blockwise::train::DraftData;
use blockwise::{CausalLm, DType, DecodeConfig, Error, Result};
use tch::{Kind, Tensor};

fn main() {
    if let Err(e) = run() {
        eprintln!("draft_answers: {e}");
        std::process::exit(2);
    }
}

/// Hidden states of one row, in the order the decoder commits its tokens.
type Sink = Rc<RefCell<Vec<Vec<Tensor>>>>;

/// Proposes nothing (every step is a greedy step) and keeps the hidden states it is handed.
struct Recorder {
    sink: Sink,
    row: usize,
}

impl Proposer for Recorder {
    fn propose(&mut self, _ctx: &ProposalContext<'_>) -> Result<Vec<i64>> {
        Ok(Vec::new())
    }
    fn needs_hidden(&self) -> bool {
        true
    }
    fn observe_hidden(&mut self, hidden: &Tensor) -> Result<()> {
        let h = hidden
            .f_to_kind(Kind::Float)?
            .f_to_device(tch::Device::Cpu)?;
        self.sink.borrow_mut()[self.row].push(h);
        Ok(())
    }
}

struct Args {
    model: String,
    prompts: PathBuf,
    out: String,
    limit: usize,
    new_tokens: usize,
    batch: usize,
    shard: usize,
    repeat: usize,
    dtype: DType,
    backend: Backend,
    taps: Vec<usize>,
}

fn args() -> Result<Args> {
    let (mut model, mut prompts, mut out) = ("models/smollm2".to_string(), None, None);
    let (mut limit, mut new_tokens, mut batch) = (usize::MAX, 64usize, 64usize);
    let (mut shard, mut repeat) = (512usize, 1usize);
    let (mut dtype, mut backend) = (DType::F32, Backend::default());
    let mut taps = Vec::new();
    let bad = |m: &str| Error::config("arguments", m.to_string());
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| bad(&format!("{flag} needs a value")))
        };
        let number = |v: String| match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(&format!("{flag} expects a positive number, not {v:?}"))),
        };
        match flag.as_str() {
            "--model" => model = value()?,
            "--prompts" => prompts = Some(PathBuf::from(value()?)),
            "--out" => out = Some(value()?),
            "--limit" => limit = number(value()?)?,
            "--new-tokens" => new_tokens = number(value()?)?,
            "--batch" => batch = number(value()?)?,
            "--shard" => shard = number(value()?)?,
            "--repeat" => repeat = number(value()?)?,
            "--dtype" => dtype = value()?.parse()?,
            "--backend" => backend = Backend::parse(&value()?)?,
            "--taps" => {
                taps = value()?
                    .split(',')
                    .map(|l| {
                        l.trim().parse::<usize>().map_err(|_| {
                            bad(&format!(
                                "--taps expects layer numbers such as 2,15,27, not {l:?}"
                            ))
                        })
                    })
                    .collect::<Result<_>>()?
            }
            other => return Err(bad(&format!("unknown flag {other}; see the file's header"))),
        }
    }
    Ok(Args {
        model,
        prompts: prompts.ok_or_else(|| bad("--prompts FILE is needed"))?,
        out: out.ok_or_else(|| bad("--out PREFIX is needed"))?,
        limit,
        new_tokens,
        batch,
        shard,
        repeat,
        dtype,
        backend,
        taps,
    })
}

fn run() -> Result<()> {
    let a = args()?;
    let options = BundleOptions {
        dtype: a.dtype,
        heads: HeadsChoice::None,
        f32_matmul: Default::default(),
        backend: a.backend,
        ..BundleOptions::default()
    };
    let mut bundle = ModelBundle::load(&a.model, &options)?;
    bundle.model.set_feature_taps(&a.taps)?;
    let embeddings = bundle
        .model
        .token_embeddings()
        .ok_or(Error::MissingCapability {
            component: "draft_answers",
            capability: "tied token embeddings (the prompt's argmaxes are read from them)",
        })?
        .f_to_kind(Kind::Float)?;
    let text = Error::read_text(&a.prompts)?;
    let prompts: Vec<Vec<i64>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(a.limit)
        .map(|l| bundle.encode_prompt(&l.replace("\\n", "\n"), true))
        .collect::<Result<_>>()?;
    let config = DecodeConfig::new(a.new_tokens).with_eos(bundle.eos.clone());
    let sink: Sink = Rc::new(RefCell::new(Vec::new()));
    let factory_sink = sink.clone();
    let mut decoder = BatchBlockwise::builder(&mut bundle.model)
        .block_size(1)
        .proposer_factory(false, move || {
            let mut rows = factory_sink.borrow_mut();
            rows.push(Vec::new());
            Ok(Box::new(Recorder {
                sink: factory_sink.clone(),
                row: rows.len() - 1,
            }) as Box<dyn Proposer>)
        })
        .build()?;
    let (t0, mut answer_tokens, mut disagreements) = (Instant::now(), 0usize, 0usize);
    let (mut written, mut skipped) = (0usize, 0usize);
    for (s, shard) in prompts.chunks(a.shard).enumerate() {
        let path = PathBuf::from(format!("{}-{s:05}.safetensors", a.out));
        if path.exists() {
            skipped += 1;
            continue;
        }
        let mut parts = Vec::new();
        for group in shard.chunks(a.batch) {
            sink.borrow_mut().clear();
            let outs = decoder.decode_batch(group, &config)?;
            let rows = std::mem::take(&mut *sink.borrow_mut());
            for ((prompt, out), hidden) in group.iter().zip(outs).zip(rows) {
                answer_tokens += out.tokens.len();
                let (part, off) = row_data(prompt, &out.tokens, &hidden, &embeddings)?;
                disagreements += off;
                parts.push(part);
            }
            eprint!(
                "\rdraft_answers: shard {s}, {} of {} prompts, {:.1} answer tokens/s",
                s * a.shard + parts.len(),
                prompts.len(),
                answer_tokens as f64 / t0.elapsed().as_secs_f64()
            );
        }
        let data = DraftData::concat(&parts)?.repeated(a.repeat)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        }
        data.save(&path)?;
        written += 1;
    }
    eprintln!();
    let s = t0.elapsed().as_secs_f64();
    println!(
        "draft_answers: {} prompts in {} shards ({skipped} already written); {answer_tokens} answer \
         tokens decoded in {s:.0} s ({:.1} tokens/s at batch {}); {disagreements} answer positions \
         where the embeddings' argmax is not the decoded token (ties); {:?}",
        prompts.len(),
        written + skipped,
        answer_tokens as f64 / s.max(1e-9),
        a.batch,
        a.dtype,
    );
    Ok(())
}

/// One row's sequence as far as it was fed to the model (a last token never fed has no hidden
/// state), its hidden states and argmaxes (after the last token fed: the projection's); and how many answer positions' embedding argmax differs from
/// the decoded next token.
fn row_data(
    prompt: &[i64],
    answer: &[i64],
    hidden: &[Tensor],
    embeddings: &Tensor,
) -> Result<(DraftData, usize)> {
    let seq = [prompt, answer].concat();
    let h = Tensor::f_cat(hidden, 0)?;
    let n = h.size()[0] as usize;
    if n > seq.len() || n + 1 < seq.len() {
        return Err(Error::Contract {
            component: "draft_answers",
            problem: format!(
                "{n} hidden states were handed over for a sequence of {} tokens (expected one per \
                 token fed: all, or all but the last)",
                seq.len()
            ),
        });
    }
    let last = blockwise::model::final_states(&h, embeddings.size()[1])?;
    let projected: Vec<i64> =
        Vec::try_from(last.f_matmul(&embeddings.f_tr()?)?.f_argmax(-1, false)?)?;
    let mut argmax = projected.clone();
    let mut off = 0;
    for t in prompt.len() - 1..n.min(seq.len() - 1) {
        off += usize::from(projected[t] != seq[t + 1]);
        argmax[t] = seq[t + 1];
    }
    Ok((
        DraftData {
            tokens: Tensor::from_slice(&seq[..n]),
            hidden: h.f_to_kind(Kind::Half)?,
            argmax: Tensor::from_slice(&argmax),
            offsets: vec![0, n],
            prompt_lens: Some(vec![prompt.len()]),
        },
        off,
    ))
}
