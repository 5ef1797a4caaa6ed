//! Offline runs: a `.wandb` transaction log per run, the file `wandb sync`
//! uploads later. The container is wandb's leveldb-log variant
//! (`wandb/sdk/internal/datastore.py`): a 7-byte header (`:W&B`, magic
//! 0xBEE1, version 0), then records in 32 KiB blocks, each with a CRC-32
//! (IEEE, zlib's) seeded with the CRC of its one-byte type, a length and the
//! type (full, or first/middle/last pieces of a record that crosses blocks).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use super::proto::{self, Record, RecordType};
use super::WandbError;

const HEADER_LEN: usize = 7;
const BLOCK_LEN: usize = 32 * 1024;
const DATA_LEN: usize = BLOCK_LEN - HEADER_LEN;

const FULL: u8 = 1;
const FIRST: u8 = 2;
const MIDDLE: u8 = 3;
const LAST: u8 = 4;

const IDENT: &[u8; 4] = b":W&B";
const MAGIC: u16 = 0xBEE1;
const VERSION: u8 = 0;

/// Writes wandb's leveldb-log container: records of any size, split across
/// 32 KiB blocks exactly as wandb's `DataStore._write_data` splits them.
pub struct LogWriter<W: Write> {
    out: W,
    index: usize,
}

impl<W: Write> LogWriter<W> {
    /// Starts a log: writes the header.
    pub fn new(mut out: W) -> std::io::Result<Self> {
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(IDENT);
        header.extend_from_slice(&MAGIC.to_le_bytes());
        header.push(VERSION);
        out.write_all(&header)?;
        Ok(Self {
            out,
            index: HEADER_LEN,
        })
    }

    /// Appends one record (bytes of any length).
    pub fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        let offset = self.index % BLOCK_LEN;
        let mut space_left = BLOCK_LEN - offset;
        if space_left < HEADER_LEN {
            // Too little room for a record header: the block ends in zeros.
            self.out.write_all(&vec![0u8; space_left])?;
            self.index += space_left;
            space_left = BLOCK_LEN;
        }
        if data.len() + HEADER_LEN <= space_left {
            return self.piece(data, FULL);
        }
        let room = space_left - HEADER_LEN;
        self.piece(&data[..room], FIRST)?;
        let mut used = room;
        while data.len() - used > DATA_LEN {
            self.piece(&data[used..used + DATA_LEN], MIDDLE)?;
            used += DATA_LEN;
        }
        self.piece(&data[used..], LAST)
    }

    fn piece(&mut self, data: &[u8], kind: u8) -> std::io::Result<()> {
        let mut crc = crc32fast::Hasher::new_with_initial(type_crc(kind));
        crc.update(data);
        let len = u16::try_from(data.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "record piece over 64 KiB")
        })?;
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&crc.finalize().to_le_bytes());
        header[4..6].copy_from_slice(&len.to_le_bytes());
        header[6] = kind;
        self.out.write_all(&header)?;
        self.out.write_all(data)?;
        self.index += HEADER_LEN + data.len();
        Ok(())
    }

    /// Flushes what was written to the underlying writer.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// zlib.crc32 of the single byte `kind`: the seed of that type's checksums.
fn type_crc(kind: u8) -> u32 {
    crc32fast::hash(&[kind])
}

/// One offline run: `<dir>/offline-run-<YYYYmmdd_HHMMSS>-<id>/run-<id>.wandb`,
/// the layout `wandb sync <dir>/offline-run-*` expects.
pub struct OfflineRun {
    path: PathBuf,
    log: LogWriter<File>,
    num: i64,
}

impl OfflineRun {
    /// Creates the run's folder and file and writes the run record.
    pub fn create(
        dir: &Path,
        run: proto::RunRecord,
        started: chrono::DateTime<chrono::Utc>,
    ) -> Result<Self, WandbError> {
        let folder = dir.join(format!(
            "offline-run-{}-{}",
            started.format("%Y%m%d_%H%M%S"),
            run.run_id
        ));
        std::fs::create_dir_all(&folder).map_err(|source| WandbError::Io {
            path: folder.clone(),
            source,
        })?;
        let path = folder.join(format!("run-{}.wandb", run.run_id));
        // create_new: a run file is never reopened and never written through
        // a link planted under its name.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| WandbError::Io {
                path: path.clone(),
                source,
            })?;
        let log = LogWriter::new(file).map_err(|source| WandbError::Io {
            path: path.clone(),
            source,
        })?;
        let mut this = Self { path, log, num: 0 };
        this.write(RecordType::Run(run))?;
        Ok(this)
    }

    /// The run file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and flushes it, so a crash loses at most the record
    /// being written.
    pub fn write(&mut self, record: RecordType) -> Result<(), WandbError> {
        self.num += 1;
        let bytes = Record {
            num: self.num,
            record_type: Some(record),
        }
        .encode_to_vec();
        self.log
            .append(&bytes)
            .and_then(|()| self.log.flush())
            .map_err(|source| WandbError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader written from datastore.py's `scan_data`, independent of the
    /// writer: header, checksums, padding and piece order.
    fn scan(bytes: &[u8]) -> Vec<Vec<u8>> {
        assert_eq!(&bytes[..4], IDENT);
        assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 0xBEE1);
        assert_eq!(bytes[6], 0);
        let mut i = HEADER_LEN;
        let mut out = Vec::new();
        let mut partial: Option<Vec<u8>> = None;
        while i < bytes.len() {
            let left = BLOCK_LEN - i % BLOCK_LEN;
            if left < HEADER_LEN {
                assert!(
                    bytes[i..i + left].iter().all(|b| *b == 0),
                    "padding is zeros"
                );
                i += left;
                continue;
            }
            let crc = u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
            let len = u16::from_le_bytes([bytes[i + 4], bytes[i + 5]]) as usize;
            let kind = bytes[i + 6];
            let data = &bytes[i + 7..i + 7 + len];
            // zlib.crc32(data, zlib.crc32(bytes([kind]))) as Python computes it.
            let mut h = crc32fast::Hasher::new_with_initial(crc32fast::hash(&[kind]));
            h.update(data);
            assert_eq!(crc, h.finalize(), "checksum at {i}");
            i += 7 + len;
            match kind {
                FULL => {
                    assert!(partial.is_none());
                    out.push(data.to_vec());
                }
                FIRST => partial = Some(data.to_vec()),
                MIDDLE => partial.as_mut().unwrap().extend_from_slice(data),
                LAST => {
                    let mut p = partial.take().unwrap();
                    p.extend_from_slice(data);
                    out.push(p);
                }
                k => panic!("bad type {k}"),
            }
        }
        out
    }

    #[test]
    fn records_of_every_size_round_trip_across_blocks() {
        // Sizes around the block edges: a record that fills a block exactly,
        // one that leaves less than a header (padding), and one spanning
        // three blocks (first, middle, last).
        let sizes = [
            0,
            1,
            100,
            DATA_LEN - 7 - 3,
            5,
            DATA_LEN,
            3 * BLOCK_LEN + 17,
            2,
            40_000,
        ];
        let records: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(n, &s)| (0..s).map(|i| (i * 31 + n) as u8).collect())
            .collect();
        let mut buf = Vec::new();
        let mut w = LogWriter::new(&mut buf).unwrap();
        for r in &records {
            w.append(r).unwrap();
        }
        assert_eq!(scan(&buf), records);
    }

    #[test]
    fn type_seed_is_zlib_crc32_of_the_type_byte() {
        // zlib.crc32(b"\x01"), zlib.crc32(b"\x04") from Python.
        assert_eq!(type_crc(1), 0xA505_DF1B);
        assert_eq!(type_crc(4), 0xD56F_2B94);
        // zlib.crc32(b"abc", zlib.crc32(b"\x01")): a continued checksum.
        let mut h = crc32fast::Hasher::new_with_initial(type_crc(1));
        h.update(b"abc");
        assert_eq!(h.finalize(), 0x539D_20A9);
    }
}
