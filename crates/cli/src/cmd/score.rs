//! `pretrain score FILE` (filled in with the scoring module).
