//! The local builder: executes a Dockerfile on this machine, with host toolchains standing in for
//! base images, so the Dockerfile is the single source of truth on the embedded default as it is
//! on Cloud Build (DESIGN.md, Ports).
//!
//! ```text
//! <data dir>/builder/layers/<key>/    one directory per cached step (overlay layers)
//! <data dir>/builder/builds/<id>/     staged COPY sources, image.json, log.jsonl
//! <data dir>/builder/cache/           pip, npm, Go and Cargo download caches
//! <data dir>/builder/scratch/         mount points and overlay work dirs of running steps
//! ```

mod apt;
mod context;
mod executor;
mod image;
mod port;
mod sandbox;
mod toolchain;

pub use executor::{
    BuildError, BuildJob, BuildOutcome, Cancel, CancelHandle, Executor, ExecutorConfig, LogLine, LogSink, cancel_pair,
};
pub use image::LocalImage;
pub use port::{LOG_FILE, LocalBuilder, executor_for, image_name};
pub use sandbox::{Sandbox, SandboxError, Scratch, kill_group};

#[cfg(test)]
mod tests;
