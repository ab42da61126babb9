//! What corpus lookup costs, with no model: building the index of SmolLM2's shipped corpus
//! (assets/drafts/smollm2/corpus.safetensors) once, and proposing a chain of up to 4 guesses or
//! a 5-node tree after each of 64 contexts taken from across the corpus.
//!
//! `cargo bench --bench proposers`. Divide the `-64-contexts` figures by 64 for one proposal,
//! and set that against a model step (SmolLM2: 5-20 ms on 2 CPU cores).

use std::sync::Arc;

use blockwise::proposer::{CorpusIndex, CorpusLookup, SHIPPED_CORPUS_FILE};
use blockwise::{ProposalContext, Proposer};
use criterion::{criterion_group, criterion_main, Criterion};
use tch::Tensor;

fn corpus_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets/drafts/smollm2")
        .join(SHIPPED_CORPUS_FILE)
}

fn proposers(c: &mut Criterion) {
    let path = corpus_path();
    let tokens: Vec<i64> = Tensor::read_safetensors(&path)
        .expect("the shipped corpus")
        .into_iter()
        .find(|(n, _)| n == "tokens")
        .map(|(_, t)| Vec::try_from(&t.to_kind(tch::Kind::Int64)).unwrap())
        .expect("a tokens tensor");
    // 64 contexts of 96 tokens from across the corpus.
    let contexts: Vec<&[i64]> = (0..64)
        .map(|i| {
            let start = i * (tokens.len() - 100) / 64;
            &tokens[start..start + 96]
        })
        .collect();
    let mut group = c.benchmark_group("proposers");
    group.sample_size(20);
    group.bench_function("corpus-index-build", |b| {
        b.iter(|| CorpusIndex::load(&path, 1, 4).unwrap())
    });
    let index = Arc::new(CorpusIndex::load(&path, 1, 4).unwrap());
    let mut corpus = CorpusLookup::new(index);
    group.bench_function("corpus-chain-64-contexts", |b| {
        b.iter(|| {
            for ctx in &contexts {
                let (head, next) = ctx.split_at(ctx.len() - 1);
                corpus
                    .propose(&ProposalContext::new(head, next[0], 4))
                    .unwrap();
            }
        })
    });
    group.bench_function("corpus-tree5-64-contexts", |b| {
        b.iter(|| {
            for ctx in &contexts {
                let (head, next) = ctx.split_at(ctx.len() - 1);
                corpus
                    .propose_tree(&ProposalContext::new(head, next[0], 4), 5)
                    .unwrap();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, proposers);
criterion_main!(benches);
