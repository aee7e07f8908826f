//! Deterministic, seekable pseudo-random content.
//!
//! Every byte is a pure function of (seed, offset), so a client that resumes at the
//! wrong offset, or stitches segments in the wrong order, produces a different hash.
//! Word `k` (8 bytes, little-endian) is `splitmix64(seed ^ k * GOLDEN)`, which makes
//! any offset computable in O(1) and costs one multiply-xorshift round per 8 bytes.

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Odd, so that distinct generations map to distinct seeds (multiplication by an odd
/// constant is a bijection on u64), and generation 0 leaves the seed unchanged.
const GENERATION_MIX: u64 = 0xD6E8_FEB8_6659_FD93;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline]
fn word(seed: u64, k: u64) -> [u8; 8] {
    splitmix64(seed ^ k.wrapping_mul(GOLDEN)).to_le_bytes()
}

/// The seed actually used for a versioned resource at `generation`.
pub(crate) fn effective_seed(seed: u64, generation: u64) -> u64 {
    seed ^ generation.wrapping_mul(GENERATION_MIX)
}

/// The deterministic content of `/bytes/<n>?seed=<seed>` (generation 0), bytes
/// `[offset, offset + buf.len())`.
pub fn fill_content(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut k = offset / 8;
    let skip = (offset % 8) as usize;
    let mut rest = buf;

    // Leading partial word, so the main loop can work on whole aligned words.
    if skip != 0 {
        let w = word(seed, k);
        let take = (8 - skip).min(rest.len());
        rest[..take].copy_from_slice(&w[skip..skip + take]);
        rest = &mut rest[take..];
        k += 1;
    }

    let mut words = rest.chunks_exact_mut(8);
    for chunk in &mut words {
        chunk.copy_from_slice(&word(seed, k));
        k += 1;
    }
    let tail = words.into_remainder();
    if !tail.is_empty() {
        let w = word(seed, k);
        let n = tail.len();
        tail.copy_from_slice(&w[..n]);
    }
}

/// The whole content of a resource of `len` bytes, for a given seed and generation.
/// `content(seed, 0, n)` is the body of `/bytes/n?seed=seed`, and
/// `content(seed, g, n)` that of `/bytes/n?seed=seed&versioned=1` at generation `g`.
pub fn content(seed: u64, generation: u64, len: u64) -> Vec<u8> {
    let len = usize::try_from(len).expect("content length does not fit in memory");
    let mut v = vec![0u8; len];
    fill_content(effective_seed(seed, generation), 0, &mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_offset_matches_the_whole() {
        let whole = content(7, 0, 1000);
        for start in 0..40u64 {
            for len in [0usize, 1, 3, 8, 9, 17, 100] {
                let mut buf = vec![0u8; len];
                fill_content(7, start, &mut buf);
                assert_eq!(&buf[..], &whole[start as usize..start as usize + len]);
            }
        }
    }

    #[test]
    fn seeds_and_generations_differ() {
        assert_ne!(content(1, 0, 64), content(2, 0, 64));
        assert_ne!(content(1, 0, 64), content(1, 1, 64));
        assert_eq!(effective_seed(5, 0), 5);
    }
}
