//! Bounds-checked access to the frame, in words rather than bytes.
//!
//! The verifier accepts a load or store through a packet pointer only if it can prove, on every
//! path, that the bytes lie between `data` and `data_end`. Every access here therefore goes
//! through [`check`], which compares `data + offset + N` with `data_end` and hands out the start
//! address only if the frame holds the `N` bytes; the callers then [`load`] and [`store`] at
//! constant offsets inside that window. `data` and `data_end` are re-read from the context on
//! every call: after `bpf_xdp_adjust_head` the old pointers are invalid, and the verifier forgets
//! every check made before the helper call.
//!
//! # Why unaligned word access
//!
//! Header fields sit at offsets that are only 2-aligned relative to the frame start (the IP
//! header starts at byte 14), and the frame start itself has no alignment the compiler can rely
//! on. Byte-by-byte access compiles into several times more instructions (and stack) than the
//! same program with word loads, so the build enables bpf-linker's
//! `allows-misaligned-mem-access` CPU feature (`.cargo/config.toml`) and these helpers use
//! `read_unaligned`/`write_unaligned`, which then compile to single loads and stores. The
//! verifier permits unaligned packet and map-value access on architectures with efficient
//! unaligned access (x86-64, arm64); it never permits unaligned *stack* access, which is why map
//! keys are built in an 8-byte-aligned slot ([`Aligned`]) whose fields sit at natural offsets.
//!
//! Loaded values are *raw*: a `u16` loaded from a big-endian header field holds the bytes as they
//! lie in memory. They are compared with raw constants and fed to the byte-order-independent
//! checksum sums as they are; only values the program computes with (lengths, the relayed port
//! range) are converted with `u16::from_be`.

use aya_ebpf::programs::XdpContext;

pub(crate) const ETH_HEADER: usize = 14;
pub(crate) const IPV4_HEADER: usize = 20;
pub(crate) const IPV6_HEADER: usize = 40;
pub(crate) const UDP_HEADER: usize = 8;
pub(crate) const CHANNEL_HEADER: usize = 4;

/// EtherTypes and the UDP protocol number as raw loads of their header fields.
pub(crate) const ETHERTYPE_IPV4: u16 = u16::from_ne_bytes([0x08, 0x00]);
pub(crate) const ETHERTYPE_IPV6: u16 = u16::from_ne_bytes([0x86, 0xdd]);
pub(crate) const PROTO_UDP: u8 = 17;

/// The address of `N` bytes at `offset` from the start of the frame, if the frame has them.
#[inline(always)]
pub(crate) fn check<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<usize> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return None;
    }
    Some(start + offset)
}

/// Length of the frame in bytes.
#[inline(always)]
pub(crate) fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// Loads a `T` from `at`.
///
/// # Safety
///
/// `at` must lie in a window returned by [`check`] since the last change of the frame's bounds,
/// with `size_of::<T>()` bytes to spare.
#[inline(always)]
pub(crate) unsafe fn load<T: Copy>(at: usize) -> T {
    // SAFETY: the caller guarantees the bytes are in the frame.
    unsafe { core::ptr::read_unaligned(at as *const T) }
}

/// Stores `value` at `at`.
///
/// # Safety
///
/// As for [`load`].
#[inline(always)]
pub(crate) unsafe fn store<T>(at: usize, value: T) {
    // SAFETY: the caller guarantees the bytes are in the frame.
    unsafe { core::ptr::write_unaligned(at as *mut T, value) }
}

/// A 16-byte address field as four raw words (IPv4: one word, then zeros).
pub(crate) type Address = [u32; 4];

/// Reads a 16-byte address field from a map value, as four word loads (a whole-array read would
/// become a byte-by-byte `memcpy`).
#[inline(always)]
pub(crate) fn address_of(octets: &[u8; 16]) -> Address {
    let p = octets.as_ptr();
    // SAFETY: `octets` is a valid reference to 16 bytes; any bit pattern is a valid `u32`.
    unsafe {
        [
            core::ptr::read_unaligned(p.cast::<u32>()),
            core::ptr::read_unaligned(p.add(4).cast::<u32>()),
            core::ptr::read_unaligned(p.add(8).cast::<u32>()),
            core::ptr::read_unaligned(p.add(12).cast::<u32>()),
        ]
    }
}

/// Loads a 16-byte address field at `at` as four word loads.
///
/// # Safety
///
/// As for [`load`], with 16 bytes to spare.
#[inline(always)]
pub(crate) unsafe fn address_at(at: usize) -> Address {
    // SAFETY: the caller guarantees the window.
    unsafe { [load(at), load(at + 4), load(at + 8), load(at + 12)] }
}

/// Stores an address as four word stores at `at`.
///
/// # Safety
///
/// As for [`store`], with 16 bytes to spare.
#[inline(always)]
pub(crate) unsafe fn store_address(at: usize, address: &Address) {
    // SAFETY: the caller guarantees the window.
    unsafe {
        store(at, address[0]);
        store(at + 4, address[1]);
        store(at + 8, address[2]);
        store(at + 12, address[3]);
    }
}

/// Whether two addresses are equal, in four word compares (eBPF has no `memcmp`).
#[inline(always)]
pub(crate) fn same_address(a: &Address, b: &Address) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
}

/// Whether an address field is all zeros (an unset own address).
#[inline(always)]
pub(crate) fn is_zero(a: &Address) -> bool {
    a[0] | a[1] | a[2] | a[3] == 0
}

/// A map key on the stack, 8-byte aligned so that the compiler's word-sized stores into it are
/// aligned (the verifier rejects unaligned stack access).
#[repr(C, align(8))]
pub(crate) struct Aligned<T>(pub(crate) T);

/// Whether an IPv6 next-header value is an extension header (IANA "IPv6 Extension Header
/// Types"), as opposed to an upper-layer protocol.
#[inline(always)]
pub(crate) const fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(
        next_header,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}
