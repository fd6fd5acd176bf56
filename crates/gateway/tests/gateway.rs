//! The Telegram gateway against a fake Bot API and a fake CLaaS API (chat proxy, feedback,
//! rollback).

mod common;

use std::collections::HashSet;

use claas_gateway::{GatewayConfig, GatewayError};
use common::*;
use serde_json::json;

const ALICE: i64 = 1001;
const BOB: i64 = 2002;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_gets_the_model_reply_after_a_typing_action() {
    let h = Harness::start(|_| {}).await;
    h.tg.push_text(ALICE, "hello there");
    let sent = h.tg.wait_sent(ALICE, 1).await;
    assert_eq!(sent, vec![echo_reply("hello there")]);

    let log = h.tg.log(ALICE);
    assert_eq!(log[0], ("sendChatAction".to_string(), "typing".to_string()));
    assert_eq!(log.last().unwrap().0, "sendMessage");
    // Plain text: no parse mode, so model Markdown can never make Telegram reject a reply.
    assert!(h.tg.sent_raw().iter().all(|m| m.parse_mode.is_none()));

    // The chat went to the CLaaS API's proxy (the only server that answers chat here).
    let reqs = h.chat.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0]["model"], "openclaw-assistant-latest");
    assert_eq!(reqs[0]["stream"], false);
    assert_eq!(
        reqs[0]["messages"],
        json!([{"role": "user", "content": "hello there"}])
    );
    assert_eq!(h.chat.auth_headers()[0].as_deref(), Some("Bearer k-api"));

    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_are_kept_per_chat_and_reset_forgets() {
    let h = Harness::start(|_| {}).await;
    h.tg.push_text(ALICE, "one");
    h.tg.wait_sent(ALICE, 1).await;
    h.tg.push_text(BOB, "bob here");
    h.tg.wait_sent(BOB, 1).await;
    h.tg.push_text(ALICE, "two");
    h.tg.wait_sent(ALICE, 2).await;

    let reqs = h.chat.requests();
    let alice_second = reqs
        .iter()
        .find(|r| r["messages"].as_array().unwrap().len() == 3)
        .unwrap();
    assert_eq!(
        alice_second["messages"],
        json!([
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": echo_reply("one")},
            {"role": "user", "content": "two"},
        ])
    );

    h.tg.push_text(ALICE, "/reset");
    let sent = h.tg.wait_sent(ALICE, 3).await;
    assert!(sent[2].contains("Conversation reset"), "{sent:?}");
    h.tg.push_text(ALICE, "three");
    h.tg.wait_sent(ALICE, 4).await;
    let last = h.chat.requests().pop().unwrap();
    assert_eq!(
        last["messages"],
        json!([{"role": "user", "content": "three"}])
    );

    // Bob's conversation was not touched by Alice's reset.
    h.tg.push_text(BOB, "again");
    h.tg.wait_sent(BOB, 2).await;
    let last = h.chat.requests().pop().unwrap();
    assert_eq!(last["messages"].as_array().unwrap().len(), 3);

    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_names_the_recorded_completion_and_reports_the_version() {
    let h = Harness::start(|cfg| cfg.system_prompt = Some("Be brief.".into())).await;
    h.tg.push_text(ALICE, "hi");
    h.tg.wait_sent(ALICE, 1).await;
    h.chat
        .set_reply("<think>\nthey want detail\n</think>\n\nA much longer answer than needed");
    h.tg.push_text(ALICE, "  tell me more ");
    let sent = h.tg.wait_sent(ALICE, 2).await;
    assert_eq!(sent[1], "A much longer answer than needed");

    h.tg.push_text(ALICE, "/feedback be shorter");
    let sent = h.tg.wait_sent(ALICE, 4).await;
    assert_eq!(sent[2], "🧠 Learning from your feedback…");
    assert_eq!(
        sent[3],
        "✅ Feedback applied → v2 (1.3s | loss: 0.1235 | 7 tokens)"
    );

    let payloads = h.claas.payloads();
    assert_eq!(payloads.len(), 1);
    let p = &payloads[0];
    assert_eq!(p["lora_id"], "openclaw/assistant-latest");
    // The second chat request's id: the API's record of exactly what was sampled.
    assert_eq!(p["completion_id"], completion_id(2));
    assert_eq!(p["prompt"], "tell me more");
    assert_eq!(p["response"], "A much longer answer than needed");
    assert_eq!(p["feedback"], "be shorter");
    // The messages that reply answered, exactly as sent to the chat proxy.
    assert_eq!(p["messages"], h.chat.requests()[1]["messages"]);
    assert_eq!(
        p["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": echo_reply("hi")},
            {"role": "user", "content": "tell me more"},
        ])
    );
    assert!(p.get("rollout_logprobs").is_none(), "{p}");
    assert_eq!(p["training"], json!({"teacher_mode": "self"}));

    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_without_a_completion_id_still_sends_the_messages() {
    let h = Harness::start(|_| {}).await;
    h.chat.omit_ids();
    h.tg.push_text(ALICE, "hi");
    h.tg.wait_sent(ALICE, 1).await;
    h.tg.push_text(ALICE, "/feedback nicer");
    h.tg.wait_sent(ALICE, 3).await;
    let p = &h.claas.payloads()[0];
    assert!(p.get("completion_id").is_none(), "{p}");
    assert_eq!(p["messages"], json!([{"role": "user", "content": "hi"}]));
    assert_eq!(p["prompt"], "hi");
    assert_eq!(p["response"], echo_reply("hi"));
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_rolls_back_to_the_version_before_this_chats_last_feedback() {
    let h = Harness::start(|_| {}).await;
    h.claas.set_current_version(Some(6));
    h.tg.push_text(ALICE, "/undo");
    let sent = h.tg.wait_sent(ALICE, 1).await;
    assert_eq!(sent[0], "Nothing to undo in this chat yet.");
    assert!(
        h.claas.rollbacks().is_empty(),
        "no API call without feedback"
    );

    h.tg.push_text(ALICE, "hi");
    h.tg.wait_sent(ALICE, 2).await;
    h.tg.push_text(ALICE, "/feedback shorter");
    let sent = h.tg.wait_sent(ALICE, 4).await;
    assert!(
        sent[3].starts_with("✅ Feedback applied → v7 ("),
        "{sent:?}"
    );
    h.tg.push_text(ALICE, "/feedback even shorter");
    let sent = h.tg.wait_sent(ALICE, 6).await;
    assert!(
        sent[5].starts_with("✅ Feedback applied → v8 ("),
        "{sent:?}"
    );

    // Another chat's feedback and /reset do not change what this chat undoes.
    h.tg.push_text(BOB, "yo");
    h.tg.wait_sent(BOB, 1).await;
    h.tg.push_text(BOB, "/undo");
    let bob = h.tg.wait_sent(BOB, 2).await;
    assert_eq!(bob[1], "Nothing to undo in this chat yet.");
    h.tg.push_text(ALICE, "/reset");
    h.tg.wait_sent(ALICE, 7).await;

    h.tg.push_text(ALICE, "/undo");
    let sent = h.tg.wait_sent(ALICE, 8).await;
    assert_eq!(sent[7], "↩️ Reverted to v7");
    assert_eq!(
        h.claas.rollbacks(),
        vec![json!({"lora_id": "openclaw/assistant-latest", "version": 7})]
    );
    assert_eq!(h.claas.current_version(), Some(7));

    // Undone once: nothing left until the next feedback.
    h.tg.push_text(ALICE, "/undo");
    let sent = h.tg.wait_sent(ALICE, 9).await;
    assert_eq!(sent[8], "Nothing to undo in this chat yet.");
    assert_eq!(h.claas.rollbacks().len(), 1);

    h.tg.push_text(ALICE, "hello again");
    h.tg.wait_sent(ALICE, 10).await;
    h.tg.push_text(ALICE, "/feedback warmer");
    let sent = h.tg.wait_sent(ALICE, 12).await;
    assert!(
        sent[11].starts_with("✅ Feedback applied → v8 ("),
        "{sent:?}"
    );
    h.tg.push_text(ALICE, "/undo@test_bot");
    let sent = h.tg.wait_sent(ALICE, 13).await;
    assert_eq!(sent[12], "↩️ Reverted to v7");
    assert_eq!(
        h.claas.rollbacks()[1],
        json!({"lora_id": "openclaw/assistant-latest", "version": 7})
    );
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_errors_from_the_api_are_reported_and_keep_the_undo_point() {
    let h = Harness::start(|_| {}).await;
    h.tg.push_text(ALICE, "hi");
    h.tg.wait_sent(ALICE, 1).await;
    h.tg.push_text(ALICE, "/feedback shorter");
    let sent = h.tg.wait_sent(ALICE, 3).await;
    assert!(
        sent[2].starts_with("✅ Feedback applied → v2 ("),
        "{sent:?}"
    );

    // 409: an update of the adapter is running.
    h.claas.set_busy(true);
    h.tg.push_text(ALICE, "/undo");
    let sent = h.tg.wait_sent(ALICE, 4).await;
    assert_eq!(
        sent[3],
        "❌ Undo failed: Another feedback update is in progress. Try again in a moment."
    );
    h.claas.set_busy(false);

    // 404: the version is gone.
    h.claas.set_rollback_status(Some(404));
    h.tg.push_text(ALICE, "/undo");
    let sent = h.tg.wait_sent(ALICE, 5).await;
    assert_eq!(
        sent[4],
        r#"❌ Undo failed: CLaaS API returned 404: {"detail":"LoRA 'openclaw/assistant-init' has no version 1"}"#
    );
    h.claas.set_rollback_status(None);

    // The failures did not use up the undo.
    h.tg.push_text(ALICE, "/undo");
    let sent = h.tg.wait_sent(ALICE, 6).await;
    assert_eq!(sent[5], "↩️ Reverted to v1");
    let rollbacks = h.claas.rollbacks();
    assert_eq!(rollbacks.len(), 3);
    assert!(rollbacks.iter().all(|r| r["version"] == 1), "{rollbacks:?}");
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_on_an_adapter_without_history_leaves_nothing_to_undo() {
    let h = Harness::start(|_| {}).await;
    h.claas.set_current_version(None);
    h.tg.push_text(ALICE, "hi");
    h.tg.wait_sent(ALICE, 1).await;
    h.tg.push_text(ALICE, "/feedback shorter");
    let sent = h.tg.wait_sent(ALICE, 3).await;
    assert!(
        sent[2].starts_with("✅ Feedback applied → v1 ("),
        "{sent:?}"
    );
    h.tg.push_text(ALICE, "/undo");
    let sent = h.tg.wait_sent(ALICE, 4).await;
    assert_eq!(sent[3], "Nothing to undo in this chat yet.");
    assert!(h.claas.rollbacks().is_empty());
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_conflict_gives_the_busy_message() {
    let h = Harness::start(|_| {}).await;
    h.claas.set_busy(true);
    h.tg.push_text(ALICE, "hi");
    h.tg.wait_sent(ALICE, 1).await;
    h.tg.push_text(ALICE, "/feedback nicer");
    let sent = h.tg.wait_sent(ALICE, 3).await;
    assert_eq!(
        sent[2],
        "❌ Feedback failed: Another feedback update is in progress. Try again in a moment."
    );
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_errors_and_misuse_are_explained() {
    let h = Harness::start(|_| {}).await;
    h.tg.push_text(ALICE, "/feedback");
    h.tg.push_text(ALICE, "/feedback too early");
    let sent = h.tg.wait_sent(ALICE, 2).await;
    assert_eq!(sent[0], "Usage: /feedback <your feedback here>");
    assert_eq!(
        sent[1],
        "No recent conversation found. Chat with the bot first, then use /feedback."
    );

    h.claas.set_status(404);
    h.tg.push_text(ALICE, "hi");
    h.tg.wait_sent(ALICE, 3).await;
    h.tg.push_text(ALICE, "/feedback better");
    let sent = h.tg.wait_sent(ALICE, 5).await;
    assert_eq!(
        sent[4],
        r#"❌ Feedback failed: CLaaS API returned 404: {"detail":"LoRA not found: nope"}"#
    );
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_goes_on_while_feedback_is_being_applied() {
    let h = Harness::start(|_| {}).await;
    h.claas.hold();
    h.tg.push_text(ALICE, "hi");
    h.tg.wait_sent(ALICE, 1).await;
    h.tg.push_text(ALICE, "/feedback shorter");
    h.tg.wait_sent(ALICE, 2).await;
    h.claas.wait_held().await;

    h.tg.push_text(ALICE, "still there?");
    let sent = h.tg.wait_sent(ALICE, 3).await;
    assert_eq!(sent[2], echo_reply("still there?"));
    assert_eq!(h.claas.payloads().len(), 1);

    h.claas.release();
    let sent = h.tg.wait_sent(ALICE, 4).await;
    assert!(
        sent[3].starts_with("✅ Feedback applied → v2 ("),
        "{sent:?}"
    );
    // The feedback was about the exchange before it, not the one sent meanwhile.
    assert_eq!(h.claas.payloads()[0]["response"], echo_reply("hi"));
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_outside_the_allow_list_are_refused() {
    let h = Harness::start(|cfg: &mut GatewayConfig| {
        cfg.allowed_users = Some(HashSet::from([ALICE]));
    })
    .await;
    h.tg.push_text(BOB, "let me in");
    let sent = h.tg.wait_sent(BOB, 1).await;
    assert!(sent[0].contains("not allowed"), "{sent:?}");
    assert!(sent[0].contains(&BOB.to_string()));
    h.tg.push_text(BOB, "/feedback sneaky");
    h.tg.wait_sent(BOB, 2).await;

    h.tg.push_text(ALICE, "hello");
    let sent = h.tg.wait_sent(ALICE, 1).await;
    assert_eq!(sent[0], echo_reply("hello"));
    // Only Alice's message reached the model, and nothing reached the CLaaS API.
    assert_eq!(h.chat.requests().len(), 1);
    assert!(h.claas.payloads().is_empty());
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_replies_are_split_under_telegrams_limit() {
    let h = Harness::start(|_| {}).await;
    let paragraph = "lorem ipsum dolor sit amet ".repeat(60); // 1620 chars
    let long = [paragraph.trim_end(); 6].join("\n");
    h.chat.set_reply(&long);
    h.tg.push_text(ALICE, "write a lot");
    // Fake Telegram refuses anything over 4096 UTF-16 units, so every piece arriving is proof.
    let sent = h.tg.wait_sent(ALICE, 3).await;
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|s| s.encode_utf16().count() <= 4096));
    assert_eq!(sent.join("\n"), long);
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_api_is_reported_and_the_gateway_survives() {
    let h = Harness::start(|cfg| cfg.claas_api_url = dead_url()).await;
    h.tg.push_text(ALICE, "anyone?");
    let sent = h.tg.wait_sent(ALICE, 1).await;
    assert!(
        sent[0].starts_with("⚠️ Sorry, I could not get a reply: could not reach the CLaaS API"),
        "{sent:?}"
    );
    h.tg.push_text(ALICE, "/help");
    let sent = h.tg.wait_sent(ALICE, 2).await;
    assert!(sent[1].contains("/feedback"));
    // The failed turn was not recorded: there is nothing to give feedback on.
    h.tg.push_text(ALICE, "/feedback hmm");
    let sent = h.tg.wait_sent(ALICE, 3).await;
    assert!(sent[2].starts_with("No recent conversation found"));
    assert!(h.is_running());
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_server_errors_are_retried_then_reported() {
    let h = Harness::start(|_| {}).await;
    // Two 503s are absorbed by the retries (3 attempts).
    h.chat.fail_with(&[503, 503]);
    h.tg.push_text(ALICE, "wake up");
    let sent = h.tg.wait_sent(ALICE, 1).await;
    assert_eq!(sent[0], echo_reply("wake up"));
    assert_eq!(h.chat.requests().len(), 3);

    // Three are not, and the user hears about it; the next message works again.
    h.chat.fail_with(&[503, 503, 503]);
    h.tg.push_text(ALICE, "again");
    let sent = h.tg.wait_sent(ALICE, 2).await;
    assert_eq!(
        sent[1],
        "⚠️ Sorry, I could not get a reply: the CLaaS API answered 503: model is sleeping. Please try again in a moment."
    );
    // A 4xx is not retried.
    h.chat.fail_with(&[404]);
    h.tg.push_text(ALICE, "and now?");
    let sent = h.tg.wait_sent(ALICE, 3).await;
    assert!(sent[2].contains("answered 404"), "{sent:?}");
    assert_eq!(h.chat.requests().len(), 7);
    h.tg.push_text(ALICE, "fine?");
    let sent = h.tg.wait_sent(ALICE, 4).await;
    assert_eq!(sent[3], echo_reply("fine?"));
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_outages_are_retried() {
    let h = Harness::start(|_| {}).await;
    h.tg.fail_next_get_updates(3);
    h.tg.push_text(ALICE, "through the storm");
    let sent = h.tg.wait_sent(ALICE, 1).await;
    assert_eq!(sent[0], echo_reply("through the storm"));
    assert_eq!(h.tg.failed_get_updates(), 3);
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_is_removed_so_long_polling_works() {
    let tg = FakeTelegram::start().await;
    tg.set_webhook();
    tg.push_text(ALICE, "hook?");
    let (_chat, _claas, api) = start_api().await;
    let mut cfg = test_config(&tg.url, &api);
    cfg.retry_base = std::time::Duration::from_millis(5);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(claas_gateway::run(cfg, async move {
        let _ = stopped.await;
    }));
    let sent = tg.wait_sent(ALICE, 1).await;
    assert_eq!(sent[0], echo_reply("hook?"));
    assert!(!tg.has_webhook());
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_non_text_messages_are_answered() {
    let h = Harness::start(|_| {}).await;
    h.tg.push_text(ALICE, "/start");
    h.tg.push_text(ALICE, "/help@test_bot");
    h.tg.push_text(ALICE, "/reset@some_other_bot");
    h.tg.push_text(ALICE, "/frobnicate");
    h.tg.push_raw(json!({
        "message": {"message_id": 9, "date": 0, "chat": {"id": ALICE, "type": "private"},
                    "from": {"id": ALICE, "is_bot": false, "first_name": "T"},
                    "sticker": {"file_id": "x"}}
    }));
    let sent = h.tg.wait_sent(ALICE, 4).await;
    assert!(sent[0].contains("learns from your feedback"));
    assert!(sent[0].contains("/undo"));
    assert!(sent[1].contains("/reset"));
    assert!(sent[1].contains("/undo"));
    assert!(sent[2].starts_with("Unknown command /frobnicate."));
    assert_eq!(sent[3], "I can only read text messages.");
    assert!(h.chat.requests().is_empty());
    h.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumed_updates_are_confirmed_to_telegram() {
    let h = Harness::start(|_| {}).await;
    h.tg.push_text(ALICE, "one");
    h.tg.push_text(ALICE, "two");
    h.tg.wait_sent(ALICE, 2).await;
    let tg = h.tg.clone();
    h.stop().await.unwrap();
    assert_eq!(tg.last_offset(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_stops_the_gateway_with_an_error() {
    let tg = FakeTelegram::start().await;
    let mut cfg = test_config(&tg.url, &dead_url());
    cfg.telegram_bot_token = "999:wrong".into();
    let err = claas_gateway::run(cfg, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(err, GatewayError::Unauthorized { code: 401, .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_telegram_is_unreachable_returns_ok() {
    let mut cfg = test_config(&dead_url(), &dead_url());
    cfg.retry_base = std::time::Duration::from_millis(5);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(claas_gateway::run(cfg, async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        !task.is_finished(),
        "the gateway must keep retrying, not exit"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
