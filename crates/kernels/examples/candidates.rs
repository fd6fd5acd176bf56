//! Kernel candidates for 16-bit weights, measured side by side on the Qwen3-0.6B shapes
//! (issue 9: "measure the candidates before choosing, each installed as a fresh machine would
//! get it"):
//!
//! - oneDNN `dnnl_gemm_bf16bf16f32` (Debian `libdnnl-dev`; what PyTorch runs on CPU), bf16 X
//!   and W, f32 Y; threads from OpenMP (`OMP_NUM_THREADS`).
//! - OpenBLAS `cblas_sbgemm` (Debian `libopenblas-dev`), if the library exports it, with
//!   `openblas_set_num_threads`; and OpenBLAS `cblas_sgemm` on the weights widened to f32.
//! - candle's f16 matmul (the `gemm` crate's f16 kernels: f16 X, W and Y) and candle's f32
//!   matmul on widened weights (what claas ran before its 16-bit kernels: the baseline).
//! - ours: `claas_kernels::gemm_bf16` (and `gemv_bf16` at m = 1), f32 X, bf16 W, f32 Y,
//!   through the public API, so it measures whatever the crate holds when it runs.
//!
//! oneDNN and OpenBLAS are opened at run time with `libloading`: the workspace never links
//! them, and a missing library prints "not installed" and its columns stay empty.
//!
//! Run (both thread counts, one child process each so every library reads its own thread
//! variable at start-up):
//!
//! ```text
//! sudo apt-get install -y libdnnl-dev libopenblas-dev
//! cargo run --release -p claas-kernels --features bench --example candidates
//! ```
//!
//! Options: `--threads 1,2` (default), `--quick` (m = 1 and 320 only). `CLAAS_DNNL_LIB` /
//! `CLAAS_OPENBLAS_LIB` name another library file to load.
//!
//! Every result is checked against an f64 reference computed from the same weights and the
//! f32 activations; the error column is `max|y − ref| / max|ref|`. A wrong call (transpose
//! flags, leading dimensions) gives an error of order 1 and is flagged `WRONG`; the run then
//! exits with status 1.

use std::ffi::{c_char, c_int, CStr};
use std::process::{Command, ExitCode};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use half::bf16;
use libloading::{Library, Symbol};

/// (label, k, n): the Qwen3-0.6B projections `Y[m×n] = X[m×k]·Wᵀ`.
const PROJECTIONS: &[(&str, usize, usize)] = &[
    ("q 1024→2048", 1024, 2048),
    ("k/v 1024→1024", 1024, 1024),
    ("gate/up 1024→3072", 1024, 3072),
    ("o 2048→1024", 2048, 1024),
    ("down 3072→1024", 3072, 1024),
];
const LM_HEAD: (&str, usize, usize) = ("LM head 1024→151936", 1024, 151936);
const MS: &[usize] = &[1, 8, 64, 320];

/// At m ≤ [`STREAM_MAX_M`] each candidate cycles through copies of its weights adding up to
/// this many bytes (2.5× the 105 MiB L3), so weights come from DRAM as in a decode step, where
/// every layer's weights are read once per token. Larger m are compute-bound: one copy.
const STREAM_BYTES: usize = 256 << 20;
const STREAM_MAX_M: usize = 8;
/// Each measurement repeats passes over all copies for at least this long (and 3 passes),
/// keeping the fastest: on a shared machine other load only ever slows a pass down.
const MIN_SECS: f64 = 0.3;
/// Above this normalised error a result is a wrong call, not rounding (16-bit X gives ~1e-3).
const WRONG_ABOVE: f64 = 2e-2;

const CBLAS_ROW_MAJOR: c_int = 101;
const CBLAS_NO_TRANS: c_int = 111;
const CBLAS_TRANS: c_int = 112;

type DnnlGemmBf16 = unsafe extern "C" fn(
    transa: c_char,
    transb: c_char,
    m: i64,
    n: i64,
    k: i64,
    alpha: f32,
    a: *const u16,
    lda: i64,
    b: *const u16,
    ldb: i64,
    beta: f32,
    c: *mut f32,
    ldc: i64,
) -> c_int;

#[repr(C)]
struct DnnlVersion {
    major: c_int,
    minor: c_int,
    patch: c_int,
    hash: *const c_char,
    cpu_runtime: u32,
    gpu_runtime: u32,
}

type CblasSbgemm = unsafe extern "C" fn(
    order: c_int,
    transa: c_int,
    transb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    a: *const u16,
    lda: c_int,
    b: *const u16,
    ldb: c_int,
    beta: f32,
    c: *mut f32,
    ldc: c_int,
);

type CblasSgemm = unsafe extern "C" fn(
    order: c_int,
    transa: c_int,
    transb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    beta: f32,
    c: *mut f32,
    ldc: c_int,
);

/// The candidates, in table column order.
const COLUMNS: &[&str] = &[
    "ours gemm_bf16",
    "ours gemv_bf16",
    "oneDNN bf16",
    "OpenBLAS sbgemm",
    "OpenBLAS sgemm f32",
    "candle f16 (gemm crate)",
    "candle f32 (baseline)",
];

/// Bytes per weight each candidate streams.
const ELEM_BYTES: &[usize] = &[2, 2, 2, 2, 4, 2, 4];

struct Dnnl {
    _lib: Library,
    gemm: DnnlGemmBf16,
    about: String,
}

struct OpenBlas {
    _lib: Library,
    sbgemm: Option<CblasSbgemm>,
    sgemm: CblasSgemm,
    about: String,
}

fn open_dnnl() -> Result<Dnnl, String> {
    let name = std::env::var("CLAAS_DNNL_LIB").unwrap_or_else(|_| "libdnnl.so.2".into());
    // SAFETY: loading a shared library runs its initialisers; oneDNN's are ordinary C++ ones.
    let lib = unsafe { Library::new(&name) }
        .map_err(|e| format!("not installed ({name}: {e}; apt-get install libdnnl-dev)"))?;
    // SAFETY: the symbol types match oneDNN 2.x's dnnl.h declarations.
    unsafe {
        let gemm: Symbol<DnnlGemmBf16> = lib
            .get(b"dnnl_gemm_bf16bf16f32\0")
            .map_err(|e| format!("{name} has no dnnl_gemm_bf16bf16f32: {e}"))?;
        let gemm = *gemm;
        let mut about = name.clone();
        if let Ok(version) =
            lib.get::<unsafe extern "C" fn() -> *const DnnlVersion>(b"dnnl_version\0")
        {
            let v = &*version();
            let hash = if v.hash.is_null() {
                String::new()
            } else {
                CStr::from_ptr(v.hash).to_string_lossy().into_owned()
            };
            about = format!(
                "oneDNN {}.{}.{} ({}, cpu runtime {:#x})",
                v.major,
                v.minor,
                v.patch,
                &hash[..hash.len().min(10)],
                v.cpu_runtime
            );
        }
        if let Ok(isa) = lib.get::<unsafe extern "C" fn() -> c_int>(b"dnnl_get_effective_cpu_isa\0")
        {
            about += &format!(", effective ISA {}", dnnl_isa_name(isa()));
        }
        Ok(Dnnl {
            _lib: lib,
            gemm,
            about,
        })
    }
}

/// oneDNN 2.6's `dnnl_cpu_isa_t` values (dnnl_types.h).
fn dnnl_isa_name(isa: c_int) -> String {
    match isa {
        0x0 => "all".into(),
        0x1 => "sse41".into(),
        0x3 => "avx".into(),
        0x7 => "avx2".into(),
        0x27 => "avx512_core".into(),
        0x67 => "avx512_core_vnni".into(),
        0xe7 => "avx512_core_bf16".into(),
        0x3e7 => "avx512_core_amx".into(),
        other => format!("{other:#x}"),
    }
}

fn open_openblas() -> Result<OpenBlas, String> {
    let names = match std::env::var("CLAAS_OPENBLAS_LIB") {
        Ok(n) => vec![n],
        Err(_) => vec!["libopenblas.so.0".into(), "libopenblas.so".into()],
    };
    let mut last = String::new();
    for name in names {
        // SAFETY: as for oneDNN.
        let lib = match unsafe { Library::new(&name) } {
            Ok(lib) => lib,
            Err(e) => {
                last = format!("{name}: {e}");
                continue;
            }
        };
        // SAFETY: the symbol types match OpenBLAS's cblas.h (32-bit integer build).
        unsafe {
            let sgemm: CblasSgemm = *lib
                .get::<CblasSgemm>(b"cblas_sgemm\0")
                .map_err(|e| format!("{name} has no cblas_sgemm: {e}"))?;
            let sbgemm = lib.get::<CblasSbgemm>(b"cblas_sbgemm\0").ok().map(|s| *s);
            let mut about = name.clone();
            if let Ok(config) =
                lib.get::<unsafe extern "C" fn() -> *const c_char>(b"openblas_get_config\0")
            {
                about = format!(
                    "OpenBLAS {}",
                    CStr::from_ptr(config()).to_string_lossy().trim()
                );
            }
            if let Ok(core) =
                lib.get::<unsafe extern "C" fn() -> *const c_char>(b"openblas_get_corename\0")
            {
                about += &format!(", core {}", CStr::from_ptr(core()).to_string_lossy());
            }
            if sbgemm.is_none() {
                about += ", NO cblas_sbgemm (built without BUILD_BFLOAT16)";
            }
            return Ok(OpenBlas {
                _lib: lib,
                sbgemm,
                sgemm,
                about,
            });
        }
    }
    Err(format!(
        "not installed ({last}; apt-get install libopenblas-dev)"
    ))
}

fn set_openblas_threads(lib: &OpenBlas, threads: usize) {
    // SAFETY: `openblas_set_num_threads(int)` is part of OpenBLAS's public API.
    unsafe {
        if let Ok(set) = lib
            ._lib
            .get::<unsafe extern "C" fn(c_int)>(b"openblas_set_num_threads\0")
        {
            set(threads as c_int);
        }
    }
}

fn random(n: usize, seed: u64) -> impl Iterator<Item = f64> {
    let mut s = seed | 1;
    (0..n).map(move |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0
    })
}

/// Weights `j/128`, `|j| ≤ 127`: exact in bf16, f16 and f32, so every candidate multiplies the
/// same matrix and the reference needs no rounding model for W.
fn weights(n: usize, k: usize, seed: u64) -> Vec<f32> {
    random(n * k, seed)
        .map(|v| (v * 127.0).round() as f32 / 128.0)
        .collect()
}

/// Activations: arbitrary f32 (candidates that round X to 16 bits show that error).
fn activations(m: usize, k: usize, seed: u64) -> Vec<f32> {
    random(m * k, seed).map(|v| v as f32).collect()
}

fn reference(w: &[f32], x: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut r = vec![0f64; m * n];
    for i in 0..m {
        let xi = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wj = &w[j * k..(j + 1) * k];
            r[i * n + j] = xi.iter().zip(wj).map(|(&a, &b)| a as f64 * b as f64).sum();
        }
    }
    r
}

fn rel_error(y: &[f32], r: &[f64]) -> f64 {
    let scale = r
        .iter()
        .fold(0f64, |a, &v| a.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    let err = y
        .iter()
        .zip(r)
        .fold(0f64, |a, (&v, &t)| a.max((v as f64 - t).abs()));
    if y.iter().any(|v| !v.is_finite()) {
        f64::INFINITY
    } else {
        err / scale
    }
}

/// Seconds per call: the fastest pass over all `copies`, after one warm-up pass.
fn time_per_call(copies: usize, mut call: impl FnMut(usize)) -> f64 {
    for i in 0..copies {
        call(i);
    }
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut passes = 0;
    while passes < 3 || start.elapsed().as_secs_f64() < MIN_SECS {
        let t = Instant::now();
        for i in 0..copies {
            call(i);
        }
        best = best.min(t.elapsed().as_secs_f64() / copies as f64);
        passes += 1;
    }
    best
}

/// One measured candidate on one shape: seconds per call and normalised error.
#[derive(Clone, Copy)]
struct Cell {
    secs: f64,
    err: f64,
}

fn copies_for(m: usize, bytes: usize) -> usize {
    if m <= STREAM_MAX_M {
        STREAM_BYTES.div_ceil(bytes).max(1)
    } else {
        1
    }
}

#[allow(clippy::too_many_arguments)]
fn measure_case(
    pool: &rayon::ThreadPool,
    dnnl: Option<&Dnnl>,
    blas: Option<&OpenBlas>,
    m: usize,
    k: usize,
    n: usize,
    w: &[f32],
    x: &[f32],
    r: &[f64],
) -> Vec<Option<Cell>> {
    let mut cells = vec![None; COLUMNS.len()];
    let mut y = vec![0f32; m * n];
    let w_bf16: Vec<u16> = w.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
    let x_bf16: Vec<u16> = x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();

    // ours: rayon pool of `threads`.
    {
        let ws = vec![w_bf16.clone(); copies_for(m, n * k * 2)];
        pool.install(|| {
            let secs = time_per_call(ws.len(), |i| {
                claas_kernels::gemm_bf16(&ws[i], x, &mut y, m, k, n)
            });
            cells[0] = Some(Cell {
                secs,
                err: rel_error(&y, r),
            });
            if m == 1 {
                y.fill(f32::NAN);
                let secs = time_per_call(ws.len(), |i| claas_kernels::gemv_bf16(&ws[i], x, &mut y));
                cells[1] = Some(Cell {
                    secs,
                    err: rel_error(&y, r),
                });
            }
        });
    }

    // oneDNN: row-major C[m×n] = A[m×k]·op(B), op(B) = Bᵀ with B = W (n×k, ldb = k).
    if let Some(d) = dnnl {
        let ws = vec![w_bf16.clone(); copies_for(m, n * k * 2)];
        y.fill(f32::NAN);
        let mut status = 0;
        let secs = time_per_call(ws.len(), |i| {
            // SAFETY: the pointers cover m×k, n×k and m×n elements, as the dims say.
            status |= unsafe {
                (d.gemm)(
                    b'N' as c_char,
                    b'T' as c_char,
                    m as i64,
                    n as i64,
                    k as i64,
                    1.0,
                    x_bf16.as_ptr(),
                    k as i64,
                    ws[i].as_ptr(),
                    k as i64,
                    0.0,
                    y.as_mut_ptr(),
                    n as i64,
                )
            };
        });
        let err = if status == 0 {
            rel_error(&y, r)
        } else {
            f64::INFINITY
        };
        cells[2] = Some(Cell { secs, err });
    }

    if let Some(b) = blas {
        if let Some(sbgemm) = b.sbgemm {
            let ws = vec![w_bf16.clone(); copies_for(m, n * k * 2)];
            y.fill(f32::NAN);
            let secs = time_per_call(ws.len(), |i| {
                // SAFETY: as for oneDNN; CBLAS row-major, B transposed.
                unsafe {
                    sbgemm(
                        CBLAS_ROW_MAJOR,
                        CBLAS_NO_TRANS,
                        CBLAS_TRANS,
                        m as c_int,
                        n as c_int,
                        k as c_int,
                        1.0,
                        x_bf16.as_ptr(),
                        k as c_int,
                        ws[i].as_ptr(),
                        k as c_int,
                        0.0,
                        y.as_mut_ptr(),
                        n as c_int,
                    )
                }
            });
            cells[3] = Some(Cell {
                secs,
                err: rel_error(&y, r),
            });
        }
        let ws = vec![w.to_vec(); copies_for(m, n * k * 4)];
        y.fill(f32::NAN);
        let secs = time_per_call(ws.len(), |i| {
            // SAFETY: as above.
            unsafe {
                (b.sgemm)(
                    CBLAS_ROW_MAJOR,
                    CBLAS_NO_TRANS,
                    CBLAS_TRANS,
                    m as c_int,
                    n as c_int,
                    k as c_int,
                    1.0,
                    x.as_ptr(),
                    k as c_int,
                    ws[i].as_ptr(),
                    k as c_int,
                    0.0,
                    y.as_mut_ptr(),
                    n as c_int,
                )
            }
        });
        cells[4] = Some(Cell {
            secs,
            err: rel_error(&y, r),
        });
    }

    // candle: what candle_nn::Linear does for a 2-D input, x · Wᵀ with W stored [out, in].
    // The f16 path converts X to f16 outside the timed call (O(m·k), negligible here).
    let dev = Device::Cpu;
    for (col, dtype, elem) in [(5, DType::F16, 2), (6, DType::F32, 4)] {
        let run = || -> candle_core::Result<Cell> {
            let wt = Tensor::from_slice(w, (n, k), &dev)?.to_dtype(dtype)?;
            let wts = (0..copies_for(m, n * k * elem))
                .map(|_| wt.copy())
                .collect::<candle_core::Result<Vec<_>>>()?;
            drop(wt);
            let xt = Tensor::from_slice(x, (m, k), &dev)?.to_dtype(dtype)?;
            let mut out = None;
            let secs = pool.install(|| {
                time_per_call(wts.len(), |i| {
                    out = Some(xt.matmul(&wts[i].t().expect("t")).expect("matmul"));
                })
            });
            let out = out.expect("at least one call");
            let yv: Vec<f32> = out.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            Ok(Cell {
                secs,
                err: rel_error(&yv, r),
            })
        };
        match run() {
            Ok(cell) => cells[col] = Some(cell),
            Err(e) => eprintln!("candle {dtype:?} {m}×{k}×{n}: {e}"),
        }
    }
    cells
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One thread count, in this process (the parent sets the libraries' thread variables).
fn run(threads: usize, quick: bool) -> bool {
    let dnnl = open_dnnl();
    let blas = open_openblas();
    if let Ok(b) = &blas {
        set_openblas_threads(b, threads);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool");
    println!("\n## {threads} thread(s)\n");
    println!(
        "CPU: {} | load average at start: {} | ours: {:?} path",
        cpu_name(),
        load(),
        claas_kernels::Isa::detected()
    );
    match &dnnl {
        Ok(d) => println!(
            "oneDNN: {} | OMP_NUM_THREADS={}",
            d.about,
            env("OMP_NUM_THREADS")
        ),
        Err(e) => println!("oneDNN: {e}"),
    }
    match &blas {
        Ok(b) => println!(
            "OpenBLAS: {} | openblas_set_num_threads({threads})",
            b.about
        ),
        Err(e) => println!("OpenBLAS: {e}"),
    }
    println!(
        "candle / ours: rayon pool of {threads} (RAYON_NUM_THREADS={})",
        env("RAYON_NUM_THREADS")
    );
    println!(
        "\nGFLOP/s (m = 1: also GB/s of weights streamed from DRAM); `–` = not run. Error: max|y − ref| / max|ref| against f64.\n"
    );
    print!("| shape | m |");
    for c in COLUMNS {
        print!(" {c} |");
    }
    println!();
    println!("|---|---|{}", "---|".repeat(COLUMNS.len()));

    let mut cases: Vec<(&str, usize, usize, usize)> = Vec::new();
    for &(label, k, n) in PROJECTIONS {
        for &m in MS {
            if !quick || m == 1 || m == 320 {
                cases.push((label, m, k, n));
            }
        }
    }
    cases.push((LM_HEAD.0, 1, LM_HEAD.1, LM_HEAD.2));

    let mut worst: Vec<Option<f64>> = vec![None; COLUMNS.len()];
    let mut ok = true;
    for (label, m, k, n) in cases {
        let w = weights(n, k, 0x5EED ^ (n * 31 + k) as u64);
        let x = activations(m, k, 7 + m as u64);
        let r = reference(&w, &x, m, k, n);
        let cells = measure_case(
            &pool,
            dnnl.as_ref().ok(),
            blas.as_ref().ok(),
            m,
            k,
            n,
            &w,
            &x,
            &r,
        );
        let flops = 2.0 * (m * n * k) as f64;
        print!("| {label} | {m} |");
        for (i, cell) in cells.iter().enumerate() {
            match cell {
                None => print!(" – |"),
                Some(c) => {
                    worst[i] = Some(worst[i].map_or(c.err, |w| w.max(c.err)));
                    let gflops = flops / c.secs / 1e9;
                    let bad = if c.err > WRONG_ABOVE {
                        ok = false;
                        format!(" WRONG (err {:.1e})", c.err)
                    } else {
                        String::new()
                    };
                    if m == 1 {
                        let gbs = (n * k * ELEM_BYTES[i]) as f64 / c.secs / 1e9;
                        print!(" {gflops:.1} ({gbs:.1} GB/s){bad} |");
                    } else {
                        print!(" {gflops:.1}{bad} |");
                    }
                }
            }
        }
        println!();
    }
    print!("| max error | |");
    for e in &worst {
        match e {
            Some(e) => print!(" {e:.1e} |"),
            None => print!(" – |"),
        }
    }
    println!();
    println!("\nload average at end: {}", load());
    ok
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| "unset".into())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let threads_arg = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "1,2".into());
    let threads: Vec<usize> = threads_arg
        .split(',')
        .map(|t| {
            t.trim()
                .parse()
                .expect("--threads: comma-separated positive integers")
        })
        .collect();

    // A child measures one thread count (see below); the parent only spawns.
    if std::env::var_os("CLAAS_CANDIDATES_CHILD").is_some() {
        return if run(threads[0], quick) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    println!("# Kernel candidates (Y = X·Wᵀ, W bf16/f16/f32 n×k, Qwen3-0.6B shapes)");
    let exe = std::env::current_exe().expect("current exe");
    let mut ok = true;
    for t in threads {
        // One process per thread count: OpenMP (oneDNN) and candle read their thread
        // variables once, at start-up.
        let mut cmd = Command::new(&exe);
        cmd.env("CLAAS_CANDIDATES_CHILD", "1")
            .env("OMP_NUM_THREADS", t.to_string())
            .env("OPENBLAS_NUM_THREADS", t.to_string())
            .env("RAYON_NUM_THREADS", t.to_string())
            .args(["--threads", &t.to_string()]);
        if quick {
            cmd.arg("--quick");
        }
        match cmd.status() {
            Ok(s) if s.success() => {}
            Ok(s) => {
                eprintln!("candidates at {t} thread(s): {s} (a WRONG result, or a crash)");
                ok = false;
            }
            Err(e) => {
                eprintln!("candidates at {t} thread(s): cannot start: {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
