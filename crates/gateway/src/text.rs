//! Text helpers: Telegram's message limit, reasoning blocks, JavaScript-compatible number format.

/// Telegram's limit for one message, counted in UTF-16 code units.
pub const TELEGRAM_MESSAGE_LIMIT: usize = 4096;

/// Split `text` into pieces of at most `limit` UTF-16 code units (Telegram's unit), cutting at
/// the last newline, else the last space, in the second half of a piece, else mid-word. The
/// separator at a cut is dropped. Always returns at least one piece.
pub fn split_message(text: &str, limit: usize) -> Vec<String> {
    let limit = limit.max(2);
    let mut pieces = Vec::new();
    let mut rest = text;
    while utf16_len(rest) > limit {
        // Largest prefix (in bytes) that fits in `limit` UTF-16 units.
        let mut units = 0;
        let mut fit = 0;
        for (i, c) in rest.char_indices() {
            if units + c.len_utf16() > limit {
                break;
            }
            units += c.len_utf16();
            fit = i + c.len_utf8();
        }
        let head = &rest[..fit];
        let half = fit / 2;
        let cut = head
            .rfind('\n')
            .filter(|&i| i >= half && i > 0)
            .or_else(|| head.rfind(' ').filter(|&i| i >= half && i > 0));
        match cut {
            Some(i) => {
                pieces.push(rest[..i].to_string());
                rest = &rest[i + 1..];
            }
            None => {
                pieces.push(head.to_string());
                rest = &rest[fit..];
            }
        }
    }
    if !rest.is_empty() || pieces.is_empty() {
        pieces.push(rest.to_string());
    }
    pieces
}

fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// What the user sees of a reply: Qwen3-style `<think>…</think>` reasoning is hidden (the full
/// text, reasoning included, is still what `/feedback` sends, because the rollout
/// log-probabilities cover it).
pub(crate) fn visible_reply(content: &str) -> &str {
    let trimmed = content.trim_start();
    if let Some(after_open) = trimmed.strip_prefix("<think>") {
        return match after_open.find("</think>") {
            Some(end) => after_open[end + "</think>".len()..].trim(),
            // Unfinished reasoning (the reply hit max_tokens): nothing visible.
            None => "",
        };
    }
    content.trim()
}

/// `Number.prototype.toFixed(digits)` of JavaScript, for the plugin-identical `/feedback`
/// reply. Rust rounds exact ties to even, JavaScript away from zero; everything else is the
/// same correctly rounded decimal of the binary value.
pub(crate) fn js_to_fixed(x: f64, digits: usize) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN".into()
        } else if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let plain = format!("{x:.digits$}");
    // A tie has a terminating expansion "…5" right after the last kept digit; 40 extra
    // digits are far more than any f64 with |x| < 1e21 needs to show that.
    let long = format!("{:.*}", digits + 40, x.abs());
    let dot = long.find('.').unwrap_or(long.len());
    let tail = &long[dot + 1 + digits..];
    let is_tie = tail.starts_with('5') && tail[1..].bytes().all(|b| b == b'0');
    if !is_tie {
        return plain;
    }
    // Round the magnitude up by one unit in the last kept place.
    let kept: String = long[..dot + 1 + digits]
        .chars()
        .filter(|c| *c != '.')
        .collect();
    let mut digits_vec: Vec<u8> = kept.bytes().map(|b| b - b'0').collect();
    let mut i = digits_vec.len();
    loop {
        if i == 0 {
            digits_vec.insert(0, 1);
            break;
        }
        i -= 1;
        if digits_vec[i] == 9 {
            digits_vec[i] = 0;
        } else {
            digits_vec[i] += 1;
            break;
        }
    }
    let s: String = digits_vec.iter().map(|d| char::from(b'0' + d)).collect();
    let (int_part, frac_part) = s.split_at(s.len() - digits);
    let sign = if x < 0.0 { "-" } else { "" };
    if digits == 0 {
        format!("{sign}{int_part}")
    } else {
        format!("{sign}{int_part}.{frac_part}")
    }
}

/// At most `max` characters of `s`, with `…` when cut.
pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_piece() {
        assert_eq!(split_message("hello", 4096), vec!["hello"]);
        assert_eq!(split_message("", 4096), vec![""]);
    }

    #[test]
    fn long_text_is_cut_at_newlines_then_spaces() {
        let para = "word ".repeat(300); // 1500 chars
        let text = format!("{para}\n{para}\n{para}");
        let pieces = split_message(&text, 4096);
        assert_eq!(pieces.len(), 2);
        assert!(pieces.iter().all(|p| utf16_len(p) <= 4096));
        assert_eq!(pieces.join("\n"), text);

        let spaces = "abc ".repeat(2000);
        let pieces = split_message(&spaces, 4096);
        assert!(pieces.iter().all(|p| utf16_len(p) <= 4096));
        assert_eq!(pieces.join(" "), spaces);
    }

    #[test]
    fn unbroken_text_is_cut_hard_and_counts_utf16_units() {
        let emoji = "😀".repeat(3000); // 2 UTF-16 units each
        let pieces = split_message(&emoji, 4096);
        assert_eq!(pieces.len(), 2);
        assert_eq!(utf16_len(&pieces[0]), 4096);
        assert_eq!(pieces.concat(), emoji);
        let x = "x".repeat(10_000);
        let pieces = split_message(&x, 4096);
        assert_eq!(
            pieces.iter().map(String::len).collect::<Vec<_>>(),
            vec![4096, 4096, 1808]
        );
    }

    #[test]
    fn think_blocks_are_hidden() {
        assert_eq!(visible_reply("<think>\nhmm\n</think>\n\nHi!"), "Hi!");
        assert_eq!(visible_reply("  Hello "), "Hello");
        assert_eq!(visible_reply("<think>unfinished"), "");
    }

    #[test]
    fn to_fixed_matches_javascript() {
        // Values checked against node: (x).toFixed(d).
        assert_eq!(js_to_fixed(1.25, 1), "1.3");
        assert_eq!(js_to_fixed(1.45, 1), "1.4");
        assert_eq!(js_to_fixed(1.234, 1), "1.2");
        assert_eq!(js_to_fixed(0.123456, 4), "0.1235");
        assert_eq!(js_to_fixed(2.5, 0), "3");
        assert_eq!(js_to_fixed(-2.5, 0), "-3");
        assert_eq!(js_to_fixed(9.95, 1), "9.9");
        assert_eq!(js_to_fixed(0.5, 0), "1");
        assert_eq!(js_to_fixed(99.5, 0), "100");
        assert_eq!(js_to_fixed(0.0, 4), "0.0000");
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate_chars("abcdef", 3), "abc…");
        assert_eq!(truncate_chars("abc", 3), "abc");
    }
}
