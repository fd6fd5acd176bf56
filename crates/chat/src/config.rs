use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{ChatError, Result};
use crate::tokenizer::read_text;

/// A special token in tokenizer_config.json: either a plain string or an `AddedToken` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenSpec {
    /// `"<|im_end|>"`
    Text(String),
    /// `{"__type": "AddedToken", "content": "<|im_end|>", ...}`
    Added {
        content: String,
        #[serde(default)]
        special: Option<bool>,
        #[serde(default)]
        lstrip: Option<bool>,
        #[serde(default)]
        rstrip: Option<bool>,
        #[serde(default)]
        normalized: Option<bool>,
        #[serde(default)]
        single_word: Option<bool>,
    },
}

impl TokenSpec {
    /// The token text.
    pub fn content(&self) -> &str {
        match self {
            TokenSpec::Text(s) => s,
            TokenSpec::Added { content, .. } => content,
        }
    }
}

/// One entry of a list-valued `chat_template` (`[{"name": "default", "template": "..."}]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedTemplate {
    pub name: String,
    pub template: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TemplateField {
    One(String),
    Many(Vec<NamedTemplate>),
}

/// The parts of tokenizer_config.json that serving needs.
#[derive(Debug, Clone, Default)]
pub struct TokenizerConfig {
    /// Named chat templates; a plain string template is stored under the name `"default"`.
    pub chat_templates: Vec<NamedTemplate>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    /// `added_tokens_decoder`: id -> token.
    pub added_tokens_decoder: BTreeMap<u32, TokenSpec>,
    pub additional_special_tokens: Vec<String>,
    pub model_max_length: Option<f64>,
    /// The whole file, for fields not modelled here.
    pub raw: Value,
}

fn opt_token(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let spec: TokenSpec = serde_json::from_value(v.clone())
                .map_err(|e| ChatError::bad_json("tokenizer_config.json", format!("{key}: {e}")))?;
            Ok(Some(spec.content().to_string()))
        }
    }
}

impl TokenizerConfig {
    /// Parse tokenizer_config.json content.
    pub fn from_json_str(json: &str) -> Result<Self> {
        let what = "tokenizer_config.json";
        let raw: Value = serde_json::from_str(json).map_err(|e| ChatError::bad_json(what, e))?;
        let obj = raw
            .as_object()
            .ok_or_else(|| ChatError::bad_json(what, "top level is not an object"))?;
        let chat_templates = match obj.get("chat_template") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => match serde_json::from_value::<TemplateField>(v.clone()) {
                Ok(TemplateField::One(t)) => vec![NamedTemplate {
                    name: "default".into(),
                    template: t,
                }],
                Ok(TemplateField::Many(list)) => list,
                Err(e) => return Err(ChatError::bad_json(what, format!("chat_template: {e}"))),
            },
        };
        let mut added_tokens_decoder = BTreeMap::new();
        if let Some(v) = obj.get("added_tokens_decoder").filter(|v| !v.is_null()) {
            let map: BTreeMap<String, TokenSpec> = serde_json::from_value(v.clone())
                .map_err(|e| ChatError::bad_json(what, format!("added_tokens_decoder: {e}")))?;
            for (k, t) in map {
                let id: u32 = k.parse().map_err(|_| {
                    ChatError::bad_json(what, format!("added_tokens_decoder: bad id {k:?}"))
                })?;
                added_tokens_decoder.insert(id, t);
            }
        }
        let additional_special_tokens = match obj.get("additional_special_tokens") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value::<Vec<TokenSpec>>(v.clone())
                .map_err(|e| ChatError::bad_json(what, format!("additional_special_tokens: {e}")))?
                .iter()
                .map(|t| t.content().to_string())
                .collect(),
        };
        Ok(Self {
            chat_templates,
            bos_token: opt_token(obj, "bos_token")?,
            eos_token: opt_token(obj, "eos_token")?,
            pad_token: opt_token(obj, "pad_token")?,
            unk_token: opt_token(obj, "unk_token")?,
            add_bos_token: obj.get("add_bos_token").and_then(Value::as_bool),
            add_eos_token: obj.get("add_eos_token").and_then(Value::as_bool),
            added_tokens_decoder,
            additional_special_tokens,
            model_max_length: obj.get("model_max_length").and_then(Value::as_f64),
            raw,
        })
    }

    /// Read tokenizer_config.json.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_json_str(&read_text(path)?).map_err(|e| relabel(e, path))
    }

    /// Read `dir/tokenizer_config.json`; a `dir/chat_template.jinja` (how newer transformers
    /// save templates) replaces the default template, as transformers does when loading.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut cfg = Self::from_file(dir.join("tokenizer_config.json"))?;
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let text = read_text(&jinja)?;
            cfg.chat_templates.retain(|t| t.name != "default");
            cfg.chat_templates.insert(
                0,
                NamedTemplate {
                    name: "default".into(),
                    template: text,
                },
            );
        }
        Ok(cfg)
    }

    /// The template to use: `name` if given, else the one named "default" (transformers' rule),
    /// else the only one.
    pub fn chat_template(&self, name: Option<&str>) -> Result<&str> {
        if let Some(name) = name {
            return self
                .chat_templates
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.template.as_str())
                .ok_or_else(|| ChatError::NoChatTemplate(format!("no template named {name:?}")));
        }
        if let Some(t) = self.chat_templates.iter().find(|t| t.name == "default") {
            return Ok(&t.template);
        }
        match self.chat_templates.as_slice() {
            [] => Err(ChatError::NoChatTemplate(
                "tokenizer_config.json has no chat_template".into(),
            )),
            [only] => Ok(&only.template),
            many => Err(ChatError::NoChatTemplate(format!(
                "several templates ({}) and none named \"default\"",
                many.iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

fn relabel(e: ChatError, path: &Path) -> ChatError {
    match e {
        ChatError::BadJson { message, .. } => ChatError::BadJson {
            what: path.display().to_string(),
            message,
        },
        other => other,
    }
}

fn ids_one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u32>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(x)) => Some(vec![x]),
        Some(OneOrMany::Many(v)) => Some(v),
    })
}

/// generation_config.json (sampling defaults shipped with a model). All fields optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// Stop ids; the file may hold one int or a list.
    #[serde(default, deserialize_with = "ids_one_or_many")]
    pub eos_token_id: Option<Vec<u32>>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub do_sample: Option<bool>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub min_p: Option<f64>,
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub max_new_tokens: Option<u64>,
    #[serde(default)]
    pub max_length: Option<u64>,
}

impl GenerationConfig {
    /// Parse generation_config.json content.
    pub fn from_json_str(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| ChatError::bad_json("generation_config.json", e))
    }

    /// Read generation_config.json.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_json_str(&read_text(path)?).map_err(|e| relabel(e, path))
    }

    /// The eos ids as a slice (empty if absent).
    pub fn eos_token_ids(&self) -> &[u32] {
        self.eos_token_id.as_deref().unwrap_or(&[])
    }
}
