//! The official `openai` Python client (PyPI, installed into .venv by `make test`) against the
//! server on loopback, SmolLM2 with its chat template: completions and chat completions, plain
//! and streamed, equal to the library's greedy decoding; bad requests raise the client's own
//! error classes with the right status and field.

use std::path::PathBuf;
use std::process::Command;

mod common;

use blockwise::bundle::{BundleOptions, ModelBundle};
use blockwise::tokenizer::Message;
use blockwise::{BlockwiseDecoder, DecodeConfig, GreedyDecoder};
use common::Server;
use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn greedy(model: &str, text: &str, chat: bool, n: usize) -> String {
    let b = ModelBundle::load(model, &BundleOptions::default()).expect("model");
    let ids = if chat {
        let t = b.chat.as_ref().expect("chat template");
        let m = [Message {
            role: "user".into(),
            content: text.into(),
        }];
        b.tokenizer.encode(&t.render(&m, true).unwrap()).unwrap()
    } else {
        b.tokenizer.encode_prompt(text).unwrap()
    };
    let mut model = b.model;
    let out = GreedyDecoder::new(&mut *model)
        .decode(&ids, &DecodeConfig::new(n).with_eos(b.eos.clone()))
        .unwrap();
    b.tokenizer.decode(&out.tokens).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_gets_greedy_answers() {
    let model = PathBuf::from(ROOT).join("models/smollm2");
    assert!(
        model.join("metadata.json").exists(),
        "{} is missing: run `make smollm2` (make test does)",
        model.display()
    );
    let model = model.to_string_lossy().into_owned();
    let python = PathBuf::from(ROOT).join(".venv/bin/python");
    let server = Server::start(&model, "ngram", 4, 4, 8).await;
    let base = server.base.clone();
    let (prompt, question, n) = (
        "The three primary colours are",
        "Name a fruit that is red.",
        24,
    );
    let run = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            Command::new(python)
                .arg(PathBuf::from(ROOT).join("scripts/openai_client_check.py"))
                .args([&base, "smollm2", prompt, question, &n.to_string()])
                .output()
                .expect("python")
        }
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "the openai client failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got: Value = serde_json::from_slice(&run.stdout).expect("json");
    let completion = greedy(&model, prompt, false, n);
    let chat = greedy(&model, question, true, n);
    assert_eq!(got["models"][0], "smollm2");
    assert_eq!(got["completion"], completion.as_str());
    assert_eq!(got["completion_stream"], completion.as_str());
    assert_eq!(got["completion_usage"], n);
    assert_eq!(got["chat"], chat.as_str());
    assert_eq!(got["chat_stream"], chat.as_str());
    assert_eq!(got["bad_request"]["status"], 400);
    assert_eq!(got["bad_request"]["param"], "top_p");
    assert_eq!(got["not_found"]["status"], 404);
    server.shutdown().await;
}
