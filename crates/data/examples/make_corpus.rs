//! Builds the sample corpus (`corpus/*.parquet`) from texts that Debian
//! packages ship. Run through `scripts/make_corpus.sh`, which downloads and
//! unpacks the packages; usage: `make_corpus ROOT OUT.parquet`, where
//! ROOT/<package>/ holds each unpacked package (dictd files already
//! un-gzipped to `*.dict`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use pretrain_data::{write_refinedweb_parquet, RefinedWebRow};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Documents are grouped from entries until they reach this many bytes,
/// about the size of a RefinedWeb web page.
const MIN_DOC_BYTES: usize = 2000;

struct Source {
    package: &'static str,
    version: &'static str,
    kind: Kind,
}

enum Kind {
    /// A dictd database: `NAME.index` + `NAME.dict` under usr/share/dictd.
    Dict(&'static str),
    /// The `%`-separated fortune files under usr/share/games/fortunes.
    Fortunes,
}

const SOURCES: &[Source] = &[
    Source {
        package: "dict-jargon",
        version: "4.4.7-3.1",
        kind: Kind::Dict("jargon"),
    },
    Source {
        package: "dict-devil",
        version: "1.0-13.1",
        kind: Kind::Dict("devil"),
    },
    Source {
        package: "fortunes",
        version: "1:1.99.1-7.3",
        kind: Kind::Fortunes,
    },
    Source {
        package: "fortunes-min",
        version: "1:1.99.1-7.3",
        kind: Kind::Fortunes,
    },
];

/// Fortune files that are pictures, not prose.
const SKIP_FORTUNES: &[&str] = &["art", "ascii-art"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        bail!("usage: make_corpus ROOT OUT.parquet");
    }
    let root = PathBuf::from(&args[1]);
    let out = PathBuf::from(&args[2]);
    let mut rows = Vec::new();
    for source in SOURCES {
        let unpacked = root.join(source.package);
        let entries = match source.kind {
            Kind::Dict(name) => dict_entries(&unpacked.join("usr/share/dictd"), name)?,
            Kind::Fortunes => fortune_entries(&unpacked.join("usr/share/games/fortunes"))?,
        };
        let before = rows.len();
        for (file, timestamp, group) in group_entries(entries) {
            rows.push(RefinedWebRow {
                url: format!("deb:{}/{}#{}", source.package, file, rows.len() - before),
                content: group,
                timestamp,
                dump: "debian-bookworm".to_string(),
                segment: format!("{}_{}", source.package, source.version),
            });
        }
        eprintln!("{}: {} documents", source.package, rows.len() - before);
    }
    // Mix the sources so that every page holds a bit of each.
    rows.shuffle(&mut rand_chacha::ChaCha20Rng::seed_from_u64(9));
    let bytes: usize = rows.iter().map(|r| r.content.len()).sum();
    write_refinedweb_parquet(&out, &rows, 1000).context("writing the corpus")?;
    eprintln!(
        "{}: {} documents, {} bytes of text",
        out.display(),
        rows.len(),
        bytes
    );
    Ok(())
}

/// (file name, its mtime in seconds, entry text) in file order.
type Entry = (String, i64, String);

fn mtime(path: &Path) -> Result<i64> {
    let modified = std::fs::metadata(path)?.modified()?;
    Ok(modified
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0))
}

/// dictd's index numbers: base64 digits, most significant first.
fn dict_number(text: &str) -> Result<usize> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    text.bytes().try_fold(0usize, |n, c| {
        let digit = ALPHABET
            .iter()
            .position(|&a| a == c)
            .with_context(|| format!("bad index number {text:?}"))?;
        Ok(n * 64 + digit)
    })
}

fn dict_entries(dir: &Path, name: &str) -> Result<Vec<Entry>> {
    let dict_path = dir.join(format!("{name}.dict"));
    let dict = std::fs::read(&dict_path).with_context(|| dict_path.display().to_string())?;
    let index_path = dir.join(format!("{name}.index"));
    let index =
        std::fs::read_to_string(&index_path).with_context(|| index_path.display().to_string())?;
    let stamp = mtime(&dir.join(format!("{name}.index")))?;
    let mut spans = Vec::new();
    for line in index.lines() {
        let parts: Vec<&str> = line.split('\t').collect();
        if parts.len() < 3 || parts[0].starts_with("00-database") {
            continue;
        }
        spans.push((dict_number(parts[1])?, dict_number(parts[2])?));
    }
    // The index is sorted by headword; the text reads better in file order,
    // and several headwords may share one definition.
    spans.sort();
    spans.dedup();
    let mut out = Vec::new();
    for (start, len) in spans {
        let bytes = dict
            .get(start..start + len)
            .with_context(|| format!("{name}: entry out of range"))?;
        let text = String::from_utf8(bytes.to_vec()).context("entry is not UTF-8")?;
        out.push((format!("{name}.dict"), stamp, text.trim_end().to_string()));
    }
    Ok(out)
}

fn fortune_entries(dir: &Path) -> Result<Vec<Entry>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let meta = std::fs::symlink_metadata(&path)?;
        if !meta.is_file() || name.contains('.') || SKIP_FORTUNES.contains(&name.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&path).with_context(|| name.clone())?;
        let stamp = mtime(&path)?;
        for fortune in text.split("\n%\n") {
            let cleaned = strip_overstrike(fortune.trim_matches(|c| c == '%' || c == '\n'));
            if !cleaned.trim().is_empty() {
                out.push((name.clone(), stamp, cleaned));
            }
        }
    }
    Ok(out)
}

/// Removes terminal overstriking (`_\bx`, `x\bx`): keeps the last character.
fn strip_overstrike(text: &str) -> String {
    let mut out: Vec<char> = Vec::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}

/// Joins consecutive entries of one file into documents of at least
/// `MIN_DOC_BYTES`: (file, timestamp, document).
fn group_entries(entries: Vec<Entry>) -> Vec<(String, i64, String)> {
    let mut out: Vec<(String, i64, String)> = Vec::new();
    let mut current: Option<(String, i64, String)> = None;
    for (file, stamp, text) in entries {
        match current.as_mut() {
            Some((f, _, doc)) if *f == file && doc.len() < MIN_DOC_BYTES => {
                doc.push_str("\n\n");
                doc.push_str(&text);
            }
            _ => {
                if let Some(done) = current.take() {
                    out.push(done);
                }
                current = Some((file, stamp, text));
            }
        }
    }
    out.extend(current);
    out
}
