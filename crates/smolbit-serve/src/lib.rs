//! `smolbit serve`: an OpenAI-compatible HTTP server, so editors, agents and scripts that speak
//! the OpenAI API can use a smolbit model.
//!
//! Routes: `POST /v1/chat/completions` (messages through the model's own chat template),
//! `POST /v1/completions` (a raw prompt), both streamed as server-sent events in OpenAI's chunk
//! format (ending with `data: [DONE]`) when `stream` is true; `GET /v1/models`; `GET /health`.
//! Sampling fields map onto smolbit's (`temperature`, `top_p`, `max_tokens` or
//! `max_completion_tokens`, `stop`, `seed`; `n` must be 1), answers carry `usage` and
//! `finish_reason` (`stop` or `length`). Errors are OpenAI-shaped JSON (`{"error": {"message",
//! "type", "code"}}`) with a 4xx status for anything the client can fix, and the server keeps
//! serving.
//!
//! Concurrency: requests go into a bounded queue (`queue`, 503 when full) in front of one
//! generation loop ([`engine`]) that keeps up to `parallel` sequences active and advances each
//! by one token per round. A client that disconnects stops its generation. A prompt longer than
//! the model's context is a 400.
//!
//! The HTTP layer is axum on hyper and tokio (chosen in ARCHITECTURE.md): tokio runs the
//! connections on its own two threads, while generation stays on the caller's thread, a thread
//! of the rayon pool the kernels run on. SIGTERM or Ctrl-C stops accepting connections, lets
//! open responses and active generations finish, then returns.

mod engine;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use smolbit_generate::{GenerateParams, Message, SamplingParams, StopReason};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

pub use engine::ServedModel;
use engine::{Event, Job, JobError, Prompt, Summary};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (loopback unless told otherwise).
    pub host: String,
    /// Port (0: any free port; the one chosen is printed).
    pub port: u16,
    /// Sequences generated at once, decoded together as one batch (a token each per round).
    pub parallel: usize,
    /// Requests that may wait for a free slot before the server answers 503.
    pub queue: usize,
    /// When set, every request must carry `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Largest request body, bytes (413 above it).
    pub max_body_bytes: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 8080,
            parallel: 4,
            queue: 16,
            api_key: None,
            max_body_bytes: 4 << 20,
        }
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad settings.
    #[error("{0}")]
    Invalid(String),
    /// The address could not be bound or the runtime not started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

struct AppState {
    /// Model ids, in the engine's order.
    ids: Vec<String>,
    jobs: SyncSender<Job>,
    queue: usize,
    api_key: Option<String>,
    next_id: AtomicU64,
    started: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Serve `models` until SIGTERM or Ctrl-C. Runs the generation loop on the calling thread
/// (call it from a thread of the rayon pool, as the CLI does) and the HTTP layer on two tokio
/// threads; `on_listening` gets the bound address before the first request is taken.
pub fn serve(
    opts: &ServeOptions,
    models: Vec<ServedModel>,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    if models.is_empty() {
        return Err(ServeError::Invalid("no model to serve".into()));
    }
    for (i, m) in models.iter().enumerate() {
        if models[..i].iter().any(|o| o.id == m.id) {
            return Err(ServeError::Invalid(format!(
                "two models are named '{}' (each --model directory's name is its id)",
                m.id
            )));
        }
    }
    if opts.parallel == 0 {
        return Err(ServeError::Invalid("--parallel must be at least 1".into()));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("smolbit-http")
        .enable_all()
        .build()
        .map_err(|source| ServeError::Io {
            what: "cannot start the HTTP runtime".into(),
            source,
        })?;
    let addr = format!("{}:{}", opts.host, opts.port);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&addr))
        .map_err(|source| ServeError::Io {
            what: format!("cannot listen on {addr}"),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Io {
        what: format!("cannot listen on {addr}"),
        source,
    })?;
    let (jobs, queue) = std::sync::mpsc::sync_channel(opts.queue);
    let state = Arc::new(AppState {
        ids: models.iter().map(|m| m.id.clone()).collect(),
        jobs,
        queue: opts.queue,
        api_key: opts.api_key.clone(),
        next_id: AtomicU64::new(1),
        started: unix_now(),
    });
    let app = router(state, opts.max_body_bytes);
    let server = runtime.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
    });
    on_listening(local);
    // Until the server has stopped and dropped the queue's sender, and the last sequence ends.
    engine::run(&models, queue, opts.parallel);
    match runtime.block_on(server) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(ServeError::Io {
            what: "server".into(),
            source,
        }),
        Err(e) => Err(ServeError::Io {
            what: "server".into(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("[serve] shutting down: finishing open responses");
}

fn router(state: Arc<AppState>, max_body: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(list_models))
        .route("/health", get(health))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route (POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health)",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// An OpenAI-shaped error response.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        404 => "not_found_error",
        400..=499 => "invalid_request_error",
        503 => "server_busy",
        _ => "server_error",
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (status, axum::Json(body)).into_response()
}

fn job_error(e: &JobError) -> Response {
    error(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        e.code,
        &e.message,
    )
}

/// `Err(response)` unless the request carries the API key (when one is set).
#[allow(clippy::result_large_err)]
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "missing or wrong API key (send `Authorization: Bearer <key>`)",
        ))
    }
}

async fn health(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match authorize(&state, &headers) {
        Ok(()) => axum::Json(json!({"status": "ok", "models": state.ids})).into_response(),
        Err(r) => r,
    }
}

async fn list_models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return r;
    }
    let data: Vec<Value> = state
        .ids
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": state.started, "owned_by": "smolbit"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields of both request kinds that map onto generation settings. Fields smolbit does not
/// use (`user`, `logprobs`, penalties, ...) are accepted and ignored, as clients send them.
#[derive(Debug, Deserialize)]
struct Common {
    model: String,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    stop: Option<Stop>,
    seed: Option<i64>,
    n: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<ChatMessage>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// Message content: a string, or a list of parts of which the text ones count.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: PromptField,
    #[serde(flatten)]
    common: Common,
}

/// `prompt`: a string, or a list holding exactly one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptField {
    One(String),
    Many(Vec<String>),
}

fn bad(code: &str, message: impl AsRef<str>) -> Response {
    error(StatusCode::BAD_REQUEST, code, message.as_ref())
}

/// A JSON body, or the 4xx response that says what is wrong with it.
#[allow(clippy::result_large_err)]
fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Response> {
    let body = body.map_err(|r| {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request_too_large"
        } else {
            "invalid_body"
        };
        error(status, code, &r.body_text())
    })?;
    serde_json::from_slice(&body).map_err(|e| bad("invalid_json", format!("invalid request: {e}")))
}

/// Generation settings from the request (OpenAI's defaults: temperature 1, top_p 1), or a 400.
#[allow(clippy::result_large_err)]
fn params(c: &Common, default_max: usize) -> Result<GenerateParams, Response> {
    if let Some(n) = c.n
        && n != 1
    {
        return Err(bad(
            "invalid_n",
            format!("n = {n}: only n = 1 is supported"),
        ));
    }
    let max = match c.max_completion_tokens.or(c.max_tokens) {
        None => default_max,
        Some(m) if m >= 1 => usize::try_from(m).unwrap_or(usize::MAX),
        Some(m) => {
            return Err(bad(
                "invalid_max_tokens",
                format!("max_tokens = {m}: must be at least 1"),
            ));
        }
    };
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(bad(
            "invalid_temperature",
            format!("temperature = {temperature}: must be between 0 and 2"),
        ));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(bad(
            "invalid_top_p",
            format!("top_p = {top_p}: must be in (0, 1]"),
        ));
    }
    let stop = match &c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(bad("invalid_stop", "stop: at most 4 non-empty strings"));
    }
    let seed = match c.seed {
        Some(s) => s as u64,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    Ok(GenerateParams {
        max_new_tokens: max,
        sampling: SamplingParams {
            temperature: temperature as f32,
            top_p: top_p as f32,
            seed,
            ..SamplingParams::default()
        },
        stop,
    })
}

/// Queue a job; the receiver of its events, or the 4xx/503 response.
#[allow(clippy::result_large_err)]
fn submit(
    state: &AppState,
    id: &str,
    model: &str,
    prompt: Prompt,
    params: GenerateParams,
) -> Result<UnboundedReceiver<Event>, Response> {
    let Some(index) = state.ids.iter().position(|m| m == model) else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "model_not_found",
            &format!(
                "model '{model}' is not served here (served: {})",
                state.ids.join(", ")
            ),
        ));
    };
    let (tx, rx) = unbounded_channel();
    let job = Job {
        id: id.to_string(),
        model: index,
        prompt,
        params,
        events: tx,
        received: Instant::now(),
    };
    match state.jobs.try_send(job) {
        Ok(()) => Ok(rx),
        Err(TrySendError::Full(_)) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_busy",
            &format!(
                "the server is busy ({} requests already waiting); retry later",
                state.queue
            ),
        )),
        Err(TrySendError::Disconnected(_)) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )),
    }
}

/// Wait for the job to start: `Ok` once generation has begun, or the error response.
#[allow(clippy::result_large_err)]
async fn started(rx: &mut UnboundedReceiver<Event>) -> Result<(), Response> {
    match rx.recv().await {
        Some(Event::Started) => Ok(()),
        Some(Event::Done(Err(e))) => Err(job_error(&e)),
        _ => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the generation ended unexpectedly",
        )),
    }
}

fn finish_reason(s: StopReason) -> &'static str {
    match s {
        StopReason::MaxTokens | StopReason::ContextLength => "length",
        _ => "stop",
    }
}

fn usage(s: &Summary) -> Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.prompt_tokens + s.completion_tokens,
    })
}

/// Which endpoint an answer is for.
#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Text,
}

/// The common part of a response or chunk.
struct Answer {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
}

impl Answer {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    /// One streamed chunk carrying `text` (and the finish reason on the last one).
    fn chunk(&self, text: Option<&str>, first: bool, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Text => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        json!({
            "id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "choices": [choice],
        })
    }

    /// The whole, non-streamed answer.
    fn full(&self, text: &str, s: &Summary) -> Value {
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish_reason(s.finish),
            }),
            Kind::Text => json!({
                "index": 0, "text": text, "logprobs": null,
                "finish_reason": finish_reason(s.finish),
            }),
        };
        json!({
            "id": self.id, "object": self.object(false), "created": self.created,
            "model": self.model, "choices": [choice], "usage": usage(s),
        })
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The response for a started job: the collected answer, or an event stream.
async fn respond(answer: Answer, mut rx: UnboundedReceiver<Event>, stream: bool) -> Response {
    if !stream {
        let mut text = String::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Done(Ok(s)) => return axum::Json(answer.full(&text, &s)).into_response(),
                Event::Done(Err(e)) => return job_error(&e),
                Event::Started => {}
            }
        }
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the generation ended unexpectedly",
        );
    }
    // Streamed: a first chunk at once (the role, for chat), then one per piece of text, the
    // finish reason, usage when asked for, and `[DONE]`. Dropping the body (the client went
    // away) drops `rx`, which cancels the generation.
    let first = sse(&answer.chunk(matches!(answer.kind, Kind::Chat).then_some(""), true, None));
    let body = futures_util::stream::unfold(
        (rx, answer, Some(first)),
        |(mut rx, answer, mut pending)| async move {
            if let Some(b) = pending.take() {
                return Some((Ok::<Bytes, std::convert::Infallible>(b), (rx, answer, None)));
            }
            loop {
                match rx.recv().await? {
                    Event::Started => continue,
                    Event::Text(t) => {
                        let b = sse(&answer.chunk(Some(&t), false, None));
                        return Some((Ok(b), (rx, answer, None)));
                    }
                    Event::Done(Ok(s)) => {
                        let mut out = String::new();
                        let last = answer.chunk(None, false, Some(finish_reason(s.finish)));
                        out.push_str(&format!("data: {last}\n\n"));
                        if answer.include_usage {
                            let u = json!({
                                "id": answer.id, "object": answer.object(true),
                                "created": answer.created, "model": answer.model,
                                "choices": [], "usage": usage(&s),
                            });
                            out.push_str(&format!("data: {u}\n\n"));
                        }
                        out.push_str("data: [DONE]\n\n");
                        rx.close();
                        return Some((Ok(Bytes::from(out)), (rx, answer, None)));
                    }
                    Event::Done(Err(e)) => {
                        let v = json!({"error": {"message": e.message, "type": "server_error", "code": e.code}});
                        rx.close();
                        return Some((Ok(sse(&v)), (rx, answer, None)));
                    }
                }
            }
        },
    );
    let mut r = Response::new(Body::from_stream(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn new_id(state: &AppState, prefix: &str) -> String {
    format!("{prefix}-{}", state.next_id.fetch_add(1, Ordering::Relaxed))
}

/// A handler's result: the answer, or the error response that ends it early.
type Reply = Result<Response, Response>;

/// The key checked and the JSON body parsed: the start of every POST handler.
#[allow(clippy::result_large_err)]
fn authorized_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Response> {
    authorize(state, headers)?;
    parse_body(body)
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    chat(&state, &headers, body).await.unwrap_or_else(|r| r)
}

async fn chat(state: &AppState, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Reply {
    let req: ChatRequest = authorized_body(state, headers, body)?;
    if req.messages.is_empty() {
        return Err(bad(
            "invalid_messages",
            "messages: at least one message is needed",
        ));
    }
    let mut messages = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let text = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                    return Err(bad(
                        "invalid_content",
                        format!(
                            "messages[{i}]: content part of type '{}' is not supported (text only)",
                            p.kind
                        ),
                    ));
                }
                parts.iter().filter_map(|p| p.text.as_deref()).collect()
            }
        };
        let role = match m.role.as_str() {
            "developer" => "system",
            r @ ("system" | "user" | "assistant" | "tool") => r,
            other => {
                return Err(bad(
                    "invalid_role",
                    format!("messages[{i}]: unknown role '{other}'"),
                ));
            }
        };
        messages.push(Message::new(role, &text));
    }
    let params = params(&req.common, usize::MAX)?;
    let id = new_id(state, "chatcmpl");
    run_job(
        state,
        id,
        &req.common,
        Kind::Chat,
        Prompt::Chat(messages),
        params,
    )
    .await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    completion(&state, &headers, body)
        .await
        .unwrap_or_else(|r| r)
}

async fn completion(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let req: CompletionRequest = authorized_body(state, headers, body)?;
    let prompt = match req.prompt {
        PromptField::One(p) => p,
        PromptField::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptField::Many(v) => {
            return Err(bad(
                "invalid_prompt",
                format!("prompt: {} prompts given; send one per request", v.len()),
            ));
        }
    };
    // OpenAI's default for completions is 16 tokens.
    let params = params(&req.common, 16)?;
    let id = new_id(state, "cmpl");
    run_job(
        state,
        id,
        &req.common,
        Kind::Text,
        Prompt::Text(prompt),
        params,
    )
    .await
}

async fn run_job(
    state: &AppState,
    id: String,
    common: &Common,
    kind: Kind,
    prompt: Prompt,
    params: GenerateParams,
) -> Reply {
    let mut rx = submit(state, &id, &common.model, prompt, params)?;
    started(&mut rx).await?;
    let answer = Answer {
        kind,
        id,
        model: common.model.clone(),
        created: unix_now(),
        include_usage: common
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
    };
    Ok(respond(answer, rx, common.stream).await)
}
