//! The cell list's hot loop: which atoms of a bin lie within a radius of a point. AVX2 where
//! the processor has it, portable code otherwise; both do the same arithmetic (no FMA), so
//! they select the same atoms bit for bit.

/// Squared radii of the filter, Angstrom^2.
#[derive(Clone, Copy, Debug)]
pub(super) struct Radii {
    /// Atoms at most this far are hits.
    pub accept_squared: f64,
    /// Hits at least this far are near the boundary and need an exact look.
    pub exact_above_squared: f64,
    /// Hits closer than this are suspicious (only the receiver itself, at 0, is expected).
    pub minimum_squared: f64,
}

/// What a filter call saw.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Seen {
    /// Some hit lies in the boundary band.
    pub in_band: bool,
    /// Number of points closer than the minimum distance.
    pub too_close: u32,
}

/// Signature shared by the implementations: appends to `hits[*count..]` every `k` in
/// `0..xs.len()` with `d2 = (xs[k]-q[0])^2 + (ys[k]-q[1])^2 + (zs[k]-q[2])^2 <=
/// accept_squared`, in increasing order, and reports what it saw. `hits` needs room for
/// `*count + xs.len() + 4` entries.
pub(super) type WithinFn =
    fn(&[f64], &[f64], &[f64], [f64; 3], &Radii, &mut [u32], &mut usize) -> Seen;

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

pub(super) fn within_portable(
    xs: &[f64],
    ys: &[f64],
    zs: &[f64],
    q: [f64; 3],
    radii: &Radii,
    hits: &mut [u32],
    count: &mut usize,
) -> Seen {
    assert!(hits.len() >= *count + xs.len() + 4 && ys.len() == xs.len() && zs.len() == xs.len());
    let mut c = *count;
    let mut seen = Seen::default();
    for k in 0..xs.len() {
        let dx = xs[k] - q[0];
        let dy = ys[k] - q[1];
        let dz = zs[k] - q[2];
        let d2 = dx * dx + dy * dy + dz * dz;
        let inside = d2 <= radii.accept_squared;
        // Branch-free compaction: write unconditionally, advance when inside.
        hits[c] = k as u32;
        c += inside as usize;
        seen.in_band |= inside & (d2 >= radii.exact_above_squared);
        seen.too_close += (d2 < radii.minimum_squared) as u32;
    }
    *count = c;
    seen
}

#[cfg(target_arch = "x86_64")]
fn within_avx2_checked(
    xs: &[f64],
    ys: &[f64],
    zs: &[f64],
    q: [f64; 3],
    radii: &Radii,
    hits: &mut [u32],
    count: &mut usize,
) -> Seen {
    assert!(hits.len() >= *count + xs.len() + 4 && ys.len() == xs.len() && zs.len() == xs.len());
    // SAFETY: `select` returns this function only when the processor has AVX2; the slice
    // lengths were checked above, which is all the unchecked loads and stores rely on.
    unsafe { within_avx2(xs, ys, zs, q, radii, hits, count) }
}

/// For each 4-bit mask, the indices of its set bits, packed first.
#[cfg(target_arch = "x86_64")]
const PACKED_LANES: [[u32; 4]; 16] = {
    let mut table = [[0u32; 4]; 16];
    let mut mask = 0;
    while mask < 16 {
        let mut filled = 0;
        let mut lane = 0;
        while lane < 4 {
            if mask & (1 << lane) != 0 {
                table[mask][filled] = lane as u32;
                filled += 1;
            }
            lane += 1;
        }
        mask += 1;
    }
    table
};

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn within_avx2(
    xs: &[f64],
    ys: &[f64],
    zs: &[f64],
    q: [f64; 3],
    radii: &Radii,
    hits: &mut [u32],
    count: &mut usize,
) -> Seen {
    use std::arch::x86_64::*;
    let n = xs.len();
    let mut c = *count;
    let mut k = 0;
    let mut band_mask = 0;
    let mut too_close = 0;
    // SAFETY (whole block): k + 4 <= n bounds every load; c + 4 <= count + n + 4 <=
    // hits.len() bounds every store, as the caller checked.
    unsafe {
        let (qx, qy, qz) = (
            _mm256_set1_pd(q[0]),
            _mm256_set1_pd(q[1]),
            _mm256_set1_pd(q[2]),
        );
        let accept = _mm256_set1_pd(radii.accept_squared);
        let exact_above = _mm256_set1_pd(radii.exact_above_squared);
        let minimum = _mm256_set1_pd(radii.minimum_squared);
        while k + 4 <= n {
            let dx = _mm256_sub_pd(_mm256_loadu_pd(xs.as_ptr().add(k)), qx);
            let dy = _mm256_sub_pd(_mm256_loadu_pd(ys.as_ptr().add(k)), qy);
            let dz = _mm256_sub_pd(_mm256_loadu_pd(zs.as_ptr().add(k)), qz);
            let d2 = _mm256_add_pd(
                _mm256_add_pd(_mm256_mul_pd(dx, dx), _mm256_mul_pd(dy, dy)),
                _mm256_mul_pd(dz, dz),
            );
            let inside = _mm256_cmp_pd::<_CMP_LE_OQ>(d2, accept);
            let mask = _mm256_movemask_pd(inside) as usize;
            let band = _mm256_and_pd(inside, _mm256_cmp_pd::<_CMP_GE_OQ>(d2, exact_above));
            band_mask |= _mm256_movemask_pd(band);
            too_close += _mm256_movemask_pd(_mm256_cmp_pd::<_CMP_LT_OQ>(d2, minimum)).count_ones();
            let lanes = _mm_loadu_si128(PACKED_LANES[mask].as_ptr() as *const __m128i);
            let indices = _mm_add_epi32(lanes, _mm_set1_epi32(k as i32));
            _mm_storeu_si128(hits.as_mut_ptr().add(c) as *mut __m128i, indices);
            c += mask.count_ones() as usize;
            k += 4;
        }
    }
    *count = c;
    let tail = within_portable(&xs[k..], &ys[k..], &zs[k..], q, radii, hits, count);
    for hit in &mut hits[c..*count] {
        *hit += k as u32;
    }
    Seen {
        in_band: band_mask != 0 || tail.in_band,
        too_close: too_close + tail.too_close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structures::SplitMix64;

    #[test]
    fn every_implementation_selects_the_same_atoms() {
        let mut rng = SplitMix64::new(5);
        for n in 0..40 {
            let xs: Vec<f64> = (0..n).map(|_| rng.range(-3.0, 3.0)).collect();
            let ys: Vec<f64> = (0..n).map(|_| rng.range(-3.0, 3.0)).collect();
            let mut zs: Vec<f64> = (0..n).map(|_| rng.range(-3.0, 3.0)).collect();
            if n > 3 {
                zs[3] = f64::NAN;
            }
            let q = [rng.range(-1.0, 1.0), 0.5, -0.25];
            let limit = 4.0;
            let radii = Radii {
                accept_squared: limit,
                exact_above_squared: 3.5,
                minimum_squared: 0.5,
            };
            let expected_seen = (0..n).fold(Seen::default(), |mut seen, k| {
                let d = [xs[k] - q[0], ys[k] - q[1], zs[k] - q[2]];
                let d2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
                seen.in_band |= d2 <= limit && d2 >= 3.5;
                seen.too_close += (d2 < 0.5) as u32;
                seen
            });
            let expected: Vec<u32> = (0..n)
                .filter(|&k| {
                    let d = [xs[k] - q[0], ys[k] - q[1], zs[k] - q[2]];
                    d[0] * d[0] + d[1] * d[1] + d[2] * d[2] <= limit
                })
                .map(|k| k as u32)
                .collect();
            let mut hits = vec![0u32; 7 + n + 4];
            for implementation in [within_portable as WithinFn, select()] {
                let mut count = 7;
                let seen = implementation(&xs, &ys, &zs, q, &radii, &mut hits, &mut count);
                assert_eq!(&hits[7..count], &expected[..]);
                assert_eq!(seen, expected_seen);
            }
        }
    }
}
