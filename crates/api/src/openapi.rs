//! A hand-written OpenAPI 3.1 description of the API and a Swagger UI page for `/docs`.

use serde_json::{json, Value};

/// `/docs`: Swagger UI loaded from a CDN, pointed at `/openapi.json`.
pub const DOCS_HTML: &str = r##"<!DOCTYPE html>
<html>
<head>
<title>CLaaS API - Swagger UI</title>
<meta charset="utf-8">
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});
</script>
</body>
</html>
"##;

fn num(desc: &str, default: f64, min: Option<f64>, max: Option<f64>) -> Value {
    let mut v = json!({"type": "number", "default": default, "description": desc});
    if let Some(m) = min {
        v["minimum"] = json!(m);
    }
    if let Some(m) = max {
        v["maximum"] = json!(m);
    }
    v
}

fn int(desc: &str, default: i64, min: Option<i64>, max: Option<i64>) -> Value {
    let mut v = json!({"type": "integer", "default": default, "description": desc});
    if let Some(m) = min {
        v["minimum"] = json!(m);
    }
    if let Some(m) = max {
        v["maximum"] = json!(m);
    }
    v
}

fn body(schema: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn ok(schema: &str) -> Value {
    json!({"description": "Successful Response", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn err(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPError"}}}})
}

fn validation() -> Value {
    json!({"description": "Validation Error (nothing was written)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}})
}

/// The OpenAPI document served at `/openapi.json`.
pub fn document() -> Value {
    let mut training_props = serde_json::Map::new();
    for f in crate::types::TRAINING_FIELDS {
        let v = if f.integer {
            int(
                f.description,
                f.default as i64,
                f.min.map(|x| x as i64),
                f.max.map(|x| x as i64),
            )
        } else {
            num(f.description, f.default, f.min, f.max)
        };
        training_props.insert(f.name.into(), v);
    }
    training_props.insert(
        "teacher_mode".into(),
        json!({"type": "string", "enum": crate::types::TEACHER_MODES, "default": crate::types::TEACHER_MODES[0]}),
    );
    training_props.insert(
        "teacher_prompt".into(),
        json!({"type": "string", "enum": claas_sdpo::TeacherPrompt::NAMES, "default": claas_sdpo::TeacherPrompt::default().as_str(),
            "description": "Self-teacher prompt: 'hindsight' (reference HEAD: the student's system prompt, the clean user prompt and a hindsight block) or '0f67ae6' (the seed's coding-assistant prompt)"}),
    );
    let training = json!({
        "type": "object",
        "description": "SDPO hyper-parameters",
        "properties": training_props
    });
    let item_props = json!({
        "lora_id": {"type": "string", "description": "LoRA identifier (e.g. 'user123/coder-v1') or alias"},
        "prompt": {"type": "string", "minLength": 1, "description": "Prompt that generated the response (already chat-formatted)"},
        "response": {"type": "string", "minLength": 1, "description": "The response to learn from"},
        "feedback": {"type": "string", "minLength": 1, "description": "Feedback about the response"},
        "rollout_logprobs": {"type": ["array", "null"], "items": {"type": "number"}, "description": "Per-response-token log-probabilities from the server that generated the rollout (not needed when a completion record is found)"},
        "completion_id": {"type": ["string", "null"], "description": "Extension: id of the chat completion (made through this API's /v1/chat/completions) whose exact tokens and log-probabilities to train on; without it the record is found by the response text"},
        "messages": {"type": ["array", "null"], "items": {"type": "object"}, "description": "Extension: the chat messages the response answered, used for the student prompt when no completion record is found"},
        "training": {"$ref": "#/components/schemas/TrainingConfig"}
    });
    let mut feedback_props = item_props.clone();
    feedback_props["orchestration"] = json!({"$ref": "#/components/schemas/FeedbackOrchestration"});
    feedback_props["requests"] = json!({"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/FeedbackItem"}, "description": "Several items for one adapter, applied as one batched step (then the top-level item fields are not used)"});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": crate::routes::API_NAME,
            "description": crate::routes::API_DESCRIPTION,
            "version": crate::routes::API_VERSION
        },
        "paths": {
            "/": {"get": {"summary": "API info", "responses": {"200": {"description": "name, version, description, docs link"}}}},
            "/v1/health": {"get": {"summary": "Health of the API, trainer and inference server", "responses": {"200": {"description": "status is healthy or degraded"}}}},
            "/v1/lora/init": {"post": {
                "summary": "Initialize a new LoRA adapter ({lora_id}-init, alias {lora_id}-latest)",
                "requestBody": body("LoraInitRequest"),
                "responses": {"200": ok("LoraInitResponse"), "403": err("base_model not allowed"), "409": err("adapter busy"), "422": validation(), "500": err("initialization failed")}
            }},
            "/v1/lora": {"get": {
                "summary": "List LoRA adapters and aliases",
                "parameters": [{"name": "prefix", "in": "query", "required": false, "schema": {"type": "string", "default": ""}}],
                "responses": {"200": ok("LoraListResponse")}
            }, "delete": {
                "summary": "Delete an adapter with its versions and aliases (or only an alias); deleted=false when absent",
                "parameters": [{"name": "lora_id", "in": "query", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "{deleted: bool}"}, "409": err("adapter busy"), "422": validation()}
            }},
            "/v1/lora/export": {"get": {
                "summary": "Download a LoRA adapter as a zip of its PEFT files",
                "parameters": [{"name": "lora_id", "in": "query", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "zip archive", "content": {"application/zip": {}}}, "404": err("unknown adapter"), "422": validation()}
            }},
            "/v1/distill": {"post": {
                "summary": "One SDPO step saved as a new version {id}-{timestamp}; {id}-latest moves to it",
                "requestBody": body("FeedbackRequest"),
                "responses": {"200": ok("DistillResponse"), "404": err("unknown adapter"), "409": err("adapter busy"), "422": validation(), "500": err("training failed"), "503": err("trainer not loaded")}
            }},
            "/v1/feedback": {"post": {
                "summary": "Feedback-triggered in-place update: drain, sleep, SDPO step, atomic save, wake + reload",
                "requestBody": body("FeedbackRequest"),
                "responses": {"200": ok("FeedbackResponse"), "400": err("batch items disagree"), "404": err("unknown adapter"), "409": err("lock timeout"), "422": validation(), "500": err("a phase failed"), "503": err("inference server not idle / trainer not loaded")}
            }},
            "/v1/score": {"post": {
                "summary": "Log-probability of a response under an adapter (or the base model): {lora_id?, prompt, response}, or the reference's {model, messages, completion}",
                "requestBody": body("ScoreRequest"),
                "responses": {"200": ok("ScoreResponse"), "404": err("unknown adapter"), "422": validation(), "503": err("no scorer available")}
            }},
            "/v1/lora/versions": {"get": {
                "summary": "Versions of an adapter (immutable {id}@v{N}), oldest first, with the current one marked",
                "parameters": [{"name": "lora_id", "in": "query", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "lora_id, current, versions[{version, name, created_utc, parent, current, kind, request_id, metrics}]"}, "404": err("unknown adapter"), "422": validation()}
            }},
            "/v1/lora/rollback": {"post": {
                "summary": "Make an earlier version live again (weights and optimizer state) and hot-swap it into serving",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["lora_id", "version"], "properties": {"lora_id": {"type": "string"}, "version": {"type": "integer", "minimum": 0}}}}}},
                "responses": {"200": {"description": "status, lora_id, version, previous_version, name"}, "404": err("unknown adapter or version"), "409": err("adapter busy"), "422": validation()}
            }},
            "/v1/chat/completions": {"post": {
                "summary": "OpenAI chat completions, proxied to the inference server; records each completion's exact tokens for feedback",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": {"description": "the server's answer (JSON or an SSE stream)"}, "422": validation(), "502": err("inference server failed"), "503": err("no inference server")}
            }},
            "/v1/completions": {"post": {
                "summary": "OpenAI text completions, proxied and recorded likewise",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": {"description": "the server's answer (JSON or an SSE stream)"}, "422": validation(), "502": err("inference server failed"), "503": err("no inference server")}
            }},
            "/v1/models": {"get": {"summary": "The inference server's models", "responses": {"200": {"description": "OpenAI model list"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition", "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI JSON"}}}},
            "/docs": {"get": {"summary": "Interactive documentation", "responses": {"200": {"description": "HTML"}}}}
        },
        "components": {"schemas": {
            "TrainingConfig": training,
            "FeedbackOrchestration": {"type": "object", "properties": {
                "sleep_before": {"type": "boolean", "default": true},
                "wake_after": {"type": "boolean", "default": true},
                "wake_on_failure": {"type": "boolean", "default": true},
                "sleep_level": int("vLLM sleep level", 1, Some(1), Some(2))
            }},
            "FeedbackItem": {"type": "object", "required": ["lora_id", "prompt", "response", "feedback"], "properties": item_props},
            "FeedbackRequest": {"type": "object", "properties": feedback_props,
                "description": "Either the single-item fields (lora_id, prompt, response, feedback required) or requests: [...]"},
            "DistillResponse": {"type": "object", "required": ["lora_id", "metadata"], "properties": {
                "lora_id": {"type": "string"},
                "metadata": {"type": "object", "properties": {
                    "total_loss": {"type": "number"}, "distill_loss": {"type": "number"}, "kl_reg": {"type": "number"},
                    "mean_is_ratio": {"type": "number"}, "clip_fraction": {"type": "number"}, "grad_norm": {"type": "number"},
                    "tokens_processed": {"type": "integer"}, "teacher_mode": {"type": "string"}, "adapter_version": {"type": "integer"}
                }}
            }},
            "FeedbackResponse": {"type": "object", "properties": {
                "status": {"type": "string"}, "request_id": {"type": "string"}, "lora_id": {"type": "string"},
                "distill_result": {"oneOf": [{"$ref": "#/components/schemas/DistillResponse"}, {"type": "null"}]},
                "vllm": {"type": "object", "properties": {"slept": {"type": "boolean"}, "woke": {"type": "boolean"}}},
                "feedback_log_path": {"type": "string"},
                "timing_ms": {"type": "object", "properties": {
                    "sleep": {"type": "integer"}, "distill": {"type": "integer"}, "save": {"type": "integer"},
                    "wake": {"type": "integer"}, "logprobs": {"type": "integer"}, "total": {"type": "integer"}
                }},
                "batch_size": {"type": "integer"}
            }},
            "LoraInitRequest": {"type": "object", "required": ["lora_id"], "properties": {
                "lora_id": {"type": "string"},
                "base_model": {"type": "string", "default": "Qwen/Qwen3-8B"},
                "lora_r": int("LoRA rank", 32, Some(4), Some(128)),
                "lora_alpha": int("LoRA alpha scaling factor", 64, Some(8), Some(256)),
                "target_modules": {"type": ["array", "null"], "items": {"type": "string"}, "description": "Defaults to attention + MLP projections"}
            }},
            "LoraInitResponse": {"type": "object", "required": ["lora_id"], "properties": {"lora_id": {"type": "string"}}},
            "LoraListResponse": {"type": "object", "required": ["loras"], "properties": {"loras": {"type": "array", "items": {"type": "string"}}}},
            "ScoreRequest": {"type": "object", "required": ["prompt", "response"], "properties": {
                "lora_id": {"type": ["string", "null"], "description": "Adapter or alias; absent = base model"},
                "prompt": {"type": "string", "minLength": 1},
                "response": {"type": "string", "minLength": 1}
            }},
            "ScoreResponse": {"type": "object", "properties": {
                "logprobs": {"type": "array", "items": {"type": "number"}}, "tokens": {"type": "array", "items": {"type": "string"}},
                "prompt_tokens": {"type": ["integer", "null"]}, "completion_tokens": {"type": "integer"},
                "logprob_sum": {"type": "number"}, "source": {"type": "string"}
            }},
            "HTTPError": {"type": "object", "properties": {"detail": {"type": "string"}}},
            "HTTPValidationError": {"type": "object", "properties": {"detail": {"type": "array", "items": {"type": "object", "properties": {
                "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                "msg": {"type": "string"}, "type": {"type": "string"}
            }}}}}
        }}
    })
}
