//! The `local:DIR` backend on Parquet and JSONL files written here.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use pretrain_data::{
    load_tokens, open_source, sample_corpus_dir, sample_pages, write_refinedweb_parquet, DataError,
    LocalSource, PageSource, RefinedWebRow, Tokenizer,
};

fn doc(i: usize) -> String {
    format!("Document number {i}: the quick brown fox, row {i}.")
}

fn rows(range: std::ops::Range<usize>) -> Vec<RefinedWebRow> {
    range
        .map(|i| RefinedWebRow {
            content: doc(i),
            url: format!("https://example.org/{i}"),
            timestamp: 1_675_000_000 + i as i64,
            dump: "CC-MAIN-2023-06".into(),
            segment: "1".into(),
        })
        .collect()
}

fn write_jsonl(path: &Path, range: std::ops::Range<usize>) {
    let mut text = String::new();
    for i in range {
        text.push_str(&serde_json::json!({"content": doc(i), "url": "x"}).to_string());
        // Blank lines are not rows.
        text.push_str(if i % 7 == 0 { "\n\n" } else { "\n" });
    }
    std::fs::write(path, text).unwrap();
}

/// 0..150 in a.parquet (row groups of 40), 150..260 in b.jsonl, 260..300 in
/// sub/c.parquet; files are taken in sorted path order.
fn mixed_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_refinedweb_parquet(&dir.path().join("a.parquet"), &rows(0..150), 40).unwrap();
    write_jsonl(&dir.path().join("b.jsonl"), 150..260);
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    write_refinedweb_parquet(&dir.path().join("sub/c.parquet"), &rows(260..300), 1000).unwrap();
    std::fs::write(dir.path().join("README.md"), "not data").unwrap();
    dir
}

#[tokio::test]
async fn pages_are_100_rows_across_files_in_sorted_order() {
    let dir = mixed_dir();
    let source = LocalSource::open(dir.path()).unwrap();
    assert_eq!(source.num_rows(), 300);
    assert_eq!(source.page_range(), 0..=200);
    for page in [0u64, 35, 100, 140, 149, 150, 200, 255] {
        let docs = source.fetch_page(page).await.unwrap();
        let expected: Vec<String> = (page as usize..(page as usize + 100).min(300))
            .map(doc)
            .collect();
        assert_eq!(docs, expected, "page {page}");
    }
    // Near the end a page is short, as with the rows API.
    assert_eq!(source.fetch_page(299).await.unwrap(), vec![doc(299)]);
    assert!(matches!(
        source.fetch_page(300).await,
        Err(DataError::PageOutOfRange {
            page: 300,
            rows: 300
        })
    ));
}

#[tokio::test]
async fn open_source_understands_local_and_seeds_repeat_pages() {
    let dir = mixed_dir();
    let spec = format!("local:{}", dir.path().display());
    let source = open_source(&spec).unwrap();
    assert_eq!(source.name(), spec);
    let pages = sample_pages(1234, source.page_range(), 5);
    assert_eq!(pages, sample_pages(1234, source.page_range(), 5));
    assert!(pages.iter().all(|p| *p <= 200));
    let tokenizer = Tokenizer::gpt2().unwrap();
    let a = load_tokens(source.as_ref(), &tokenizer, &pages)
        .await
        .unwrap();
    let again = open_source(&spec).unwrap();
    let b = load_tokens(again.as_ref(), &tokenizer, &pages)
        .await
        .unwrap();
    assert_eq!(a, b);
    // The buffer is each document's ids plus eos, page after page.
    let mut expected = Vec::new();
    for &p in &pages {
        let docs: Vec<String> = (p as usize..p as usize + 100).map(doc).collect();
        expected.extend(tokenizer.encode_documents(&docs).unwrap());
    }
    assert_eq!(a, expected);
}

#[test]
fn bad_directories_and_files_are_clear_errors() {
    let empty = tempfile::tempdir().unwrap();
    let err = LocalSource::open(empty.path()).unwrap_err().to_string();
    assert!(err.contains("no *.parquet or *.jsonl"), "{err}");

    let err = LocalSource::open("/nonexistent/dir/for/test").unwrap_err();
    // The I/O error is kept whole: a caller can tell "missing" from "unreadable".
    assert!(
        matches!(&err, DataError::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(err.contains("/nonexistent/dir/for/test"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.parquet"), b"not parquet at all").unwrap();
    let err = LocalSource::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("x.parquet") && err.contains("Parquet"),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_jsonl_rows_are_errors_naming_the_row() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("d.jsonl"),
        "{\"content\": \"fine\"}\n{\"text\": \"no content\"}\nnot json\n",
    )
    .unwrap();
    let source = LocalSource::open(dir.path()).unwrap();
    assert_eq!(source.num_rows(), 3);
    let err = source.fetch_page(0).await.unwrap_err().to_string();
    assert!(err.contains("d.jsonl") && err.contains("row 1"), "{err}");
}

#[test]
fn the_sample_corpus_is_real_prose_in_the_refinedweb_schema() {
    let dir = sample_corpus_dir();
    let bytes: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!((2_000_000..=8_000_000).contains(&bytes), "{bytes} bytes");
    let source = LocalSource::open(&dir).unwrap();
    assert!(source.num_rows() > 1000, "{} rows", source.num_rows());
    let page = source.read_page(0).unwrap();
    assert_eq!(page.len(), 100);
    let text = page.concat();
    assert!(text.contains(" the "), "not English prose?");
}
