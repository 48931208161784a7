//! A small, deterministic, coverage-free mutation fuzzer that runs on stable
//! Rust inside ordinary tests (cargo-fuzz needs nightly).
//!
//! Each target has a committed seed corpus (`corpus/<target>/`), a
//! dictionary of tokens its format cares about and an `exec` function that
//! feeds one input to the code under test. [`Fuzzer::run`] first runs every
//! seed, then mutates seeds (bit and byte flips, interesting bytes and
//! numbers, insert/delete/duplicate ranges, splices between corpus entries,
//! dictionary tokens) with a seeded PRNG until the time budget is spent.
//!
//! Every input must either be accepted or return an error. A panic, or an
//! invariant the target checks (`exec` returning `Err`), fails the test after
//! writing the offending input to a file that the failure message names. An
//! input that runs longer than the per-exec limit is written out too, and the
//! process aborts (a hang cannot be unwound).
//!
//! Knobs (environment):
//! - `STEVEDORE_FUZZ_SECS`: time budget per target (default 20);
//! - `STEVEDORE_FUZZ_SEED`: PRNG seed (default: fixed per target, so a run
//!   is reproducible; set another for a long run to explore elsewhere);
//! - `STEVEDORE_FUZZ_EXEC_TIMEOUT_SECS`: per-input limit (default 20);
//! - `STEVEDORE_FUZZ_ARTIFACTS`: where failing inputs go (default
//!   `<target-dir>/tmp/fuzz-artifacts`, as the tests pass it);
//! - `STEVEDORE_FUZZ_INPUT`: run only this file (to reproduce a failure).

pub mod samples;
pub mod tarfix;
pub mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seeded xorshift64* PRNG: fast, deterministic, good enough for mutation.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed, never zero
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// True with probability `pct`/100.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.next_u64() % 100 < pct
    }
    /// A small length, biased towards short.
    fn len(&mut self, max: usize) -> usize {
        let m = max.max(1);
        match self.below(4) {
            0 => 1,
            1 => 1 + self.below(m.min(8)),
            2 => 1 + self.below(m.min(64)),
            _ => 1 + self.below(m),
        }
    }
}

/// FNV-1a, for default seeds and artifact names.
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

const INTERESTING_BYTES: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'/', b'.', b'"', b'\\', b',', b'=', b'\n', b'0', b'9', b'{', b'}',
    b'[', b']', b':', b' ', b'@', b'%',
];

const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "4096",
    "4097",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551616",
    "1e308",
    "1e999",
    "0.5",
    "077777777777",
];

/// Mutation strategy for one target.
pub struct Mutator<'a> {
    pub corpus: &'a [Vec<u8>],
    pub dictionary: &'a [Vec<u8>],
    pub max_len: usize,
}

impl Mutator<'_> {
    /// A mutated copy of corpus entry `base`: one to four stacked mutations.
    pub fn mutate(&self, rng: &mut Rng, base: &[u8]) -> Vec<u8> {
        let mut out = base.to_vec();
        let rounds = 1 + rng.below(4);
        for _ in 0..rounds {
            self.mutate_once(rng, &mut out);
        }
        out.truncate(self.max_len);
        out
    }

    fn mutate_once(&self, rng: &mut Rng, out: &mut Vec<u8>) {
        let len = out.len();
        match rng.below(12) {
            // flip a bit
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            // set a byte to a random or an interesting value
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = if rng.chance(50) {
                    rng.next_u64() as u8
                } else {
                    INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())]
                };
            }
            // insert random bytes
            2 => {
                let at = rng.below(len + 1);
                let n = rng.len(32);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                out.splice(at..at, bytes);
            }
            // delete a range
            3 if len > 0 => {
                let at = rng.below(len);
                let n = rng.len(len - at);
                out.drain(at..at + n.min(len - at));
            }
            // duplicate a range somewhere else
            4 if len > 0 => {
                let from = rng.below(len);
                let n = rng.len(len - from).min(len - from);
                let chunk = out[from..from + n].to_vec();
                let at = rng.below(len + 1);
                out.splice(at..at, chunk);
            }
            // copy a range over another place
            5 if len > 1 => {
                let from = rng.below(len);
                let n = rng.len(len - from).min(len - from);
                let chunk = out[from..from + n].to_vec();
                let at = rng.below(len);
                for (k, b) in chunk.into_iter().enumerate() {
                    if at + k < out.len() {
                        out[at + k] = b;
                    }
                }
            }
            // splice with another corpus entry: our head + its tail
            6 if !self.corpus.is_empty() => {
                let other = &self.corpus[rng.below(self.corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            // insert a dictionary token
            7 | 8 if !self.dictionary.is_empty() => {
                let tok = &self.dictionary[rng.below(self.dictionary.len())];
                let at = rng.below(len + 1);
                out.splice(at..at, tok.iter().copied());
            }
            // overwrite with a dictionary token
            9 if !self.dictionary.is_empty() && len > 0 => {
                let tok = &self.dictionary[rng.below(self.dictionary.len())];
                let at = rng.below(len);
                let end = (at + tok.len()).min(len);
                out.splice(at..end, tok.iter().copied());
            }
            // replace a run of digits with an interesting number
            10 if len > 0 => {
                let start = rng.below(len);
                if let Some(p) = out[start..].iter().position(u8::is_ascii_digit) {
                    let a = start + p;
                    let mut b = a;
                    while b < out.len() && out[b].is_ascii_digit() {
                        b += 1;
                    }
                    let n = INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len())];
                    out.splice(a..b, n.bytes());
                }
            }
            // truncate
            11 if len > 0 => {
                let at = rng.below(len);
                out.truncate(at);
            }
            _ => {
                let at = rng.below(len + 1);
                out.insert(at, rng.next_u64() as u8);
            }
        }
    }
}

/// Read every file of a corpus directory, sorted by name.
pub fn load_corpus(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read fuzz corpus {}: {e}", dir.display()));
    for e in entries {
        let e = e.expect("read corpus entry");
        if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
            let name = e.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(e.path()).expect("read corpus file");
            out.push((name, bytes));
        }
    }
    out.sort();
    out
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The outcome of one execution that is not a plain accept or reject.
pub type ExecResult = Result<(), String>;

/// One fuzz target: name, corpus, dictionary, limits, an optional fix-up of
/// mutated inputs (e.g. tar header checksums) and the execution function.
pub struct Fuzzer<'a> {
    pub name: &'a str,
    pub corpus_dir: PathBuf,
    pub artifacts: PathBuf,
    pub dictionary: Vec<Vec<u8>>,
    pub max_len: usize,
    /// Applied to most mutated inputs (not to seeds) before execution.
    pub fixup: Option<fn(&mut [u8])>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub executions: u64,
    pub elapsed: Duration,
    pub seed: u64,
}

impl<'a> Fuzzer<'a> {
    /// A target whose seeds live in `crates/fuzz/corpus/<name>/`.
    pub fn new(name: &'a str, artifacts: &Path) -> Self {
        let artifacts = std::env::var_os("STEVEDORE_FUZZ_ARTIFACTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| artifacts.join("fuzz-artifacts"));
        Fuzzer {
            name,
            corpus_dir: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("corpus")
                .join(name),
            artifacts,
            dictionary: Vec::new(),
            max_len: 64 << 10,
            fixup: None,
        }
    }

    pub fn dictionary<T: AsRef<[u8]>>(mut self, tokens: &[T]) -> Self {
        self.dictionary
            .extend(tokens.iter().map(|t| t.as_ref().to_vec()));
        self
    }

    pub fn max_len(mut self, n: usize) -> Self {
        self.max_len = n;
        self
    }

    pub fn fixup(mut self, f: fn(&mut [u8])) -> Self {
        self.fixup = Some(f);
        self
    }

    fn save(&self, input: &[u8], why: &str) -> PathBuf {
        let _ = std::fs::create_dir_all(&self.artifacts);
        let p = self
            .artifacts
            .join(format!("{}-{}-{:016x}.bin", self.name, why, fnv(input)));
        if let Err(e) = std::fs::write(&p, input) {
            eprintln!("fuzz {}: could not write {}: {e}", self.name, p.display());
        }
        p
    }

    /// Run the seeds, then mutations until the time budget is spent. Panics
    /// (failing the test) on the first input that panics or breaks an
    /// invariant, naming the file holding it.
    pub fn run(self, mut exec: impl FnMut(&[u8]) -> ExecResult) -> Report {
        let secs = env_u64("STEVEDORE_FUZZ_SECS").unwrap_or(20);
        let seed = env_u64("STEVEDORE_FUZZ_SEED").unwrap_or_else(|| fnv(self.name.as_bytes()));
        let exec_timeout =
            Duration::from_secs(env_u64("STEVEDORE_FUZZ_EXEC_TIMEOUT_SECS").unwrap_or(20));

        // the watchdog: an input that hangs is saved, then the process aborts
        let current: Arc<Mutex<Vec<u8>>> = Arc::default();
        let started_at = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let watchdog = {
            let (current, started_at, done) = (current.clone(), started_at.clone(), done.clone());
            let artifacts = self.artifacts.clone();
            let name = self.name.to_string();
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    let s = started_at.load(Ordering::Relaxed);
                    if s == 0 {
                        continue;
                    }
                    let running = epoch.elapsed().saturating_sub(Duration::from_millis(s));
                    if running > exec_timeout {
                        let input = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        let _ = std::fs::create_dir_all(&artifacts);
                        let p = artifacts.join(format!("{name}-timeout-{:016x}.bin", fnv(&input)));
                        let _ = std::fs::write(&p, &input);
                        eprintln!(
                            "fuzz {name}: an input ran longer than {exec_timeout:?}; saved to {} (aborting)",
                            p.display()
                        );
                        std::process::abort();
                    }
                }
            })
        };

        let mut one = |input: &[u8], origin: &str| {
            {
                let mut c = current.lock().unwrap_or_else(|p| p.into_inner());
                c.clear();
                c.extend_from_slice(input);
            }
            started_at.store(epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
            let res = catch_unwind(AssertUnwindSafe(|| exec(input)));
            started_at.store(0, Ordering::Relaxed);
            match res {
                Ok(Ok(())) => {}
                Ok(Err(broken)) => {
                    let p = self.save(input, "invariant");
                    panic!(
                        "fuzz {}: {origin} broke an invariant: {broken}\ninput saved to {} (replay: STEVEDORE_FUZZ_INPUT={} cargo nextest run -p stevedore-fuzz {})",
                        self.name,
                        p.display(),
                        p.display(),
                        self.name
                    );
                }
                Err(payload) => {
                    let msg = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    let p = self.save(input, "panic");
                    panic!(
                        "fuzz {}: {origin} panicked: {msg}\ninput saved to {} (replay: STEVEDORE_FUZZ_INPUT={} cargo nextest run -p stevedore-fuzz {})",
                        self.name,
                        p.display(),
                        p.display(),
                        self.name
                    );
                }
            }
        };

        let start = Instant::now();
        let mut executions = 0u64;
        if let Some(p) = std::env::var_os("STEVEDORE_FUZZ_INPUT") {
            let input = std::fs::read(&p).expect("read STEVEDORE_FUZZ_INPUT");
            one(&input, &format!("input {}", Path::new(&p).display()));
            executions += 1;
        } else {
            let seeds = load_corpus(&self.corpus_dir);
            assert!(
                !seeds.is_empty(),
                "fuzz {}: empty corpus {}",
                self.name,
                self.corpus_dir.display()
            );
            for (name, bytes) in &seeds {
                one(bytes, &format!("seed {name}"));
                executions += 1;
            }
            let corpus: Vec<Vec<u8>> = seeds.into_iter().map(|(_, b)| b).collect();
            let mutator = Mutator {
                corpus: &corpus,
                dictionary: &self.dictionary,
                max_len: self.max_len,
            };
            let mut rng = Rng::new(seed);
            let budget = Duration::from_secs(secs);
            while start.elapsed() < budget {
                // a batch between clock reads
                for _ in 0..16 {
                    let base = &corpus[rng.below(corpus.len())];
                    let mut input = mutator.mutate(&mut rng, base);
                    if let Some(f) = self.fixup {
                        if rng.chance(90) {
                            f(&mut input);
                        }
                    }
                    one(&input, &format!("mutation #{executions} (seed {seed})"));
                    executions += 1;
                }
            }
        }
        done.store(true, Ordering::Relaxed);
        let _ = watchdog.join();
        let report = Report {
            executions,
            elapsed: start.elapsed(),
            seed,
        };
        println!(
            "fuzz {}: {} executions in {:.1} s, seed {}",
            self.name,
            report.executions,
            report.elapsed.as_secs_f64(),
            report.seed
        );
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_deterministic_for_a_seed() {
        let corpus = vec![
            b"hello world".to_vec(),
            b"name==x,labels.\"a\"~=/b/".to_vec(),
        ];
        let dict = vec![b"==".to_vec()];
        let m = Mutator {
            corpus: &corpus,
            dictionary: &dict,
            max_len: 1024,
        };
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..200)
                .map(|i| m.mutate(&mut rng, &corpus[i % 2]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        // mutations actually change inputs, and stay within max_len
        let outs = run(7);
        assert!(
            outs.iter()
                .filter(|o| **o != corpus[0] && **o != corpus[1])
                .count()
                > 150
        );
        assert!(outs.iter().all(|o| o.len() <= 1024));
    }
}
