//! The OpenAPI 3.1 document, generated with utoipa from the request/response types
//! (`ToSchema`) and the handlers' `#[utoipa::path]` attributes, and a Swagger UI page for
//! `/docs`. utoipa only describes: the handlers still parse raw bodies with [`crate::validate`].

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{json, Value};
use utoipa::openapi::schema::{
    AllOfBuilder, AnyOfBuilder, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema,
    SchemaFormat, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{OpenApi, PartialSchema, ToSchema};

use crate::types::{FeedbackItem, GuardrailRequest, Orchestration, TRAINING_FIELDS};

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

/// Schema of `training` ([`crate::types::TrainingConfig`], the trainer's type): its numeric
/// fields come from [`TRAINING_FIELDS`], the table validation reads, so the document's
/// defaults and ranges cannot drift from what the server enforces.
pub struct TrainingConfigSchema;

impl PartialSchema for TrainingConfigSchema {
    fn schema() -> RefOr<Schema> {
        let mut obj = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("SDPO hyper-parameters; every field is optional"));
        for f in TRAINING_FIELDS {
            let mut p = ObjectBuilder::new().description(Some(f.description));
            p = if f.integer {
                p.schema_type(Type::Integer)
                    .default(Some(json!(f.default as i64)))
                    .minimum(f.min.map(|x| x as i64))
                    .maximum(f.max.map(|x| x as i64))
            } else {
                p.schema_type(Type::Number)
                    .default(Some(json!(f.default)))
                    .minimum(f.min)
                    .maximum(f.max)
            };
            obj = obj.property(f.name, p);
        }
        let d = crate::types::TrainingConfig::default();
        let with_default = |name: &str, default: &str| {
            AllOfBuilder::new()
                .item(Ref::from_schema_name(name))
                .default(Some(json!(default)))
        };
        obj = obj
            .property(
                "teacher_mode",
                with_default("TeacherMode", d.teacher_mode.as_str()),
            )
            .property(
                "teacher_prompt",
                with_default("TeacherPrompt", d.teacher_prompt.as_str()).description(Some(
                    "Self-teacher prompt: 'hindsight' (reference HEAD: the student's system \
                     prompt, the clean user prompt and a hindsight block) or '0f67ae6' (the \
                     seed's coding-assistant prompt)",
                )),
            );
        obj.into()
    }
}

impl ToSchema for TrainingConfigSchema {
    fn name() -> Cow<'static, str> {
        "TrainingConfig".into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push(("TeacherMode".into(), claas_sdpo::TeacherMode::schema()));
        schemas.push(("TeacherPrompt".into(), claas_sdpo::TeacherPrompt::schema()));
    }
}

/// Options of a feedback/distill body besides its item(s).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct FeedbackOptions {
    orchestration: Option<Orchestration>,
    /// Extension: the post-update guardrail's settings for this request.
    guardrail: Option<GuardrailRequest>,
}

/// The wire form of [`crate::types::FeedbackRequest`] (whose Rust shape is the parsed one):
/// one item's fields at the top level, or `requests: [...]` (used whenever present and not
/// null; the top-level item fields are then ignored).
impl PartialSchema for crate::types::FeedbackRequest {
    fn schema() -> RefOr<Schema> {
        let batch = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "requests",
                ArrayBuilder::new()
                    .items(Ref::from_schema_name(FeedbackItem::name()))
                    .min_items(Some(1))
                    .description(Some(
                        "Several items for one adapter (same lora_id and training), applied \
                         as one batched step",
                    )),
            )
            .required("requests");
        let options = Ref::from_schema_name(FeedbackOptions::name());
        AnyOfBuilder::new()
            .item(
                AllOfBuilder::new()
                    .item(Ref::from_schema_name(FeedbackItem::name()))
                    .item(options.clone()),
            )
            .item(AllOfBuilder::new().item(batch).item(options))
            .description(Some(
                "Either one item's fields (lora_id, prompt, response, feedback required) or \
                 requests: [...]",
            ))
            .into()
    }
}

impl ToSchema for crate::types::FeedbackRequest {
    fn name() -> Cow<'static, str> {
        "FeedbackRequest".into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((FeedbackItem::name().into(), FeedbackItem::schema()));
        FeedbackItem::schemas(schemas);
        schemas.push((FeedbackOptions::name().into(), FeedbackOptions::schema()));
        FeedbackOptions::schemas(schemas);
    }
}

/// `/v1/score` takes either form; `messages` present selects the chat form.
pub struct ScoreBody;

impl PartialSchema for ScoreBody {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(Ref::from_schema_name("ScoreRequest"))
            .item(Ref::from_schema_name("ChatScoreRequest"))
            .description(Some(
                "{lora_id?, prompt, response}, or the reference's {model, messages, completion} \
                 (chosen when messages is present)",
            ))
            .into()
    }
}

impl ToSchema for ScoreBody {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        use crate::types::{ChatScoreRequest, ScoreRequest};
        schemas.push(("ScoreRequest".into(), ScoreRequest::schema()));
        schemas.push(("ChatScoreRequest".into(), ChatScoreRequest::schema()));
    }
}

/// FastAPI's error body: `{"detail": "..."}`.
#[derive(Serialize, ToSchema)]
#[schema(as = HTTPError)]
#[allow(dead_code)]
pub struct HttpError {
    pub detail: String,
}

pub(crate) fn loc_schema() -> ArrayBuilder {
    ArrayBuilder::new().items(
        AnyOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ObjectBuilder::new().schema_type(Type::Integer)),
    )
}

/// FastAPI's 422 body: `{"detail": [{loc, msg, type, input?, ctx?}]}`.
#[derive(Serialize, ToSchema)]
#[schema(as = HTTPValidationError)]
#[allow(dead_code)]
pub struct HttpValidationError {
    pub detail: Vec<crate::error::ValidationIssue>,
}

/// A 422 of a route that can also reject a parsed request (e.g. a prompt longer than the
/// model's context): the same list form as every other 422, one issue at `["body"]`.
pub struct Unprocessable;

impl PartialSchema for Unprocessable {
    fn schema() -> RefOr<Schema> {
        Ref::from_schema_name("HTTPValidationError").into()
    }
}

impl ToSchema for Unprocessable {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push(("HTTPValidationError".into(), HttpValidationError::schema()));
        HttpValidationError::schemas(schemas);
    }
}

// The bodies below are built with `json!` in the handlers; these structs only describe them.

/// `GET /`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ApiInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    /// `/docs`
    pub docs: String,
}

/// `GET /v1/health`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct HealthResponse {
    /// `healthy` (trainer loaded and the inference server not unhealthy) or `degraded`.
    pub status: String,
    /// The SDPO trainer: `{status, error, model?}`.
    #[schema(value_type = Object)]
    pub worker: Value,
    /// Same as `worker` (self-distillation: the teacher is the base model).
    #[schema(value_type = Object)]
    pub teacher: Value,
    /// The inference server's health (`status` is `not_configured` without one).
    #[schema(value_type = Object)]
    pub inference: Value,
    pub base_model: String,
}

/// `POST /v1/lora/init`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct LoraInitResponse {
    /// `{lora_id}-init`
    pub lora_id: String,
}

/// `GET /v1/lora`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct LoraListResponse {
    pub loras: Vec<String>,
}

/// `DELETE /v1/lora`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct LoraDeleteResponse {
    /// `false` when there was nothing to delete.
    pub deleted: bool,
}

/// One entry of `GET /v1/lora/versions`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct VersionEntry {
    pub version: u64,
    /// `{id}@v{N}`
    pub name: String,
    pub created_utc: String,
    pub parent: Option<u64>,
    pub current: bool,
    /// `init`, `feedback`, `distill`, `rollback`, ...
    pub kind: Option<String>,
    pub request_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<Value>,
}

/// `GET /v1/lora/versions`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct VersionsResponse {
    pub lora_id: String,
    /// The alias the request named, if it named one.
    pub alias: Option<String>,
    pub current: Option<u64>,
    /// Oldest first.
    pub versions: Vec<VersionEntry>,
}

/// `POST /v1/lora/rollback`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct RollbackResponse {
    pub status: String,
    pub request_id: String,
    pub lora_id: String,
    pub version: u64,
    pub previous_version: Option<u64>,
    pub name: String,
}

/// `POST /v1/score` answer to the text form.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ScoreResponse {
    pub lora_id: Option<String>,
    pub resolved_lora_id: Option<String>,
    pub logprobs: Vec<f32>,
    /// The scored response tokens, decoded one by one (one per log-probability); empty when
    /// the inference server scored.
    pub tokens: Vec<String>,
    /// Their ids; null when the inference server scored.
    pub token_ids: Option<Vec<u32>>,
    pub prompt_tokens: Option<usize>,
    pub completion_tokens: usize,
    pub logprob_sum: f64,
    /// `trainer` or `inference_server`.
    pub source: String,
}

/// `POST /v1/score` answer to the chat form (reference HEAD).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ChatScoreResponse {
    pub logprobs: Vec<f32>,
    pub tokens: Vec<String>,
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub logprob_sum: f64,
    pub model: String,
    pub resolved_lora_id: Option<String>,
}

/// A file's bytes (`format: binary`), for the zip export and the plot images.
pub struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl ToSchema for Binary {}

/// Either `/v1/score` answer.
pub struct ScoreAnswer;

impl PartialSchema for ScoreAnswer {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(Ref::from_schema_name("ScoreResponse"))
            .item(Ref::from_schema_name("ChatScoreResponse"))
            .into()
    }
}

impl ToSchema for ScoreAnswer {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push(("ScoreResponse".into(), ScoreResponse::schema()));
        schemas.push(("ChatScoreResponse".into(), ChatScoreResponse::schema()));
    }
}

/// Routes served by handlers outside routes.rs (or a second path of one); these functions only
/// carry their description and are never called.
#[allow(dead_code)]
mod extra_paths {
    use super::{Binary, HealthResponse, HttpError, HttpValidationError, Unprocessable};

    #[utoipa::path(get, path = "/health", tag = "meta",
        summary = "Same as /v1/health",
        responses((status = 200, description = "Successful Response", body = HealthResponse)))]
    async fn health_alias() {}

    #[utoipa::path(get, path = "/v1/dashboard", tag = "dashboard",
        summary = "HTML dashboard: feedback history with charts, versions and rollback buttons",
        params(
            ("page" = Option<u64>, Query, minimum = 1, description = "1-based page (default 1)"),
            ("per_page" = Option<u64>, Query, minimum = 1,
                maximum = 200, description = "Records per page (default 20)"),
            ("lora_id" = Option<String>, Query, description = "Only this adapter (id or alias)"),
        ),
        responses(
            (status = 200, description = "HTML page", content_type = "text/html"),
            (status = 401, description = "API key set and not presented (HTML key form)",
                content_type = "text/html"),
            (status = 422, description = "Validation Error", body = HttpValidationError),
            (status = 500, description = "Reading the records failed", body = HttpError),
        ))]
    async fn dashboard() {}

    #[utoipa::path(get, path = "/v1/eval", tag = "dashboard",
        summary = "HTML page of the eval runs under the eval directory",
        params(
            ("run" = Option<String>, Query, description = "Only this run (a folder name)"),
            ("page" = Option<u64>, Query, minimum = 1, description = "1-based page (default 1)"),
            ("per_page" = Option<u64>, Query, minimum = 1,
                maximum = 200, description = "Runs per page (default 20)"),
        ),
        responses(
            (status = 200, description = "HTML page", content_type = "text/html"),
            (status = 401, description = "API key set and not presented (HTML key form)",
                content_type = "text/html"),
            (status = 404, description = "Unknown run", body = HttpError),
            (status = 422, description = "Validation Error", body = HttpValidationError),
            (status = 500, description = "Reading the runs failed", body = HttpError),
        ))]
    async fn eval_page() {}

    #[utoipa::path(get, path = "/v1/eval/plot", tag = "dashboard",
        summary = "A plot image of an eval run",
        params(
            ("run" = String, Query, description = "Run folder name"),
            ("preference" = String, Query, description = "Preference folder name"),
            ("name" = String, Query, description = "A .png or .svg file in its plots folder"),
        ),
        responses(
            (status = 200, description = "The image", content(
                (Binary = "image/png"), (String = "image/svg+xml"))),
            (status = 401, description = "API key set and not presented (HTML key form)",
                content_type = "text/html"),
            (status = 404, description = "No such plot", body = HttpError),
            (status = 422, description = "Validation Error, or the file is too large",
                body = Unprocessable),
            (status = 500, description = "Reading the plot failed", body = HttpError),
        ))]
    async fn eval_plot() {}
}

#[derive(OpenApi)]
#[openapi(
    paths(
        crate::routes::root,
        crate::routes::health,
        extra_paths::health_alias,
        crate::routes::openapi,
        crate::routes::docs,
        crate::routes::init_lora,
        crate::routes::list_loras,
        crate::routes::delete_lora,
        crate::routes::export_lora,
        crate::routes::lora_versions,
        crate::routes::rollback,
        crate::routes::chat_completions,
        crate::routes::completions,
        crate::routes::models,
        crate::routes::distill,
        crate::routes::feedback,
        crate::routes::score,
        crate::routes::metrics,
        extra_paths::dashboard,
        extra_paths::eval_page,
        extra_paths::eval_plot,
    ),
    components(schemas(HttpError, HttpValidationError, crate::error::ValidationIssue)),
    modifiers(&Bearer)
)]
struct ApiDoc;

/// The optional `CLAAS_API_KEY`, as a bearer token (see [`crate::auth`]).
struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        if let Some(c) = doc.components.as_mut() {
            c.add_security_scheme(
                "api_key",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "CLAAS_API_KEY, when the server has one: needed by writes (but \
                             /v1/score) and by the export, versions, dashboard and eval routes",
                        ))
                        .build(),
                ),
            );
        }
    }
}

/// The OpenAPI document served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.title = crate::routes::API_NAME.into();
    doc.info.version = crate::routes::API_VERSION.into();
    doc.info.description = Some(crate::routes::API_DESCRIPTION.into());
    doc
}

/// The adapter id grammar of `claas_store::validate_id`: up to 16 `/`-separated components
/// of `[A-Za-z0-9._-]`, none starting with `.` or longer than 128 bytes, trailing slashes
/// allowed. utoipa's `pattern` takes only a literal, so the document gets it here, once.
const LORA_ID_PATTERN: &str =
    r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}){0,15}/*$";

/// Request schemas whose `lora_id` must be an adapter id (or an alias, which has the same
/// grammar); the query parameters named `lora_id` get the same pattern.
const LORA_ID_SCHEMAS: &[&str] = &["FeedbackItem", "LoraInitRequest", "RollbackRequest"];

/// [`openapi`] as JSON, with the adapter id grammar on every `lora_id` a request sends.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(openapi()).unwrap_or(Value::Null);
    let constrain = |schema: &mut Value| {
        if let Some(o) = schema.as_object_mut() {
            o.insert("pattern".into(), LORA_ID_PATTERN.into());
            o.insert("maxLength".into(), 512.into());
        }
    };
    for name in LORA_ID_SCHEMAS {
        let Some(schema) = doc.pointer_mut(&format!("/components/schemas/{name}")) else {
            continue;
        };
        // A struct with flattened parts is an `allOf`; the field sits in one of them.
        if let Some(parts) = schema.get_mut("allOf").and_then(Value::as_array_mut) {
            for part in parts {
                if let Some(p) = part.pointer_mut("/properties/lora_id") {
                    constrain(p);
                }
            }
        } else if let Some(p) = schema.pointer_mut("/properties/lora_id") {
            constrain(p);
        }
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for op in paths.values_mut().filter_map(Value::as_object_mut) {
            for params in op
                .values_mut()
                .filter_map(|o| o.get_mut("parameters"))
                .filter_map(Value::as_array_mut)
            {
                for param in params.iter_mut() {
                    if param["name"] == "lora_id" && param["in"] == "query" {
                        if let Some(schema) = param.get_mut("schema") {
                            constrain(schema);
                        }
                    }
                }
            }
        }
    }
    doc
}
