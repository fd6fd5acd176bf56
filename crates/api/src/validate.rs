//! Request parsing with pydantic-compatible validation: every problem in a body is collected
//! and returned at once as a FastAPI 422 list, with pydantic's error types and messages.

use serde_json::{json, Map, Value};

use crate::error::{ApiError, ValidationIssue};

/// A location path like `["body", "training", "alpha"]`.
pub type Loc = Vec<Value>;

/// `loc` extended by one key.
pub fn at(loc: &Loc, key: impl Into<Value>) -> Loc {
    let mut l = loc.clone();
    l.push(key.into());
    l
}

/// Formats a float as Python's `repr` would in pydantic messages (`1e-06`, `0.01`, `5.0`).
pub fn py_float(x: f64) -> String {
    if x == 0.0 {
        return "0.0".into();
    }
    let a = x.abs();
    if !(1e-4..1e16).contains(&a) {
        let s = format!("{x:e}");
        if let Some((mant, exp)) = s.split_once('e') {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ("-", d),
                None => ("+", exp),
            };
            return format!("{mant}e{sign}{digits:0>2}");
        }
        return s;
    }
    if x.fract() == 0.0 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// Parses a JSON request body, mapping syntax errors to pydantic's `json_invalid`.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            vec![json!("body")],
            "missing",
            "Field required",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let mut issue = ValidationIssue::new(
            vec![json!("body"), json!(e.column())],
            "json_invalid",
            "JSON decode error",
        );
        issue.ctx = Some(json!({ "error": e.to_string() }));
        ApiError::Validation(vec![issue])
    })
}

/// Collects validation issues while reading a JSON object.
#[derive(Default)]
pub struct Checker {
    issues: Vec<ValidationIssue>,
}

impl Checker {
    /// A fresh checker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an issue.
    pub fn push(&mut self, loc: Loc, kind: &str, msg: impl Into<String>, input: Option<&Value>) {
        let mut i = ValidationIssue::new(loc, kind, msg);
        i.input = input.cloned();
        self.issues.push(i);
    }

    /// Records an issue with its input and constraint values.
    pub fn push_ctx(&mut self, loc: Loc, kind: &str, msg: String, input: &Value, ctx: Value) {
        let mut i = ValidationIssue::new(loc, kind, msg);
        i.input = Some(input.clone());
        i.ctx = Some(ctx);
        self.issues.push(i);
    }

    /// Ok when nothing was recorded, else the 422 error.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.issues.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.issues))
        }
    }

    /// Whether any issue was recorded.
    pub fn has_issues(&self) -> bool {
        !self.issues.is_empty()
    }

    /// The value as an object, or an issue.
    pub fn object<'a>(&mut self, v: &'a Value, loc: &Loc) -> Option<&'a Map<String, Value>> {
        match v.as_object() {
            Some(m) => Some(m),
            None => {
                self.push(
                    loc.clone(),
                    "model_attributes_type",
                    "Input should be a valid dictionary or object to extract fields from",
                    Some(v),
                );
                None
            }
        }
    }

    fn present<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
        // pydantic treats an explicit null for a field with a default as "use null", which
        // fails for non-optional types; we do the same by only skipping absent keys.
        m.get(key)
    }

    /// A required string with a minimum length.
    pub fn req_str(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        loc: &Loc,
        min_len: usize,
    ) -> Option<String> {
        let l = at(loc, key);
        match Self::present(m, key) {
            None => {
                self.push(
                    l,
                    "missing",
                    "Field required",
                    Some(&Value::Object(m.clone())),
                );
                None
            }
            Some(v) => self.string_value(v, l, min_len),
        }
    }

    fn string_value(&mut self, v: &Value, l: Loc, min_len: usize) -> Option<String> {
        match v.as_str() {
            None => {
                self.push(l, "string_type", "Input should be a valid string", Some(v));
                None
            }
            Some(s) if s.chars().count() < min_len => {
                let unit = if min_len == 1 {
                    "character"
                } else {
                    "characters"
                };
                self.push_ctx(
                    l,
                    "string_too_short",
                    format!("String should have at least {min_len} {unit}"),
                    v,
                    json!({ "min_length": min_len }),
                );
                None
            }
            // Bounded before anything tokenizes it; the input is not echoed back.
            Some(s)
                if s.len() > crate::body::MAX_TEXT_CHARS
                    && s.chars().count() > crate::body::MAX_TEXT_CHARS =>
            {
                let max = crate::body::MAX_TEXT_CHARS;
                let mut i = ValidationIssue::new(
                    l,
                    "string_too_long",
                    format!("String should have at most {max} characters"),
                );
                i.ctx = Some(json!({ "max_length": max }));
                self.issues.push(i);
                None
            }
            Some(s) => Some(s.to_string()),
        }
    }

    /// An optional string with a default.
    pub fn str_or(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        loc: &Loc,
        default: &str,
    ) -> String {
        match Self::present(m, key) {
            None => default.to_string(),
            Some(v) => self
                .string_value(v, at(loc, key), 0)
                .unwrap_or_else(|| default.to_string()),
        }
    }

    fn check_range(
        &mut self,
        l: Loc,
        v: &Value,
        x: f64,
        ge: Option<f64>,
        le: Option<f64>,
        int: bool,
    ) {
        let show = |b: f64| {
            if int {
                format!("{}", b as i64)
            } else {
                py_float(b)
            }
        };
        let num = |b: f64| if int { json!(b as i64) } else { json!(b) };
        if let Some(ge) = ge {
            if x < ge {
                self.push_ctx(
                    l,
                    "greater_than_equal",
                    format!("Input should be greater than or equal to {}", show(ge)),
                    v,
                    json!({ "ge": num(ge) }),
                );
                return;
            }
        }
        if let Some(le) = le {
            if x > le {
                self.push_ctx(
                    l,
                    "less_than_equal",
                    format!("Input should be less than or equal to {}", show(le)),
                    v,
                    json!({ "le": num(le) }),
                );
            }
        }
    }

    /// A float with a default and inclusive bounds.
    pub fn float_in(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        loc: &Loc,
        default: f64,
        ge: Option<f64>,
        le: Option<f64>,
    ) -> f64 {
        let Some(v) = Self::present(m, key) else {
            return default;
        };
        let l = at(loc, key);
        match v.as_f64() {
            Some(x) if x.is_finite() => {
                self.check_range(l, v, x, ge, le, false);
                x
            }
            _ => {
                self.push(l, "float_type", "Input should be a valid number", Some(v));
                default
            }
        }
    }

    /// An integer with a default and inclusive bounds (integral floats accepted, as pydantic).
    pub fn int_in(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        loc: &Loc,
        default: i64,
        ge: Option<i64>,
        le: Option<i64>,
    ) -> i64 {
        let Some(v) = Self::present(m, key) else {
            return default;
        };
        let l = at(loc, key);
        let x = if let Some(i) = v.as_i64() {
            i
        } else if let Some(f) = v.as_f64() {
            if f.fract() != 0.0 || !f.is_finite() {
                self.push(
                    l,
                    "int_from_float",
                    "Input should be a valid integer, got a number with a fractional part",
                    Some(v),
                );
                return default;
            }
            f as i64
        } else {
            self.push(l, "int_type", "Input should be a valid integer", Some(v));
            return default;
        };
        self.check_range(
            l,
            v,
            x as f64,
            ge.map(|g| g as f64),
            le.map(|g| g as f64),
            true,
        );
        x
    }

    /// A boolean with a default.
    pub fn bool_or(&mut self, m: &Map<String, Value>, key: &str, loc: &Loc, default: bool) -> bool {
        match Self::present(m, key) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                self.push(
                    at(loc, key),
                    "bool_type",
                    "Input should be a valid boolean",
                    Some(v),
                );
                default
            }
        }
    }

    /// One of fixed string values, with a default.
    pub fn literal(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        loc: &Loc,
        default: &str,
        allowed: &[&str],
    ) -> String {
        let Some(v) = Self::present(m, key) else {
            return default.to_string();
        };
        match v.as_str() {
            Some(s) if allowed.contains(&s) => s.to_string(),
            _ => {
                let list = allowed.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>();
                let expected = match list.len() {
                    0 => String::new(),
                    1 => list[0].clone(),
                    n => format!("{} or {}", list[..n - 1].join(", "), list[n - 1]),
                };
                self.push_ctx(
                    at(loc, key),
                    "literal_error",
                    format!("Input should be {expected}"),
                    v,
                    json!({ "expected": expected }),
                );
                default.to_string()
            }
        }
    }

    /// An optional (absent or null) list of numbers.
    pub fn opt_f32_list(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        loc: &Loc,
    ) -> Option<Vec<f32>> {
        let v = Self::present(m, key)?;
        if v.is_null() {
            return None;
        }
        let l = at(loc, key);
        let Some(arr) = v.as_array() else {
            self.push(l, "list_type", "Input should be a valid list", Some(v));
            return None;
        };
        let mut out = Vec::with_capacity(arr.len());
        for (i, x) in arr.iter().enumerate() {
            match x.as_f64() {
                Some(f) if f.is_finite() => out.push(f as f32),
                _ => self.push(
                    at(&l, i),
                    "float_type",
                    "Input should be a valid number",
                    Some(x),
                ),
            }
        }
        Some(out)
    }

    /// An optional (absent or null) list of strings.
    pub fn opt_str_list(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        loc: &Loc,
    ) -> Option<Vec<String>> {
        let v = Self::present(m, key)?;
        if v.is_null() {
            return None;
        }
        let l = at(loc, key);
        let Some(arr) = v.as_array() else {
            self.push(l, "list_type", "Input should be a valid list", Some(v));
            return None;
        };
        let mut out = Vec::new();
        for (i, x) in arr.iter().enumerate() {
            match x.as_str() {
                Some(s) => out.push(s.to_string()),
                None => self.push(
                    at(&l, i),
                    "string_type",
                    "Input should be a valid string",
                    Some(x),
                ),
            }
        }
        Some(out)
    }

    /// An optional nested object (absent = `None`; anything but an object is an issue).
    pub fn opt_object<'a>(
        &mut self,
        m: &'a Map<String, Value>,
        key: &str,
        loc: &Loc,
    ) -> Option<&'a Map<String, Value>> {
        let v = Self::present(m, key)?;
        self.object(v, &at(loc, key))
    }
}

/// Checks an adapter id with the store's rules, as a validation issue at `loc`.
pub fn check_lora_id(c: &mut Checker, id: &str, loc: Loc) -> bool {
    match claas_store::validate_id(id) {
        Ok(_) => true,
        Err(e) => {
            c.push(
                loc,
                "value_error",
                format!("Value error, {e}"),
                Some(&json!(id)),
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        assert_eq!(py_float(1e-6), "1e-06");
        assert_eq!(py_float(1e-2), "0.01");
        assert_eq!(py_float(5.0), "5.0");
        assert_eq!(py_float(0.0), "0.0");
        assert_eq!(py_float(20.0), "20.0");
        assert_eq!(py_float(3e-5), "3e-05");
    }

    #[test]
    fn collects_every_issue() {
        let v = json!({"a": 5, "b": "x", "c": 1.5, "d": "nope"});
        let m = v.as_object().unwrap();
        let loc = vec![json!("body")];
        let mut c = Checker::new();
        assert!(c.req_str(m, "missing", &loc, 1).is_none());
        assert!(c.req_str(m, "a", &loc, 1).is_none());
        c.float_in(m, "c", &loc, 0.0, Some(2.0), None);
        c.int_in(m, "c", &loc, 0, None, None);
        c.literal(m, "d", &loc, "self", &["self", "remote"]);
        let Err(ApiError::Validation(issues)) = c.finish() else {
            panic!("expected issues")
        };
        let kinds: Vec<&str> = issues.iter().map(|i| i.kind.as_str()).collect();
        assert_eq!(
            kinds,
            vec![
                "missing",
                "string_type",
                "greater_than_equal",
                "int_from_float",
                "literal_error"
            ]
        );
        assert_eq!(issues[4].msg, "Input should be 'self' or 'remote'");
        assert_eq!(
            issues[2].msg,
            "Input should be greater than or equal to 2.0"
        );
    }
}
