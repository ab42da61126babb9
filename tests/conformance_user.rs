//! What a user does: implement `CausalLm` for their own model, then property-test that
//! blockwise decoding of it equals greedy decoding (docs/testing-your-model.md shows this).

use blockwise::proposer::{from_fn, ProposalContext};
use blockwise::testing::{invariants, Conformance, OracleProposer, RandomProposer};
use blockwise::{
    CausalLm, HeadsProposer, ModelInfo, ModelOutput, Result, Transformer, TransformerConfig,
};
use tch::{Device, Kind, Tensor};

/// A user's model: a bigram table in plain tch. Each row scores the token after a token.
struct Bigram {
    table: Tensor,
    info: ModelInfo,
    len: usize,
    /// A deliberate bug for the failing twin: blocks of more than one token see a shifted table.
    bug: bool,
    /// Another: the cache length ignores `start` (appends instead of replacing).
    ignore_start: bool,
    /// Another: after this many calls in its lifetime the model returns NaN (state that
    /// outlives a decode).
    wear_out_after: Option<usize>,
    /// Another: panics on a block of more than two tokens.
    panic_on_blocks: bool,
    calls: usize,
}

impl Bigram {
    fn new(vocab: i64, seed: u64, bug: bool) -> Self {
        let mut rng = blockwise::rng::SeededRng::new(seed);
        let values: Vec<f64> = (0..vocab * vocab).map(|_| rng.normal()).collect();
        let table = Tensor::from_slice(&values).view([vocab, vocab]);
        let mut info = ModelInfo::new(vocab, 64);
        info.kind = Kind::Double; // the table is float64: the suite's tolerance follows
        Bigram {
            table,
            info,
            len: 0,
            bug,
            ignore_start: false,
            wear_out_after: None,
            panic_on_blocks: false,
            calls: 0,
        }
    }
}

impl CausalLm for Bigram {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn forward(&mut self, tokens: &Tensor, start: usize) -> Result<ModelOutput> {
        let t = tokens.size()[1] as usize;
        assert!(
            !(self.panic_on_blocks && t > 2),
            "my model cannot take {t} tokens"
        );
        let mut logits = self
            .table
            .f_index_select(0, &tokens.f_flatten(0, -1)?)?
            .f_unsqueeze(0)?;
        if self.bug && t > 1 {
            logits = logits.f_roll([1], [2])?;
        }
        self.calls += 1;
        if self.wear_out_after.is_some_and(|n| self.calls > n) {
            logits = logits.f_full_like(f64::NAN)?;
        }
        self.len = if self.ignore_start {
            (self.len + t).min(self.info.max_context)
        } else {
            start + t
        };
        Ok(ModelOutput::logits(logits))
    }
    fn cached_len(&self) -> usize {
        self.len
    }
    fn truncate(&mut self, len: usize) -> Result<()> {
        self.len = self.len.min(len);
        Ok(())
    }
}

#[test]
fn my_model_and_my_proposer_match_greedy() {
    let mut model = Bigram::new(24, 1, false);
    let repeat_next = |_seed| -> Box<dyn blockwise::Proposer> {
        Box::new(from_fn(|ctx: &ProposalContext<'_>| {
            vec![ctx.next; ctx.max_tokens]
        }))
    };
    Conformance::new()
        .cases(128)
        .run(&mut model, repeat_next)
        .unwrap();
    Conformance::new()
        .cases(128)
        .with_recompute(true)
        .run(&mut model, |seed| Box::new(RandomProposer::new(24, seed)))
        .unwrap();
}

#[test]
fn a_block_that_scores_differently_from_single_steps_is_caught() {
    let mut model = Bigram::new(24, 1, true);
    // An oracle built from the (correct) greedy run would be accepted wholesale by a correct
    // model; here the buggy block scores make blockwise diverge, and the suite must say so.
    let failure = Conformance::new()
        .cases(128)
        .run(&mut model, |seed| Box::new(RandomProposer::new(24, seed)))
        .unwrap_err();
    assert!(
        failure.detail.contains("smallest failing case"),
        "{failure}"
    );
    // The failure names the invariant that broke, to match on, and carries its smallest case,
    // which fails again when checked alone (and passes on the fixed model).
    assert!(
        [invariants::SAME_OUTPUT, invariants::CACHE].contains(&failure.invariant),
        "{failure}"
    );
    let case = failure.case.clone().expect("the smallest failing case");
    let suite = Conformance::new();
    let proposer =
        |seed| -> Box<dyn blockwise::Proposer> { Box::new(RandomProposer::new(24, seed)) };
    let again = suite.check_case(&mut model, &case, proposer).unwrap_err();
    assert_eq!(again.invariant, failure.invariant, "{again}");
    suite
        .check_case(&mut Bigram::new(24, 1, false), &case, proposer)
        .unwrap();
}

/// Broken promises the outputs alone would hide or misreport are named as such: logits of
/// another kind than `info().kind` (a float64 model left at `ModelInfo::new`'s float32 would get
/// the float32 tolerance), and a cache length that ignores `start`.
#[test]
fn contract_breaches_are_named_as_such() {
    let random = |seed| -> Box<dyn blockwise::Proposer> { Box::new(RandomProposer::new(24, seed)) };
    let mut wrong_kind = Bigram::new(24, 1, false);
    wrong_kind.info.kind = Kind::Float;
    let f = Conformance::new()
        .cases(16)
        .run(&mut wrong_kind, random)
        .unwrap_err();
    assert_eq!(f.invariant, invariants::CONTRACT, "{f}");
    assert!(f.detail.contains("info().kind"), "{f}");
    let mut appends = Bigram::new(24, 1, false);
    appends.ignore_start = true;
    let f = Conformance::new()
        .cases(16)
        .run(&mut appends, random)
        .unwrap_err();
    assert_eq!(f.invariant, invariants::CONTRACT, "{f}");
    assert!(f.detail.contains("cached_len()"), "{f}");
}

/// A model that carries state from one decode into the next fails late cases on one shared
/// model, with a symptom of that state; with a fresh model per case (`run_fresh`) each case
/// stands alone.
#[test]
fn run_fresh_gives_every_case_a_model_of_its_own() {
    let random = |seed| -> Box<dyn blockwise::Proposer> { Box::new(RandomProposer::new(24, seed)) };
    let worn = || {
        let mut m = Bigram::new(24, 1, false);
        m.wear_out_after = Some(150);
        m
    };
    let shared = Conformance::new().cases(64).run(&mut worn(), random);
    assert!(shared.is_err(), "one model for 64 cases should wear out");
    let made = std::cell::Cell::new(0usize);
    Conformance::new()
        .cases(64)
        .run_fresh(
            || {
                made.set(made.get() + 1);
                worn()
            },
            random,
        )
        .unwrap();
    assert!(made.get() > 64, "{} models for 64 cases", made.get());
}

/// A panicking model is reported as a failed decode naming the panic, and its panic is printed
/// once, not once per case and shrinking step.
#[test]
fn a_panicking_model_is_reported_and_printed_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let printed = Arc::new(AtomicUsize::new(0));
    let thread = std::thread::current().id();
    let default = std::panic::take_hook();
    {
        let printed = Arc::clone(&printed);
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().id() == thread {
                printed.fetch_add(1, Ordering::SeqCst);
            } else {
                default(info);
            }
        }));
    }
    let mut model = Bigram::new(24, 1, false);
    model.panic_on_blocks = true;
    let err = Conformance::new()
        .cases(64)
        .run(&mut model, |seed| Box::new(RandomProposer::new(24, seed)))
        .unwrap_err();
    let runs = printed.load(Ordering::SeqCst);
    // The suite's hook is gone again: a later panic reaches this test's hook.
    let _ = std::panic::catch_unwind(|| panic!("after the suite"));
    let after = printed.load(Ordering::SeqCst);
    drop(std::panic::take_hook());
    assert_eq!(err.invariant, invariants::DECODE, "{err}");
    assert!(
        err.detail
            .contains("the model panicked: my model cannot take"),
        "{err}"
    );
    assert!(
        err.detail.contains("only the first panic was printed"),
        "{err}"
    );
    assert_eq!(runs, 1, "the panic was printed {runs} times");
    assert_eq!(after, 2);
    // Shrinking went on past the first panic (each step printed nothing) to a small case: a
    // sequence of three tokens is the least that reaches a three-token forward.
    let case = err.case.expect("a case");
    assert!(
        case.prompt.len() + case.decode.max_new_tokens <= 4,
        "{case:?}"
    );
}

#[test]
fn lookahead_passes_on_a_users_model() {
    let mut model = Bigram::new(24, 3, false);
    Conformance::new()
        .cases(64)
        .run(&mut model, |seed| {
            let s = seed as usize;
            Box::new(
                blockwise::Lookahead::new(1 + s % 5, 2 + (s / 5) % 3, 1 + (s / 15) % 4).unwrap(),
            )
        })
        .unwrap();
}

#[test]
fn built_in_transformer_passes_with_heads_and_oracle() {
    let config = TransformerConfig::tiny(32, 7);
    let mut model = Transformer::new_seeded(config, 11, Device::Cpu).unwrap();
    Conformance::new()
        .cases(64)
        .with_recompute(true)
        .run(&mut model, |_| Box::new(HeadsProposer))
        .unwrap();
    // An oracle needs the truth; a proposer that lies everywhere still must not change output.
    Conformance::new()
        .cases(64)
        .run(&mut model, |seed| {
            Box::new(OracleProposer::new(Vec::new(), 32, 1.0, seed))
        })
        .unwrap();
}
