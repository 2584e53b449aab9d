//! `services/{owner}-{name}`: the truth about what is serving — revisions, which one takes the
//! traffic, which one a rollback returns to, env (secrets only as references), open alerts.

use crate::ids::{DeploymentId, EnvVarName, ServiceName, UserId};
use crate::ports::secrets::SecretRef;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub name: String,
    pub deployment_id: DeploymentId,
    pub image: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// The revision that receives all traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
    /// Where a rollback goes: the revision that served before `serving`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_target: Option<String>,
}

/// An env var's stored value: plain text, or a reference into the Secrets port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EnvEntry {
    Plain { value: String },
    Secret { reference: SecretRef },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("revision {0} already exists")]
    DuplicateRevision(String),
    #[error("revision {0} does not exist for this service")]
    UnknownRevision(String),
    #[error("there is no earlier revision to roll back to")]
    NoRollbackTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub owner: UserId,
    pub name: ServiceName,
    pub revisions: Vec<Revision>,
    pub traffic: Traffic,
    #[serde(default)]
    pub env: BTreeMap<EnvVarName, EnvEntry>,
    #[serde(default)]
    pub open_alerts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl Service {
    pub fn new(owner: UserId, name: ServiceName) -> Self {
        Self {
            owner,
            name,
            revisions: Vec::new(),
            traffic: Traffic::default(),
            env: BTreeMap::new(),
            open_alerts: Vec::new(),
            url: None,
        }
    }

    /// The document id: services are per user, so two users can both have `web`.
    pub fn doc_id(owner: &UserId, name: &ServiceName) -> String {
        format!("{owner}-{name}")
    }

    pub fn add_revision(&mut self, revision: Revision) -> Result<(), ServiceError> {
        if self.revision(&revision.name).is_some() {
            return Err(ServiceError::DuplicateRevision(revision.name));
        }
        self.revisions.push(revision);
        Ok(())
    }

    pub fn revision(&self, name: &str) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.name == name)
    }

    /// Sends all traffic to `revision`; the one serving before becomes the rollback target.
    pub fn route_to(&mut self, revision: &str) -> Result<(), ServiceError> {
        if self.revision(revision).is_none() {
            return Err(ServiceError::UnknownRevision(revision.to_owned()));
        }
        if self.traffic.serving.as_deref() == Some(revision) {
            return Ok(());
        }
        self.traffic.rollback_target = self.traffic.serving.take();
        self.traffic.serving = Some(revision.to_owned());
        Ok(())
    }

    /// Moves traffic to `to` (or the rollback target). Afterwards the target of a further
    /// rollback is the revision created before the new serving one, so rollbacks walk back.
    pub fn rollback(&mut self, to: Option<&str>) -> Result<String, ServiceError> {
        let target = match to {
            Some(name) => name.to_owned(),
            None => self.traffic.rollback_target.clone().ok_or(ServiceError::NoRollbackTarget)?,
        };
        let index = self
            .revisions
            .iter()
            .position(|r| r.name == target)
            .ok_or_else(|| ServiceError::UnknownRevision(target.clone()))?;
        self.traffic.serving = Some(target.clone());
        self.traffic.rollback_target = index.checked_sub(1).map(|i| self.revisions[i].name.clone());
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(name: &str) -> Revision {
        Revision {
            name: name.into(),
            deployment_id: DeploymentId::generate(),
            image: format!("img-{name}"),
            created_at: Utc::now(),
        }
    }

    #[test]
    fn routing_records_the_rollback_target_and_rollback_walks_back() {
        let mut s = Service::new(UserId::admin(), ServiceName::derive_from("web"));
        assert_eq!(s.rollback(None), Err(ServiceError::NoRollbackTarget));
        for name in ["web-1", "web-2", "web-3"] {
            s.add_revision(rev(name)).expect("new revision");
            s.route_to(name).expect("known revision");
        }
        assert_eq!(s.traffic.serving.as_deref(), Some("web-3"));
        assert_eq!(s.traffic.rollback_target.as_deref(), Some("web-2"));
        assert_eq!(s.rollback(None), Ok("web-2".to_owned()));
        assert_eq!(s.traffic.rollback_target.as_deref(), Some("web-1"));
        assert_eq!(s.rollback(None), Ok("web-1".to_owned()));
        assert_eq!(s.rollback(None), Err(ServiceError::NoRollbackTarget));
        assert_eq!(s.route_to("nope"), Err(ServiceError::UnknownRevision("nope".into())));
        assert_eq!(s.add_revision(rev("web-1")), Err(ServiceError::DuplicateRevision("web-1".into())));
    }
}
