//! The chat's tools: what the rules engine and an LLM may ask for, each implemented once, and the
//! guard that lets a tool with side effects (deploy, rollback, abort, set_env) run only when the
//! user asked for it in their own words or said yes to DevGem's question. Text from a repository
//! or a log reaches a model only as a tool result, so it can make a model *ask* for an action,
//! never make one happen.

use crate::AppState;
use crate::intent::regex;
use devgem_common::deployments::{
    AbortError, EnvChange, RollbackError, StartError, StartRequest, Started, abort, change_env, log_lines,
    redeploy_request as redeploy_of, rollback as rollback_service, start,
};
use devgem_common::events::ChatTurn;
use devgem_common::handler::HandlerError;
use devgem_common::ids::CorrelationId;
use devgem_common::model::deployment::{Deployment, FailureCause};
use devgem_common::model::session::PendingQuestion;
use devgem_common::ports::brain::{ToolCall, ToolSpec};
use devgem_common::ports::store::{Order, Query, Scope};
use regex::Regex;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// What a tool did: the text for the user (rules) or the model (LLM), and a question DevGem now
/// waits on, if the tool asks one.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub text: String,
    pub question: Option<Question>,
}

/// A yes/no question: what "yes" does, and how it is put to the user.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub pending: PendingQuestion,
    pub text: String,
}

impl Outcome {
    fn text(text: impl Into<String>) -> Self {
        Self { text: text.into(), question: None }
    }
}

/// Who asks and in which conversation.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub state: &'a AppState,
    pub turn: &'a ChatTurn,
    pub correlation_id: &'a CorrelationId,
}

/// The tools' names and JSON Schemas, as the brains are given them.
pub fn specs() -> Vec<ToolSpec> {
    let spec = |name: &str, description: &str, parameters: Value| ToolSpec {
        name: name.to_owned(),
        description: description.to_owned(),
        parameters,
    };
    let none = json!({ "type": "object", "properties": {} });
    vec![
        spec(
            "clone_and_analyze",
            "Fetch a repository and report its language, framework, port, start command and env vars, without deploying it.",
            json!({ "type": "object", "properties": {
                "source": { "type": "string", "description": "https git URL, or an absolute directory path on the DevGem machine" },
                "ref": { "type": "string", "description": "branch, tag or commit" } }, "required": ["source"] }),
        ),
        spec(
            "deploy",
            "Deploy a repository. Only when the user asked for this deploy.",
            json!({ "type": "object", "properties": {
                "source": { "type": "string" },
                "ref": { "type": "string" },
                "name": { "type": "string", "description": "service name: lowercase letters, digits and '-'" } },
                "required": ["source"] }),
        ),
        spec(
            "get_logs",
            "The last log lines of a service (the latest one when none is named).",
            json!({ "type": "object", "properties": {
                "service": { "type": "string" }, "lines": { "type": "integer", "minimum": 1, "maximum": 1000 } } }),
        ),
        spec(
            "set_env",
            "Deploy the latest service again with an env variable set (or removed with unset). Only when the user asked.",
            json!({ "type": "object", "properties": {
                "name": { "type": "string" }, "value": { "type": "string" },
                "secret": { "type": "boolean" }, "unset": { "type": "boolean" } }, "required": ["name"] }),
        ),
        spec("abort", "Stop the deployment in progress. Only when the user asked.", none.clone()),
        spec(
            "rollback",
            "Move a service's traffic back to its previous revision (or the revision `to`). Only when the user asked.",
            json!({ "type": "object", "properties": { "service": { "type": "string" }, "to": { "type": "string" } } }),
        ),
        spec("list_deployments", "The user's deployments, newest first, with their state.", none.clone()),
        spec("get_status", "The state of the user's latest deployment.", none.clone()),
        spec(
            "diagnose",
            "Why the user's latest failed deployment failed, in plain words, with its last log lines.",
            none,
        ),
    ]
}

/// Tools that change something.
pub fn has_side_effects(tool: &str) -> bool {
    matches!(tool, "deploy" | "rollback" | "abort" | "set_env")
}

static DEPLOY_WORDS: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)\b(?:deploy|ship|launch|run|publish|host|release|go live|put .* online)"));
static ROLLBACK_WORDS: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)\b(?:roll\s*back|revert|undo|previous (?:version|revision)|go back)"));
static ABORT_WORDS: LazyLock<Regex> = LazyLock::new(|| regex(r"(?i)\b(?:abort|stop|cancel|halt|kill)"));

fn normalized_source(source: &str) -> String {
    source.trim().trim_end_matches('/').trim_end_matches(".git").to_ascii_lowercase()
}

/// Whether `call` may run for a user who wrote `user_text`, or who confirmed `confirmed`. The
/// error says why not, for the model to pass on.
pub fn authorize(call: &ToolCall, user_text: &str, confirmed: Option<&ToolCall>) -> Result<(), String> {
    if !has_side_effects(&call.name) {
        return Ok(());
    }
    if confirmed.is_some_and(|c| c.name == call.name && c.arguments == call.arguments) {
        return Ok(());
    }
    let arg = |name: &str| call.arguments.get(name).and_then(Value::as_str).unwrap_or("");
    let lower = user_text.to_ascii_lowercase();
    let asked = match call.name.as_str() {
        "deploy" => {
            let source = normalized_source(arg("source"));
            !source.is_empty() && lower.contains(&source) && DEPLOY_WORDS.is_match(user_text)
        }
        "rollback" => ROLLBACK_WORDS.is_match(user_text),
        "abort" => ABORT_WORDS.is_match(user_text),
        "set_env" => {
            let value = arg("value");
            user_text.contains(arg("name"))
                && !arg("name").is_empty()
                && (value.is_empty() || user_text.contains(value))
        }
        _ => false,
    };
    if asked {
        Ok(())
    } else {
        Err(format!(
            "refused: the user did not ask for {} in their own words. Do not retry; if it would help, ask the user in your reply",
            call.name
        ))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SourceArgs {
    source: String,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    name: Option<String>,
    allow_risky: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ServiceArgs {
    service: Option<String>,
    lines: Option<usize>,
    /// The revision to roll back to; the service's rollback target when absent.
    to: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EnvArgs {
    name: String,
    value: String,
    secret: bool,
    unset: bool,
}

fn args<T: for<'de> Deserialize<'de> + Default>(call: &ToolCall) -> Result<T, String> {
    if call.arguments.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(call.arguments.clone()).map_err(|e| format!("invalid arguments for {}: {e}", call.name))
}

/// Runs one tool. Errors are the Store's (the turn is retried); everything a user or a model
/// can act on, bad arguments included, is in the outcome's text.
pub async fn run(caller: Caller<'_>, call: &ToolCall) -> Result<Outcome, HandlerError> {
    let bad = |e: String| Ok(Outcome::text(e));
    match call.name.as_str() {
        "clone_and_analyze" => match args::<SourceArgs>(call) {
            Ok(a) => Ok(Outcome::text(crate::inspect::clone_and_analyze(caller.state, &a.source, a.git_ref).await)),
            Err(e) => bad(e),
        },
        "deploy" => match args::<SourceArgs>(call) {
            Ok(a) => deploy(caller, a).await,
            Err(e) => bad(e),
        },
        "set_env" => match args::<EnvArgs>(call) {
            Ok(a) => set_env(caller, a).await,
            Err(e) => bad(e),
        },
        "get_logs" => match args::<ServiceArgs>(call) {
            Ok(a) => logs(caller, a).await,
            Err(e) => bad(e),
        },
        "rollback" => match args::<ServiceArgs>(call) {
            Ok(a) => rollback(caller, a.service, a.to).await,
            Err(e) => bad(e),
        },
        "abort" => abort_latest(caller).await,
        "list_deployments" => list(caller).await,
        "get_status" => status(caller).await,
        "diagnose" => diagnose(caller).await,
        other => bad(format!("there is no tool named {other}")),
    }
}

/// The user's deployments, newest first (this session's first).
async fn deployments(caller: Caller<'_>) -> Result<Vec<Deployment>, HandlerError> {
    let query = Query::collection("deployments").order_by("created_at", Order::Descending).limit(50);
    let docs = caller.state.ports.store.query(&Scope::Owner(caller.turn.user_id.clone()), &query).await?;
    let mut list: Vec<Deployment> = docs.iter().filter_map(|d| d.parse().ok()).collect();
    list.sort_by_key(|d| (d.session_id != caller.turn.session_id, std::cmp::Reverse(d.created_at)));
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

async fn start_deploy(caller: Caller<'_>, request: StartRequest, what: &str) -> Result<Outcome, HandlerError> {
    let source = request.source.clone();
    let state = caller.state;
    let outcome = start(
        &state.ports,
        state.secrets.as_ref(),
        &caller.turn.user_id,
        caller.correlation_id.clone(),
        request,
        crate::NAME,
    )
    .await;
    started(outcome, &source, what)
}

/// What the user is told of a deployment started (or not) from `source`.
fn started(outcome: Result<Started, StartError>, source: &str, what: &str) -> Result<Outcome, HandlerError> {
    match outcome {
        Ok(started) => {
            Ok(Outcome::text(format!("{what} {source} as {}. I will report every stage here.", started.service)))
        }
        Err(StartError::Invalid(why)) => Ok(Outcome::text(format!("I cannot deploy that: {why}."))),
        Err(StartError::Unavailable(why)) => Ok(Outcome::text(format!("I could not start the deployment: {why}."))),
        Err(StartError::Store(e)) => Err(e.into()),
    }
}

async fn deploy(caller: Caller<'_>, a: SourceArgs) -> Result<Outcome, HandlerError> {
    let request = StartRequest {
        source: a.source,
        git_ref: a.git_ref,
        name: a.name,
        allow_risky: a.allow_risky,
        session_id: Some(caller.turn.session_id.clone()),
        ..StartRequest::default()
    };
    let what = if a.allow_risky { "Deploying again, accepting the security findings," } else { "Deploying" };
    start_deploy(caller, request, what).await
}

async fn set_env(caller: Caller<'_>, a: EnvArgs) -> Result<Outcome, HandlerError> {
    let list = deployments(caller).await?;
    let Some(latest) = list.first() else {
        return Ok(Outcome::text("You have no deployment to set it on yet. Deploy a repository first."));
    };
    let mut change = EnvChange::default();
    let what = if a.unset {
        change.unset.push(a.name.clone());
        format!("Deploying {} again without {}:", latest.service, a.name)
    } else if a.value.is_empty() {
        return Ok(Outcome::text(format!("{} needs a value: `set {}=value`.", a.name, a.name)));
    } else if a.secret {
        change.secrets = BTreeMap::from([(a.name.clone(), a.value)]);
        format!("Deploying {} again with the secret {} (stored encrypted, never shown):", latest.service, a.name)
    } else {
        change.set = BTreeMap::from([(a.name.clone(), a.value)]);
        format!("Deploying {} again with {} set:", latest.service, a.name)
    };
    let state = caller.state;
    let source = latest.source.location.to_string();
    let changed = change_env(
        &state.ports,
        state.secrets.as_ref(),
        state.runtime.as_ref(),
        latest,
        change,
        &caller.turn.session_id,
        caller.correlation_id.clone(),
        crate::NAME,
    )
    .await;
    started(changed, &source, &what)
}

async fn status(caller: Caller<'_>) -> Result<Outcome, HandlerError> {
    Ok(Outcome::text(match deployments(caller).await?.first() {
        Some(d) => describe(d),
        None => "You have no deployments yet. Say `deploy <repository URL>` to start one.".to_owned(),
    }))
}

async fn list(caller: Caller<'_>) -> Result<Outcome, HandlerError> {
    let list = deployments(caller).await?;
    Ok(Outcome::text(if list.is_empty() {
        "You have no deployments yet.".to_owned()
    } else {
        list.iter().take(10).map(|d| format!("- {}", describe(d))).collect::<Vec<_>>().join("\n")
    }))
}

async fn diagnose(caller: Caller<'_>) -> Result<Outcome, HandlerError> {
    let list = deployments(caller).await?;
    let Some((d, failure)) = list.iter().find_map(|d| d.failure.as_ref().map(|f| (d, f))) else {
        return Ok(Outcome::text("None of your deployments has failed."));
    };
    let stage = failure.stage.map(|s| format!("{s:?}").to_lowercase()).unwrap_or_else(|| "deploy".into());
    let mut text = format!(
        "{} failed at the {stage} stage because {}: {}.",
        d.service,
        cause_in_words(failure.cause),
        failure.message
    );
    if !failure.log_tail.is_empty() {
        let last: Vec<&String> = failure.log_tail.iter().rev().take(5).rev().collect();
        text.push_str(&format!(
            "\nLast lines:\n{}",
            last.iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
        ));
    }
    // Findings the user may accept: offer the deploy that accepts them.
    let question = (failure.cause == FailureCause::SecurityBlocked && !d.allow_risky).then(|| {
        let mut request = redeploy_of(d, &caller.turn.session_id);
        request.allow_risky = true;
        Question {
            pending: PendingQuestion::Confirm {
                tool: "deploy".into(),
                arguments: json!({
                    "source": request.source, "ref": request.git_ref, "name": request.name, "allow_risky": true,
                }),
            },
            text: format!("Shall I deploy {} anyway, accepting these findings? (yes/no)", d.service),
        }
    });
    Ok(Outcome { text, question })
}

async fn abort_latest(caller: Caller<'_>) -> Result<Outcome, HandlerError> {
    let list = deployments(caller).await?;
    let Some(d) = list.iter().find(|d| !d.state.is_terminal()) else {
        return Ok(Outcome::text("Nothing is deploying right now."));
    };
    let state = caller.state;
    let user = &caller.turn.user_id;
    match abort(&state.ports, Some(user), &d.id, user, Some(caller.correlation_id.clone()), crate::NAME).await {
        Ok(_) => {
            Ok(Outcome::text(format!("Stopping the deployment of {}; what served before keeps serving.", d.service)))
        }
        Err(AbortError::Store(e)) => Err(e.into()),
        Err(e) => Ok(Outcome::text(format!("I could not stop it: {e}."))),
    }
}

async fn logs(caller: Caller<'_>, a: ServiceArgs) -> Result<Outcome, HandlerError> {
    let list = deployments(caller).await?;
    let chosen = match &a.service {
        Some(name) => list.iter().find(|d| d.service.as_str() == name),
        None => list.first(),
    };
    let Some(d) = chosen else {
        return Ok(Outcome::text(match a.service {
            Some(name) => format!("You have no service named {name}."),
            None => "You have no deployments yet.".to_owned(),
        }));
    };
    let lines = a.lines.unwrap_or(50).clamp(1, 1000);
    Ok(Outcome::text(match log_lines(caller.state.runtime.as_ref(), &d.owner, &d.service, None, lines).await {
        Ok(lines) if !lines.is_empty() => {
            let text: Vec<String> = lines.iter().map(|l| format!("    {}", l.text)).collect();
            format!("The last {} lines of {}:\n{}", text.len(), d.service, text.join("\n"))
        }
        Ok(_) => format!("{} has written no logs yet.", d.service),
        Err(e) => format!("I could not read the logs of {}: {e}.", d.service),
    }))
}

async fn rollback(caller: Caller<'_>, service: Option<String>, to: Option<String>) -> Result<Outcome, HandlerError> {
    let list = deployments(caller).await?;
    let Some(name) = service.or_else(|| list.first().map(|d| d.service.to_string())) else {
        return Ok(Outcome::text("You have no service to roll back."));
    };
    let turn = caller.turn;
    let session = Some(turn.session_id.clone());
    let requested = rollback_service(
        &caller.state.ports,
        &turn.user_id,
        &name,
        to.as_deref(),
        session,
        caller.correlation_id.clone(),
        crate::NAME,
    )
    .await;
    Ok(Outcome::text(match requested {
        Ok((_, target)) => format!("Rolling {name} back to {target}, once it answers."),
        Err(RollbackError::InvalidName(_)) => format!("{name} is not a service name."),
        Err(RollbackError::NotFound(_)) => format!("You have no service named {name}."),
        Err(e @ (RollbackError::NoTarget(_) | RollbackError::NoSuchRevision { .. })) => format!("{e}."),
        Err(RollbackError::Unavailable(why)) => return Err(HandlerError::Transient(why)),
        Err(RollbackError::Store(e)) => return Err(e.into()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: Value) -> ToolCall {
        ToolCall { id: "c1".into(), name: name.into(), arguments }
    }

    #[test]
    fn side_effects_need_the_users_own_words() {
        let deploy = call("deploy", json!({ "source": "https://github.com/acme/shop" }));
        assert!(authorize(&deploy, "please put https://github.com/acme/shop.git online", None).is_ok());
        assert!(authorize(&deploy, "deploy https://github.com/acme/other", None).is_err(), "another repository");
        assert!(authorize(&deploy, "what is in https://github.com/acme/shop?", None).is_err(), "no deploy asked");
        let rollback = call("rollback", json!({}));
        assert!(authorize(&rollback, "my app is broken, go back to the previous version", None).is_ok());
        assert!(authorize(&rollback, "what does the README say?", None).is_err());
        let env = call("set_env", json!({ "name": "DEBUG", "value": "1" }));
        assert!(authorize(&env, "could you turn on DEBUG=1", None).is_ok());
        assert!(authorize(&env, "could you turn on debugging", None).is_err());
        let refusal = authorize(&call("abort", json!({})), "how is it going", None).expect_err("refused");
        assert!(refusal.contains("did not ask for abort"), "{refusal}");
        assert!(authorize(&call("get_status", json!({})), "anything", None).is_ok(), "reads need no consent");
    }

    #[test]
    fn a_confirmed_question_authorizes_exactly_its_call() {
        let risky = call("deploy", json!({ "source": "/srv/app", "allow_risky": true }));
        assert!(authorize(&risky, "yes", Some(&risky)).is_ok());
        let other = call("deploy", json!({ "source": "/srv/other", "allow_risky": true }));
        assert!(authorize(&other, "yes", Some(&risky)).is_err());
    }
}
