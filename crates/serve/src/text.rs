//! Per-choice output text: incremental detokenizing, stop strings (with the text that could
//! still become a stop string held back while streaming).

use claas_chat::{IncrementalDecoder, Tokenizer};

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Text of one choice as it is generated.
pub(crate) struct ChoiceText {
    decoder: IncrementalDecoder,
    /// Accepted text so far (cut at a matched stop string).
    pub text: String,
    sent: usize,
    stops: Vec<String>,
    max_stop: usize,
    include_stop: bool,
    /// The stop string that ended this choice.
    pub stopped: Option<String>,
}

impl ChoiceText {
    pub fn new(
        tokenizer: Tokenizer,
        skip_special: bool,
        prompt: &[u32],
        stops: Vec<String>,
        include_stop: bool,
    ) -> Self {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        ChoiceText {
            decoder: IncrementalDecoder::with_prompt(tokenizer, skip_special, prompt),
            text: String::new(),
            sent: 0,
            max_stop: stops.iter().map(String::len).max().unwrap_or(0),
            stops,
            include_stop,
            stopped: None,
        }
    }

    /// Adds a token; returns the text that can be released now. Check `stopped` afterwards.
    pub fn push(&mut self, token: u32) -> String {
        if self.stopped.is_some() {
            return String::new();
        }
        let new = self.decoder.push(token).unwrap_or_default();
        let from = floor_boundary(&self.text, self.text.len().saturating_sub(self.max_stop));
        self.text.push_str(&new);
        if !self.stops.is_empty() {
            let hit = self
                .stops
                .iter()
                .filter_map(|s| self.text[from..].find(s.as_str()).map(|p| (from + p, s)))
                .min_by_key(|(p, _)| *p);
            if let Some((p, s)) = hit {
                let cut = if self.include_stop { p + s.len() } else { p };
                self.stopped = Some(s.clone());
                self.text.truncate(cut);
                return self.release(self.text.len());
            }
        }
        let hold = self.max_stop.saturating_sub(1);
        let upto = floor_boundary(&self.text, self.text.len().saturating_sub(hold));
        self.release(upto)
    }

    fn release(&mut self, upto: usize) -> String {
        if upto <= self.sent {
            return String::new();
        }
        let out = self.text[self.sent..upto].to_string();
        self.sent = upto;
        out
    }

    /// End of the choice: everything not yet released.
    pub fn finish(&mut self) -> String {
        self.release(self.text.len())
    }
}
