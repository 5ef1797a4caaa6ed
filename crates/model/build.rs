//! Tells the tests which CPU they run on and whether oneDNN is installed:
//! the bf16 kernels' numeric tests need AVX512-BF16 and the oneDNN tests
//! libdnnl.so.2, and are `#[ignore]`d (never passed silently) without them.
//! Build and test machine are the same for `cargo test`.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cpu_avx512bf16)");
    println!("cargo::rustc-check-cfg=cfg(have_onednn)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=LD_LIBRARY_PATH");
    // The oneDNN tests need libdnnl.so.2 (Debian's libdnnl-dev): `#[ignore]`d
    // with the reason where it is absent, never passed silently.
    let dirs = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let found = dirs
        .split(':')
        .filter(|d| !d.is_empty())
        .chain([
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
            "/usr/local/lib",
        ])
        .any(|d| std::path::Path::new(d).join("libdnnl.so.2").exists());
    if found {
        println!("cargo::rustc-cfg=have_onednn");
    }
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
