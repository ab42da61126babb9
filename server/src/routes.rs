//! The HTTP side: routes, request intake, plain and streamed answers.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{self, decoder_stats, Checked};
use crate::error::ApiError;
use crate::worker::{Event, Flags, Input, Job, Ticket};

/// What every handler shares.
pub struct App {
    /// To the model worker.
    pub jobs: UnboundedSender<Job>,
    /// Requests decoding or queued.
    pub load: Arc<AtomicUsize>,
    /// The most requests decoding or queued before new ones get a 429.
    pub limit: usize,
    /// The name `GET /v1/models` lists and requests must name.
    pub model: String,
    /// Bodies above this many bytes get a 413.
    pub body_limit: usize,
    /// Shutdown in progress.
    pub flags: Arc<Flags>,
    /// When the server started (the model's `created`).
    pub started: u64,
    next_id: AtomicU64,
}

impl App {
    /// The shared state of a server.
    pub fn new(
        jobs: UnboundedSender<Job>,
        limit: usize,
        model: String,
        body_limit: usize,
        flags: Arc<Flags>,
    ) -> Self {
        App {
            jobs,
            load: Arc::new(AtomicUsize::new(0)),
            limit,
            model,
            body_limit,
            flags,
            started: now(),
            next_id: AtomicU64::new(0),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .fallback(not_found)
        .with_state(app)
}

async fn health(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "status": if app.flags.shutting_down.load(Ordering::SeqCst) { "shutting_down" } else { "ok" },
        "model": app.model,
        "requests": app.load.load(Ordering::SeqCst),
    }))
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": app.model, "object": "model", "created": app.started, "owned_by": "blockwise"}],
    }))
}

async fn not_found() -> ApiError {
    ApiError {
        status: axum::http::StatusCode::NOT_FOUND,
        message: "no such route; this server has GET /health, GET /v1/models, \
                  POST /v1/completions and POST /v1/chat/completions"
            .into(),
        kind: "invalid_request_error",
        param: None,
        code: Some("not_found"),
        retry_after: None,
    }
}

/// Which endpoint an answer is for: its object names and how text is wrapped.
#[derive(Clone, Copy)]
enum Kind {
    Completion,
    Chat,
}

async fn completions(State(app): State<Arc<App>>, body: Body) -> Response {
    let intake = async {
        let bytes = read_body(body, app.body_limit).await?;
        let req: api::CompletionRequest = api::parse(&bytes)?;
        let checked = api::check(&req.common(), &app.model)?;
        Ok::<_, ApiError>((Input::Text(req.text()?), checked))
    };
    match intake.await {
        Ok((input, checked)) => answer(app, Kind::Completion, input, checked).await,
        Err(e) => e.into_response(),
    }
}

async fn chat(State(app): State<Arc<App>>, body: Body) -> Response {
    let intake = async {
        let bytes = read_body(body, app.body_limit).await?;
        let req: api::ChatRequest = api::parse(&bytes)?;
        let checked = api::check(&req.common(), &app.model)?;
        Ok::<_, ApiError>((Input::Chat(req.messages()?), checked))
    };
    match intake.await {
        Ok((input, checked)) => answer(app, Kind::Chat, input, checked).await,
        Err(e) => e.into_response(),
    }
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(limit))
}

/// Queues the request and answers it, plainly or as a stream.
async fn answer(app: Arc<App>, kind: Kind, input: Input, checked: Checked) -> Response {
    let stream = checked.stream;
    let mut events = match submit(&app, input, checked).await {
        Ok(events) => events,
        Err(e) => return e.into_response(),
    };
    let id = app.next_id.fetch_add(1, Ordering::SeqCst);
    let head = Head {
        id: match kind {
            Kind::Completion => format!("cmpl-{id}"),
            Kind::Chat => format!("chatcmpl-{id}"),
        },
        created: now(),
        model: app.model.clone(),
        kind,
    };
    if stream {
        return stream_answer(head, events).into_response();
    }
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Done {
                finish_reason,
                usage,
                stats,
            } => {
                let choice = match kind {
                    Kind::Completion => json!({
                        "index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason,
                    }),
                    Kind::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": null,
                        "finish_reason": finish_reason,
                    }),
                };
                let mut body = head.object(false);
                body["choices"] = json!([choice]);
                body["usage"] = json!(usage);
                body["blockwise"] = decoder_stats(&stats);
                return Json(body).into_response();
            }
            Event::Failed(e) => return e.into_response(),
            Event::Started { .. } => {}
        }
    }
    ApiError::decode_failed("the model worker stopped before the answer was complete")
        .into_response()
}

/// Takes a place in the queue and hands the request to the worker; returns its events once the
/// worker has accepted it (its prompt fits), or the error that says why not.
async fn submit(
    app: &App,
    input: Input,
    checked: Checked,
) -> Result<UnboundedReceiver<Event>, ApiError> {
    if app.flags.shutting_down.load(Ordering::SeqCst) {
        return Err(ApiError::shutting_down());
    }
    let ticket = Ticket::take(&app.load, app.limit).map_err(ApiError::overloaded)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    app.jobs
        .send(Job {
            input,
            checked,
            events: tx,
            ticket,
        })
        .map_err(|_| ApiError::shutting_down())?;
    match rx.recv().await {
        Some(Event::Started { .. }) => Ok(rx),
        Some(Event::Failed(e)) => Err(e),
        Some(_) | None => Err(ApiError::decode_failed(
            "the model worker stopped before taking the request",
        )),
    }
}

/// The fields every answer object starts with.
struct Head {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

impl Head {
    fn object(&self, chunk: bool) -> Value {
        let object = match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model})
    }

    fn chunk(&self, delta: Option<&str>, finish_reason: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Completion => json!({
                "index": 0, "text": delta.unwrap_or(""), "logprobs": null,
                "finish_reason": finish_reason,
            }),
            Kind::Chat => json!({
                "index": 0,
                "delta": match delta { Some(d) => json!({"content": d}), None => json!({}) },
                "logprobs": null,
                "finish_reason": finish_reason,
            }),
        };
        let mut v = self.object(true);
        v["choices"] = json!([choice]);
        v
    }
}

/// Server-sent events: one per accepted block, a final one with the finish reason, usage and
/// the decoder's figures, then `[DONE]`. A client that goes away closes the stream, which
/// closes the worker's channel, which frees the request's row at the next iteration.
fn stream_answer(head: Head, mut events: UnboundedReceiver<Event>) -> impl IntoResponse {
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let send = |v: Value| {
            let tx = tx.clone();
            async move {
                tx.send(Ok(SseEvent::default().data(v.to_string())))
                    .await
                    .is_ok()
            }
        };
        if let Kind::Chat = head.kind {
            let mut first = head.chunk(None, None);
            first["choices"][0]["delta"] = json!({"role": "assistant", "content": ""});
            if !send(first).await {
                return;
            }
        }
        while let Some(event) = events.recv().await {
            let ok = match event {
                Event::Text(t) => send(head.chunk(Some(&t), None)).await,
                Event::Done {
                    finish_reason,
                    usage,
                    stats,
                } => {
                    let mut last = head.chunk(None, Some(finish_reason));
                    last["usage"] = json!(usage);
                    last["blockwise"] = decoder_stats(&stats);
                    send(last).await;
                    let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                    return;
                }
                Event::Failed(e) => {
                    send(e.body()).await;
                    return;
                }
                Event::Started { .. } => true,
            };
            if !ok {
                return;
            }
        }
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}
