//! Validated identifiers and names. Each is parsed once where it enters the system; inside,
//! only valid values travel, so no handler re-checks them.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// Why a name or id was refused; the message tells the user what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {rule}")]
pub struct InvalidName {
    pub what: &'static str,
    pub value: String,
    pub rule: &'static str,
}

fn invalid(what: &'static str, value: &str, rule: &'static str) -> InvalidName {
    // Cap the echoed value so a megabyte of garbage does not become a megabyte of error message.
    let value: String = value.chars().take(80).collect();
    InvalidName { what, value, rule }
}

macro_rules! opaque_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            const RULE: &'static str = "use 1 to 128 characters from A-Z, a-z, 0-9, '-' and '_'";

            /// Parses an id received from outside.
            pub fn parse(value: &str) -> Result<Self, InvalidName> {
                let valid = !value.is_empty()
                    && value.len() <= 128
                    && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if valid { Ok(Self(value.to_owned())) } else { Err(invalid($what, value, Self::RULE)) }
            }

            /// A fresh id, time-ordered (UUIDv7) so ids sort by creation.
            pub fn generate() -> Self {
                Self(uuid::Uuid::now_v7().simple().to_string())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

opaque_id!(
    /// A user; every document carries its owner's id.
    UserId,
    "user id"
);
opaque_id!(
    /// A chat session: a conversation and its numbered event log.
    SessionId,
    "session id"
);
opaque_id!(
    /// One deploy attempt.
    DeploymentId,
    "deployment id"
);
opaque_id!(
    /// Born with a chat turn or API request; travels through every event and log line.
    CorrelationId,
    "correlation id"
);

impl UserId {
    /// The administrator `devgem up` creates on first start.
    pub fn admin() -> Self {
        Self("admin".to_owned())
    }

    /// The owner of system documents (`processed/`, `rejected/`), readable only with
    /// [`crate::ports::store::Scope::All`].
    pub fn system() -> Self {
        Self("system".to_owned())
    }
}

/// A deployable service's name as Cloud Run accepts it: a DNS label that starts with a letter,
/// made of lowercase letters, digits and hyphens, not ending with a hyphen, at most 49 characters
/// (Cloud Run appends revision suffixes up to 63).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ServiceName(String);

impl ServiceName {
    pub const MAX_LEN: usize = 49;
    const RULE: &'static str =
        "start with a lowercase letter, use only a-z, 0-9 and '-', do not end with '-', at most 49 characters";

    pub fn parse(value: &str) -> Result<Self, InvalidName> {
        let bytes = value.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && bytes[0].is_ascii_lowercase()
            && bytes.last() != Some(&b'-')
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if valid { Ok(Self(value.to_owned())) } else { Err(invalid("service name", value, Self::RULE)) }
    }

    /// Derives a valid name from anything (a repository name, a directory): lowercases, maps
    /// other characters to '-', collapses runs, trims, and prefixes `app-` when needed.
    pub fn derive_from(raw: &str) -> Self {
        let mut out = String::with_capacity(raw.len());
        for c in raw.chars() {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                out.push(c);
            } else if !out.ends_with('-') {
                out.push('-');
            }
        }
        let trimmed = out.trim_matches('-');
        let mut name = if trimmed.starts_with(|c: char| c.is_ascii_lowercase()) {
            trimmed.to_owned()
        } else {
            format!("app-{trimmed}")
        };
        name.truncate(Self::MAX_LEN);
        let name = name.trim_end_matches('-');
        Self(if name.is_empty() || name == "app" { "app".to_owned() } else { name.to_owned() })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// An environment variable name a user may set: `[A-Za-z_][A-Za-z0-9_]*`, at most 255 bytes, and
/// not one of the names the runtime sets itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct EnvVarName(String);

impl EnvVarName {
    /// Set by Cloud Run (and by the local runtime) for every revision.
    pub const RESERVED: [&'static str; 4] = ["PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"];

    pub fn parse(value: &str) -> Result<Self, InvalidName> {
        let bytes = value.as_bytes();
        let shape = !bytes.is_empty()
            && bytes.len() <= 255
            && (bytes[0].is_ascii_alphabetic() || bytes[0] == b'_')
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
        if !shape {
            return Err(invalid(
                "env var name",
                value,
                "start with a letter or '_' and use only letters, digits and '_' (at most 255)",
            ));
        }
        if Self::RESERVED.contains(&value) {
            return Err(invalid("env var name", value, "PORT and K_* are set by the runtime; pick another name"));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvVarName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EnvVarName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_refuse_path_and_empty() {
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a/b").is_err());
        assert!(DeploymentId::parse("../x").is_err());
        assert!(SessionId::parse(&"a".repeat(129)).is_err());
        assert!(UserId::parse("alice_01-x").is_ok());
    }

    #[test]
    fn generated_ids_are_valid_and_ordered() {
        let a = DeploymentId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = DeploymentId::generate();
        assert!(DeploymentId::parse(a.as_str()).is_ok());
        assert!(a < b, "UUIDv7 ids sort by creation time");
    }

    #[test]
    fn service_name_rules() {
        assert!(ServiceName::parse("my-app-2").is_ok());
        for bad in ["", "2app", "App", "my_app", "app-", &"a".repeat(50)] {
            assert!(ServiceName::parse(bad).is_err(), "{bad:?} must be refused");
        }
        let err = ServiceName::parse("My_App").expect_err("uppercase refused");
        assert!(err.to_string().contains("lowercase"), "the message says what to do: {err}");
    }

    #[test]
    fn env_var_reserved_names_refused_with_reason() {
        let err = EnvVarName::parse("PORT").expect_err("reserved");
        assert!(err.to_string().contains("set by the runtime"));
        assert!(EnvVarName::parse("DATABASE_URL").is_ok());
        assert!(EnvVarName::parse("1X").is_err());
    }

    #[test]
    fn deserialize_validates() {
        assert!(serde_json::from_str::<ServiceName>("\"Bad Name\"").is_err());
        assert!(serde_json::from_str::<UserId>("\"ok\"").is_ok());
    }

    proptest! {
        #[test]
        fn derived_service_names_always_parse(raw in ".{0,120}") {
            let derived = ServiceName::derive_from(&raw);
            prop_assert!(ServiceName::parse(derived.as_str()).is_ok(), "{derived:?} from {raw:?}");
        }

        #[test]
        fn service_name_parse_never_panics_and_accepts_only_valid(raw in "[a-zA-Z0-9_-]{0,60}") {
            if let Ok(name) = ServiceName::parse(&raw) {
                prop_assert!(name.as_str().len() <= ServiceName::MAX_LEN);
                prop_assert!(!name.as_str().ends_with('-'));
            }
        }

        #[test]
        fn env_var_names_roundtrip(raw in "[A-Za-z_][A-Za-z0-9_]{0,40}") {
            match EnvVarName::parse(&raw) {
                Ok(name) => prop_assert_eq!(name.as_str(), raw.as_str()),
                Err(_) => prop_assert!(EnvVarName::RESERVED.contains(&raw.as_str())),
            }
        }

        #[test]
        fn opaque_ids_accept_exactly_the_alphabet(raw in "\\PC{0,140}") {
            let ok = UserId::parse(&raw).is_ok();
            let expected = !raw.is_empty() && raw.len() <= 128
                && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            prop_assert_eq!(ok, expected);
        }
    }
}
