//! Internet checksum arithmetic (RFC 1071) for the kernel program's incremental updates
//! (RFC 1624).
//!
//! It lives here, not in the kernel crate, so that it runs under the host's test harness: the
//! kernel crate has none. Everything is `#[inline(always)]` on integers, with no loops and no
//! `u128`, so it compiles into straight-line code the verifier accepts.
//!
//! # Why incremental
//!
//! The relay changes only addresses, ports, lengths and the 4-byte ChannelData header, never the
//! payload. RFC 1624 updates the checksum from the old one by taking out the old words and adding
//! the new ones, without reading the payload: constant cost whatever the datagram size, and no
//! loop over packet bytes for the verifier to bound. It also keeps the end-to-end property of the
//! checksum: a datagram that arrived corrupted leaves with a checksum that is still wrong for
//! it, so the receiver discards it, instead of the relay blessing corrupt data with a fresh
//! checksum.
//!
//! # Raw words
//!
//! All values here are *raw*: bytes as they lie in the packet, loaded into an integer with a
//! native-endian load (`u16::from_ne_bytes`, `u32::from_ne_bytes`, or a plain load in the kernel),
//! and results are stored back the same way. The one's complement sum does not depend on byte
//! order (RFC 1071 §2(B)): summing byte-swapped words gives the byte-swapped sum. So the kernel
//! never swaps a header byte; only numbers computed in host order (lengths) enter via `to_be()`,
//! which is exactly their raw form. A 32-bit raw word counts as its two 16-bit halves, because
//! [`fold`] adds the halves.

/// Adds a 16-byte address field, given as four raw 32-bit words, to `sum`.
///
/// IPv4 addresses are stored in the first word with zeros after, and zero words add nothing, so
/// the same call sums either family.
#[inline(always)]
pub const fn add_address(sum: u64, a: &[u32; 4]) -> u64 {
    sum + a[0] as u64 + a[1] as u64 + a[2] as u64 + a[3] as u64
}

/// Folds a wide sum of words into a 16-bit one's complement sum (end-around carry).
///
/// Four folds cover any `u64`: after the first the value is below 2^33, after the second below
/// 2^18, after the third at most 0x1_0001, after the fourth at most 0xFFFF.
#[inline(always)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "four folds leave at most 16 bits"
)]
pub const fn fold(sum: u64) -> u16 {
    let sum = (sum & 0xFFFF_FFFF) + (sum >> 32);
    let sum = (sum & 0xFFFF) + (sum >> 16);
    let sum = (sum & 0xFFFF) + (sum >> 16);
    let sum = (sum & 0xFFFF) + (sum >> 16);
    sum as u16
}

/// RFC 1624 equation 3: the checksum after the words summing to `removed` were replaced by words
/// summing to `added` (both wide sums of raw words): `HC' = ~(~HC + ~m + m')`.
///
/// `~m` is taken as [`ONES_MULTIPLE`]` - removed` rather than by folding `removed` first: both
/// are congruent to `-m` modulo 0xFFFF, and this saves the kernel program a second fold per
/// packet. `removed` must stay below `ONES_MULTIPLE` (2^48 - 1), which any sum of fewer than
/// 65,535 32-bit words does. The inner sum is never zero (`ONES_MULTIPLE - removed` is positive),
/// so [`fold`] gives exactly what folding `removed` first would whenever `old` or `added` is
/// non-zero: always for a UDP update, whose `added` holds a length of at least 8.
///
/// The result is the raw one's complement value; a UDP checksum must go through
/// [`udp_on_wire`] before it is written.
#[inline(always)]
pub const fn update(old: u16, removed: u64, added: u64) -> u16 {
    !fold(!old as u64 + (ONES_MULTIPLE - removed) + added)
}

/// 0xFFFF × 0x1_0001_0001: a multiple of 0xFFFF, so zero in one's complement arithmetic, and
/// larger than any sum [`update`] is asked to take out.
pub const ONES_MULTIPLE: u64 = 0xFFFF_FFFF_FFFF;

/// A computed UDP checksum as it is transmitted: zero means "no checksum" in UDP, so a computed
/// zero is sent as 0xFFFF, its one's complement equivalent (RFC 768; for IPv6, RFC 8200 §8.1).
/// Both values are the same in either byte order.
#[inline(always)]
pub const fn udp_on_wire(checksum: u16) -> u16 {
    if checksum == 0 { 0xFFFF } else { checksum }
}

/// A checksum computed from scratch from the wide sum of all the words it covers.
#[inline(always)]
pub const fn finish(sum: u64) -> u16 {
    !fold(sum)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation, reason = "test data generators")]

    use super::*;
    use std::vec::Vec;

    /// RFC 1071 from scratch on big-endian words: the reference everything is checked against.
    fn reference(bytes: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for pair in bytes.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            let lo = pair.get(1).copied().map_or(0, u64::from);
            sum += hi | lo;
        }
        while sum > 0xFFFF {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// Raw (native-endian) 16-bit words of `bytes`, summed.
    fn raw16(bytes: &[u8]) -> u64 {
        bytes
            .chunks(2)
            .map(|p| u64::from(u16::from_ne_bytes([p[0], p[1]])))
            .sum()
    }

    /// Raw 32-bit words of a 16-byte field.
    fn raw32(bytes: &[u8; 16]) -> [u32; 4] {
        core::array::from_fn(|i| {
            u32::from_ne_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ])
        })
    }

    /// The bytes a raw checksum is stored as.
    fn stored(raw: u16) -> [u8; 2] {
        raw.to_ne_bytes()
    }

    #[test]
    fn fold_handles_every_carry() {
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xFFFF), 0xFFFF);
        assert_eq!(fold(0x1_0000), 1);
        assert_eq!(fold(0x1_FFFE), 0xFFFF);
        assert_eq!(fold(0x1_FFFF), 1);
        assert_eq!(fold(u64::MAX), 0xFFFF);
        assert_eq!(fold(0xFFFF_FFFF), 0xFFFF);
    }

    #[test]
    fn rfc1071_example_sums_as_published() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2, whose complement is 220d.
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(reference(&bytes), 0x220d);
        assert_eq!(stored(finish(raw16(&bytes))), 0x220du16.to_be_bytes());
    }

    #[test]
    fn raw_address_words_sum_like_their_halves() {
        let a = [
            0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0xff, 0xfe,
        ];
        assert_eq!(fold(add_address(7, &raw32(&a))), fold(7 + raw16(&a)));
    }

    #[test]
    fn incremental_update_matches_recomputation() {
        // Replace 16 bytes in the middle of a buffer and compare with a fresh checksum, over many
        // pseudo-random buffers (a small LCG keeps the test dependency-free).
        let mut state: u32 = 12345;
        let mut next = || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 16) as u8
        };
        for _ in 0..5000 {
            let mut data: Vec<u8> = (0..48).map(|_| next()).collect();
            let old = finish(raw16(&data));
            assert_eq!(stored(old), reference(&data).to_be_bytes());
            let mut field = [0u8; 16];
            field.copy_from_slice(&data[8..24]);
            let removed = add_address(0, &raw32(&field));
            for byte in &mut data[8..24] {
                *byte = next();
            }
            field.copy_from_slice(&data[8..24]);
            let added = add_address(0, &raw32(&field));
            let fresh = reference(&data);
            let incremental = update(old, removed, added);
            assert_eq!(
                stored(udp_on_wire(incremental)),
                udp_on_wire(fresh).to_be_bytes(),
                "incremental {incremental:#06x} fresh {fresh:#06x}"
            );
        }
    }

    #[test]
    fn zero_udp_checksum_goes_on_the_wire_as_all_ones() {
        assert_eq!(udp_on_wire(0), 0xFFFF);
        assert_eq!(udp_on_wire(0x1234), 0x1234);
    }

    #[test]
    fn ipv4_header_checksum_matches_a_known_header() {
        // A 20-byte header whose checksum field (bytes 10..12) is b861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(reference(&header), 0xb861);
        assert_eq!(stored(finish(raw16(&header))), [0xb8, 0x61]);
    }
}
