//! A local directory of RefinedWeb-shaped files: Parquet with a `content`
//! column (RefinedWeb's own shards) or JSON Lines with a `content` field.
//! Rows are numbered across all files in sorted path order, so a page is
//! the 100 rows at a row offset exactly like the rows API.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;
use serde::Deserialize;

use super::{PageSource, ROWS_PER_PAGE};
use crate::error::DataError;

/// Pages from Parquet/JSONL files under a directory.
#[derive(Debug, Clone)]
pub struct LocalSource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    files: Vec<DataFile>,
    rows: u64,
}

#[derive(Debug)]
struct DataFile {
    path: PathBuf,
    first_row: u64,
    rows: u64,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Rows in each row group, in order.
    Parquet { row_groups: Vec<u64> },
    /// Byte offset of each row's line (blank lines are not rows).
    Jsonl { line_starts: Vec<u64>, len: u64 },
}

#[derive(Deserialize)]
struct JsonRow {
    content: String,
}

/// Every document of a local dataset, in row order.
pub fn read_all_documents(source: &LocalSource) -> Result<Vec<String>, DataError> {
    let mut docs = Vec::with_capacity(usize::try_from(source.num_rows()).unwrap_or(0));
    let mut page = 0;
    while page < source.num_rows() {
        docs.extend(source.read_page(page)?);
        page += ROWS_PER_PAGE as u64;
    }
    Ok(docs)
}

impl LocalSource {
    /// Scans `dir` (recursively; hidden entries skipped) for `*.parquet` and
    /// `*.jsonl` files and counts their rows.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let dir = dir.as_ref().to_path_buf();
        let mut paths = Vec::new();
        collect_files(&dir, &mut paths)?;
        paths.sort();
        let mut files = Vec::new();
        let mut rows = 0u64;
        for path in paths {
            let kind = match path.extension().and_then(|e| e.to_str()) {
                Some("parquet") => scan_parquet(&path)?,
                Some("jsonl") => scan_jsonl(&path)?,
                _ => continue,
            };
            let count = match &kind {
                Kind::Parquet { row_groups } => row_groups.iter().sum(),
                Kind::Jsonl { line_starts, .. } => line_starts.len() as u64,
            };
            files.push(DataFile {
                path,
                first_row: rows,
                rows: count,
                kind,
            });
            rows += count;
        }
        if files.is_empty() {
            return Err(DataError::local(
                &dir,
                "no *.parquet or *.jsonl files in this directory",
            ));
        }
        if rows == 0 {
            return Err(DataError::local(&dir, "the data files hold no rows"));
        }
        tracing::debug!(dir = %dir.display(), files = files.len(), rows, "opened local dataset");
        Ok(LocalSource {
            inner: Arc::new(Inner { dir, files, rows }),
        })
    }

    /// Total number of rows over all files.
    pub fn num_rows(&self) -> u64 {
        self.inner.rows
    }

    /// The data files in row order.
    pub fn files(&self) -> Vec<PathBuf> {
        self.inner.files.iter().map(|f| f.path.clone()).collect()
    }

    /// The documents of the page at row `page`, read synchronously.
    pub fn read_page(&self, page: u64) -> Result<Vec<String>, DataError> {
        self.inner.read_page(page)
    }
}

impl Inner {
    fn read_page(&self, page: u64) -> Result<Vec<String>, DataError> {
        if page >= self.rows {
            return Err(DataError::PageOutOfRange {
                page,
                rows: self.rows,
            });
        }
        let end = (page + ROWS_PER_PAGE as u64).min(self.rows);
        let mut out = Vec::with_capacity((end - page) as usize);
        for file in &self.files {
            let (lo, hi) = (file.first_row, file.first_row + file.rows);
            if hi <= page || lo >= end {
                continue;
            }
            let from = page.max(lo) - lo;
            let to = end.min(hi) - lo;
            match &file.kind {
                Kind::Parquet { row_groups } => {
                    read_parquet_rows(&file.path, row_groups, from, to, &mut out)?
                }
                Kind::Jsonl { line_starts, len } => {
                    read_jsonl_rows(&file.path, line_starts, *len, from, to, &mut out)?
                }
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl PageSource for LocalSource {
    fn name(&self) -> String {
        format!("local:{}", self.inner.dir.display())
    }

    /// Offsets at which a whole page exists (just 0 when there are fewer than 100 rows).
    fn page_range(&self) -> RangeInclusive<u64> {
        0..=self.inner.rows.saturating_sub(ROWS_PER_PAGE as u64)
    }

    async fn fetch_page(&self, page: u64) -> Result<Vec<String>, DataError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.read_page(page))
            .await
            .map_err(|e| DataError::Task(e.to_string()))?
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type().map_err(|e| DataError::io(&path, e))?;
        if file_type.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn open_parquet(path: &Path) -> Result<SerializedFileReader<File>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    SerializedFileReader::new(file)
        .map_err(|e| DataError::local(path, format!("not a readable Parquet file: {e}")))
}

fn scan_parquet(path: &Path) -> Result<Kind, DataError> {
    let reader = open_parquet(path)?;
    content_projection(path, &reader)?;
    let row_groups = reader
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows().max(0) as u64)
        .collect();
    Ok(Kind::Parquet { row_groups })
}

/// The schema with just the top-level `content` column.
fn content_projection(path: &Path, reader: &SerializedFileReader<File>) -> Result<Type, DataError> {
    let schema = reader.metadata().file_metadata().schema();
    let field = schema
        .get_fields()
        .iter()
        .find(|f| f.name() == "content")
        .ok_or_else(|| DataError::local(path, "the Parquet file has no `content` column"))?;
    if !field.is_primitive() {
        return Err(DataError::local(
            path,
            "the `content` column is not a string column",
        ));
    }
    Type::group_type_builder(schema.name())
        .with_fields(vec![Arc::clone(field)])
        .build()
        .map_err(|e| DataError::local(path, e))
}

fn read_parquet_rows(
    path: &Path,
    row_groups: &[u64],
    from: u64,
    to: u64,
    out: &mut Vec<String>,
) -> Result<(), DataError> {
    let reader = open_parquet(path)?;
    let projection = content_projection(path, &reader)?;
    let mut group_start = 0u64;
    for (index, &group_rows) in row_groups.iter().enumerate() {
        let group_end = group_start + group_rows;
        if group_end > from && group_start < to {
            let group = reader
                .get_row_group(index)
                .map_err(|e| DataError::local(path, e))?;
            let rows = group
                .get_row_iter(Some(projection.clone()))
                .map_err(|e| DataError::local(path, e))?;
            let skip = from.saturating_sub(group_start) as usize;
            let take = (to.min(group_end) - group_start.max(from)) as usize;
            for (i, row) in rows.skip(skip).take(take).enumerate() {
                let row_number = group_start + (skip + i) as u64;
                let row = row.map_err(|e| DataError::local(path, e))?;
                match row.get_column_iter().next().map(|(_, field)| field) {
                    Some(Field::Str(text)) => out.push(text.clone()),
                    Some(Field::Bytes(bytes)) => match bytes.as_utf8() {
                        Ok(text) => out.push(text.to_string()),
                        Err(_) => {
                            return Err(DataError::local(
                                path,
                                format!("row {row_number}: `content` is not UTF-8"),
                            ))
                        }
                    },
                    other => {
                        return Err(DataError::local(
                            path,
                            format!("row {row_number}: `content` is not a string: {other:?}"),
                        ))
                    }
                }
            }
        }
        group_start = group_end;
    }
    Ok(())
}

fn scan_jsonl(path: &Path) -> Result<Kind, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut line_starts = Vec::new();
    let mut offset = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            line_starts.push(offset);
        }
        offset += n as u64;
    }
    Ok(Kind::Jsonl {
        line_starts,
        len: offset,
    })
}

fn read_jsonl_rows(
    path: &Path,
    line_starts: &[u64],
    len: u64,
    from: u64,
    to: u64,
    out: &mut Vec<String>,
) -> Result<(), DataError> {
    let (from, to) = (from as usize, to as usize);
    let start = line_starts[from];
    let end = line_starts.get(to).copied().unwrap_or(len);
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    file.seek(SeekFrom::Start(start))
        .map_err(|e| DataError::io(path, e))?;
    let mut bytes = vec![0u8; (end - start) as usize];
    file.read_exact(&mut bytes)
        .map_err(|e| DataError::local(path, format!("changed since it was opened: {e}")))?;
    for (i, &row_start) in line_starts[from..to].iter().enumerate() {
        let a = (row_start - start) as usize;
        let b = line_starts
            .get(from + i + 1)
            .map_or(bytes.len(), |&next| (next - start) as usize);
        let row: JsonRow = serde_json::from_slice(&bytes[a..b]).map_err(|e| {
            DataError::local(
                path,
                format!(
                    "row {}: not a JSON object with a string `content`: {e}",
                    from + i
                ),
            )
        })?;
        out.push(row.content);
    }
    Ok(())
}
