//! One table of proposers on an exported model, every row against greedy decoding of the same
//! prompts in the same process (greedy runs once per dtype; each row decodes every prompt): the
//! shipped heads, heads from other folders, n-gram lookup, the feature-level draft as chains and
//! as dynamic trees. Exact acceptance; output compared token for token with greedy's. Greedy is
//! timed again right before every row and the row's speedup is against that run, so that a
//! machine whose speed drifts over minutes skews no row.
//!
//! ```text
//! cargo run --release --example proposer_table -- [--model models/smollm2] [--prompts FILE]
//!     [--count N] [--max-new-tokens N] [--dtypes f32,bf16] [--heads NAME=DIR ...]
//!     [--draft NAME=DIR[@f32|@int8] ...] [--draft-weights auto|f32|int8] [--only TEXT]
//!     [--min-confidence P[,P..]]
//!     [--device cpu|cuda[:N]] [--backend torchscript|native] [--json FILE]
//! ```
//!
//! `--only TEXT` keeps the rows whose proposer name contains TEXT (for example `eagle`);
//! `--draft NAME=DIR` adds a k = 4 chain and an 8-node tree of the feature draft saved in DIR,
//! to compare drafts in one run (`@f32` / `@int8` after DIR: the form its products run in;
//! `--draft shipped-f32=assets/drafts/smollm2@f32` sets the shipped draft's float32 form beside
//! its default int8 one); `--draft-weights` sets the form of the shipped draft's rows. "first guess accepted" is the share of iterations that kept
//! more than the model's own token: the first drafted token's acceptance rate, what a draft's
//! first-step agreement in training predicts. `--min-confidence P,...` adds chains of the
//! shipped draft at k = 4, 6 and 8 that stop at the first guess whose cumulative confidence is
//! below P (`eagle~P`), one set per P.

use std::path::PathBuf;
use std::time::Instant;

use blockwise::bundle::{Backend, BundleOptions, HeadsChoice, ModelBundle};
use blockwise::config::{BlockwiseConfig, ProposerConfig};
use blockwise::decoder::BatchBlockwise;
use blockwise::feature::DraftWeights;
use blockwise::policy::PolicyConfig;
use tch::Device;

use blockwise::{
    Blockwise, BlockwiseDecoder, DType, DecodeConfig, DecodeOutput, Error, GreedyDecoder, Result,
};

/// One row: which heads are attached, the proposer, `k`, a dynamic tree's node budget, the
/// policy.
#[derive(Clone)]
struct Row {
    name: String,
    heads: HeadsChoice,
    proposer: ProposerConfig,
    k: usize,
    tree: Option<usize>,
    adaptive: bool,
}

struct Args {
    model: String,
    prompts: PathBuf,
    count: usize,
    max_new_tokens: usize,
    dtypes: Vec<DType>,
    heads: Vec<(String, PathBuf)>,
    drafts: Vec<(String, String)>,
    draft_weights: DraftWeights,
    min_confidence: Vec<f64>,
    only: Option<String>,
    device: Device,
    backend: Backend,
    json: Option<PathBuf>,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        model: "models/smollm2".into(),
        prompts: "examples/prompts/chat24.txt".into(),
        count: 12,
        max_new_tokens: 64,
        dtypes: vec![DType::F32, DType::Bf16],
        heads: Vec::new(),
        drafts: Vec::new(),
        draft_weights: DraftWeights::Auto,
        min_confidence: Vec::new(),
        only: None,
        device: Device::Cpu,
        backend: Backend::TorchScript,
        json: None,
    };
    let bad = |what: &str| Error::config("arguments", format!("{what}; see the file's header"));
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| bad(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--model" => a.model = value()?,
            "--prompts" => a.prompts = value()?.into(),
            "--count" => a.count = value()?.parse().map_err(|_| bad("--count N"))?,
            "--max-new-tokens" => {
                a.max_new_tokens = value()?.parse().map_err(|_| bad("--max-new-tokens N"))?
            }
            "--dtypes" => {
                a.dtypes = value()?
                    .split(',')
                    .map(|d| d.parse())
                    .collect::<Result<_>>()?
            }
            "--heads" => {
                let v = value()?;
                let (name, dir) = v.split_once('=').ok_or_else(|| bad("--heads NAME=DIR"))?;
                a.heads.push((name.into(), dir.into()));
            }
            "--draft" => {
                let v = value()?;
                let (name, dir) = v.split_once('=').ok_or_else(|| bad("--draft NAME=DIR"))?;
                format!("eagle:{dir}").parse::<ProposerConfig>()?;
                a.drafts.push((name.into(), dir.into()));
            }
            "--draft-weights" => a.draft_weights = value()?.parse()?,
            "--min-confidence" => {
                a.min_confidence = value()?
                    .split(',')
                    .map(|p| p.parse().map_err(|_| bad("--min-confidence P[,P..]")))
                    .collect::<Result<_>>()?
            }
            "--only" => a.only = Some(value()?),
            "--device" => a.device = blockwise::cuda::parse_device(&value()?)?,
            "--backend" => a.backend = Backend::parse(&value()?)?,
            "--json" => a.json = Some(value()?.into()),
            other => return Err(bad(&format!("unknown flag {other}"))),
        }
    }
    Ok(a)
}

fn rows(args: &Args) -> Vec<Row> {
    let eagle = || ProposerConfig::Eagle {
        draft: None,
        weights: args.draft_weights,
        min_confidence: 0.0,
        tree_width: blockwise::feature::DEFAULT_TREE_WIDTH,
    };
    let row = |name: &str, heads: HeadsChoice, proposer, k, tree, adaptive| Row {
        name: name.into(),
        heads,
        proposer,
        k,
        tree,
        adaptive,
    };
    let mut out = vec![row(
        "heads (shipped)",
        HeadsChoice::Auto,
        ProposerConfig::Heads,
        5,
        None,
        false,
    )];
    for (name, dir) in &args.heads {
        out.push(row(
            &format!("heads ({name})"),
            HeadsChoice::Dir(dir.clone()),
            ProposerConfig::Heads,
            5,
            None,
            false,
        ));
    }
    out.push(row(
        "n-gram",
        HeadsChoice::None,
        ProposerConfig::Ngram { min: 1, max: 3 },
        5,
        None,
        false,
    ));
    for k in [2, 3, 4, 5, 6, 8] {
        out.push(row(
            "eagle chain",
            HeadsChoice::None,
            eagle(),
            k,
            None,
            false,
        ));
    }
    out.push(row(
        "eagle chain --adaptive",
        HeadsChoice::None,
        eagle(),
        6,
        None,
        true,
    ));
    for (depth, nodes) in [(4, 8), (6, 8), (6, 24)] {
        out.push(row(
            "eagle tree",
            HeadsChoice::None,
            eagle(),
            depth,
            Some(nodes),
            false,
        ));
    }
    for &p in &args.min_confidence {
        for k in [4, 6, 8] {
            out.push(row(
                &format!("eagle chain ~{p}"),
                HeadsChoice::None,
                eagle().with_draft_min_confidence(p),
                k,
                None,
                false,
            ));
        }
    }
    for (name, dir) in &args.drafts {
        let config: ProposerConfig = format!("eagle:{dir}")
            .parse()
            .expect("checked when the arguments were read");
        let draft = || config.clone();
        out.push(row(
            &format!("eagle chain ({name})"),
            HeadsChoice::None,
            draft(),
            4,
            None,
            false,
        ));
        out.push(row(
            &format!("eagle tree ({name})"),
            HeadsChoice::None,
            draft(),
            4,
            Some(8),
            false,
        ));
    }
    if let Some(only) = &args.only {
        out.retain(|r| r.name.contains(only.as_str()));
    }
    out
}

/// Greedy decoding of every prompt, and its wall time in seconds.
fn time_greedy(
    bundle: &mut ModelBundle,
    prompts: &[Vec<i64>],
    decode: &DecodeConfig,
) -> Result<(Vec<DecodeOutput>, f64)> {
    let t0 = Instant::now();
    let outs = prompts
        .iter()
        .map(|p| GreedyDecoder::new(&mut bundle.model).decode(p, decode))
        .collect::<Result<_>>()?;
    Ok((outs, t0.elapsed().as_secs_f64()))
}

struct Measured {
    outs: Vec<DecodeOutput>,
    wall_s: f64,
}

fn run_row(
    bundle: &mut ModelBundle,
    row: &Row,
    dtype: DType,
    backend: Backend,
    prompts: &[Vec<i64>],
    decode: &DecodeConfig,
) -> Result<Measured> {
    let proposer = row
        .proposer
        .clone()
        .with_shipped_draft(bundle.draft.as_deref());
    let t0 = Instant::now();
    let outs = match row.tree {
        Some(nodes) => {
            let info = bundle.model.info().clone();
            let emb = bundle.model.token_embeddings();
            // One proposer built, then a fork per prompt (as a server admits requests).
            let proposers = proposer.row_proposers(&info, emb.as_ref())?.factory();
            let mut d = BatchBlockwise::builder(&mut bundle.model)
                .block_size(row.k)
                .proposer_factory(false, proposers)
                .dynamic_tree(nodes)
                .build()?;
            prompts
                .iter()
                .map(|p| d.decode(p, decode))
                .collect::<Result<Vec<_>>>()?
        }
        None => {
            let config = BlockwiseConfig {
                block_size: row.k,
                proposer,
                policy: if row.adaptive {
                    PolicyConfig::CostAware { per_token: None }
                } else {
                    PolicyConfig::Fixed
                },
                // TorchScript blocks round differently from one-token steps in low precision;
                // the native decoder computes every block row as a step would, so needs none.
                tie_guard: (dtype != DType::F32 && backend == Backend::TorchScript).then_some(0.5),
                ..BlockwiseConfig::heads(row.k)
            };
            let mut d = Blockwise::from_config(&mut bundle.model, &config, None)?;
            prompts
                .iter()
                .map(|p| d.decode(p, decode))
                .collect::<Result<Vec<_>>>()?
        }
    };
    Ok(Measured {
        outs,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}

fn main() {
    if let Err(e) = run() {
        eprintln!("proposer_table: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let args = parse()?;
    let text = Error::read_text(&args.prompts)?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(args.count)
        .collect();
    let mut json_rows = Vec::new();
    println!(
        "| dtype | proposer | k | tree nodes | prompts | mean accepted | guesses verified / \
         iteration | model calls / greedy | first guess accepted | ms per token (blockwise / greedy) | speedup | identical | \
         proposer ms / iteration (share of a greedy step) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &dtype in &args.dtypes {
        let load = |heads: HeadsChoice| {
            ModelBundle::load(
                &args.model,
                &BundleOptions {
                    dtype,
                    heads,
                    device: args.device,
                    backend: args.backend,
                    ..BundleOptions::default()
                },
            )
        };
        let mut bundle = load(HeadsChoice::None)?;
        let prompts: Vec<Vec<i64>> = lines
            .iter()
            .map(|l| bundle.encode_prompt(l, true))
            .collect::<Result<_>>()?;
        let decode = DecodeConfig::new(args.max_new_tokens).with_eos(bundle.eos.clone());
        // Warm-up; greedy is decoded again before every row (its output is the same each time).
        GreedyDecoder::new(&mut bundle.model).decode(&prompts[0], &DecodeConfig::new(8))?;
        let mut current = HeadsChoice::None;
        for row in rows(&args) {
            if row.heads != current {
                bundle = load(row.heads.clone())?;
                current = row.heads.clone();
            }
            let (greedy, greedy_s) = time_greedy(&mut bundle, &prompts, &decode)?;
            let greedy_tokens: usize = greedy.iter().map(|g| g.tokens.len()).sum();
            let greedy_calls: usize = greedy.iter().map(|g| g.stats.model_calls).sum();
            let step_ms = 1e3 * greedy_s / greedy_tokens.max(1) as f64;
            let m = run_row(&mut bundle, &row, dtype, args.backend, &prompts, &decode)?;
            let tokens: usize = m.outs.iter().map(|o| o.tokens.len()).sum();
            let iters: usize = m.outs.iter().map(|o| o.stats.iterations).sum();
            let calls: usize = m.outs.iter().map(|o| o.stats.model_calls).sum();
            let proposer_s: f64 = m.outs.iter().map(|o| o.stats.proposer_s).sum();
            let proposed: usize = m.outs.iter().map(|o| o.stats.proposed).sum();
            let verified = proposed as f64 / iters.max(1) as f64;
            let identical = m
                .outs
                .iter()
                .zip(&greedy)
                .filter(|(o, g)| o.tokens == g.tokens)
                .count();
            let prop_ms = 1e3 * proposer_s / iters.max(1) as f64;
            // Iterations that kept more than the model's own token.
            let beyond: usize = m
                .outs
                .iter()
                .map(|o| o.stats.accepted_hist.iter().skip(2).sum::<usize>())
                .sum();
            let first = beyond as f64 / iters.max(1) as f64;
            let r = serde_json::json!({
                "dtype": dtype.to_string(), "device": format!("{:?}", args.device).to_lowercase(),
                "backend": format!("{:?}", args.backend).to_lowercase(),
                "proposer": row.name, "k": row.k, "tree": row.tree,
                "prompts": prompts.len(), "mean_accepted": tokens as f64 / iters.max(1) as f64,
                "model_calls": calls, "greedy_calls": greedy_calls,
                "ms_per_token": 1e3 * m.wall_s / tokens.max(1) as f64, "greedy_ms_per_token": step_ms,
                "speedup": greedy_s / m.wall_s, "identical": identical,
                "proposer_ms_per_iteration": prop_ms, "first_guess_accepted": first,
                "proposed_per_iteration": verified,
            });
            println!(
                "| {dtype} | {} | {} | {} | {} | {:.2} | {verified:.2} | {calls} / {greedy_calls} | \
                 {first:.2} | \
                 {:.1} / {step_ms:.1} \
                 | {:.2}x | {identical}/{} | {prop_ms:.1} ({:.0}%) |",
                row.name,
                row.k,
                row.tree.map_or("-".into(), |n| n.to_string()),
                prompts.len(),
                r["mean_accepted"].as_f64().unwrap_or(0.0),
                r["ms_per_token"].as_f64().unwrap_or(0.0),
                r["speedup"].as_f64().unwrap_or(0.0),
                prompts.len(),
                100.0 * prop_ms / step_ms,
            );
            json_rows.push(r);
            // Written after every row, so a run stopped part way keeps what it measured.
            if let Some(path) = &args.json {
                let text = serde_json::to_string_pretty(&json_rows).expect("rows serialise");
                std::fs::write(path, text + "\n").map_err(Error::io("writing", path))?;
            }
        }
    }
    Ok(())
}
