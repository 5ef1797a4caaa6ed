//! The weight GEMMs, attention's batched products and GPT-2's fused
//! bias + GELU projections on oneDNN (`libdnnl.so.2`, the 2.x C API), PyTorch's own
//! CPU matmul library: it picks its kernel (AMX, AVX512-BF16, AVX-512, AVX2)
//! when a primitive is created, so the same code runs on any x86-64 CPU and
//! gets the fastest engine there. The library is loaded at run time
//! ([`api`]), so a machine without it builds and runs on our own kernels.
//!
//! A small hand-written FFI over the functions used: `dnnl_memory_desc_t` and
//! `dnnl_matmul_desc_t` are by-value structs in 2.x, held here as opaque
//! bytes of their C sizes (asserted against `sizeof` in a test) and only ever
//! filled and read by the library. Primitives are created once per shape and
//! cached ([`Matmul`]); in bf16 the activations are converted per call and
//! the weights reordered once per set of weights into the layout the
//! primitive prefers (format `any`, [`WeightSlot`]), f32 out.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::{Arc, Mutex, OnceLock};

use libloading::Library;
use thiserror::Error;

use super::gemm_bf16::to_bf16;

/// `sizeof(dnnl_memory_desc_t)` in oneDNN 2.x (x86-64).
pub(crate) const MEMORY_DESC_SIZE: usize = 696;
/// `sizeof(dnnl_matmul_desc_t)` in oneDNN 2.x (x86-64).
pub(crate) const MATMUL_DESC_SIZE: usize = 2800;

// The 2.x enum values used (dnnl_types.h).
const DNNL_SUCCESS: c_int = 0;
const DNNL_CPU: c_int = 1;
const DT_BF16: c_int = 2;
const DT_F32: c_int = 3;
const TAG_ANY: c_int = 1;
const ARG_SRC: c_int = 1;
const ARG_DST: c_int = 17;
const ARG_WEIGHTS: c_int = 33;
const ARG_SCRATCHPAD: c_int = 80;
const ARG_BIAS: c_int = 41;
/// `dnnl_eltwise_gelu_tanh`: GPT-2's `gelu_new`.
const ELTWISE_GELU_TANH: c_int = 0xcf;
const QUERY_IMPL_INFO_STR: c_int = 8;
const QUERY_WEIGHTS_MD: c_int = 131;
const QUERY_SCRATCHPAD_MD: c_int = 136;
const SCRATCHPAD_USER: c_int = 1;
const STREAM_DEFAULT: c_uint = 1;

/// Why the oneDNN path cannot run or a call failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OnednnError {
    /// `libdnnl.so.2` did not load (or lacks a function).
    #[error(
        "--kernels onednn needs oneDNN (libdnnl.so.2; on Debian/Ubuntu `apt-get install \
         libdnnl-dev`), which did not load: {0}"
    )]
    Load(String),
    /// The library loaded but is not the 2.x API this FFI was written for.
    #[error("oneDNN {0} loaded as libdnnl.so.2, but this build needs the 2.x API")]
    Version(String),
    /// oneDNN has no kernel for this dtype on this CPU (primitive creation failed).
    #[error("oneDNN has no {dtype} matmul kernel on this CPU (dnnl status {status}); use --dtype f32 or --kernels auto")]
    NoKernel {
        /// `f32` or `bf16`.
        dtype: &'static str,
        /// The status `dnnl_primitive_desc_create` returned.
        status: i32,
    },
    /// A oneDNN call failed.
    #[error("oneDNN call {call} failed with status {status}")]
    Call {
        /// The function.
        call: &'static str,
        /// Its `dnnl_status_t`.
        status: i32,
    },
    /// A slice is too short for the shape and strides given.
    #[error("onednn gemm: {0} is too short for the shape and strides given")]
    Shape(&'static str),
    /// A batched matmul's operands differ in dtype (both f32 or both bf16).
    #[error("onednn batched matmul: lhs and rhs differ in dtype")]
    Dtypes,
}

/// A `dnnl_memory_desc_t`: opaque, filled and read by the library only.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct MemoryDesc([u8; MEMORY_DESC_SIZE]);

impl MemoryDesc {
    const ZERO: Self = Self([0; MEMORY_DESC_SIZE]);
}

/// A `dnnl_matmul_desc_t`: opaque, filled by `dnnl_matmul_desc_init`.
#[repr(C, align(8))]
struct MatmulDesc([u8; MATMUL_DESC_SIZE]);

/// A `dnnl_exec_arg_t`.
#[repr(C)]
struct ExecArg {
    arg: c_int,
    memory: Handle,
}

/// Any oneDNN handle (`dnnl_engine_t`, `dnnl_primitive_t`, ...).
type Handle = *mut c_void;
/// `dnnl_status_t`.
type Status = c_int;

/// `dnnl_version_t`.
#[repr(C)]
struct Version {
    major: c_int,
    minor: c_int,
    patch: c_int,
    hash: *const c_char,
    cpu_runtime: c_uint,
    gpu_runtime: c_uint,
}

/// The functions used, resolved once from the loaded library.
struct Api {
    engine: Handle,
    engine_create: unsafe extern "C" fn(*mut Handle, c_int, usize) -> Status,
    stream_create: unsafe extern "C" fn(*mut Handle, Handle, c_uint) -> Status,
    stream_wait: unsafe extern "C" fn(Handle) -> Status,
    stream_destroy: unsafe extern "C" fn(Handle) -> Status,
    md_strides:
        unsafe extern "C" fn(*mut MemoryDesc, c_int, *const i64, c_int, *const i64) -> Status,
    md_tag: unsafe extern "C" fn(*mut MemoryDesc, c_int, *const i64, c_int, c_int) -> Status,
    md_size: unsafe extern "C" fn(*const MemoryDesc) -> usize,
    md_equal: unsafe extern "C" fn(*const MemoryDesc, *const MemoryDesc) -> c_int,
    matmul_desc_init: unsafe extern "C" fn(
        *mut MatmulDesc,
        *const MemoryDesc,
        *const MemoryDesc,
        *const MemoryDesc,
        *const MemoryDesc,
    ) -> Status,
    attr_create: unsafe extern "C" fn(*mut Handle) -> Status,
    attr_destroy: unsafe extern "C" fn(Handle) -> Status,
    attr_scratchpad: unsafe extern "C" fn(Handle, c_int) -> Status,
    attr_post_ops: unsafe extern "C" fn(Handle, Handle) -> Status,
    post_ops_create: unsafe extern "C" fn(*mut Handle) -> Status,
    post_ops_destroy: unsafe extern "C" fn(Handle) -> Status,
    post_ops_sum: unsafe extern "C" fn(Handle, f32) -> Status,
    post_ops_eltwise: unsafe extern "C" fn(Handle, f32, c_int, f32, f32) -> Status,
    attr_output_scales: unsafe extern "C" fn(Handle, i64, c_int, *const f32) -> Status,
    pd_create: unsafe extern "C" fn(*mut Handle, *const c_void, Handle, Handle, Handle) -> Status,
    pd_destroy: unsafe extern "C" fn(Handle) -> Status,
    pd_query: unsafe extern "C" fn(Handle, c_int, c_int, *mut c_void) -> Status,
    pd_query_md: unsafe extern "C" fn(Handle, c_int, c_int) -> *const MemoryDesc,
    reorder_pd_create: unsafe extern "C" fn(
        *mut Handle,
        *const MemoryDesc,
        Handle,
        *const MemoryDesc,
        Handle,
        Handle,
    ) -> Status,
    prim_create: unsafe extern "C" fn(*mut Handle, Handle) -> Status,
    prim_destroy: unsafe extern "C" fn(Handle) -> Status,
    prim_execute: unsafe extern "C" fn(Handle, Handle, c_int, *const ExecArg) -> Status,
    mem_create: unsafe extern "C" fn(*mut Handle, *const MemoryDesc, Handle, *mut c_void) -> Status,
    mem_destroy: unsafe extern "C" fn(Handle) -> Status,
    /// libgomp's (oneDNN's threading runtime here), to match `threads`.
    omp_set_num_threads: Option<unsafe extern "C" fn(c_int)>,
    /// "2.6.3".
    version: String,
    // Kept loaded for the process: the function pointers above point into them.
    _lib: Library,
    _gomp: Option<Library>,
}

// SAFETY: the engine is a CPU engine, which oneDNN documents as safe to use
// from any thread; the rest are function pointers and the libraries.
unsafe impl Send for Api {}
// SAFETY: as for `Send`.
unsafe impl Sync for Api {}

/// Maps a status to a result.
fn check(call: &'static str, status: Status) -> Result<(), OnednnError> {
    if status == DNNL_SUCCESS {
        Ok(())
    } else {
        Err(OnednnError::Call { call, status })
    }
}

/// Resolves `name` in `lib` as a `T` (a function pointer type).
///
/// # Safety
/// `T` must be the C signature of `name`.
unsafe fn sym<T: Copy>(lib: &Library, name: &str) -> Result<T, OnednnError> {
    lib.get::<T>(name.as_bytes())
        .map(|s| *s)
        .map_err(|e| OnednnError::Load(format!("{name}: {e}")))
}

impl Api {
    /// Loads `libdnnl.so.2`, checks it is 2.x and creates the CPU engine.
    fn load() -> Result<Self, OnednnError> {
        // oneDNN's OpenMP threads spin after each GEMM by default, taking
        // the cores from the rayon threads that run the next kernel (3x
        // slower evaluation of a tiny model measured on 2 cores); libgomp
        // reads this once, when it loads with libdnnl just below.
        if std::env::var_os("OMP_WAIT_POLICY").is_none() {
            std::env::set_var("OMP_WAIT_POLICY", "PASSIVE");
        }
        // SAFETY: loading a shared library runs its initialisers; libdnnl's
        // are oneDNN's own static set-up.
        let lib = unsafe { Library::new("libdnnl.so.2") }
            .map_err(|e| OnednnError::Load(e.to_string()))?;
        // SAFETY (every `sym` below): each type is the function's prototype in
        // oneDNN 2.x's dnnl.h, copied by hand.
        unsafe {
            let version: unsafe extern "C" fn() -> *const Version = sym(&lib, "dnnl_version")?;
            let v = version();
            if v.is_null() {
                return Err(OnednnError::Version("(unknown)".into()));
            }
            let v = &*v;
            let version = format!("{}.{}.{}", v.major, v.minor, v.patch);
            if v.major != 2 {
                return Err(OnednnError::Version(version));
            }
            // oneDNN threads with OpenMP here; its team size follows `threads`.
            let gomp = Library::new("libgomp.so.1").ok();
            let omp_set_num_threads = gomp
                .as_ref()
                .and_then(|g| sym::<unsafe extern "C" fn(c_int)>(g, "omp_set_num_threads").ok());
            let mut api = Api {
                engine: std::ptr::null_mut(),
                engine_create: sym(&lib, "dnnl_engine_create")?,
                stream_create: sym(&lib, "dnnl_stream_create")?,
                stream_wait: sym(&lib, "dnnl_stream_wait")?,
                stream_destroy: sym(&lib, "dnnl_stream_destroy")?,
                md_strides: sym(&lib, "dnnl_memory_desc_init_by_strides")?,
                md_tag: sym(&lib, "dnnl_memory_desc_init_by_tag")?,
                md_size: sym(&lib, "dnnl_memory_desc_get_size")?,
                md_equal: sym(&lib, "dnnl_memory_desc_equal")?,
                matmul_desc_init: sym(&lib, "dnnl_matmul_desc_init")?,
                attr_create: sym(&lib, "dnnl_primitive_attr_create")?,
                attr_destroy: sym(&lib, "dnnl_primitive_attr_destroy")?,
                attr_scratchpad: sym(&lib, "dnnl_primitive_attr_set_scratchpad_mode")?,
                attr_post_ops: sym(&lib, "dnnl_primitive_attr_set_post_ops")?,
                post_ops_create: sym(&lib, "dnnl_post_ops_create")?,
                post_ops_destroy: sym(&lib, "dnnl_post_ops_destroy")?,
                post_ops_sum: sym(&lib, "dnnl_post_ops_append_sum")?,
                post_ops_eltwise: sym(&lib, "dnnl_post_ops_append_eltwise")?,
                attr_output_scales: sym(&lib, "dnnl_primitive_attr_set_output_scales")?,
                pd_create: sym(&lib, "dnnl_primitive_desc_create")?,
                pd_destroy: sym(&lib, "dnnl_primitive_desc_destroy")?,
                pd_query: sym(&lib, "dnnl_primitive_desc_query")?,
                pd_query_md: sym(&lib, "dnnl_primitive_desc_query_md")?,
                reorder_pd_create: sym(&lib, "dnnl_reorder_primitive_desc_create")?,
                prim_create: sym(&lib, "dnnl_primitive_create")?,
                prim_destroy: sym(&lib, "dnnl_primitive_destroy")?,
                prim_execute: sym(&lib, "dnnl_primitive_execute")?,
                mem_create: sym(&lib, "dnnl_memory_create")?,
                mem_destroy: sym(&lib, "dnnl_memory_destroy")?,
                omp_set_num_threads,
                version,
                _lib: lib,
                _gomp: gomp,
            };
            let mut engine = std::ptr::null_mut();
            check(
                "dnnl_engine_create",
                (api.engine_create)(&mut engine, DNNL_CPU, 0),
            )?;
            api.engine = engine;
            Ok(api)
        }
    }

    /// A plain `rows x cols` descriptor with strides `(rs, cs)`.
    fn md_strided(
        &self,
        (rows, cols): (usize, usize),
        dt: c_int,
        (rs, cs): (usize, usize),
    ) -> Result<MemoryDesc, OnednnError> {
        let mut md = MemoryDesc::ZERO;
        let dims = [dim(rows)?, dim(cols)?];
        let strides = [dim(rs)?, dim(cs)?];
        // SAFETY: `md` is a writable dnnl_memory_desc_t; dims and strides hold 2 values.
        check("dnnl_memory_desc_init_by_strides", unsafe {
            (self.md_strides)(&mut md, 2, dims.as_ptr(), dt, strides.as_ptr())
        })?;
        Ok(md)
    }

    /// A plain descriptor of any rank with the given strides (batched matmuls, bias).
    fn md_nd(
        &self,
        dims: &[usize],
        dt: c_int,
        strides: &[usize],
    ) -> Result<MemoryDesc, OnednnError> {
        let mut md = MemoryDesc::ZERO;
        let dims = dims
            .iter()
            .map(|&d| dim(d))
            .collect::<Result<Vec<_>, _>>()?;
        let strides = strides
            .iter()
            .map(|&d| dim(d))
            .collect::<Result<Vec<_>, _>>()?;
        if dims.len() != strides.len() {
            return Err(OnednnError::Shape("strides"));
        }
        // SAFETY: `md` is a writable dnnl_memory_desc_t; dims and strides hold
        // `dims.len()` values each.
        check("dnnl_memory_desc_init_by_strides", unsafe {
            (self.md_strides)(
                &mut md,
                dims.len() as c_int,
                dims.as_ptr(),
                dt,
                strides.as_ptr(),
            )
        })?;
        Ok(md)
    }

    /// A `rows x cols` descriptor in the layout the primitive prefers.
    fn md_any(&self, (rows, cols): (usize, usize), dt: c_int) -> Result<MemoryDesc, OnednnError> {
        let mut md = MemoryDesc::ZERO;
        let dims = [dim(rows)?, dim(cols)?];
        // SAFETY: as in `md_strided`.
        check("dnnl_memory_desc_init_by_tag", unsafe {
            (self.md_tag)(&mut md, 2, dims.as_ptr(), dt, TAG_ANY)
        })?;
        Ok(md)
    }

    /// Sets the OpenMP team size of the calling thread.
    fn set_threads(&self, threads: usize) {
        if let Some(f) = self.omp_set_num_threads {
            // SAFETY: omp_set_num_threads(int) has no other precondition.
            unsafe { f(threads.clamp(1, c_int::MAX as usize) as c_int) };
        }
    }
}

/// A dimension or stride as oneDNN's `int64_t`.
fn dim(x: usize) -> Result<i64, OnednnError> {
    i64::try_from(x).map_err(|_| OnednnError::Shape("dimension"))
}

/// The loaded library, or why it did not load (tried once a process).
fn api() -> Result<&'static Api, OnednnError> {
    static API: OnceLock<Result<Api, OnednnError>> = OnceLock::new();
    API.get_or_init(Api::load).as_ref().map_err(Clone::clone)
}

/// Whether oneDNN loads here, and its version ("2.6.3").
pub fn available() -> Result<String, OnednnError> {
    api().map(|a| a.version.clone())
}

/// One executing context: a CPU stream (one a thread, as oneDNN asks).
struct Stream(Handle);

impl Drop for Stream {
    fn drop(&mut self) {
        if let Ok(api) = api() {
            // SAFETY: the stream was created by dnnl_stream_create and is dropped once.
            unsafe {
                let _ = (api.stream_destroy)(self.0);
            }
        }
    }
}

thread_local! {
    static STREAM: std::cell::RefCell<Option<Stream>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's stream, creating it first if needed.
fn with_stream<R>(
    api: &Api,
    f: impl FnOnce(Handle) -> Result<R, OnednnError>,
) -> Result<R, OnednnError> {
    STREAM.with(|s| {
        let mut s = s.borrow_mut();
        if s.is_none() {
            let mut h = std::ptr::null_mut();
            // SAFETY: a valid engine and an out-pointer.
            check("dnnl_stream_create", unsafe {
                (api.stream_create)(&mut h, api.engine, STREAM_DEFAULT)
            })?;
            *s = Some(Stream(h));
        }
        let h = s.as_ref().map(|s| s.0).unwrap_or(std::ptr::null_mut());
        f(h)
    })
}

/// The compute dtype of a oneDNN GEMM (always f32 out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// f32 in and out.
    F32,
    /// bf16 operands (rounded to nearest even), f32 accumulation and out.
    Bf16,
}

impl Dtype {
    fn code(self) -> c_int {
        match self {
            Self::F32 => DT_F32,
            Self::Bf16 => DT_BF16,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

/// What a cached primitive is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    m: usize,
    k: usize,
    n: usize,
    /// A's strides as oneDNN reads it.
    a: (usize, usize),
    /// B's strides, or `None` for the primitive's preferred layout.
    b: Option<(usize, usize)>,
    dst_rs: usize,
    dtype: Dtype,
    epilogue: Epilogue,
}

/// A matmul primitive and what executing it needs.
struct Matmul {
    pd: Handle,
    prim: Handle,
    src: MemoryDesc,
    wei: MemoryDesc,
    dst: MemoryDesc,
    scratch: MemoryDesc,
    scratch_bytes: usize,
    /// oneDNN's implementation name ("brg:avx512_core_bf16").
    impl_name: String,
}

// SAFETY: a primitive with a user scratchpad (each call brings its own) is
// safe to execute from several threads at once (oneDNN's thread-safety
// rules); the descriptors are plain bytes.
unsafe impl Send for Matmul {}
// SAFETY: as for `Send`.
unsafe impl Sync for Matmul {}

impl Drop for Matmul {
    fn drop(&mut self) {
        if let Ok(api) = api() {
            // SAFETY: both were created once by the library and are destroyed once.
            unsafe {
                let _ = (api.prim_destroy)(self.prim);
                let _ = (api.pd_destroy)(self.pd);
            }
        }
    }
}

/// What a primitive does after the product, in this order: an output
/// scale, a bias row, GELU (tanh form), a sum into dst (`accumulate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Epilogue {
    /// `dst = dst + result` (a sum post-op) instead of `dst = result`.
    accumulate: bool,
    /// The output scale's f32 bits (`1.0` for none; bits so that it hashes).
    scale: u32,
    /// A `[1, n]` f32 bias added (`DNNL_ARG_BIAS`).
    bias: bool,
    /// `gelu_new` on the result (an eltwise post-op).
    gelu: bool,
}

impl Epilogue {
    /// The plain product, optionally summed into dst.
    fn plain(accumulate: bool) -> Self {
        Self {
            accumulate,
            scale: 1f32.to_bits(),
            bias: false,
            gelu: false,
        }
    }
}

impl Matmul {
    /// Creates the primitive for `key`.
    fn create(api: &Api, key: &Key) -> Result<Self, OnednnError> {
        let dt = key.dtype.code();
        let src = api.md_strided((key.m, key.k), dt, key.a)?;
        let wei_req = match key.b {
            Some(s) => api.md_strided((key.k, key.n), dt, s)?,
            None => api.md_any((key.k, key.n), dt)?,
        };
        let dst = api.md_strided((key.m, key.n), DT_F32, (key.dst_rs, 1))?;
        let bias = if key.epilogue.bias {
            Some(api.md_nd(&[1, key.n], DT_F32, &[key.n, 1])?)
        } else {
            None
        };
        Self::build(api, (src, wei_req, bias, dst), key.epilogue, key.dtype)
    }

    /// Creates the primitive of `src x wei -> dst` (descriptors of rank 2, or
    /// 4 for a batched product; `bias` of dst's rank) with `epilogue`.
    fn build(
        api: &Api,
        (src, wei_req, bias, dst): (MemoryDesc, MemoryDesc, Option<MemoryDesc>, MemoryDesc),
        epilogue: Epilogue,
        dtype: Dtype,
    ) -> Result<Self, OnednnError> {
        let mut desc = MatmulDesc([0; MATMUL_DESC_SIZE]);
        let bias_ptr = bias
            .as_ref()
            .map_or(std::ptr::null(), |b| b as *const MemoryDesc);
        // SAFETY: valid descriptors; a null bias descriptor means no bias.
        check("dnnl_matmul_desc_init", unsafe {
            (api.matmul_desc_init)(&mut desc, &src, &wei_req, bias_ptr, &dst)
        })?;
        let mut attr = std::ptr::null_mut();
        let mut post_ops = std::ptr::null_mut();
        let mut pd = std::ptr::null_mut();
        // SAFETY: each call gets valid handles made just before; attr and
        // post_ops are destroyed below whatever happens (pd copies them).
        let status = unsafe {
            check("dnnl_primitive_attr_create", (api.attr_create)(&mut attr))?;
            let made = (|| {
                check(
                    "dnnl_primitive_attr_set_scratchpad_mode",
                    (api.attr_scratchpad)(attr, SCRATCHPAD_USER),
                )?;
                let scale = f32::from_bits(epilogue.scale);
                if scale != 1.0 {
                    // One common scale (mask 0), fixed in the primitive.
                    check(
                        "dnnl_primitive_attr_set_output_scales",
                        (api.attr_output_scales)(attr, 1, 0, &scale),
                    )?;
                }
                if epilogue.accumulate || epilogue.gelu {
                    check("dnnl_post_ops_create", (api.post_ops_create)(&mut post_ops))?;
                    if epilogue.gelu {
                        check(
                            "dnnl_post_ops_append_eltwise",
                            (api.post_ops_eltwise)(post_ops, 1.0, ELTWISE_GELU_TANH, 0.0, 0.0),
                        )?;
                    }
                    if epilogue.accumulate {
                        check(
                            "dnnl_post_ops_append_sum",
                            (api.post_ops_sum)(post_ops, 1.0),
                        )?;
                    }
                    check(
                        "dnnl_primitive_attr_set_post_ops",
                        (api.attr_post_ops)(attr, post_ops),
                    )?;
                }
                Ok::<_, OnednnError>((api.pd_create)(
                    &mut pd,
                    (&desc as *const MatmulDesc).cast(),
                    attr,
                    api.engine,
                    std::ptr::null_mut(),
                ))
            })();
            if !post_ops.is_null() {
                let _ = (api.post_ops_destroy)(post_ops);
            }
            let _ = (api.attr_destroy)(attr);
            made?
        };
        if status != DNNL_SUCCESS {
            return Err(OnednnError::NoKernel {
                dtype: dtype.name(),
                status,
            });
        }
        // SAFETY: `pd` is a valid primitive descriptor from here on; the
        // queried descriptors live as long as it and are copied out.
        unsafe {
            let mut prim = std::ptr::null_mut();
            let created = check("dnnl_primitive_create", (api.prim_create)(&mut prim, pd));
            if let Err(e) = created {
                let _ = (api.pd_destroy)(pd);
                return Err(e);
            }
            let mut name: *const c_char = std::ptr::null();
            let _ = (api.pd_query)(
                pd,
                QUERY_IMPL_INFO_STR,
                0,
                (&mut name as *mut *const c_char).cast(),
            );
            let impl_name = if name.is_null() {
                "(unknown)".to_string()
            } else {
                CStr::from_ptr(name).to_string_lossy().into_owned()
            };
            let wei = (api.pd_query_md)(pd, QUERY_WEIGHTS_MD, 0);
            let scratch = (api.pd_query_md)(pd, QUERY_SCRATCHPAD_MD, 0);
            let scratch_md = if scratch.is_null() {
                MemoryDesc::ZERO
            } else {
                *scratch
            };
            let scratch_bytes = if scratch.is_null() {
                0
            } else {
                (api.md_size)(&scratch_md)
            };
            Ok(Matmul {
                pd,
                prim,
                src,
                wei: if wei.is_null() { wei_req } else { *wei },
                dst,
                scratch: scratch_md,
                scratch_bytes,
                impl_name,
            })
        }
    }
}

/// The primitive cached in `cache` for `key`, made by `make` on first use.
fn cached<K: std::hash::Hash + Eq>(
    cache: &'static OnceLock<Mutex<HashMap<K, Arc<Matmul>>>>,
    key: K,
    make: impl FnOnce(&K) -> Result<Matmul, OnednnError>,
) -> Result<Arc<Matmul>, OnednnError> {
    let cache = cache.get_or_init(Default::default);
    // A poisoned lock only means another thread panicked mid-insert: the map is intact.
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = map.get(&key) {
        return Ok(m.clone());
    }
    let m = Arc::new(make(&key)?);
    // Bounded: a long run of new shapes (evaluation of many lengths,
    // attention's one per query block and length) must not grow it forever.
    if map.len() >= 512 {
        map.clear();
    }
    map.insert(key, m.clone());
    Ok(m)
}

impl Matmul {
    /// Executes the primitive on memory the caller holds: `src`, the weights
    /// `wei` (in their layout, which may be a reordered copy's), `dst`, and
    /// the bias row if the primitive has one; a scratchpad of its own.
    /// Every pointer must cover its descriptor and outlive the call.
    fn run(
        &self,
        api: &Api,
        src: *mut c_void,
        (wei_md, wei): (&MemoryDesc, *mut c_void),
        dst: *mut c_void,
        bias: Option<(&MemoryDesc, *mut c_void)>,
        threads: usize,
    ) -> Result<(), OnednnError> {
        let mut scratch = Aligned::new(self.scratch_bytes);
        let src = Memory::new(api, &self.src, src)?;
        let wei = Memory::new(api, wei_md, wei)?;
        let dst = Memory::new(api, &self.dst, dst)?;
        let scratch = Memory::new(api, &self.scratch, scratch.ptr())?;
        let bias = bias.map(|(md, b)| Memory::new(api, md, b)).transpose()?;
        let arg = |arg, memory| ExecArg { arg, memory };
        let args: Vec<_> = [
            arg(ARG_SRC, src.1),
            arg(ARG_WEIGHTS, wei.1),
            arg(ARG_DST, dst.1),
            arg(ARG_SCRATCHPAD, scratch.1),
        ]
        .into_iter()
        .chain(bias.as_ref().map(|b| arg(ARG_BIAS, b.1)))
        .collect();
        execute(api, self.prim, &args, threads)
    }
}

/// The cached primitive for `key`, created on first use.
fn matmul(api: &Api, key: Key) -> Result<Arc<Matmul>, OnednnError> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Matmul>>>> = OnceLock::new();
    cached(&CACHE, key, |key| Matmul::create(api, key))
}

/// What a cached batched primitive is for: `[b0, b1]` products of
/// `m x k` by `k x n`, every operand 4-D with its own strides
/// `(batch 0, batch 1, row, column)`, f32 out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BatchKey {
    dims: (usize, usize, usize, usize, usize),
    src: [usize; 4],
    wei: [usize; 4],
    dst: [usize; 4],
    dtype: Dtype,
    epilogue: Epilogue,
}

/// The cached batched primitive for `key`, created on first use.
fn batched_matmul(api: &Api, key: BatchKey) -> Result<Arc<Matmul>, OnednnError> {
    static CACHE: OnceLock<Mutex<HashMap<BatchKey, Arc<Matmul>>>> = OnceLock::new();
    cached(&CACHE, key, |key| {
        let (b0, b1, m, n, k) = key.dims;
        let dt = key.dtype.code();
        let src = api.md_nd(&[b0, b1, m, k], dt, &key.src)?;
        let wei = api.md_nd(&[b0, b1, k, n], dt, &key.wei)?;
        let dst = api.md_nd(&[b0, b1, m, n], DT_F32, &key.dst)?;
        Matmul::build(api, (src, wei, None, dst), key.epilogue, key.dtype)
    })
}

/// A batched matmul operand: f32, or bf16 converted by the caller (once
/// for many products, as attention's q, k and v per layer call).
#[derive(Debug, Clone, Copy)]
pub enum Batched<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// bf16 bit patterns ([`to_bf16`]).
    Bf16(&'a [u16]),
}

impl Batched<'_> {
    fn len(&self) -> usize {
        match self {
            Self::F32(x) => x.len(),
            Self::Bf16(x) => x.len(),
        }
    }

    fn dtype(&self) -> Dtype {
        match self {
            Self::F32(_) => Dtype::F32,
            Self::Bf16(_) => Dtype::Bf16,
        }
    }

    fn ptr(&self) -> *mut c_void {
        // oneDNN only reads a source operand: the cast to `*mut` is its C signature.
        match self {
            Self::F32(x) => x.as_ptr() as *mut c_void,
            Self::Bf16(x) => x.as_ptr() as *mut c_void,
        }
    }
}

/// The last index a 4-D operand of `dims` with `strides` touches, plus 1.
fn extent4(dims: [usize; 4], strides: [usize; 4]) -> usize {
    if dims.contains(&0) {
        return 0;
    }
    1 + dims
        .iter()
        .zip(strides)
        .map(|(&d, s)| (d - 1) * s)
        .sum::<usize>()
}

/// `dst[i, j] = (accumulate ? dst[i, j] : 0) + scale * lhs[i, j] @ rhs[i, j]`
/// for every `i < b0`, `j < b1`
/// on oneDNN, one primitive for all `b0 * b1` products of `m x k` by
/// `k x n`; every operand strided `(batch 0, batch 1, row, column)` (so
/// per-head views inside a fused projection and the merged output layout
/// are read and written in place), `dst` f32. Both operands have one dtype:
/// f32, or bf16 with f32 accumulation.
pub fn batched_gemm(
    (b0, b1, m, n, k): (usize, usize, usize, usize, usize),
    dst: (&mut [f32], [usize; 4]),
    lhs: (Batched<'_>, [usize; 4]),
    rhs: (Batched<'_>, [usize; 4]),
    (scale, accumulate): (f32, bool),
    threads: usize,
) -> Result<(), OnednnError> {
    let api = api()?;
    let dtype = lhs.0.dtype();
    if rhs.0.dtype() != dtype {
        return Err(OnednnError::Dtypes);
    }
    if [b0, b1, m, n].contains(&0) {
        return Ok(());
    }
    if dst.0.len() < extent4([b0, b1, m, n], dst.1) {
        return Err(OnednnError::Shape("dst"));
    }
    if k == 0 {
        // An empty sum: 0 (oneDNN rejects k = 0).
        if !accumulate {
            let s = dst.1;
            for i in 0..b0 * b1 * m {
                let at = (i / (b1 * m)) * s[0] + (i / m % b1) * s[1] + (i % m) * s[2];
                (0..n).for_each(|c| dst.0[at + c * s[3]] = 0.0);
            }
        }
        return Ok(());
    }
    if lhs.0.len() < extent4([b0, b1, m, k], lhs.1) {
        return Err(OnednnError::Shape("lhs"));
    }
    if rhs.0.len() < extent4([b0, b1, k, n], rhs.1) {
        return Err(OnednnError::Shape("rhs"));
    }
    let key = BatchKey {
        dims: (b0, b1, m, n, k),
        src: lhs.1,
        wei: rhs.1,
        dst: dst.1,
        dtype,
        epilogue: Epilogue {
            scale: scale.to_bits(),
            ..Epilogue::plain(accumulate)
        },
    };
    let mm = batched_matmul(api, key)?;
    mm.run(
        api,
        lhs.0.ptr(),
        (&mm.wei, rhs.0.ptr()),
        dst.0.as_mut_ptr().cast(),
        None,
        threads,
    )
}

/// The implementation oneDNN picks for attention's batched QK^T in `dtype`
/// (12 heads of 128 queries, 64 wide, against 512 keys read in place from a
/// fused projection), for the start-up log.
pub fn batched_implementation(dtype: Dtype) -> Result<String, OnednnError> {
    let api = api()?;
    let (t, h, hd) = (512, 12, 64);
    let row = 3 * h * hd;
    let key = BatchKey {
        dims: (1, h, 128, t, hd),
        src: [t * row, hd, row, 1],
        wei: [t * row, hd, 1, row],
        dst: [h * 128 * t, 128 * t, t, 1],
        dtype,
        epilogue: Epilogue::plain(false),
    };
    Ok(batched_matmul(api, key)?.impl_name.clone())
}

/// A 64-byte aligned byte buffer (oneDNN's preferred alignment).
struct Aligned {
    buf: Vec<u8>,
    offset: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let buf = vec![0u8; len + 64];
        let offset = buf.as_ptr().align_offset(64).min(64);
        Self { buf, offset, len }
    }

    fn ptr(&mut self) -> *mut c_void {
        self.buf[self.offset..self.offset + self.len]
            .as_mut_ptr()
            .cast()
    }
}

/// One weight reordered into a primitive's preferred layout.
struct Reordered {
    /// Where the f32 weight was and how it was read: `(address, k, n, rs, cs)`.
    source: (usize, usize, usize, usize, usize),
    md: MemoryDesc,
    data: Aligned,
}

/// A weight's oneDNN copies (bf16, in the primitive's layout), made on first
/// use: one set of weights each (a network is built again after every
/// optimizer step), a few entries where one weight is read in blocks (the
/// evaluation loss's vocabulary blocks).
#[derive(Default)]
#[allow(private_interfaces)]
pub struct WeightSlot(Mutex<Vec<Reordered>>);

impl std::fmt::Debug for WeightSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|v| v.len()).unwrap_or(0);
        write!(f, "WeightSlot({n} reordered)")
    }
}

/// A memory object over a caller's buffer, destroyed on drop.
struct Memory<'a>(&'a Api, Handle);

impl<'a> Memory<'a> {
    fn new(api: &'a Api, md: &MemoryDesc, data: *mut c_void) -> Result<Self, OnednnError> {
        let mut h = std::ptr::null_mut();
        // SAFETY: a valid descriptor and engine; `data` holds md's size bytes
        // (the callers' invariant) and outlives the memory object.
        check("dnnl_memory_create", unsafe {
            (api.mem_create)(&mut h, md, api.engine, data)
        })?;
        Ok(Self(api, h))
    }
}

impl Drop for Memory<'_> {
    fn drop(&mut self) {
        // SAFETY: created by dnnl_memory_create, destroyed once.
        unsafe {
            let _ = (self.0.mem_destroy)(self.1);
        }
    }
}

/// Executes `prim` with `args` on this thread's stream and waits for it.
fn execute(api: &Api, prim: Handle, args: &[ExecArg], threads: usize) -> Result<(), OnednnError> {
    api.set_threads(threads);
    with_stream(api, |stream| {
        // SAFETY: every memory in `args` is valid for the primitive's
        // descriptors and outlives the call, which waits for completion.
        unsafe {
            check(
                "dnnl_primitive_execute",
                (api.prim_execute)(prim, stream, args.len() as c_int, args.as_ptr()),
            )?;
            check("dnnl_stream_wait", (api.stream_wait)(stream))
        }
    })
}

/// Reorders the f32 weight `b` (`k x n`, strides `(rs, cs)`) into `md`.
fn reorder(
    api: &Api,
    b: &[f32],
    (k, n): (usize, usize),
    (rs, cs): (usize, usize),
    md: &MemoryDesc,
    threads: usize,
) -> Result<Aligned, OnednnError> {
    let src_md = api.md_strided((k, n), DT_F32, (rs, cs))?;
    // SAFETY: `b` covers src_md (checked by the callers) and is only read.
    unsafe { reorder_from(api, &src_md, b.as_ptr() as *mut c_void, md, threads) }
}

/// Reorders the memory at `src` (laid out as `src_md`) into a new buffer
/// laid out as `md`.
///
/// # Safety
/// `src` must hold `src_md`'s size in bytes; it is only read.
unsafe fn reorder_from(
    api: &Api,
    src_md: &MemoryDesc,
    src: *mut c_void,
    md: &MemoryDesc,
    threads: usize,
) -> Result<Aligned, OnednnError> {
    // SAFETY: a valid descriptor.
    let bytes = unsafe { (api.md_size)(md) };
    let mut out = Aligned::new(bytes);
    let mut pd = std::ptr::null_mut();
    // SAFETY: valid descriptors and engine; pd and the primitive are
    // destroyed before returning; `src` covers src_md (the caller's contract).
    unsafe {
        check(
            "dnnl_reorder_primitive_desc_create",
            (api.reorder_pd_create)(
                &mut pd,
                src_md,
                api.engine,
                md,
                api.engine,
                std::ptr::null_mut(),
            ),
        )?;
        let mut prim = std::ptr::null_mut();
        let made = check("dnnl_primitive_create", (api.prim_create)(&mut prim, pd));
        let _ = (api.pd_destroy)(pd);
        made?;
        let run = (|| {
            let src = Memory::new(api, src_md, src)?;
            let dst = Memory::new(api, md, out.ptr())?;
            execute(
                api,
                prim,
                &[
                    ExecArg {
                        arg: ARG_SRC,
                        memory: src.1,
                    },
                    ExecArg {
                        arg: ARG_DST,
                        memory: dst.1,
                    },
                ],
                threads,
            )
        })();
        let _ = (api.prim_destroy)(prim);
        run?;
    }
    Ok(out)
}

/// The last index a `rows x cols` matrix with these strides touches, plus 1.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// An operand as oneDNN reads it: f32 in place, or a dense copy.
enum Operand<'a> {
    F32(&'a [f32], (usize, usize)),
    F32Copy(Vec<f32>, (usize, usize)),
    Bf16(Vec<u16>, (usize, usize)),
}

impl Operand<'_> {
    fn strides(&self) -> (usize, usize) {
        match self {
            Self::F32(_, s) | Self::F32Copy(_, s) | Self::Bf16(_, s) => *s,
        }
    }

    fn ptr(&mut self) -> *mut c_void {
        match self {
            // oneDNN only reads a source operand: the cast to `*mut` is its C signature.
            Self::F32(d, _) => d.as_ptr() as *mut c_void,
            Self::F32Copy(d, _) => d.as_mut_ptr().cast(),
            Self::Bf16(d, _) => d.as_mut_ptr().cast(),
        }
    }
}

/// `x` (`rows x cols`, strides `(rs, cs)`) for oneDNN in `dtype`: f32 as it
/// lies when one stride is 1, else (and for bf16) a dense copy in the same
/// orientation (a transposed operand stays transposed: converting it in
/// memory order is a straight pass).
fn operand(
    x: &[f32],
    (rows, cols): (usize, usize),
    (rs, cs): (usize, usize),
    dtype: Dtype,
) -> Operand<'_> {
    use rayon::prelude::*;
    if dtype == Dtype::F32 && (cs == 1 || rs == 1) {
        return Operand::F32(x, (rs, cs));
    }
    // Column-major (stride 1 down a column) when that is how it lies.
    let col_major = rs == 1 && cs != 1;
    let (dense, inner) = if col_major {
        ((1, rows), rows)
    } else {
        ((cols, 1), cols)
    };
    let at = |o: usize, i: usize| {
        if col_major {
            x[o * cs + i * rs]
        } else {
            x[o * rs + i * cs]
        }
    };
    match dtype {
        Dtype::F32 => {
            let mut out = vec![0f32; rows * cols];
            out.par_chunks_mut(inner.max(1))
                .enumerate()
                .for_each(|(o, line)| {
                    for (i, v) in line.iter_mut().enumerate() {
                        *v = at(o, i);
                    }
                });
            Operand::F32Copy(out, dense)
        }
        Dtype::Bf16 => {
            let mut out = vec![0u16; rows * cols];
            out.par_chunks_mut(inner.max(1))
                .enumerate()
                .for_each(|(o, line)| {
                    for (i, v) in line.iter_mut().enumerate() {
                        *v = to_bf16(at(o, i));
                    }
                });
            Operand::Bf16(out, dense)
        }
    }
}

/// `dst[m x n] = (accumulate ? dst : 0) + lhs[m x k] @ rhs[k x n]` on
/// oneDNN, operands given as (slice, row stride, column stride) and `dst`
/// row-major with row stride `dst_rs`, as [`super::gemm::gemm_f32`]. In
/// bf16 with a `slot` (a weight), `rhs` is reordered into the primitive's
/// layout once and kept there; without one (an activation) it is converted
/// for this call.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    dtype: Dtype,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
    slot: Option<&WeightSlot>,
    threads: usize,
) -> Result<(), OnednnError> {
    let plain = Fused {
        accumulate,
        bias: None,
        gelu: false,
    };
    gemm_fused(
        dtype,
        (m, n, k),
        dst,
        dst_rs,
        plain,
        lhs,
        rhs,
        slot,
        threads,
    )
}

/// What [`gemm_fused`] does to the product before it lands in `dst`.
#[derive(Debug, Clone, Copy)]
pub struct Fused<'a> {
    /// Sum into `dst` instead of overwriting it.
    pub accumulate: bool,
    /// A bias (`n` values) added to every row, by oneDNN's bias argument.
    pub bias: Option<&'a [f32]>,
    /// `gelu_new` (the tanh form) after the bias, as an eltwise post-op
    /// (before the sum when `accumulate`).
    pub gelu: bool,
}

/// [`gemm`] with oneDNN's epilogue: `dst = (accumulate ? dst : 0) +
/// gelu?(lhs @ rhs + bias)`, the bias and GELU applied by the primitive
/// itself (GPT-2's projections in evaluation: no pre-filled bias, no
/// second pass over the output for GELU).
#[allow(clippy::too_many_arguments)]
pub fn gemm_fused(
    dtype: Dtype,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    fused: Fused<'_>,
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
    slot: Option<&WeightSlot>,
    threads: usize,
) -> Result<(), OnednnError> {
    let Fused {
        accumulate,
        bias,
        gelu,
    } = fused;
    let api = api()?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let dst_rs = if m == 1 { n } else { dst_rs };
    if dst_rs < n || dst.len() < extent(m, n, dst_rs, 1) {
        return Err(OnednnError::Shape("dst"));
    }
    if bias.is_some_and(|b| b.len() < n) {
        return Err(OnednnError::Shape("bias"));
    }
    if k == 0 {
        empty_product(dst, (m, n, dst_rs), fused);
        return Ok(());
    }
    if lhs.0.len() < extent(m, k, lhs.1, lhs.2) {
        return Err(OnednnError::Shape("lhs"));
    }
    let slot = slot.filter(|_| dtype == Dtype::Bf16);
    // An empty `rhs` with a slot: a sealed weight, read from its copies only.
    let sealed = rhs.0.is_empty() && slot.is_some();
    if !sealed && rhs.0.len() < extent(k, n, rhs.1, rhs.2) {
        return Err(OnednnError::Shape("rhs"));
    }
    let mut a = operand(lhs.0, (m, k), (lhs.1, lhs.2), dtype);
    let mut b = match slot {
        Some(_) => None,
        None => Some(operand(rhs.0, (k, n), (rhs.1, rhs.2), dtype)),
    };
    let key = Key {
        m,
        k,
        n,
        a: a.strides(),
        b: b.as_ref().map(Operand::strides),
        dst_rs,
        dtype,
        epilogue: Epilogue {
            bias: bias.is_some(),
            gelu,
            ..Epilogue::plain(accumulate)
        },
    };
    let mm = matmul(api, key)?;
    let bias_md = match bias {
        Some(_) => Some(api.md_nd(&[1, n], DT_F32, &[n, 1])?),
        None => None,
    };
    // oneDNN only reads the bias: the cast to `*mut` is its C signature.
    let bias = bias_md
        .as_ref()
        .zip(bias.map(|b| b.as_ptr() as *mut c_void));
    let (src, dst) = (a.ptr(), dst.as_mut_ptr().cast());
    let run = |wei| mm.run(api, src, wei, dst, bias, threads);
    match (slot, b.as_mut()) {
        (_, Some(b)) => run((&mm.wei, b.ptr())),
        (Some(slot), None) => {
            let mut held = slot.0.lock().unwrap_or_else(|e| e.into_inner());
            let at = reordered(api, &mut held, rhs, (k, n), &mm.wei, sealed, threads)?;
            let r = &mut held[at];
            run((&r.md, r.data.ptr()))
        }
        (None, None) => Err(OnednnError::Shape("rhs")),
    }
}

/// What [`gemm_fused`] writes for a product with `k = 0` (which oneDNN
/// rejects): the epilogue of 0 in each of `m` rows of `n` (`dst_rs` apart).
fn empty_product(dst: &mut [f32], (m, n, dst_rs): (usize, usize, usize), fused: Fused<'_>) {
    let mut row = fused.bias.map_or_else(|| vec![0.0; n], |b| b[..n].to_vec());
    if fused.gelu {
        row = super::activations::gelu_slice(&row);
    }
    for i in 0..m {
        let d = &mut dst[i * dst_rs..i * dst_rs + n];
        if fused.accumulate {
            d.iter_mut().zip(&row).for_each(|(d, r)| *d += r);
        } else {
            d.copy_from_slice(&row);
        }
    }
}

/// The index in `held` of weight `rhs`'s copy in layout `md`, made first
/// if missing: from the f32 weight, or for a `sealed` weight (its f32
/// values dropped) from a copy it already has in another layout.
fn reordered(
    api: &Api,
    held: &mut Vec<Reordered>,
    rhs: (&[f32], usize, usize),
    (k, n): (usize, usize),
    md: &MemoryDesc,
    sealed: bool,
    threads: usize,
) -> Result<usize, OnednnError> {
    let source = (rhs.0.as_ptr() as usize, k, n, rhs.1, rhs.2);
    // A sealed weight's address is gone: its slot holds that weight only.
    let same = |r: &Reordered| {
        if sealed {
            (r.source.1, r.source.2, r.source.3, r.source.4) == (k, n, rhs.1, rhs.2)
        } else {
            r.source == source
        }
    };
    // SAFETY (md_equal): both are valid descriptors.
    if let Some(at) = held
        .iter()
        .position(|r| same(r) && unsafe { (api.md_equal)(&r.md, md) } != 0)
    {
        return Ok(at);
    }
    let data = if sealed {
        let from = held
            .iter_mut()
            .find(|r| same(r))
            .ok_or(OnednnError::Shape("rhs (a sealed weight without a copy)"))?;
        tracing::debug!("oneDNN: a sealed {k}x{n} weight reordered into a second layout");
        // SAFETY: `from.data` holds `from.md`'s size in bytes (made by `reorder`).
        unsafe { reorder_from(api, &from.md, from.data.ptr(), md, threads)? }
    } else {
        reorder(api, rhs.0, (k, n), (rhs.1, rhs.2), md, threads)?
    };
    held.push(Reordered {
        source,
        md: *md,
        data,
    });
    Ok(held.len() - 1)
}

/// Reorders the f32 weight `rhs` (`k x n`) into `slot` now, in the bf16
/// layout the primitive of an `m`-row product prefers (with a bias row if
/// `bias`, as the caller's forward GEMM will have), so that the f32 values
/// can be dropped: a later [`gemm`] or [`gemm_fused`] with an empty `rhs`
/// and this slot reads the copy (and reorders it again for a product whose
/// primitive prefers another layout).
pub fn prepack(
    m: usize,
    (k, n): (usize, usize),
    rhs: (&[f32], usize, usize),
    bias: bool,
    slot: &WeightSlot,
    threads: usize,
) -> Result<(), OnednnError> {
    let api = api()?;
    if rhs.0.len() < extent(k, n, rhs.1, rhs.2) {
        return Err(OnednnError::Shape("rhs"));
    }
    let key = Key {
        m: m.max(1),
        k,
        n,
        a: (k, 1),
        b: None,
        dst_rs: n,
        dtype: Dtype::Bf16,
        epilogue: Epilogue {
            bias,
            ..Epilogue::plain(false)
        },
    };
    let mm = matmul(api, key)?;
    let mut held = slot.0.lock().unwrap_or_else(|e| e.into_inner());
    reordered(api, &mut held, rhs, (k, n), &mm.wei, false, threads).map(|_| ())
}

/// The implementation oneDNN picks on this CPU for a model-like GEMM in
/// `dtype` ("brg:avx512_core_amx" and the like), or why it cannot run it
/// ([`OnednnError::NoKernel`] for bf16 on a CPU without a bf16 kernel).
pub fn implementation(dtype: Dtype) -> Result<String, OnednnError> {
    let api = api()?;
    let key = Key {
        m: 1024,
        k: 768,
        n: 768,
        a: (768, 1),
        b: match dtype {
            Dtype::F32 => Some((768, 1)),
            Dtype::Bf16 => None,
        },
        dst_rs: 768,
        dtype,
        epilogue: Epilogue::plain(false),
    };
    Ok(matmul(api, key)?.impl_name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_sizes_match_the_c_headers() {
        // The sizes `sizeof` gives for oneDNN 2.6's dnnl_types.h on x86-64
        // (a C program against /usr/include/oneapi/dnnl/dnnl.h); the C side
        // is checked by `sizes_match_a_c_program` where a compiler is present.
        assert_eq!(std::mem::size_of::<MemoryDesc>(), 696);
        assert_eq!(std::mem::align_of::<MemoryDesc>(), 8);
        assert_eq!(std::mem::size_of::<MatmulDesc>(), 2800);
        assert_eq!(std::mem::size_of::<ExecArg>(), 16);
    }

    #[test]
    #[cfg_attr(
        not(have_onednn),
        ignore = "needs libdnnl.so.2 and dnnl.h (apt-get install libdnnl-dev)"
    )]
    fn sizes_match_a_c_program() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("sz.c");
        std::fs::write(
            &c,
            "#include <stdio.h>\n#include <oneapi/dnnl/dnnl.h>\nint main(){printf(\"%zu %zu %zu %d %d %d %d %d %d %d\", \
             sizeof(dnnl_memory_desc_t), sizeof(dnnl_matmul_desc_t), sizeof(dnnl_exec_arg_t), \
             (int)dnnl_bf16, (int)dnnl_f32, (int)dnnl_format_tag_any, (int)DNNL_ARG_SCRATCHPAD, \
             (int)dnnl_query_impl_info_str, (int)DNNL_ARG_BIAS, (int)dnnl_eltwise_gelu_tanh);return 0;}\n",
        )
        .unwrap();
        let exe = dir.path().join("sz");
        let Ok(out) = std::process::Command::new("cc")
            .arg(&c)
            .arg("-o")
            .arg(&exe)
            .output()
        else {
            eprintln!("no C compiler: the sizes are checked against the constants only");
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = std::process::Command::new(&exe).output().unwrap();
        let got = String::from_utf8(out.stdout).unwrap();
        let want = format!(
            "{MEMORY_DESC_SIZE} {MATMUL_DESC_SIZE} {} {DT_BF16} {DT_F32} {TAG_ANY} {ARG_SCRATCHPAD} {QUERY_IMPL_INFO_STR} {ARG_BIAS} {ELTWISE_GELU_TANH}",
            std::mem::size_of::<ExecArg>()
        );
        assert_eq!(got, want);
    }

    /// A deterministic value in [-1, 1).
    fn value(i: usize, salt: usize) -> f32 {
        let x = (i as u64 + 1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(salt as u64 * 0xBF58_476D_1CE4_E5B9);
        ((x >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }

    #[test]
    #[cfg_attr(
        not(have_onednn),
        ignore = "needs libdnnl.so.2 (apt-get install libdnnl-dev)"
    )]
    fn matches_the_f64_definition_on_odd_shapes_and_every_transpose() {
        use super::super::gemm_bf16::from_bf16;
        let bf16_ok = implementation(Dtype::Bf16).is_ok();
        if !bf16_ok {
            eprintln!("oneDNN has no bf16 kernel on this CPU: f32 only");
        }
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 5, 7),
            (17, 33, 65),
            (1, 64, 50),
            (64, 1, 9),
            (40, 96, 1),
            (129, 200, 257),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| value(i, 1)).collect();
            let b: Vec<f32> = (0..k * n).map(|i| value(i, 2)).collect();
            let a_t: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let b_t: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            for dtype in [Dtype::F32, Dtype::Bf16] {
                if dtype == Dtype::Bf16 && !bf16_ok {
                    continue;
                }
                let round = |x: f32| match dtype {
                    Dtype::F32 => x as f64,
                    Dtype::Bf16 => from_bf16(to_bf16(x)) as f64,
                };
                for accumulate in [false, true] {
                    // Forward (A·B), dx = g·Wᵀ (B transposed), dW = xᵀ·g
                    // (A transposed), and both; with and without a weight slot.
                    for (a_op, a_rs, a_cs) in [(&a, k, 1), (&a_t, 1, m)] {
                        for (b_op, b_rs, b_cs) in [(&b, n, 1), (&b_t, 1, k)] {
                            for with_slot in [false, true] {
                                let slot = WeightSlot::default();
                                let c_rs = n + 3;
                                let mut c = vec![0.25f32; m * c_rs];
                                // Twice through the slot: the second call reuses the reorder.
                                for _ in 0..if with_slot { 2 } else { 1 } {
                                    c.iter_mut().for_each(|x| *x = 0.25);
                                    gemm(
                                        dtype,
                                        (m, n, k),
                                        &mut c,
                                        c_rs,
                                        accumulate,
                                        (a_op, a_rs, a_cs),
                                        (b_op, b_rs, b_cs),
                                        with_slot.then_some(&slot),
                                        2,
                                    )
                                    .unwrap();
                                }
                                for i in 0..m {
                                    for j in 0..n {
                                        let (mut want, mut scale) = if accumulate {
                                            (0.25f64, 0.25f64)
                                        } else {
                                            (0.0, 0.0)
                                        };
                                        for p in 0..k {
                                            let t = round(a[i * k + p]) * round(b[p * n + j]);
                                            want += t;
                                            scale += t.abs();
                                        }
                                        let got = c[i * c_rs + j] as f64;
                                        let tol =
                                            (k as f64 + 2.0) * f32::EPSILON as f64 * scale + 1e-30;
                                        assert!(
                                            (got - want).abs() <= tol,
                                            "{dtype:?} m{m} k{k} n{n} acc{accumulate} a({a_rs},{a_cs}) \
                                             b({b_rs},{b_cs}) slot{with_slot} ({i},{j}): {got} vs {want}"
                                        );
                                    }
                                    assert!(
                                        c[i * c_rs + n..(i + 1) * c_rs].iter().all(|&x| x == 0.25),
                                        "padding of row {i} written"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Checks `batched_gemm` against the f64 definition for one layout of
    /// each operand, `dtype` rounding the inputs as oneDNN does.
    #[allow(clippy::type_complexity)]
    fn check_batched(
        dtype: Dtype,
        (b0, b1, m, n, k): (usize, usize, usize, usize, usize),
        (lhs, ls): (&[f32], [usize; 4]),
        (rhs, rs): (&[f32], [usize; 4]),
        ds: [usize; 4],
        (scale, accumulate): (f32, bool),
        rel: f64,
    ) {
        use super::super::gemm_bf16::from_bf16;
        let len = extent4([b0, b1, m, n], ds) + 5;
        let mut dst = vec![7.5f32; len];
        let (l16, r16): (Vec<u16>, Vec<u16>) = (
            lhs.iter().map(|&x| to_bf16(x)).collect(),
            rhs.iter().map(|&x| to_bf16(x)).collect(),
        );
        let (l, r) = match dtype {
            Dtype::F32 => (Batched::F32(lhs), Batched::F32(rhs)),
            Dtype::Bf16 => (Batched::Bf16(&l16), Batched::Bf16(&r16)),
        };
        batched_gemm(
            (b0, b1, m, n, k),
            (&mut dst, ds),
            (l, ls),
            (r, rs),
            (scale, accumulate),
            2,
        )
        .unwrap();
        let round = |x: f32| match dtype {
            Dtype::F32 => x as f64,
            Dtype::Bf16 => from_bf16(to_bf16(x)) as f64,
        };
        let at = |s: [usize; 4], i: usize, j: usize, r: usize, c: usize| {
            i * s[0] + j * s[1] + r * s[2] + c * s[3]
        };
        let mut written = vec![false; len];
        for i in 0..b0 {
            for j in 0..b1 {
                for r in 0..m {
                    for c in 0..n {
                        let (mut want, mut mag) = (0f64, 0f64);
                        for p in 0..k {
                            let t = round(lhs[at(ls, i, j, r, p)]) * round(rhs[at(rs, i, j, p, c)]);
                            want += t;
                            mag += t.abs();
                        }
                        want *= scale as f64;
                        mag *= (scale as f64).abs();
                        if accumulate {
                            want += 7.5;
                            mag += 7.5;
                        }
                        let o = at(ds, i, j, r, c);
                        written[o] = true;
                        let got = dst[o] as f64;
                        assert!(
                            (got - want).abs() <= rel * mag + 1e-30,
                            "{dtype:?} [{b0},{b1}] m{m} n{n} k{k} ({i},{j},{r},{c}): {got} vs {want}"
                        );
                    }
                }
            }
        }
        for (o, w) in written.iter().enumerate() {
            assert!(
                *w || dst[o] == 7.5,
                "{dtype:?}: dst[{o}] outside the product written"
            );
        }
    }

    #[test]
    #[cfg_attr(
        not(have_onednn),
        ignore = "needs libdnnl.so.2 (apt-get install libdnnl-dev)"
    )]
    fn batched_matches_the_f64_definition_on_strided_operands() {
        let bf16_ok = implementation(Dtype::Bf16).is_ok();
        if !bf16_ok {
            eprintln!("oneDNN has no bf16 kernel on this CPU: f32 only");
        }
        for &(b0, b1, m, n, k) in &[
            (1, 1, 1, 1, 1),
            (2, 3, 5, 7, 3),
            (2, 3, 17, 33, 9),
            (1, 2, 130, 131, 16),
        ] {
            // q and k as in a fused projection `[b0 * rows, 3 * b1 * k]`
            // (plus a column of padding): head j at column j * k, rows
            // `row` apart; k read transposed (QK^T); the output merged
            // `[b0 * m, b1 * n]` with two columns of padding.
            let rows = m.max(n);
            let row = 3 * b1 * k + 1;
            let fused: Vec<f32> = (0..b0 * rows * row).map(|i| value(i, 3)).collect();
            let qs = [rows * row, k, row, 1];
            let kt = [rows * row, k, 1, row];
            let merged = [m * (b1 * n + 2), n, b1 * n + 2, 1];
            // And PV's shape: dense probabilities times v in place.
            let p: Vec<f32> = (0..b0 * b1 * m * rows).map(|i| value(i, 4)).collect();
            let ps = [b1 * m * rows, m * rows, rows, 1];
            let vs = [rows * row, k, row, 1];
            for dtype in [Dtype::F32, Dtype::Bf16] {
                if dtype == Dtype::Bf16 && !bf16_ok {
                    continue;
                }
                let rel = match dtype {
                    Dtype::F32 => 1e-4,
                    Dtype::Bf16 => 2e-2,
                };
                check_batched(
                    dtype,
                    (b0, b1, m, n, k),
                    (&fused, qs),
                    (&fused[b1 * k..], kt),
                    merged,
                    (0.125, false),
                    rel,
                );
                let out = [m * b1 * k, k, b1 * k, 1];
                check_batched(
                    dtype,
                    (b0, b1, m, k, n.min(rows)),
                    (&p, ps),
                    (&fused[2 * b1 * k..], vs),
                    out,
                    (1.0, false),
                    rel,
                );
                // Backward's dV += P^T dO: the probabilities read
                // transposed, summed into dst, with a scale.
                let pt = [b1 * m * rows, m * rows, 1, rows];
                let dense = [b1 * n * k, n * k, k, 1];
                check_batched(
                    dtype,
                    (b0, b1, n, k, m),
                    (&p, pt),
                    (&fused, qs),
                    dense,
                    (0.5, true),
                    rel,
                );
            }
        }
    }

    #[test]
    #[cfg_attr(
        not(have_onednn),
        ignore = "needs libdnnl.so.2 (apt-get install libdnnl-dev)"
    )]
    fn batched_short_operands_are_errors_and_empty_sums_zero() {
        let dense = |r: usize, c: usize| [2 * r * c, r * c, c, 1];
        let (a, b) = ([1.0f32; 2 * 2 * 3], [1.0f32; 2 * 3 * 4]);
        let mut c = [5.0f32; 2 * 2 * 4];
        let run = |c: &mut [f32], a: &[f32], b: &[f32], k: usize, acc: bool| {
            batched_gemm(
                (1, 2, 2, 4, k),
                (c, dense(2, 4)),
                (Batched::F32(a), dense(2, k)),
                (Batched::F32(b), dense(k, 4)),
                (1.0, acc),
                1,
            )
        };
        assert_eq!(
            run(&mut c, &a[..11], &b, 3, false),
            Err(OnednnError::Shape("lhs"))
        );
        assert_eq!(
            run(&mut c, &a, &b[..23], 3, false),
            Err(OnednnError::Shape("rhs"))
        );
        assert_eq!(
            run(&mut c[..15], &a, &b, 3, false),
            Err(OnednnError::Shape("dst"))
        );
        let a16 = [0u16; 12];
        let e = batched_gemm(
            (1, 2, 2, 4, 3),
            (&mut c, dense(2, 4)),
            (Batched::Bf16(&a16), dense(2, 3)),
            (Batched::F32(&b), dense(3, 4)),
            (1.0, false),
            1,
        );
        assert_eq!(e, Err(OnednnError::Dtypes));
        assert!(c.iter().all(|&x| x == 5.0), "a refused call wrote dst");
        run(&mut c, &a, &b, 3, true).unwrap();
        assert!(c.iter().all(|&x| x == 8.0), "{c:?}");
        run(&mut c, &[], &[], 0, true).unwrap();
        assert!(c.iter().all(|&x| x == 8.0), "{c:?}");
        run(&mut c, &[], &[], 0, false).unwrap();
        assert!(c.iter().all(|&x| x == 0.0), "{c:?}");
    }

    #[test]
    #[cfg_attr(
        not(have_onednn),
        ignore = "needs libdnnl.so.2 (apt-get install libdnnl-dev)"
    )]
    fn short_operands_are_errors_not_overreads() {
        let mut c = [0.0; 6];
        let e = gemm(
            Dtype::F32,
            (2, 3, 2),
            &mut c,
            3,
            false,
            (&[0.0; 3], 2, 1),
            (&[0.0; 6], 3, 1),
            None,
            1,
        );
        assert_eq!(e, Err(OnednnError::Shape("lhs")));
        let e = gemm(
            Dtype::F32,
            (2, 3, 2),
            &mut c[..5],
            3,
            false,
            (&[0.0; 4], 2, 1),
            (&[0.0; 6], 3, 1),
            None,
            1,
        );
        assert_eq!(e, Err(OnednnError::Shape("dst")));
        let e = gemm(
            Dtype::F32,
            (2, 3, 2),
            &mut c,
            3,
            false,
            (&[0.0; 4], 2, 1),
            (&[0.0; 5], 3, 1),
            None,
            1,
        );
        assert_eq!(e, Err(OnednnError::Shape("rhs")));
    }

    #[test]
    #[cfg_attr(
        not(have_onednn),
        ignore = "needs libdnnl.so.2 (apt-get install libdnnl-dev)"
    )]
    fn names_its_implementation() {
        let name = implementation(Dtype::F32).unwrap();
        assert!(!name.is_empty() && name != "(unknown)", "{name}");
        let name = batched_implementation(Dtype::F32).unwrap();
        assert!(!name.is_empty() && name != "(unknown)", "{name}");
        assert!(available().unwrap().starts_with("2."));
    }
}
