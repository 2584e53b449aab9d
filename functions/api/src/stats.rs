//! `GET /stats`: deployments by state, builds and build minutes, session events; a user's own,
//! or (the admin) everyone's in total with a per-user breakdown and the bus's dead letters.
//! Dead letters have no owner, so users are not shown them.

use crate::AppState;
use axum::Json;
use axum::extract::State;
use devgem_common::handler::ApiError;
use devgem_common::identity::Caller;
use devgem_common::ids::UserId;
use devgem_common::model::deployment::{Deployment, DeploymentState};
use devgem_common::ports::store::{Query, Scope};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deployments {
    total: u64,
    /// Every state, zeros included.
    by_state: BTreeMap<&'static str, u64>,
}

/// The counts of one user, or of everyone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    deployments: Deployments,
    /// Builds run, the rebuilds of repairs included.
    builds: u64,
    /// Minutes finished builds took, to two decimals.
    build_minutes: f64,
    /// Session events of the user's sessions.
    events: u64,
}

impl Default for Totals {
    fn default() -> Self {
        let by_state = DeploymentState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        Self { deployments: Deployments { total: 0, by_state }, builds: 0, build_minutes: 0.0, events: 0 }
    }
}

impl Totals {
    fn add_deployment(&mut self, d: &Deployment) {
        self.deployments.total += 1;
        *self.deployments.by_state.entry(d.state.as_str()).or_insert(0) += 1;
        self.builds += d.build_count();
        self.build_minutes += d.build_seconds() / 60.0;
    }

    fn add(&mut self, other: &Totals) {
        self.deployments.total += other.deployments.total;
        for (state, n) in &other.deployments.by_state {
            *self.deployments.by_state.entry(state).or_insert(0) += n;
        }
        self.builds += other.builds;
        self.build_minutes += other.build_minutes;
        self.events += other.events;
    }

    fn rounded(mut self) -> Self {
        self.build_minutes = (self.build_minutes * 100.0).round() / 100.0;
        self
    }
}

#[derive(Debug, Serialize)]
pub struct Stats {
    /// `user`: the caller's own; `all`: everyone's (the admin).
    scope: &'static str,
    user_id: UserId,
    #[serde(flatten)]
    totals: Totals,
    /// The admin only: messages the bus gave up on (`null` where the bus cannot tell).
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_letters: Option<Option<u64>>,
    /// The admin only: each user's counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    users: Option<BTreeMap<UserId, Totals>>,
}

/// `GET /stats`.
pub async fn stats(State(state): State<AppState>, caller: Caller) -> Result<Json<Stats>, ApiError> {
    let store = state.ports.store.as_ref();
    let scope = caller.admin_scope();
    let mut users: BTreeMap<UserId, Totals> = BTreeMap::new();
    if caller.admin {
        // Users with nothing yet are listed too.
        for doc in store.query(&Scope::All, &Query::collection("users")).await? {
            if let Ok(id) = UserId::parse(doc.key.id()) {
                users.entry(id).or_default();
            }
        }
    }
    for doc in store.query(&scope, &Query::collection("deployments")).await? {
        match doc.parse::<Deployment>() {
            Ok(d) => users.entry(d.owner.clone()).or_default().add_deployment(&d),
            Err(e) => tracing::warn!(error = %e, "a deployment left out of the stats"),
        }
    }
    for (owner, events) in store.event_counts(&scope).await? {
        users.entry(owner).or_default().events += events;
    }
    let mut totals = Totals::default();
    users.values().for_each(|t| totals.add(t));
    let users: BTreeMap<UserId, Totals> = users.into_iter().map(|(id, t)| (id, t.rounded())).collect();
    let stats = if caller.admin {
        let dead_letters = state.ports.bus.dead_letter_count().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "dead letters could not be counted");
            None
        });
        Stats {
            scope: "all",
            user_id: caller.user_id,
            totals: totals.rounded(),
            dead_letters: Some(dead_letters),
            users: Some(users),
        }
    } else {
        Stats { scope: "user", user_id: caller.user_id, totals: totals.rounded(), dead_letters: None, users: None }
    };
    Ok(Json(stats))
}
