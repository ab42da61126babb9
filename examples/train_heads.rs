//! Trains proposal heads for any model the crate loads (an export folder such as
//! `models/smollm2`, or a built-in transformer folder) on top of its frozen final hidden
//! states, with every setting from a serde JSON file, and saves them where `decode` finds them.
//!
//! ```text
//! cargo run --release --example train_heads -- examples/configs/smollm2-heads.json
//! ```
//!
//! The data are either the model's own greedy continuations of a prompt file (sequence-level
//! self-distillation; decoded once and kept in `data.cache`) or a plain-text corpus. A
//! checkpoint folder makes an interrupted run resume where it stopped.
//!
//! Decoding the prompts is the slow part on a CPU; it can be split across processes:
//! `train_heads CONFIG --distill-range A..B` decodes prompts `A..B` only (into
//! `<cache>.A-B.json`), and a plain run merges range files that cover every prompt.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use blockwise::bundle::{BundleOptions, HeadsChoice, ModelBundle};
use blockwise::heads::{HeadArch, HeadsConfig, WithHeads};
use blockwise::train::{
    distill, mean_accepted_with_heads, train_heads, train_heads_on_states, DraftData,
    HeadsTrainConfig, ProgressBar, Validation,
};
use blockwise::{CausalLm, DType, DecodeConfig, Error, GreedyDecoder, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Where the training text comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum Data {
    /// The model's greedy continuations of each prompt (one per line).
    Distill {
        prompts: PathBuf,
        #[serde(default)]
        chat: bool,
        new_tokens: usize,
        #[serde(default)]
        limit: Option<usize>,
        /// Where the decoded sequences are kept (JSON), so a rerun skips decoding.
        cache: PathBuf,
    },
    /// A plain-text file.
    Corpus { path: PathBuf },
    /// Stored hidden states and the base's argmax (`make draft-data`, the feature draft's
    /// data): the heads learn the base's greedy tokens from them without running the base.
    States {
        dir: PathBuf,
        #[serde(default)]
        max_tokens: Option<usize>,
        /// Shards whose file name starts with a key are repeated that many times
        /// (`DraftData::load_weighted`).
        #[serde(default)]
        weights: BTreeMap<String, usize>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidationSpec {
    prompts: PathBuf,
    #[serde(default)]
    chat: bool,
    block_size: usize,
    max_new_tokens: usize,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadsSpec {
    #[serde(default)]
    arch: HeadArch,
    num_heads: usize,
    #[serde(default = "default_d_ff")]
    d_ff: i64,
    /// Score only the this many most frequent tokens of the training data.
    #[serde(default)]
    shortlist: Option<usize>,
}

fn default_d_ff() -> i64 {
    64
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// `embedded`, an export folder or a built-in transformer folder.
    model: String,
    /// Kind the base computes in while producing data and hidden states.
    #[serde(default)]
    dtype: DType,
    heads: HeadsSpec,
    data: Data,
    #[serde(default)]
    validation: Option<ValidationSpec>,
    train: HeadsTrainConfig,
    /// Where the trained heads are written.
    out: PathBuf,
    #[serde(default)]
    checkpoint: Option<PathBuf>,
    #[serde(default)]
    seed: u64,
}

/// The export's source model (what shipped heads are matched against); none for a
/// layer-truncated export.
fn source_of(bundle: &ModelBundle) -> Option<String> {
    bundle
        .metadata
        .as_ref()
        .filter(|m| !m.source.contains_key("truncated"))
        .and_then(|m| m.source.get("gguf"))
        .and_then(|v| v.as_str())
        .map(String::from)
}

/// The validation prompts and settings of `config`, encoded.
fn validation_of(config: &Config, bundle: &ModelBundle) -> Result<Option<Validation>> {
    Ok(match &config.validation {
        Some(v) => Some(Validation {
            prompts: encode_all(bundle, &prompt_lines(&v.prompts, v.limit)?, v.chat)?,
            block_size: v.block_size,
            max_new_tokens: v.max_new_tokens,
            eos: bundle.eos.clone(),
        }),
        None => None,
    })
}

fn prompt_lines(path: &Path, limit: Option<usize>) -> Result<Vec<String>> {
    let text = Error::read_text(path)?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.replace("\\n", "\n"))
        .take(limit.unwrap_or(usize::MAX))
        .collect())
}

fn encode_all(bundle: &ModelBundle, lines: &[String], chat: bool) -> Result<Vec<Vec<i64>>> {
    lines
        .iter()
        .map(|l| bundle.encode_prompt(l, chat))
        .collect()
}

/// The file of the decodes of prompts `a..b`, next to the full cache.
fn range_file(cache: &Path, a: usize, b: usize) -> PathBuf {
    cache.with_extension(format!("{a}-{b}.json"))
}

/// The decodes of every prompt, from range files written by `--distill-range` runs when they
/// cover `0..n` without gaps.
fn merge_ranges(cache: &Path, n: usize) -> Result<Option<Vec<Vec<i64>>>> {
    let stem = cache
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let dir = cache
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let mut ranges: Vec<(usize, usize, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let middle = name
                .strip_prefix(&format!("{stem}."))?
                .strip_suffix(".json")?;
            let (a, b) = middle.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?, p))
        })
        .collect();
    ranges.sort();
    let mut out = Vec::with_capacity(n);
    for (a, b, path) in ranges {
        if a != out.len() {
            return Ok(None);
        }
        let part: Vec<Vec<i64>> = Error::read_json(&path)?;
        if part.len() != b - a {
            return Ok(None);
        }
        out.extend(part);
    }
    Ok((out.len() == n).then_some(out))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            action: "creating",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let json = serde_json::to_string(value).expect("plain data serialises");
    std::fs::write(path, json).map_err(|source| Error::Io {
        action: "writing",
        path: path.to_path_buf(),
        source,
    })
}

fn training_data(
    bundle: &mut ModelBundle,
    data: &Data,
    range: Option<(usize, usize)>,
) -> Result<Vec<Vec<i64>>> {
    match data {
        Data::Corpus { path } => Ok(vec![bundle.tokenizer.encode(&Error::read_text(path)?)?]),
        Data::States { .. } => Err(Error::config(
            "data",
            "stored states are trained on directly, not as token sequences",
        )),
        Data::Distill {
            prompts,
            chat,
            new_tokens,
            limit,
            cache,
        } => {
            if cache.is_file() && range.is_none() {
                return Error::read_json(cache);
            }
            let mut prompts = encode_all(bundle, &prompt_lines(prompts, *limit)?, *chat)?;
            if range.is_none() {
                if let Some(merged) = merge_ranges(cache, prompts.len())? {
                    write_json(cache, &merged)?;
                    return Ok(merged);
                }
            }
            if let Some((a, b)) = range {
                if a >= b || b > prompts.len() {
                    return Err(Error::config(
                        "--distill-range",
                        format!(
                            "{a}..{b} is not a range within the {} prompts",
                            prompts.len()
                        ),
                    ));
                }
                prompts = prompts[a..b].to_vec();
            }
            let config = DecodeConfig::new(*new_tokens).with_eos(bundle.eos.clone());
            let (t0, n) = (Instant::now(), prompts.len());
            let mut bar = ProgressBar::new("distill");
            let seqs = distill(
                &mut GreedyDecoder::new(&mut bundle.model),
                &prompts,
                &config,
                |done| bar.update(done, n, f64::NAN, t0.elapsed().as_secs_f64(), ""),
            )?;
            match range {
                Some((a, b)) => write_json(&range_file(cache, a, b), &seqs)?,
                None => write_json(cache, &seqs)?,
            }
            Ok(seqs)
        }
    }
}

/// `n` token ids: those of the data, most frequent first, then — when the data has fewer
/// distinct ids — the lowest ids not yet taken (a BPE vocabulary numbers its tokens roughly by
/// frequency, so these are the common tokens the data happened to miss).
fn shortlist(data: &[Vec<i64>], n: usize, vocab_size: i64) -> Vec<i64> {
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for &t in data.iter().flatten() {
        *counts.entry(t).or_default() += 1;
    }
    let mut ids: Vec<(i64, usize)> = counts.into_iter().collect();
    ids.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut list: Vec<i64> = ids.into_iter().take(n).map(|(id, _)| id).collect();
    let taken: std::collections::HashSet<i64> = list.iter().copied().collect();
    let fill = (0..vocab_size).filter(|id| !taken.contains(id));
    let missing = n.saturating_sub(list.len());
    list.extend(fill.take(missing));
    list
}

/// Milliseconds per call of `f`, median of `n`.
fn time_ms(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[n / 2])
}

/// The heads' cost per decoding iteration next to one model step (one token at a 128-token
/// past), in this run's dtype.
fn head_cost<M: CausalLm>(model: &mut WithHeads<M>) -> Result<(f64, f64)> {
    let _guard = tch::no_grad_guard();
    let device = model.info().device;
    let past: Vec<i64> = (0..128).map(|i| 100 + i).collect();
    let out = model.forward(
        &Tensor::from_slice(&past)
            .f_view([1, 128])?
            .f_to_device(device)?,
        0,
    )?;
    let hidden = out
        .hidden
        .ok_or(Error::config(
            "model",
            "the model does not return hidden states",
        ))?
        .f_select(1, 127)?;
    let one = Tensor::from_slice(&[42i64])
        .f_view([1, 1])?
        .f_to_device(device)?;
    let step = time_ms(21, || {
        model.forward(&one, 128)?;
        Ok(())
    })?;
    let heads = time_ms(21, || {
        let logits = model.head_logits(&hidden)?.expect("heads attached");
        let _ = logits.f_argmax(-1, false)?.f_to_kind(Kind::Int64)?;
        Ok(())
    })?;
    Ok((heads, step))
}

fn run(path: &Path, range: Option<(usize, usize)>) -> Result<()> {
    let config: Config = Error::read_json(path)?;
    let options = BundleOptions {
        dtype: config.dtype,
        heads: HeadsChoice::None,
        f32_matmul: Default::default(),
        backend: Default::default(),
        ..BundleOptions::default()
    };
    let mut bundle = ModelBundle::load(&config.model, &options)?;
    if let Data::States {
        dir,
        max_tokens,
        weights,
    } = &config.data
    {
        return run_on_states(&config, bundle, dir, *max_tokens, weights);
    }
    let data = training_data(&mut bundle, &config.data, range)?;
    if let Some((a, b)) = range {
        println!("train_heads: decoded prompts {a}..{b}; run without --distill-range to train");
        return Ok(());
    }
    let tokens: usize = data.iter().map(Vec::len).sum();
    eprintln!("train_heads: {} sequences, {tokens} tokens", data.len());
    let validation = validation_of(&config, &bundle)?;
    let emb = bundle.model.token_embeddings().ok_or(Error::config(
        "model",
        "does not expose its token embeddings",
    ))?;
    let (vocab_size, d_model) = emb.size2()?;
    let source = source_of(&bundle);
    let heads_config = HeadsConfig {
        arch: config.heads.arch,
        num_heads: config.heads.num_heads,
        d_model,
        d_ff: config.heads.d_ff,
        vocab_size,
        base: source,
    };
    let mut model = WithHeads::new(bundle.model, heads_config, config.seed)?;
    if let Some(n) = config.heads.shortlist {
        let list = shortlist(&data, n, vocab_size);
        let covered: usize = {
            let set: std::collections::HashSet<i64> = list.iter().copied().collect();
            data.iter().flatten().filter(|t| set.contains(t)).count()
        };
        eprintln!(
            "train_heads: shortlist of {} ids covers {:.1}% of training tokens",
            list.len(),
            100.0 * covered as f64 / tokens as f64
        );
        model = model.with_shortlist(&list)?;
    }
    let mut bar = ProgressBar::new("heads");
    let mut accepted = String::new();
    let report = train_heads(
        &mut model,
        &data,
        validation.as_ref(),
        &config.train,
        config.checkpoint.as_deref(),
        |l| {
            if let Some(a) = l.mean_accepted {
                accepted = format!("mean accepted {a:.2}");
            }
            bar.update(l.step, l.steps, l.loss, l.elapsed_s, &accepted);
        },
    )?;
    model.save(&config.out)?;
    let (heads_ms, step_ms) = head_cost(&mut model)?;
    println!(
        "train_heads: {} steps in {:.0} s, final loss {:.3}, mean accepted {} | heads {:.2} ms \
         per iteration vs a model step {:.2} ms ({:.0}%) | saved to {}",
        config.train.steps,
        report.wall_s,
        report.final_loss,
        report
            .mean_accepted
            .map_or("-".to_string(), |a| format!("{a:.2}")),
        heads_ms,
        step_ms,
        100.0 * heads_ms / step_ms,
        config.out.display()
    );
    Ok(())
}

/// Heads trained on stored hidden states (`Data::States`), then measured on the validation
/// prompts.
fn run_on_states(
    config: &Config,
    bundle: ModelBundle,
    dir: &Path,
    max_tokens: Option<usize>,
    weights: &BTreeMap<String, usize>,
) -> Result<()> {
    let data = DraftData::load_weighted(dir, "train", max_tokens, weights)?;
    eprintln!(
        "train_heads: {} sequences, {} tokens of stored states",
        data.sequences(),
        data.len()
    );
    let emb = bundle.model.token_embeddings().ok_or(Error::config(
        "model",
        "does not expose its token embeddings",
    ))?;
    let (vocab_size, d_model) = emb.size2()?;
    let source = source_of(&bundle);
    let validation = validation_of(config, &bundle)?;
    let heads_config = HeadsConfig {
        arch: config.heads.arch,
        num_heads: config.heads.num_heads,
        d_model,
        d_ff: config.heads.d_ff,
        vocab_size,
        base: source,
    };
    let mut model = WithHeads::new(bundle.model, heads_config, config.seed)?;
    if let Some(n) = config.heads.shortlist {
        model = model.with_shortlist(&data.shortlist(n, vocab_size)?)?;
    }
    let mut bar = ProgressBar::new("heads");
    let report = train_heads_on_states(&mut model, &data, &config.train, |l| {
        bar.update(l.step, l.steps, l.loss, l.elapsed_s, "")
    })?;
    model.save(&config.out)?;
    let accepted = match &validation {
        Some(v) => format!("{:.2}", mean_accepted_with_heads(&mut model, v)?),
        None => "-".into(),
    };
    let (heads_ms, step_ms) = head_cost(&mut model)?;
    println!(
        "train_heads: {} steps in {:.0} s, final loss {:.3}, mean accepted {accepted} | heads \
         {heads_ms:.2} ms per iteration vs a model step {step_ms:.2} ms | saved to {}",
        config.train.steps,
        report.wall_s,
        report.final_loss,
        config.out.display()
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: train_heads CONFIG.json [--distill-range A..B]";
    let result = match args.as_slice() {
        [path] => run(Path::new(path), None),
        [path, flag, range] if flag == "--distill-range" => match range
            .split_once("..")
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        {
            Some(r) => run(Path::new(path), Some(r)),
            None => Err(Error::config(
                "--distill-range",
                format!("`{range}` is not A..B"),
            )),
        },
        _ => Err(Error::config("arguments", usage)),
    };
    if let Err(e) = result {
        eprintln!("train_heads: {e}");
        std::process::exit(2);
    }
}
