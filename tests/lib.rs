//! Shared helpers live in `e2e/`; this library is empty so the crate has one test binary.
