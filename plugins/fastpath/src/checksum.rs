//! The Internet checksum (RFC 1071): the ones'-complement sum of big-endian 16-bit words.
//!
//! Who calls it: [`crate::offload`], to complete the TCP/UDP checksums of split segments, to
//! recompute IPv4 header checksums and to leave pseudo-header sums in coalesced super-packets.
//!
//! It agrees with `tunplug.checksum` value for value, including the one point where ones'
//! complement has two zeros: a sum is `0` only when everything summed (data and `initial`) is
//! zero, and `0xFFFF` for any other multiple of `0xFFFF`. Folding an unsigned accumulator with
//! end-around carries gives exactly that, so no special case is needed.
//!
//! Sums are kept unfolded in a `u64` while they are being built ([`sum`], [`pseudo_header_sum`])
//! and folded once at the end ([`fold`], [`finish`]): ones'-complement addition is addition
//! modulo `0xFFFF`, so the order of folding does not change the result.

/// Bytes summed before the accumulator is folded: 2^30 bytes are 2^28 32-bit words of less
/// than 2^32 each, far below `u64::MAX`, so [`sum`] cannot overflow on any slice.
const FOLD_EVERY: usize = 1 << 30;

/// The unfolded sum of `data`'s big-endian 16-bit words (the odd last byte padded with zero).
///
/// Add several of these (and [`pseudo_header_sum`]) with plain `+` and [`fold`] the total,
/// as long as every summed piece but the last has even length.
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    let mut total = 0u64;
    for block in data.chunks(FOLD_EVERY) {
        total = u64::from(fold(total)) + sum_block(block);
    }
    total
}

/// The sum of one block of at most [`FOLD_EVERY`] bytes.
#[inline]
fn sum_block(data: &[u8]) -> u64 {
    // Two 16-bit words at a time as one big-endian u32: its value is the sum of the two words
    // times 1 or 65536, and 65536 == 1 (mod 0xFFFF). LLVM vectorizes this loop (widening adds).
    let mut words = data.chunks_exact(4);
    let mut total: u64 = words
        .by_ref()
        .map(|w| u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]])))
        .sum();
    let rest = words.remainder();
    if rest.len() >= 2 {
        total += u64::from(u16::from_be_bytes([rest[0], rest[1]]));
    }
    if rest.len() % 2 == 1 {
        total += u64::from(rest[rest.len() - 1]) << 8;
    }
    total
}

/// `total` folded to 16 bits with end-around carries: `0` only for `0`, else `1..=0xFFFF`.
#[inline]
pub fn fold(mut total: u64) -> u16 {
    while total > 0xFFFF {
        total = (total & 0xFFFF) + (total >> 16);
    }
    total as u16
}

/// The value for a checksum field: the complement of the folded `total`.
#[inline]
pub fn finish(total: u64) -> u16 {
    !fold(total)
}

/// The 16-bit ones'-complement sum of `data` plus `initial` (`tunplug.checksum`'s
/// `ones_complement_sum`).
#[inline]
pub fn ones_complement_sum(data: &[u8], initial: u64) -> u16 {
    fold(sum(data) + u64::from(fold(initial)))
}

/// The value for an IPv4/ICMP/TCP/UDP checksum field over `data` (field zeroed) plus
/// `initial` (`tunplug.checksum`'s `internet_checksum`).
#[inline]
pub fn internet_checksum(data: &[u8], initial: u64) -> u16 {
    !ones_complement_sum(data, initial)
}

/// The unfolded sum of a TCP/UDP pseudo-header: the source and destination addresses, the
/// protocol (IPv6: next header) and the L4 length.
///
/// `addresses` is the source address followed by the destination address, as both IP headers
/// lay them out: bytes 12..20 of an IPv4 header, 8..40 of an IPv6 header. IPv4's 16-bit
/// length and IPv6's 32-bit one sum alike (both are the value modulo `0xFFFF`).
#[inline]
pub fn pseudo_header_sum(addresses: &[u8], protocol: u8, length: usize) -> u64 {
    sum(addresses) + u64::from(protocol) + length as u64
}

/// [`pseudo_header_sum`] of an IPv4 header (`ip` starts with it, at least 20 bytes).
#[inline]
pub fn pseudo_header_sum_v4(ip: &[u8], protocol: u8, length: usize) -> u64 {
    pseudo_header_sum(&ip[12..20], protocol, length)
}

/// [`pseudo_header_sum`] of an IPv6 header (`ip` starts with it, at least 40 bytes).
#[inline]
pub fn pseudo_header_sum_v6(ip: &[u8], protocol: u8, length: usize) -> u64 {
    pseudo_header_sum(&ip[8..40], protocol, length)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `tunplug.checksum.ones_complement_sum`, transcribed: the data as one big-endian number
    /// modulo 0xFFFF, plus `initial`, with 0xFFFF for a zero remainder of non-zero input.
    fn python_ones_complement_sum(data: &[u8], initial: u64) -> u16 {
        let mut padded = data.to_vec();
        if padded.len() % 2 == 1 {
            padded.push(0);
        }
        let remainder = padded
            .iter()
            .fold(0u64, |acc, &b| (acc * 256 + u64::from(b)) % 0xFFFF);
        let total = (remainder + initial) % 0xFFFF;
        if total == 0 && (initial != 0 || padded.iter().any(|&b| b != 0)) {
            0xFFFF
        } else {
            total as u16
        }
    }

    /// RFC 1071's textbook loop: 16-bit words with end-around carries.
    fn word_sum(data: &[u8]) -> u16 {
        let mut total = 0u32;
        for pair in data.chunks(2) {
            let word = u32::from(pair[0]) << 8 | pair.get(1).map_or(0, |&b| u32::from(b));
            total += word;
            total = (total & 0xFFFF) + (total >> 16);
        }
        total as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(ones_complement_sum(&data, 0), 0xddf2);
        assert_eq!(internet_checksum(&data, 0), !0xddf2);
    }

    #[test]
    fn zero_is_only_the_sum_of_nothing() {
        assert_eq!(ones_complement_sum(&[], 0), 0);
        assert_eq!(ones_complement_sum(&[0; 9], 0), 0);
        assert_eq!(internet_checksum(&[], 0), 0xFFFF);
        assert_eq!(ones_complement_sum(&[0xFF, 0xFF], 0), 0xFFFF);
        assert_eq!(ones_complement_sum(&[0x80, 0x00, 0x7F, 0xFF], 0), 0xFFFF);
        assert_eq!(ones_complement_sum(&[], 0xFFFF), 0xFFFF);
        assert_eq!(ones_complement_sum(&[], 0x1_0000), 1);
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xFFFF_FFFF_FFFF_FFFF), 0xFFFF);
    }

    #[test]
    fn an_odd_last_byte_is_the_high_byte_of_a_word() {
        assert_eq!(ones_complement_sum(&[0x12], 0), 0x1200);
        assert_eq!(ones_complement_sum(&[0, 1, 0x12], 0), 0x1201);
        assert_eq!(ones_complement_sum(&[0, 1, 0, 1, 0x12], 0), 0x1202);
    }

    #[test]
    fn pseudo_headers_of_both_versions() {
        let mut v4 = [0u8; 20];
        v4[12..20].copy_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        // 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 6 + 100
        assert_eq!(fold(pseudo_header_sum_v4(&v4, 6, 100)), 0x146d);
        let mut v6 = [0u8; 40];
        v6[8] = 0xfd;
        v6[23] = 1;
        v6[24] = 0xfd;
        v6[39] = 2;
        // IPv6 carries a 32-bit length: 0x0001_0005 sums as 0x0001 + 0x0005.
        assert_eq!(
            fold(pseudo_header_sum_v6(&v6, 17, 0x1_0005)),
            fold(0xfd00 + 1 + 0xfd00 + 2 + 17 + 1 + 5)
        );
    }

    proptest! {
        #[test]
        fn agrees_with_the_python_reference(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            initial in prop_oneof![Just(0u64), 0u64..0x3_0000],
        ) {
            prop_assert_eq!(
                ones_complement_sum(&data, initial),
                python_ones_complement_sum(&data, initial)
            );
            prop_assert_eq!(fold(sum(&data)), word_sum(&data));
        }

        #[test]
        fn sums_of_pieces_add_up(
            head in proptest::collection::vec(any::<u8>(), 0..100),
            tail in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let mut head = head;
            if head.len() % 2 == 1 {
                head.pop();
            }
            let whole = [head.as_slice(), tail.as_slice()].concat();
            prop_assert_eq!(fold(sum(&head) + sum(&tail)), fold(sum(&whole)));
            prop_assert_eq!(
                internet_checksum(&tail, u64::from(ones_complement_sum(&head, 0))),
                internet_checksum(&whole, 0)
            );
        }
    }
}
