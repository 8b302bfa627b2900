//! What the evaluator reads out of a model's answer: the code, and signs of degenerate text.

use serde::{Deserialize, Serialize};

/// The code in a model's answer.
///
/// 1. The first fenced block labelled `python`, `py` or `python3`;
/// 2. else the first fenced block with no label;
/// 3. else, unfenced: the text from the first line that starts (unindented) with `def `,
///    `class `, `async def `, `import ` or `from ` to the end;
/// 4. else the empty string (which is never valid code).
///
/// An unterminated fence counts up to the end of the text (the answer was cut by the token limit).
pub fn extract_code(text: &str) -> String {
    let blocks = fenced_blocks(text);
    if let Some((_, code)) = blocks
        .iter()
        .find(|(lang, _)| matches!(lang.as_str(), "python" | "py" | "python3"))
    {
        return code.clone();
    }
    if let Some((_, code)) = blocks.iter().find(|(lang, _)| lang.is_empty()) {
        return code.clone();
    }
    if !blocks.is_empty() {
        return String::new();
    }
    const STARTS: [&str; 5] = ["def ", "class ", "async def ", "import ", "from "];
    let lines: Vec<&str> = text.lines().collect();
    match lines
        .iter()
        .position(|l| STARTS.iter().any(|s| l.starts_with(s)))
    {
        Some(i) => lines[i..].join("\n") + "\n",
        None => String::new(),
    }
}

/// Whether `text` (an answer being generated) has closed a fenced block labelled `python`, `py`
/// or `python3`. Generation can stop there: [`extract_code`] reads the first such block.
pub fn python_block_closed(text: &str) -> bool {
    let mut open: Option<bool> = None;
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        match open {
            None => {
                let lang = rest.trim().to_lowercase();
                open = Some(matches!(lang.as_str(), "python" | "py" | "python3"));
            }
            Some(true) => return true,
            Some(false) => open = None,
        }
    }
    false
}

/// `(language, body)` of every ``` fenced block.
fn fenced_blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let lang = rest.trim().to_lowercase();
        let mut body = String::new();
        for l in lines.by_ref() {
            if l.trim_start().starts_with("```") {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        out.push((lang, body));
    }
    out
}

/// Degeneration flags of a generated text (whitespace-separated words).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Degeneration {
    /// The most consecutive repetitions of one n-gram (n = 1..=4 words), e.g. 3 for
    /// "method method method".
    pub longest_repeat_run: usize,
    /// Distinct word bigrams / all bigrams (1.0 when there are fewer than two words).
    pub distinct2: f64,
    /// The longest stretch, in characters, made of one unit of 1 to 16 characters repeated at
    /// least 4 times in a row (whitespace runs collapsed to one space first). Catches "......"
    /// and "umberlandumberland…", which have no repeated words.
    pub longest_periodic_chars: usize,
}

impl Degeneration {
    /// Whether the text looks degenerate: an n-gram repeated 4+ times in a row, few distinct
    /// bigrams in a long text, or a periodic stretch of 40+ characters (so a 40-character `=====`
    /// banner counts too).
    pub fn is_degenerate(&self, words: usize) -> bool {
        self.longest_repeat_run >= 4
            || (words >= 20 && self.distinct2 < 0.5)
            || self.longest_periodic_chars >= 40
    }
}

/// Measure [`Degeneration`] of `text`.
pub fn degeneration(text: &str) -> Degeneration {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut longest = usize::from(!words.is_empty());
    for n in 1..=4usize {
        if words.len() < 2 * n {
            break;
        }
        for start in 0..n {
            let mut run = 1;
            let mut i = start;
            while i + 2 * n <= words.len() {
                if words[i..i + n] == words[i + n..i + 2 * n] {
                    run += 1;
                    longest = longest.max(run);
                } else {
                    run = 1;
                }
                i += n;
            }
        }
    }
    let distinct2 = if words.len() < 2 {
        1.0
    } else {
        let pairs: Vec<(&str, &str)> = words.windows(2).map(|w| (w[0], w[1])).collect();
        let unique: std::collections::HashSet<_> = pairs.iter().collect();
        unique.len() as f64 / pairs.len() as f64
    };
    let collapsed: Vec<char> = {
        let mut out = Vec::with_capacity(text.len());
        for c in text.chars() {
            if c.is_whitespace() {
                if out.last() != Some(&' ') {
                    out.push(' ');
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    let mut longest_periodic_chars = 0;
    for p in 1..=16usize {
        // run = how many consecutive i have c[i] == c[i + p]; the stretch is run + p characters.
        let mut run = 0;
        for i in 0..collapsed.len().saturating_sub(p) {
            if collapsed[i] == collapsed[i + p] {
                run += 1;
                let stretch = run + p;
                if stretch >= 4 * p {
                    longest_periodic_chars = longest_periodic_chars.max(stretch);
                }
            } else {
                run = 0;
            }
        }
    }
    Degeneration {
        longest_repeat_run: longest,
        distinct2,
        longest_periodic_chars,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_code(text: &str, expect: &str) {
        assert_eq!(extract_code(text), expect, "from {text:?}");
    }

    #[test]
    fn code_extraction() {
        assert!(python_block_closed("Sure:\n```python\nx = 1\n```"));
        assert!(!python_block_closed("Sure:\n```python\nx = 1\n"));
        assert!(!python_block_closed("```\nx = 1\n```\n```py\ny = 2\n"));
        assert!(python_block_closed("```\nx = 1\n```\n```py\ny = 2\n```\n"));
        check_code(
            "Here:\n```python\ndef f():\n    return 1\n```\nDone.",
            "def f():\n    return 1\n",
        );
        check_code("```\nx = 1\n```\n```py\ny = 2\n```", "y = 2\n");
        check_code("```\nx = 1\n```", "x = 1\n");
        check_code("```text\nnot code\n```", "");
        check_code(
            "Sure.\ndef g(x):\n    return x\n\nThis returns x.",
            "def g(x):\n    return x\n\nThis returns x.\n",
        );
        check_code("```python\ndef cut_off(", "def cut_off(\n");
        check_code("```python\n```", "");
        check_code("......................", "");
        check_code("method method method method", "");
    }

    #[test]
    fn degeneration_flags() {
        let d = degeneration("method method method method method");
        assert_eq!(d.longest_repeat_run, 5);
        assert!(d.is_degenerate(5));
        let d = degeneration(&"you can use the function . ".repeat(5));
        assert_eq!(d.longest_repeat_run, 1, "5-word phrase: beyond n = 4");
        assert!(d.distinct2 < 0.5 && d.is_degenerate(30));
        let d = degeneration("the cat the cat the cat the cat");
        assert_eq!(d.longest_repeat_run, 4);
        let d = degeneration(&".".repeat(72));
        assert_eq!(d.longest_periodic_chars, 72);
        assert!(d.is_degenerate(1));
        let d = degeneration(&"umberland".repeat(24));
        assert_eq!((d.longest_repeat_run, d.longest_periodic_chars), (1, 216));
        assert!(d.is_degenerate(1));
        let fine = "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n    return a + b";
        let d = degeneration(fine);
        assert!(!d.is_degenerate(fine.split_whitespace().count()), "{d:?}");
        assert_eq!(degeneration("").longest_repeat_run, 0);
    }
}
