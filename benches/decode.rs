//! Greedy vs blockwise decoding on the embedded model, 64 new tokens, CPU float32.
//!
//! `make bench` (or `cargo bench --bench decode`). The ratio of the `greedy` time to a
//! `blockwise-kN` time is the wall-clock speedup at block size N.

use blockwise::tokenizer::{ByteTokenizer, TextTokenizer};
use blockwise::{
    Blockwise, BlockwiseDecoder, DecodeConfig, GreedyDecoder, HeadsProposer, Transformer,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn decode(c: &mut Criterion) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/embedded");
    let mut model = Transformer::load(dir, tch::Device::Cpu).expect("embedded model");
    let prompt = ByteTokenizer
        .encode("In the beginning God created the heaven and the earth.")
        .unwrap();
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
