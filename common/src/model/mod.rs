//! The documents of DESIGN.md (State) as types with their rules. Transitions that the rules
//! forbid are error values, never panics.

pub mod deployment;
pub mod service;
pub mod session;
pub mod user;
