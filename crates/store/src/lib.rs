//! Model hubs and the validator's on-disk model store: the `ModelHub` trait,
//! its backends `hf` (Hugging Face) and `local` (a file-backed hub), safe
//! downloads with size and hash checks, cleanup, and the miner's push.
