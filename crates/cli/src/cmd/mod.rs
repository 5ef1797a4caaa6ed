//! One module per command (or command group) of `pretrain`.

pub mod args;
pub mod bench;
pub mod chain;
pub mod chain_cr;
pub mod competition;
pub mod data;
pub mod hash;
pub mod localnet;
pub mod mine;
pub mod model;
pub mod out;
pub mod report;
pub mod rules;
pub mod score;
pub mod timelock;
pub mod upload;
pub mod validate;
pub mod wallet;
