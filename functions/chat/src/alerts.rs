//! Alerts from the monitor, told in the chat: what happened, since when, the key lines, the
//! likely cause, and — when there is an earlier revision — "Shall I roll back to revision N
//! (deployed at T)?", kept as the session's pending question so a "yes" rolls back and a "no"
//! mutes the alert. An alert id is told once, however often the monitor sends it.

use crate::AppState;
use devgem_common::events::{AlertStatus, MonitorAlert};
use devgem_common::handler::HandlerError;
use devgem_common::ids::CorrelationId;
use devgem_common::model::session::{PendingQuestion, Session};
use devgem_common::ports::store::{DocKey, NewEvent, Scope, SessionEventKind, StoreExt, Write, to_data};
use serde_json::json;

/// Handles one `dev.devgem.monitor.alert.v1`: an open alert becomes a chat message.
pub async fn on_alert(
    state: &AppState,
    alert: MonitorAlert,
    correlation_id: CorrelationId,
) -> Result<(), HandlerError> {
    // Updates and resolutions reach the UI as `monitoring_alert` events; the chat speaks once.
    if alert.status != AlertStatus::Open {
        return Ok(());
    }
    let Some(session_id) = alert.session_id.clone() else {
        tracing::info!(alert = %alert.alert_id, "an alert without a session is not told in the chat");
        return Ok(());
    };
    let store = state.ports.store.as_ref();
    let session_key = DocKey::new("sessions", session_id.as_str())?;
    let scope = Scope::Owner(alert.owner.clone());
    let mut session = store
        .get_typed::<Session>(&scope, &session_key)
        .await?
        .map(|(s, _)| s)
        .unwrap_or_else(|| Session::new(session_id.clone(), alert.owner.clone(), state.ports.clock.now()));
    let text = message(&alert);
    let question = alert.rollback_target.as_ref().map(|target| {
        let when = alert
            .rollback_target_created_at
            .map(|t| format!(" (deployed at {})", t.format("%Y-%m-%d %H:%M UTC")))
            .unwrap_or_default();
        let asked = format!("Shall I roll back to revision **{target}**{when}?");
        let pending = PendingQuestion::Rollback {
            service: alert.service.clone(),
            to_revision: target.clone(),
            alert_id: alert.alert_id.clone(),
        };
        (asked, pending)
    });
    let mut data = json!({ "role": "assistant", "text": text, "alert_id": alert.alert_id });
    if let Some((asked, pending)) = question {
        data["text"] = json!(format!("{text}\n\n{asked}"));
        data["question"] = json!(asked);
        session.pending_question = Some(pending);
        session.question_text = Some(asked);
    }
    let event = NewEvent { kind: SessionEventKind::Message, correlation_id, data };
    let writes = vec![
        Write::Set { key: session_key, owner: alert.owner.clone(), data: to_data(&session)? },
        Write::Append { session: session_id, owner: alert.owner.clone(), events: vec![event] },
    ];
    let key = format!("alert-{}", alert.alert_id.replace('/', "_"));
    devgem_common::ledger::once_in_tx(store, &key, state.ports.clock.now(), writes).await?;
    Ok(())
}

/// The alert in plain words, markdown.
fn message(alert: &MonitorAlert) -> String {
    let mut text = format!("⚠️ **{}** needs attention: {}.", alert.service, alert.summary.trim_end_matches('.'));
    text.push_str(&format!(" Revision `{}`.", alert.revision));
    if !alert.key_lines.is_empty() {
        text.push_str("\n\n```\n");
        text.push_str(&alert.key_lines.join("\n").replace("```", "'''"));
        text.push_str("\n```");
    }
    if let Some(cause) = &alert.likely_cause {
        text.push_str(&format!("\n\nLikely cause: {cause}."));
    }
    if alert.rollback_target.is_none() {
        text.push_str("\n\nThere is no earlier revision to roll back to; fix the code and deploy again.");
    }
    text
}
