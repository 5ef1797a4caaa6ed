//! The token embedding for training, and [`GradSink`]: where the output
//! head and a tied embedding leave their weight gradient, outside candle's
//! `GradStore`.
//!
//! Why: candle's backward sums every gradient into a freshly allocated
//! tensor (`zeros_like` then `add`, and `index_add` copies the sum again),
//! so a tied `[V, d]` weight (GPT-2's wte, 154 MB) briefly exists three
//! times at the end of backward, when every activation and every other
//! gradient is still alive: that was the training peak. Here the head's
//! `dW` is written once and the embedding's rows are added to it in place.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::{contiguous_f32, KernelPath};

/// A weight gradient filled in place by the ops' backwards; the trainer
/// takes it after `backward` returns.
#[derive(Clone, Default)]
pub(crate) struct GradSink(Arc<Mutex<Option<Vec<f32>>>>);

impl GradSink {
    /// Runs `f` on the gradient buffer of `len` values, zero on first use.
    pub(crate) fn accumulate<R>(
        &self,
        len: usize,
        f: impl FnOnce(&mut [f32]) -> R,
    ) -> candle_core::Result<R> {
        let mut guard = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("gradient sink poisoned".into()))?;
        let buf = guard.get_or_insert_with(|| vec![0f32; len]);
        if buf.len() != len {
            candle_core::bail!("gradient sink holds {} values, asked for {len}", buf.len());
        }
        Ok(f(buf))
    }

    /// The gradient gathered so far, leaving the sink empty.
    pub(crate) fn take(&self) -> Option<Vec<f32>> {
        self.0.lock().ok().and_then(|mut g| g.take())
    }
}

/// Rows of `wte` `[V, d]` for `ids`; backward adds each row's gradient into
/// `sink`, in the order of `ids` (as candle's `index_add`), and reports none
/// to candle.
struct TokenEmbedding {
    ids: Arc<Vec<u32>>,
    sink: GradSink,
}

impl CustomOp1 for TokenEmbedding {
    fn name(&self) -> &'static str {
        "token-embedding"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (v, d) = l.shape().dims2()?;
        let w = contiguous_f32(s, l)?;
        let mut out = Vec::with_capacity(self.ids.len() * d);
        for &id in self.ids.iter() {
            let id = id as usize;
            if id >= v {
                candle_core::bail!("token id {id} is outside the vocabulary of {v}");
            }
            out.extend_from_slice(&w[id * d..(id + 1) * d]);
        }
        Ok((CpuStorage::F32(out), Shape::from((self.ids.len(), d))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (v, d) = arg.dims2()?;
        let grad = grad.contiguous()?;
        let (storage, layout) = grad.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("expected a CPU tensor");
        };
        let g = contiguous_f32(cpu, layout)?;
        self.sink.accumulate(v * d, |buf| {
            for (&id, row) in self.ids.iter().zip(g.chunks(d)) {
                let id = id as usize;
                for (a, &b) in buf[id * d..(id + 1) * d].iter_mut().zip(row) {
                    *a += b;
                }
            }
        })?;
        Ok(None)
    }
}

/// Rows of `wte` for the flat `ids` as `[N, d]`. On the CPU in f32 with a
/// sink, `wte`'s gradient goes to `sink` (see the module docs); otherwise
/// this is candle's `embedding` and the gradient goes to candle.
pub(crate) fn token_embedding(
    path: KernelPath,
    wte: &Tensor,
    ids: &Tensor,
    sink: Option<&GradSink>,
) -> candle_core::Result<Tensor> {
    match sink {
        Some(sink) if path.is_fast() => {
            let ids: Vec<u32> = ids.flatten_all()?.to_vec1()?;
            wte.contiguous()?.apply_op1(TokenEmbedding {
                ids: Arc::new(ids),
                sink: sink.clone(),
            })
        }
        _ => wte.embedding(&ids.flatten_all()?),
    }
}
