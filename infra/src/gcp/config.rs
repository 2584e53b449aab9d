//! Where the GCP adapters connect, read from the environment. Names follow Google's own
//! conventions where they exist (`GOOGLE_CLOUD_PROJECT`, `*_EMULATOR_HOST`), `DEVGEM_*` otherwise.

/// Everything the GCP adapters need to find their resources.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GcpConfig {
    /// `GOOGLE_CLOUD_PROJECT`.
    pub project: String,
    /// `DEVGEM_FIRESTORE_DATABASE`, default `(default)`.
    pub firestore_database: String,
    /// `FIRESTORE_EMULATOR_HOST` (`host:port`): plain HTTP/2, no credentials.
    pub firestore_emulator: Option<String>,
    /// `DEVGEM_BUCKET`: the Cloud Storage bucket for blobs.
    pub bucket: Option<String>,
    /// `STORAGE_EMULATOR_HOST` (`http://host:port` or `host:port`): no credentials.
    pub storage_emulator: Option<String>,
    /// `PUBSUB_EMULATOR_HOST` (`host:port`): plain HTTP/2, no credentials.
    pub pubsub_emulator: Option<String>,
    /// `DEVGEM_TOPIC_PREFIX`: prepended to every topic name (`chat-turns` -> `devgem-chat-turns`).
    pub topic_prefix: String,
    /// `DEVGEM_REGION`, default `us-central1`: where users' builds and services run.
    pub region: String,
    /// `DEVGEM_IMAGE_REPOSITORY`: the Artifact Registry repository users' images are pushed to,
    /// as `REGION-docker.pkg.dev/PROJECT/REPOSITORY`.
    pub image_repository: Option<String>,
    /// `DEVGEM_BUILD_SERVICE_ACCOUNT`: the email users' builds run as (never DevGem's own).
    pub build_service_account: Option<String>,
    /// `DEVGEM_APP_SERVICE_ACCOUNT`: the service account users' services run as.
    pub app_service_account: Option<String>,
    /// `DEVGEM_SERVICE_PREFIX`: prepended to the Cloud Run names of users' services.
    pub service_prefix: String,
    /// Where the control-plane APIs are reached instead of Google's endpoints (stand-ins in
    /// tests): `DEVGEM_<API>_ENDPOINT` as `http://host:port`, with anonymous credentials.
    pub endpoints: Endpoints,
}

/// Endpoint overrides of the control-plane APIs; `None`: Google's own, with Application Default
/// Credentials.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Endpoints {
    /// `DEVGEM_CLOUD_BUILD_ENDPOINT`.
    pub cloud_build: Option<String>,
    /// `DEVGEM_CLOUD_RUN_ENDPOINT`.
    pub cloud_run: Option<String>,
    /// `DEVGEM_SECRET_MANAGER_ENDPOINT`.
    pub secret_manager: Option<String>,
    /// `DEVGEM_LOGGING_ENDPOINT`.
    pub logging: Option<String>,
    /// `DEVGEM_IAM_ENDPOINT`.
    pub iam: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set; {1}")]
    Missing(&'static str, &'static str),
    #[error("{name}={value:?}: {reason}")]
    Invalid { name: &'static str, value: String, reason: &'static str },
}

impl GcpConfig {
    /// Reads the configuration through `get` (the environment, or a map in tests).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let non_empty = |name: &str| get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let project = non_empty("GOOGLE_CLOUD_PROJECT")
            .ok_or(ConfigError::Missing("GOOGLE_CLOUD_PROJECT", "set it to the GCP project id DevGem runs in"))?;
        let valid_id = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !valid_id(&project) {
            return Err(ConfigError::Invalid {
                name: "GOOGLE_CLOUD_PROJECT",
                value: project,
                reason: "a project id is letters, digits, '-', ':' and '.'",
            });
        }
        let topic_prefix = non_empty("DEVGEM_TOPIC_PREFIX").unwrap_or_default();
        if !valid_id(&topic_prefix) {
            return Err(ConfigError::Invalid {
                name: "DEVGEM_TOPIC_PREFIX",
                value: topic_prefix,
                reason: "topic names are letters, digits, '-', '_' and '.'",
            });
        }
        Ok(Self {
            project,
            firestore_database: non_empty("DEVGEM_FIRESTORE_DATABASE").unwrap_or_else(|| "(default)".to_owned()),
            firestore_emulator: non_empty("FIRESTORE_EMULATOR_HOST"),
            bucket: non_empty("DEVGEM_BUCKET"),
            storage_emulator: non_empty("STORAGE_EMULATOR_HOST"),
            pubsub_emulator: non_empty("PUBSUB_EMULATOR_HOST"),
            topic_prefix,
            region: non_empty("DEVGEM_REGION").unwrap_or_else(|| "us-central1".to_owned()),
            image_repository: non_empty("DEVGEM_IMAGE_REPOSITORY"),
            build_service_account: non_empty("DEVGEM_BUILD_SERVICE_ACCOUNT"),
            app_service_account: non_empty("DEVGEM_APP_SERVICE_ACCOUNT"),
            service_prefix: non_empty("DEVGEM_SERVICE_PREFIX").unwrap_or_default(),
            endpoints: Endpoints {
                cloud_build: non_empty("DEVGEM_CLOUD_BUILD_ENDPOINT"),
                cloud_run: non_empty("DEVGEM_CLOUD_RUN_ENDPOINT"),
                secret_manager: non_empty("DEVGEM_SECRET_MANAGER_ENDPOINT"),
                logging: non_empty("DEVGEM_LOGGING_ENDPOINT"),
                iam: non_empty("DEVGEM_IAM_ENDPOINT"),
            },
        })
    }

    /// The full topic name of one of our topics.
    pub fn topic_name(&self, topic: &str) -> String {
        format!("projects/{}/topics/{}{topic}", self.project, self.topic_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn the_project_is_required_and_names_have_defaults() {
        let error = GcpConfig::from_env(env(&[])).expect_err("no project");
        assert!(error.to_string().contains("GOOGLE_CLOUD_PROJECT is not set"), "{error}");
        let config = GcpConfig::from_env(env(&[("GOOGLE_CLOUD_PROJECT", "demo"), ("DEVGEM_TOPIC_PREFIX", "dg-")]))
            .expect("config");
        assert_eq!(config.firestore_database, "(default)");
        assert_eq!(config.topic_name("chat-turns"), "projects/demo/topics/dg-chat-turns");
        let error = GcpConfig::from_env(env(&[("GOOGLE_CLOUD_PROJECT", "a/b")])).expect_err("bad id");
        assert!(error.to_string().contains("a project id is"), "{error}");
    }
}
