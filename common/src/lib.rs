//! DevGem's domain, shared by every function and adapter.
//!
//! Nothing here talks to a cloud, a database or another server: this crate says *what* DevGem
//! does (events, state machines, ports) and the adapters in `infra` say *how*.
//!
//! # Layout
//! - [`ids`]: validated newtypes parsed once at the edge (user, session, deployment ids, service
//!   and env var names).
//! - [`events`]: the event catalog of DESIGN.md as typed payloads, CloudEvent construction and
//!   the two foreign topics (Cloud Build notifications, LogEntry).
//! - [`envelope`]: decoding of push deliveries (Pub/Sub push JSON and Eventarc binary mode) into a
//!   typed [`envelope::PushEnvelope`].
//! - [`handler`]: the one place that decides ack, retry or reject for an event handler.
//! - [`model`]: users, sessions, deployments (state machine, monotonic progress), services.
//! - [`ports`]: the traits the adapters implement (Store, Bus, Blobs, Source, Builder, Runtime,
//!   Secrets, Brain) and [`ports::Ports`], the bundle every function's state starts from.
//! - [`ledger`]: side effects that must happen once, keyed in `processed/{key}`.
//! - [`identity`]: tokens, hashing, the bearer-auth middleware shared by the HTTP functions.
//! - [`function`]: the `/healthz` probe every function router has.
//! - [`serve`]: `serve(listener, router, shutdown)` with a bounded grace period.
//! - [`incidents`]: the monitor's incidents per revision and kind; resolving and muting them.
//! - [`sessions`]: who owns a conversation; the user's chat input entering it (relay and api).
//! - [`clock`]: time behind a trait so tests control it.
//! - [`dockerfile`]: Dockerfiles parsed into stages and instructions, for the analyzer and the
//!   local builder.

pub mod cancel;
pub mod clock;
pub mod deployments;
pub mod dockerfile;
pub mod envelope;
pub mod events;
pub mod function;
pub mod handler;
pub mod identity;
pub mod ids;
pub mod incidents;
pub mod ledger;
pub mod model;
pub mod ports;
pub mod serve;
pub mod sessions;
pub mod timeline;
