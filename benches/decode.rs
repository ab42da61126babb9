//! Greedy vs blockwise decoding on the embedded model, 64 new tokens, CPU float32 (the
//! trained King James model with its fine-tuned, distilled heads).
//!
//! `make bench` (or `cargo bench --bench decode`). The ratio of the `greedy` time to a
//! `blockwise-kN` time is the wall-clock speedup at block size N.

use blockwise::bundle::{BundleOptions, ModelBundle};
use blockwise::{Blockwise, BlockwiseDecoder, DecodeConfig, GreedyDecoder, HeadsProposer};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn decode(c: &mut Criterion) {
    let bundle = ModelBundle::load("embedded", &BundleOptions::default()).expect("embedded model");
    let prompt = bundle
        .tokenizer
        .encode("And the LORD spake unto Moses, saying")
        .unwrap();
    let mut model = bundle.model;
    let config = DecodeConfig::new(64);
    let mut group = c.benchmark_group("embedded-cpu-f32");
    group.sample_size(20);
    group.bench_function("greedy", |b| {
        b.iter(|| {
            GreedyDecoder::new(&mut model)
                .decode(&prompt, &config)
                .unwrap()
        })
    });
    for k in [1usize, 2, 4, 8] {
        group.bench_with_input(BenchmarkId::new("blockwise-k", k), &k, |b, &k| {
            b.iter(|| {
                Blockwise::builder(&mut model)
                    .block_size(k)
                    .proposer(HeadsProposer)
                    .build()
                    .unwrap()
                    .decode(&prompt, &config)
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
