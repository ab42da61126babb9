//! An OpenAI-compatible HTTP server on the blockwise library.
//!
//! `POST /v1/completions`, `POST /v1/chat/completions` (streamed with server-sent events, one
//! event per accepted block), `GET /v1/models`, `GET /health`. One worker thread owns the model
//! and decodes concurrent greedy requests together in a [`blockwise::BatchBlockwise`] batch;
//! requests reach it through a queue bounded by [`ServerOptions::queue`].

pub mod api;
pub mod error;
pub mod routes;
pub mod worker;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use blockwise::bundle::ModelBundle;
use tokio::net::TcpListener;

use routes::App;
use worker::{Flags, Worker, WorkerConfig};

/// What the HTTP side enforces.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The model name requests must name.
    pub model_name: String,
    /// Requests that may wait for a row beyond those decoding; more get a 429.
    pub queue: usize,
    /// Bodies over this many bytes get a 413.
    pub body_limit: usize,
}

/// A started model worker: where to send jobs, and its thread.
pub struct WorkerHandle {
    jobs: tokio::sync::mpsc::UnboundedSender<worker::Job>,
    thread: std::thread::JoinHandle<()>,
    flags: Arc<Flags>,
    max_batch: usize,
}

/// Loads the model on a thread of its own (the model never leaves it) and starts the worker
/// there; returns once the model is loaded, or with the error that stopped it.
pub fn spawn_worker(
    load: impl FnOnce() -> blockwise::Result<ModelBundle> + Send + 'static,
    config: WorkerConfig,
) -> blockwise::Result<WorkerHandle> {
    let flags = Arc::new(Flags::default());
    let (jobs, inbox) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let max_batch = config.max_batch;
    let worker_flags = flags.clone();
    let thread = std::thread::Builder::new()
        .name("model-worker".into())
        .spawn(move || match load() {
            Ok(bundle) => {
                let _ = ready_tx.send(Ok(()));
                Worker::new(bundle, config, worker_flags).run(inbox);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(|e| blockwise::Error::config("server", format!("cannot start the worker: {e}")))?;
    ready_rx.recv().map_err(|_| {
        blockwise::Error::config("server", "the model worker stopped while loading the model")
    })??;
    Ok(WorkerHandle {
        jobs,
        thread,
        flags,
        max_batch,
    })
}

/// Serves on `listener` until `shutdown` resolves; then refuses new requests, lets the ones in
/// flight finish, and stops the worker.
pub async fn serve(
    listener: TcpListener,
    worker: WorkerHandle,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let WorkerHandle {
        jobs,
        thread,
        flags,
        max_batch,
    } = worker;
    let app = Arc::new(App::new(
        jobs,
        max_batch + options.queue,
        options.model_name,
        options.body_limit,
        flags.clone(),
    ));
    let router = routes::router(app);
    let signal_flags = flags.clone();
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            signal_flags.shutting_down.store(true, Ordering::SeqCst);
        })
        .await;
    // The router (and with it the last sender of jobs) is gone: the worker drains and stops.
    tokio::task::spawn_blocking(move || {
        let _ = thread.join();
    })
    .await
    .ok();
    result
}
