//! Bounded mutation fuzzing on stable Rust, for the readers' tests: every reader of untrusted
//! bytes (checkpoints, PyTorch files, images, rendezvous messages) is fed mutated and truncated
//! copies of valid inputs and must return a value or an error — never panic, never take longer
//! than a stated time per input, never allocate more than a stated bound.
//!
//! ```no_run
//! use ssl_conformance::fuzz::{CountingAlloc, FuzzConfig, fuzz};
//!
//! #[global_allocator]
//! static ALLOC: CountingAlloc = CountingAlloc;
//!
//! let corpus = vec![b"valid input".to_vec()];
//! let report = fuzz("my reader", &corpus, &FuzzConfig::default(), |bytes| {
//!     std::str::from_utf8(bytes).map(|_| ()).map_err(|e| e.to_string())
//! });
//! println!("{report}");
//! ```
//!
//! Allocations are counted per thread by [`CountingAlloc`], which the test binary installs as
//! its global allocator; [`fuzz`] refuses to run without it, so a bound is never checked
//! vacuously. Mutations come from a fixed-seed generator: a failure names the input's number and
//! saves the input, and the same run reproduces it. Coverage-guided fuzzing (cargo-fuzz, on
//! nightly) lives in the workspace's `fuzz/` folder.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, PanicHookInfo, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

type PanicHook = dyn Fn(&PanicHookInfo<'_>) + Send + Sync + 'static;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// The system allocator, counting the bytes each thread has live and their peak.
pub struct CountingAlloc;

fn grew(n: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + n as isize;
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn shrank(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get() - n as isize));
}

// SAFETY: every call is forwarded to `System` unchanged; the counters are thread-local cells
// that never allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

/// Bytes allocated on this thread at the peak of `f`, beyond what was live before it.
pub fn peak_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    let peak = PEAK.with(Cell::get);
    (r, (peak - base).max(0) as usize)
}

/// Whether [`CountingAlloc`] is this binary's global allocator.
pub fn counting_installed() -> bool {
    let (v, bytes) = peak_allocation(|| std::hint::black_box(vec![0u8; 4096]));
    drop(v);
    bytes >= 4096
}

/// A deterministic generator of mutated inputs (xorshift64*).
#[derive(Debug, Clone)]
pub struct Mutator {
    state: u64,
}

impl Mutator {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// A position in `len` bytes, half of the time in the first 4 KiB, where headers are.
    fn position(&mut self, len: usize) -> usize {
        if self.next() & 1 == 0 {
            self.below(len.min(4096))
        } else {
            self.below(len)
        }
    }

    /// One to four of: bit flips, random bytes, a truncation, a length-like field overwritten
    /// with an extreme value (0, 2^31, 2^40, all ones, ...), inserted bytes, a deleted or
    /// repeated chunk.
    pub fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        const EXTREMES: [u64; 7] = [0, 1, 0x7fff_ffff, 0x8000_0000, 1 << 40, u64::MAX, 0xffff];
        let mut v = input.to_vec();
        for _ in 0..1 + self.below(4) {
            let len = v.len();
            match self.below(7) {
                0 if len > 0 => {
                    let i = self.position(len);
                    v[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let i = self.position(len);
                    v[i] = self.next() as u8;
                }
                2 => v.truncate(self.below(len + 1)),
                3 if len >= 8 => {
                    let i = self.position(len - 7);
                    let x = EXTREMES[self.below(EXTREMES.len())];
                    let width = [2usize, 4, 8][self.below(3)];
                    v[i..i + width].copy_from_slice(&x.to_le_bytes()[..width]);
                }
                4 => {
                    let i = self.position(len + 1);
                    let n = 1 + self.below(16);
                    let bytes: Vec<u8> = (0..n).map(|_| self.next() as u8).collect();
                    v.splice(i..i, bytes);
                }
                5 if len > 0 => {
                    let i = self.position(len);
                    let n = (1 + self.below(64)).min(len - i);
                    v.drain(i..i + n);
                }
                6 if len > 0 => {
                    let i = self.position(len);
                    let n = (1 + self.below(256)).min(len - i);
                    let chunk = v[i..i + n].to_vec();
                    v.splice(i..i, chunk);
                }
                _ => v.push(self.next() as u8),
            }
        }
        v
    }
}

/// Limits of one fuzz run.
#[derive(Debug, Clone)]
pub struct FuzzConfig {
    /// Inputs to try at most (the corpus itself and its truncations included).
    pub max_inputs: usize,
    /// Wall time after which no new input is started.
    pub max_time: Duration,
    /// Bytes one call may allocate beyond what was live before it: `fixed + per_byte x input
    /// length`.
    pub alloc_fixed: usize,
    /// See `alloc_fixed`.
    pub alloc_per_byte: usize,
    /// An input that takes longer than this is a failure (a hang, or a quadratic path).
    pub slow_input: Duration,
    /// Seed of the mutations.
    pub seed: u64,
}

impl Default for FuzzConfig {
    fn default() -> Self {
        Self {
            max_inputs: 2000,
            max_time: Duration::from_secs(15),
            alloc_fixed: 64 << 20,
            alloc_per_byte: 16,
            slow_input: Duration::from_secs(5),
            seed: 1,
        }
    }
}

impl FuzzConfig {
    /// This config with `SSL_FUZZ_INPUTS` (inputs) and `SSL_FUZZ_SECONDS` (wall time) taken from
    /// the environment where they are set: one way to run every fuzz test longer or shorter.
    pub fn with_env_overrides(mut self) -> Self {
        let env = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(n) = env("SSL_FUZZ_INPUTS") {
            self.max_inputs = n as usize;
        }
        if let Some(s) = env("SSL_FUZZ_SECONDS") {
            self.max_time = Duration::from_secs(s);
        }
        self
    }
}

/// What a fuzz run tried.
#[derive(Debug, Clone)]
pub struct FuzzReport {
    /// The reader's name.
    pub name: String,
    /// Inputs tried.
    pub inputs: usize,
    /// Inputs the reader accepted.
    pub accepted: usize,
    /// Inputs the reader refused with an error.
    pub refused: usize,
    /// The largest allocation peak of one call.
    pub peak_bytes: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl std::fmt::Display for FuzzReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fuzz {}: {} inputs ({} accepted, {} refused) in {:.1} s, largest allocation peak {:.1} MiB",
            self.name,
            self.inputs,
            self.accepted,
            self.refused,
            self.elapsed.as_secs_f64(),
            self.peak_bytes as f64 / (1 << 20) as f64
        )
    }
}

/// Feeds `read` the corpus, every truncation of its first input at 64 evenly spread lengths,
/// then mutated copies, within `config`'s limits, and panics with the input's number (saving
/// the input to the temp directory) when `read` panics, is slow or allocates over the bound.
pub fn fuzz(
    name: &str,
    corpus: &[Vec<u8>],
    config: &FuzzConfig,
    read: impl Fn(&[u8]) -> Result<(), String>,
) -> FuzzReport {
    assert!(
        counting_installed(),
        "fuzz {name}: install ssl_conformance::fuzz::CountingAlloc as the global allocator"
    );
    assert!(!corpus.is_empty(), "fuzz {name}: empty corpus");
    let start = Instant::now();
    let mut mutator = Mutator::new(config.seed);
    let mut report = FuzzReport {
        name: name.to_string(),
        inputs: 0,
        accepted: 0,
        refused: 0,
        peak_bytes: 0,
        elapsed: Duration::ZERO,
    };
    let first = &corpus[0];
    let truncations = (0..64).map(|i| first[..first.len() * i / 64].to_vec());
    let mut fixed = corpus.iter().cloned().chain(truncations);
    // Panics of this thread are expected and reported below; other threads' still print.
    let previous: Arc<PanicHook> = Arc::from(std::panic::take_hook());
    let me = std::thread::current().id();
    let others = Arc::clone(&previous);
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != me {
            others(info);
        }
    }));
    let mut failure = None;
    while report.inputs < config.max_inputs && start.elapsed() < config.max_time {
        let input = match fixed.next() {
            Some(v) => v,
            None => {
                let seed = &corpus[mutator.below(corpus.len())];
                mutator.mutate(seed)
            }
        };
        let t = Instant::now();
        let (outcome, bytes) = peak_allocation(|| catch_unwind(AssertUnwindSafe(|| read(&input))));
        let took = t.elapsed();
        report.inputs += 1;
        report.peak_bytes = report.peak_bytes.max(bytes);
        let bound = config.alloc_fixed + config.alloc_per_byte * input.len();
        let problem = match outcome {
            Err(p) => Some(format!("panicked: {}", panic_message(&p))),
            Ok(_) if bytes > bound => Some(format!("allocated {bytes} bytes (bound {bound})")),
            Ok(_) if took > config.slow_input => Some(format!("took {took:?}")),
            Ok(Ok(())) => {
                report.accepted += 1;
                None
            }
            Ok(Err(_)) => {
                report.refused += 1;
                None
            }
        };
        if let Some(problem) = problem {
            failure = Some((report.inputs - 1, problem, input));
            break;
        }
    }
    std::panic::set_hook(Box::new(move |info| previous(info)));
    report.elapsed = start.elapsed();
    if let Some((i, problem, input)) = failure {
        let path = std::env::temp_dir().join(format!(
            "fuzz-{}-{i}.bin",
            name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        ));
        let _ = std::fs::write(&path, &input);
        panic!(
            "fuzz {name}: input #{i} ({} bytes) {problem}; saved to {}",
            input.len(),
            path.display()
        );
    }
    report
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic without a message".into())
}
