//! Batches from the token buffer, as the original `SubsetFalconLoader.__iter__`:
//! consecutive, non-overlapping windows of `sequence_length` ids,
//! `batch_size` windows per batch, the remainder that does not fill a whole
//! batch dropped.

use crate::error::DataError;

/// One batch: `batch_size` rows of `sequence_length` token ids.
pub type Batch = Vec<Vec<u32>>;

/// Splits `buffer` into batches; the tail shorter than one batch is dropped.
pub fn make_batches(
    buffer: &[u32],
    batch_size: usize,
    sequence_length: usize,
) -> Result<Vec<Batch>, DataError> {
    let per_batch = tokens_per_batch(batch_size, sequence_length)?;
    Ok(buffer
        .chunks_exact(per_batch)
        .map(|chunk| {
            chunk
                .chunks_exact(sequence_length)
                .map(<[u32]>::to_vec)
                .collect()
        })
        .collect())
}

/// How many ids of `buffer` are dropped because they do not fill a batch.
pub fn remainder_len(
    buffer_len: usize,
    batch_size: usize,
    sequence_length: usize,
) -> Result<usize, DataError> {
    Ok(buffer_len % tokens_per_batch(batch_size, sequence_length)?)
}

fn tokens_per_batch(batch_size: usize, sequence_length: usize) -> Result<usize, DataError> {
    match batch_size.checked_mul(sequence_length) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(DataError::BadBatchShape {
            batch_size,
            sequence_length,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_shapes_are_errors() {
        assert!(make_batches(&[1, 2, 3], 0, 4).is_err());
        assert!(make_batches(&[1, 2, 3], 2, 0).is_err());
        assert!(remainder_len(3, usize::MAX, 2).is_err());
    }

    #[test]
    fn windows_are_consecutive_rows() {
        let buffer: Vec<u32> = (0..11).collect();
        let batches = make_batches(&buffer, 2, 2).unwrap();
        assert_eq!(
            batches,
            vec![vec![vec![0, 1], vec![2, 3]], vec![vec![4, 5], vec![6, 7]]]
        );
        assert_eq!(remainder_len(11, 2, 2).unwrap(), 3);
    }
}
