//! Scheme names: what `smolbit quantize --scheme` accepts.
//!
//! Grammar: `<kind>[:<granularity>][:cal][:a8|:af]`
//!
//! | part | values | meaning |
//! | --- | --- | --- |
//! | kind | `b158` | BitNet b1.58 absmean, one trit plane |
//! | | `planes1`, `planes2`, `planes3` | 1 to 3 trit planes, scales fitted by least squares |
//! | granularity | `tensor`, `row`, `g<N>` (32 ≤ N ≤ 256) | one scale per tensor, per output row, or per N input columns of a row |
//! | `cal` | | planes only: weight the least squares by calibration statistics (needs `--calibration`) |
//! | `s8` | | groups only: 8-bit group scales (int8 codes times one f32 scale per plane and row) instead of f16 |
//! | `gptq` | | planes with groups only: GPTQ error feedback with the calibration `XᵀX` (needs `--calibration`) |
//! | activations | `a8`, `af` | int8 per-token absmax activations, or float activations |
//!
//! Defaults: `b158` = `b158:tensor:a8` (as transformers' BitLinear); `planesK` = `planesK:g64:af`.

use std::fmt;

/// How scales are shared across a matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// One scale per plane for the whole matrix.
    Tensor,
    /// One scale per output row.
    Row,
    /// One scale per `n` consecutive input columns of each row (the last group may be shorter).
    Group(usize),
}

impl Granularity {
    /// Scales per plane for a `[rows, cols]` matrix.
    pub fn scales_per_plane(self, rows: usize, cols: usize) -> usize {
        match self {
            Granularity::Tensor => 1,
            Granularity::Row => rows,
            Granularity::Group(g) => rows * cols.div_ceil(g),
        }
    }

    /// Index of the scale of element `(r, c)` within a plane.
    pub fn scale_index(self, r: usize, c: usize, cols: usize) -> usize {
        match self {
            Granularity::Tensor => 0,
            Granularity::Row => r,
            Granularity::Group(g) => r * cols.div_ceil(g) + c / g,
        }
    }

    /// The column ranges of row `r` that share one scale, with that scale's index.
    pub fn segments(self, r: usize, cols: usize) -> Vec<(usize, std::ops::Range<usize>)> {
        match self {
            Granularity::Tensor => vec![(0, 0..cols)],
            Granularity::Row => vec![(r, 0..cols)],
            Granularity::Group(g) => (0..cols.div_ceil(g))
                .map(|i| (r * cols.div_ceil(g) + i, i * g..((i + 1) * g).min(cols)))
                .collect(),
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Granularity::Tensor => f.write_str("tensor"),
            Granularity::Row => f.write_str("row"),
            Granularity::Group(g) => write!(f, "g{g}"),
        }
    }
}

/// What the inputs of a quantized linear layer are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    /// int8 per-token absmax (W1.58A8).
    Int8,
    /// Left in floating point.
    Float,
}

/// A quantization scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    /// Trit planes (1 for b158).
    pub planes: usize,
    /// BitNet absmean (true) or least-squares planes (false).
    pub absmean: bool,
    /// Scale sharing.
    pub granularity: Granularity,
    /// Least squares weighted by calibration statistics.
    pub calibrated: bool,
    /// GPTQ error feedback (implies calibration data).
    pub gptq: bool,
    /// 8-bit group scales.
    pub scales8: bool,
    /// Activation handling.
    pub activations: Activations,
}

/// A scheme string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "scheme '{scheme}': {why} (examples: b158, b158:row, b158:g128, planes2:g64, planes2:g128:cal, planes3:g64)"
)]
pub struct SchemeError {
    /// The string given.
    pub scheme: String,
    /// What is wrong.
    pub why: String,
}

impl std::str::FromStr for Scheme {
    type Err = SchemeError;

    fn from_str(s: &str) -> Result<Self, SchemeError> {
        let err = |why: &str| SchemeError {
            scheme: s.to_string(),
            why: why.to_string(),
        };
        let mut parts = s.split(':');
        let kind = parts.next().unwrap_or_default();
        let (planes, absmean) = match kind {
            "b158" => (1, true),
            "planes1" => (1, false),
            "planes2" => (2, false),
            "planes3" => (3, false),
            _ => return Err(err("unknown kind (b158, planes1, planes2, planes3)")),
        };
        let mut scheme = Scheme {
            planes,
            absmean,
            granularity: if absmean {
                Granularity::Tensor
            } else {
                Granularity::Group(64)
            },
            calibrated: false,
            gptq: false,
            scales8: false,
            activations: if absmean {
                Activations::Int8
            } else {
                Activations::Float
            },
        };
        for p in parts {
            match p {
                "tensor" => scheme.granularity = Granularity::Tensor,
                "row" => scheme.granularity = Granularity::Row,
                "cal" if !absmean => scheme.calibrated = true,
                "cal" => {
                    return Err(err(
                        "b158 is absmean by definition; use planes1:...:cal for a calibrated single plane",
                    ));
                }
                "s8" if !absmean => scheme.scales8 = true,
                "s8" => {
                    return Err(err(
                        "b158 keeps its absmean scales; s8 is for planes schemes",
                    ));
                }
                "gptq" if !absmean => scheme.gptq = true,
                "gptq" => return Err(err("b158 is absmean by definition; use planes1:g64:gptq")),
                "a8" => scheme.activations = Activations::Int8,
                "af" => scheme.activations = Activations::Float,
                g if g.starts_with('g') => match g[1..].parse::<usize>() {
                    Ok(n) if (32..=256).contains(&n) => scheme.granularity = Granularity::Group(n),
                    _ => return Err(err("group size must be g32..g256")),
                },
                _ => return Err(err(&format!("unknown part '{p}'"))),
            }
        }
        if scheme.scales8 && !matches!(scheme.granularity, Granularity::Group(_)) {
            return Err(err("s8 applies to group scales (g32..g256)"));
        }
        if scheme.gptq && !matches!(scheme.granularity, Granularity::Group(_)) {
            return Err(err("gptq needs group scales (g32..g256)"));
        }
        Ok(scheme)
    }
}

impl Scheme {
    /// Whether quantizing needs calibration statistics.
    pub fn needs_calibration(&self) -> bool {
        self.calibrated || self.gptq
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.absmean {
            write!(f, "b158")?;
        } else {
            write!(f, "planes{}", self.planes)?;
        }
        write!(f, ":{}", self.granularity)?;
        if self.calibrated {
            write!(f, ":cal")?;
        }
        if self.gptq {
            write!(f, ":gptq")?;
        }
        if self.scales8 {
            write!(f, ":s8")?;
        }
        match self.activations {
            Activations::Int8 => write!(f, ":a8"),
            Activations::Float => write!(f, ":af"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Result<&str, &str>) {
        match (input.parse::<Scheme>(), expect) {
            (Ok(s), Ok(canonical)) => {
                assert_eq!(s.to_string(), canonical);
                assert_eq!(
                    canonical.parse::<Scheme>(),
                    Ok(s),
                    "canonical form parses back"
                );
            }
            (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{e}"),
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn scheme_names() {
        check("b158", Ok("b158:tensor:a8"));
        check("b158:row", Ok("b158:row:a8"));
        check("b158:g128", Ok("b158:g128:a8"));
        check("b158:g64:af", Ok("b158:g64:af"));
        check("planes2", Ok("planes2:g64:af"));
        check("planes2:g128:cal", Ok("planes2:g128:cal:af"));
        check("planes3:g64:a8", Ok("planes3:g64:a8"));
        check("planes1:row", Ok("planes1:row:af"));
        check("planes2:g128:gptq", Ok("planes2:g128:gptq:af"));
        check("planes2:g64:s8:cal", Ok("planes2:g64:cal:s8:af"));
        check("planes2:row:s8", Err("s8 applies to group scales"));
        check("planes2:row:gptq", Err("gptq needs group scales"));
        check("b158:cal", Err("absmean by definition"));
        check("planes4", Err("unknown kind"));
        check("planes2:g16", Err("g32..g256"));
        check("planes2:gx", Err("g32..g256"));
        check("b158:fast", Err("unknown part 'fast'"));
    }
}
