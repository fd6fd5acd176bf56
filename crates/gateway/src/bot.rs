//! The gateway loop: long polling, per-chat ordering, commands, chat and feedback handling.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::backend::{
    BackendError, ChatBackend, ChatMessage, ChatReply, ClaasClient, FeedbackPayload,
};
use crate::config::GatewayConfig;
use crate::conversation::{Conversations, LastReply, UndoPoint};
use crate::error::GatewayError;
use crate::feedback::success_reply;
use crate::telegram::{Message, TelegramClient, TelegramError, Update};
use crate::text::{split_message, visible_reply, TELEGRAM_MESSAGE_LIMIT};

/// Telegram shows "typing…" for about 5 s; refresh a little before it fades.
const TYPING_REFRESH: Duration = Duration::from_secs(4);
/// Attempts to deliver one outgoing message.
const SEND_ATTEMPTS: u32 = 4;
/// Longest `retry_after` from Telegram that we honour before giving up on a message.
const MAX_RETRY_AFTER: u64 = 60;

const START_TEXT: &str = "\u{1F44B} Hi! I'm an assistant that learns from your feedback.\n\n\
Just send me a message. If you want a reply to be different, tell me with /feedback <what to change> \
and I will update myself right away.\n\n\
/feedback <text> \u{2013} teach me from my last reply\n\
/undo \u{2013} take back what I learned from your last feedback\n\
/reset \u{2013} start a new conversation\n\
/help \u{2013} show the commands";

const HELP_TEXT: &str = "Send me any message and I'll reply.\n\n\
/feedback <text> \u{2013} feedback on my last reply; I learn from it right away (e.g. /feedback be shorter)\n\
/undo \u{2013} revert my last update from your feedback in this chat\n\
/reset \u{2013} forget this conversation and start over\n\
/start \u{2013} the welcome message\n\
/help \u{2013} this message";

const RESET_TEXT: &str = "\u{1F504} Conversation reset. Send a message to start a new one.";
const FEEDBACK_USAGE: &str = "Usage: /feedback <your feedback here>";
const NO_CONVERSATION: &str =
    "No recent conversation found. Chat with the bot first, then use /feedback.";
const NO_BOT_RESPONSE: &str = "No bot response found in the last conversation.";
const LEARNING: &str = "\u{1F9E0} Learning from your feedback\u{2026}";
const NOTHING_TO_UNDO: &str = "Nothing to undo in this chat yet.";

/// Run the gateway until `shutdown` completes.
///
/// Telegram and backend failures are retried with back-off and reported to the user; the only
/// errors returned are fatal ones (bad configuration, or Telegram rejecting the token). On
/// shutdown, polling stops, in-flight replies get [`GatewayConfig::shutdown_grace`] to finish,
/// and the processed updates are confirmed to Telegram.
pub async fn run<F>(cfg: GatewayConfig, shutdown: F) -> Result<(), GatewayError>
where
    F: Future<Output = ()> + Send,
{
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(GatewayError::HttpClient)?;
    let tg = TelegramClient::new(http.clone(), &cfg.telegram_api_url, &cfg.telegram_bot_token);
    let mut bot = Bot {
        chat: ChatBackend::new(
            http.clone(),
            &cfg.claas_api_url,
            cfg.claas_api_key.clone(),
            cfg.model.clone(),
            cfg.max_tokens,
            cfg.chat_timeout,
        ),
        claas: ClaasClient::new(
            http,
            &cfg.claas_api_url,
            cfg.claas_api_key.clone(),
            cfg.feedback_timeout,
        ),
        convs: Mutex::new(Conversations::new(
            cfg.conversation_ttl,
            cfg.max_conversations,
            cfg.max_history_messages,
        )),
        tg: tg.clone(),
        username: None,
        cfg,
    };
    tokio::pin!(shutdown);

    let mut backoff = Backoff::new(bot.cfg.retry_base, bot.cfg.retry_max);
    loop {
        let res = tokio::select! {
            biased;
            _ = &mut shutdown => return Ok(()),
            r = tg.get_me() => r,
        };
        match res {
            Ok(me) => {
                tracing::info!(
                    "telegram gateway running as @{} (model {}, CLaaS API {})",
                    me.username.as_deref().unwrap_or("?"),
                    bot.cfg.model,
                    bot.cfg.claas_api_url
                );
                bot.username = me.username;
                break;
            }
            Err(e) => {
                if let Some(fatal) = fatal_error(&e) {
                    return Err(fatal);
                }
                let delay = retry_delay(&e, &mut backoff);
                tracing::warn!("telegram getMe failed ({e}); retrying in {delay:?}");
                tokio::select! {
                    biased;
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    let bot = Arc::new(bot);
    let mut offset: i64 = 0;
    let mut tasks = JoinSet::new();
    let mut chains: HashMap<i64, oneshot::Receiver<()>> = HashMap::new();
    backoff.reset();
    let outcome = loop {
        reap(&mut tasks);
        let res = tokio::select! {
            biased;
            _ = &mut shutdown => break Ok(()),
            r = tg.get_updates(offset, bot.cfg.poll_timeout) => r,
        };
        match res {
            Ok((updates, max_id)) => {
                backoff.reset();
                if let Some(id) = max_id {
                    offset = offset.max(id + 1);
                }
                for update in updates {
                    dispatch(&bot, &mut tasks, &mut chains, update);
                }
                if chains.len() > 256 {
                    // A finished (or dropped) turn has sent its value; keep only chats with a
                    // turn still running.
                    chains.retain(|_, rx| {
                        matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
                    });
                }
            }
            Err(e) => {
                if let Some(fatal) = fatal_error(&e) {
                    break Err(fatal);
                }
                if e.is_webhook_conflict() {
                    tracing::warn!("the bot has a webhook set; deleting it to use long polling");
                    if let Err(e) = tg.delete_webhook().await {
                        tracing::warn!("deleteWebhook failed: {e}");
                    }
                }
                let delay = retry_delay(&e, &mut backoff);
                tracing::warn!("telegram getUpdates failed ({e}); retrying in {delay:?}");
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };

    let grace = bot.cfg.shutdown_grace;
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("abandoning {} unfinished replies at shutdown", tasks.len());
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    if offset > 0 {
        // Confirm what we consumed so a restart does not answer the same messages again.
        let confirm = tg.get_updates(offset, Duration::ZERO);
        let _ = tokio::time::timeout(Duration::from_secs(5), confirm).await;
    }
    tracing::info!("telegram gateway stopped");
    outcome
}

fn fatal_error(e: &TelegramError) -> Option<GatewayError> {
    match e {
        TelegramError::Api {
            code, description, ..
        } if e.is_bad_token() => Some(GatewayError::Unauthorized {
            code: *code,
            description: description.clone(),
        }),
        _ => None,
    }
}

fn retry_delay(e: &TelegramError, backoff: &mut Backoff) -> Duration {
    match e {
        TelegramError::Api {
            retry_after: Some(secs),
            ..
        } => Duration::from_secs((*secs).min(MAX_RETRY_AFTER)),
        _ => backoff.next_delay(),
    }
}

fn reap(tasks: &mut JoinSet<()>) {
    while let Some(res) = tasks.try_join_next() {
        if let Err(e) = res {
            if e.is_panic() {
                tracing::error!("a message handler panicked: {e}");
            }
        }
    }
}

/// Messages of one chat are handled in arrival order: each handler first waits for the
/// previous handler of its chat to release its turn. Chats run in parallel.
fn dispatch(
    bot: &Arc<Bot>,
    tasks: &mut JoinSet<()>,
    chains: &mut HashMap<i64, oneshot::Receiver<()>>,
    update: Update,
) {
    let Some(msg) = update.message else {
        return;
    };
    if msg.from.as_ref().is_some_and(|u| u.is_bot) {
        return;
    }
    let chat = msg.chat.id;
    let previous = chains.remove(&chat);
    let (turn, next) = oneshot::channel();
    chains.insert(chat, next);
    let bot = Arc::clone(bot);
    tasks.spawn(async move {
        if let Some(previous) = previous {
            // Err just means the previous handler ended without releasing explicitly.
            let _ = previous.await;
        }
        bot.handle(msg, Turn(Some(turn))).await;
    });
}

/// Holding a `Turn` keeps later messages of the same chat waiting; dropping it lets them go.
struct Turn(Option<oneshot::Sender<()>>);

impl Turn {
    fn release(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.release();
    }
}

struct Bot {
    cfg: GatewayConfig,
    tg: TelegramClient,
    chat: ChatBackend,
    claas: ClaasClient,
    convs: Mutex<Conversations>,
    /// Our @username, to ignore `/command@OtherBot` in groups.
    username: Option<String>,
}

impl Bot {
    fn convs(&self) -> MutexGuard<'_, Conversations> {
        // The store stays consistent even if a holder panicked (every update is one call).
        self.convs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn handle(&self, msg: Message, turn: Turn) {
        let chat = msg.chat.id;
        let user = msg.from.as_ref().map(|u| u.id);
        if !self.cfg.is_allowed(user) {
            tracing::info!(
                "refusing a message from Telegram user {user:?} (not in the allow-list)"
            );
            let who = user.map_or_else(|| "unknown".to_string(), |id| id.to_string());
            self.say(
                chat,
                &format!(
                    "\u{26D4} Sorry, you are not allowed to use this bot (your Telegram user id is {who})."
                ),
            )
            .await;
            return;
        }
        let Some(text) = msg.text.as_deref().map(str::trim).filter(|t| !t.is_empty()) else {
            self.say(chat, "I can only read text messages.").await;
            return;
        };
        match parse_command(text) {
            Some(cmd) if cmd.target.as_deref().is_some_and(|t| !self.is_me(t)) => {}
            Some(Command { name, args, .. }) => match name.as_str() {
                "start" => self.say(chat, START_TEXT).await,
                "help" => self.say(chat, HELP_TEXT).await,
                "reset" => {
                    self.convs().reset(chat);
                    self.say(chat, RESET_TEXT).await;
                }
                "feedback" => self.feedback(chat, args, turn).await,
                "undo" => self.undo(chat).await,
                other => {
                    self.say(chat, &format!("Unknown command /{other}.\n\n{HELP_TEXT}"))
                        .await
                }
            },
            None => self.reply(chat, text).await,
        }
    }

    fn is_me(&self, username: &str) -> bool {
        self.username
            .as_deref()
            .is_some_and(|me| me.eq_ignore_ascii_case(username))
    }

    /// One chat turn: history + message to the model, typing indicator meanwhile, answer back.
    async fn reply(&self, chat: i64, text: &str) {
        let mut messages = Vec::new();
        if let Some(system) = &self.cfg.system_prompt {
            messages.push(ChatMessage::new("system", system.clone()));
        }
        messages.extend(self.convs().history(chat, Instant::now()));
        let user = ChatMessage::new("user", text);
        messages.push(user.clone());

        let first_typing = async {
            if let Err(e) = self.tg.send_typing(chat).await {
                tracing::debug!("typing indicator failed: {e}");
            }
        };
        let generate = async {
            let completion = self.complete_with_retry(&messages);
            tokio::pin!(completion);
            let start = tokio::time::Instant::now() + TYPING_REFRESH;
            let mut ticker = tokio::time::interval_at(start, TYPING_REFRESH);
            loop {
                tokio::select! {
                    r = &mut completion => break r,
                    _ = ticker.tick() => {
                        let _ = self.tg.send_typing(chat).await;
                    }
                }
            }
        };
        // Joining (not racing) makes the first typing action land before the reply.
        let ((), result) = tokio::join!(first_typing, generate);

        match result {
            Ok(ChatReply { id, content }) => {
                let visible = visible_reply(&content).to_string();
                let last = LastReply {
                    completion_id: id,
                    prompt: text.to_string(),
                    // A reply with nothing visible is still what was sampled; name all of it.
                    response: if visible.is_empty() {
                        content.clone()
                    } else {
                        visible.clone()
                    },
                    messages,
                };
                self.convs().record_exchange(
                    chat,
                    user,
                    ChatMessage::new("assistant", content),
                    last,
                    Instant::now(),
                );
                let shown = if visible.is_empty() {
                    "(The model's reply had no visible text.)".to_string()
                } else {
                    visible
                };
                for piece in split_message(&shown, TELEGRAM_MESSAGE_LIMIT) {
                    self.say(chat, &piece).await;
                }
            }
            Err(e) => {
                tracing::warn!("chat completion for chat {chat} failed: {e}");
                self.say(
                    chat,
                    &format!("\u{26A0}\u{FE0F} Sorry, I could not get a reply: {e}. Please try again in a moment."),
                )
                .await;
            }
        }
    }

    async fn complete_with_retry(
        &self,
        messages: &[ChatMessage],
    ) -> Result<ChatReply, BackendError> {
        let mut backoff = Backoff::new(self.cfg.retry_base, self.cfg.retry_max);
        let mut attempt = 1;
        loop {
            match self.chat.complete(messages).await {
                Ok(reply) => return Ok(reply),
                Err(e) if e.is_transient() && attempt < self.cfg.backend_attempts => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        "chat completion attempt {attempt} failed ({e}); retrying in {delay:?}"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `/feedback <text>`, as the reference plugin: snapshot, "learning" notice, API call, result.
    async fn feedback(&self, chat: i64, args: &str, mut turn: Turn) {
        let feedback = args.trim();
        if feedback.is_empty() {
            self.say(chat, FEEDBACK_USAGE).await;
            return;
        }
        let snapshot = self.convs().get(chat, Instant::now()).cloned();
        // The update can take minutes; the chat goes on meanwhile (the snapshot is taken).
        turn.release();
        let Some(conv) = snapshot else {
            self.say(chat, NO_CONVERSATION).await;
            return;
        };
        let Some(last) = conv.last else {
            self.say(chat, NO_BOT_RESPONSE).await;
            return;
        };
        self.say(chat, LEARNING).await;
        let payload = FeedbackPayload {
            lora_id: self.cfg.lora_id.clone(),
            prompt: last.prompt,
            response: last.response,
            feedback: feedback.to_string(),
            completion_id: last.completion_id,
            messages: last.messages,
            training: json!({ "teacher_mode": "self" }),
        };
        let started = Instant::now();
        let text = match self.claas.submit(&payload).await {
            Ok(result) => {
                // A rolled-back update changed nothing serving sees: nothing to undo.
                let point = result
                    .previous_version
                    .filter(|_| result.rolled_back().is_none())
                    .map(|version| UndoPoint {
                        version,
                        applied: result.adapter_version,
                    });
                self.convs().set_undo(chat, point, Instant::now());
                success_reply(&result, started.elapsed().as_secs_f64() * 1000.0)
            }
            Err(e) => {
                tracing::warn!("feedback for chat {chat} failed: {e}");
                format!("\u{274C} Feedback failed: {e}")
            }
        };
        self.say(chat, &text).await;
    }

    /// `/undo`: roll the adapter back to the version this chat's last feedback trained from.
    /// The chat's turn is held throughout, so a second `/undo` sees the first one's outcome.
    async fn undo(&self, chat: i64) {
        let Some(point) = self.convs().undo_point(chat) else {
            self.say(chat, NOTHING_TO_UNDO).await;
            return;
        };
        let text = match self.claas.rollback(&self.cfg.lora_id, point.version).await {
            Ok(result) => {
                self.convs().consume_undo(chat, point);
                format!(
                    "\u{21A9}\u{FE0F} Reverted to v{}",
                    result.version.unwrap_or(point.version)
                )
            }
            Err(e) => {
                tracing::warn!("undo for chat {chat} failed: {e}");
                format!("\u{274C} Undo failed: {e}")
            }
        };
        self.say(chat, &text).await;
    }

    /// Send one message, retrying network errors, 5xx and 429; give up on other refusals.
    async fn say(&self, chat: i64, text: &str) {
        let mut backoff = Backoff::new(self.cfg.retry_base, self.cfg.retry_max);
        for attempt in 1..=SEND_ATTEMPTS {
            match self.tg.send_message(chat, text).await {
                Ok(()) => return,
                Err(e) => {
                    let retryable = match &e {
                        TelegramError::Network(_) => true,
                        TelegramError::Api { code, .. } => *code == 429 || *code >= 500,
                        TelegramError::Decode(_) => false,
                    };
                    if !retryable || attempt == SEND_ATTEMPTS {
                        tracing::error!("could not send a message to chat {chat}: {e}");
                        return;
                    }
                    let delay = retry_delay(&e, &mut backoff);
                    tracing::warn!("sendMessage failed ({e}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// A parsed `/name@target args` command.
#[derive(Debug, PartialEq, Eq)]
struct Command<'a> {
    name: String,
    target: Option<String>,
    args: &'a str,
}

/// `/cmd@BotName args`; `None` for ordinary text.
fn parse_command(text: &str) -> Option<Command<'_>> {
    let rest = text.strip_prefix('/')?;
    let (head, args) = match rest.find(char::is_whitespace) {
        Some(i) => (&rest[..i], rest[i..].trim_start()),
        None => (rest, ""),
    };
    let (name, target) = match head.split_once('@') {
        Some((n, t)) => (n, Some(t.to_string())),
        None => (head, None),
    };
    if name.is_empty() {
        return None;
    }
    Some(Command {
        name: name.to_ascii_lowercase(),
        target,
        args,
    })
}

/// Exponential back-off: base, 2×base, … up to max.
struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            next: base,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        d
    }

    fn reset(&mut self) {
        self.next = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_parsed() {
        let c = |name: &str, target: Option<&str>, args| {
            Some(Command {
                name: name.into(),
                target: target.map(String::from),
                args,
            })
        };
        assert_eq!(parse_command("/start"), c("start", None, ""));
        assert_eq!(
            parse_command("/feedback@MyBot  be shorter please"),
            c("feedback", Some("MyBot"), "be shorter please")
        );
        assert_eq!(
            parse_command("/Feedback\nline two"),
            c("feedback", None, "line two")
        );
        assert_eq!(parse_command("hello /start"), None);
        assert_eq!(parse_command("/ hi"), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_ceiling() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let got: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay().as_secs(), 1);
    }
}
