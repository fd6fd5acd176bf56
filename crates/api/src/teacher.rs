//! `teacher_mode: "remote"`: the teacher's top-k log-probabilities come from another model on a
//! vLLM-compatible server (`CLAAS_TEACHER_BASE_URL`; `claas serve --max-logprobs 100` or vLLM
//! with `--max-logprobs 100`), as the reference's `TeacherService` scores with vLLM's
//! `prompt_logprobs`. The server scores exactly the token ids the local self-teacher would read
//! (teacher prompt + response), so the teacher must share the student's tokenizer (e.g. a larger
//! Qwen3 teaching a smaller one) and the two modes differ only in the model.

use claas_sdpo::ExternalTeacher;

use crate::backend::{BackendError, HttpBackend};

/// Client of the remote teacher server.
#[derive(Debug, Clone)]
pub struct RemoteTeacher {
    http: HttpBackend,
    model: Option<String>,
}

impl RemoteTeacher {
    /// `model` = the served name to score with; `None` = the first model the server lists.
    pub fn new(base_url: &str, api_key: Option<String>, model: Option<String>) -> Self {
        RemoteTeacher {
            http: HttpBackend::new(base_url, api_key),
            model: model.filter(|m| !m.trim().is_empty()),
        }
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        self.http.base_url()
    }

    /// Top-`k` scores of each `(token ids, teacher prompt length)`, at the response positions.
    pub async fn score(
        &self,
        inputs: &[(Vec<u32>, usize)],
        k: usize,
    ) -> Result<Vec<ExternalTeacher>, BackendError> {
        let model = match &self.model {
            Some(m) => m.clone(),
            None => self.http.first_model().await?,
        };
        let mut out = Vec::with_capacity(inputs.len());
        for (ids, prompt_len) in inputs {
            let s = self.http.prompt_topk(&model, ids, *prompt_len, k).await?;
            out.push(ExternalTeacher {
                rows: s.rows,
                response_logprobs: s.actual,
            });
        }
        Ok(out)
    }
}
