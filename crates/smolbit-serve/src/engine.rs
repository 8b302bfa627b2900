//! The generation engine: one loop, on the caller's thread (a thread of the rayon pool the
//! kernels use), owning the models. Jobs arrive over a bounded queue; up to `parallel`
//! sequences are active at once and advance one token each per round, the decoding ones of a
//! model as one batch (each weight read once per round for all of them), so concurrent requests
//! share the CPU token by token instead of waiting for each other to finish.
//!
//! Every job carries the sending half of an unbounded channel for its events. A client that
//! disconnects drops the receiving half: the loop sees the channel closed and cancels the
//! sequence at its next step (or skips it if it was still queued).

use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use smolbit_generate::{GenerateError, GenerateParams, Generator, Message, Sequence, StopReason};
use tokio::sync::mpsc::UnboundedSender;

/// What to generate after.
#[derive(Debug)]
pub(crate) enum Prompt {
    /// Messages through the model's chat template.
    Chat(Vec<Message>),
    /// Raw text (the tokenizer's own special tokens added, as `tokenizer(prompt)`).
    Text(String),
}

/// One request's work.
#[derive(Debug)]
pub(crate) struct Job {
    /// Request id, for the log.
    pub id: String,
    /// Index of the model.
    pub model: usize,
    pub prompt: Prompt,
    pub params: GenerateParams,
    pub events: UnboundedSender<Event>,
    pub received: Instant,
}

/// Why a job failed, as the HTTP layer reports it.
#[derive(Debug, Clone)]
pub(crate) struct JobError {
    /// HTTP status.
    pub status: u16,
    /// OpenAI's error `code`.
    pub code: &'static str,
    pub message: String,
}

impl From<GenerateError> for JobError {
    fn from(e: GenerateError) -> Self {
        let (status, code) = match &e {
            GenerateError::PromptTooLong { .. } => (400, "context_length_exceeded"),
            GenerateError::Template(_)
            | GenerateError::Params(_)
            | GenerateError::NoChatTemplate(_) => (400, "invalid_request"),
            GenerateError::Model(smolbit_model::ModelError::Empty) => (400, "invalid_request"),
            _ => (500, "internal_error"),
        };
        JobError {
            status,
            code,
            message: e.to_string(),
        }
    }
}

/// How a finished generation went.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish: StopReason,
}

/// What a job reports, in order: `Started` (or `Done(Err)`), text, then `Done`.
#[derive(Debug)]
pub(crate) enum Event {
    /// The prompt was accepted and generation begins.
    Started,
    /// Text that became final.
    Text(String),
    /// The end.
    Done(Result<Summary, JobError>),
}

/// A loaded model and its name in the API.
#[derive(Debug)]
pub struct ServedModel {
    /// The `model` field clients send.
    pub id: String,
    /// The model with its tokenizer and chat template.
    pub generator: Generator,
}

struct Active {
    job: Job,
    seq: Sequence,
    error: Option<JobError>,
}

/// Run jobs until every sender of `jobs` is gone and the last active sequence has ended.
pub(crate) fn run(models: &[ServedModel], jobs: Receiver<Job>, parallel: usize) {
    let mut active: Vec<Active> = Vec::new();
    let mut open = true;
    loop {
        // Admit new jobs: wait for one when idle, otherwise take what is already queued.
        while open && active.len() < parallel.max(1) {
            let job = if active.is_empty() {
                match jobs.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                }
            } else {
                match jobs.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            };
            if job.events.is_closed() {
                eprintln!("[serve] {}: client left while queued", job.id);
                continue;
            }
            match start(&models[job.model].generator, &job) {
                Ok(seq) => {
                    let _ = job.events.send(Event::Started);
                    active.push(Active {
                        job,
                        seq,
                        error: None,
                    });
                }
                Err(e) => {
                    let _ = job.events.send(Event::Done(Err(e)));
                }
            }
        }
        if active.is_empty() {
            if open {
                continue;
            }
            return;
        }
        // One token of every active sequence; those of one model past their prompt decode
        // together (`Generator::step_batch`: one pass over the weights for all of them).
        for a in &mut active {
            if a.job.events.is_closed() {
                a.seq.cancel();
            }
        }
        for (mi, m) in models.iter().enumerate() {
            let live = |a: &Active| a.job.model == mi && a.seq.stop_reason().is_none();
            let idx: Vec<usize> = (0..active.len()).filter(|&i| live(&active[i])).collect();
            if idx.is_empty() {
                continue;
            }
            let result = {
                let mut seqs: Vec<&mut Sequence> = active
                    .iter_mut()
                    .filter(|a| live(a))
                    .map(|a| &mut a.seq)
                    .collect();
                m.generator.step_batch(&mut seqs)
            };
            match result {
                Ok(chunks) => {
                    for (&i, chunk) in idx.iter().zip(chunks) {
                        let a = &mut active[i];
                        if let Some(c) = chunk
                            && !c.is_empty()
                            && a.job.events.send(Event::Text(c)).is_err()
                        {
                            a.seq.cancel();
                        }
                    }
                }
                Err(e) => {
                    // The step failed for the whole batch: each of its sequences ends with it.
                    let e = JobError::from(e);
                    for &i in &idx {
                        active[i].error = Some(e.clone());
                        active[i].seq.cancel();
                    }
                }
            }
        }
        // Report and drop the ended ones, keeping the others in arrival order.
        let (done, rest): (Vec<Active>, Vec<Active>) = active
            .into_iter()
            .partition(|a| a.seq.stop_reason().is_some());
        active = rest;
        for a in done {
            finish(&models[a.job.model], a);
        }
    }
}

fn start(g: &Generator, job: &Job) -> Result<Sequence, JobError> {
    let ids = match &job.prompt {
        Prompt::Chat(messages) => g.chat_prompt(messages, None)?,
        Prompt::Text(text) => g.encode(text, true)?,
    };
    Ok(g.start(&ids, &job.params)?)
}

fn finish(model: &ServedModel, a: Active) {
    let Active { job, seq, error } = a;
    let (p, c) = (seq.prompt_tokens(), seq.generated_tokens());
    let first = seq.first_token_at();
    let result = match (error, model.generator.finish(seq)) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(e.into()),
        (None, Ok((g, rest))) => {
            if !rest.is_empty() {
                let _ = job.events.send(Event::Text(rest));
            }
            let now = Instant::now();
            let ttft = first.map(|f| f.duration_since(job.received).as_secs_f64() * 1e3);
            let decode = first
                .map(|f| now.duration_since(f).as_secs_f64())
                .filter(|&s| s > 0.0 && c > 1)
                .map(|s| (c - 1) as f64 / s);
            eprintln!(
                "[serve] {} {}: {p} prompt + {c} generated tokens, ttft {} ms, {} tok/s, {}",
                job.id,
                model.id,
                ttft.map_or("-".into(), |t| format!("{t:.0}")),
                decode.map_or("-".into(), |d| format!("{d:.1}")),
                match g.stop_reason {
                    StopReason::Caller => "client gone",
                    StopReason::Eos | StopReason::StopString => "stop",
                    StopReason::MaxTokens | StopReason::ContextLength => "length",
                }
            );
            Ok(Summary {
                prompt_tokens: p,
                completion_tokens: c,
                finish: g.stop_reason,
            })
        }
    };
    if let Err(e) = &result {
        eprintln!("[serve] {} {}: error: {}", job.id, model.id, e.message);
    }
    let _ = job.events.send(Event::Done(result));
}
