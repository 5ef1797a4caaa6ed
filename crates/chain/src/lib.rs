//! The chain: bittensor wallets, the `Chain` trait the miner and
//! validator use (metagraph, commitments, weights, blocks), and its backends
//! `subtensor` (a real node over websocket) and `embedded` (a file-backed
//! chain for one machine).
