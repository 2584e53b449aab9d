//! Port traits: what the functions need from the world. Adapters live in `infra`; functions
//! hold them as `Arc<dyn Port>` and never know which one they have.

pub mod blobs;
pub mod brain;
pub mod builder;
pub mod bus;
pub mod runtime;
pub mod secrets;
pub mod source;
pub mod store;

use crate::clock::Clock;
use std::sync::Arc;

/// The adapters every function's state starts from, built once by `devgem serve` or
/// `devgem up`. Functions that need more (builder, runtime, brain, ...) add them to their own
/// state.
#[derive(Debug, Clone)]
pub struct Ports {
    pub store: Arc<dyn store::Store>,
    pub bus: Arc<dyn bus::Bus>,
    pub blobs: Arc<dyn blobs::Blobs>,
    pub clock: Arc<dyn Clock>,
}
