//! Quick throughput check of the tokenizer on the sample corpus.
fn main() -> anyhow::Result<()> {
    let source = pretrain_data::LocalSource::open(pretrain_data::sample_corpus_dir())?;
    let docs = pretrain_data::read_all_documents(&source)?;
    let tok = pretrain_data::Tokenizer::gpt2()?;
    for threads in [1, 2] {
        let r = pretrain_data::bench_tokenize(&tok, &docs, threads, 2)?;
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}
