//! The cell list's hot loop: which candidate images lie within a radius of a receiver.
//!
//! Coordinates are f32 offsets from a point of the receiver's bin, eight per AVX2 register.
//! The caller sizes a boundary band from the f32 round-off and decides every hit inside the
//! band exactly, in f64, from the positions as given, so f32 only ever speeds the common
//! case up and never changes the list. AVX2 where the processor has it, portable code
//! otherwise; both do the same arithmetic (no FMA), so they select the same images bit for
//! bit. Candidate arrays are padded to a multiple of [`LANES`] with `x = +inf` (never a hit).

/// Candidates per vector step; candidate arrays are padded to a multiple of this.
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

/// What a filter call saw.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Seen {
    /// Some hit lies in the boundary band.
    pub in_band: bool,
    /// Number of images closer than the suspicious radius.
    pub too_close: u32,
}

/// Sets bit `k % 8` of `mask[k / 8]` for every `k` with `d2 = (xs[k]-q[0])^2 +
/// (ys[k]-q[1])^2 + (zs[k]-q[2])^2 <= accept_squared` (and clears it otherwise), and reports
/// what it saw. The arrays have one length, a multiple of [`LANES`]; `mask` has one byte per
/// [`LANES`] candidates.
pub(super) type WithinFn = fn(&[f32], &[f32], &[f32], [f32; 3], &Radii, &mut [u8]) -> Seen;

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

fn check_lengths(xs: &[f32], ys: &[f32], zs: &[f32], mask: &[u8]) {
    assert!(
        xs.len() % LANES == 0
            && ys.len() == xs.len()
            && zs.len() == xs.len()
            && mask.len() == xs.len() / LANES,
        "candidate arrays must share one length, a multiple of {LANES}, with a mask byte per {LANES}"
    );
}

pub(super) fn within_portable(
    xs: &[f32],
    ys: &[f32],
    zs: &[f32],
    q: [f32; 3],
    radii: &Radii,
    mask: &mut [u8],
) -> Seen {
    check_lengths(xs, ys, zs, mask);
    let mut seen = Seen::default();
    for (byte, k0) in mask.iter_mut().zip((0..xs.len()).step_by(LANES)) {
        let mut bits = 0u8;
        for lane in 0..LANES {
            let k = k0 + lane;
            let dx = xs[k] - q[0];
            let dy = ys[k] - q[1];
            let dz = zs[k] - q[2];
            let d2 = (dx * dx + dy * dy) + dz * dz;
            let inside = d2 <= radii.accept_squared;
            bits |= (inside as u8) << lane;
            seen.in_band |= inside & (d2 >= radii.exact_above_squared);
            seen.too_close += (d2 < radii.suspicious_squared) as u32;
        }
        *byte = bits;
    }
    seen
}

#[cfg(target_arch = "x86_64")]
fn within_avx2_checked(
    xs: &[f32],
    ys: &[f32],
    zs: &[f32],
    q: [f32; 3],
    radii: &Radii,
    mask: &mut [u8],
) -> Seen {
    check_lengths(xs, ys, zs, mask);
    // SAFETY: `select` returns this function only when the processor has AVX2; the lengths
    // were checked above, which is all the unchecked loads and stores rely on.
    unsafe { within_avx2(xs, ys, zs, q, radii, mask) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn within_avx2(
    xs: &[f32],
    ys: &[f32],
    zs: &[f32],
    q: [f32; 3],
    radii: &Radii,
    mask: &mut [u8],
) -> Seen {
    use std::arch::x86_64::*;
    let (mut band_mask, mut too_close) = (0, 0);
    let (qx, qy, qz) = (
        _mm256_set1_ps(q[0]),
        _mm256_set1_ps(q[1]),
        _mm256_set1_ps(q[2]),
    );
    let accept = _mm256_set1_ps(radii.accept_squared);
    let exact_above = _mm256_set1_ps(radii.exact_above_squared);
    let suspicious = _mm256_set1_ps(radii.suspicious_squared);
    // SAFETY (whole loop): k + 8 <= len bounds every load; k / 8 < mask.len(), as the
    // caller checked.
    unsafe {
        for (index, byte) in mask.iter_mut().enumerate() {
            let k = index * LANES;
            let dx = _mm256_sub_ps(_mm256_loadu_ps(xs.as_ptr().add(k)), qx);
            let dy = _mm256_sub_ps(_mm256_loadu_ps(ys.as_ptr().add(k)), qy);
            let dz = _mm256_sub_ps(_mm256_loadu_ps(zs.as_ptr().add(k)), qz);
            let d2 = _mm256_add_ps(
                _mm256_add_ps(_mm256_mul_ps(dx, dx), _mm256_mul_ps(dy, dy)),
                _mm256_mul_ps(dz, dz),
            );
            let inside = _mm256_cmp_ps::<_CMP_LE_OQ>(d2, accept);
            let band = _mm256_and_ps(inside, _mm256_cmp_ps::<_CMP_GE_OQ>(d2, exact_above));
            band_mask |= _mm256_movemask_ps(band);
            too_close += (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(d2, suspicious)) as u32)
                .count_ones();
            *byte = _mm256_movemask_ps(inside) as u8;
        }
    }
    Seen {
        in_band: band_mask != 0,
        too_close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structures::SplitMix64;

    #[test]
    fn every_implementation_selects_the_same_images() {
        let mut rng = SplitMix64::new(5);
        for n in (0..64).step_by(LANES) {
            let xs: Vec<f32> = (0..n).map(|_| rng.range(-3.0, 3.0) as f32).collect();
            let ys: Vec<f32> = (0..n).map(|_| rng.range(-3.0, 3.0) as f32).collect();
            let mut zs: Vec<f32> = (0..n).map(|_| rng.range(-3.0, 3.0) as f32).collect();
            if n > 3 {
                zs[3] = f32::INFINITY;
            }
            let q = [rng.range(-1.0, 1.0) as f32, 0.5, -0.25];
            let radii = Radii {
                accept_squared: 4.0,
                exact_above_squared: 3.5,
                suspicious_squared: 0.5,
            };
            let d2 = |k: usize| {
                let d = [xs[k] - q[0], ys[k] - q[1], zs[k] - q[2]];
                (d[0] * d[0] + d[1] * d[1]) + d[2] * d[2]
            };
            let expected: Vec<usize> = (0..n).filter(|&k| d2(k) <= 4.0).collect();
            let expected_seen = Seen {
                in_band: (0..n).any(|k| d2(k) <= 4.0 && d2(k) >= 3.5),
                too_close: (0..n).filter(|&k| d2(k) < 0.5).count() as u32,
            };
            for implementation in [within_portable as WithinFn, select()] {
                // Stale bits must be overwritten.
                let mut mask = vec![0xa5u8; n / LANES];
                let seen = implementation(&xs, &ys, &zs, q, &radii, &mut mask);
                let selected: Vec<usize> = (0..n)
                    .filter(|&k| mask[k / LANES] & (1 << (k % LANES)) != 0)
                    .collect();
                assert_eq!(selected, expected);
                assert_eq!(seen, expected_seen);
            }
        }
    }
}
