//! Writes documents as a Parquet file in Falcon RefinedWeb's schema
//! (`content`, `url`, `timestamp`, `dump`, `segment`, `image_urls`), as
//! pyarrow writes RefinedWeb's shards: snappy-compressed, `timestamp` as
//! milliseconds, `image_urls` a list of lists of strings.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use crate::error::DataError;

/// RefinedWeb's schema as pyarrow stores it in Parquet.
const SCHEMA: &str = "
message schema {
  optional binary content (STRING);
  optional binary url (STRING);
  optional int64 timestamp (TIMESTAMP(MILLIS,false));
  optional binary dump (STRING);
  optional binary segment (STRING);
  optional group image_urls (LIST) {
    repeated group list {
      optional group element (LIST) {
        repeated group list {
          optional binary element (STRING);
        }
      }
    }
  }
}";

/// One row of RefinedWeb (its `image_urls` are written empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefinedWebRow {
    /// The document text.
    pub content: String,
    /// Where the text came from.
    pub url: String,
    /// Seconds since the Unix epoch.
    pub timestamp: i64,
    /// The crawl (RefinedWeb: a Common Crawl dump name).
    pub dump: String,
    /// The crawl segment.
    pub segment: String,
}

/// Writes `rows` to `path` atomically (a temporary file in the same
/// directory, then a rename), `rows_per_group` rows per row group.
pub fn write_refinedweb_parquet(
    path: &Path,
    rows: &[RefinedWebRow],
    rows_per_group: usize,
) -> Result<(), DataError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| DataError::io(dir, e))?;
    let file: File = tmp.reopen().map_err(|e| DataError::io(tmp.path(), e))?;
    write_rows(file, rows, rows_per_group.max(1)).map_err(|e| DataError::local(path, e))?;
    // A temporary file is private (0600); the result is a normal data file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(|e| DataError::io(tmp.path(), e))?;
    }
    tmp.persist(path)
        .map_err(|e| DataError::io(path, e.error))?;
    Ok(())
}

fn write_rows(
    file: File,
    rows: &[RefinedWebRow],
    rows_per_group: usize,
) -> parquet::errors::Result<()> {
    let schema = Arc::new(parse_message_type(SCHEMA)?);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = SerializedFileWriter::new(file, schema, Arc::new(props))?;
    for group in rows.chunks(rows_per_group) {
        let mut group_writer = writer.next_row_group()?;
        let defined = vec![1i16; group.len()];
        let mut index = 0;
        while let Some(mut column) = group_writer.next_column()? {
            let strings = |f: fn(&RefinedWebRow) -> &str| -> Vec<ByteArray> {
                group.iter().map(|r| ByteArray::from(f(r))).collect()
            };
            match index {
                0..=4 if index != 2 => {
                    let values = match index {
                        0 => strings(|r| &r.content),
                        1 => strings(|r| &r.url),
                        3 => strings(|r| &r.dump),
                        _ => strings(|r| &r.segment),
                    };
                    column
                        .typed::<ByteArrayType>()
                        .write_batch(&values, Some(&defined), None)?;
                }
                2 => {
                    let millis: Vec<i64> = group.iter().map(|r| r.timestamp * 1000).collect();
                    column
                        .typed::<Int64Type>()
                        .write_batch(&millis, Some(&defined), None)?;
                }
                _ => {
                    // An empty (not null) outer list: defined at level 1, no values.
                    let repetition = vec![0i16; group.len()];
                    column.typed::<ByteArrayType>().write_batch(
                        &[],
                        Some(&defined),
                        Some(&repetition),
                    )?;
                }
            }
            column.close()?;
            index += 1;
        }
        group_writer.close()?;
    }
    writer.close()?;
    Ok(())
}
