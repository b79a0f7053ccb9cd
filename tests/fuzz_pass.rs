//! A bounded, deterministic fuzzing pass through the public API, run by `cargo test`:
//! seeded mutations (bit flips, truncations, insertions of huge numbers, NaN, negative
//! counts, byte-order marks, edited configs and tensor headers) of an extended XYZ file and
//! of the tiny model file, fed to `painn::io::xyz::parse` and `Model::from_bytes`, and
//! whatever parses to a `Calculator`. No case may panic, abort, allocate absurdly (this
//! binary's allocator refuses single allocations above 1 GiB and more than 4 GiB live:
//! a fallible allocation then fails, an infallible one aborts the binary, naming the case)
//! or take long (a bound per case and for the whole pass).
//!
//! `PAINN_FUZZ_CASES=N` runs N cases of each kind instead of the default; longer,
//! coverage-guided runs are `cargo fuzz` targets in `fuzz/` (see docs/design.md).

mod common;
mod hostile;

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use hostile::*;
use painn::io::xyz;
use painn::structures::SplitMix64;
use painn::{Calculator, Cell, Device, Model, Precision, Request};
use serde_json::{Value, json};

const SEED: u64 = 0x00C0_FFEE_2025;
/// Cases of each kind (XYZ, model) by default: about 10 s on 2 cores.
const CASES: usize = 2000;
/// No case may take longer than this, nor the whole pass.
const CASE_LIMIT: Duration = Duration::from_secs(5);
const PASS_LIMIT: Duration = Duration::from_secs(120);

#[global_allocator]
static ALLOCATOR: Capped = Capped {
    largest: 1 << 30,
    most_live: 4 << 30,
};

/// Mutations of a byte string, from one seeded generator.
struct Mutator {
    rng: SplitMix64,
}

/// Tokens inserted into text: huge, negative and non-finite numbers, separators, markup.
const TOKENS: &[&str] = &[
    "2000000000",
    "4611686018427387904",
    "18446744073709551615",
    "99999999999999999999999",
    "-1",
    "-0",
    "0",
    "1",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "1e308",
    "1e309",
    "1e-308",
    "5e-324",
    "1e30",
    "-1e30",
    "5e-6",
    "1e8",
    "0.3615",
    "\u{feff}",
    "\u{200b}",
    "\u{7}",
    "\n",
    "\r\n",
    " ",
    "\t",
    "\"",
    "=",
    ":",
    "Lattice=\"5e-6 0 0 0 5e-6 0 0 0 5e-6\" ",
    "Lattice=\"1e8 0 0 0 1e8 0 0 0 1e-8\" ",
    "Lattice=\"3 0 0 3 0 0 0 0 3\" ",
    "pbc=\"T T T\" ",
    "pbc=\"F T\" ",
    "Properties=Z:I:1:pos:R:3 ",
    "Properties=species:S:1:pos:R:3:x:R:18446744073709551615 ",
    "species:S:1",
    "Cu",
    "Xx",
    "H",
];

impl Mutator {
    fn below(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n.max(1) as u64) as usize
    }

    fn token(&mut self) -> &'static str {
        TOKENS[self.below(TOKENS.len())]
    }

    /// One mutation of `bytes` within `range` of it (the whole of it for text); what it did.
    /// Text favours replacing a number or word by a token, which keeps more cases
    /// parseable and so reaches the calculator.
    fn mutate(&mut self, bytes: &mut Vec<u8>, range: std::ops::Range<usize>, text: bool) -> String {
        let at = range.start + self.below(range.len().max(1));
        let at = at.min(bytes.len());
        let kind = if text && self.below(2) == 0 {
            5
        } else {
            self.below(8)
        };
        match kind {
            0 if !bytes.is_empty() => {
                let at = at.min(bytes.len() - 1);
                let bit = self.below(8);
                bytes[at] ^= 1 << bit;
                format!("flip bit {bit} of byte {at}")
            }
            1 if !bytes.is_empty() => {
                let at = at.min(bytes.len() - 1);
                let value =
                    [0, 0xff, b'\n', b' ', b'"', b'-', b'9', 0x7f, 0x80, b'{'][self.below(10)];
                bytes[at] = value;
                format!("set byte {at} to {value:#04x}")
            }
            2 => {
                bytes.truncate(at);
                format!("truncate at {at}")
            }
            3 | 4 => {
                let token = self.token();
                bytes.splice(at..at, token.bytes());
                format!("insert {token:?} at {at}")
            }
            5 => {
                // Replace the number (or word) around `at` by a token.
                let is_part = |b: u8| b.is_ascii_alphanumeric() || b"+-.".contains(&b);
                let mut start = at.min(bytes.len());
                while start > 0 && is_part(bytes[start - 1]) {
                    start -= 1;
                }
                let mut end = at.min(bytes.len());
                while end < bytes.len() && is_part(bytes[end]) {
                    end += 1;
                }
                let token = self.token();
                bytes.splice(start..end, token.bytes());
                format!("replace {start}..{end} by {token:?}")
            }
            6 => {
                let end = (at + 1 + self.below(16)).min(bytes.len());
                bytes.drain(at..end);
                format!("delete {at}..{end}")
            }
            _ => {
                let end = (at + 1 + self.below(64)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                let to = self.below(bytes.len() + 1);
                bytes.splice(to..to, copy);
                format!("copy {at}..{end} to {to}")
            }
        }
    }

    /// An interesting JSON value for a config field.
    fn value(&mut self) -> Value {
        let values = [
            json!(0),
            json!(1),
            json!(-1),
            json!(4),
            json!(8),
            json!(64),
            json!(1_000_000_000u64),
            json!(u64::MAX),
            json!(1u64 << 62),
            json!(1e300),
            json!(-1.0),
            json!(0.5),
            json!(3.0),
            json!(5.0),
            json!(1e-300),
            json!("text"),
            json!(null),
            json!([]),
            json!(["Cu"]),
            json!(["H", "O"]),
            json!(["Xx"]),
            json!({"energy": "eV", "length": "nm"}),
        ];
        values[self.below(values.len())].clone()
    }
}

/// A structure to compute: atomic numbers, positions, cell.
type Structure = (Vec<i32>, Vec<[f64; 3]>, Cell);

/// What a case ended in.
#[derive(Default)]
struct Tally {
    cases: usize,
    /// Refused by the parser or the loader.
    rejected: usize,
    /// Accepted, then refused by the calculator.
    refused: usize,
    /// Accepted and computed.
    computed: usize,
}

/// The calculators a case computes with (one per precision, reused from case to case as
/// an MD code reuses them).
struct Calculators {
    f64: Calculator,
    f32: Calculator,
}

impl Calculators {
    fn new(model: &Arc<Model>) -> painn::Result<Self> {
        Ok(Calculators {
            f64: Calculator::new(model.clone(), Device::Cpu, Precision::F64)?,
            f32: Calculator::new(model.clone(), Device::Cpu, Precision::F32)?,
        })
    }

    /// Computes every structure in both precisions; whether all succeeded.
    fn compute(&mut self, structures: &[Structure]) -> bool {
        let mut all = true;
        for (z, positions, cell) in structures {
            for calculator in [&mut self.f64, &mut self.f32] {
                all &= calculator.compute(z, positions, cell, Request::ALL).is_ok();
            }
        }
        all
    }
}

/// One XYZ case: parse, then compute every frame (a few at most) that makes a cell.
fn xyz_case(text: &str, calculators: &mut Calculators, tally: &mut Tally) {
    let Ok(frames) = xyz::parse(text, "fuzz.xyz") else {
        tally.rejected += 1;
        return;
    };
    let structures: Vec<_> = frames
        .into_iter()
        .take(3)
        .filter_map(|frame| {
            let cell = Cell::from_optional(frame.lattice, frame.pbc).ok()?;
            Some((frame.atomic_numbers, frame.positions, cell))
        })
        .collect();
    if calculators.compute(&structures) && !structures.is_empty() {
        tally.computed += 1;
    } else {
        tally.refused += 1;
    }
}

/// One model case: load, then compute a molecule and a periodic box with it.
fn model_case(bytes: &[u8], structures: &[Structure], tally: &mut Tally) {
    let Ok(model) = Model::from_bytes(bytes, "fuzz.safetensors") else {
        tally.rejected += 1;
        return;
    };
    let model = Arc::new(model);
    let computed = Calculators::new(&model).is_ok_and(|mut c| c.compute(structures));
    if computed {
        tally.computed += 1;
    } else {
        tally.refused += 1;
    }
}

/// A mutated model file: raw bytes, its config, a tensor's header entry or its data.
fn mutated_model(seed: &[u8], mutator: &mut Mutator) -> (Vec<u8>, String) {
    let header_end = 8 + u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    match mutator.below(6) {
        0 => {
            let mut bytes = seed.to_vec();
            let mut done = Vec::new();
            for _ in 0..1 + mutator.below(3) {
                done.push(mutator.mutate(&mut bytes, 0..header_end, false));
            }
            (bytes, format!("header bytes: {}", done.join(", ")))
        }
        1 => {
            let mut bytes = seed.to_vec();
            let what = mutator.mutate(&mut bytes, 0..seed.len(), false);
            (bytes, format!("bytes: {what}"))
        }
        2 | 3 => {
            let keys = [
                "hidden_features",
                "layers",
                "radial_basis",
                "cutoff_angstrom",
                "max_z",
                "format_version",
                "elements",
                "units",
                "architecture",
                "provenance",
            ];
            let key = keys[mutator.below(keys.len())];
            let value = mutator.value();
            let what = format!("config {key} = {value}");
            (
                with_config(seed, |config| {
                    config.insert(key.into(), value);
                }),
                what,
            )
        }
        4 => {
            let (header, _) = split(seed).unwrap();
            let names: Vec<String> = header
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "__metadata__")
                .cloned()
                .collect();
            let name = names[mutator.below(names.len())].clone();
            let field = ["shape", "dtype", "data_offsets"][mutator.below(3)];
            let value = match field {
                "dtype" => {
                    json!(["F16", "BF16", "F32", "I64", "BOOL", "U8", "F8_E4M3"][mutator.below(7)])
                }
                "shape" => [
                    json!([0]),
                    json!([1]),
                    json!([u64::MAX]),
                    json!([3, 3]),
                    json!([1u64 << 40, 1u64 << 40]),
                    json!([8, 0]),
                ][mutator.below(6)]
                .clone(),
                _ => json!([[0, 0], [16, 8], [0, u64::MAX], [8, 1u64 << 40]][mutator.below(4)]),
            };
            let what = format!("tensor {name}: {field} = {value}");
            (
                with_header(seed, |header| header[&name][field] = value),
                what,
            )
        }
        _ => {
            // A non-finite, huge or zero value in the data (a zero width, a NaN weight).
            let mut bytes = seed.to_vec();
            let slots = (bytes.len() - header_end) / 8;
            let slot = header_end + 8 * mutator.below(slots);
            let value = [f64::NAN, f64::INFINITY, 1e300, 0.0, -1e-300][mutator.below(5)];
            bytes[slot..slot + 8].copy_from_slice(&value.to_le_bytes());
            (bytes, format!("data at {slot} = {value}"))
        }
    }
}

/// Runs the pass, recording each case's description in `current` before it runs.
fn run_pass(cases: usize, current: &Mutex<String>) -> Vec<String> {
    let mut failures = Vec::new();
    let mut mutator = Mutator {
        rng: SplitMix64::new(SEED),
    };
    let model = Arc::new(Model::from_bytes(&tiny_model_bytes(), "tiny").unwrap());
    let mut calculators = Calculators::new(&model).unwrap();
    let seeds = [water_xyz(), MOLECULE_XYZ.to_string()];
    let structures: Vec<_> = seeds
        .iter()
        .map(|text| {
            let frame = xyz::parse(text, "seed.xyz").unwrap().remove(0);
            let cell = Cell::from_optional(frame.lattice, frame.pbc).unwrap();
            (frame.atomic_numbers, frame.positions, cell)
        })
        .collect();
    let model_seed = tiny_model_bytes();
    let (mut xyz_tally, mut model_tally) = (Tally::default(), Tally::default());
    let start = Instant::now();
    for case in 0..2 * cases {
        let is_xyz = case % 2 == 0;
        // Generate the case (deterministic), then run it.
        let (input, description) = if is_xyz {
            let mut bytes = seeds[mutator.below(2)].clone().into_bytes();
            let mut done = Vec::new();
            for _ in 0..1 + mutator.below(3) {
                let length = bytes.len();
                done.push(mutator.mutate(&mut bytes, 0..length, true));
            }
            (bytes, format!("xyz: {}", done.join(", ")))
        } else {
            mutated_model(&model_seed, &mut mutator)
        };
        *current.lock().unwrap() = format!("case {case} ({description})");
        CASE.store(case, Ordering::Relaxed);
        let case_start = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if is_xyz {
                let text = String::from_utf8_lossy(&input);
                xyz_tally.cases += 1;
                xyz_case(&text, &mut calculators, &mut xyz_tally);
            } else {
                model_tally.cases += 1;
                model_case(&input, &structures, &mut model_tally);
            }
        }));
        let elapsed = case_start.elapsed();
        if outcome.is_err() {
            failures.push(format!("case {case} panicked ({description})"));
            calculators = Calculators::new(&model).unwrap();
        }
        if elapsed > CASE_LIMIT {
            failures.push(format!("case {case} took {elapsed:?} ({description})"));
        }
    }
    CASE.store(usize::MAX, Ordering::Relaxed);
    // Straight to standard error, past the test harness's capture: the test command shows
    // the numbers whether the test passes or not.
    let _ = writeln!(
        std::io::stderr(),
        "fuzz pass, seed {SEED:#x}, {:.1} s: {} XYZ cases ({} rejected by the parser, {} \
         refused by the calculator, {} computed); {} model cases ({} rejected by the loader, \
         {} refused by the calculator, {} computed)",
        start.elapsed().as_secs_f64(),
        xyz_tally.cases,
        xyz_tally.rejected,
        xyz_tally.refused,
        xyz_tally.computed,
        model_tally.cases,
        model_tally.rejected,
        model_tally.refused,
        model_tally.computed,
    );
    // Every kind of outcome must occur, or the pass tests less than it claims.
    for (kind, tally) in [("XYZ", &xyz_tally), ("model", &model_tally)] {
        if tally.rejected == 0 || tally.refused == 0 || tally.computed == 0 {
            failures.push(format!("{kind} cases never reached some outcome"));
        }
    }
    failures
}

#[test]
fn seeded_mutations_never_panic_abort_or_hang() {
    let cases = std::env::var("PAINN_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES);
    let current = Arc::new(Mutex::new(String::new()));
    let (done, finished) = mpsc::channel();
    let worker_current = current.clone();
    std::thread::spawn(move || {
        let failures = run_pass(cases, &worker_current);
        done.send(failures).ok();
    });
    let limit = PASS_LIMIT * cases.div_ceil(CASES).max(1) as u32;
    match finished.recv_timeout(limit) {
        Ok(failures) => assert!(failures.is_empty(), "{}", failures.join("\n")),
        Err(_) => panic!(
            "the fuzz pass ran past {limit:?}, at {}",
            current.lock().unwrap()
        ),
    }
}
