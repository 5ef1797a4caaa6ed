//! The fp32 GEMM throughput of this machine through `gemm` (the crate every
//! kernel here calls), on the shapes of the default GPT-2 at `[1, 1024]`: the
//! ceiling evaluation and training run against (~270 GFLOP an evaluation).
//! Where the CPU has AVX512-BF16, each shape also runs through the bf16 GEMM
//! (`pretrain_model::gemm_bf16`, weights packed once, A converted per call).
//! Where oneDNN (libdnnl.so.2) loads, each shape also runs through it in f32
//! (operands where they lie) and, where it has a bf16 kernel, in bf16
//! (weights reordered once into its layout, A converted per call), with
//! the implementation oneDNN chose (`"impl"`).
//!
//!     cargo run --release -p pretrain-model --example gemm_peak -- 2   # threads

use std::time::Instant;

use pretrain_model::gemm_bf16 as bf16;
use pretrain_model::onednn;

fn main() {
    let threads: usize = match std::env::args().nth(1).map(|s| s.parse()) {
        None => 2,
        Some(Ok(t)) if t > 0 => t,
        Some(_) => {
            eprintln!("usage: gemm_peak [THREADS]");
            std::process::exit(2);
        }
    };
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // (m, n, k): c_attn, attention c_proj, c_fc, MLP c_proj, a vocabulary block.
    let shapes = [
        (1024usize, 2280usize, 760usize),
        (1024, 760, 760),
        (1024, 3040, 760),
        (1024, 760, 3040),
        (1023, 4096, 760),
    ];
    for (m, n, k) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
        let mut c = vec![0f32; m * n];
        let mut run = || {
            // SAFETY: row-major a [m, k], b [k, n], c [m, n], each exactly that
            // long, strides their widths; c is exclusively borrowed.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                )
            }
        };
        run();
        let reps: usize = 5;
        let start = Instant::now();
        for _ in 0..reps {
            run();
        }
        let secs = start.elapsed().as_secs_f64() / reps as f64;
        let gflops = 2.0 * (m * n * k) as f64 / secs / 1e9;
        println!(
            "{{\"m\":{m},\"n\":{n},\"k\":{k},\"threads\":{threads},\"dtype\":\"f32\",\"gflop_per_s\":{gflops:.1}}}"
        );
        for dtype in [onednn::Dtype::F32, onednn::Dtype::Bf16] {
            let Ok(name) = onednn::implementation(dtype) else {
                continue;
            };
            let slot = onednn::WeightSlot::default();
            let mut run = || {
                onednn::gemm(
                    dtype,
                    (m, n, k),
                    &mut c,
                    n,
                    false,
                    (&a, k, 1),
                    (&b, n, 1),
                    Some(&slot),
                    threads,
                )
            };
            if let Err(e) = run() {
                eprintln!("onednn {dtype:?}: {e}");
                continue;
            }
            let start = Instant::now();
            for _ in 0..reps {
                let _ = run();
            }
            let secs = start.elapsed().as_secs_f64() / reps as f64;
            let g = 2.0 * (m * n * k) as f64 / secs / 1e9;
            let dt = match dtype {
                onednn::Dtype::F32 => "f32",
                onednn::Dtype::Bf16 => "bf16",
            };
            println!(
                "{{\"m\":{m},\"n\":{n},\"k\":{k},\"threads\":{threads},\"dtype\":\"{dt}\",\"engine\":\"onednn\",\"impl\":\"{name}\",\"gflop_per_s\":{g:.1},\"vs_our_f32\":{:.2}}}",
                g / gflops
            );
        }
        if bf16::support().is_ok() {
            let packed = match bf16::PackedB::pack(&b, k, n, n, 1) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("bf16: {e}");
                    std::process::exit(1);
                }
            };
            let mut run = || bf16::gemm(m, &a, k, 1, &packed, &mut c, n, true, threads > 1);
            let _ = run();
            let start = Instant::now();
            for _ in 0..reps {
                let _ = run();
            }
            let secs = start.elapsed().as_secs_f64() / reps as f64;
            let bf = 2.0 * (m * n * k) as f64 / secs / 1e9;
            println!(
                "{{\"m\":{m},\"n\":{n},\"k\":{k},\"threads\":{threads},\"dtype\":\"bf16\",\"gflop_per_s\":{bf:.1},\"vs_f32\":{:.2}}}",
                bf / gflops
            );
        }
    }
}
