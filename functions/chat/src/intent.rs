//! The fast path: what a chat message asks for, read by rules without an LLM. Only the user's
//! own words are read here, never text from a repository or a log, so nothing else can ask for a
//! deploy, an abort or a rollback.

use regex::Regex;
use std::sync::LazyLock;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    Deploy {
        source: String,
        git_ref: Option<String>,
        name: Option<String>,
    },
    Status,
    Abort,
    Rollback {
        service: Option<String>,
    },
    List,
    WhyFailed,
    Logs {
        lines: usize,
    },
    /// `set [env|secret] NAME=value`: deploy the latest service again with it.
    SetEnv {
        name: String,
        value: String,
        secret: bool,
    },
    /// `unset NAME`: deploy the latest service again without it.
    UnsetEnv {
        name: String,
    },
    Help,
    Yes,
    No,
    /// Nothing the rules recognise.
    Unknown,
}

pub(crate) fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| unreachable!("invalid built-in pattern {pattern}: {e}"))
}

static DEPLOY: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"(?i)^(?:please\s+)?(?:deploy|ship|launch|run)\s+(?P<source>https?://\S+|git@\S+|/\S+)(?P<rest>.*)$")
});
static REF: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)\b(?:at|on|branch|tag|ref|commit)\s+(?:branch\s+|tag\s+)?(?P<ref>[A-Za-z0-9._/-]+)"));
static NAME: LazyLock<Regex> = LazyLock::new(|| regex(r"(?i)\b(?:as|named|name)\s+(?P<name>[a-z][a-z0-9-]*)"));
static ROLLBACK: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"(?i)^(?:please\s+)?(?:roll\s*back|revert|undo)(?:\s+(?:the\s+)?(?P<service>[a-z][a-z0-9-]*))?")
});
static SET_ENV: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?i)^(?:please\s+)?set\s+(?:(?P<secret>secret)|env(?:ironment)?(?:\s+var(?:iable)?)?\s+)?\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>.*)$",
    )
});
static UNSET_ENV: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?i)^(?:please\s+)?(?:unset|remove)\s+(?:env(?:ironment)?\s+(?:var(?:iable)?\s+)?|secret\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)$",
    )
});
static LOGS: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)^(?:show\s+(?:me\s+)?)?(?:the\s+)?logs?(?:\s+(?P<n>\d+))?\b"));

/// Reads one user message.
pub fn parse(raw: &str) -> Intent {
    let text = raw.trim().trim_end_matches(['.', '!', '?']);
    let lower = text.to_ascii_lowercase();
    if let Some(captures) = DEPLOY.captures(text) {
        let rest = captures.name("rest").map_or("", |m| m.as_str());
        return Intent::Deploy {
            source: captures["source"].trim_end_matches([',', '.']).to_owned(),
            git_ref: REF.captures(rest).map(|c| c["ref"].to_owned()),
            name: NAME.captures(rest).map(|c| c["name"].to_owned()),
        };
    }
    // Read from the untrimmed message: a value may end with punctuation.
    if let Some(captures) = SET_ENV.captures(raw.trim()) {
        return Intent::SetEnv {
            name: captures["name"].to_owned(),
            value: captures["value"].trim().to_owned(),
            secret: captures.name("secret").is_some(),
        };
    }
    if let Some(captures) = UNSET_ENV.captures(text) {
        return Intent::UnsetEnv { name: captures["name"].to_owned() };
    }
    if let Some(captures) = ROLLBACK.captures(text) {
        let service = captures
            .name("service")
            .map(|m| m.as_str().to_owned())
            .filter(|s| !matches!(s.as_str(), "it" | "that" | "please"));
        return Intent::Rollback { service };
    }
    if let Some(captures) = LOGS.captures(text) {
        let lines = captures.name("n").and_then(|n| n.as_str().parse().ok()).unwrap_or(50).clamp(1, 1000);
        return Intent::Logs { lines };
    }
    let words: Vec<&str> =
        lower.split(|c: char| !c.is_ascii_alphanumeric() && c != '\'').filter(|w| !w.is_empty()).collect();
    let has = |w: &str| words.contains(&w);
    match words.as_slice() {
        ["yes" | "y" | "yep" | "sure" | "ok" | "okay" | "confirm", ..] => return Intent::Yes,
        ["no" | "n" | "nope" | "cancel", ..] if words.len() <= 2 => return Intent::No,
        _ => {}
    }
    if has("why") && (has("fail") || has("failed") || has("broken") || has("break") || has("crash") || has("crashed")) {
        return Intent::WhyFailed;
    }
    if has("abort") || has("stop") || (has("cancel") && (has("deploy") || has("deployment") || has("it"))) {
        return Intent::Abort;
    }
    if has("status") || lower.starts_with("how is") || lower.starts_with("is it") || has("progress") {
        return Intent::Status;
    }
    if (has("list") || has("show")) && (has("deployments") || has("deploys") || has("services"))
        || lower == "deployments"
    {
        return Intent::List;
    }
    if has("help") || lower == "?" || has("commands") || lower.starts_with("what can you") {
        return Intent::Help;
    }
    Intent::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(source: &str, git_ref: Option<&str>, name: Option<&str>) -> Intent {
        Intent::Deploy { source: source.into(), git_ref: git_ref.map(Into::into), name: name.map(Into::into) }
    }

    #[test]
    fn deploy_requests_are_read_with_their_ref_and_name() {
        assert_eq!(parse("deploy https://github.com/acme/shop"), deploy("https://github.com/acme/shop", None, None));
        assert_eq!(
            parse("Please deploy https://github.com/acme/shop.git on branch release-2 as storefront."),
            deploy("https://github.com/acme/shop.git", Some("release-2"), Some("storefront"))
        );
        assert_eq!(parse("ship /home/me/app at v1.2.0"), deploy("/home/me/app", Some("v1.2.0"), None));
        assert_eq!(parse("deploy my app"), Intent::Unknown, "no source, no deploy");
    }

    #[test]
    fn everyday_requests_are_recognised() {
        assert_eq!(parse("status?"), Intent::Status);
        assert_eq!(parse("how is it going"), Intent::Status);
        assert_eq!(parse("abort"), Intent::Abort);
        assert_eq!(parse("stop the deployment!"), Intent::Abort);
        assert_eq!(parse("roll back"), Intent::Rollback { service: None });
        assert_eq!(parse("rollback shop"), Intent::Rollback { service: Some("shop".into()) });
        assert_eq!(parse("list my deployments"), Intent::List);
        assert_eq!(parse("why did it fail?"), Intent::WhyFailed);
        assert_eq!(parse("logs 20"), Intent::Logs { lines: 20 });
        assert_eq!(parse("show me the logs"), Intent::Logs { lines: 50 });
        assert_eq!(parse("help"), Intent::Help);
        assert_eq!(parse("yes please"), Intent::Yes);
        assert_eq!(parse("no"), Intent::No);
        assert_eq!(parse("tell me a joke"), Intent::Unknown);
    }

    #[test]
    fn env_changes_are_read_with_their_value() {
        let set =
            |name: &str, value: &str, secret: bool| Intent::SetEnv { name: name.into(), value: value.into(), secret };
        assert_eq!(parse("set DEBUG=1"), set("DEBUG", "1", false));
        assert_eq!(parse("set env GREETING = hello world!"), set("GREETING", "hello world!", false));
        assert_eq!(parse("set secret STRIPE_KEY=sk_live_abc.def"), set("STRIPE_KEY", "sk_live_abc.def", true));
        assert_eq!(parse("set environment variable X="), set("X", "", false));
        assert_eq!(parse("unset DEBUG"), Intent::UnsetEnv { name: "DEBUG".into() });
        assert_eq!(parse("remove secret STRIPE_KEY"), Intent::UnsetEnv { name: "STRIPE_KEY".into() });
        assert_eq!(parse("set up my project"), Intent::Unknown);
    }
}
