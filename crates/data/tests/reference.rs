//! The tokenizer and batching against the golden vectors made with the
//! original (Hugging Face `GPT2TokenizerFast`, `SubsetFalconLoader`).

#![allow(clippy::unwrap_used)]

use pretrain_data::{
    make_batches, remainder_len, FalconConfig, FalconSource, Tokenizer, EOS_TOKEN_ID,
};
use serde::Deserialize;

const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata");

#[derive(Deserialize)]
struct TokenizerCase {
    name: String,
    text: String,
    ids: Vec<u32>,
    ids_trunc_eos: Vec<u32>,
    decoded: String,
}

fn tokenizer_cases() -> Vec<TokenizerCase> {
    let text = std::fs::read_to_string(format!("{REFERENCE}/tokenizer/cases.jsonl")).unwrap();
    let cases: Vec<TokenizerCase> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(cases.len(), 60);
    cases
}

#[test]
fn every_tokenizer_case_encodes_exactly() {
    let tok = Tokenizer::gpt2().unwrap();
    let mut failures = Vec::new();
    for case in tokenizer_cases() {
        let ids = tok.encode(&case.text).unwrap();
        if ids != case.ids {
            failures.push(format!("{}: encode {:?} != {:?}", case.name, ids, case.ids));
        }
        let doc = tok.encode_document(&case.text).unwrap();
        if doc != case.ids_trunc_eos {
            failures.push(format!("{}: encode_document differs", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_tokenizer_case_decodes_back() {
    let tok = Tokenizer::gpt2().unwrap();
    for case in tokenizer_cases() {
        assert_eq!(
            tok.decode(&case.ids).unwrap(),
            case.decoded,
            "{}",
            case.name
        );
    }
}

#[test]
fn long_cases_are_covered() {
    // The reference has documents longer than the 1024-id limit; make sure
    // the truncation path is exercised by the cases above.
    let long = tokenizer_cases()
        .into_iter()
        .filter(|c| c.ids.len() > 1024)
        .count();
    assert!(long >= 3);
}

#[derive(Deserialize)]
struct BatchingCase {
    name: String,
    pages: Vec<Vec<String>>,
    page_numbers: Vec<u64>,
    request_urls: Vec<String>,
    buffer: Vec<u32>,
    results: Vec<BatchingResult>,
}

#[derive(Deserialize)]
struct BatchingResult {
    batch_size: usize,
    sequence_length: usize,
    num_batches: usize,
    batches: Vec<Vec<Vec<u32>>>,
    remainder_len: usize,
}

fn batching_cases() -> Vec<BatchingCase> {
    let text = std::fs::read_to_string(format!("{REFERENCE}/batching/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn buffers_and_batches_equal_the_reference() {
    let tok = Tokenizer::gpt2().unwrap();
    let cases = batching_cases();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let mut buffer = Vec::new();
        for page in &case.pages {
            buffer.extend(tok.encode_documents(page).unwrap());
        }
        assert_eq!(buffer, case.buffer, "{}: buffer", case.name);
        for r in &case.results {
            let batches = make_batches(&buffer, r.batch_size, r.sequence_length).unwrap();
            let what = format!("{} ({}, {})", case.name, r.batch_size, r.sequence_length);
            assert_eq!(batches.len(), r.num_batches, "{what}");
            assert_eq!(batches, r.batches, "{what}");
            assert_eq!(
                remainder_len(buffer.len(), r.batch_size, r.sequence_length).unwrap(),
                r.remainder_len,
                "{what}"
            );
        }
    }
}

#[test]
fn empty_documents_contribute_one_eos() {
    let tok = Tokenizer::gpt2().unwrap();
    let case = batching_cases()
        .into_iter()
        .find(|c| c.name == "only_empty_docs")
        .unwrap();
    assert!(case.buffer.iter().all(|&id| id == EOS_TOKEN_ID));
    let docs: Vec<String> = case.pages.concat();
    assert_eq!(tok.encode_documents(&docs).unwrap(), case.buffer);
}

#[test]
fn request_urls_equal_the_original() {
    let source = FalconSource::new(FalconConfig::default()).unwrap();
    for case in batching_cases() {
        for (page, url) in case.page_numbers.iter().zip(&case.request_urls) {
            assert_eq!(
                source.page_url(*page).unwrap().as_str(),
                url,
                "{}",
                case.name
            );
        }
    }
}
