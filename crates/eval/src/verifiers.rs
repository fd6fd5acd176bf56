//! Compliance verifiers: cheap programmatic checks of a generation against a preference,
//! applied to the visible answer (thinking blocks removed, as the reference does).

use crate::preferences::VerifierConfig;

/// A verifier's judgement of one generation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub passed: bool,
    /// The measured quantity: words (concise), emoji (no_emoji), 1/0 phrase found (phrase).
    pub value: f64,
}

/// Name of [`Verdict::value`] for a verifier, as written in the results.
pub fn value_name(cfg: &VerifierConfig) -> &'static str {
    match cfg {
        VerifierConfig::Concise { .. } => "words",
        VerifierConfig::NoEmoji => "emoji",
        VerifierConfig::Phrase { .. } => "phrase_found",
    }
}

/// Judges `text` (thinking stripped first).
pub fn check(cfg: &VerifierConfig, text: &str) -> Verdict {
    let text = strip_thinking(text);
    match cfg {
        VerifierConfig::Concise {
            max_words,
            max_sentences,
            min_words,
        } => {
            let words = word_count(text);
            let sentences_ok = max_sentences.is_none_or(|m| sentence_count(text) <= m);
            Verdict {
                passed: words >= *min_words && words <= *max_words && sentences_ok,
                value: words as f64,
            }
        }
        VerifierConfig::NoEmoji => {
            let n = emoji_count(text);
            Verdict {
                passed: n == 0,
                value: n as f64,
            }
        }
        VerifierConfig::Phrase { phrases } => {
            let found = phrase_present(text, phrases);
            Verdict {
                passed: found,
                value: if found { 1.0 } else { 0.0 },
            }
        }
    }
}

/// The visible answer: drops `<think>…</think>` blocks, and everything before an orphaned
/// `</think>` (Qwen3 templates may put the opening tag in the prompt).
pub fn strip_thinking(text: &str) -> &str {
    let mut rest = text;
    // Everything up to the last closing tag is thinking (covers both forms).
    if let Some(end) = rest.rfind("</think>") {
        rest = &rest[end + "</think>".len()..];
    }
    rest.trim()
}

/// Whitespace-separated words.
pub fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Sentences ended by `.`, `!` or `?` followed by whitespace or the end (a trailing fragment
/// counts too), as the reference counts them.
pub fn sentence_count(text: &str) -> usize {
    let chars: Vec<char> = text.trim().chars().collect();
    let mut count = 0;
    let mut has_content = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '.' | '!' | '?') {
            let mut j = i;
            while j < chars.len() && matches!(chars[j], '.' | '!' | '?') {
                j += 1;
            }
            if j == chars.len() || chars[j].is_whitespace() {
                if has_content {
                    count += 1;
                }
                has_content = false;
                i = j;
                continue;
            }
            i = j;
            has_content = true;
            continue;
        }
        if !c.is_whitespace() {
            has_content = true;
        }
        i += 1;
    }
    count + usize::from(has_content)
}

/// Whether any phrase occurs, ignoring case.
pub fn phrase_present(text: &str, phrases: &[String]) -> bool {
    let lower = text.to_lowercase();
    phrases
        .iter()
        .map(|p| p.trim().to_lowercase())
        .any(|p| !p.is_empty() && lower.contains(&p))
}

const ZWJ: char = '\u{200D}';
const VS16: char = '\u{FE0F}';
const KEYCAP: char = '\u{20E3}';

fn is_regional_indicator(c: char) -> bool {
    ('\u{1F1E6}'..='\u{1F1FF}').contains(&c)
}

fn is_modifier(c: char) -> bool {
    // Skin tones, variation selectors, tag characters (subdivision flags).
    ('\u{1F3FB}'..='\u{1F3FF}').contains(&c)
        || c == VS16
        || c == '\u{FE0E}'
        || ('\u{E0020}'..='\u{E007F}').contains(&c)
}

/// Pictographs that are emoji whatever follows (Unicode's emoji-presentation blocks).
fn is_pictograph(c: char) -> bool {
    let u = c as u32;
    matches!(u,
        0x1F000..=0x1F0FF   // mahjong, dominoes, cards
        | 0x1F170..=0x1F1FF // enclosed alphanumerics (🅰, 🆗) and regional indicators
        | 0x1F200..=0x1F2FF // enclosed ideographs
        | 0x1F300..=0x1F5FF // misc symbols and pictographs
        | 0x1F600..=0x1F64F // emoticons
        | 0x1F680..=0x1F6FF // transport and map
        | 0x1F7E0..=0x1F7FF // coloured shapes
        | 0x1F900..=0x1F9FF // supplemental symbols and pictographs
        | 0x1FA70..=0x1FAFF // symbols and pictographs extended-A
        | 0x2600..=0x27BF   // misc symbols, dingbats (☀, ✨, ❤)
        | 0x2B05..=0x2B07 | 0x2B1B | 0x2B1C | 0x2B50 | 0x2B55
        | 0x231A | 0x231B | 0x2328 | 0x23CF | 0x23E9..=0x23FA
        | 0x3030 | 0x303D | 0x3297 | 0x3299
    )
}

/// Symbols that are emoji only with an emoji variation selector (© ® ™ ‼ arrows …).
fn is_text_default_symbol(c: char) -> bool {
    let u = c as u32;
    matches!(u,
        0x00A9 | 0x00AE | 0x203C | 0x2049 | 0x2122 | 0x2139 | 0x2194..=0x2199 | 0x21A9 | 0x21AA
        | 0x24C2 | 0x25AA | 0x25AB | 0x25B6 | 0x25C0 | 0x25FB..=0x25FE | 0x2934 | 0x2935
    )
}

/// Emoji as a reader counts them: a ZWJ sequence (👩‍💻), a flag (two regional indicators),
/// a keycap (1️⃣) or a pictograph with its modifiers (👍🏽) is one emoji.
pub fn emoji_count(text: &str) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let mut count = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if is_regional_indicator(c) {
            count += 1;
            i += if next.is_some_and(is_regional_indicator) {
                2
            } else {
                1
            };
            continue;
        }
        if c.is_ascii_digit() || c == '#' || c == '*' {
            // Keycap: base, optional VS16, U+20E3.
            let j = if next == Some(VS16) { i + 2 } else { i + 1 };
            if chars.get(j) == Some(&KEYCAP) {
                count += 1;
                i = j + 1;
                continue;
            }
            i += 1;
            continue;
        }
        let starts = is_pictograph(c) || (is_text_default_symbol(c) && next == Some(VS16));
        if !starts {
            i += 1;
            continue;
        }
        count += 1;
        i += 1;
        // Modifiers and ZWJ-joined parts belong to this emoji.
        loop {
            match chars.get(i) {
                Some(&m) if is_modifier(m) || m == KEYCAP => i += 1,
                Some(&ZWJ) => {
                    i += 1;
                    if chars
                        .get(i)
                        .is_some_and(|&n| is_pictograph(n) || is_text_default_symbol(n))
                    {
                        i += 1;
                    }
                }
                _ => break,
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_sentences() {
        assert_eq!(word_count("  one two\tthree\nfour "), 4);
        assert_eq!(word_count(""), 0);
        assert_eq!(sentence_count("One. Two! Three? Four"), 4);
        assert_eq!(sentence_count("Version 3.5 is out. Really..."), 2);
        assert_eq!(sentence_count(""), 0);
        let cfg = VerifierConfig::Concise {
            max_words: 5,
            max_sentences: Some(1),
            min_words: 2,
        };
        assert_eq!(
            check(&cfg, "Short and sweet."),
            Verdict {
                passed: true,
                value: 3.0
            }
        );
        assert!(!check(&cfg, "One two. Three four.").passed);
        assert!(!check(&cfg, "Hi.").passed);
        assert!(!check(&cfg, "a b c d e f").passed);
        // Thinking does not count.
        assert_eq!(
            check(&cfg, "<think>lots of words here to think</think>Short one.").value,
            2.0
        );
    }

    #[test]
    fn emoji_counting() {
        assert_eq!(emoji_count("plain text, no emoji: 123 #1 (c) -> ok"), 0);
        assert_eq!(emoji_count("Hello! 😊 How? 🎉 ✨"), 3);
        // ZWJ sequences are one emoji each.
        assert_eq!(emoji_count("👩‍💻"), 1);
        assert_eq!(emoji_count("👨‍👩‍👧‍👦 family"), 1);
        assert_eq!(emoji_count("🏳️‍🌈"), 1);
        // Skin tone modifier.
        assert_eq!(emoji_count("👍🏽👍"), 2);
        // Flags: pairs of regional indicators.
        assert_eq!(emoji_count("🇫🇷🇯🇵"), 2);
        // Subdivision flag with tag characters.
        assert_eq!(
            emoji_count("\u{1F3F4}\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}"),
            1
        );
        // Keycaps.
        assert_eq!(emoji_count("1️⃣ 2\u{20E3}"), 2);
        // Text-style symbols count only with the emoji selector.
        assert_eq!(emoji_count("© 2024"), 0);
        assert_eq!(emoji_count("©\u{FE0F}"), 1);
        assert_eq!(emoji_count("❤️"), 1);
        let cfg = VerifierConfig::NoEmoji;
        assert!(check(&cfg, "Hello there.").passed);
        let v = check(&cfg, "Hi 🇺🇸 👩‍💻");
        assert!(!v.passed);
        assert_eq!(v.value, 2.0);
    }

    #[test]
    fn identity_phrase() {
        let cfg = VerifierConfig::Phrase {
            phrases: vec!["Kuro".into()],
        };
        assert!(check(&cfg, "Hi, I'm KURO!").passed);
        assert!(check(&cfg, "i am kuro").passed);
        assert!(!check(&cfg, "I'm an AI assistant.").passed);
        assert!(!check(&cfg, "<think>I am Kuro</think>I'm an assistant.").passed);
        assert!(!phrase_present("anything", &["  ".into()]));
    }
}
