//! What the server tests share: a server on a loopback port, and a client for it.

#![allow(dead_code)] // each test binary uses its own part

use std::path::PathBuf;

use blockwise::bundle::{BundleOptions, ModelBundle};
use blockwise::config::{BlockwiseConfig, ProposerConfig};
use blockwise_server::worker::WorkerConfig;
use blockwise_server::{serve, spawn_worker, ServerOptions};
use serde_json::Value;
use tokio::sync::oneshot;

pub struct Server {
    pub base: String,
    pub stop: Option<oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub async fn start(
        model: &str,
        proposer: &str,
        k: usize,
        max_batch: usize,
        queue: usize,
    ) -> Server {
        let mut decoder = BlockwiseConfig::heads(k);
        decoder.proposer = proposer.parse::<ProposerConfig>().expect("proposer");
        Server::start_with(model, decoder, max_batch, queue).await
    }

    /// A server decoding with `decoder` (block size, proposer, tree ...).
    pub async fn start_with(
        model: &str,
        decoder: BlockwiseConfig,
        max_batch: usize,
        queue: usize,
    ) -> Server {
        let config = WorkerConfig {
            decoder,
            max_batch,
            default_max_tokens: 32,
            prefill_chunk: 16,
            join_running: true,
            batch_wait: std::time::Duration::from_millis(20),
            // As the server does on the CPU by default: proposals while at most 2 rows are busy.
            speculate_up_to: Some(2),
        };
        let name = model.to_string();
        let worker = spawn_worker(
            move || ModelBundle::load(&name, &BundleOptions::default()),
            config,
        )
        .expect("worker");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let served = PathBuf::from(model)
            .file_name()
            .map_or(model.to_string(), |n| n.to_string_lossy().into_owned());
        let options = ServerOptions {
            model_name: served,
            queue,
            body_limit: 64 * 1024,
        };
        let done = tokio::spawn(serve(listener, worker, options, async {
            let _ = stopped.await;
        }));
        Server {
            base,
            stop: Some(stop),
            done,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.done.await.expect("join").expect("serve");
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json body"))
}

/// The `data:` payloads of a server-sent event stream.
pub fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// The text of a stream's events (completion `text` or chat `delta.content`), `[DONE]` aside.
pub fn event_text(data: &[String]) -> String {
    data.iter()
        .filter(|d| d.as_str() != "[DONE]")
        .filter_map(|d| {
            let v: Value = serde_json::from_str(d).expect("event json");
            let choice = &v["choices"][0];
            choice["text"]
                .as_str()
                .or_else(|| choice["delta"]["content"].as_str())
                .map(str::to_string)
        })
        .collect()
}

/// Sends a streamed request and returns its body as a byte stream once the answer has begun.
pub async fn open_stream(
    server: &Server,
    path: &str,
    body: &Value,
) -> impl futures_util::Stream<Item = reqwest::Result<axum::body::Bytes>> {
    let r = client()
        .post(server.url(path))
        .json(body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
    r.bytes_stream()
}
