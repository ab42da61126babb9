//! The OpenAI wire format: request bodies, their checks, and the response bodies.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;

/// `stop`: one string or a list of up to four.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options` (only `include_usage`, which the final event always carries anyway).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Accepted for clients that send it.
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields both endpoints share.
#[derive(Debug, Clone)]
pub struct Common {
    /// The served model's name (`GET /v1/models`).
    pub model: String,
    /// New tokens at most (`max_tokens`, or `max_completion_tokens`).
    pub max_tokens: Option<u64>,
    /// 0 (the default) decodes greedily; above 0 samples.
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, in (0, 1].
    pub top_p: Option<f64>,
    /// Sampling seed.
    pub seed: Option<u64>,
    /// Text that ends the answer (not included in it).
    pub stop: Option<Stop>,
    /// Server-sent events, one per accepted block.
    pub stream: bool,
    /// Only 1.
    pub n: Option<u64>,
}

/// One prompt, or a list holding exactly one.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// A string.
    One(String),
    /// A list of strings (one only).
    Many(Vec<String>),
}

/// A chat message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
    /// Ignored (a participant's name).
    pub name: Option<String>,
}

// serde's `deny_unknown_fields` does not work through `flatten`, so each request lists the
// shared fields itself; this macro writes them once.
macro_rules! request {
    ($(#[$doc:meta])* $name:ident { $(#[$fdoc:meta])* $field:ident: $ty:ty }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $(#[$fdoc])*
            pub $field: $ty,
            model: String,
            max_tokens: Option<u64>,
            max_completion_tokens: Option<u64>,
            temperature: Option<f64>,
            top_p: Option<f64>,
            seed: Option<u64>,
            stop: Option<Stop>,
            #[serde(default)]
            stream: bool,
            n: Option<u64>,
            #[allow(dead_code)]
            user: Option<String>,
            #[allow(dead_code)]
            stream_options: Option<StreamOptions>,
        }

        impl $name {
            /// The shared fields.
            pub fn common(&self) -> Common {
                Common {
                    model: self.model.clone(),
                    max_tokens: self.max_tokens.or(self.max_completion_tokens),
                    temperature: self.temperature,
                    top_p: self.top_p,
                    seed: self.seed,
                    stop: self.stop.clone(),
                    stream: self.stream,
                    n: self.n,
                }
            }
        }
    };
}

request! {
    /// `POST /v1/completions`.
    CompletionRequest {
        /// The text to continue.
        prompt: Prompt
    }
}

request! {
    /// `POST /v1/chat/completions`.
    ChatRequest {
        /// The conversation so far.
        messages: Vec<ChatMessage>
    }
}

/// Parses a request body, naming the field that was wrong.
pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.to_string();
            // "unknown field `x`, expected ..." names the field itself.
            let param = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
                .map(str::to_string)
                .or_else(|| (path != "." && !path.is_empty()).then_some(path));
            let message = match inner.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    format!("the body is not valid JSON: {message}")
                }
                _ => message,
            };
            Err(ApiError::invalid(message, param.as_deref()))
        }
    }
}

/// What a request asks of the decoder, checked.
#[derive(Debug, Clone)]
pub struct Checked {
    /// `None`: the server's default for the endpoint.
    pub max_tokens: Option<usize>,
    /// `None`: greedy.
    pub temperature: Option<f64>,
    /// Nucleus mass (sampling only).
    pub top_p: Option<f64>,
    /// Sampling seed.
    pub seed: Option<u64>,
    /// Stop strings, non-empty ones only.
    pub stop: Vec<String>,
    /// Stream the answer.
    pub stream: bool,
}

/// Checks the shared fields against the served model's name.
pub fn check(common: &Common, served: &str) -> Result<Checked, ApiError> {
    if common.model != served {
        return Err(ApiError::model_not_found(&common.model, served));
    }
    if let Some(n) = common.n {
        if n != 1 {
            return Err(ApiError::invalid(
                format!("n is {n}; this server returns one choice per request"),
                Some("n"),
            ));
        }
    }
    let max_tokens = match common.max_tokens {
        Some(0) => {
            return Err(ApiError::invalid(
                "max_tokens is 0; ask for at least 1",
                Some("max_tokens"),
            ))
        }
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        None => None,
    };
    let temperature = match common.temperature {
        Some(t) if !t.is_finite() || !(0.0..=2.0).contains(&t) => {
            return Err(ApiError::invalid(
                format!("temperature is {t}; it must be between 0 and 2"),
                Some("temperature"),
            ))
        }
        Some(t) if t > 0.0 => Some(t),
        _ => None,
    };
    if let Some(p) = common.top_p {
        if !p.is_finite() || p <= 0.0 || p > 1.0 {
            return Err(ApiError::invalid(
                format!("top_p is {p}; it must be in (0, 1]"),
                Some("top_p"),
            ));
        }
    }
    let stop = match &common.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) if v.len() > 4 => {
            return Err(ApiError::invalid(
                format!("stop has {} strings; at most 4", v.len()),
                Some("stop"),
            ))
        }
        Some(Stop::Many(v)) => v.clone(),
    };
    Ok(Checked {
        max_tokens,
        temperature,
        top_p: common.top_p.filter(|&p| p < 1.0),
        seed: common.seed,
        stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
        stream: common.stream,
    })
}

impl CompletionRequest {
    /// The one prompt, non-empty.
    pub fn text(&self) -> Result<String, ApiError> {
        let text = match &self.prompt {
            Prompt::One(s) => s.clone(),
            Prompt::Many(v) if v.len() == 1 => v[0].clone(),
            Prompt::Many(v) => {
                return Err(ApiError::invalid(
                    format!(
                        "prompt is a list of {}; send one prompt per request",
                        v.len()
                    ),
                    Some("prompt"),
                ))
            }
        };
        if text.is_empty() {
            return Err(ApiError::invalid("prompt is empty", Some("prompt")));
        }
        Ok(text)
    }
}

impl ChatRequest {
    /// The messages, checked: at least one, known roles.
    pub fn messages(&self) -> Result<Vec<blockwise::tokenizer::Message>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages is empty", Some("messages")));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                    return Err(ApiError::invalid(
                        format!(
                            "messages[{i}].role is {:?}; expected system, user or assistant",
                            m.role
                        ),
                        Some(&format!("messages[{i}].role")),
                    ));
                }
                Ok(blockwise::tokenizer::Message {
                    role: m.role.clone(),
                    content: m.content.clone(),
                })
            })
            .collect()
    }
}

/// Why an answer ended, in OpenAI's words.
pub fn finish_reason(stop: Option<blockwise::StopReason>, stopped_by_string: bool) -> &'static str {
    match (stopped_by_string, stop) {
        (true, _) | (false, Some(blockwise::StopReason::Eos)) => "stop",
        _ => "length",
    }
}

/// Token counts of one answer.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Answer tokens.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

/// The decoder's figures, beside OpenAI's usage.
pub fn decoder_stats(stats: &blockwise::DecodeStats) -> Value {
    json!({
        "mean_accepted": stats.mean_accepted,
        "model_calls": stats.model_calls,
        "iterations": stats.iterations,
        "skipped_calls": stats.skipped_calls,
        "proposed": stats.proposed,
        "wall_s": stats.wall_s,
    })
}
