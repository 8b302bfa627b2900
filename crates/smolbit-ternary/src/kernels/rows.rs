//! The parallel row machinery every format's product runs on: chunks of rows on rayon's pool,
//! each writing its outputs straight into the `[tokens, rows]` result.

use rayon::prelude::*;

/// Run `f(row, outputs for each token)` over `rows` in parallel on rayon's pool; returns
/// `[tokens, rows]`.
pub(super) fn par_rows(
    rows: usize,
    tokens: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    par_row_chunks(rows, tokens, 1, |chunk| {
        let mut buf = vec![0f32; tokens];
        for ri in 0..chunk.rows() {
            f(chunk.first_row() + ri, &mut buf);
            for (t, &v) in buf.iter().enumerate() {
                chunk.set(ri, t, v);
            }
        }
    })
}

/// Run `f` over chunks of rows (multiples of `align`) in parallel on rayon's pool; each chunk
/// writes its rows' outputs straight into the `[tokens, rows]` result (before, chunks filled a
/// `[rows, tokens]` buffer that was then transposed: the transpose and the zeroing of the extra
/// buffer took about a seventh of 135M prefill time under perf).
pub(super) fn par_row_chunks(
    rows: usize,
    tokens: usize,
    align: usize,
    f: impl Fn(&mut RowChunk<'_>) + Sync,
) -> Vec<f32> {
    let mut y = vec![0f32; rows * tokens];
    // Chunks big enough to amortize scheduling, small enough to balance two to 64 threads.
    let chunk = (rows / (rayon::current_num_threads() * 8)).clamp(8, 256);
    let chunk = chunk.div_ceil(align) * align;
    let out = Output {
        ptr: y.as_mut_ptr(),
        rows,
        tokens,
    };
    (0..rows.div_ceil(chunk)).into_par_iter().for_each(|ci| {
        let first = ci * chunk;
        f(&mut RowChunk {
            out: &out,
            first,
            at: first,
            rows: chunk.min(rows - first),
        });
    });
    y
}

/// Run `f` on rows `range` alone, on the calling thread, into a `[tokens, range.len()]` result
/// (a part of a product that threads of a team split among themselves).
pub(super) fn row_range(
    range: std::ops::Range<usize>,
    tokens: usize,
    f: impl FnOnce(&mut RowChunk<'_>),
) -> Vec<f32> {
    let rows = range.len();
    let mut y = vec![0f32; rows * tokens];
    let out = Output {
        ptr: y.as_mut_ptr(),
        rows,
        tokens,
    };
    f(&mut RowChunk {
        out: &out,
        first: range.start,
        at: 0,
        rows,
    });
    y
}

/// A `[tokens, rows]` product output shared by the row chunks that fill it.
struct Output {
    ptr: *mut f32,
    rows: usize,
    tokens: usize,
}

// SAFETY: the chunks write through `ptr` only via `RowChunk::set`, each to its own rows.
unsafe impl Sync for Output {}

/// Rows `first..first + rows` of a matrix, written to rows `at..at + rows` of an [`Output`]:
/// their only writer (chunks never overlap).
pub(super) struct RowChunk<'a> {
    out: &'a Output,
    first: usize,
    at: usize,
    rows: usize,
}

impl RowChunk<'_> {
    pub(super) fn first_row(&self) -> usize {
        self.first
    }

    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    /// Outputs of the chunk's row `ri` for tokens `t0..t0 + v.len()`: `v[i] · scale[i]`.
    #[inline]
    pub(super) fn set_tokens(&mut self, ri: usize, t0: usize, v: &[f32], scale: &[f32]) {
        assert!(ri < self.rows && t0 + v.len() <= self.out.tokens && scale.len() == v.len());
        let p = self.out.ptr;
        for (i, (v, s)) in v.iter().zip(scale).enumerate() {
            // SAFETY: as in `set`: token t0 + i < tokens (asserted), row at + ri of this
            // chunk alone.
            unsafe { *p.add((t0 + i) * self.out.rows + self.at + ri) = v * s };
        }
    }

    /// The chunk's outputs for tokens `t0..t0 + N`, each its rows in order: disjoint slices
    /// (tokens' rows do not overlap, and the rows are this chunk's alone). For the x86-64
    /// kernels that write whole sets of rows.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn token_rows<const N: usize>(&mut self, t0: usize) -> [&mut [f32]; N] {
        assert!(t0 + N <= self.out.tokens);
        // SAFETY: for t0 + t < tokens (asserted), `(t0 + t) * out.rows + at .. + rows` lies inside the
        // `tokens * rows` buffer (`at + rows <= out.rows`), the N ranges are disjoint, no other
        // chunk writes them, and the slices borrow `self` mutably, so `set` cannot alias them.
        std::array::from_fn(|t| unsafe {
            std::slice::from_raw_parts_mut(
                self.out.ptr.add((t0 + t) * self.out.rows + self.at),
                self.rows,
            )
        })
    }

    /// Output of the chunk's row `ri` for token `t`.
    #[inline]
    pub(super) fn set(&mut self, ri: usize, t: usize, v: f32) {
        assert!(ri < self.rows && t < self.out.tokens);
        // SAFETY: `at + rows <= out.rows` (par_row_chunks, row_range) and the bounds above
        // keep the index inside the `tokens * rows` buffer, which outlives every chunk; row
        // `at + ri` belongs to this chunk alone, so no other thread writes the element.
        unsafe { *self.out.ptr.add(t * self.out.rows + self.at + ri) = v };
    }
}
