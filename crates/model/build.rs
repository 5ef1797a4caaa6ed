//! Tells the tests which CPU they run on: the bf16 kernels' numeric tests
//! need AVX512-BF16, and are `#[ignore]`d (never passed silently) on a CPU
//! without it. Build and test machine are the same for `cargo test`.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cpu_avx512bf16)");
    println!("cargo::rerun-if-changed=build.rs");
    #[cfg(target_arch = "x86_64")]
    {
        let target_is_host = std::env::var("TARGET").ok() == std::env::var("HOST").ok();
        if target_is_host
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bf16")
        {
            println!("cargo::rustc-cfg=cpu_avx512bf16");
        }
    }
}
