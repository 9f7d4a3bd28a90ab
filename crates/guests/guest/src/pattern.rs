//! The disk pattern `blk-verify` writes and checks, defined so that a test on
//! the host can recompute it from the image file alone.
//!
//! Every 8-byte little-endian word at byte offset `o` of the disk (`o` a
//! multiple of 8) holds `splitmix64(seed ^ (o / 8))`, where `seed` is
//! `bulkhead.seed=` (default 1) and `splitmix64(x)` is one step of Vigna's
//! SplitMix64 generator from state `x`:
//!
//! ```text
//! z = x + 0x9e3779b97f4a7c15            (wrapping)
//! z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
//! z = (z ^ (z >> 27)) * 0x94d049bb133111eb
//! return z ^ (z >> 31)
//! ```
//!
//! A word depends only on its offset and the seed, so any range can be
//! written or checked on its own, in any order, and a misplaced sector
//! (wrong offset) is caught as surely as a corrupted one.

/// One SplitMix64 step from state `x` (see the module docs).
pub const fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The pattern's word at byte offset `offset` (rounded down to a multiple of 8).
pub const fn word(seed: u64, offset: u64) -> u64 {
    splitmix64(seed ^ (offset / 8))
}

/// Fills `buf`, which starts at disk byte offset `offset` (a multiple of 8),
/// with the pattern; a trailing partial word gets the word's first bytes.
pub fn fill(buf: &mut [u8], seed: u64, offset: u64) {
    let mut at = offset;
    for chunk in buf.chunks_mut(8) {
        let bytes = word(seed, at).to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
        at += 8;
    }
}

/// The first difference between `buf` (read from disk byte offset
/// `offset`, a multiple of 8) and the pattern: the word's disk offset, the
/// word expected and the word found (partial words padded with zeros).
pub fn first_mismatch(buf: &[u8], seed: u64, offset: u64) -> Option<(u64, u64, u64)> {
    let mut at = offset;
    for chunk in buf.chunks(8) {
        let want = word(seed, at).to_le_bytes();
        if chunk != &want[..chunk.len()] {
            let mut got = [0u8; 8];
            got[..chunk.len()].copy_from_slice(chunk);
            let mut expect = [0u8; 8];
            expect[..chunk.len()].copy_from_slice(&want[..chunk.len()]);
            return Some((at, u64::from_le_bytes(expect), u64::from_le_bytes(got)));
        }
        at += 8;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // The first outputs of the reference generator seeded with 0: each
        // step adds the gamma to the state, so output i is splitmix64(i * gamma).
        let gamma = 0x9e37_79b9_7f4a_7c15u64;
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(gamma), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(splitmix64(gamma.wrapping_mul(2)), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn words_depend_on_offset_and_seed() {
        assert_eq!(word(1, 0), splitmix64(1));
        assert_eq!(word(1, 8), splitmix64(0));
        assert_eq!(word(1, 15), word(1, 8));
        assert_ne!(word(1, 16), word(2, 16));
    }

    #[test]
    fn fill_and_check_agree_at_any_offset() {
        let mut buf = vec![0u8; 4100]; // not a multiple of 8
        fill(&mut buf, 7, 1 << 20);
        assert_eq!(first_mismatch(&buf, 7, 1 << 20), None);
        assert_eq!(&buf[8..16], &word(7, (1 << 20) + 8).to_le_bytes());
        // The second half on its own matches too.
        assert_eq!(first_mismatch(&buf[2048..], 7, (1 << 20) + 2048), None);
        assert!(first_mismatch(&buf, 7, 0).is_some());
        buf[4099] ^= 1;
        let (at, want, got) = first_mismatch(&buf, 7, 1 << 20).unwrap();
        assert_eq!(at, (1 << 20) + 4096);
        assert_eq!(want ^ got, 1 << 24);
    }
}
