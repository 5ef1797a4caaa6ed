//! The GPT-2 tokenizer, exactly as the original's `distilgpt2` tokenizer
//! (Hugging Face `GPT2TokenizerFast`) encodes.
//!
//! tiktoken's `r50k_base` holds the same vocabulary and merges as GPT-2 and
//! splits text with the same regular expression. Hugging Face registers
//! `<|endoftext|>` as an added special token that is matched anywhere in the
//! raw text before BPE; tiktoken does the same when the special token is
//! allowed, so every encode here allows it.
//!
//! Each thread encodes with its own `CoreBPE` (built in ~30 ms on first use).
//! tiktoken's regex (fancy-regex over regex-automata) keeps its match caches
//! in pools shared by every clone of one `CoreBPE`; only the pool's first
//! thread gets the lock-free path, every other thread pays a mutex round trip
//! per pre-token (measured: a second thread on a shared instance ran 22-27%
//! slower than the owner even alone), so two threads on one instance were
//! slower than one thread. A per-thread instance makes every thread an owner.

use std::cell::OnceCell;
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;
use tiktoken_rs::CoreBPE;

use crate::error::DataError;

pub use pretrain_core::constants::{EOS_TOKEN_ID, VOCAB_SIZE};
/// The text of the end-of-text token.
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// A document contributes at most this many ids before its eos (the tokenizer's `model_max_length`).
pub const MAX_DOCUMENT_TOKENS: usize = 1024;

/// The GPT-2 BPE tokenizer. Cheap to clone; safe to share between threads.
#[derive(Clone)]
pub struct Tokenizer {
    bpe: Arc<CoreBPE>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokenizer(gpt2)")
    }
}

static SHARED: OnceLock<Result<Tokenizer, String>> = OnceLock::new();

thread_local! {
    /// This thread's encoder (see the module docs: regex caches are per thread).
    static LOCAL_BPE: OnceCell<Option<CoreBPE>> = const { OnceCell::new() };
}

impl Tokenizer {
    /// The GPT-2 tokenizer; its tables are built once per process.
    pub fn gpt2() -> Result<Self, DataError> {
        SHARED
            .get_or_init(|| {
                tiktoken_rs::r50k_base()
                    .map(|bpe| Tokenizer { bpe: Arc::new(bpe) })
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(DataError::Tokenizer)
    }

    /// Token ids of `text` (`tokenizer(text).input_ids`: no BOS, no truncation).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        let allowed: HashSet<&str> = HashSet::from([EOS_TOKEN]);
        let encode = |bpe: &CoreBPE| {
            bpe.encode(text, &allowed)
                .map(|(ids, _)| ids)
                .map_err(|e| DataError::Tokenizer(e.message))
        };
        LOCAL_BPE.with(|local| {
            // Same tables as `self.bpe` (both are `r50k_base`); if this
            // thread's copy cannot be built, the shared one still encodes.
            match local.get_or_init(|| tiktoken_rs::r50k_base().ok()) {
                Some(bpe) => encode(bpe),
                None => encode(&self.bpe),
            }
        })
    }

    /// What one document adds to the token buffer: its first 1024 ids, then eos.
    pub fn encode_document(&self, text: &str) -> Result<Vec<u32>, DataError> {
        let mut ids = self.encode(text)?;
        ids.truncate(MAX_DOCUMENT_TOKENS);
        ids.push(EOS_TOKEN_ID);
        Ok(ids)
    }

    /// The token buffer of a list of documents, in order, tokenized on all
    /// threads of the current rayon pool. Blocking: call it from
    /// `spawn_blocking`, not from async code.
    pub fn encode_documents<S: AsRef<str> + Sync>(
        &self,
        documents: &[S],
    ) -> Result<Vec<u32>, DataError> {
        let parts: Vec<Vec<u32>> = documents
            .par_iter()
            .map(|doc| self.encode_document(doc.as_ref()))
            .collect::<Result<_, _>>()?;
        let mut buffer = Vec::with_capacity(parts.iter().map(Vec::len).sum());
        for part in parts {
            buffer.extend_from_slice(&part);
        }
        Ok(buffer)
    }

    /// The text of `ids`; bytes that are not valid UTF-8 become U+FFFD, as
    /// Hugging Face's `decode` does.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= VOCAB_SIZE) {
            return Err(DataError::UnknownToken(bad));
        }
        let bytes = self
            .bpe
            .decode_bytes(ids)
            .map_err(|e| DataError::UnknownToken(e.token))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endoftext_is_special_anywhere() {
        let tok = Tokenizer::gpt2().unwrap();
        // Values from testdata/tokenizer/README (Hugging Face output).
        assert_eq!(tok.encode("<|endoftext|>").unwrap(), vec![50256]);
        assert_eq!(
            tok.encode("before<|endoftext|>after").unwrap(),
            vec![19052, 50256, 8499]
        );
        assert_eq!(
            tok.encode("one <|endoftext|> two").unwrap(),
            vec![505, 220, 50256, 734]
        );
        assert_eq!(
            tok.encode("<|endoftext|").unwrap(),
            vec![27, 91, 437, 1659, 5239, 91]
        );
    }

    #[test]
    fn document_rule_truncates_then_appends_eos() {
        let tok = Tokenizer::gpt2().unwrap();
        assert_eq!(tok.encode_document("").unwrap(), vec![EOS_TOKEN_ID]);
        let long = "word ".repeat(3000);
        let ids = tok.encode_document(&long).unwrap();
        assert_eq!(ids.len(), MAX_DOCUMENT_TOKENS + 1);
        assert_eq!(ids[..1024], tok.encode(&long).unwrap()[..1024]);
        assert_eq!(*ids.last().unwrap(), EOS_TOKEN_ID);
    }

    #[test]
    fn decode_rejects_ids_outside_the_vocabulary() {
        let tok = Tokenizer::gpt2().unwrap();
        assert!(matches!(
            tok.decode(&[50257]),
            Err(DataError::UnknownToken(50257))
        ));
        assert_eq!(
            tok.decode(&[19052, 50256, 8499]).unwrap(),
            "before<|endoftext|>after"
        );
    }

    #[test]
    fn per_thread_encoders_give_the_ids_of_one_thread() {
        let tok = Tokenizer::gpt2().unwrap();
        let docs: Vec<String> = (0..64)
            .map(|i| {
                format!(
                    "Document {i}: naïve café, 3.14 <|endoftext|> ünïcödé {}",
                    "word ".repeat(i)
                )
            })
            .collect();
        let one: Vec<u32> = docs
            .iter()
            .flat_map(|d| tok.encode_document(d).unwrap())
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let many = pool.install(|| tok.encode_documents(&docs)).unwrap();
        assert_eq!(many, one);
        // "Document" is one GPT-2 token (Hugging Face: 24941), and each
        // document ends with the eos id.
        assert_eq!(one[0], 24941);
        assert_eq!(one.iter().filter(|&&t| t == EOS_TOKEN_ID).count(), 2 * 64);
    }

    #[test]
    fn long_whitespace_runs_do_not_fail() {
        let tok = Tokenizer::gpt2().unwrap();
        let text = format!("a{}b{}", " ".repeat(200_000), "\n".repeat(100_000));
        let ids = tok.encode(&text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
}
