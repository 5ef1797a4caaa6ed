//! The miner (training loop, push) and the validator (update, eval and clean
//! loops, persisted state), written against the traits of the other crates
//! (`Chain`, `ModelHub`, `PageSource`), never against a concrete backend.

#![warn(missing_docs)]

pub mod errors;
pub mod localnet;
pub mod miner;
pub mod push;
pub mod retry;
pub mod validator;

pub use errors::error_chain;
pub use push::{make_public, publish, push_model, PushError, PushOptions, Pushed, StillPrivate};
pub use retry::{retry, GaveUp};
