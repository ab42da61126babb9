//! `blockwise-server`: the OpenAI-compatible server on the command line.
//!
//! ```text
//! cargo run --release -p blockwise-server -- --model models/smollm2 --addr 127.0.0.1:8080
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use blockwise::bundle::{Backend, BundleOptions, HeadsChoice, ModelBundle};
use blockwise::config::{BlockwiseConfig, ProposerConfig};
use blockwise::decoder::TreeConfig;
use blockwise::native::Bf16Inputs;
use blockwise::policy::PolicyConfig;
use blockwise::torchscript::F32Matmul;
use blockwise::DType;
use blockwise_server::worker::WorkerConfig;
use blockwise_server::{serve, spawn_worker, ServerOptions};
use clap::Parser;

/// An OpenAI-compatible HTTP server on blockwise decoding.
#[derive(Parser, Debug)]
#[command(name = "blockwise-server", version)]
struct Cli {
    /// `embedded` (the model shipped with the crate), or a folder exported by
    /// scripts/export_hf.py (e.g. models/smollm2).
    #[arg(long, default_value = "embedded")]
    model: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Where proposals come from: auto, heads, ngram[:MIN:MAX], corpus[:PATH[:MIN:MAX]],
    /// lookahead[:W:N:G], draft:DIR, eagle[:DIR], none, chain:A,B (as `decode --proposer`).
    /// Default auto: chain:ngram:3:3,eagle where a draft is shipped for the model, else its
    /// heads, else ngram (heads with a --tree shape).
    #[arg(long)]
    proposer: Option<String>,
    /// Block size: at most k - 1 proposals per block.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// Verify a tree per greedy request instead of a chain: SHAPE = widths per depth over the
    /// heads' candidates (3,2,1, with --proposer heads), or dynamic:NODES = trees the proposer
    /// grows by its own confidence (eagle), at most NODES nodes and k - 1 deep. Sampled
    /// requests decode chains.
    #[arg(long)]
    tree: Option<String>,
    /// Children per node of the trees an eagle draft grows under --tree dynamic:NODES
    /// (default 4).
    #[arg(long)]
    draft_tree_width: Option<usize>,
    /// Size each block by recent acceptance and measured costs (decodes one request at a time:
    /// needs --max-batch 1).
    #[arg(long)]
    adaptive: bool,
    /// f32, bf16, f16 or int8 (an export's weight forms).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// cpu, cuda or cuda:N (with a CUDA build of libtorch and a GPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// auto (oneDNN on AMD CPUs, else libtorch's BLAS), blas or onednn: the CPU library of an
    /// f32 export's matrix products.
    #[arg(long, default_value = "auto")]
    f32_matmul: String,
    /// auto (native where it can compute the export with the other flags, else torchscript),
    /// torchscript (the exported module, any device) or native (the crate's own CPU kernels:
    /// Llama-shaped exports, f32, bf16 or int8 weights).
    #[arg(long, default_value = "auto")]
    backend: String,
    /// f32, bf16 or tiles: what the native backend multiplies bf16 weights with (bf16: the
    /// CPU's bf16 dot products, AVX-512 BF16 only; a faster one-token step, slower verify
    /// blocks; tiles: its AMX tiles, amx_bf16 on Linux; blocks of up to 16 rows at a step's
    /// cost).
    #[arg(long, default_value = "f32")]
    bf16_inputs: String,
    /// Proposal heads folder, or `none` (default: the export's own, or those shipped for it).
    #[arg(long)]
    heads: Option<String>,
    /// Context to allocate (default: the model's, at most 2048).
    #[arg(long)]
    max_context: Option<usize>,
    /// Requests decoded together in one batch (1: one at a time).
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Requests that may wait for a row; beyond that, 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// `max_tokens` of a request that names none.
    #[arg(long, default_value_t = 256)]
    default_max_tokens: usize,
    /// Read prompts in chunks of this many tokens, so a long one joining a batch does not
    /// stall the others.
    #[arg(long, default_value_t = 128)]
    prefill_chunk: usize,
    /// Requests wait for the next batch instead of joining a running one in a freed row (to
    /// measure what joining is worth; off by default).
    #[arg(long)]
    no_join: bool,
    /// Milliseconds an idle server waits, after the first greedy request arrives, for others
    /// to arrive before it opens a batch with all of them (0: opens at once).
    #[arg(long, default_value_t = 20)]
    batch_wait_ms: u64,
    /// Proposals only while at most this many requests are decoding in the batch; with more,
    /// every row takes plain greedy steps (on a CPU a call over many rows already costs what
    /// their tokens do). 0: never propose in a batch. Default: 2 on the CPU (measured: SmolLM2
    /// at 16 clients 195 tokens/s against 110 without it), no limit on a GPU.
    #[arg(long)]
    speculate_up_to: Option<usize>,
    /// The model name clients send (default: the model folder's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    body_limit: usize,
}

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("blockwise-server: {message}");
    std::process::exit(2);
}

/// `--speculate-up-to` on the CPU when none is given: the load test of docs/serving.md
/// ("Proposals under load") kept the draft's gain at one and two clients and lost 10% of greedy
/// batching's throughput at 16, against half without a limit.
const DEFAULT_CPU_SPECULATE_UP_TO: usize = 2;

fn main() {
    let cli = Cli::parse();
    if cli.adaptive && cli.max_batch != 1 {
        fail("--adaptive sizes blocks per sequence, which a batch cannot; add --max-batch 1");
    }
    if cli.max_batch == 0 || cli.k == 0 || cli.prefill_chunk == 0 {
        fail("--max-batch, --k and --prefill-chunk must be at least 1");
    }
    let tree: Option<TreeConfig> = cli
        .tree
        .as_deref()
        .map(|t| t.parse().unwrap_or_else(|e| fail(e)));
    let proposer: ProposerConfig = match cli.proposer.as_deref() {
        Some(p) => p.parse().unwrap_or_else(|e| fail(e)),
        // A tree shape branches on the heads' candidates.
        None if matches!(tree, Some(TreeConfig::Shape(_))) => ProposerConfig::Heads,
        None => ProposerConfig::Auto,
    };
    // `auto` is the model's draft with lookup where one is shipped for it: made concrete here,
    // so that --draft-tree-width applies to it.
    let proposer = proposer
        .with_draft_for(&cli.model)
        .unwrap_or_else(|e| fail(e));
    let dtype: DType = cli.dtype.parse().unwrap_or_else(|e| fail(e));
    let device = blockwise::cuda::parse_device(&cli.device).unwrap_or_else(|e| fail(e));
    let heads = match cli.heads.as_deref() {
        None => HeadsChoice::Auto,
        Some("none") => HeadsChoice::None,
        Some(dir) => HeadsChoice::Dir(PathBuf::from(dir)),
    };
    let options = BundleOptions {
        dtype,
        device,
        max_context: cli.max_context,
        heads,
        f32_matmul: F32Matmul::parse(&cli.f32_matmul).unwrap_or_else(|e| fail(e)),
        backend: Backend::parse(&cli.backend).unwrap_or_else(|e| fail(e)),
        bf16_inputs: Bf16Inputs::parse(&cli.bf16_inputs).unwrap_or_else(|e| fail(e)),
    };
    let model_name = cli.served_model_name.clone().unwrap_or_else(|| {
        PathBuf::from(&cli.model)
            .file_name()
            .map_or(cli.model.clone(), |n| n.to_string_lossy().into_owned())
    });
    let mut decoder = BlockwiseConfig::heads(cli.k);
    decoder.proposer = proposer;
    if cli.adaptive {
        decoder.policy = PolicyConfig::CostAware { per_token: None };
    }
    if cli.draft_tree_width.is_some() && cli.tree.is_none() {
        fail("--draft-tree-width shapes the trees an eagle draft grows; add --tree dynamic:NODES");
    }
    if let Some(tree) = tree {
        if cli.adaptive {
            fail("--tree verifies fixed-size trees; drop --adaptive");
        }
        decoder.tree = Some(tree);
        if let Some(w) = cli.draft_tree_width {
            if !matches!(decoder.tree, Some(TreeConfig::Dynamic(_)))
                || !decoder.proposer.reads_embeddings()
                || w == 0
            {
                fail("--draft-tree-width needs an eagle draft in --proposer, --tree dynamic:NODES, and a width of at least 1");
            }
            decoder.proposer = decoder.proposer.clone().with_draft_tree_width(w);
        }
        if let Some(TreeConfig::Shape(_)) = &decoder.tree {
            if decoder.proposer != ProposerConfig::Heads {
                fail("--tree SHAPE branches on the heads' candidates; drop --proposer or use --tree dynamic:NODES");
            }
        }
    }
    let config = WorkerConfig {
        decoder,
        max_batch: cli.max_batch,
        default_max_tokens: cli.default_max_tokens,
        prefill_chunk: cli.prefill_chunk,
        join_running: !cli.no_join,
        batch_wait: std::time::Duration::from_millis(cli.batch_wait_ms),
        speculate_up_to: cli
            .speculate_up_to
            .or((device == tch::Device::Cpu).then_some(DEFAULT_CPU_SPECULATE_UP_TO)),
    };
    let model = cli.model.clone();
    let proposer = config.decoder.proposer.clone();
    let shown_proposer = proposer.to_string();
    let shown_limit = match config.speculate_up_to {
        Some(rows) => format!("proposals while at most {rows} requests share it"),
        None => "proposals at every batch size".into(),
    };
    let worker = spawn_worker(
        move || {
            let mut bundle = ModelBundle::load(&model, &options)?;
            // A feature draft that reads inner layers needs the model to hand them over.
            let taps = proposer
                .with_shipped_draft(bundle.draft.as_deref())
                .feature_taps()?;
            bundle.model.set_feature_taps(&taps)?;
            Ok(bundle)
        },
        config,
    )
    .unwrap_or_else(|e| fail(e));
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| fail(e));
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cli.addr)
            .await
            .unwrap_or_else(|e| fail(format!("cannot listen on {}: {e}", cli.addr)));
        eprintln!(
            "blockwise-server: serving {model_name:?} on http://{} (proposer {}, k {}, batch {}, \
             {shown_limit})",
            cli.addr, shown_proposer, cli.k, cli.max_batch
        );
        let options = ServerOptions {
            model_name,
            queue: cli.queue,
            body_limit: cli.body_limit,
        };
        if let Err(e) = serve(listener, worker, options, shutdown_signal()).await {
            fail(e);
        }
        eprintln!("blockwise-server: stopped");
    });
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    eprintln!("blockwise-server: shutting down: finishing requests in flight");
}
