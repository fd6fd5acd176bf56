//! Preference specs are data (JSON files), so new preferences need no code: the three of the
//! reference harness ship embedded, and `--preference-file` adds others.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{EvalError, Result};

/// The reference's default system prompt, used when a spec does not name one.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant.";

/// The built-in specs, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("concise", include_str!("../preferences/concise.json")),
    ("no_emoji", include_str!("../preferences/no_emoji.json")),
    ("identity", include_str!("../preferences/identity.json")),
];

/// One preference to teach: the feedback given at every step, the prompts probed, the
/// response pairs whose log-prob margin should grow, and how compliance is checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preference {
    /// Also the folder name of its results: letters, digits, `_`, `-`, `.`.
    pub name: String,
    /// The feedback text sent with every sample.
    pub feedback: String,
    /// System prompt of every chat and score of this preference.
    #[serde(default = "default_system")]
    pub system_prompt: String,
    pub verifier: VerifierConfig,
    pub logprob_pairs: Vec<LogprobPair>,
    pub probe_prompts: Vec<String>,
}

/// A prompt with a response the preference wants and one it does not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogprobPair {
    pub prompt: String,
    /// Overrides the preference's system prompt for this pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    pub preferred: String,
    pub dispreferred: String,
}

/// How a generation is judged compliant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum VerifierConfig {
    /// Passes with `min_words..=max_words` words and, if set, at most `max_sentences`.
    Concise {
        max_words: usize,
        #[serde(default)]
        max_sentences: Option<usize>,
        #[serde(default)]
        min_words: usize,
    },
    /// Passes without any emoji.
    NoEmoji,
    /// Passes when any phrase occurs (case-insensitive).
    Phrase { phrases: Vec<String> },
}

fn default_system() -> String {
    DEFAULT_SYSTEM_PROMPT.to_string()
}

/// Parses and checks a spec; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Preference> {
    let err = |message: String| EvalError::Preference {
        origin: origin.to_string(),
        message,
    };
    let p: Preference = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
    let name_ok = !p.name.is_empty()
        && !p.name.starts_with('.')
        && p.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !name_ok {
        return Err(err(format!(
            "name `{}` must be letters, digits, `_`, `-` or `.` (it names a folder)",
            p.name
        )));
    }
    if p.feedback.trim().is_empty() {
        return Err(err("feedback is empty".into()));
    }
    if p.probe_prompts.is_empty() {
        return Err(err("probe_prompts is empty".into()));
    }
    if p.logprob_pairs.is_empty() {
        return Err(err("logprob_pairs is empty".into()));
    }
    match &p.verifier {
        VerifierConfig::Concise {
            max_words,
            min_words,
            ..
        } if min_words > max_words => {
            return Err(err("verifier: min_words > max_words".into()));
        }
        VerifierConfig::Phrase { phrases } if phrases.iter().all(|s| s.trim().is_empty()) => {
            return Err(err("verifier: no phrase".into()));
        }
        _ => {}
    }
    Ok(p)
}

/// A built-in spec by name.
pub fn builtin(name: &str) -> Result<Preference> {
    let (_, text) =
        BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| EvalError::Preference {
                origin: name.to_string(),
                message: format!(
                    "no built-in preference of that name (built-in: {})",
                    BUILTIN
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
    parse(text, name)
}

/// A spec from a file.
pub fn from_file(path: &Path) -> Result<Preference> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    parse(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_with_reference_content() {
        for (name, _) in BUILTIN {
            let p = builtin(name).unwrap();
            assert_eq!(&p.name, name);
            assert_eq!(p.probe_prompts.len(), 10);
            assert_eq!(p.system_prompt, DEFAULT_SYSTEM_PROMPT);
        }
        let e = builtin("no_emoji").unwrap();
        assert!(e.logprob_pairs[0].dispreferred.contains('\u{1F60A}'));
        assert_eq!(e.verifier, VerifierConfig::NoEmoji);
        assert!(builtin("nope").is_err());
    }

    #[test]
    fn bad_specs_are_refused() {
        let good = builtin("identity").unwrap();
        let mut v = serde_json::to_value(&good).unwrap();
        v["name"] = "../x".into();
        assert!(parse(&v.to_string(), "t").is_err());
        let mut v = serde_json::to_value(&good).unwrap();
        v["probe_prompts"] = serde_json::json!([]);
        assert!(parse(&v.to_string(), "t").is_err());
        let mut v = serde_json::to_value(&good).unwrap();
        v["extra"] = 1.into();
        assert!(parse(&v.to_string(), "t").is_err());
        let v = serde_json::to_value(&good).unwrap();
        assert_eq!(parse(&v.to_string(), "t").unwrap(), good);
    }
}
