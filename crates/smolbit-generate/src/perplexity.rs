//! Perplexity over non-overlapping windows and, against a reference model, the mean KL divergence
//! `KL(P_ref || P_model)` and top-1 agreement of next-token distributions (llama-perplexity's KL
//! mode). Every position of a window but the first is scored; windows do not see each other.

use serde::Serialize;
use smolbit_model::{Model, ModelError, tensor_to_vec};

/// Scores of a model on a text.
#[derive(Debug, Clone, Serialize)]
pub struct PerplexityReport {
    /// Tokens of the text.
    pub text_tokens: usize,
    /// Predictions scored.
    pub scored: usize,
    /// Window length.
    pub ctx: usize,
    /// Windows evaluated.
    pub windows: usize,
    /// Mean negative log-likelihood (nats per token).
    pub nll: f64,
    /// `exp(nll)`.
    pub perplexity: f64,
    /// Mean `KL(P_ref || P)` in nats, with a reference model.
    pub kl_mean: Option<f64>,
    /// Fraction of positions where the argmax agrees with the reference's.
    pub top1_agreement: Option<f64>,
    /// The reference's own perplexity on the same windows.
    pub reference_perplexity: Option<f64>,
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// Evaluate `model` (and optionally `reference`) on `tokens` in windows of `ctx`.
pub fn evaluate(
    model: &Model,
    reference: Option<&Model>,
    tokens: &[u32],
    ctx: usize,
) -> Result<PerplexityReport, ModelError> {
    let vocab = model.config().vocab_size;
    let ctx = ctx.min(model.config().max_position_embeddings).max(2);
    let (mut nll, mut ref_nll, mut kl, mut agree, mut scored, mut windows) =
        (0f64, 0f64, 0f64, 0usize, 0usize, 0usize);
    for w in tokens.chunks(ctx).filter(|w| w.len() >= 2) {
        windows += 1;
        let logits = tensor_to_vec(model.forward(w, &mut model.new_cache())?);
        let ref_logits = match reference {
            Some(r) => Some(tensor_to_vec(r.forward(w, &mut r.new_cache())?)),
            None => None,
        };
        for i in 0..w.len() - 1 {
            let target = w[i + 1] as usize;
            let lp = log_softmax(&logits[i * vocab..(i + 1) * vocab]);
            nll -= lp[target];
            scored += 1;
            if let Some(rl) = &ref_logits {
                let row = &rl[i * vocab..(i + 1) * vocab];
                let lq = log_softmax(row);
                ref_nll -= lq[target];
                kl += lq
                    .iter()
                    .zip(&lp)
                    .map(|(q, p)| q.exp() * (q - p))
                    .sum::<f64>();
                agree += usize::from(
                    crate::argmax(row) == crate::argmax(&logits[i * vocab..(i + 1) * vocab]),
                );
            }
        }
    }
    let n = scored.max(1) as f64;
    Ok(PerplexityReport {
        text_tokens: tokens.len(),
        scored,
        ctx,
        windows,
        nll: nll / n,
        perplexity: (nll / n).exp(),
        kl_mean: reference.map(|_| kl / n),
        top1_agreement: reference.map(|_| agree as f64 / n),
        reference_perplexity: reference.map(|_| (ref_nll / n).exp()),
    })
}
