//! Next-token selection with transformers' semantics: the repetition penalty, then temperature,
//! top-k, top-p and min-p in the order `generate` applies them (filtered logits become `-inf`),
//! then greedy argmax or a draw from the softmax with a seeded generator.

/// Sampling settings; the defaults are greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (transformers' `do_sample=False`).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; 1 disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 disables.
    pub min_p: f32,
    /// CTRL-style penalty on tokens already in the sequence; 1 disables.
    pub repetition_penalty: f32,
    /// Seed of the random generator (sampling only).
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Whether tokens are drawn at random (temperature > 0).
    pub fn is_sampling(&self) -> bool {
        self.temperature > 0.0
    }

    /// Reject values transformers would reject.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "temperature {} must be a finite number >= 0",
                self.temperature
            ));
        }
        if !(0.0..=1.0).contains(&self.top_p) || self.top_p == 0.0 {
            return Err(format!("top-p {} must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min-p {} must be in [0, 1]", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(format!(
                "repetition penalty {} must be > 0",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// `RepetitionPenaltyLogitsProcessor`: each token id in `history` has its logit divided by the
/// penalty when positive, multiplied when negative.
pub fn repetition_penalty(scores: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; scores.len()];
    for &id in history {
        let i = id as usize;
        if i < scores.len() && !seen[i] {
            seen[i] = true;
            let s = scores[i];
            scores[i] = if s < 0.0 { s * penalty } else { s / penalty };
        }
    }
}

/// `TopKLogitsWarper`: everything below the k-th largest score becomes `-inf` (ties are kept).
pub fn top_k(scores: &mut [f32], k: usize) {
    if k == 0 || k >= scores.len() {
        return;
    }
    // The k-th largest by selection, O(vocab), not a full sort per sampled token.
    let mut copy = scores.to_vec();
    let (_, &mut kth, _) = copy.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    for s in scores.iter_mut() {
        if *s < kth {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// `TopPLogitsWarper`: sort ascending, drop tokens whose cumulative probability is at most
/// `1 - top_p`, always keeping the most likely token.
pub fn top_p(scores: &mut [f32], p: f32) {
    if p >= 1.0 {
        return;
    }
    let probs = softmax(scores);
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut cum = 0f32;
    let last = order.len() - 1;
    for (rank, &i) in order.iter().enumerate() {
        cum += probs[i];
        if cum <= 1.0 - p && rank != last {
            scores[i] = f32::NEG_INFINITY;
        }
    }
}

/// `MinPLogitsWarper`: drop tokens whose probability is below `min_p` times the largest, always
/// keeping the most likely token.
pub fn min_p(scores: &mut [f32], min_p: f32) {
    if min_p <= 0.0 {
        return;
    }
    let probs = softmax(scores);
    let top = probs.iter().copied().fold(0f32, f32::max);
    let best = crate::argmax(scores);
    for (i, s) in scores.iter_mut().enumerate() {
        if probs[i] < min_p * top && i != best {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// All processors in transformers' order. With temperature 0 (greedy) only the repetition
/// penalty applies, as in `generate(do_sample=False)`.
pub fn process(scores: &mut [f32], history: &[u32], p: &SamplingParams) {
    repetition_penalty(scores, history, p.repetition_penalty);
    if !p.is_sampling() {
        return;
    }
    if p.temperature != 1.0 {
        for s in scores.iter_mut() {
            *s /= p.temperature;
        }
    }
    top_k(scores, p.top_k);
    top_p(scores, p.top_p);
    min_p(scores, p.min_p);
}

/// SplitMix64: a small, portable, seedable generator (same stream on every platform).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks tokens: processors, then argmax or a seeded draw.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    /// A sampler for these settings.
    pub fn new(params: SamplingParams) -> Self {
        let rng = Rng::new(params.seed);
        Sampler { params, rng }
    }

    /// Whether the next token is the logits' argmax whatever the history (greedy without a
    /// repetition penalty): then the model may pick it where the logits are
    /// (`Model::forward_argmax`).
    pub fn is_plain_argmax(&self) -> bool {
        !self.params.is_sampling() && self.params.repetition_penalty == 1.0
    }

    /// The next token given the logits and the sequence so far (prompt and generated tokens).
    pub fn next(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        process(logits, history, &self.params);
        if !self.params.is_sampling() {
            return crate::argmax(logits) as u32;
        }
        let probs = softmax(logits);
        let u = self.rng.next_f64() as f32;
        let mut cum = 0f32;
        let mut last_kept = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                cum += p;
                last_kept = i;
                if u < cum {
                    return i as u32;
                }
            }
        }
        last_kept as u32
    }
}
