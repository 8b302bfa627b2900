//! One decode step of a few sequences by a team of threads (`smolbit serve`'s batches on a
//! packed ternary model, [`crate::Model::forward_last_batch`]).
//!
//! The general host path runs every product as its own parallel call on rayon's pool: about
//! five per layer, each a fork and a join that wake the pool (microseconds apiece),
//! with the work between them (norms, activation quantization, the GLU, the residual adds) on
//! one thread while the others wait. At four sequences of the 135M model that serial share was a
//! quarter of the step (`--threads 1` against `--threads 2`). Here each of `n` threads runs the
//! whole step: it keeps its own copy of the hidden rows (a few KB) and computes the cheap
//! per-token work itself, identically; each product's rows are split among the threads
//! ([`PackedTernary::matmul_i8_rows`]), each publishes its part and, after a spinning barrier,
//! reads everyone's; attention runs per sequence on the thread that owns the sequence's cache.
//! The results are the same bits as the general path's (same kernels, same per-token
//! quantization, same order of f32 operations per row).

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use smolbit_ternary::attention::Heads;
use smolbit_ternary::kernels::{Isa, PackedTernary, QuantizedTable};

use crate::layers::{Block, Fused, HostKv, KvCache, Linear, cache_and_attend, host_glu};

/// Sequences up to which a step runs on a team: 16 where the packed kernels take any number of
/// tokens register-blocked (AVX-512 VNNI), else 4 (beyond, the general path's tiles are faster
/// than the one-token kernels a team's share would run token by token).
pub(crate) fn max_seqs() -> usize {
    if Isa::detect() == Isa::Avx512Vnni {
        16
    } else {
        4
    }
}

/// A layer's packed weights, when every linear is packed ternary with int8 activations.
pub(crate) struct TeamLayer<'a> {
    block: &'a Block,
    qkv: &'a PackedTernary,
    wo: &'a PackedTernary,
    gate_up: &'a PackedTernary,
    down: &'a PackedTernary,
}

impl<'a> TeamLayer<'a> {
    /// The layer's weights, or `None` when a linear is anything but packed ternary with int8
    /// activations (q, k, v and gate, up stacked).
    pub(crate) fn of(block: &'a Block) -> Option<Self> {
        let packed = |l: &'a Linear| match l {
            Linear::Ternary { w, act8: true } => Some(w),
            _ => None,
        };
        let stacked = |f: &'a Fused| match f {
            Fused::Stacked(l, _) => packed(l),
            Fused::Separate(_) => None,
        };
        Some(TeamLayer {
            block,
            qkv: stacked(&block.qkv)?,
            wo: packed(&block.wo)?,
            gate_up: stacked(&block.gate_up)?,
            down: packed(&block.down)?,
        })
    }
}

/// A barrier for a team that meets every few microseconds: arrivals count up, the last one
/// resets the count and moves the generation on; the others spin (then yield) until it moves.
struct Barrier {
    n: usize,
    count: AtomicUsize,
    generation: AtomicUsize,
}

impl Barrier {
    fn new(n: usize) -> Self {
        Barrier {
            n,
            count: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.count.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            spins += 1;
            if spins.is_multiple_of(64) {
                // Every few microseconds, let a descheduled member (or anything else waiting
                // for this core) run.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Where the members publish their parts: two sets of slots, used in alternate phases. A member
/// reads phase `k`'s parts right after phase `k`'s barrier and before it arrives at phase
/// `k + 1`'s, so by the time anyone writes phase `k + 2`'s part into the same slot (after phase
/// `k + 1`'s barrier) every reader of phase `k` is done.
struct Board {
    barrier: Barrier,
    slots: [Vec<RwLock<Vec<f32>>>; 2],
}

/// One member's view: its index, the team size and its phase count.
struct Member<'b> {
    board: &'b Board,
    i: usize,
    n: usize,
    phase: usize,
}

impl Member<'_> {
    /// Publish `part`, wait for everyone's, and `read` all parts (in member order).
    fn exchange<R>(&mut self, part: Vec<f32>, read: impl FnOnce(&[&[f32]]) -> R) -> R {
        let slots = &self.board.slots[self.phase % 2];
        self.phase += 1;
        *slots[self.i].write().expect("team slot") = part;
        self.board.barrier.wait();
        let guards: Vec<_> = slots.iter().map(|s| s.read().expect("team slot")).collect();
        let parts: Vec<&[f32]> = guards.iter().map(|g| g.as_slice()).collect();
        read(&parts)
    }

    /// This member's share of `total` rows (in multiples of four, the kernels' row sets).
    fn share(&self, total: usize) -> Range<usize> {
        share(total, self.i, self.n)
    }

    /// `[tokens, w.rows]`: this member's rows of `x w`, exchanged for everyone's.
    fn product(&mut self, isa: Isa, w: &PackedTernary, x: &[f32], tokens: usize) -> Vec<f32> {
        let part = w.matmul_i8_rows(isa, x, tokens, self.share(w.rows));
        self.exchange(part, |parts| join_rows(parts, tokens, w.rows))
    }
}

/// Member `i` of `n`'s share of `total` rows.
fn share(total: usize, i: usize, n: usize) -> Range<usize> {
    let per = total.div_ceil(n).div_ceil(4) * 4;
    let start = (i * per).min(total);
    start..(start + per).min(total)
}

/// Parts `[tokens, len_i]` (consecutive row ranges) side by side: `[tokens, rows]`.
fn join_rows(parts: &[&[f32]], tokens: usize, rows: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(tokens * rows);
    for t in 0..tokens {
        for p in parts {
            let len = p.len() / tokens.max(1);
            out.extend_from_slice(&p[t * len..][..len]);
        }
    }
    out
}

/// A sequence's part of a step: its index in the batch, its cache, and its rotary tables.
pub(crate) struct TeamSeq<'c> {
    pub(crate) index: usize,
    pub(crate) cache: &'c mut KvCache,
    pub(crate) past: usize,
    pub(crate) rope: (Vec<f32>, Vec<f32>),
}

/// What the step needs besides the sequences.
pub(crate) struct Step<'a> {
    pub(crate) layers: Vec<TeamLayer<'a>>,
    pub(crate) norm: &'a crate::layers::Norm,
    pub(crate) head: &'a dyn QuantizedTable,
    /// The embedding rows of the step's tokens, `[b, hidden]`.
    pub(crate) x: Vec<f32>,
}

/// One team at a time in the process: members wait for each other in barriers, so two teams
/// sharing rayon's workers could each hold a worker the other needs.
static ONE_TEAM: Mutex<()> = Mutex::new(());

/// One step of `seqs.len()` sequences (one token each) on `n` of rayon's threads (`n` at most
/// the pool's size): each sequence's next-token logits, in batch order; `None`, touching
/// nothing, when another team is running (the caller then takes the general path).
pub(crate) fn run(step: &Step<'_>, seqs: Vec<TeamSeq<'_>>, n: usize) -> Option<Vec<Vec<f32>>> {
    let _one = ONE_TEAM.try_lock().ok()?;
    assert!((1..=rayon::current_num_threads()).contains(&n));
    let b = seqs.len();
    let board = Board {
        barrier: Barrier::new(n),
        slots: [
            (0..n).map(|_| RwLock::new(Vec::new())).collect(),
            (0..n).map(|_| RwLock::new(Vec::new())).collect(),
        ],
    };
    // Sequences dealt out in turn: member i owns sequences i, i + n, ...
    let mut owned: Vec<Vec<TeamSeq<'_>>> = (0..n).map(|_| Vec::new()).collect();
    for s in seqs {
        owned[s.index % n].push(s);
    }
    let mut logits: Vec<Vec<f32>> = vec![Vec::new(); b];
    // Member 0 on this thread, the others as jobs on rayon's pool: each is taken by an idle
    // worker (woken for it), and none is left waiting, as this is the only team and n is at
    // most the pool's size.
    let mut outs: Vec<Vec<(usize, Vec<f32>)>> = (0..n).map(|_| Vec::new()).collect();
    rayon::scope(|scope| {
        let mut owned = owned.into_iter();
        let first = owned.next().unwrap_or_default();
        let (o0, rest) = outs.split_first_mut().expect("n >= 1");
        for ((k, mine), out) in owned.enumerate().zip(rest.iter_mut()) {
            let board = &board;
            scope.spawn(move |_| *out = member(step, board, k + 1, n, b, mine));
        }
        *o0 = member(step, &board, 0, n, b, first);
    });
    for (s, l) in outs.into_iter().flatten() {
        logits[s] = l;
    }
    Some(logits)
}

/// Member `i`'s whole step; returns the logits of the sequences it owns.
fn member(
    step: &Step<'_>,
    board: &Board,
    i: usize,
    n: usize,
    b: usize,
    mut mine: Vec<TeamSeq<'_>>,
) -> Vec<(usize, Vec<f32>)> {
    let isa = Isa::detect();
    // Everyone checks in before any work. Member 0 runs on the calling thread with the others'
    // jobs in its own rayon queue until idle workers take them; a rayon join in its work (the
    // activation quantization splits from 8 tokens, attention from long contexts) could pop one
    // of those jobs onto this thread, and that member would then wait at a barrier for this
    // one forever. After this barrier every member is running, so no member job is left queued.
    board.barrier.wait();
    let mut me = Member {
        board,
        i,
        n,
        phase: 0,
    };
    let mut x = step.x.clone();
    for (li, l) in step.layers.iter().enumerate() {
        let blk = l.block;
        let (nh, nkv, d) = blk.heads();
        let (qw, kw) = (nh * d, nkv * d);
        let heads = Heads {
            n_heads: nh,
            n_kv: nkv,
            d,
        };
        let mut h = x.clone();
        blk.attn_norm.apply_host(&mut h);
        let qkv = me.product(isa, l.qkv, &h, b);
        // Attention of the sequences this member owns, against their caches.
        let mut part = Vec::with_capacity(mine.len() * qw);
        for s in &mut mine {
            let row = &qkv[s.index * (qw + 2 * kw)..][..qw + 2 * kw];
            let (mut q, mut k) = (row[..qw].to_vec(), row[qw..qw + kw].to_vec());
            let v = &row[qw + kw..];
            if blk.use_rope {
                crate::host::apply_rope(&mut q, nh, d, &s.rope.0, &s.rope.1);
                crate::host::apply_rope(&mut k, nkv, d, &s.rope.0, &s.rope.1);
            }
            part.extend(match s.cache.host_mut(li) {
                HostKv::F32(keys, values) => {
                    cache_and_attend(keys, values, &q, &k, v, 1, s.past, heads)
                }
                HostKv::F16(keys, values) => {
                    cache_and_attend(keys, values, &q, &k, v, 1, s.past, heads)
                }
            });
        }
        // Everyone's attention rows, back in batch order.
        let mut attn = me.exchange(part, |parts| {
            let mut attn = vec![0f32; b * qw];
            for (m, p) in parts.iter().enumerate() {
                for (j, row) in p.chunks_exact(qw).enumerate() {
                    attn[(m + j * n) * qw..][..qw].copy_from_slice(row);
                }
            }
            attn
        });
        if let Some(sn) = &blk.attn_sub_norm {
            sn.apply_host(&mut attn);
        }
        let o = me.product(isa, l.wo, &attn, b);
        for (xv, ov) in x.iter_mut().zip(&o) {
            *xv += ov;
        }
        // The MLP: this member's features of gate and up (rows j and f + j of the stack), the
        // GLU on them, everyone's features, the down projection.
        let mut h = x.clone();
        blk.mlp_norm.apply_host(&mut h);
        let f = l.gate_up.rows / 2;
        let gate_rows = me.share(f);
        let w = gate_rows.len();
        let up_rows = f + gate_rows.start..f + gate_rows.end;
        let [gate, up] = l
            .gate_up
            .matmul_i8_row_sets(isa, &h, b, [gate_rows, up_rows]);
        let mut gu = Vec::with_capacity(b * 2 * w);
        for t in 0..b {
            gu.extend_from_slice(&gate[t * w..][..w]);
            gu.extend_from_slice(&up[t * w..][..w]);
        }
        let mut inner = me.exchange(host_glu(&gu, w, blk.act), |parts| join_rows(parts, b, f));
        if let Some(sn) = &blk.ffn_sub_norm {
            sn.apply_host(&mut inner);
        }
        let y = me.product(isa, l.down, &inner, b);
        for (xv, yv) in x.iter_mut().zip(&y) {
            *xv += yv;
        }
    }
    step.norm.apply_host(&mut x);
    let vocab = step.head.rows();
    let part = step
        .head
        .matmul_rows(isa, &x, b, me.share(vocab))
        .expect("the team runs only on heads with a rows path");
    me.exchange(part, |parts| {
        mine.iter()
            .map(|s| {
                let mut l = Vec::with_capacity(vocab);
                for p in parts {
                    let len = p.len() / b;
                    l.extend_from_slice(&p[s.index * len..][..len]);
                }
                (s.index, l)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_rows_once_in_sets_of_four() {
        for total in [1usize, 4, 7, 576, 1537, 49_152] {
            for n in 1..=5 {
                let parts: Vec<_> = (0..n).map(|i| share(total, i, n)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[n - 1].end, total, "{total} rows, {n}");
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len().is_multiple_of(4) || w[1].is_empty());
                }
            }
        }
    }
}
