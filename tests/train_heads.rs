//! The heads trainer: loss falls and the mean accepted block size grows, checkpoints resume to
//! exactly the same state, attached heads save and load, and bad settings are errors.

use blockwise::heads::{HeadArch, HeadsConfig, WithHeads};
use blockwise::train::{
    distill, mean_accepted_with_heads, train_heads, train_lm, HeadLoss, HeadsTrainConfig,
    LmTrainConfig, Validation,
};
use blockwise::{
    Blockwise, BlockwiseDecoder, CausalLm, DType, DecodeConfig, GreedyDecoder, HeadsProposer,
    Transformer, TransformerConfig,
};
use tch::{Device, Tensor};

fn tiny(heads: usize, arch: HeadArch, seed: u64) -> Transformer {
    let mut cfg = TransformerConfig::tiny(16, heads);
    cfg.dtype = DType::F32;
    cfg.head_arch = arch;
    cfg.max_context = 96;
    let model = Transformer::new_seeded(cfg, seed, Device::Cpu).unwrap();
    if heads > 0 {
        model.reset_heads(seed + 1).unwrap();
    }
    model
}

/// A tiny model whose base has learnt a cycle of five tokens, with fresh heads (which only
/// repeat the next-token prediction, so they accept little until trained).
fn cyclic(arch: HeadArch) -> Transformer {
    let mut cfg = TransformerConfig::tiny(16, 3);
    cfg.dtype = DType::F32;
    cfg.head_arch = arch;
    cfg.max_context = 96;
    let mut model = Transformer::new_for_training(cfg, 3, Device::Cpu).unwrap();
    let corpus: Vec<i64> = (0..600).map(|i| [1, 5, 2, 9, 4][i % 5]).collect();
    let lm = LmTrainConfig {
        steps: 60,
        batch_size: 8,
        seq_len: 16,
        ..LmTrainConfig::default()
    };
    train_lm(&mut model, &corpus, &lm, |_| {}).unwrap();
    model.reset_heads(4).unwrap();
    model
}

fn prompts(n: usize, seed: i64) -> Vec<Vec<i64>> {
    (0..n as i64)
        .map(|i| vec![(i * 7 + seed) % 16, (i * 3 + 1) % 16, (i + seed * 5) % 16])
        .collect()
}

/// The base model's own greedy continuations (sequence-level distillation data).
fn distilled(model: &mut Transformer, n: usize, seed: i64) -> Vec<Vec<i64>> {
    distill(
        &mut GreedyDecoder::new(model),
        &prompts(n, seed),
        &DecodeConfig::new(40),
        |_| {},
    )
    .unwrap()
}

fn config(steps: usize) -> HeadsTrainConfig {
    let mut c = HeadsTrainConfig {
        steps,
        batch_size: 8,
        seq_len: 48,
        log_every: 10,
        ..HeadsTrainConfig::default()
    };
    c.lr.peak = 1e-2;
    c.lr.warmup_steps = 5;
    c
}

fn weights(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<_> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn distilled_heads_learn_to_predict_the_base() {
    for arch in [HeadArch::Stern, HeadArch::Medusa] {
        let mut model = cyclic(arch);
        let data = distilled(&mut model, 40, 1);
        let validation = Validation {
            prompts: prompts(6, 9),
            block_size: 4,
            max_new_tokens: 30,
            eos: vec![],
        };
        let before = mean_accepted_with_heads(&mut model, &validation).unwrap();
        let report = train_heads(
            &mut model,
            &data,
            Some(&validation),
            &config(80),
            None,
            |_| {},
        )
        .unwrap();
        let after = report.mean_accepted.unwrap();
        let first = report.logs.first().unwrap().loss;
        assert!(
            report.final_loss < first * 0.5,
            "{arch}: loss {first:.3} -> {:.3}",
            report.final_loss
        );
        assert!(
            before < 2.0 && after > 3.0,
            "{arch}: mean accepted {before:.2} -> {after:.2}"
        );
        // Still exact: blockwise with the trained heads reproduces greedy.
        let prompt = vec![3, 1, 4];
        let cfg = DecodeConfig::new(30);
        let greedy = GreedyDecoder::new(&mut model)
            .decode(&prompt, &cfg)
            .unwrap();
        let fast = Blockwise::builder(&mut model)
            .block_size(4)
            .proposer(HeadsProposer)
            .build()
            .unwrap()
            .decode(&prompt, &cfg)
            .unwrap();
        assert_eq!(fast.tokens, greedy.tokens);
    }
}

#[test]
fn fine_tuning_trains_the_base_and_reports_its_loss() {
    let mut model = tiny(2, HeadArch::Stern, 5);
    let corpus: Vec<Vec<i64>> = vec![(0..400).map(|i| [1, 5, 2, 9, 4, 7][i % 6]).collect()];
    let base_before = weights(model.var_store())
        .into_iter()
        .find(|(n, _)| n == "ln_f.weight")
        .unwrap()
        .1
        .copy();
    let mut c = config(40);
    c.train_base = true;
    c.dropout = 0.1;
    let report = train_heads(&mut model, &corpus, None, &c, None, |_| {}).unwrap();
    let lm = report
        .logs
        .iter()
        .map(|l| l.lm_loss.unwrap())
        .collect::<Vec<_>>();
    assert!(lm.last().unwrap() < &(lm[0] * 0.5), "lm loss {lm:?}");
    assert!(report.final_loss < report.logs[0].loss * 0.5);
    let base_after = weights(model.var_store())
        .into_iter()
        .find(|(n, _)| n == "ln_f.weight")
        .unwrap()
        .1;
    assert!(!base_after.equal(&base_before), "the base did not move");
}

#[test]
fn a_resumed_run_ends_in_the_same_state() {
    let root = std::env::temp_dir().join(format!("bw-resume-{}", std::process::id()));
    let (dir_a, dir_b) = (root.join("a"), root.join("b"));
    let _ = std::fs::remove_dir_all(&root);
    let mut c = config(20);
    c.log_every = 5;
    c.checkpoint_every = 5;
    c.dropout = 0.2;
    c.head_loss = HeadLoss::Sampled;
    c.train_base = true;
    let corpus: Vec<Vec<i64>> = vec![(0..300).map(|i| (i * i % 13) as i64).collect()];

    // Run A: straight through; at step 10 a copy of its checkpoint is taken.
    let mut a = tiny(3, HeadArch::Medusa, 21);
    let report_a = train_heads(&mut a, &corpus, None, &c, Some(&dir_a), |l| {
        if l.step == 10 {
            copy_dir(&dir_a, &dir_b);
        }
    })
    .unwrap();
    assert_eq!(report_a.resumed_from, None);

    // Run B: a fresh model resumes from the step-10 checkpoint.
    let mut b = tiny(3, HeadArch::Medusa, 99);
    let report_b = train_heads(&mut b, &corpus, None, &c, Some(&dir_b), |_| {}).unwrap();
    assert_eq!(report_b.resumed_from, Some(10));
    for ((na, ta), (nb, tb)) in weights(a.var_store())
        .iter()
        .zip(weights(b.var_store()).iter())
    {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after resuming");
    }
    let losses =
        |r: &blockwise::train::HeadsReport| r.logs.iter().map(|l| l.loss).collect::<Vec<_>>();
    assert_eq!(losses(&report_a), losses(&report_b));

    // Other settings cannot resume that checkpoint.
    let mut other = c.clone();
    other.dropout = 0.3;
    assert!(train_heads(&mut b, &corpus, None, &other, Some(&dir_b), |_| {}).is_err());
    std::fs::remove_dir_all(&root).unwrap();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn attached_heads_train_save_load_and_stay_exact() {
    let mut cfg = TransformerConfig::tiny(16, 0);
    cfg.dtype = DType::F32;
    let base = Transformer::new_seeded(cfg.clone(), 4, Device::Cpu).unwrap();
    let heads = HeadsConfig {
        arch: HeadArch::Medusa,
        num_heads: 3,
        d_model: cfg.d_model,
        d_ff: 16,
        vocab_size: 16,
        base: None,
    };
    let shortlist: Vec<i64> = (0..12).collect();
    let mut model = WithHeads::new(base, heads, 3)
        .unwrap()
        .with_shortlist(&shortlist)
        .unwrap();
    assert_eq!(model.info().num_heads, 3);
    let data = distill(
        &mut GreedyDecoder::new(model.base_mut()),
        &prompts(30, 2),
        &DecodeConfig::new(40),
        |_| {},
    )
    .unwrap();
    let mut c = config(60);
    c.cache_hidden = true;
    let report = train_heads(&mut model, &data, None, &c, None, |_| {}).unwrap();
    assert!(report.final_loss < report.logs[0].loss);

    // Off the shortlist, head logits are -inf.
    let h = Tensor::randn([2, cfg.d_model], (tch::Kind::Float, Device::Cpu));
    let logits = model.head_logits(&h).unwrap().unwrap();
    assert_eq!(logits.size(), vec![2, 3, 16]);
    let off = f64::try_from(logits.narrow(2, 12, 4).max()).unwrap();
    assert_eq!(off, f64::NEG_INFINITY);

    // Save, load onto the same base, same head logits.
    let dir = std::env::temp_dir().join(format!("bw-heads-{}", std::process::id()));
    model.save(&dir).unwrap();
    let base2 = Transformer::new_seeded(cfg.clone(), 4, Device::Cpu).unwrap();
    let mut loaded = WithHeads::load(base2, &dir).unwrap();
    assert!(loaded.head_logits(&h).unwrap().unwrap().equal(&logits));

    // Exact decoding with attached heads reproduces greedy.
    let prompt = vec![2, 7, 1];
    let dc = DecodeConfig::new(30);
    let greedy = GreedyDecoder::new(&mut loaded)
        .decode(&prompt, &dc)
        .unwrap();
    let fast = Blockwise::builder(&mut loaded)
        .block_size(4)
        .proposer(HeadsProposer)
        .build()
        .unwrap()
        .decode(&prompt, &dc)
        .unwrap();
    assert_eq!(fast.tokens, greedy.tokens);

    // A base of another vocabulary is refused.
    let mut other = cfg.clone();
    other.vocab_size = 20;
    let wrong = Transformer::new_seeded(other, 4, Device::Cpu).unwrap();
    assert!(WithHeads::load(wrong, &dir).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_training_settings_are_errors() {
    let mut model = tiny(2, HeadArch::Stern, 1);
    let data = vec![(0..50).map(|i| i % 16).collect::<Vec<i64>>()];
    let mut bad = vec![];
    let mut c = config(5);
    c.dropout = 1.0;
    bad.push(c);
    let mut c = config(5);
    c.seq_len = 2;
    bad.push(c);
    let mut c = config(5);
    c.seq_len = 500;
    bad.push(c);
    let mut c = config(5);
    c.cache_hidden = true;
    c.train_base = true;
    bad.push(c);
    let mut c = config(5);
    c.steps = 0;
    bad.push(c);
    for c in &bad {
        assert!(
            train_heads(&mut model, &data, None, c, None, |_| {}).is_err(),
            "{c:?} was accepted"
        );
    }
    let oov = vec![vec![1, 2, 99, 3]];
    assert!(train_heads(&mut model, &oov, None, &config(5), None, |_| {}).is_err());
    let short = vec![vec![1, 2]];
    assert!(train_heads(&mut model, &short, None, &config(5), None, |_| {}).is_err());
    let too_long = Validation {
        prompts: vec![vec![1]],
        block_size: 5,
        max_new_tokens: 4,
        eos: vec![],
    };
    assert!(train_heads(&mut model, &data, Some(&too_long), &config(5), None, |_| {}).is_err());
    let no_heads = tiny(0, HeadArch::Stern, 1);
    assert!(no_heads.reset_heads(1).is_err());
    // Attached heads keep their base frozen.
    let mut cfg = TransformerConfig::tiny(16, 0);
    cfg.dtype = DType::F32;
    let base = Transformer::new_seeded(cfg.clone(), 4, Device::Cpu).unwrap();
    let hc = HeadsConfig {
        arch: HeadArch::Stern,
        num_heads: 2,
        d_model: cfg.d_model,
        d_ff: 8,
        vocab_size: 16,
        base: None,
    };
    let mut attached = WithHeads::new(base, hc.clone(), 1).unwrap();
    let mut c = config(5);
    c.train_base = true;
    assert!(train_heads(&mut attached, &data, None, &c, None, |_| {}).is_err());
    // Shortlists must be distinct ids of the vocabulary, and not empty.
    let fresh = || {
        let base = Transformer::new_seeded(cfg.clone(), 4, Device::Cpu).unwrap();
        WithHeads::new(base, hc.clone(), 1).unwrap()
    };
    assert!(fresh().with_shortlist(&[1, 1]).is_err());
    assert!(fresh().with_shortlist(&[16]).is_err());
    assert!(fresh().with_shortlist(&[]).is_err());
    // Heads of another width, or a folder without heads, are refused.
    let wide = HeadsConfig {
        d_model: cfg.d_model * 2,
        ..hc.clone()
    };
    let base = Transformer::new_seeded(cfg.clone(), 4, Device::Cpu).unwrap();
    assert!(WithHeads::new(base, wide, 1).is_err());
    let base = Transformer::new_seeded(cfg.clone(), 4, Device::Cpu).unwrap();
    assert!(WithHeads::load(base, "no/such/heads").is_err());
}

/// The heads trainer's hidden states are the decoder's: at every committed position `t` the
/// decoder's head outputs (what `HeadsProposer` proposes after the block's first token) are the
/// heads applied to the trainer's hidden state of the whole sequence at `t`, so the trainer's
/// target for head `h` at `t` (the token `h + 2` places after `t`, checked in the trainer's unit
/// tests) is exactly what that head is asked to guess when decoding.
#[test]
fn the_trainer_sees_the_hidden_states_the_decoder_reads() {
    use blockwise::train::HeadsTrainee;
    use std::cell::RefCell;
    use std::rc::Rc;

    struct Spy(Rc<RefCell<Vec<(usize, Vec<i64>)>>>);
    impl blockwise::Proposer for Spy {
        fn propose(&mut self, ctx: &blockwise::ProposalContext<'_>) -> blockwise::Result<Vec<i64>> {
            let heads = ctx.heads.expect("heads requested").to_vec();
            self.0
                .borrow_mut()
                .push((ctx.tokens.len() - 1, heads.clone()));
            Ok(heads)
        }
        fn needs_heads(&self) -> bool {
            true
        }
    }
    let mut model = tiny(3, HeadArch::Stern, 7);
    model.reset_heads(3).unwrap();
    let prompt = vec![2, 5, 1, 4];
    let seen = Rc::new(RefCell::new(Vec::new()));
    let out = Blockwise::builder(&mut model)
        .block_size(4)
        .proposer(Spy(seen.clone()))
        .build()
        .unwrap()
        .decode(&prompt, &DecodeConfig::new(30))
        .unwrap();
    let seq = [prompt.clone(), out.tokens].concat();
    let tokens = Tensor::from_slice(&seq).view([1, seq.len() as i64]);
    let hidden = model.hidden_states(&tokens, false).unwrap().squeeze_dim(0);
    let seen = seen.borrow();
    assert!(seen.len() > 3);
    for (t, heads) in seen.iter() {
        let logits = model
            .head_logits(&hidden.narrow(0, *t as i64, 1))
            .unwrap()
            .unwrap();
        let argmax: Vec<i64> = Vec::try_from(&logits.argmax(-1, false).flatten(0, -1)).unwrap();
        assert_eq!(&argmax, heads, "heads at committed position {t}");
    }
}

/// Heads trained on stored hidden states (the feature draft's teacher-forced data) learn the
/// base's greedy tokens as well as heads trained through the base, without running it.
#[test]
fn heads_learn_from_stored_states() {
    use blockwise::train::{train_heads_on_states, DraftData};
    for arch in [HeadArch::Stern, HeadArch::Medusa] {
        let mut model = cyclic(arch);
        let data = distilled(&mut model, 40, 1);
        let states = DraftData::teacher_forced(&mut model, &data, tch::Kind::Float).unwrap();
        let validation = Validation {
            prompts: prompts(6, 9),
            block_size: 4,
            max_new_tokens: 30,
            eos: vec![],
        };
        let before = mean_accepted_with_heads(&mut model, &validation).unwrap();
        let mut c = config(80);
        c.validate_every = 0;
        c.checkpoint_every = 0;
        let report = train_heads_on_states(&mut model, &states, &c, |_| {}).unwrap();
        let after = mean_accepted_with_heads(&mut model, &validation).unwrap();
        let first = report.logs.first().unwrap().loss;
        assert!(
            report.final_loss < first * 0.5,
            "{arch}: loss {first:.3} -> {:.3}",
            report.final_loss
        );
        assert!(
            before < 2.0 && after > 3.0,
            "{arch}: mean accepted {before:.2} -> {after:.2}"
        );
        // Fine-tuning is refused here.
        c.train_base = true;
        assert!(train_heads_on_states(&mut model, &states, &c, |_| {}).is_err());
    }
}
