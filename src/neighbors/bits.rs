//! Listing the set bits of bitmasks without a branch per bit: each byte's bit positions
//! come from a 256-entry table, eight at a time, and the list advances by the byte's
//! population count. The neighbour list ranks candidates with it, from a sparse bitmap over
//! their atom indices (a few bits per occupied word), where a loop per set bit would
//! mispredict its exit about once per word.

/// Bit positions of each byte value, padded with 0.
static POSITIONS: [[u8; 8]; 256] = {
    let mut table = [[0u8; 8]; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut listed = 0;
        let mut bit = 0;
        while bit < 8 {
            if byte & (1 << bit) != 0 {
                table[byte][listed] = bit as u8;
                listed += 1;
            }
            bit += 1;
        }
        byte += 1;
    }
    table
};

/// Lists set bits: [`list`](Self::list) for consecutive words, [`list_chosen`](Self::list_chosen)
/// for some words of a bitmap. Entries past the returned count are scratch.
#[derive(Clone, Copy, Debug)]
pub(super) struct Lister {
    /// `(words, base, out)`: writes `base + 64 w + b` for every set bit `b` of every word
    /// `words[w]`, in order, to the front of `out`, and returns how many it wrote. `out`
    /// needs room for `64 * words.len() + 8` values.
    pub list: fn(&[u64], u32, &mut [u32]) -> usize,
    /// `(bitmap, chosen, out)`: the same for the words `bitmap[w]`, `w` in `chosen` (in
    /// that order), with positions `64 w + b`; clears those words. `out` needs room for
    /// `64 * chosen.len() + 8` values.
    pub list_chosen: fn(&mut [u64], &[u32], &mut [u32]) -> usize,
}

/// The fastest implementation this processor supports.
pub(super) fn select() -> Lister {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("popcnt") {
            return Lister {
                list: list_avx2_checked,
                list_chosen: list_chosen_avx2_checked,
            };
        }
    }
    PORTABLE
}

pub(super) const PORTABLE: Lister = Lister {
    list: list_portable,
    list_chosen: list_chosen_portable,
};

fn check_room(words: usize, out: &[u32]) {
    assert!(
        out.len() >= 64 * words + 8,
        "room for every bit of every word, and one step more"
    );
}

/// Lists the set bits of `word` as `offset + b` at `out[listed..]`; returns the new count.
#[inline(always)]
fn list_word_portable(word: u64, offset: u32, out: &mut [u32], mut listed: usize) -> usize {
    for byte_index in 0..8 {
        let byte = (word >> (8 * byte_index)) as u8;
        let offset = offset + 8 * byte_index as u32;
        for (slot, &position) in out[listed..listed + 8]
            .iter_mut()
            .zip(&POSITIONS[byte as usize])
        {
            *slot = offset + position as u32;
        }
        listed += byte.count_ones() as usize;
    }
    listed
}

fn list_portable(words: &[u64], base: u32, out: &mut [u32]) -> usize {
    check_room(words.len(), out);
    let mut listed = 0;
    for (word_index, &word) in words.iter().enumerate() {
        listed = list_word_portable(word, base + 64 * word_index as u32, out, listed);
    }
    listed
}

fn list_chosen_portable(bitmap: &mut [u64], chosen: &[u32], out: &mut [u32]) -> usize {
    check_room(chosen.len(), out);
    let mut listed = 0;
    for &word_index in chosen {
        let word = std::mem::take(&mut bitmap[word_index as usize]);
        listed = list_word_portable(word, 64 * word_index, out, listed);
    }
    listed
}

/// # Safety
/// AVX2 and POPCNT are available, and `out` has room for 8 values past `listed` (at most
/// 64 per word were listed before, and the callers checked room for one step more).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
#[inline]
unsafe fn list_word_avx2(word: u64, offset: u32, out: *mut u32, mut listed: usize) -> usize {
    use std::arch::x86_64::*;
    let eight = _mm256_set1_epi32(8);
    let mut offsets = _mm256_set1_epi32(offset as i32);
    for byte_index in 0..8 {
        let byte = (word >> (8 * byte_index)) as u8 as usize;
        // SAFETY: the table row is 8 bytes; the room is the caller's contract.
        unsafe {
            let positions = _mm_loadl_epi64(POSITIONS.as_ptr().add(byte) as *const __m128i);
            let values = _mm256_add_epi32(_mm256_cvtepu8_epi32(positions), offsets);
            _mm256_storeu_si256(out.add(listed) as *mut __m256i, values);
        }
        listed += (byte as u32).count_ones() as usize;
        offsets = _mm256_add_epi32(offsets, eight);
    }
    listed
}

#[cfg(target_arch = "x86_64")]
fn list_avx2_checked(words: &[u64], base: u32, out: &mut [u32]) -> usize {
    check_room(words.len(), out);
    // SAFETY: `select` returns this function only when the processor has AVX2 and POPCNT;
    // the room was checked above.
    unsafe { list_avx2(words, base, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn list_avx2(words: &[u64], base: u32, out: &mut [u32]) -> usize {
    let mut listed = 0;
    for (word_index, &word) in words.iter().enumerate() {
        // SAFETY: the caller's room.
        listed = unsafe {
            list_word_avx2(
                word,
                base + 64 * word_index as u32,
                out.as_mut_ptr(),
                listed,
            )
        };
    }
    listed
}

#[cfg(target_arch = "x86_64")]
fn list_chosen_avx2_checked(bitmap: &mut [u64], chosen: &[u32], out: &mut [u32]) -> usize {
    check_room(chosen.len(), out);
    // SAFETY: as in `list_avx2_checked`.
    unsafe { list_chosen_avx2(bitmap, chosen, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn list_chosen_avx2(bitmap: &mut [u64], chosen: &[u32], out: &mut [u32]) -> usize {
    let mut listed = 0;
    for &word_index in chosen {
        let word = std::mem::take(&mut bitmap[word_index as usize]);
        // SAFETY: the caller's room.
        listed = unsafe { list_word_avx2(word, 64 * word_index, out.as_mut_ptr(), listed) };
    }
    listed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structures::SplitMix64;

    #[test]
    fn every_implementation_lists_the_set_bits_in_order() {
        let mut rng = SplitMix64::new(11);
        for length in 0..6 {
            for density in [0.0, 0.05, 0.5, 1.0] {
                let words: Vec<u64> = (0..length)
                    .map(|_| (0..64).fold(0u64, |w, b| w | ((rng.uniform() < density) as u64) << b))
                    .collect();
                let base = 1000;
                let expected: Vec<u32> = (0..64 * length as u32)
                    .filter(|&k| words[k as usize / 64] >> (k % 64) & 1 == 1)
                    .map(|k| base + k)
                    .collect();
                for lister in [PORTABLE, select()] {
                    let mut out = vec![u32::MAX; 64 * length + 8];
                    let listed = (lister.list)(&words, base, &mut out);
                    assert_eq!(&out[..listed], &expected[..]);
                    // The chosen words of a larger bitmap, listed and cleared.
                    let mut bitmap = vec![0u64; 3 * length + 1];
                    let chosen: Vec<u32> = (0..length as u32).map(|w| 3 * w + 1).collect();
                    for (&w, &word) in chosen.iter().zip(&words) {
                        bitmap[w as usize] = word;
                    }
                    let listed = (lister.list_chosen)(&mut bitmap, &chosen, &mut out);
                    let expected_chosen: Vec<u32> = expected
                        .iter()
                        .map(|&k| {
                            let k = k - base;
                            64 * chosen[k as usize / 64] + k % 64
                        })
                        .collect();
                    assert_eq!(&out[..listed], &expected_chosen[..]);
                    assert!(bitmap.iter().all(|&w| w == 0), "chosen words are cleared");
                }
            }
        }
    }
}
