//! Command-line arguments of the `decode` example.

use std::path::PathBuf;

use blockwise::bundle::{Backend, HeadsChoice};
use blockwise::config::{AcceptanceConfig, ProposerConfig, VerifierConfig};
use blockwise::decoder::TreeConfig;
use blockwise::feature::DraftWeights;
use blockwise::native::Bf16Inputs;
use blockwise::policy::PolicyConfig;
use blockwise::torchscript::F32Matmul;
use blockwise::{DType, Error, Result, SamplingConfig};
use clap::Parser;
use tch::Device;

pub const USAGE: &str = "\
usage: decode [--model embedded|DIR] [--prompt TEXT | --prompt-file FILE] [--chat]
              [--proposer auto|heads|none|ngram[:MIN:MAX]|corpus[:PATH[:MIN:MAX]]|lookahead[:W:N:G]|draft:DIR|eagle[:DIR]|chain:A,B]
              [--draft-weights auto|f32|int8|native-f32|native-bf16|native-int8]
              [--draft-confidence P] [--draft-tree-width W]
              [--heads DIR|none]
              [--k N]
              [--adaptive | --policy fixed|adaptive|cost[:PER_TOKEN]]
              [--accept exact|lossless|typical[:EPS:DELTA]|top-k:N|distance:EPS[:cosine|l2]]
              [--min-block L] [--temperature T [--top-k N] [--top-p P] [--seed S]]
              [--max-new-tokens N] [--max-context N] [--verifier cached|recompute] [--prefill-chunk N]
              [--tie-guard M]
              [--batch N [--speculate-up-to ROWS]] [--tree SHAPE|dynamic:NODES]
              [--dtype f32|bf16|f16|int8] [--device cpu|cuda[:N]] [--f32-matmul auto|blas|onednn]
              [--backend auto|torchscript|native] [--bf16-inputs f32|bf16|tiles] [--compare-greedy] [--json]

  --model           `embedded` (default: the model shipped in assets/embedded, trained on
                    the King James Bible, with trained heads), a folder
                    exported by scripts/export_hf.py (metadata.json, e.g. models/smollm2), or a
                    built-in transformer folder (config.json + model.safetensors)
  --prompt          one prompt
  --prompt-file     one prompt per line; `\\n` inside a line is a newline
  --chat            wrap each prompt as one user message in the model's chat template
  --proposer        where proposals come from (default auto: chain:ngram:3:3,eagle where a
                    draft is shipped for the model, else its heads, else ngram; heads with a
                    --tree shape); heads = the model's proposal heads; ngram = prompt lookup
                    of 1..3 tokens; corpus = what most often followed the last 1..4 tokens in the
                    model's own answers shipped for it (assets/drafts, e.g. SmolLM2's),
                    corpus:PATH[:MIN:MAX] = in a safetensors file or folder of token
                    sequences; lookahead[:W:N:G] = lookahead decoding (Jacobi window W, n-grams
                    of N, G candidates; default 4:3:4; with --tree dynamic:NODES the window and
                    the candidates share one call); draft:DIR = a draft model of the same
                    tokenizer (e.g.
                    models/smollm2-draft); eagle = the feature-level draft shipped for the
                    model (assets/drafts, e.g. SmolLM2's), eagle:DIR = one saved in DIR;
                    chain:A,B = A, or B where A has no proposal
  --heads           proposal heads for an exported model (default: its heads/ folder, or the
                    heads shipped in assets/heads for its source model, e.g. SmolLM2's)
  --k               block size (default 4): at most k - 1 proposals per block
  --adaptive        size each block (up to k) by recent acceptance and the verify costs measured
                    as it runs; plain greedy steps where proposals do not pay (= --policy cost)
  --policy          block-size policy (default fixed: always k - 1 proposals; adaptive: grow
                    after full acceptance, shrink after rejections; cost[:PER_TOKEN]: as
                    --adaptive, with a stated extra cost per block token instead of timings)
  --accept          acceptance criterion (default exact, which under sampling is lossless:
                    speculative sampling, the output has the model's distribution); typical =
                    Medusa's typical acceptance (epsilon 0.09, delta 0.3), not lossless
  --temperature     sample at temperature T instead of decoding greedily (0: greedy, the default)
  --top-k           sample from the N most likely tokens only
  --top-p           sample from the most likely tokens whose probability reaches P only
  --seed            reseed the sampler with S for every prompt (default: one stream from seed 0)
  --min-block       always accept at least L tokens per block
  --max-new-tokens  tokens to generate (default 64)
  --max-context     context to allocate an exported model's cache for (default: the model's,
                    at most 2048; up to the length it was trained for, e.g. 8192 for SmolLM2)
  --verifier        cached (default) or recompute
  --prefill-chunk   feed the prompt in blocks of N tokens
  --tie-guard       decide block positions whose top-2 logit margin is below M by a one-token
                    call, as greedy does (for bf16/f16, where blocks round differently)
  --batch           decode the prompts N at a time in one batch (each row accepts its own
                    tokens and stops on its own; greedy acceptance, fixed block sizes)
  --speculate-up-to  with --batch or --tree: proposals only while at most ROWS rows are
                    busy, plain greedy steps above (as blockwise-server does, 2 on the CPU)
  --tree            verify a tree of the heads' candidates instead of a chain: SHAPE = widths
                    per depth, e.g. 3,2,1 (top 3 of head 1, under each the top 2 of head 2, ...);
                    dynamic:NODES = a tree the proposer grows by its own confidence (eagle),
                    at most NODES nodes and k - 1 deep
  --dtype           f32 (default), bf16, f16, or int8 (an export's int8 weight form);
                    the export must have it
  --device          cpu (default), cuda or cuda:N (needs a CUDA build of libtorch and a GPU)
  --f32-matmul      auto (default: oneDNN on AMD CPUs, else libtorch's BLAS), blas or onednn:
                    the CPU library of an f32 export's matrix products
  --backend         auto (default: native where it can compute the export with the other
                    flags, else torchscript), torchscript (the exported module) or native
                    (the crate's own CPU kernels, blockwise::native: Llama-shaped exports,
                    --dtype f32, bf16 or int8 weights with f32 activations; about twice as
                    fast a step on 2 cores)
  --bf16-inputs     f32 (default), bf16 or tiles: what the native backend multiplies --dtype
                    bf16 weights with; bf16 rounds a product's inputs to bf16 for the CPU's bf16
                    dot products (AVX-512 BF16 only): a faster one-token step, slower verify
                    blocks; tiles rounds them for the CPU's AMX tiles (Intel CPUs with
                    amx_bf16, Linux): a faster step, and blocks of up to 16 tokens at its cost
  --draft-weights   the form an eagle draft's products run in: auto (default: native-int8 on
                    x86-64 CPUs with AVX2, else libtorch's int8 or f32), f32 or int8 (libtorch),
                    native-f32, native-bf16 or native-int8 (the crate's own CPU kernels); the
                    output is the same in each
  --draft-confidence  an eagle draft proposes a guess only while the product of its
                    probabilities along it is at least P (0 <= P < 1; default 0: every guess up
                    to k); below P at the first guess, the step is a plain one
  --draft-tree-width  children per node of the trees an eagle draft grows under --tree
                    dynamic:NODES (default 4; wider accepts a little more at large budgets, for
                    a draft that costs more: for machines where a wide call is cheap)
  --compare-greedy  also decode greedily (under --temperature: plain sampling, one token per
                    model call), report identical and speedup
  --json            one JSON object per prompt on stdout";

/// The command line as clap reads it: every flag of [`USAGE`], with the conflicts that cannot
/// apply together refused by clap before anything runs.
#[derive(Debug, Parser)]
#[command(name = "decode", override_help = USAGE, disable_version_flag = true)]
struct Cli {
    #[arg(long, default_value = "embedded")]
    model: String,
    #[arg(long)]
    prompt: Vec<String>,
    #[arg(long)]
    prompt_file: Vec<PathBuf>,
    #[arg(long)]
    chat: bool,
    #[arg(long)]
    proposer: Option<String>,
    #[arg(long)]
    heads: Option<String>,
    #[arg(long, default_value_t = 4)]
    k: usize,
    #[arg(long, conflicts_with = "policy")]
    adaptive: bool,
    #[arg(long)]
    policy: Option<String>,
    #[arg(long)]
    accept: Option<String>,
    #[arg(long)]
    min_block: Option<usize>,
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f64>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    #[arg(long)]
    max_context: Option<usize>,
    #[arg(long, value_parser = ["cached", "recompute"])]
    verifier: Option<String>,
    #[arg(long)]
    prefill_chunk: Option<usize>,
    #[arg(long)]
    tie_guard: Option<f64>,
    /// With `--tree` too: trees verified `batch` rows at a time (both apply).
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    tree: Option<String>,
    #[arg(long)]
    speculate_up_to: Option<usize>,
    #[arg(long, default_value = "f32")]
    dtype: String,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "auto")]
    f32_matmul: String,
    #[arg(long, default_value = "auto")]
    backend: String,
    #[arg(long, default_value = "f32")]
    bf16_inputs: String,
    #[arg(long)]
    draft_weights: Option<String>,
    #[arg(long)]
    draft_confidence: Option<f64>,
    #[arg(long)]
    draft_tree_width: Option<usize>,
    #[arg(long)]
    compare_greedy: bool,
    #[arg(long)]
    json: bool,
}

/// Parsed arguments.
#[derive(Debug)]
pub struct Args {
    pub model: String,
    pub heads: HeadsChoice,
    pub prompts: Vec<String>,
    pub proposer: ProposerConfig,
    pub k: usize,
    pub accept: AcceptanceConfig,
    pub min_block: Option<usize>,
    pub max_new_tokens: usize,
    pub max_context: Option<usize>,
    pub verifier: VerifierConfig,
    pub policy: PolicyConfig,
    pub prefill_chunk: Option<usize>,
    pub tie_guard: Option<f64>,
    pub dtype: DType,
    pub device: Device,
    pub f32_matmul: F32Matmul,
    pub backend: Backend,
    pub bf16_inputs: Bf16Inputs,
    pub chat: bool,
    pub compare_greedy: bool,
    pub json: bool,
    pub sampling: Option<SamplingConfig>,
    pub batch: Option<usize>,
    pub tree: Option<TreeConfig>,
    pub speculate_up_to: Option<usize>,
}

/// `--proposer` with `--draft-weights`, `--draft-confidence` and `--draft-tree-width` applied
/// to its eagle drafts (refused without one, or when the proposer already names the weights or
/// the confidence).
fn proposer(
    spec: Option<&str>,
    model: &str,
    tree: Option<&TreeConfig>,
    weights: Option<&str>,
    confidence: Option<f64>,
    tree_width: Option<usize>,
) -> Result<ProposerConfig> {
    let mut config: ProposerConfig = match spec {
        Some(spec) => spec.parse()?,
        // A tree shape branches on the heads' candidates.
        None if matches!(tree, Some(TreeConfig::Shape(_))) => ProposerConfig::Heads,
        None => ProposerConfig::Auto,
    };
    // `auto` is the model's draft with lookup where one is shipped for it: made concrete here,
    // so that the draft flags apply to it.
    config = config.with_draft_for(model)?;
    let named = eagles(&config);
    for (flag, given) in [
        ("draft-weights", weights.is_some()),
        ("draft-confidence", confidence.is_some()),
        ("draft-tree-width", tree_width.is_some()),
    ] {
        if given && named.is_empty() {
            return Err(bad(
                flag,
                match config {
                    ProposerConfig::Auto => format!(
                        "sets an eagle draft's setting; no draft is shipped for {model}, so the \
                         default proposer (auto) has none"
                    ),
                    _ => format!(
                        "sets an eagle draft's setting; --proposer {config} has no eagle draft"
                    ),
                },
            ));
        }
    }
    if let Some(weights) = weights {
        let weights: DraftWeights = weights.parse()?;
        if named.iter().any(|(w, _)| *w != DraftWeights::Auto) {
            return Err(bad(
                "draft-weights",
                "and an `@` form in --proposer both name the draft's weights; give one",
            ));
        }
        config = config.with_draft_weights(weights);
    }
    if let Some(p) = confidence {
        if named.iter().any(|(_, c)| *c != 0.0) {
            return Err(bad(
                "draft-confidence",
                "and a `~` confidence in --proposer both name the draft's minimum; give one",
            ));
        }
        if !(0.0..1.0).contains(&p) {
            return Err(bad(
                "draft-confidence",
                format!("must be at least 0 and below 1, got {p}"),
            ));
        }
        config = config.with_draft_min_confidence(p);
    }
    if let Some(w) = tree_width {
        if w == 0 {
            return Err(bad("draft-tree-width", "must be at least 1"));
        }
        config = config.with_draft_tree_width(w);
    }
    Ok(config)
}

/// The weights and minimum confidence of every eagle draft in `config`.
fn eagles(config: &ProposerConfig) -> Vec<(DraftWeights, f64)> {
    match config {
        ProposerConfig::Eagle {
            weights,
            min_confidence,
            ..
        } => vec![(*weights, *min_confidence)],
        ProposerConfig::Chain(members) => members.iter().flat_map(eagles).collect(),
        _ => Vec::new(),
    }
}

fn bad(flag: &'static str, problem: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field: flag,
        problem: problem.into(),
    }
}

/// Reads a prompt file: one prompt per line, `\n` inside a line meaning a newline.
pub fn read_prompt_file(path: &PathBuf) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        action: "reading",
        path: path.clone(),
        source,
    })?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.replace("\\n", "\n"))
        .collect())
}

/// What parsing the command line gave: arguments to run with, or clap's own message (help, or
/// a flag it refused) to print as it is.
pub enum Parsed {
    Run(Box<Args>),
    Clap(clap::Error),
}

impl Args {
    /// Reads the command line (without the program name).
    pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Parsed> {
        let argv = std::iter::once("decode".to_string()).chain(argv);
        match Cli::try_parse_from(argv) {
            Ok(cli) => Ok(Parsed::Run(Box::new(Args::from_cli(cli)?))),
            Err(e) => Ok(Parsed::Clap(e)),
        }
    }

    fn from_cli(cli: Cli) -> Result<Args> {
        let mut prompts = cli.prompt;
        for f in &cli.prompt_file {
            prompts.extend(read_prompt_file(f)?);
        }
        if prompts.is_empty() {
            prompts.push("The quick brown fox".into());
        }
        let device = blockwise::cuda::parse_device(&cli.device)?;
        if cli.batch == Some(0) {
            return Err(bad("--batch", "must be at least 1"));
        }
        let accept: AcceptanceConfig = match &cli.accept {
            Some(a) => a.parse()?,
            None => AcceptanceConfig::Exact,
        };
        let temperature = cli.temperature.unwrap_or(0.0);
        let sampling = if temperature != 0.0 {
            let sampling = SamplingConfig {
                temperature,
                top_k: cli.top_k,
                top_p: cli.top_p,
                seed: cli.seed,
            };
            sampling.check()?;
            Some(sampling)
        } else if cli.top_k.is_some() || cli.top_p.is_some() || cli.seed.is_some() {
            return Err(bad(
                "--temperature",
                "--top-k, --top-p and --seed sample, which needs a temperature above 0",
            ));
        } else {
            None
        };
        if sampling.is_none() && matches!(accept, AcceptanceConfig::Typical { .. }) {
            return Err(bad(
                "--accept",
                "typical acceptance applies under sampling; add --temperature, or drop --accept \
                 (greedy decoding is exact)",
            ));
        }
        let tree: Option<TreeConfig> = cli.tree.as_deref().map(str::parse).transpose()?;
        let args = Args {
            heads: match cli.heads.as_deref() {
                None => HeadsChoice::Auto,
                Some("none") => HeadsChoice::None,
                Some(dir) => HeadsChoice::Dir(PathBuf::from(dir)),
            },
            prompts,
            proposer: proposer(
                cli.proposer.as_deref(),
                &cli.model,
                tree.as_ref(),
                cli.draft_weights.as_deref(),
                cli.draft_confidence,
                cli.draft_tree_width,
            )?,
            k: cli.k,
            accept,
            min_block: cli.min_block,
            max_new_tokens: cli.max_new_tokens,
            verifier: match cli.verifier.as_deref() {
                Some("recompute") => VerifierConfig::Recompute,
                _ => VerifierConfig::Cached,
            },
            policy: match (&cli.policy, cli.adaptive) {
                (_, true) => PolicyConfig::CostAware { per_token: None },
                (Some(p), false) => p.parse()?,
                (None, false) => PolicyConfig::Fixed,
            },
            prefill_chunk: cli.prefill_chunk,
            max_context: cli.max_context,
            tie_guard: cli.tie_guard,
            dtype: cli.dtype.parse()?,
            device,
            f32_matmul: F32Matmul::parse(&cli.f32_matmul)?,
            backend: Backend::parse(&cli.backend)?,
            bf16_inputs: Bf16Inputs::parse(&cli.bf16_inputs)?,
            chat: cli.chat,
            compare_greedy: cli.compare_greedy,
            json: cli.json,
            sampling,
            batch: cli.batch,
            tree,
            speculate_up_to: cli.speculate_up_to,
            model: cli.model,
        };
        if args.speculate_up_to.is_some() && args.batch.is_none() && args.tree.is_none() {
            return Err(bad(
                "speculate-up-to",
                "limits proposals by the rows busy in a batch; add --batch N (or --tree)",
            ));
        }
        if cli.draft_tree_width.is_some() && !matches!(args.tree, Some(TreeConfig::Dynamic(_))) {
            return Err(bad(
                "draft-tree-width",
                "shapes the trees an eagle draft grows; add --tree dynamic:NODES",
            ));
        }
        if args.batch.is_some() || args.tree.is_some() {
            args.check_batched()?;
        }
        Ok(args)
    }

    /// What batched and tree decoding do not combine with (yet), as errors.
    fn check_batched(&self) -> Result<()> {
        let flag = if self.tree.is_some() {
            "--tree"
        } else {
            "--batch"
        };
        if self.sampling.is_some() {
            return Err(bad(flag, "decodes greedily; drop --temperature"));
        }
        if self.policy != PolicyConfig::Fixed {
            return Err(bad(
                flag,
                "uses fixed block sizes; drop --adaptive / --policy",
            ));
        }
        if self.tie_guard.is_some() {
            return Err(bad(flag, "has no tie guard; drop --tie-guard"));
        }
        if self.verifier != VerifierConfig::Cached {
            return Err(bad(
                flag,
                "verifies against the model's cache; drop --verifier",
            ));
        }
        if matches!(self.tree, Some(TreeConfig::Dynamic(_)))
            && (self.accept != AcceptanceConfig::Exact || self.min_block.is_some())
        {
            return Err(bad(
                "--tree",
                "dynamic trees are verified exactly; drop --accept and --min-block",
            ));
        }
        if matches!(self.tree, Some(TreeConfig::Shape(_)))
            && (self.proposer != ProposerConfig::Heads
                || self.accept != AcceptanceConfig::Exact
                || self.min_block.is_some())
        {
            return Err(bad(
                "--tree",
                "branches on the heads' candidates and verifies exactly; drop --proposer, \
                 --accept and --min-block",
            ));
        }
        Ok(())
    }
}
