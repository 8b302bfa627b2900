//! Incremental detokenization for streaming: text is released only when it is valid UTF-8 (a
//! multi-byte character split across tokens waits for its last byte) and cannot still turn into a
//! stop string, so the concatenated stream always equals the final text.

use tokenizers::Tokenizer;

/// Text produced so far by a generation, and what of it has been released.
#[derive(Debug)]
pub struct TextStream {
    tokens: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    text: String,
    emitted: usize,
    stops: Vec<String>,
    stopped: bool,
}

fn decode(tok: &Tokenizer, ids: &[u32]) -> Result<String, String> {
    tok.decode(ids, true).map_err(|e| e.to_string())
}

impl TextStream {
    /// A stream that ends at the first occurrence of any of `stops`.
    pub fn new(stops: Vec<String>) -> Self {
        TextStream {
            tokens: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            text: String::new(),
            emitted: 0,
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            stopped: false,
        }
    }

    /// Add a token; returns the text that may be shown now. After a stop string appeared,
    /// [`TextStream::stopped`] is true and the text ends right before it.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String, String> {
        if self.stopped {
            return Ok(String::new());
        }
        self.tokens.push(id);
        let prefix = decode(tok, &self.tokens[self.prefix_offset..self.read_offset])?;
        let full = decode(tok, &self.tokens[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            self.text.push_str(&full[prefix.len()..]);
            self.prefix_offset = self.read_offset;
            self.read_offset = self.tokens.len();
        }
        Ok(self.release())
    }

    fn release(&mut self) -> String {
        // Search only where a new stop string could start.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.emitted.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|p| p + from))
            .min()
        {
            self.text.truncate(pos);
            self.stopped = true;
            return self.take_to(pos);
        }
        // Hold back a tail that is a prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for n in (1..s.len().min(self.text.len() + 1)).rev() {
                if s.is_char_boundary(n) && self.text.ends_with(&s[..n]) {
                    hold = hold.max(n);
                    break;
                }
            }
        }
        let upto = self.text.len() - hold;
        self.take_to(upto)
    }

    fn take_to(&mut self, upto: usize) -> String {
        if upto <= self.emitted {
            return String::new();
        }
        let chunk = self.text[self.emitted..upto].to_string();
        self.emitted = upto;
        chunk
    }

    /// Release whatever was held back: text of trailing tokens that did not yet form whole
    /// characters, and a tail that could have begun a stop string (the generation ended).
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String, String> {
        if !self.stopped && self.read_offset < self.tokens.len() {
            let prefix = decode(tok, &self.tokens[self.prefix_offset..self.read_offset])?;
            let full = decode(tok, &self.tokens[self.prefix_offset..])?;
            if let Some(rest) = full.strip_prefix(&prefix) {
                self.text.push_str(rest);
            }
            self.read_offset = self.tokens.len();
            let released = self.release();
            if self.stopped {
                return Ok(released);
            }
            let upto = self.text.len();
            return Ok(released + &self.take_to(upto));
        }
        let upto = self.text.len();
        Ok(self.take_to(upto))
    }

    /// Whether a stop string was found.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The text so far (up to, not including, a stop string).
    pub fn text(&self) -> &str {
        &self.text
    }
}
