//! The functions by name: each is a library with `router(state)`; this is where their state is
//! built from the adapters.

use crate::embedded::Embedded;
use axum::Router;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Function {
    Chat,
    Analyze,
    Build,
    Deploy,
    Monitor,
    Relay,
    Api,
    Janitor,
}

impl Function {
    pub const ALL: [Function; 8] = [
        Function::Chat,
        Function::Analyze,
        Function::Build,
        Function::Deploy,
        Function::Monitor,
        Function::Relay,
        Function::Api,
        Function::Janitor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Function::Chat => devgem_chat::NAME,
            Function::Analyze => devgem_analyze::NAME,
            Function::Build => devgem_build::NAME,
            Function::Deploy => devgem_deploy::NAME,
            Function::Monitor => devgem_monitor::NAME,
            Function::Relay => devgem_relay::NAME,
            Function::Api => devgem_api::NAME,
            Function::Janitor => devgem_janitor::NAME,
        }
    }

    /// The control-plane ports the function calls (what `devgem serve` sets up clients for).
    pub fn control_ports(self) -> crate::embedded::ControlPorts {
        let (builder, runtime, secrets) = match self {
            Function::Build => (true, false, false),
            Function::Deploy => (false, true, false),
            // Logs, live env, rollback; secrets of env changes (and the chat's LLM key).
            Function::Chat | Function::Api => (false, true, true),
            // Removing old builds and revisions.
            Function::Janitor => (true, true, false),
            Function::Analyze | Function::Monitor | Function::Relay => (false, false, false),
        };
        crate::embedded::ControlPorts { builder, runtime, secrets }
    }

    /// The function's router on the given adapters.
    pub fn router(self, embedded: &Embedded) -> Router {
        let ports = embedded.ports.clone();
        match self {
            Function::Chat => devgem_chat::router(devgem_chat::AppState {
                ports,
                secrets: embedded.secrets_port.clone(),
                runtime: embedded.runtime_port.clone(),
                source: embedded.source.clone(),
                source_limits: Default::default(),
                work_dir: embedded.work_dir.clone(),
                brain: embedded.brain.clone(),
            }),
            Function::Analyze => devgem_analyze::router(devgem_analyze::AppState {
                ports,
                source: embedded.source.clone(),
                source_limits: Default::default(),
                work_dir: embedded.work_dir.clone(),
                cancels: Default::default(),
            }),
            Function::Build => {
                devgem_build::router(devgem_build::AppState { ports, builder: embedded.builder_port.clone() })
            }
            Function::Deploy => {
                let runtime = embedded.runtime_port.clone();
                devgem_deploy::router(devgem_deploy::AppState { ports, runtime, cancels: Default::default() })
            }
            Function::Monitor => devgem_monitor::router(devgem_monitor::AppState::new(ports, embedded.monitor.clone())),
            Function::Relay => devgem_relay::router(
                devgem_relay::AppState::new(ports, embedded.identity.clone(), devgem_relay::RelaySettings::default())
                    .with_api_url(embedded.api_url.clone()),
            ),
            Function::Api => devgem_api::router(devgem_api::AppState {
                ports,
                identity: embedded.identity.clone(),
                secrets: embedded.secrets_port.clone(),
                runtime: embedded.runtime_port.clone(),
                chat_wait: devgem_api::CHAT_WAIT,
            }),
            Function::Janitor => devgem_janitor::router(janitor_state(embedded)),
        }
    }
}

/// The janitor's state on the embedded adapters: deadlines from the environment, three
/// revisions kept per service besides the serving one and the rollback target.
pub fn janitor_state(embedded: &Embedded) -> devgem_janitor::AppState {
    devgem_janitor::AppState {
        ports: embedded.ports.clone(),
        runtime: embedded.runtime_port.clone(),
        builder: embedded.builder_port.clone(),
        deadlines: devgem_janitor::Deadlines::from_env(),
        keep_revisions: 3,
    }
}
