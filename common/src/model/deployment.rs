//! `deployments/{id}`: one deploy attempt and its state machine.
//!
//! `requested -> analyzing -> building -> deploying -> verifying -> live`, and from any
//! non-terminal state `failed` (with a cause the user can act on) or `aborted`. Progress is
//! monotonic: a late, lower progress report (redelivered events arrive out of order) is ignored.

use crate::ids::{CorrelationId, DeploymentId, ServiceName, SessionId, UserId};
use crate::ports::source::SourceSpec;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// How many times a deployment's plan is repaired (a new port, a system package, another start
/// command) before a failure is final.
pub const MAX_REPAIRS: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    Requested,
    Analyzing,
    Building,
    Deploying,
    Verifying,
    Live,
    Failed,
    Aborted,
}

impl DeploymentState {
    pub const ALL: [DeploymentState; 8] = [
        Self::Requested,
        Self::Analyzing,
        Self::Building,
        Self::Deploying,
        Self::Verifying,
        Self::Live,
        Self::Failed,
        Self::Aborted,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Live | Self::Failed | Self::Aborted)
    }

    /// The state that follows on success, if any.
    pub fn next(self) -> Option<Self> {
        match self {
            Self::Requested => Some(Self::Analyzing),
            Self::Analyzing => Some(Self::Building),
            Self::Building => Some(Self::Deploying),
            Self::Deploying => Some(Self::Verifying),
            Self::Verifying => Some(Self::Live),
            Self::Live | Self::Failed | Self::Aborted => None,
        }
    }

    pub fn can_move_to(self, to: Self) -> bool {
        match to {
            Self::Failed | Self::Aborted => !self.is_terminal(),
            _ => self.next() == Some(to),
        }
    }

    /// Progress reached on entering the state.
    pub fn progress_floor(self) -> u8 {
        match self {
            Self::Requested => 0,
            Self::Analyzing => 5,
            Self::Building => 30,
            Self::Deploying => 75,
            Self::Verifying => 90,
            Self::Live => 100,
            Self::Failed | Self::Aborted => 0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Analyzing => "analyzing",
            Self::Building => "building",
            Self::Deploying => "deploying",
            Self::Verifying => "verifying",
            Self::Live => "live",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
        }
    }
}

/// The seven pipeline stages of DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    RepoAccess,
    Analysis,
    Dockerfile,
    EnvConfig,
    SecurityScan,
    Build,
    Deploy,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Self::RepoAccess,
        Self::Analysis,
        Self::Dockerfile,
        Self::EnvConfig,
        Self::SecurityScan,
        Self::Build,
        Self::Deploy,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Pending,
    Running,
    Done,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageProgress {
    pub stage: Stage,
    pub status: StageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Why a deployment failed, in categories a user can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCause {
    SourceUnavailable,
    AnalysisFailed,
    MissingEnv,
    SecurityBlocked,
    BuildFailed,
    StartFailed,
    VerifyFailed,
    Timeout,
    QuotaExceeded,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub cause: FailureCause,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// What happened and what to do, in plain words.
    pub message: String,
    /// The last lines of the failing build or start, when there are any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
}

/// What the analysis decided, stored with the deployment so a user can read it and the build
/// uses exactly it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentPlan {
    /// The directory of the service inside the repository (`.` at the root).
    pub app_dir: String,
    /// `repository` (its own Dockerfile) or the name of DevGem's template.
    pub origin: String,
    pub dockerfile: String,
    pub dockerignore: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_command: Option<String>,
    /// Other start commands the analysis found, tried in order when `start_command` fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_alternatives: Vec<String>,
    /// The port the container listens on: 8080 (`$PORT`), or one fixed in the app.
    pub port: u16,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One build of a deployment (each repair that needs a new image is one more), with its times:
/// what `/stats` counts as builds and build minutes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRun {
    pub id: String,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// How it ended (`SUCCESS`, `FAILURE`, `CANCELLED`, ...), once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("a deployment cannot go from {from} to {to}")]
    Illegal { from: &'static str, to: &'static str },
    #[error("progress must be 0-100, got {0}")]
    ProgressOutOfRange(u8),
    #[error("the deployment is {0}; it can no longer change")]
    Terminal(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: DeploymentId,
    pub owner: UserId,
    pub session_id: SessionId,
    pub correlation_id: CorrelationId,
    pub source: SourceSpec,
    pub service: ServiceName,
    pub state: DeploymentState,
    pub stages: Vec<StageProgress>,
    pub progress: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub abort_requested: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Env values the user gave, in plain text: only values that are not secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Env values that are secret, as references into the Secrets port.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, crate::ports::secrets::SecretRef>,
    /// The commit that was analyzed, so the build uses the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<DeploymentPlan>,
    /// The built image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// How many lines of the build's log went out as `build_log` events (so none goes twice).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub build_log_sent: u64,
    /// The user accepted high-severity security findings for this deployment.
    #[serde(default)]
    pub allow_risky: bool,
    /// Repairs made to the plan after a failed build or start (at most [`MAX_REPAIRS`]).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub repairs: u32,
    /// Every build this deployment ran, the replaced ones of repairs included, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub builds: Vec<BuildRun>,
    /// When the janitor last re-sent the stage's event because the deployment stopped moving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nudged_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a new deployment is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeployment {
    pub id: DeploymentId,
    pub owner: UserId,
    pub session_id: SessionId,
    pub correlation_id: CorrelationId,
    pub source: SourceSpec,
    pub service: ServiceName,
}

impl Deployment {
    pub fn new(new: NewDeployment, now: DateTime<Utc>) -> Self {
        let stages = Stage::ALL
            .iter()
            .map(|&stage| StageProgress {
                stage,
                status: StageStatus::Pending,
                started_at: None,
                finished_at: None,
                note: None,
            })
            .collect();
        Self {
            id: new.id,
            owner: new.owner,
            session_id: new.session_id,
            correlation_id: new.correlation_id,
            source: new.source,
            service: new.service,
            state: DeploymentState::Requested,
            stages,
            progress: 0,
            build_id: None,
            revision: None,
            url: None,
            abort_requested: false,
            failure: None,
            env: BTreeMap::new(),
            secret_env: BTreeMap::new(),
            commit: None,
            plan: None,
            image: None,
            build_log_sent: 0,
            allow_risky: false,
            repairs: 0,
            builds: Vec::new(),
            nudged_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn check(&self, to: DeploymentState) -> Result<(), TransitionError> {
        if self.state.is_terminal() {
            return Err(TransitionError::Terminal(self.state.as_str()));
        }
        if !self.state.can_move_to(to) {
            return Err(TransitionError::Illegal { from: self.state.as_str(), to: to.as_str() });
        }
        Ok(())
    }

    /// Moves forward one state (the success path).
    pub fn advance(&mut self, to: DeploymentState, now: DateTime<Utc>) -> Result<(), TransitionError> {
        if matches!(to, DeploymentState::Failed | DeploymentState::Aborted) {
            return Err(TransitionError::Illegal { from: self.state.as_str(), to: to.as_str() });
        }
        self.check(to)?;
        self.state = to;
        self.progress = self.progress.max(to.progress_floor());
        self.updated_at = now;
        Ok(())
    }

    /// Ends the deployment as failed; the running stage is marked failed.
    pub fn fail(&mut self, failure: Failure, now: DateTime<Utc>) -> Result<(), TransitionError> {
        self.check(DeploymentState::Failed)?;
        if let Some(stage) = failure.stage {
            self.set_stage(stage, StageStatus::Failed, None, now);
        }
        self.state = DeploymentState::Failed;
        self.failure = Some(failure);
        self.updated_at = now;
        Ok(())
    }

    /// Ends the deployment as aborted.
    pub fn abort(&mut self, now: DateTime<Utc>) -> Result<(), TransitionError> {
        self.check(DeploymentState::Aborted)?;
        for stage in &mut self.stages {
            if stage.status == StageStatus::Running {
                stage.status = StageStatus::Failed;
                stage.finished_at = Some(now);
                stage.note = Some("aborted".to_owned());
            }
        }
        self.state = DeploymentState::Aborted;
        self.abort_requested = true;
        self.updated_at = now;
        Ok(())
    }

    /// Counts one more repair of the plan; `false` when the deployment has had its
    /// [`MAX_REPAIRS`] and must fail instead.
    pub fn take_repair(&mut self) -> bool {
        if self.repairs >= MAX_REPAIRS {
            return false;
        }
        self.repairs += 1;
        true
    }

    /// Goes back to the build stage with a repaired plan (a failed build or start that a new
    /// image can fix): the previous build's results are dropped, progress never goes down.
    pub fn rebuild(&mut self, plan: DeploymentPlan, now: DateTime<Utc>) -> Result<(), TransitionError> {
        if self.state.is_terminal() {
            return Err(TransitionError::Terminal(self.state.as_str()));
        }
        if !matches!(self.state, DeploymentState::Building | DeploymentState::Deploying | DeploymentState::Verifying) {
            return Err(TransitionError::Illegal { from: self.state.as_str(), to: DeploymentState::Building.as_str() });
        }
        self.plan = Some(plan);
        self.state = DeploymentState::Building;
        self.build_id = None;
        self.image = None;
        self.revision = None;
        self.build_log_sent = 0;
        self.set_stage(Stage::Deploy, StageStatus::Pending, None, now);
        self.set_stage(Stage::Build, StageStatus::Running, None, now);
        Ok(())
    }

    /// Raises progress. Returns whether it changed: a lower value is ignored (monotonic), 100 is
    /// reserved for `live`, and a terminal deployment no longer moves.
    pub fn raise_progress(&mut self, percent: u8, now: DateTime<Utc>) -> Result<bool, TransitionError> {
        if percent > 100 {
            return Err(TransitionError::ProgressOutOfRange(percent));
        }
        if self.state.is_terminal() {
            return Ok(false);
        }
        let capped = percent.min(99);
        if capped <= self.progress {
            return Ok(false);
        }
        self.progress = capped;
        self.updated_at = now;
        Ok(true)
    }

    /// Records a stage's status; starting and finishing times are kept.
    pub fn set_stage(&mut self, stage: Stage, status: StageStatus, note: Option<String>, now: DateTime<Utc>) {
        if let Some(entry) = self.stages.iter_mut().find(|s| s.stage == stage) {
            if status == StageStatus::Running && entry.started_at.is_none() {
                entry.started_at = Some(now);
            }
            if matches!(status, StageStatus::Done | StageStatus::Failed | StageStatus::Skipped) {
                entry.finished_at = Some(now);
            }
            entry.status = status;
            if note.is_some() {
                entry.note = note;
            }
        }
        self.updated_at = now;
    }

    pub fn stage(&self, stage: Stage) -> Option<&StageProgress> {
        self.stages.iter().find(|s| s.stage == stage)
    }

    /// Records that build `id` started at `at`; a build already recorded keeps its start.
    pub fn build_started(&mut self, id: &str, at: DateTime<Utc>) {
        if !self.builds.iter().any(|b| b.id == id) {
            self.builds.push(BuildRun { id: id.to_owned(), started_at: at, finished_at: None, status: None });
        }
    }

    /// Records that build `id` ended at `at` with `status` (started at `started` if its start
    /// was not recorded); the first report of its end is kept.
    pub fn build_finished(&mut self, id: &str, started: DateTime<Utc>, at: DateTime<Utc>, status: &str) {
        self.build_started(id, started);
        if let Some(run) = self.builds.iter_mut().find(|b| b.id == id)
            && run.finished_at.is_none()
        {
            run.finished_at = Some(at.max(run.started_at));
            run.status = Some(status.to_owned());
        }
    }

    /// How many builds ran. A document written before builds were recorded counts its one
    /// build id.
    pub fn build_count(&self) -> u64 {
        match self.builds.len() {
            0 => u64::from(self.build_id.is_some()),
            n => n as u64,
        }
    }

    /// The time finished builds took, in seconds (running ones are not counted yet). A document
    /// written before builds were recorded counts its build stage's span.
    pub fn build_seconds(&self) -> f64 {
        let span = |from: DateTime<Utc>, to: DateTime<Utc>| (to - from).num_milliseconds().max(0) as f64 / 1000.0;
        if self.builds.is_empty() {
            return match self.stage(Stage::Build) {
                Some(StageProgress { started_at: Some(from), finished_at: Some(to), .. }) => span(*from, *to),
                _ => 0.0,
            };
        }
        self.builds.iter().filter_map(|b| b.finished_at.map(|to| span(b.started_at, to))).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::source::SourceLocation;

    fn deployment() -> Deployment {
        Deployment::new(
            NewDeployment {
                id: DeploymentId::generate(),
                owner: UserId::admin(),
                session_id: SessionId::generate(),
                correlation_id: CorrelationId::generate(),
                source: SourceSpec {
                    location: SourceLocation::Git { url: "https://github.com/o/a".into() },
                    git_ref: None,
                },
                service: ServiceName::derive_from("a"),
            },
            Utc::now(),
        )
    }

    #[test]
    fn success_path_reaches_live_with_full_progress() {
        let mut d = deployment();
        let now = Utc::now();
        for to in [
            DeploymentState::Analyzing,
            DeploymentState::Building,
            DeploymentState::Deploying,
            DeploymentState::Verifying,
            DeploymentState::Live,
        ] {
            d.advance(to, now).expect("legal step");
            assert_eq!(d.progress, to.progress_floor());
        }
        assert_eq!(d.state, DeploymentState::Live);
        assert_eq!(d.progress, 100);
    }

    #[test]
    fn illegal_transitions_are_errors_not_panics() {
        let mut d = deployment();
        let now = Utc::now();
        let err = d.advance(DeploymentState::Live, now).expect_err("cannot skip");
        assert_eq!(err, TransitionError::Illegal { from: "requested", to: "live" });
        assert!(d.advance(DeploymentState::Failed, now).is_err(), "failing goes through fail()");
        d.abort(now).expect("abort from requested");
        assert_eq!(d.advance(DeploymentState::Analyzing, now), Err(TransitionError::Terminal("aborted")));
        assert!(d.abort(now).is_err(), "a second abort is refused");
        let fail = Failure { cause: FailureCause::Internal, stage: None, message: "x".into(), log_tail: Vec::new() };
        assert!(d.fail(fail, now).is_err());
    }

    #[test]
    fn every_pair_of_states_follows_the_table() {
        for from in DeploymentState::ALL {
            for to in DeploymentState::ALL {
                let expected = match to {
                    DeploymentState::Failed | DeploymentState::Aborted => !from.is_terminal(),
                    _ => from.next() == Some(to),
                };
                assert_eq!(from.can_move_to(to), expected, "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn progress_is_monotonic_and_bounded() {
        let mut d = deployment();
        let now = Utc::now();
        d.advance(DeploymentState::Analyzing, now).expect("legal");
        assert_eq!(d.raise_progress(20, now), Ok(true));
        assert_eq!(d.raise_progress(10, now), Ok(false), "late lower report ignored");
        assert_eq!(d.progress, 20);
        assert_eq!(d.raise_progress(100, now), Ok(true));
        assert_eq!(d.progress, 99, "100 is reserved for live");
        assert_eq!(d.raise_progress(101, now), Err(TransitionError::ProgressOutOfRange(101)));
        d.advance(DeploymentState::Building, now).expect("legal");
        assert_eq!(d.progress, 99, "entering a state never lowers progress");
    }

    #[test]
    fn builds_are_recorded_once_each_with_their_times() {
        let mut d = deployment();
        let t0 = Utc::now();
        let later = |s: i64| t0 + chrono::Duration::seconds(s);
        assert_eq!((d.build_count(), d.build_seconds()), (0, 0.0));
        d.build_started("b1", t0);
        d.build_started("b1", later(5));
        assert_eq!(d.builds.len(), 1, "a redelivered start is not a second build");
        assert_eq!(d.build_seconds(), 0.0, "a running build has no duration yet");
        d.build_finished("b1", later(99), later(90), "FAILURE");
        d.build_finished("b1", later(99), later(200), "FAILURE");
        // A repair's rebuild; its start was not seen, only its end.
        d.build_finished("b2", later(100), later(130), "SUCCESS");
        assert_eq!(d.build_count(), 2);
        assert_eq!(d.build_seconds(), 120.0, "90 s + 30 s, the first report of an end kept");
        assert_eq!(d.builds[0].status.as_deref(), Some("FAILURE"));

        // A document from before builds were recorded: its build id and build stage count.
        let mut json = serde_json::to_value(deployment()).expect("serializes");
        json["build_id"] = serde_json::json!("old");
        json["stages"][5]["started_at"] = serde_json::json!(t0);
        json["stages"][5]["finished_at"] = serde_json::json!(later(60));
        let old: Deployment = serde_json::from_value(json).expect("an old document still parses");
        assert_eq!((old.build_count(), old.build_seconds()), (1, 60.0));
    }

    #[test]
    fn failing_marks_the_stage_and_keeps_the_cause() {
        let mut d = deployment();
        let now = Utc::now();
        d.advance(DeploymentState::Analyzing, now).expect("legal");
        d.set_stage(Stage::Analysis, StageStatus::Running, None, now);
        let failure = Failure {
            cause: FailureCause::AnalysisFailed,
            stage: Some(Stage::Analysis),
            message: "no app found".into(),
            log_tail: Vec::new(),
        };
        d.fail(failure.clone(), now).expect("legal");
        assert_eq!(d.stage(Stage::Analysis).map(|s| s.status), Some(StageStatus::Failed));
        assert_eq!(d.failure, Some(failure));
        let json = serde_json::to_value(&d).expect("serializes");
        let back: Deployment = serde_json::from_value(json).expect("round-trips");
        assert_eq!(back, d);
    }
}
