//! Which brain DevGem runs, from the environment, and [`build`] to turn that into one.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `DEVGEM_BRAIN` | `rules` (offline, no LLM), `gemini`, `vertex` or `openai` | `rules` |
//! | `DEVGEM_GEMINI_API_KEY` | the Gemini API key | |
//! | `DEVGEM_GEMINI_API_KEY_SECRET` | instead of the key: a secret holding it, `name` (newest version) or `name:version` | |
//! | `DEVGEM_GEMINI_MODEL` | the model, for the Gemini API and Vertex AI alike | `gemini-2.5-flash` |
//! | `DEVGEM_GEMINI_BASE_URL` | the Gemini API's address | `https://generativelanguage.googleapis.com` |
//! | `DEVGEM_VERTEX_PROJECT` | the GCP project Vertex AI bills | required for `vertex` |
//! | `DEVGEM_VERTEX_REGIONS` | regions to try in order, comma-separated | `us-central1` |
//! | `DEVGEM_VERTEX_BASE_URL` | the endpoint, `{region}` standing for the region | `https://{region}-aiplatform.googleapis.com` |
//! | `DEVGEM_VERTEX_ACCESS_TOKEN` | a fixed access token (a laptop); else the metadata server's | |
//! | `DEVGEM_OPENAI_BASE_URL` | an OpenAI-compatible server | `http://127.0.0.1:11434` (Ollama) |
//! | `DEVGEM_OPENAI_MODEL` | the model that server should run | required for `openai` |
//! | `DEVGEM_OPENAI_API_KEY` | a bearer key, if the server wants one | |
//! | `DEVGEM_BRAIN_TOKENS_PER_MINUTE`, `_PER_HOUR` | DevGem's token budget, for all instances together | no limit |
//! | `DEVGEM_CHAT_MAX_INSTANCES` | how many chat instances share that budget | `1` |
//!
//! `vertex` tries each region in order, then the Gemini API when a Gemini key is configured too.

use super::failover::{FailoverBrain, FailoverPolicy, OnNotice, Provider};
use super::gemini::{self, GeminiBrain};
use super::openai::{self, OpenAiBrain};
use super::resilience::{Budget, RateLimiter};
use super::vertex::{self, AccessTokens, MetadataServer, StaticToken, VertexBrain, VertexEndpoint};
use devgem_common::ports::brain::Brain;
use devgem_common::ports::secrets::{SecretRef, SecretValue, Secrets, SecretsError};
use std::sync::Arc;
use std::time::Duration;

/// The brain DevGem runs. `Debug` shows keys and tokens as `***` (they are [`SecretValue`]s).
#[derive(Debug, Clone)]
pub struct BrainConfig {
    /// `None`: the offline rules engine (`DEVGEM_BRAIN=rules`, the default).
    pub provider: Option<ProviderConfig>,
    /// This instance's share of the budget: the configured tokens divided by
    /// `DEVGEM_CHAT_MAX_INSTANCES`, because each instance keeps its own limiter (and breakers)
    /// in memory; N instances at full speed then stay within the configured total.
    pub budget: Budget,
    pub policy: FailoverPolicy,
}

#[derive(Debug, Clone)]
pub enum ProviderConfig {
    Gemini(GeminiConfig),
    /// Vertex AI in each region in turn, then the Gemini API if `fallback` is set.
    Vertex {
        vertex: VertexConfig,
        fallback: Option<GeminiConfig>,
    },
    OpenAi(OpenAiConfig),
}

#[derive(Debug, Clone)]
pub struct GeminiConfig {
    pub key: ApiKey,
    pub model: String,
    pub base_url: String,
}

/// Where the Gemini API key comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiKey {
    Value(SecretValue),
    /// A secret in the Secrets port; `version: None` is its newest version.
    Secret {
        name: String,
        version: Option<u32>,
    },
}

#[derive(Debug, Clone)]
pub struct VertexConfig {
    pub project: String,
    pub regions: Vec<String>,
    pub model: String,
    /// With `{region}` standing for the region.
    pub base_url: String,
    /// `None`: the metadata server's tokens.
    pub access_token: Option<SecretValue>,
}

#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    pub base_url: String,
    pub model: String,
    pub key: Option<SecretValue>,
}

/// A configuration that cannot work. Messages name the variable to set; never a key's value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrainConfigError {
    #[error("DEVGEM_BRAIN={0:?} is not one of rules, gemini, vertex, openai")]
    UnknownBrain(String),
    #[error("DEVGEM_BRAIN={brain} needs {needs}")]
    Missing { brain: &'static str, needs: &'static str },
    #[error("{var}: {reason}")]
    Invalid { var: &'static str, reason: String },
    #[error("the Gemini API key secret {name:?}: {source}")]
    Secret { name: String, source: SecretsError },
    #[error("no HTTP client for the brain: {0}")]
    Client(String),
}

const GEMINI_KEY_NEEDED: &str =
    "an API key: set DEVGEM_GEMINI_API_KEY, or DEVGEM_GEMINI_API_KEY_SECRET to a stored secret";
const DEFAULT_MODEL: &str = "gemini-2.5-flash";
const DEFAULT_REGION: &str = "us-central1";

impl BrainConfig {
    /// Reads the variables above through `lookup` (`|k| std::env::var(k).ok()` in production).
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, BrainConfigError> {
        let var = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let provider = match var("DEVGEM_BRAIN").as_deref().unwrap_or("rules") {
            "rules" => None,
            "gemini" => {
                let gemini = gemini_config(&var)?
                    .ok_or(BrainConfigError::Missing { brain: "gemini", needs: GEMINI_KEY_NEEDED })?;
                Some(ProviderConfig::Gemini(gemini))
            }
            "vertex" => {
                let project = var("DEVGEM_VERTEX_PROJECT").ok_or(BrainConfigError::Missing {
                    brain: "vertex",
                    needs: "DEVGEM_VERTEX_PROJECT (the GCP project)",
                })?;
                let regions = var("DEVGEM_VERTEX_REGIONS").unwrap_or_else(|| DEFAULT_REGION.to_owned());
                let regions = regions
                    .split(',')
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(|r| path_segment("DEVGEM_VERTEX_REGIONS", r))
                    .collect::<Result<Vec<_>, _>>()?;
                if regions.is_empty() {
                    let reason = "name at least one region, e.g. us-central1".to_owned();
                    return Err(BrainConfigError::Invalid { var: "DEVGEM_VERTEX_REGIONS", reason });
                }
                let vertex = VertexConfig {
                    project: path_segment("DEVGEM_VERTEX_PROJECT", &project)?,
                    regions,
                    model: model(&var)?,
                    base_url: var("DEVGEM_VERTEX_BASE_URL").unwrap_or_else(|| vertex::DEFAULT_BASE_URL.to_owned()),
                    access_token: var("DEVGEM_VERTEX_ACCESS_TOKEN").map(SecretValue::new),
                };
                Some(ProviderConfig::Vertex { vertex, fallback: gemini_config(&var)? })
            }
            "openai" => Some(ProviderConfig::OpenAi(OpenAiConfig {
                base_url: var("DEVGEM_OPENAI_BASE_URL").unwrap_or_else(|| openai::DEFAULT_BASE_URL.to_owned()),
                model: var("DEVGEM_OPENAI_MODEL").ok_or(BrainConfigError::Missing {
                    brain: "openai",
                    needs: "DEVGEM_OPENAI_MODEL (the model name the server knows, e.g. llama3.1)",
                })?,
                key: var("DEVGEM_OPENAI_API_KEY").map(SecretValue::new),
            })),
            other => return Err(BrainConfigError::UnknownBrain(other.to_owned())),
        };

        let instances = number(&var, "DEVGEM_CHAT_MAX_INSTANCES")?.unwrap_or(1);
        let share = |name| Ok::<_, BrainConfigError>(number(&var, name)?.map(|tokens| (tokens / instances).max(1)));
        let budget = Budget {
            tokens_per_minute: share("DEVGEM_BRAIN_TOKENS_PER_MINUTE")?,
            tokens_per_hour: share("DEVGEM_BRAIN_TOKENS_PER_HOUR")?,
            ..Budget::default()
        };
        Ok(Self { provider, budget, policy: FailoverPolicy::default() })
    }
}

/// The Gemini API settings, or `None` when no key is configured.
fn gemini_config(var: &impl Fn(&str) -> Option<String>) -> Result<Option<GeminiConfig>, BrainConfigError> {
    let key = match (var("DEVGEM_GEMINI_API_KEY"), var("DEVGEM_GEMINI_API_KEY_SECRET")) {
        (Some(key), _) => ApiKey::Value(SecretValue::new(key)),
        (None, Some(reference)) => secret_reference(&reference)?,
        (None, None) => return Ok(None),
    };
    Ok(Some(GeminiConfig {
        key,
        model: model(var)?,
        base_url: var("DEVGEM_GEMINI_BASE_URL").unwrap_or_else(|| gemini::DEFAULT_BASE_URL.to_owned()),
    }))
}

fn model(var: &impl Fn(&str) -> Option<String>) -> Result<String, BrainConfigError> {
    path_segment("DEVGEM_GEMINI_MODEL", &var("DEVGEM_GEMINI_MODEL").unwrap_or_else(|| DEFAULT_MODEL.to_owned()))
}

/// `name` or `name:version` (`name:latest` too), as Cloud Run names secret versions.
fn secret_reference(raw: &str) -> Result<ApiKey, BrainConfigError> {
    let invalid =
        |reason: &str| BrainConfigError::Invalid { var: "DEVGEM_GEMINI_API_KEY_SECRET", reason: reason.to_owned() };
    let (name, version) = match raw.split_once(':') {
        None => (raw, None),
        Some((name, "latest")) => (name, None),
        Some((name, version)) => (name, Some(version.parse().map_err(|_| invalid("use name or name:version"))?)),
    };
    if name.is_empty() {
        return Err(invalid("use name or name:version"));
    }
    Ok(ApiKey::Secret { name: name.to_owned(), version })
}

/// A value that goes into a URL's host or path: letters, digits, `-`, `.` and `_` only.
fn path_segment(var: &'static str, value: &str) -> Result<String, BrainConfigError> {
    let valid = value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if valid && !value.is_empty() {
        Ok(value.to_owned())
    } else {
        Err(BrainConfigError::Invalid {
            var,
            reason: format!("{value:?} may hold only letters, digits, '-', '.', '_'"),
        })
    }
}

fn number(var: &impl Fn(&str) -> Option<String>, name: &'static str) -> Result<Option<u64>, BrainConfigError> {
    var(name)
        .map(|raw| match raw.parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => {
                Err(BrainConfigError::Invalid { var: name, reason: format!("{raw:?} is not a positive whole number") })
            }
        })
        .transpose()
}

/// How long to wait for a provider's TCP connection before calling it unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The configured brain: `None` for the rules engine, else a [`FailoverBrain`] over the
/// configured providers, with the budget and `on_notice` (see [`super::failover`]).
/// A key given as a secret reference is read from `secrets` here, once.
pub async fn build(
    config: &BrainConfig,
    secrets: &dyn Secrets,
    on_notice: Option<OnNotice>,
) -> Result<Option<Arc<dyn Brain>>, BrainConfigError> {
    let Some(provider) = &config.provider else { return Ok(None) };
    // No redirects: a redirect would carry the API key header to wherever it points.
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| BrainConfigError::Client(e.to_string()))?;
    let providers: Vec<Provider> = match provider {
        ProviderConfig::Gemini(gemini) => vec![gemini_brain(&client, gemini, secrets).await?.into()],
        ProviderConfig::Vertex { vertex, fallback } => {
            let tokens: Arc<dyn AccessTokens> = match &vertex.access_token {
                Some(token) => Arc::new(StaticToken(token.clone())),
                None => Arc::new(MetadataServer::new(client.clone())),
            };
            let mut providers: Vec<Provider> = vertex
                .regions
                .iter()
                .map(|region| {
                    let endpoint = VertexEndpoint {
                        base_url: vertex.base_url.clone(),
                        project: vertex.project.clone(),
                        region: region.clone(),
                        model: vertex.model.clone(),
                    };
                    VertexBrain::new(client.clone(), &endpoint, tokens.clone()).into()
                })
                .collect();
            if let Some(gemini) = fallback {
                providers.push(gemini_brain(&client, gemini, secrets).await?.into());
            }
            providers
        }
        ProviderConfig::OpenAi(o) => vec![OpenAiBrain::new(client, &o.base_url, &o.model, o.key.clone()).into()],
    };
    let mut brain = FailoverBrain::new(providers, config.policy);
    if let Some(limiter) = RateLimiter::new(&config.budget) {
        brain = brain.with_limiter(limiter);
    }
    if let Some(on_notice) = on_notice {
        brain = brain.with_notices(on_notice);
    }
    Ok(Some(Arc::new(brain)))
}

async fn gemini_brain(
    client: &reqwest::Client,
    config: &GeminiConfig,
    secrets: &dyn Secrets,
) -> Result<GeminiBrain, BrainConfigError> {
    let key = match &config.key {
        ApiKey::Value(key) => key.clone(),
        ApiKey::Secret { name, version } => {
            let failed = |source| BrainConfigError::Secret { name: name.clone(), source };
            let reference = match version {
                Some(version) => SecretRef { name: name.clone(), version: *version },
                None => secrets
                    .latest(name)
                    .await
                    .map_err(failed)?
                    .ok_or_else(|| failed(SecretsError::NotFound(name.clone())))?,
            };
            secrets.access(&reference).await.map_err(failed)?
        }
    };
    Ok(GeminiBrain::new(client.clone(), &config.base_url, &config.model, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brain::mock::{Answer, Mock};
    use crate::brain::resilience::RetryPolicy;
    use devgem_common::ports::brain::{BrainMessage, BrainRequest, Priority};
    use serde_json::json;
    use std::collections::HashMap;
    use std::sync::Mutex;

    const KEY: &str = "AIza-super-secret";

    fn env(vars: &[(&str, &str)]) -> Result<BrainConfig, BrainConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        BrainConfig::from_env(|k| vars.get(k).cloned())
    }

    /// Secrets kept in memory.
    #[derive(Debug, Default)]
    struct MemorySecrets(Mutex<HashMap<String, Vec<SecretValue>>>);

    #[async_trait::async_trait]
    impl Secrets for MemorySecrets {
        async fn put(&self, name: &str, value: SecretValue) -> Result<SecretRef, SecretsError> {
            let mut all = self.0.lock().expect("secrets");
            let versions = all.entry(name.to_owned()).or_default();
            versions.push(value);
            Ok(SecretRef { name: name.to_owned(), version: versions.len() as u32 })
        }
        async fn access(&self, reference: &SecretRef) -> Result<SecretValue, SecretsError> {
            let all = self.0.lock().expect("secrets");
            let versions = all.get(&reference.name).ok_or_else(|| SecretsError::NotFound(reference.name.clone()))?;
            versions
                .get((reference.version as usize).wrapping_sub(1))
                .cloned()
                .ok_or_else(|| SecretsError::NotFound(format!("{}:{}", reference.name, reference.version)))
        }
        async fn latest(&self, name: &str) -> Result<Option<SecretRef>, SecretsError> {
            let all = self.0.lock().expect("secrets");
            Ok(all.get(name).map(|v| SecretRef { name: name.to_owned(), version: v.len() as u32 }))
        }
    }

    fn ask() -> BrainRequest {
        BrainRequest { messages: vec![BrainMessage::user("hi")], tools: vec![], priority: Priority::Chat }
    }

    #[tokio::test]
    async fn rules_is_the_default_and_builds_no_brain() {
        let config = env(&[]).expect("config");
        assert!(config.provider.is_none());
        assert!(build(&config, &MemorySecrets::default(), None).await.expect("build").is_none());
        assert!(env(&[("DEVGEM_BRAIN", "rules")]).expect("rules").provider.is_none());
        let error = env(&[("DEVGEM_BRAIN", "gpt")]).expect_err("unknown");
        assert_eq!(error.to_string(), r#"DEVGEM_BRAIN="gpt" is not one of rules, gemini, vertex, openai"#);
    }

    #[test]
    fn a_missing_setting_names_the_variable_to_set() {
        let cases = [
            ("gemini", "DEVGEM_GEMINI_API_KEY"),
            ("vertex", "DEVGEM_VERTEX_PROJECT"),
            ("openai", "DEVGEM_OPENAI_MODEL"),
        ];
        for (brain, needs) in cases {
            let error = env(&[("DEVGEM_BRAIN", brain)]).expect_err("incomplete").to_string();
            assert!(error.starts_with(&format!("DEVGEM_BRAIN={brain} needs")) && error.contains(needs), "{error}");
        }
        let error =
            env(&[("DEVGEM_BRAIN", "vertex"), ("DEVGEM_VERTEX_PROJECT", "p"), ("DEVGEM_VERTEX_REGIONS", "us/../x")])
                .expect_err("a region that is not a name");
        assert!(error.to_string().starts_with("DEVGEM_VERTEX_REGIONS:"), "{error}");
        let error =
            env(&[("DEVGEM_BRAIN", "vertex"), ("DEVGEM_VERTEX_PROJECT", "p"), ("DEVGEM_VERTEX_REGIONS", " , ")])
                .expect_err("no region");
        assert!(error.to_string().contains("at least one region"), "{error}");
        let error = env(&[("DEVGEM_BRAIN_TOKENS_PER_MINUTE", "lots")]).expect_err("not a number");
        assert_eq!(error.to_string(), r#"DEVGEM_BRAIN_TOKENS_PER_MINUTE: "lots" is not a positive whole number"#);
    }

    #[test]
    fn reads_defaults_and_divides_the_budget_between_instances() {
        let config = env(&[
            ("DEVGEM_BRAIN", "vertex"),
            ("DEVGEM_VERTEX_PROJECT", "my-proj"),
            ("DEVGEM_VERTEX_REGIONS", " us-central1, europe-west1 ,,asia-northeast1"),
            ("DEVGEM_BRAIN_TOKENS_PER_MINUTE", "100000"),
            ("DEVGEM_BRAIN_TOKENS_PER_HOUR", "3000000"),
            ("DEVGEM_CHAT_MAX_INSTANCES", "4"),
        ])
        .expect("config");
        let Some(ProviderConfig::Vertex { vertex, fallback: None }) = &config.provider else {
            panic!("vertex without a fallback: {config:?}")
        };
        assert_eq!(vertex.regions, ["us-central1", "europe-west1", "asia-northeast1"]);
        assert_eq!((vertex.model.as_str(), vertex.base_url.as_str()), (DEFAULT_MODEL, vertex::DEFAULT_BASE_URL));
        assert!(vertex.access_token.is_none());
        assert_eq!((config.budget.tokens_per_minute, config.budget.tokens_per_hour), (Some(25_000), Some(750_000)));

        let config = env(&[("DEVGEM_BRAIN", "vertex"), ("DEVGEM_VERTEX_PROJECT", "p")]).expect("config");
        let Some(ProviderConfig::Vertex { vertex, .. }) = &config.provider else { panic!("vertex") };
        assert_eq!(vertex.regions, [DEFAULT_REGION]);
        assert_eq!(config.budget, Budget::default());
    }

    #[test]
    fn secret_references_name_a_version_or_the_newest() {
        let reference = |raw| secret_reference(raw).ok();
        let secret = |name: &str, version| Some(ApiKey::Secret { name: name.to_owned(), version });
        assert_eq!(reference("gemini-key"), secret("gemini-key", None));
        assert_eq!(reference("gemini-key:latest"), secret("gemini-key", None));
        assert_eq!(reference("gemini-key:3"), secret("gemini-key", Some(3)));
        assert_eq!(reference("gemini-key:three"), None);
        assert_eq!(reference(":3"), None);
    }

    #[tokio::test]
    async fn keys_never_show_in_debug_or_errors() {
        let config = env(&[
            ("DEVGEM_BRAIN", "vertex"),
            ("DEVGEM_VERTEX_PROJECT", "p"),
            ("DEVGEM_VERTEX_ACCESS_TOKEN", "ya29.secret-token"),
            ("DEVGEM_GEMINI_API_KEY", KEY),
        ])
        .expect("config");
        let debug = format!("{config:?}");
        assert!(!debug.contains(KEY) && !debug.contains("ya29.secret-token"), "{debug}");
        let brain = build(&config, &MemorySecrets::default(), None).await.expect("build").expect("a brain");
        let debug = format!("{brain:?}");
        assert!(!debug.contains(KEY) && !debug.contains("ya29.secret-token"), "{debug}");

        let config = env(&[("DEVGEM_BRAIN", "openai"), ("DEVGEM_OPENAI_MODEL", "m"), ("DEVGEM_OPENAI_API_KEY", KEY)])
            .expect("config");
        assert!(!format!("{config:?}").contains(KEY));
    }

    #[tokio::test]
    async fn the_gemini_key_can_come_from_the_secrets_port() {
        let mock =
            Mock::scripted(vec![Answer::Json(200, json!({"candidates": [{"content": {"parts": [{"text": "hi"}]}}]}))])
                .await;
        let secrets = MemorySecrets::default();
        secrets.put("gemini-key", SecretValue::new("old")).await.expect("put");
        secrets.put("gemini-key", SecretValue::new(KEY)).await.expect("put");
        let config = env(&[
            ("DEVGEM_BRAIN", "gemini"),
            ("DEVGEM_GEMINI_API_KEY_SECRET", "gemini-key"),
            ("DEVGEM_GEMINI_BASE_URL", &mock.base),
        ])
        .expect("config");
        let brain = build(&config, &secrets, None).await.expect("build").expect("a brain");
        assert_eq!(brain.complete(ask()).await.expect("reply").provider, "gemini/gemini-2.5-flash");
        assert_eq!(mock.seen()[0].header("x-goog-api-key"), Some(KEY));

        let missing = env(&[("DEVGEM_BRAIN", "gemini"), ("DEVGEM_GEMINI_API_KEY_SECRET", "nope:2")]).expect("config");
        let error = build(&missing, &secrets, None).await.expect_err("no such secret").to_string();
        assert!(error.starts_with(r#"the Gemini API key secret "nope""#), "{error}");
    }

    #[tokio::test]
    async fn vertex_fails_over_across_regions_then_to_the_gemini_api() {
        let mock = Mock::start(|_, seen| {
            if seen.path.starts_with("/v1/projects/") {
                Answer::Json(503, json!({"error": {"message": "The model is overloaded."}}))
            } else {
                Answer::Json(200, json!({"candidates": [{"content": {"parts": [{"text": "from Gemini"}]}}]}))
            }
        })
        .await;
        let mut config = env(&[
            ("DEVGEM_BRAIN", "vertex"),
            ("DEVGEM_VERTEX_PROJECT", "p"),
            ("DEVGEM_VERTEX_REGIONS", "r1,r2"),
            ("DEVGEM_VERTEX_BASE_URL", &mock.base),
            ("DEVGEM_VERTEX_ACCESS_TOKEN", "ya29.t"),
            ("DEVGEM_GEMINI_API_KEY", KEY),
            ("DEVGEM_GEMINI_BASE_URL", &mock.base),
        ])
        .expect("config");
        config.policy.retry = RetryPolicy { attempts: 1, ..RetryPolicy::default() };
        let notices = Arc::new(Mutex::new(Vec::new()));
        let sink = notices.clone();
        let on_notice: OnNotice = Arc::new(move |n| sink.lock().expect("notices").push(n));
        let brain = build(&config, &MemorySecrets::default(), Some(on_notice)).await.expect("build").expect("a brain");

        let reply = brain.complete(ask()).await.expect("the Gemini API answers");
        assert_eq!((reply.provider.as_str(), reply.text.as_deref()), ("gemini/gemini-2.5-flash", Some("from Gemini")));
        let paths: Vec<String> = mock.seen().into_iter().map(|s| s.path).collect();
        assert!(paths[0].contains("/locations/r1/") && paths[1].contains("/locations/r2/"), "{paths:?}");
        assert_eq!(paths[2], "/v1beta/models/gemini-2.5-flash:generateContent");
        assert_eq!(
            *notices.lock().expect("notices"),
            [
                "Vertex AI in r1 is rate limited; using Vertex AI in r2",
                "Vertex AI in r2 is rate limited; using the Gemini API"
            ]
        );
    }
}
