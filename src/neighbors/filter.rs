//! The cell list's hot loop: which candidate images lie within a radius of a receiver.
//!
//! Coordinates are f32 (atoms sorted by bin, relative to a point of the system), eight per
//! AVX2 register. The candidates of one receiver are a few runs of consecutive atoms, each
//! moved by one lattice shift. The caller sizes a boundary band from the f32 round-off and
//! decides every hit inside the band exactly, in f64, from the positions as given, so f32
//! only ever speeds the common case up and never changes the list. AVX2 where the
//! processor has it, portable code otherwise; both do the same arithmetic (no FMA), so they
//! select the same images bit for bit.

/// Candidates per vector step. Coordinate arrays extend at least this far past their last
/// atom (any finite value), so that a run's last step may load past its end.
pub(super) const LANES: usize = 8;

/// Squared f32 thresholds of one filter call, Angstrom^2.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Radii {
    /// Images at most this far are hits (the radius plus the band).
    pub accept_squared: f32,
    /// Hits at least this far are near the boundary and need an exact look.
    pub exact_above_squared: f32,
    /// Images closer than this are suspicious (only the receiver itself, at 0, is expected).
    pub suspicious_squared: f32,
}

/// A run of consecutive candidate atoms seen through one lattice shift.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Run {
    /// First atom (index into the coordinate arrays) and number of atoms.
    pub start: u32,
    pub len: u32,
    /// The run's bits start at this byte of the mask (its first candidate is bit 0).
    pub first_byte: u32,
    /// Cartesian shift vector of the image, Angstrom (rounded to f32).
    pub shift: [f32; 3],
}

impl Run {
    /// Mask bytes of this run: one per [`LANES`] atoms, the last one partly used.
    pub fn bytes(&self) -> u32 {
        self.len.div_ceil(LANES as u32)
    }
}

/// What a filter call saw.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Seen {
    /// Some hit lies in the boundary band.
    pub in_band: bool,
    /// Number of images closer than the suspicious radius.
    pub too_close: u32,
}

/// For each checked run and each of its atoms `k` (lane `l` of step `s`), with
/// `p = q - shift` (f32), sets bit `l` of `mask[first_byte + s]` when `d2 = (xs[k]-p[0])^2 +
/// (ys[k]-p[1])^2 + (zs[k]-p[2])^2 <= accept_squared`, clears it otherwise (bits past the
/// run's end are clear), and reports what it saw.
pub(super) type WithinFn = fn(&CheckedRuns, [f32; 3], &Radii, &mut [u8]) -> Seen;

/// Candidate coordinates as structure of arrays, each at least [`LANES`] longer than the
/// atoms it holds.
pub(super) struct Coordinates<'a> {
    pub x: &'a [f32],
    pub y: &'a [f32],
    pub z: &'a [f32],
}

/// Runs checked once against their coordinate arrays, for the many receivers of one bin:
/// every step of every run stays inside the arrays.
pub(super) struct CheckedRuns<'a> {
    xyz: &'a Coordinates<'a>,
    runs: &'a [Run],
    /// Mask bytes the runs take (the end of the last byte of any run).
    mask_bytes: usize,
}

impl<'a> CheckedRuns<'a> {
    /// Panics when a run's last step would read past the coordinate arrays (or they differ
    /// in length).
    pub fn new(xyz: &'a Coordinates<'a>, runs: &'a [Run]) -> Self {
        let len = xyz.x.len();
        assert!(
            xyz.y.len() == len && xyz.z.len() == len,
            "coordinate arrays must share one length"
        );
        let mut mask_bytes = 0;
        for run in runs {
            assert!(
                run.start as usize + run.bytes() as usize * LANES <= len,
                "a run's last step must stay inside the coordinate arrays"
            );
            mask_bytes = mask_bytes.max((run.first_byte + run.bytes()) as usize);
        }
        CheckedRuns {
            xyz,
            runs,
            mask_bytes,
        }
    }

    /// Mask bytes the runs take.
    pub fn mask_bytes(&self) -> usize {
        self.mask_bytes
    }
}

/// The fastest implementation this processor supports.
pub(super) fn select() -> WithinFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            return within_avx2_checked;
        }
    }
    within_portable
}

fn check_mask(runs: &CheckedRuns, mask: &[u8]) {
    assert!(
        runs.mask_bytes <= mask.len(),
        "the runs' bits must fit in the mask"
    );
}

/// Lanes of a step that hold atoms of the run (the last step may be partial).
#[inline(always)]
fn lanes_in_run(run: &Run, step: u32) -> u8 {
    let left = run.len - step * LANES as u32;
    if left >= LANES as u32 {
        0xff
    } else {
        (1u8 << left) - 1
    }
}

pub(super) fn within_portable(
    checked: &CheckedRuns,
    q: [f32; 3],
    radii: &Radii,
    mask: &mut [u8],
) -> Seen {
    check_mask(checked, mask);
    let xyz = checked.xyz;
    let mut seen = Seen::default();
    for run in checked.runs {
        let p = [
            q[0] - run.shift[0],
            q[1] - run.shift[1],
            q[2] - run.shift[2],
        ];
        for step in 0..run.bytes() {
            let k0 = (run.start + step * LANES as u32) as usize;
            let (mut inside, mut band, mut close) = (0u8, 0u8, 0u8);
            for lane in 0..LANES {
                let k = k0 + lane;
                let dx = xyz.x[k] - p[0];
                let dy = xyz.y[k] - p[1];
                let dz = xyz.z[k] - p[2];
                let d2 = (dx * dx + dy * dy) + dz * dz;
                inside |= ((d2 <= radii.accept_squared) as u8) << lane;
                band |= ((d2 >= radii.exact_above_squared) as u8) << lane;
                close |= ((d2 < radii.suspicious_squared) as u8) << lane;
            }
            let valid = lanes_in_run(run, step);
            inside &= valid;
            seen.in_band |= inside & band != 0;
            seen.too_close += (close & valid).count_ones();
            mask[(run.first_byte + step) as usize] = inside;
        }
    }
    seen
}

#[cfg(target_arch = "x86_64")]
fn within_avx2_checked(checked: &CheckedRuns, q: [f32; 3], radii: &Radii, mask: &mut [u8]) -> Seen {
    check_mask(checked, mask);
    // SAFETY: `select` returns this function only when the processor has AVX2; the runs
    // were checked against the arrays when `checked` was made, and against the mask above,
    // which is all the unchecked loads and stores rely on.
    unsafe { within_avx2(checked.xyz, q, checked.runs, radii, mask) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn within_avx2(
    xyz: &Coordinates,
    q: [f32; 3],
    runs: &[Run],
    radii: &Radii,
    mask: &mut [u8],
) -> Seen {
    use std::arch::x86_64::*;
    // Lanes of the band and counts of close images accumulate in vectors; only the mask
    // byte leaves the vector unit in each step. The last step of a run masks the lanes
    // past its end.
    let mut band = _mm256_setzero_ps();
    let mut close_counts = _mm256_setzero_si256();
    let accept = _mm256_set1_ps(radii.accept_squared);
    let exact_above = _mm256_set1_ps(radii.exact_above_squared);
    let suspicious = _mm256_set1_ps(radii.suspicious_squared);
    let lane_numbers = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for run in runs {
        let p = [
            q[0] - run.shift[0],
            q[1] - run.shift[1],
            q[2] - run.shift[2],
        ];
        let (px, py, pz) = (
            _mm256_set1_ps(p[0]),
            _mm256_set1_ps(p[1]),
            _mm256_set1_ps(p[2]),
        );
        // SAFETY (whole loop): the run's steps stay inside the arrays and its bytes inside
        // the mask, as `CheckedRuns::new` and the caller checked.
        unsafe {
            let (xs, ys, zs) = (
                xyz.x.as_ptr().add(run.start as usize),
                xyz.y.as_ptr().add(run.start as usize),
                xyz.z.as_ptr().add(run.start as usize),
            );
            let out = mask.as_mut_ptr().add(run.first_byte as usize);
            let steps = run.bytes() as usize;
            for step in 0..steps {
                let k = step * LANES;
                let dx = _mm256_sub_ps(_mm256_loadu_ps(xs.add(k)), px);
                let dy = _mm256_sub_ps(_mm256_loadu_ps(ys.add(k)), py);
                let dz = _mm256_sub_ps(_mm256_loadu_ps(zs.add(k)), pz);
                let d2 = _mm256_add_ps(
                    _mm256_add_ps(_mm256_mul_ps(dx, dx), _mm256_mul_ps(dy, dy)),
                    _mm256_mul_ps(dz, dz),
                );
                let mut inside = _mm256_cmp_ps::<_CMP_LE_OQ>(d2, accept);
                let mut close = _mm256_cmp_ps::<_CMP_LT_OQ>(d2, suspicious);
                if step + 1 == steps {
                    let left = _mm256_set1_epi32((run.len as usize - k) as i32);
                    let valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(left, lane_numbers));
                    inside = _mm256_and_ps(inside, valid);
                    close = _mm256_and_ps(close, valid);
                }
                band = _mm256_or_ps(
                    band,
                    _mm256_and_ps(inside, _mm256_cmp_ps::<_CMP_GE_OQ>(d2, exact_above)),
                );
                // A true comparison is -1 as an integer.
                close_counts = _mm256_sub_epi32(close_counts, _mm256_castps_si256(close));
                *out.add(step) = _mm256_movemask_ps(inside) as u8;
            }
        }
    }
    let mut counts = [0i32; 8];
    // SAFETY: 8 lanes into an 8-lane array.
    unsafe { _mm256_storeu_si256(counts.as_mut_ptr() as *mut __m256i, close_counts) };
    Seen {
        in_band: _mm256_movemask_ps(band) != 0,
        too_close: counts.iter().sum::<i32>() as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structures::SplitMix64;

    #[test]
    fn every_implementation_selects_the_same_images() {
        let mut rng = SplitMix64::new(5);
        for case in 0..40 {
            // Atoms, with the padding past the last that a run's last step may read.
            let atoms = 5 + case;
            let coordinate = |rng: &mut SplitMix64| -> Vec<f32> {
                (0..atoms + LANES)
                    .map(|_| rng.range(-3.0, 3.0) as f32)
                    .collect()
            };
            let (xs, ys, zs) = (
                coordinate(&mut rng),
                coordinate(&mut rng),
                coordinate(&mut rng),
            );
            // A few runs of consecutive atoms, each with its own shift, laid out byte after
            // byte in the mask (runs may overlap: one atom seen through two images).
            let mut runs = Vec::new();
            let mut bytes = 0;
            for _ in 0..1 + case % 4 {
                let start = (rng.uniform() * atoms as f64) as u32;
                let len = ((rng.uniform() * (atoms as u32 - start + 1) as f64) as u32).max(1);
                let len = len.min(atoms as u32 - start);
                let shift = [
                    rng.range(-1.0, 1.0) as f32,
                    0.0,
                    rng.range(-0.5, 0.5) as f32,
                ];
                let run = Run {
                    start,
                    len,
                    first_byte: bytes,
                    shift,
                };
                bytes += run.bytes();
                runs.push(run);
            }
            let q = [rng.range(-1.0, 1.0) as f32, 0.5, -0.25];
            let radii = Radii {
                accept_squared: 4.0,
                exact_above_squared: 3.5,
                suspicious_squared: 0.5,
            };
            let mut expected_mask = vec![0u8; bytes as usize];
            let mut expected_seen = Seen::default();
            for run in &runs {
                let p = [
                    q[0] - run.shift[0],
                    q[1] - run.shift[1],
                    q[2] - run.shift[2],
                ];
                for index in 0..run.len {
                    let k = (run.start + index) as usize;
                    let d = [xs[k] - p[0], ys[k] - p[1], zs[k] - p[2]];
                    let d2 = (d[0] * d[0] + d[1] * d[1]) + d[2] * d[2];
                    let bit = 8 * run.first_byte + index;
                    if d2 <= radii.accept_squared {
                        expected_mask[bit as usize / 8] |= 1 << (bit % 8);
                        expected_seen.in_band |= d2 >= radii.exact_above_squared;
                    }
                    expected_seen.too_close += (d2 < radii.suspicious_squared) as u32;
                }
            }
            let coordinates = Coordinates {
                x: &xs,
                y: &ys,
                z: &zs,
            };
            let checked = CheckedRuns::new(&coordinates, &runs);
            assert_eq!(checked.mask_bytes(), bytes as usize);
            for implementation in [within_portable as WithinFn, select()] {
                // Stale bits must be overwritten, also past a run's end.
                let mut mask = vec![0xa5u8; bytes as usize];
                let seen = implementation(&checked, q, &radii, &mut mask);
                assert_eq!(mask, expected_mask, "case {case}");
                assert_eq!(seen, expected_seen, "case {case}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "inside the coordinate arrays")]
    fn a_run_reading_past_the_padding_is_refused() {
        let xs = vec![0.0f32; 10];
        let coordinates = Coordinates {
            x: &xs,
            y: &xs,
            z: &xs,
        };
        let run = Run {
            start: 5,
            len: 4,
            first_byte: 0,
            shift: [0.0; 3],
        };
        CheckedRuns::new(&coordinates, &[run]);
    }

    #[test]
    #[should_panic(expected = "must fit in the mask")]
    fn a_mask_too_short_for_the_runs_is_refused() {
        let xs = vec![0.0f32; 32];
        let coordinates = Coordinates {
            x: &xs,
            y: &xs,
            z: &xs,
        };
        let run = Run {
            start: 0,
            len: 9,
            first_byte: 0,
            shift: [0.0; 3],
        };
        let checked = CheckedRuns::new(&coordinates, std::slice::from_ref(&run));
        let mut mask = [0u8; 1];
        select()(&checked, [0.0; 3], &Radii::default(), &mut mask);
    }
}
