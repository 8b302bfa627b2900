//! The two training stages: block-wise reconstruction and end-to-end distillation, with the
//! progress display they share.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::net::{self, Frozen, Lin, NetBlock, SeqConsts, Shape};
use crate::{
    CurvePoint, DistillError, DistillOptions, Student, data, host, optim, perplexity, rss_mib,
    schedule, state,
};

/// What both stages share.
pub(crate) struct Run<'a> {
    pub opts: &'a DistillOptions,
    pub sh: &'a Shape,
    pub corpus: &'a data::Corpus,
    pub frozen: &'a Frozen,
    pub device: &'a Device,
    pub state_path: &'a Path,
    pub heldout: &'a [u32],
    pub eval_ctx: usize,
}

/// A tensor `[rows, cols]` from host values.
fn upload(v: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, [rows, cols]), device)
}

impl Run<'_> {
    fn check_stop(
        &self,
        student: &mut Student,
        meta: &state::Meta,
        adam: &optim::AdamW,
        steps_here: u64,
    ) -> Result<(), DistillError> {
        let interrupted = self.opts.interrupt.load(Ordering::SeqCst);
        let budget = self.opts.stop_after > 0 && steps_here >= self.opts.stop_after;
        if interrupted || budget {
            state::save(self.state_path, meta, student, adam)?;
            return Err(DistillError::Interrupted {
                step: meta.global_step,
                state: self.state_path.to_path_buf(),
            });
        }
        Ok(())
    }

    fn maybe_save(
        &self,
        student: &mut Student,
        meta: &state::Meta,
        adam: &optim::AdamW,
    ) -> Result<(), DistillError> {
        let every = self.opts.checkpoint_every;
        if every > 0 && meta.global_step.is_multiple_of(every) {
            state::save(self.state_path, meta, student, adam)?;
        }
        Ok(())
    }

    /// Stage 1: each block in turn reproduces the teacher block's output from its input.
    pub fn blockwise(
        &self,
        teacher: &[NetBlock],
        student: &mut Student,
        meta: &mut state::Meta,
        steps_here: &mut u64,
    ) -> Result<(), DistillError> {
        let st = &self.opts.settings;
        let (l, hsz) = (st.seq_len, self.sh.hidden);
        let nseq = st.blockwise_sequences.min(self.corpus.sequences()).max(1);
        // The cached set: the last `nseq` sequences of the training order (the end-to-end stage
        // starts from the first).
        let first = self.corpus.sequences() - nseq;
        let steps_per_block = st.blockwise_tokens / (st.batch * l) as u64;
        if steps_per_block == 0 {
            return Ok(());
        }
        let log = meta
            .blockwise
            .get_or_insert_with(|| state::BlockwiseLog {
                steps_per_block,
                ..Default::default()
            })
            .clone();
        if log.done {
            return Ok(());
        }
        let k = SeqConsts::new(self.sh, l, self.device);
        // Teacher inputs of the block being trained, `[nseq·L, hidden]` on the host.
        let mut x: Vec<f32> = Vec::with_capacity(nseq * l * hsz);
        for i in 0..nseq {
            let toks = self.corpus.sequence(first + i);
            x.extend(host(
                self.frozen.embed(toks, hsz, self.device).reshape([l * hsz]),
            ));
        }
        let teacher_block = |b: &NetBlock, x: &[f32]| -> Vec<f32> {
            let mut y = Vec::with_capacity(x.len());
            for chunk in x.chunks(st.batch * l * hsz) {
                let n = chunk.len() / hsz;
                let t = upload(chunk.to_vec(), n, hsz, self.device);
                y.extend(host(b.forward(t, n / l, self.sh, &k).reshape([n * hsz])));
            }
            y
        };
        let start_block = log.block;
        for tb in &teacher[..start_block] {
            x = teacher_block(tb, &x);
        }
        let mut bar = self.bar(
            steps_per_block * (teacher.len() - start_block) as u64,
            "block-wise",
        );
        for (b, tb) in teacher.iter().enumerate().skip(start_block) {
            let y = teacher_block(tb, &x);
            // The block's own contribution `y - x`: losses are relative to its mean square.
            let denom: f64 = y
                .iter()
                .zip(&x)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum::<f64>()
                / y.len() as f64;
            let mut adam = if meta
                .blockwise
                .as_ref()
                .is_some_and(|g| g.block == b && g.step > 0)
            {
                state::load_adam(self.state_path, &self.device.clone().inner())?
            } else {
                optim::AdamW::default()
            };
            let mut rng = data::Rng::new(st.seed ^ (b as u64 + 1));
            let mut order: Vec<usize> = (0..nseq).collect();
            let start_step = meta
                .blockwise
                .as_ref()
                .filter(|g| g.block == b)
                .map_or(0, |g| g.step);
            // Replay the order up to the resumed step.
            let mut pos = 0usize;
            let mut next_batch = |order: &mut Vec<usize>, rng: &mut data::Rng| {
                let mut idx = Vec::with_capacity(st.batch);
                for _ in 0..st.batch {
                    if pos.is_multiple_of(nseq) {
                        rng.shuffle(order);
                    }
                    idx.push(order[pos % nseq]);
                    pos += 1;
                }
                idx
            };
            for _ in 0..start_step {
                next_batch(&mut order, &mut rng);
            }
            let eval_loss = |student: &Student| -> f64 {
                let n = nseq.min(st.batch * 2);
                let rows = n * l;
                let xs = upload(x[..rows * hsz].to_vec(), rows, hsz, self.device);
                let ys = upload(y[..rows * hsz].to_vec(), rows, hsz, self.device);
                let out = student.blocks[b].forward(xs, n, self.sh, &k).detach();
                let mse = host(out.sub(ys).square().mean())
                    .first()
                    .copied()
                    .unwrap_or(0.0);
                f64::from(mse) / denom.max(1e-30)
            };
            if start_step == 0 {
                let e = eval_loss(student);
                if let Some(g) = meta.blockwise.as_mut() {
                    g.before.push(e);
                }
            }
            for step in start_step..steps_per_block {
                let step_start = Instant::now();
                let idx = next_batch(&mut order, &mut rng);
                let rows = st.batch * l;
                let mut xb = Vec::with_capacity(rows * hsz);
                let mut yb = Vec::with_capacity(rows * hsz);
                for &i in &idx {
                    xb.extend_from_slice(&x[i * l * hsz..(i + 1) * l * hsz]);
                    yb.extend_from_slice(&y[i * l * hsz..(i + 1) * l * hsz]);
                }
                let xs = upload(xb, rows, hsz, self.device);
                let ys = upload(yb, rows, hsz, self.device);
                let out = student.blocks[b].forward(xs, st.batch, self.sh, &k);
                let loss = out.sub(ys).square().mean().div_scalar(denom.max(1e-30));
                let grads = loss.backward();
                let value = f64::from(host(loss.detach()).first().copied().unwrap_or(0.0));
                let factor = schedule(step, steps_per_block, st.warmup);
                let mut params = block_params(&mut student.blocks[b], b, student.train_norms);
                adam.step(
                    &mut params,
                    &grads,
                    st.blockwise_lr * factor,
                    st.blockwise_scale_lr * factor,
                    st.weight_decay,
                    st.clip,
                );
                drop(params);
                student.blocks[b].refresh();
                meta.global_step += 1;
                *steps_here += 1;
                if let Some(g) = meta.blockwise.as_mut() {
                    g.block = b;
                    g.step = step + 1;
                    g.curve.push(CurvePoint {
                        step: meta.global_step,
                        tokens: meta.global_step * (st.batch * l) as u64,
                        value,
                    });
                    g.seconds += step_start.elapsed().as_secs_f64();
                }
                bar.inc(
                    1,
                    &format!("block {b} loss {value:.4}, RSS {:.0} MiB", rss_mib()),
                );
                self.maybe_save(student, meta, &adam)?;
                self.check_stop(student, meta, &adam, *steps_here)?;
            }
            let e = eval_loss(student);
            if let Some(g) = meta.blockwise.as_mut() {
                g.after.push(e);
                g.block = b + 1;
                g.step = 0;
            }
            x = y;
        }
        if let Some(g) = meta.blockwise.as_mut() {
            g.done = true;
        }
        bar.finish();
        Ok(())
    }

    /// Stage 2: end-to-end KL divergence to the teacher's next-token distribution.
    pub fn e2e(
        &self,
        teacher: &[NetBlock],
        student: &mut Student,
        meta: &mut state::Meta,
        steps_here: &mut u64,
    ) -> Result<(), DistillError> {
        let st = &self.opts.settings;
        let l = st.seq_len;
        let per_step = (st.batch * st.accumulate * l) as u64;
        let total = st.tokens / per_step;
        let log = meta.e2e.get_or_insert_with(|| state::E2eLog {
            steps: total,
            ..Default::default()
        });
        let start = log.step;
        if start >= total {
            return Ok(());
        }
        let mut adam = if start > 0 {
            state::load_adam(self.state_path, &self.device.clone().inner())?
        } else {
            optim::AdamW::default()
        };
        let k = SeqConsts::new(self.sh, l, self.device);
        let tau = st.temperature;
        let t0 = Instant::now();
        let mut bar = self.bar(total - start, "end to end");
        for step in start..total {
            let step_start = Instant::now();
            let mut acc: Option<Vec<Tensor<1>>> = None;
            let mut loss_sum = 0f64;
            for micro in 0..st.accumulate {
                let base =
                    ((step * st.accumulate as u64 + micro as u64) * st.batch as u64) as usize;
                let mut toks = Vec::with_capacity(st.batch * l);
                for i in 0..st.batch {
                    toks.extend_from_slice(self.corpus.sequence(base + i));
                }
                let t_logits = net::forward_logits(
                    teacher,
                    self.frozen,
                    self.sh,
                    &toks,
                    st.batch,
                    &k,
                    self.device,
                )
                .detach()
                .div_scalar(tau);
                let t_logp = log_softmax(t_logits, 1);
                let t_p = t_logp.clone().exp();
                let s_logits = net::forward_logits(
                    &student.blocks,
                    self.frozen,
                    self.sh,
                    &toks,
                    st.batch,
                    &k,
                    self.device,
                )
                .div_scalar(tau);
                let s_logp = log_softmax(s_logits, 1);
                let kl = t_p
                    .mul(t_logp.sub(s_logp))
                    .sum_dim(1)
                    .mean()
                    .mul_scalar(tau * tau / st.accumulate as f64);
                let grads = kl.backward();
                loss_sum += f64::from(host(kl.detach()).first().copied().unwrap_or(0.0));
                let mut params = student.params();
                let g = optim::flat_grads(&mut params, &grads);
                acc = Some(match acc {
                    None => g,
                    Some(a) => a.into_iter().zip(g).map(|(a, b)| a.add(b)).collect(),
                });
            }
            let factor = schedule(step, total, st.warmup);
            let mut params = student.params();
            adam.step_flat(
                &mut params,
                acc.unwrap_or_default(),
                st.lr * factor,
                st.scale_lr * factor,
                st.weight_decay,
                st.clip,
            );
            drop(params);
            student.refresh();
            meta.global_step += 1;
            *steps_here += 1;
            let step_seconds = step_start.elapsed().as_secs_f64();
            let tokens_done = (step + 1) * per_step;
            let evaluate = self.opts.eval_every > 0
                && (step + 1).is_multiple_of(self.opts.eval_every)
                && step + 1 < total
                && !self.heldout.is_empty();
            let ppl = evaluate.then(|| {
                perplexity(
                    &student.blocks,
                    self.frozen,
                    self.sh,
                    self.heldout,
                    self.eval_ctx,
                    self.device,
                )
            });
            if let Some(g) = meta.e2e.as_mut() {
                g.step = step + 1;
                g.curve.push(CurvePoint {
                    step: step + 1,
                    tokens: tokens_done,
                    value: loss_sum,
                });
                if let Some(p) = ppl {
                    g.perplexity.push(CurvePoint {
                        step: step + 1,
                        tokens: tokens_done,
                        value: p,
                    });
                }
                g.seconds += step_seconds;
            }
            let rate = ((step + 1 - start) * per_step) as f64 / t0.elapsed().as_secs_f64();
            let msg = match ppl {
                Some(p) => format!(
                    "KL {loss_sum:.4}, held-out perplexity {p:.2}, {rate:.0} tok/s, RSS {:.0} MiB",
                    rss_mib()
                ),
                None => format!(
                    "KL {loss_sum:.4}, {rate:.0} tok/s, RSS {:.0} MiB",
                    rss_mib()
                ),
            };
            bar.inc(1, &msg);
            self.maybe_save(student, meta, &adam)?;
            self.check_stop(student, meta, &adam, *steps_here)?;
        }
        if let Some(g) = meta.e2e.as_mut() {
            g.tokens_per_second = if g.seconds > 0.0 {
                (total * per_step) as f64 / g.seconds
            } else {
                0.0
            };
        }
        bar.finish();
        Ok(())
    }

    fn bar(&self, total: u64, what: &str) -> Progress {
        Progress::new(total, what, self.opts.progress)
    }
}

/// The trained tensors of one block.
/// A block's trained tensors with their names: each student linear's latent weights and
/// scales, then (with `norms`) the two RMSNorm weights under their HF names.
pub(crate) fn block_params(
    b: &mut NetBlock,
    layer: usize,
    norms: bool,
) -> Vec<(String, optim::ParamRef<'_>)> {
    let mut out = Vec::new();
    for (j, l) in b.lins.iter_mut().enumerate() {
        if let Lin::Student(s) = l {
            let base = net::linear_name(layer, j);
            let base = base.trim_end_matches(".weight").to_string();
            out.push((format!("{base}.latent"), optim::ParamRef::M(&mut s.w)));
            out.push((format!("{base}.scales"), optim::ParamRef::S(&mut s.s)));
        }
    }
    if norms {
        out.push((
            format!("model.layers.{layer}.input_layernorm.weight"),
            optim::ParamRef::N(&mut b.attn_norm),
        ));
        out.push((
            format!("model.layers.{layer}.post_attention_layernorm.weight"),
            optim::ParamRef::N(&mut b.mlp_norm),
        ));
    }
    out
}

/// A progress bar on stderr: steps, rate, ETA and the latest loss; a line per step when
/// stderr is not a terminal (logs).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: Option<(String, u64, u64, Instant)>,
}

impl Progress {
    fn new(total: u64, what: &str, show: bool) -> Self {
        use std::io::IsTerminal;
        if show && !std::io::stderr().is_terminal() {
            return Progress {
                bar: None,
                lines: Some((what.to_string(), 0, total, Instant::now())),
            };
        }
        let bar = show.then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} steps, ETA {eta}: {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(what.to_string());
            b
        });
        Progress { bar, lines: None }
    }

    fn inc(&mut self, n: u64, msg: &str) {
        if let Some((what, done, total, t0)) = &mut self.lines {
            *done += n;
            let per = t0.elapsed().as_secs_f64() / *done as f64;
            eprintln!(
                "{what} {done}/{total} ({per:.1} s/step, ETA {:.0} s): {msg}",
                per * total.saturating_sub(*done) as f64
            );
        }
        if let Some(b) = &self.bar {
            b.set_message(msg.to_string());
            b.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}
