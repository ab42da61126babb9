//! The training-free proposers through the same conformance suite users run on their own
//! models: n-gram lookup, a draft model, a fallback chain, on a built-in float64 model and on
//! the trained pair in `assets/pair`.

use blockwise::proposer::{Chain, CorpusIndex, CorpusLookup, DraftModel};
use blockwise::testing::{Conformance, RandomProposer};
use blockwise::{
    BlockwiseDecoder, DType, DecodeConfig, GreedyDecoder, NGram, Proposer, Transformer,
    TransformerConfig,
};
use tch::Device;

fn model(seed: u64) -> Transformer {
    let mut c = TransformerConfig::tiny(24, 0);
    c.max_context = 96;
    Transformer::new_seeded(c, seed, Device::Cpu).unwrap()
}

fn small_draft(seed: u64) -> DraftModel<Transformer> {
    let mut c = TransformerConfig::tiny(24, 0);
    c.n_layers = 1;
    c.d_model = 8;
    c.n_heads = 2;
    c.d_ff = 16;
    c.max_context = 96;
    DraftModel::new(Transformer::new_seeded(c, seed, Device::Cpu).unwrap(), 24).unwrap()
}

fn suite() -> Conformance {
    Conformance::new()
        .cases(64)
        .block_sizes(1..=8)
        .max_new_tokens(0..=24)
}

#[test]
fn ngram_passes_the_conformance_suite() {
    suite()
        .run(&mut model(1), |_| Box::new(NGram::new(1, 3).unwrap()))
        .unwrap();
}

#[test]
fn corpus_lookup_passes_the_conformance_suite() {
    // The corpus: the model's own greedy answers to other prompts, as a user would build it.
    let mut m = model(4);
    let mut answers = Vec::new();
    for start in 0..12i64 {
        let prompt = [start, (start * 7 + 3) % 24, (start * 5 + 1) % 24];
        let decode = DecodeConfig {
            max_new_tokens: 32,
            ..DecodeConfig::default()
        };
        let out = GreedyDecoder::new(&mut m).decode(&prompt, &decode).unwrap();
        answers.push([prompt.as_slice(), &out.tokens].concat());
    }
    let index = std::sync::Arc::new(CorpusIndex::new(&answers, 1, 4).unwrap());
    suite()
        .run(&mut m, |_| Box::new(CorpusLookup::new(index.clone())))
        .unwrap();
}

#[test]
fn draft_model_passes_the_conformance_suite() {
    suite()
        .run(&mut model(2), |seed| Box::new(small_draft(seed)))
        .unwrap();
}

#[test]
fn chain_passes_the_conformance_suite() {
    suite()
        .run(&mut model(3), |seed| {
            let members: Vec<Box<dyn Proposer>> = vec![
                Box::new(NGram::new(2, 3).unwrap()),
                Box::new(small_draft(seed)),
                Box::new(RandomProposer::new(24, seed)),
            ];
            Box::new(Chain::new(members))
        })
        .unwrap();
}

/// The shipped pair: the trained draft proposing for the trained target, in float64 so that no
/// near-tie can round differently in a block than in a single step.
#[test]
fn trained_pair_passes_the_conformance_suite() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/pair");
    let load = |name: &str| {
        let mut m = Transformer::load(format!("{dir}/{name}"), Device::Cpu)
            .unwrap_or_else(|e| panic!("assets/pair/{name} (make train-pair): {e}"));
        m.set_dtype(DType::F64).unwrap();
        m
    };
    let mut target = load("target");
    Conformance::new()
        .cases(16)
        .block_sizes(1..=6)
        .max_new_tokens(0..=32)
        .run(&mut target, |_| {
            Box::new(DraftModel::new(load("draft"), 257).unwrap())
        })
        .unwrap();
}
