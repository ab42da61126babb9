//! The server on a loopback port, as clients meet it: every endpoint's happy path (plain and
//! streamed answers equal to `GreedyDecoder`'s), every bad input a 4xx naming the field,
//! concurrent clients each getting exactly their own greedy output, a full queue, a client
//! that disconnects, and a graceful shutdown. The embedded model, plus SmolLM2's chat template.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use blockwise::bundle::{BundleOptions, ModelBundle};
use blockwise::config::BlockwiseConfig;
use blockwise::tokenizer::Message;
use blockwise::{BlockwiseDecoder, DecodeConfig, GreedyDecoder};
use common::{client, event_text, events, open_stream, post, Server};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// A streamed answer: its text (the deltas joined) and its last JSON event.
async fn stream(server: &Server, path: &str, body: Value) -> (String, Value) {
    let r = client()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let body = r.text().await.expect("stream");
    let data = events(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    let last = data.iter().rev().nth(1).expect("a final event");
    (
        event_text(&data),
        serde_json::from_str(last).expect("event json"),
    )
}

/// Greedy decoding of each prompt by the library, alone: the text the server must return.
fn greedy_texts(model: &str, prompts: &[(String, usize)], chat: bool) -> Vec<String> {
    let bundle = ModelBundle::load(model, &BundleOptions::default()).expect("model");
    let mut model = bundle.model;
    prompts
        .iter()
        .map(|(p, n)| {
            let ids = if chat {
                let template = bundle.chat.as_ref().expect("chat template");
                let text = template
                    .render(
                        &[Message {
                            role: "user".into(),
                            content: p.clone(),
                        }],
                        true,
                    )
                    .expect("render");
                bundle.tokenizer.encode(&text).expect("encode")
            } else {
                bundle.tokenizer.encode_prompt(p).expect("encode")
            };
            let config = DecodeConfig::new(*n).with_eos(bundle.eos.clone());
            let out = GreedyDecoder::new(&mut *model)
                .decode(&ids, &config)
                .expect("greedy");
            bundle.tokenizer.decode(&out.tokens).expect("decode")
        })
        .collect()
}

const PROMPTS: [&str; 6] = [
    "In the beginning",
    "And the LORD spake unto Moses, saying",
    "Blessed are they that mourn: for they",
    "And it came to pass, when the king heard",
    "The quick brown fox",
    "Thou shalt",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_with_greedy_output() {
    let server = Server::start("embedded", "heads", 4, 4, 16).await;
    let health: Value = client()
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let models: Value = client()
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "embedded");

    let want = greedy_texts("embedded", &[(PROMPTS[0].into(), 40)], false).remove(0);
    let body = json!({"model": "embedded", "prompt": PROMPTS[0], "max_tokens": 40});
    let (status, plain) = post(&server, "/v1/completions", body.clone()).await;
    assert_eq!(status, 200, "{plain}");
    assert_eq!(plain["object"], "text_completion");
    assert_eq!(plain["choices"][0]["text"], want.as_str());
    assert_eq!(plain["choices"][0]["finish_reason"], "length");
    assert_eq!(plain["usage"]["completion_tokens"], 40);
    assert!(
        plain["blockwise"]["mean_accepted"].as_f64().unwrap() > 1.0,
        "{plain}"
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (text, last) = stream(&server, "/v1/completions", streamed).await;
    assert_eq!(text, want);
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["usage"]["completion_tokens"], 40);
    assert!(last["blockwise"]["model_calls"].as_u64().unwrap() < 40);

    // A stop string ends the answer before it, in both forms.
    let cut = want.len() / 2;
    let stop = want[cut..].split_whitespace().next().unwrap().to_string();
    let before = &want[..want.find(&stop).unwrap()];
    let mut stopped = body.clone();
    stopped["stop"] = json!([stop]);
    let (_, plain) = post(&server, "/v1/completions", stopped.clone()).await;
    assert_eq!(plain["choices"][0]["text"], before);
    assert_eq!(plain["choices"][0]["finish_reason"], "stop");
    stopped["stream"] = json!(true);
    let (text, last) = stream(&server, "/v1/completions", stopped).await;
    assert_eq!(text, before);
    assert_eq!(last["choices"][0]["finish_reason"], "stop");

    // Sampling is served too, reproducibly under a seed.
    let sampled = json!({"model": "embedded", "prompt": PROMPTS[1], "max_tokens": 24,
                         "temperature": 0.9, "top_p": 0.95, "seed": 7});
    let (s1, a) = post(&server, "/v1/completions", sampled.clone()).await;
    let (s2, b) = post(&server, "/v1/completions", sampled).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx_naming_the_field() {
    let server = Server::start("embedded", "ngram", 4, 2, 4).await;
    let ok = json!({"model": "embedded", "prompt": "In the beginning", "max_tokens": 4});
    let with = |field: &str, value: Value| {
        let mut b = ok.clone();
        b[field] = value;
        b
    };
    let long = "And the LORD spake unto Moses, saying ".repeat(60);
    let cases: Vec<(&str, Value, u16, Option<&str>)> = vec![
        (
            "unknown field",
            with("frobnicate", json!(1)),
            400,
            Some("frobnicate"),
        ),
        (
            "empty prompt",
            with("prompt", json!("")),
            400,
            Some("prompt"),
        ),
        (
            "prompt too long",
            with("prompt", json!(long)),
            400,
            Some("prompt"),
        ),
        (
            "max_tokens 0",
            with("max_tokens", json!(0)),
            400,
            Some("max_tokens"),
        ),
        (
            "max_tokens huge",
            with("max_tokens", json!(1_000_000_000u64)),
            400,
            Some("max_tokens"),
        ),
        (
            "max_tokens negative",
            with("max_tokens", json!(-3)),
            400,
            Some("max_tokens"),
        ),
        (
            "temperature < 0",
            with("temperature", json!(-0.5)),
            400,
            Some("temperature"),
        ),
        (
            "temperature not a number",
            with("temperature", json!("hot")),
            400,
            Some("temperature"),
        ),
        ("top_p 0", with("top_p", json!(0.0)), 400, Some("top_p")),
        (
            "top_p above 1",
            with("top_p", json!(1.5)),
            400,
            Some("top_p"),
        ),
        ("n 2", with("n", json!(2)), 400, Some("n")),
        (
            "five stop strings",
            with("stop", json!(["a", "b", "c", "d", "e"])),
            400,
            Some("stop"),
        ),
        (
            "unknown model",
            with("model", json!("gpt-4")),
            404,
            Some("model"),
        ),
        ("missing prompt", json!({"model": "embedded"}), 400, None),
    ];
    for (what, body, status, param) in cases {
        let (got, err) = post(&server, "/v1/completions", body).await;
        assert_eq!(got, status, "{what}: {err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
        assert!(
            !err["error"]["message"].as_str().unwrap().contains('\n'),
            "{what}: {err}"
        );
        if let Some(p) = param {
            assert_eq!(err["error"]["param"], p, "{what}: {err}");
        }
    }
    // Bodies that are not JSON, NaN included (JSON has no NaN), and one over the size limit.
    for (what, raw, status) in [
        (
            "malformed JSON",
            "{\"model\": \"embedded\", \"prompt\": ".to_string(),
            400,
        ),
        (
            "NaN temperature",
            r#"{"model":"embedded","prompt":"x","temperature":NaN}"#.into(),
            400,
        ),
        (
            "body too large",
            format!(
                r#"{{"model":"embedded","prompt":"{}"}}"#,
                "a".repeat(70_000)
            ),
            413,
        ),
    ] {
        let r = client()
            .post(server.url("/v1/completions"))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{what}");
        let err: Value = r.json().await.expect("a JSON error");
        assert!(err["error"]["message"].is_string(), "{what}");
    }
    // Chat: empty messages, a bad role, and a model without a chat template.
    for (what, messages, param) in [
        ("no messages", json!([]), "messages"),
        (
            "bad role",
            json!([{"role": "robot", "content": "hi"}]),
            "messages[0].role",
        ),
        (
            "no template",
            json!([{"role": "user", "content": "hi"}]),
            "messages",
        ),
    ] {
        let (got, err) = post(
            &server,
            "/v1/chat/completions",
            json!({"model": "embedded", "messages": messages}),
        )
        .await;
        assert_eq!(got, 400, "{what}: {err}");
        assert_eq!(err["error"]["param"], param, "{what}: {err}");
    }
    let r = client()
        .get(server.url("/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // After all that the worker still answers.
    let (status, _) = post(&server, "/v1/completions", ok).await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_exactly_their_own_greedy_outputs() {
    for proposer in ["heads", "ngram"] {
        // Three rows for twelve clients: requests join a running batch as rows free up.
        let server = Server::start("embedded", proposer, 4, 3, 32).await;
        let requests: Vec<(String, usize)> = (0..12)
            .map(|i| (PROMPTS[i % PROMPTS.len()].to_string(), 8 + 7 * i))
            .collect();
        let want = greedy_texts("embedded", &requests, false);
        let mut tasks = Vec::new();
        for (i, (prompt, n)) in requests.iter().enumerate() {
            let body = json!({"model": "embedded", "prompt": prompt, "max_tokens": n,
                              "stream": i % 2 == 0});
            let url = server.url("/v1/completions");
            tasks.push(tokio::spawn(async move {
                let r = client().post(url).json(&body).send().await.expect("send");
                assert_eq!(r.status().as_u16(), 200);
                let text = r.text().await.expect("body");
                if i % 2 == 0 {
                    event_text(&events(&text))
                } else {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    v["choices"][0]["text"].as_str().unwrap().to_string()
                }
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let got = task.await.expect("client");
            assert_eq!(got, want[i], "{proposer}: client {i} got another answer");
        }
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_a_429_with_retry_after() {
    // One row, no queue: while one answer streams, the next request is turned away.
    let server = Server::start("embedded", "none", 1, 1, 0).await;
    let mut body = Box::pin(
        open_stream(
            &server,
            "/v1/completions",
            &json!({"model": "embedded", "prompt": "In the beginning", "max_tokens": 200,
                      "stream": true}),
        )
        .await,
    );
    body.next().await.expect("a first event").expect("bytes");
    let (status, err) = post(
        &server,
        "/v1/completions",
        json!({"model": "embedded", "prompt": "Thou shalt", "max_tokens": 4}),
    )
    .await;
    assert_eq!(status, 429, "{err}");
    assert_eq!(err["error"]["code"], "queue_full");
    while body.next().await.is_some() {}
    let (status, _) = post(
        &server,
        "/v1/completions",
        json!({"model": "embedded", "prompt": "Thou shalt", "max_tokens": 4}),
    )
    .await;
    assert_eq!(
        status, 200,
        "the place is free again once the answer is done"
    );
    let mut body = Box::pin(
        open_stream(
            &server,
            "/v1/completions",
            &json!({"model": "embedded", "prompt": "In the beginning", "max_tokens": 200,
                      "stream": true}),
        )
        .await,
    );
    body.next().await.expect("a first event").expect("bytes");
    let r = client()
        .post(server.url("/v1/completions"))
        .json(&json!({"model": "embedded", "prompt": "x", "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    drop(body);
    server.shutdown().await;
}

fn smollm2() -> String {
    let d = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/smollm2"));
    assert!(
        d.join("metadata.json").exists(),
        "{} is missing: run `make smollm2` (make test does)",
        d.display()
    );
    d.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_chat_equals_greedy_and_a_gone_client_frees_its_row() {
    let model = smollm2();
    let server = Server::start(&model, "ngram", 4, 2, 8).await;
    let question = "What is the capital of France?";
    let want = greedy_texts(&model, &[(question.into(), 24)], true).remove(0);
    let body = json!({"model": "smollm2", "max_tokens": 24,
                      "messages": [{"role": "user", "content": question}]});
    let (status, plain) = post(&server, "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{plain}");
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(plain["choices"][0]["message"]["role"], "assistant");
    assert_eq!(plain["choices"][0]["message"]["content"], want.as_str());
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (text, last) = stream(&server, "/v1/chat/completions", streamed).await;
    assert_eq!(text, want);
    assert_eq!(last["object"], "chat.completion.chunk");

    // A client that goes away mid-answer: its row is freed at the next iteration, long before
    // the 1500 tokens it asked for (about a minute here) could have been decoded.
    let mut body = Box::pin(
        open_stream(
            &server,
            "/v1/chat/completions",
            &json!({"model": "smollm2", "max_tokens": 1500, "stream": true,
                      "messages": [{"role": "user", "content": "Write a very long story."}]}),
        )
        .await,
    );
    body.next().await.expect("an event").expect("bytes");
    body.next().await.expect("an event").expect("bytes");
    drop(body);
    let gone = Instant::now();
    loop {
        let health: Value = client()
            .get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if health["requests"] == 0 {
            break;
        }
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "the row was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

/// Asks SmolLM2 every question at once (20 tokens each) and checks each answer is `want`'s.
async fn assert_chat_answers(server: &Server, questions: &[&str], want: &[String]) {
    let answers = futures_util::future::join_all(questions.iter().map(|q| {
        post(
            server,
            "/v1/chat/completions",
            json!({"model": "smollm2", "max_tokens": 20,
                   "messages": [{"role": "user", "content": q}]}),
        )
    }))
    .await;
    for ((status, body), want) in answers.into_iter().zip(want) {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], want.as_str());
    }
}

/// `--proposer eagle` names no folder: the draft shipped for SmolLM2 is attached, as `decode`
/// attaches it, and every row of a batch (one fork of it each) answers with greedy's text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_eagle_uses_the_shipped_draft_in_every_row() {
    let model = smollm2();
    let server = Server::start(&model, "eagle", 3, 2, 8).await;
    let questions = ["Why is the sky blue?", "Write a haiku about the sea."];
    let want = greedy_texts(&model, &questions.map(|q| (q.to_string(), 20)), true);
    assert_chat_answers(&server, &questions, &want).await;
    server.shutdown().await;
}

/// `--proposer chain:ngram,eagle --tree dynamic:5` (the fastest f32 setting on a CPU): every
/// greedy request is verified as the draft's and lookup's merged tree, in a batch of two and
/// alone (`--max-batch 1` still goes through the batch decoder, which alone verifies trees),
/// and answers with greedy's text; a sampled request decodes chains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_trees_answer_with_greedy_text() {
    let model = smollm2();
    let questions = ["Why is the sky blue?", "Write a haiku about the sea."];
    let want = greedy_texts(&model, &questions.map(|q| (q.to_string(), 20)), true);
    for max_batch in [2, 1] {
        let mut decoder = BlockwiseConfig::heads(4);
        decoder.proposer = "chain:ngram:3:3,eagle".parse().unwrap();
        decoder.tree = Some("dynamic:5".parse().unwrap());
        let server = Server::start_with(&model, decoder, max_batch, 8).await;
        assert_chat_answers(&server, &questions, &want).await;
        let (status, body) = post(
            &server,
            "/v1/chat/completions",
            json!({"model": "smollm2", "max_tokens": 8, "temperature": 0.7, "seed": 3,
                   "messages": [{"role": "user", "content": questions[0]}]}),
        )
        .await;
        assert_eq!(status, 200, "sampled under a tree: {body}");
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_answers_in_flight() {
    let mut server = Server::start("embedded", "heads", 4, 2, 4).await;
    let want = greedy_texts("embedded", &[(PROMPTS[2].into(), 200)], false).remove(0);
    let mut body = Box::pin(
        open_stream(
            &server,
            "/v1/completions",
            &json!({"model": "embedded", "prompt": PROMPTS[2], "max_tokens": 200,
                      "stream": true}),
        )
        .await,
    );
    let mut raw = Vec::new();
    raw.extend_from_slice(&body.next().await.expect("an event").expect("bytes"));
    let _ = server.stop.take().expect("running").send(());
    while let Some(chunk) = body.next().await {
        raw.extend_from_slice(&chunk.expect("bytes"));
    }
    let data = events(&String::from_utf8(raw).unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let text = event_text(&data);
    assert_eq!(text, want, "the answer in flight was finished whole");
    let base = server.base.clone();
    server.done.await.expect("join").expect("serve");
    assert!(
        client().get(format!("{base}/health")).send().await.is_err(),
        "the server stopped listening"
    );
}
