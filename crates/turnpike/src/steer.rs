//! Steering of clients to relay threads by source address, for UDP listeners and TCP/TLS
//! listeners alike (on TCP the program picks the thread for each new connection).
//!
//! Every relay thread binds the listening addresses with `SO_REUSEPORT`, and by default the
//! kernel picks a thread by hashing the whole 4-tuple: two source ports of one host land on
//! different threads, so every per-source limit a thread keeps (the unauthenticated-answer rate
//! above all) would multiply with the thread count. A small classic-BPF program attached to each
//! listening group (`SO_ATTACH_REUSEPORT_CBPF`) picks the thread from the source address alone
//! (an IPv4 address, or the /64 of an IPv6 address, the same unit the limiter counts), so one
//! source always meets one thread and its limits hold for the whole relay.
//!
//! The program returns an index into the group, which the kernel keeps in the order the sockets
//! joined it: thread `i` binds its listeners `i`-th (`main.rs` binds them one thread after the
//! other). An index the group does not have falls back to the kernel's hash.
//!
//! Written out here rather than taken from a crate: it is eight instructions, and the crates
//! that assemble classic BPF do not offer the negative "network header" offsets it needs.

use std::io;
use std::os::fd::RawFd;

use turnpike_proto::AddressFamily;

// Opcodes of classic BPF (linux/filter.h, linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS
const TAX: u16 = 0x07; // BPF_MISC | BPF_TAX
const ALU_XOR_X: u16 = 0x04 | 0xa0 | 0x08; // BPF_ALU | BPF_XOR | BPF_X
const ALU_MUL_K: u16 = 0x04 | 0x20; // BPF_ALU | BPF_MUL | BPF_K
const ALU_RSH_K: u16 = 0x04 | 0x70; // BPF_ALU | BPF_RSH | BPF_K
const ALU_MOD_K: u16 = 0x04 | 0x90; // BPF_ALU | BPF_MOD | BPF_K
const RET_A: u16 = 0x06 | 0x10; // BPF_RET | BPF_A

/// Offsets from the network header, which a socket filter reaches at `SKF_NET_OFF + offset`.
fn network(offset: i32) -> u32 {
    u32::from_ne_bytes((libc::SKF_NET_OFF + offset).to_ne_bytes())
}

const fn op(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// The program for a listening group of `family` spread over `threads` threads.
fn program(family: AddressFamily, threads: u32) -> Vec<libc::sock_filter> {
    let mut program = match family {
        // The IPv4 source address: bytes 12..16 of the header.
        AddressFamily::V4 => vec![op(LD_W_ABS, network(12))],
        // The /64 of the IPv6 source address: bytes 8..16 of the header, folded into one word.
        AddressFamily::V6 => vec![
            op(LD_W_ABS, network(8)),
            op(TAX, 0),
            op(LD_W_ABS, network(12)),
            op(ALU_XOR_X, 0),
        ],
    };
    program.extend([
        // Fibonacci hashing, so that neighbouring addresses spread over the threads.
        op(ALU_MUL_K, 0x9E37_79B1),
        op(ALU_RSH_K, 16),
        op(ALU_MOD_K, threads.max(1)),
        op(RET_A, 0),
    ]);
    program
}

/// Attaches the steering program to the `SO_REUSEPORT` group `socket` (UDP, or a TCP listener,
/// where the program picks the thread for each connection from its first segment) belongs to.
pub(crate) fn by_source(socket: RawFd, family: AddressFamily, threads: usize) -> io::Result<()> {
    let threads = u32::try_from(threads).unwrap_or(u32::MAX);
    let mut filter = program(family, threads);
    let fprog = libc::sock_fprog {
        len: u16::try_from(filter.len()).unwrap_or(u16::MAX),
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `filter`, which outlives the call; the kernel copies the
    // program and keeps no pointer to it. The option length is that of `sock_fprog`.
    let result = unsafe {
        libc::setsockopt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::from_ref(&fprog).cast(),
            libc::socklen_t::try_from(size_of::<libc::sock_fprog>()).unwrap_or(0),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on an IP header the way the kernel would, for the addresses it reads.
    fn run(program: &[libc::sock_filter], header: &[u8]) -> u32 {
        let (mut a, mut x) = (0u32, 0u32);
        for instruction in program {
            match instruction.code {
                LD_W_ABS => {
                    let offset = usize::try_from(
                        i32::from_ne_bytes(instruction.k.to_ne_bytes()) - libc::SKF_NET_OFF,
                    )
                    .unwrap();
                    a = u32::from_be_bytes(header[offset..offset + 4].try_into().unwrap());
                }
                TAX => x = a,
                ALU_XOR_X => a ^= x,
                ALU_MUL_K => a = a.wrapping_mul(instruction.k),
                ALU_RSH_K => a >>= instruction.k,
                ALU_MOD_K => a %= instruction.k,
                RET_A => return a,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        panic!("no return")
    }

    fn ipv4_header(source: [u8; 4]) -> Vec<u8> {
        let mut header = vec![0x45; 20];
        header[12..16].copy_from_slice(&source);
        header
    }

    fn ipv6_header(source: [u8; 16]) -> Vec<u8> {
        let mut header = vec![0x60; 40];
        header[8..24].copy_from_slice(&source);
        header
    }

    #[test]
    fn one_source_always_gets_one_thread_and_sources_spread_over_all() {
        let program = program(AddressFamily::V4, 4);
        let mut seen = [0usize; 4];
        for host in 0..=255u8 {
            let thread = run(&program, &ipv4_header([198, 51, 100, host]));
            assert!(thread < 4);
            assert_eq!(thread, run(&program, &ipv4_header([198, 51, 100, host])));
            seen[usize::try_from(thread).unwrap()] += 1;
        }
        assert!(seen.iter().all(|count| *count > 32), "{seen:?}");
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let program = program(AddressFamily::V6, 8);
        let base: [u8; 16] = "2001:db8:1:2::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let mut same_64 = base;
        same_64[15] = 0x99;
        same_64[9] = 0x42;
        assert_eq!(
            run(&program, &ipv6_header(base)),
            run(&program, &ipv6_header(same_64))
        );
        let threads: std::collections::BTreeSet<u32> = (0..64u8)
            .map(|subnet| {
                let mut other = base;
                other[7] = subnet;
                run(&program, &ipv6_header(other))
            })
            .collect();
        assert_eq!(threads.len(), 8, "other /64s spread over every thread");
    }
}
