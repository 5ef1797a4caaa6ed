//! The miner (training loop, push) and the validator (update, eval and clean
//! loops, persisted state), written against the traits of the other crates,
//! never against a concrete backend.
