//! `dev.devgem.chat.turn.v1`: a user's message, answered on the fast path (rules, no LLM) and
//! written to the session as an assistant `message` event. Actions with side effects (deploy,
//! abort, rollback) run only from the user's own message, read by [`crate::intent`].

use crate::AppState;
use crate::intent::{Intent, parse};
use devgem_common::deployments::{AbortError, StartError, StartRequest, abort, start};
use devgem_common::events::{ChatTurn, EventContext, ServiceRollback};
use devgem_common::handler::HandlerError;
use devgem_common::ids::{CorrelationId, ServiceName};
use devgem_common::model::deployment::{Deployment, FailureCause};
use devgem_common::model::service::Service;
use devgem_common::ports::bus::BusExt;
use devgem_common::ports::store::{DocKey, NewEvent, Order, Query, Scope, SessionEventKind, StoreExt, Write};
use serde_json::json;

const HELP: &str = "I can deploy a repository and look after it. Try:\n\
- `deploy https://github.com/owner/app` (add `on branch x` or `as name`), or a directory path on this machine\n\
- `status`, `list deployments`, `why did it fail?`, `logs 50`\n\
- `abort` to stop the deployment in progress, `rollback` (or `rollback <service>`) to serve the previous revision";

pub async fn on_turn(state: &AppState, turn: ChatTurn) -> Result<(), HandlerError> {
    // A turn delivered twice is answered once.
    if let Some(id) = &turn.client_message_id {
        let key = format!("turn-{}-{}", turn.session_id, id.replace('/', "_"));
        let done = devgem_common::ledger::recorded::<bool>(state.ports.store.as_ref(), &key).await?;
        if done.is_some() {
            return Ok(());
        }
    }
    let correlation_id = CorrelationId::generate();
    let reply = answer(state, &turn, correlation_id.clone()).await?;
    let event = NewEvent {
        kind: SessionEventKind::Message,
        correlation_id,
        data: json!({ "role": "assistant", "text": reply }),
    };
    let append = Write::Append { session: turn.session_id.clone(), owner: turn.user_id.clone(), events: vec![event] };
    match &turn.client_message_id {
        Some(id) => {
            let key = format!("turn-{}-{}", turn.session_id, id.replace('/', "_"));
            devgem_common::ledger::once_in_tx(state.ports.store.as_ref(), &key, state.ports.clock.now(), vec![append])
                .await?;
        }
        None => {
            state.ports.store.commit(vec![append]).await?;
        }
    }
    Ok(())
}

/// The user's deployments, newest first (this session's first).
async fn deployments(state: &AppState, turn: &ChatTurn) -> Result<Vec<Deployment>, HandlerError> {
    let query = Query::collection("deployments").order_by("created_at", Order::Descending).limit(50);
    let docs = state.ports.store.query(&Scope::Owner(turn.user_id.clone()), &query).await?;
    let mut list: Vec<Deployment> = docs.iter().filter_map(|d| d.parse().ok()).collect();
    list.sort_by_key(|d| (d.session_id != turn.session_id, std::cmp::Reverse(d.created_at)));
    Ok(list)
}

fn describe(d: &Deployment) -> String {
    let mut line = format!("{} — {} ({}%)", d.service, d.state.as_str(), d.progress);
    if let Some(url) = &d.url {
        line.push_str(&format!(" at {url}"));
    }
    if let Some(failure) = &d.failure {
        line.push_str(&format!(": {}", failure.message));
    }
    line
}

fn cause_in_words(cause: FailureCause) -> &'static str {
    match cause {
        FailureCause::SourceUnavailable => "the repository could not be fetched",
        FailureCause::AnalysisFailed => "DevGem could not tell how to build and start the app",
        FailureCause::MissingEnv => "the app needs an environment variable that has no value",
        FailureCause::SecurityBlocked => "the security scan found something that must not ship",
        FailureCause::BuildFailed => "the image did not build",
        FailureCause::StartFailed => "the app did not start",
        FailureCause::VerifyFailed => "the app started but does not answer HTTP",
        FailureCause::Timeout => "a stage took too long",
        FailureCause::QuotaExceeded => "a quota was reached",
        FailureCause::Internal => "DevGem itself failed",
    }
}

async fn answer(state: &AppState, turn: &ChatTurn, correlation_id: CorrelationId) -> Result<String, HandlerError> {
    Ok(match parse(&turn.text) {
        Intent::Help => HELP.to_owned(),
        Intent::Unknown => format!("I did not understand that. {HELP}"),
        Intent::Yes | Intent::No => "There is no question waiting for an answer.".to_owned(),
        Intent::Deploy { source, git_ref, name } => {
            let request = StartRequest {
                source: source.clone(),
                git_ref,
                name,
                session_id: Some(turn.session_id.clone()),
                ..StartRequest::default()
            };
            match start(&state.ports, state.secrets.as_ref(), &turn.user_id, correlation_id, request, crate::NAME).await
            {
                Ok(started) => format!("Deploying {source} as {}. I will report every stage here.", started.service),
                Err(StartError::Invalid(why)) => format!("I cannot deploy that: {why}."),
                Err(StartError::Unavailable(why)) => format!("I could not start the deployment: {why}."),
                Err(StartError::Store(e)) => return Err(e.into()),
            }
        }
        Intent::Status => match deployments(state, turn).await?.first() {
            Some(d) => describe(d),
            None => "You have no deployments yet. Say `deploy <repository URL>` to start one.".to_owned(),
        },
        Intent::List => {
            let list = deployments(state, turn).await?;
            if list.is_empty() {
                "You have no deployments yet.".to_owned()
            } else {
                list.iter().take(10).map(|d| format!("- {}", describe(d))).collect::<Vec<_>>().join("\n")
            }
        }
        Intent::WhyFailed => {
            let list = deployments(state, turn).await?;
            match list.iter().find(|d| d.failure.is_some()) {
                Some(d) => {
                    let failure = d.failure.as_ref().map(|f| (f.cause, f.message.clone(), f.log_tail.clone()));
                    let (cause, message, tail) = failure.unwrap_or((FailureCause::Internal, String::new(), Vec::new()));
                    let stage = d.failure.as_ref().and_then(|f| f.stage).map(|s| format!("{s:?}").to_lowercase());
                    let mut text = format!(
                        "{} failed at the {} stage because {}: {message}.",
                        d.service,
                        stage.unwrap_or_else(|| "deploy".into()),
                        cause_in_words(cause)
                    );
                    if !tail.is_empty() {
                        let last: Vec<&String> = tail.iter().rev().take(5).rev().collect();
                        text.push_str(&format!(
                            "\nLast lines:\n{}",
                            last.iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
                        ));
                    }
                    text
                }
                None => "None of your deployments has failed.".to_owned(),
            }
        }
        Intent::Abort => {
            let list = deployments(state, turn).await?;
            match list.iter().find(|d| !d.state.is_terminal()) {
                Some(d) => match abort(
                    &state.ports,
                    Some(&turn.user_id),
                    &d.id,
                    &turn.user_id,
                    Some(correlation_id),
                    crate::NAME,
                )
                .await
                {
                    Ok(_) => format!("Stopping the deployment of {}; what served before keeps serving.", d.service),
                    Err(AbortError::Store(e)) => return Err(e.into()),
                    Err(e) => format!("I could not stop it: {e}."),
                },
                None => "Nothing is deploying right now.".to_owned(),
            }
        }
        Intent::Rollback { service } => {
            let list = deployments(state, turn).await?;
            let name = match service.or_else(|| list.first().map(|d| d.service.to_string())) {
                Some(name) => name,
                None => return Ok("You have no service to roll back.".to_owned()),
            };
            rollback(state, turn, &name).await?
        }
        Intent::Logs { lines } => {
            let list = deployments(state, turn).await?;
            match list.first() {
                Some(d) => match state.runtime.logs(&d.owner, &d.service, None, lines).await {
                    Ok(entries) if !entries.is_empty() => {
                        let text: Vec<String> =
                            entries.iter().filter_map(|e| e.message().map(|m| format!("    {m}"))).collect();
                        format!("The last {} lines of {}:\n{}", text.len(), d.service, text.join("\n"))
                    }
                    Ok(_) => format!("{} has written no logs yet.", d.service),
                    Err(e) => format!("I could not read the logs of {}: {e}.", d.service),
                },
                None => "You have no deployments yet.".to_owned(),
            }
        }
    })
}

async fn rollback(state: &AppState, turn: &ChatTurn, name: &str) -> Result<String, HandlerError> {
    let Ok(service_name) = ServiceName::parse(name) else {
        return Ok(format!("{name} is not a service name."));
    };
    let key = DocKey::new("services", Service::doc_id(&turn.user_id, &service_name))?;
    let Some((service, _)) = state.ports.store.get_typed::<Service>(&Scope::Owner(turn.user_id.clone()), &key).await?
    else {
        return Ok(format!("You have no service named {name}."));
    };
    let Some(target) = service.traffic.rollback_target.clone() else {
        return Ok(format!("{name} has no earlier revision to roll back to."));
    };
    let event = ServiceRollback {
        service: service.name.clone(),
        owner: turn.user_id.clone(),
        session_id: Some(turn.session_id.clone()),
        to_revision: Some(target.clone()),
        alert_id: None,
        requested_by: turn.user_id.clone(),
    };
    let ctx = EventContext::new(crate::NAME, CorrelationId::generate());
    state
        .ports
        .bus
        .publish_event(&event, &ctx, state.ports.clock.now())
        .await
        .map_err(|e| HandlerError::Transient(format!("publishing the rollback: {e}")))?;
    Ok(format!("Rolling {name} back to {target}, once it answers."))
}
