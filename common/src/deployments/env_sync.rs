//! A deployment's env as its service runs it now, not only as DevGem deployed it: the two-way
//! sync behind `GET /api/deployments/{id}/env`, and the base a change starts from.
//!
//! Two things can change outside DevGem:
//! - a secret gets a newer version (`gcloud secrets versions add`): found with
//!   [`Secrets::latest`]. A version newer than every one a DevGem deployment of the service pins
//!   is "changed outside"; one that a later DevGem deployment pinned (say, one still building) is
//!   only reported as `latest_version`.
//! - the service's env is edited on the runtime (the Cloud Run console): found with
//!   [`Runtime::live_env`], compared only for the deployment whose revision serves the service.
//!   Any other deployment's env differs from the live one because another deployment replaced it,
//!   not because of a change outside DevGem.
//!
//! When the runtime or the Secrets port cannot be read, the view is the stored one and
//! [`EnvSync`] says what was not checked; the view never fails because of them.
//!
//! The base of a change ([`EnvView::rebase`]) is the view: live values where the live env was
//! compared (a variable removed outside stays removed, one added outside is kept), and a secret
//! with a version added outside pinned at that version. So a redeploy never silently undoes an
//! edit made outside DevGem. Values of plain live variables are shown (they are not secrets); a
//! secret is shown by its version only, as always.

use super::EnvVar;
use crate::model::deployment::Deployment;
use crate::model::service::Service;
use crate::ports::Ports;
use crate::ports::runtime::{EnvValue, Runtime, RuntimeError};
use crate::ports::secrets::{SecretRef, Secrets};
use crate::ports::store::{DocKey, Query, Scope, StoreExt};
use std::collections::{BTreeMap, BTreeSet};

/// What changed outside DevGem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutsideChange {
    /// The secret has a newer version than any DevGem deployed (`latest_version`); the service
    /// keeps the one it was deployed with until it is deployed again.
    NewSecretVersion,
    /// The service runs with another value or secret reference (`deployed` has DevGem's).
    Value,
    /// The service has the variable; DevGem did not deploy it.
    Added,
    /// DevGem deployed the variable; the service no longer has it (the fields are DevGem's).
    Removed,
}

/// What DevGem deployed of a variable the service now runs differently.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Deployed {
    pub value: Option<String>,
    pub secret: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// Whether one source was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    Compared,
    /// Not applicable here (why is in the notes): nothing can have changed there.
    NotCompared,
    /// It could not be read; the stored view is shown for it.
    Unavailable,
}

/// How the view was checked against what runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EnvSync {
    /// The service's env on the runtime.
    pub live_env: SyncState,
    /// The newest versions of the secrets.
    pub secrets: SyncState,
    /// For a person: what was not checked, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What was read outside the deployment's document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outside {
    /// The service's env on the runtime, when it was compared.
    pub live: Option<BTreeMap<String, EnvValue>>,
    /// The newest enabled version of each secret, by secret name (absent: unknown or none).
    pub latest: BTreeMap<String, u32>,
    /// The highest version of each secret that a DevGem deployment of the service pins.
    pub pinned: BTreeMap<String, u32>,
}

/// A deployment's env as it runs, and what a change starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvView {
    pub vars: Vec<EnvVar>,
    pub sync: EnvSync,
    /// The plain variables a redeploy starts from.
    pub env: BTreeMap<String, String>,
    /// The secrets a redeploy starts from.
    pub secret_env: BTreeMap<String, SecretRef>,
}

impl EnvView {
    /// Whether every source could be read: a change should not start from a view that may miss
    /// an edit made outside DevGem.
    pub fn complete(&self) -> bool {
        self.sync.live_env != SyncState::Unavailable && self.sync.secrets != SyncState::Unavailable
    }

    /// `d` with the view's env: the base [`super::change_env`] should deploy from.
    pub fn rebase(&self, d: &Deployment) -> Deployment {
        let mut base = d.clone();
        base.env = self.env.clone();
        base.secret_env = self.secret_env.clone();
        base
    }
}

/// The env `d` was deployed with, by name (a name in both maps is plain, as the deploy stage
/// sends it).
pub fn deployed_env(d: &Deployment) -> BTreeMap<String, EnvValue> {
    let mut env: BTreeMap<String, EnvValue> =
        d.secret_env.iter().map(|(name, reference)| (name.clone(), EnvValue::Secret(reference.clone()))).collect();
    env.extend(d.env.iter().map(|(name, value)| (name.clone(), EnvValue::Plain(value.clone()))));
    env
}

fn deployed(value: &EnvValue) -> Deployed {
    match value {
        EnvValue::Plain(value) => Deployed { value: Some(value.clone()), secret: false, version: None },
        EnvValue::Secret(reference) => Deployed { value: None, secret: true, version: Some(reference.version) },
    }
}

/// A variable as the service has it (`None`: removed outside), what changed outside, and what
/// DevGem deployed when it differs.
type Compared = (Option<EnvValue>, Option<OutsideChange>, Option<Deployed>);

/// The view of `d` given what was read outside (no I/O): the variables by name, and the env a
/// redeploy starts from.
pub fn synced_env(
    d: &Deployment,
    outside: &Outside,
) -> (Vec<EnvVar>, BTreeMap<String, String>, BTreeMap<String, SecretRef>) {
    let stored = deployed_env(d);
    let mut current: BTreeMap<String, Compared> = BTreeMap::new();
    match &outside.live {
        None => {
            for (name, value) in &stored {
                current.insert(name.clone(), (Some(value.clone()), None, None));
            }
        }
        Some(live) => {
            let names: BTreeSet<&String> = stored.keys().chain(live.keys()).collect();
            for name in names {
                let entry = match (stored.get(name), live.get(name)) {
                    (Some(ours), Some(theirs)) if ours == theirs => (Some(theirs.clone()), None, None),
                    (Some(ours), Some(theirs)) => {
                        (Some(theirs.clone()), Some(OutsideChange::Value), Some(deployed(ours)))
                    }
                    (Some(_), None) => (None, Some(OutsideChange::Removed), None),
                    (None, Some(theirs)) => (Some(theirs.clone()), Some(OutsideChange::Added), None),
                    (None, None) => continue,
                };
                current.insert(name.clone(), entry);
            }
        }
    }

    let (mut vars, mut env, mut secret_env) = (Vec::new(), BTreeMap::new(), BTreeMap::new());
    for (name, (value, mut change, deployed)) in current {
        // A removed variable is shown as DevGem deployed it.
        let shown = match (&value, stored.get(&name)) {
            (Some(value), _) | (None, Some(value)) => value.clone(),
            (None, None) => continue,
        };
        let mut var = EnvVar::new(&name, &shown);
        let mut base = value;
        if let EnvValue::Secret(reference) = &shown
            && let Some(&latest) = outside.latest.get(&reference.name)
            && latest > reference.version
        {
            var.latest_version = Some(latest);
            let ours = outside.pinned.get(&reference.name).copied().unwrap_or(0).max(reference.version);
            if latest > ours {
                change = change.or(Some(OutsideChange::NewSecretVersion));
                // Deployed again, the service takes the version set outside.
                if base.is_some() {
                    base = Some(EnvValue::Secret(SecretRef { name: reference.name.clone(), version: latest }));
                }
            }
        }
        var.changed_outside = change.is_some();
        var.outside = change;
        var.deployed = deployed;
        match base {
            Some(EnvValue::Plain(value)) => {
                env.insert(name, value);
            }
            Some(EnvValue::Secret(reference)) => {
                secret_env.insert(name, reference);
            }
            None => {}
        }
        vars.push(var);
    }
    (vars, env, secret_env)
}

/// Whether `d` is the deployment serving its service; `Err` says why the live env is not
/// compared (and whether that is because the store could not be read).
async fn serving(ports: &Ports, d: &Deployment) -> Result<(), (SyncState, String)> {
    let Some(revision) = &d.revision else {
        return Err((SyncState::NotCompared, format!("deployment {} has not run a revision", d.id)));
    };
    let key = DocKey::new("services", Service::doc_id(&d.owner, &d.service))
        .map_err(|e| (SyncState::Unavailable, format!("the service's document: {e}")))?;
    let found = ports.store.get_typed::<Service>(&Scope::Owner(d.owner.clone()), &key).await;
    let service = match found {
        Ok(Some((service, _))) => service,
        Ok(None) => return Err((SyncState::NotCompared, format!("{} is not serving", d.service))),
        Err(e) => {
            tracing::warn!(error = %e, "the service's document could not be read");
            return Err((SyncState::Unavailable, format!("whether {} serves this deployment is unknown", d.service)));
        }
    };
    match service.traffic.serving {
        Some(serving) if &serving == revision => Ok(()),
        Some(serving) => Err((
            SyncState::NotCompared,
            format!(
                "{} serves revision {serving} of another deployment; the live env is compared for that one",
                d.service
            ),
        )),
        None => Err((SyncState::NotCompared, format!("{} is not serving", d.service))),
    }
}

/// Per secret name, the highest version pinned by a DevGem deployment of `d`'s service.
async fn pinned_versions(ports: &Ports, d: &Deployment) -> Result<BTreeMap<String, u32>, String> {
    let query = Query::collection("deployments").filter("service", d.service.as_str());
    let docs = ports.store.query(&Scope::Owner(d.owner.clone()), &query).await.map_err(|e| e.to_string())?;
    let mut pinned: BTreeMap<String, u32> = BTreeMap::new();
    let references = docs
        .iter()
        .filter_map(|doc| doc.parse::<Deployment>().ok())
        .flat_map(|other| other.secret_env.into_values().collect::<Vec<_>>());
    for reference in references.chain(d.secret_env.values().cloned()) {
        let highest = pinned.entry(reference.name).or_default();
        *highest = (*highest).max(reference.version);
    }
    Ok(pinned)
}

/// Reads what runs (the live env of the serving deployment, the newest secret versions) and
/// builds the view of `d`. Never fails: what could not be read is in [`EnvView::sync`].
pub async fn env_view(ports: &Ports, secrets: &dyn Secrets, runtime: &dyn Runtime, d: &Deployment) -> EnvView {
    let mut notes = Vec::new();
    let mut outside = Outside::default();

    let live_env = match serving(ports, d).await {
        Err((state, note)) => {
            notes.push(format!("live env not compared: {note}"));
            state
        }
        Ok(()) => match runtime.live_env(&d.owner, &d.service).await {
            Ok(Some(live)) => {
                outside.live = Some(live.into_iter().map(|(name, value)| (name.to_string(), value)).collect());
                SyncState::Compared
            }
            Ok(None) => {
                notes.push("live env not compared: the runtime keeps no env besides what DevGem deploys".into());
                SyncState::NotCompared
            }
            Err(RuntimeError::NotFound(_)) => {
                notes.push(format!("live env not compared: {} does not exist on the runtime", d.service));
                SyncState::NotCompared
            }
            Err(e) => {
                tracing::warn!(error = %e, service = %d.service, "the live env could not be read");
                notes.push(format!(
                    "live env unavailable: the runtime could not be asked for {}'s env; showing what DevGem deployed",
                    d.service
                ));
                SyncState::Unavailable
            }
        },
    };

    // Every secret shown: those deployed and those the live env references.
    let mut names: BTreeSet<String> = d.secret_env.values().map(|r| r.name.clone()).collect();
    if let Some(live) = &outside.live {
        names.extend(live.values().filter_map(|v| match v {
            EnvValue::Secret(reference) => Some(reference.name.clone()),
            EnvValue::Plain(_) => None,
        }));
    }
    let mut secrets_state = if names.is_empty() { SyncState::NotCompared } else { SyncState::Compared };
    for name in names {
        match secrets.latest(&name).await {
            Ok(Some(latest)) => {
                outside.latest.insert(name, latest.version);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, secret = %name, "the newest version of a secret could not be read");
                secrets_state = SyncState::Unavailable;
            }
        }
    }
    if secrets_state == SyncState::Unavailable {
        notes.push("secrets unavailable: newer versions set outside DevGem may not be shown".into());
    }
    if !outside.latest.is_empty() {
        match pinned_versions(ports, d).await {
            Ok(pinned) => outside.pinned = pinned,
            Err(e) => {
                // Without the other deployments every newer version counts as set outside.
                tracing::warn!(error = %e, "the service's deployments could not be read");
                outside.pinned = d.secret_env.values().map(|r| (r.name.clone(), r.version)).collect();
                notes.push("newer secret versions may come from a later DevGem deployment".into());
            }
        }
    }

    let (vars, env, secret_env) = synced_env(d, &outside);
    EnvView { vars, sync: EnvSync { live_env, secrets: secrets_state, notes }, env, secret_env }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Deployment {
        let mut d = crate::deployments::tests::app_deployment();
        d.env.insert("MODE".into(), "fast".into());
        d.env.insert("GONE".into(), "soon".into());
        d.secret_env.insert("API_KEY".into(), SecretRef { name: "admin--app--API_KEY".into(), version: 2 });
        d
    }

    fn secret(version: u32) -> EnvValue {
        EnvValue::Secret(SecretRef { name: "admin--app--API_KEY".into(), version })
    }

    #[test]
    fn nothing_outside_is_the_stored_view_unchanged() {
        let d = deployment();
        let (vars, env, secret_env) = synced_env(&d, &Outside::default());
        assert_eq!(vars, super::super::env_vars(&d));
        assert_eq!((env, secret_env), (d.env.clone(), d.secret_env.clone()));
        let live = Outside { live: Some(deployed_env(&d)), ..Outside::default() };
        assert_eq!(synced_env(&d, &live).0, vars, "a live env equal to the deployed one changes nothing");
    }

    #[test]
    fn live_edits_and_outside_versions_are_shown_and_become_the_base() {
        let d = deployment();
        let mut live = deployed_env(&d);
        live.insert("MODE".into(), EnvValue::Plain("slow".into()));
        live.remove("GONE");
        live.insert("EXTRA".into(), EnvValue::Plain("1".into()));
        let outside = Outside {
            live: Some(live),
            latest: [("admin--app--API_KEY".to_owned(), 4)].into(),
            pinned: [("admin--app--API_KEY".to_owned(), 3)].into(),
        };
        let (vars, env, secret_env) = synced_env(&d, &outside);
        let json = serde_json::to_value(&vars).expect("json");
        assert_eq!(
            json,
            serde_json::json!([
                {"name": "API_KEY", "value": null, "secret": true, "version": 2, "latest_version": 4,
                 "changed_outside": true, "outside": "new_secret_version"},
                {"name": "EXTRA", "value": "1", "secret": false, "changed_outside": true, "outside": "added"},
                {"name": "GONE", "value": "soon", "secret": false, "changed_outside": true, "outside": "removed"},
                {"name": "MODE", "value": "slow", "secret": false, "changed_outside": true, "outside": "value",
                 "deployed": {"value": "fast", "secret": false}},
            ])
        );
        assert_eq!(env, [("EXTRA".to_owned(), "1".to_owned()), ("MODE".to_owned(), "slow".to_owned())].into());
        assert_eq!(secret_env.get("API_KEY").map(|r| r.version), Some(4), "the version set outside");
    }

    #[test]
    fn a_newer_version_devgem_pinned_itself_is_not_an_outside_change() {
        let d = deployment();
        let outside = Outside {
            live: None,
            latest: [("admin--app--API_KEY".to_owned(), 3)].into(),
            pinned: [("admin--app--API_KEY".to_owned(), 3)].into(),
        };
        let (vars, _, secret_env) = synced_env(&d, &outside);
        let key = vars.iter().find(|v| v.name == "API_KEY").expect("shown");
        assert_eq!((key.latest_version, key.changed_outside, key.outside), (Some(3), false, None));
        assert_eq!(secret_env.get("API_KEY").map(|r| r.version), Some(2), "this deployment's own pin");

        // A secret reference changed on the runtime is a changed value, shown by version.
        let mut live = deployed_env(&d);
        live.insert("API_KEY".into(), secret(5));
        let (vars, _, secret_env) = synced_env(&d, &Outside { live: Some(live), ..Outside::default() });
        let key = vars.iter().find(|v| v.name == "API_KEY").expect("shown");
        assert_eq!((key.version, key.outside), (Some(5), Some(OutsideChange::Value)));
        assert_eq!(key.deployed, Some(Deployed { value: None, secret: true, version: Some(2) }));
        assert_eq!(secret_env.get("API_KEY").map(|r| r.version), Some(5));
    }
}
