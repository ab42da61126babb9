//! The model worker: one thread owns the model (libtorch tensors are not `Sync`) and decodes
//! every request. Greedy requests share a batch ([`BatchBlockwise`]): a request that arrives
//! while a batch runs joins it at the next iteration if a row is free, and a row whose client
//! went away is freed at the next iteration. Sampled requests (temperature above 0), and every
//! request under `--max-batch 1`, are decoded one at a time by [`Blockwise`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockwise::bundle::ModelBundle;
use blockwise::config::BlockwiseConfig;
use blockwise::config::RowProposers;
use blockwise::decoder::{BatchBlockwise, RowId};
use blockwise::tokenizer::{Message, TextStream, TextTokenizer};
use blockwise::{
    Blockwise, BlockwiseDecoder, CausalLm, DecodeConfig, DecodeStats, SamplingConfig, StopReason,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::api::{finish_reason, Checked, Usage};
use crate::error::{first_line, ApiError};

/// What the worker is asked to continue.
#[derive(Debug, Clone)]
pub enum Input {
    /// `/v1/completions`: plain text.
    Text(String),
    /// `/v1/chat/completions`: rendered with the model's chat template.
    Chat(Vec<Message>),
}

/// Counts a request from the moment it is queued until its answer ends.
#[derive(Debug)]
pub struct Ticket(Option<Arc<AtomicUsize>>);

impl Ticket {
    /// Takes a place if fewer than `limit` requests are in; else says how many are.
    pub fn take(load: &Arc<AtomicUsize>, limit: usize) -> Result<Ticket, usize> {
        load.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < limit).then_some(n + 1)
        })
        .map(|_| Ticket(Some(load.clone())))
    }

    /// Gives the place back (once; dropping the ticket does it too). The worker calls it
    /// before it sends a request's last event, so that a client who has read its whole answer
    /// finds the place free.
    pub fn release(&mut self) {
        if let Some(load) = self.0.take() {
            load.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.release();
    }
}

/// One request on its way to the worker.
#[derive(Debug)]
pub struct Job {
    /// The text or conversation.
    pub input: Input,
    /// The checked settings.
    pub checked: Checked,
    /// Where the answer goes; closed when the client went away.
    pub events: UnboundedSender<Event>,
    /// The request's place in the queue.
    pub ticket: Ticket,
}

/// What the worker tells a request's handler.
#[derive(Debug)]
pub enum Event {
    /// The request was accepted; its answer follows.
    Started {
        /// Tokens of the prompt (the chat template's included).
        prompt_tokens: usize,
    },
    /// More text of the answer (an accepted block's worth).
    Text(String),
    /// The answer is complete.
    Done {
        /// OpenAI's `stop` or `length`.
        finish_reason: &'static str,
        /// Token counts.
        usage: Usage,
        /// What decoding it cost.
        stats: DecodeStats,
    },
    /// The request failed (before `Started`: a 4xx or 5xx; after: an error event).
    Failed(ApiError),
}

/// How the worker decodes.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Proposer, block size, acceptance, policy: as `decode` takes them.
    pub decoder: BlockwiseConfig,
    /// Rows per batch; 1 decodes one request at a time.
    pub max_batch: usize,
    /// `max_tokens` when a request names none.
    pub default_max_tokens: usize,
    /// The prompt is read in chunks of this many tokens, so a long prompt joining a batch
    /// does not stall the other rows for long.
    pub prefill_chunk: usize,
    /// Whether a request may join a running batch in a row that freed up (`true`, the
    /// default) or waits for the next batch (`false`; kept to measure the difference).
    pub join_running: bool,
    /// How long an idle worker waits, after the first greedy request arrives, for others to
    /// arrive before it opens a batch (the batch opens with as many rows as requests are then
    /// waiting, and a batch opened smaller than the demand drains before the next opens).
    /// Zero opens at once.
    pub batch_wait: Duration,
    /// Proposals only while at most this many rows are busy; with more, plain greedy steps
    /// ([`BatchBuilder::speculate_up_to`](blockwise::decoder::BatchBuilder::speculate_up_to)).
    /// `None`: always.
    pub speculate_up_to: Option<usize>,
}

/// The shared flags the server and the worker read.
#[derive(Debug, Default)]
pub struct Flags {
    /// Set on SIGINT/SIGTERM: queued requests are refused, running ones finish.
    pub shutting_down: AtomicBool,
}

/// A request checked against the model, waiting for a row.
struct Ready {
    ids: Vec<i64>,
    decode: DecodeConfig,
    job: Job,
}

/// An answer being produced: its text so far and what of it was sent.
struct Answer {
    ready: Ready,
    text: TextStream,
    sent: usize,
    tokens: usize,
    stopped_by_string: bool,
}

impl Answer {
    fn new(ready: Ready) -> Self {
        Answer {
            ready,
            text: TextStream::new(),
            sent: 0,
            tokens: 0,
            stopped_by_string: false,
        }
    }

    fn send(&self, event: Event) {
        // A client that went away is noticed by the loop (`is_closed`); nothing to do here.
        let _ = self.ready.job.events.send(event);
    }

    fn gone(&self) -> bool {
        self.ready.job.events.is_closed()
    }

    /// Takes newly accepted tokens; `true` when a stop string has ended the answer. Text that
    /// could be the start of a stop string is held back until it is known not to be.
    fn push(&mut self, tokenizer: &dyn TextTokenizer, tokens: &[i64]) -> bool {
        if self.stopped_by_string {
            return true;
        }
        self.tokens += tokens.len();
        if self.text.push(tokenizer, tokens).is_err() {
            return false;
        }
        let stops = &self.ready.job.checked.stop;
        let full = self.text.text();
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.sent.saturating_sub(longest);
        while !full.is_char_boundary(from) {
            from -= 1;
        }
        let hit = stops
            .iter()
            .filter_map(|s| full[from..].find(s.as_str()).map(|p| from + p))
            .min();
        if let Some(end) = hit {
            let delta = full[self.sent..end].to_string();
            self.sent = end;
            self.stopped_by_string = true;
            if !delta.is_empty() {
                self.send(Event::Text(delta));
            }
            return true;
        }
        let hold = stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(move |&k| s.is_char_boundary(k))
                    .map(move |k| &s[..k])
            })
            .filter(|prefix| full.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let safe = full.len() - hold;
        if safe > self.sent {
            let delta = full[self.sent..safe].to_string();
            self.sent = safe;
            self.send(Event::Text(delta));
        }
        false
    }

    /// Sends the rest of the text and the final event.
    fn finish(mut self, stop: Option<StopReason>, stats: DecodeStats) {
        if !self.stopped_by_string {
            let full = self.text.text();
            if full.len() > self.sent {
                let delta = full[self.sent..].to_string();
                self.sent = full.len();
                self.send(Event::Text(delta));
            }
        }
        let prompt_tokens = self.ready.ids.len();
        self.ready.job.ticket.release();
        self.send(Event::Done {
            finish_reason: finish_reason(stop, self.stopped_by_string),
            usage: Usage {
                prompt_tokens,
                completion_tokens: self.tokens,
                total_tokens: prompt_tokens + self.tokens,
            },
            stats,
        });
    }

    fn fail(mut self, error: ApiError) {
        self.ready.job.ticket.release();
        self.send(Event::Failed(error));
    }
}

/// The text side of the model: what checking a request needs, apart from the model itself.
struct Text {
    tokenizer: Box<dyn TextTokenizer>,
    chat: Option<blockwise::tokenizer::ChatTemplate>,
    eos: Vec<i64>,
    info: blockwise::ModelInfo,
}

/// The worker: owns the model, serves jobs until the channel closes.
pub struct Worker {
    model: Box<dyn CausalLm>,
    text: Text,
    config: WorkerConfig,
    flags: Arc<Flags>,
    pending: VecDeque<Ready>,
    /// The proposer built for the first batch, forked for every admitted request after it.
    rows: Option<RowProposers>,
}

impl Worker {
    /// A worker over a loaded model.
    pub fn new(bundle: ModelBundle, mut config: WorkerConfig, flags: Arc<Flags>) -> Self {
        let info = bundle.model.info().clone();
        // `eagle` without a folder is the draft shipped for the model, as in `decode`.
        config.decoder.proposer = config
            .decoder
            .proposer
            .clone()
            .with_shipped_draft(bundle.draft.as_deref());
        Worker {
            model: bundle.model,
            text: Text {
                tokenizer: bundle.tokenizer,
                chat: bundle.chat,
                eos: bundle.eos,
                info,
            },
            config,
            flags,
            pending: VecDeque::new(),
            rows: None,
        }
    }

    /// Serves until every sender of `jobs` is gone; then finishes what it holds.
    pub fn run(mut self, mut jobs: UnboundedReceiver<Job>) {
        loop {
            if self.pending.is_empty() {
                match jobs.blocking_recv() {
                    Some(job) => take(&self.text, &self.config, &mut self.pending, job),
                    None => break,
                }
                self.gather(&mut jobs);
            }
            take_waiting(
                &self.text,
                &self.config,
                &self.flags,
                &mut self.pending,
                &mut jobs,
            );
            let Some(front) = self.pending.front() else {
                continue;
            };
            // Greedy requests go through the batch decoder when batches or trees are asked
            // for (trees are verified by it alone); sampled ones decode one at a time.
            let batched = self.config.max_batch > 1 || self.config.decoder.tree.is_some();
            if front.decode.sampling.is_some() || !batched {
                let ready = self.pending.pop_front().expect("a front");
                self.serve_alone(ready);
            } else {
                self.serve_batch(&mut jobs);
            }
        }
    }

    /// After an idle spell, lets the requests that arrive together reach the queue before a
    /// batch opens: waits up to `batch_wait` from now, until `max_batch` greedy requests are
    /// queued, a sampled one is first, or shutdown begins.
    fn gather(&mut self, jobs: &mut UnboundedReceiver<Job>) {
        let deadline = Instant::now() + self.config.batch_wait;
        let greedy_front =
            |p: &VecDeque<Ready>| p.front().is_some_and(|r| r.decode.sampling.is_none());
        while self.config.max_batch > 1
            && greedy_front(&self.pending)
            && self.pending.len() < self.config.max_batch
            && !self.flags.shutting_down.load(Ordering::SeqCst)
            && Instant::now() < deadline
        {
            match jobs.try_recv() {
                Ok(job) => take(&self.text, &self.config, &mut self.pending, job),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
    }

    /// One request, decoded by itself: sampled, or `--max-batch 1`.
    fn serve_alone(&mut self, ready: Ready) {
        let mut answer = Answer::new(ready);
        if answer.gone() {
            return;
        }
        let embeddings = self.model.token_embeddings();
        let tokenizer = &*self.text.tokenizer;
        let model: &mut dyn CausalLm = &mut *self.model;
        // Sampled requests decode chains: trees are verified greedily, by the batch decoder.
        let chains = BlockwiseConfig {
            tree: None,
            ..self.config.decoder.clone()
        };
        let result =
            Blockwise::from_config(model, &chains, embeddings.as_ref()).and_then(|mut decoder| {
                let (ids, decode) = (answer.ready.ids.clone(), answer.ready.decode.clone());
                decoder.decode_streaming(&ids, &decode, &mut |tokens| {
                    answer.push(tokenizer, tokens);
                })
            });
        match result {
            Ok(out) => answer.finish(Some(out.stop), out.stats),
            Err(e) => answer.fail(ApiError::decode_failed(first_line(&e))),
        }
    }

    /// A batch: admits greedy requests from the front of the queue as rows free up, steps
    /// until every row has finished, and stops admitting when a sampled request is next (it
    /// runs once the batch has drained).
    fn serve_batch(&mut self, jobs: &mut UnboundedReceiver<Job>) {
        let (text, config, flags, pending) =
            (&self.text, &self.config, &self.flags, &mut self.pending);
        let info = text.info.clone();
        let embeddings = self.model.token_embeddings();
        let k = config.decoder.block_size;
        // One proposer built for the worker's life, then a fork of it per admitted request (a
        // feature draft shares its weights instead of loading them again).
        let rows = match &mut self.rows {
            Some(rows) => Ok(&*rows),
            slot => config
                .decoder
                .proposer
                .row_proposers(&info, embeddings.as_ref())
                .map(|rows| &*slot.insert(rows)),
        };
        let built = rows.and_then(|rows| {
            let (needs_heads, proposers) = (rows.needs_heads(), rows.factory());
            let model: &mut dyn CausalLm = &mut *self.model;
            let mut builder = BatchBlockwise::builder(model)
                .proposer_factory(needs_heads, proposers)
                .config(&config.decoder, embeddings.as_ref())?;
            if let Some(rows) = config.speculate_up_to {
                builder = builder.speculate_up_to(rows);
            }
            let mut decoder = builder.build()?;
            // As many rows as greedy requests are waiting (every call computes every row,
            // busy or not); later requests take rows as they free up, or the next batch.
            let waiting = pending
                .iter()
                .take_while(|r| r.decode.sampling.is_none())
                .count();
            let rows = waiting.clamp(1, config.max_batch);
            decoder.open(rows, info.max_context + 2 * k)?;
            Ok(decoder)
        });
        let mut decoder = match built {
            Ok(d) => d,
            Err(e) => {
                let error = ApiError::decode_failed(first_line(&e));
                for ready in pending.drain(..) {
                    Answer::new(ready).fail(error.clone());
                }
                return;
            }
        };
        let tokenizer = &*text.tokenizer;
        let mut rows: HashMap<RowId, Answer> = HashMap::new();
        loop {
            take_waiting(text, config, flags, pending, jobs);
            // A batch opened smaller than the demand now takes no one: it drains, and the next
            // one opens with as many rows as are waiting (up to --max-batch).
            let waiting = pending
                .iter()
                .take_while(|r| r.decode.sampling.is_none())
                .count();
            let free = decoder.capacity() - decoder.busy_rows();
            let too_small = decoder.capacity() < config.max_batch && waiting > free;
            let opened = decoder.busy_rows() == 0 && rows.is_empty();
            let closed = !config.join_running && !opened;
            while !too_small
                && !closed
                && decoder.busy_rows() < decoder.capacity()
                && pending.front().is_some_and(|r| r.decode.sampling.is_none())
            {
                let ready = pending.pop_front().expect("a front");
                if ready.job.events.is_closed() {
                    continue;
                }
                match decoder.admit(&ready.ids, &ready.decode) {
                    Ok(id) => {
                        rows.insert(id, Answer::new(ready));
                    }
                    Err(e) => Answer::new(ready).fail(ApiError::decode_failed(first_line(&e))),
                }
            }
            // Clients that went away free their rows now.
            rows.retain(|&id, answer| {
                let gone = answer.gone();
                if gone {
                    decoder.cancel(id);
                }
                !gone
            });
            if decoder.busy_rows() == 0 {
                break;
            }
            match decoder.step() {
                Ok(updates) => {
                    for update in updates {
                        let Some(answer) = rows.get_mut(&update.row) else {
                            continue;
                        };
                        let stopped = answer.push(tokenizer, &update.tokens);
                        match update.finished {
                            Some(Ok(out)) => {
                                let answer = rows.remove(&update.row).expect("a row");
                                answer.finish(Some(out.stop), out.stats);
                            }
                            Some(Err(e)) => {
                                let answer = rows.remove(&update.row).expect("a row");
                                answer.fail(ApiError::decode_failed(first_line(&e)));
                            }
                            None if stopped => {
                                let answer = rows.remove(&update.row).expect("a row");
                                let stats = decoder.cancel(update.row).unwrap_or_default();
                                answer.finish(None, stats);
                            }
                            None => {}
                        }
                    }
                }
                Err(e) => {
                    // The batch's model call failed: its requests fail, the worker goes on.
                    let error = ApiError::decode_failed(first_line(&e));
                    for (_, answer) in rows.drain() {
                        answer.fail(error.clone());
                    }
                    break;
                }
            }
        }
    }
}

/// Everything queued now, checked; on shutdown, queued requests are refused.
fn take_waiting(
    text: &Text,
    config: &WorkerConfig,
    flags: &Flags,
    pending: &mut VecDeque<Ready>,
    jobs: &mut UnboundedReceiver<Job>,
) {
    while let Ok(job) = jobs.try_recv() {
        take(text, config, pending, job);
    }
    if flags.shutting_down.load(Ordering::SeqCst) {
        for mut ready in pending.drain(..) {
            ready.job.ticket.release();
            let _ = ready
                .job
                .events
                .send(Event::Failed(ApiError::shutting_down()));
        }
    }
}

/// Checks a job against the model and queues it; tells the handler at once whether it is
/// taken.
fn take(text: &Text, config: &WorkerConfig, pending: &mut VecDeque<Ready>, mut job: Job) {
    match prepare(text, config, &job) {
        Ok((ids, decode)) => {
            let _ = job.events.send(Event::Started {
                prompt_tokens: ids.len(),
            });
            pending.push_back(Ready { ids, decode, job });
        }
        Err(e) => {
            job.ticket.release();
            let _ = job.events.send(Event::Failed(e));
        }
    }
}

/// The prompt's tokens and the decode settings of a job, or the 4xx that says what is wrong.
fn prepare(
    text: &Text,
    config: &WorkerConfig,
    job: &Job,
) -> Result<(Vec<i64>, DecodeConfig), ApiError> {
    let (ids, param) = match &job.input {
        Input::Text(prompt) => (text.tokenizer.encode_prompt(prompt), "prompt"),
        Input::Chat(messages) => {
            let template = text.chat.as_ref().ok_or_else(|| {
                ApiError::invalid(
                    "this model has no chat template; use /v1/completions",
                    Some("messages"),
                )
            })?;
            let rendered = template
                .render(messages, true)
                .map_err(|e| ApiError::invalid(first_line(&e), Some("messages")))?;
            (text.tokenizer.encode(&rendered), "messages")
        }
    };
    let ids = ids.map_err(|e| ApiError::invalid(first_line(&e), Some(param)))?;
    let context = text.info.max_context;
    if ids.is_empty() {
        return Err(ApiError::invalid(
            format!("{param} has no tokens"),
            Some(param),
        ));
    }
    if ids.len() >= context {
        return Err(ApiError::invalid(
            format!(
                "{param} is {} tokens; the model's context holds {context}, answer included",
                ids.len()
            ),
            Some(param),
        ));
    }
    let room = context - ids.len();
    let checked = &job.checked;
    let max_tokens = match checked.max_tokens {
        Some(n) if n > room => {
            return Err(ApiError::invalid(
                format!(
                    "max_tokens is {n}, but {param} is {} tokens of a {context}-token context: \
                     at most {room} can follow",
                    ids.len()
                ),
                Some("max_tokens"),
            ))
        }
        Some(n) => n,
        None => config.default_max_tokens.min(room),
    };
    let mut decode = DecodeConfig::new(max_tokens).with_eos(text.eos.clone());
    decode.prefill_chunk = Some(config.prefill_chunk);
    if let Some(t) = checked.temperature {
        let mut s = SamplingConfig::new(t);
        if let Some(p) = checked.top_p {
            s = s.with_top_p(p);
        }
        s.seed = checked.seed;
        decode.sampling = Some(s);
    }
    decode
        .check(&ids, &text.info)
        .map_err(|e| ApiError::invalid(first_line(&e), Some(param)))?;
    Ok((ids, decode))
}
