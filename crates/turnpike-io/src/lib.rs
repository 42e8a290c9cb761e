//! UDP sockets and batched I/O, shared by the relay daemon and the load generator.
//!
//! Written against libc rather than through a crate: `quinn-udp` batches receives but sends one
//! destination per call, and `socket2` has no `recvmmsg`. A relay needs both directions batched
//! *and* receive buffers with headroom, so the ChannelData header can be written in front of a
//! peer's payload and the same bytes sent on without a copy. The unsafe code is confined to
//! this module, and each block states what it relies on.

use std::io;
use std::mem::{MaybeUninit, size_of, zeroed};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Bytes kept free in front of every received datagram for a ChannelData header.
pub const HEADROOM: usize = 4;
/// Largest datagram received in full; a longer one is truncated and dropped. Clients keep
/// TURN traffic under the path MTU, so this covers jumbo frames with room to spare.
pub const MAX_DATAGRAM: usize = 9216;
/// Datagrams received per system call.
pub const BATCH: usize = 32;
/// [`BATCH`] as the kernel's integer type (checked at compile time, not cast).
#[expect(
    clippy::cast_possible_truncation,
    reason = "the assertion bounds the value"
)]
const BATCH_C: libc::c_uint = {
    assert!(BATCH <= 1024);
    BATCH as libc::c_uint
};
/// The size of `sockaddr_storage` as the kernel's length type.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the assertion bounds the value"
)]
const SOCKADDR_STORAGE_LEN: libc::socklen_t = {
    assert!(size_of::<libc::sockaddr_storage>() <= 1024);
    size_of::<libc::sockaddr_storage>() as libc::socklen_t
};

const SLOT: usize = HEADROOM + MAX_DATAGRAM;

/// How a socket's buffers turned out.
#[derive(Debug, Clone, Copy)]
pub struct BufferSizes {
    pub receive: usize,
    pub send: usize,
}

/// A non-blocking UDP socket bound to `address`, IPv6 ones IPv6-only (so both families can
/// share a port), with `buffer` bytes of receive and send buffer requested.
pub fn bind(
    address: SocketAddr,
    reuse_port: bool,
    buffer: usize,
) -> io::Result<(UdpSocket, BufferSizes)> {
    let domain = if address.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    // The kernel caps these at net.core.{r,w}mem_max; the caller warns when it did.
    socket.set_recv_buffer_size(buffer)?;
    socket.set_send_buffer_size(buffer)?;
    socket.bind(&SockAddr::from(address))?;
    // Linux reports twice the usable size (it counts its bookkeeping).
    let sizes = BufferSizes {
        receive: socket.recv_buffer_size()? / 2,
        send: socket.send_buffer_size()? / 2,
    };
    Ok((socket.into(), sizes))
}

fn to_socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: ss_family says the storage holds a sockaddr_in; sockaddr_storage is large
            // and aligned enough for every sockaddr type.
            let address = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(address.sin_addr.s_addr).into(),
                u16::from_be(address.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let address = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                address.sin6_addr.s6_addr.into(),
                u16::from_be(address.sin6_port),
                address.sin6_flowinfo,
                address.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A pool of receive slots, filled a batch at a time and emptied all at once.
///
/// A driver can receive from several sockets into one pool before sending anything, so that the
/// datagrams relayed from all of them go out in as few `sendmmsg` calls as possible; the
/// [`SendBatch`] that points into the slots must be flushed before [`RecvBatch::clear`].
pub struct RecvBatch {
    slots: Box<[[u8; SLOT]]>,
    addresses: Box<[libc::sockaddr_storage]>,
    lengths: Box<[usize]>,
    flags: Box<[i32]>,
    used: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("capacity", &self.slots.len())
            .field("used", &self.used)
            .finish_non_exhaustive()
    }
}

/// One received datagram, borrowed from a [`RecvBatch`].
#[derive(Debug)]
pub struct Received<'a> {
    /// The slot: `HEADROOM` free bytes, then the datagram.
    pub slot: &'a mut [u8],
    pub len: usize,
    pub from: Option<SocketAddr>,
    pub truncated: bool,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// A pool of one batch.
    pub fn new() -> Self {
        Self::with_capacity(BATCH)
    }

    /// A pool of `slots` slots (at least one batch).
    pub fn with_capacity(slots: usize) -> Self {
        let slots = slots.max(BATCH);
        Self {
            slots: vec![[0; SLOT]; slots].into_boxed_slice(),
            // SAFETY: sockaddr_storage is plain data; all zeros is a valid (AF_UNSPEC) value.
            addresses: (0..slots).map(|_| unsafe { zeroed() }).collect(),
            lengths: vec![0; slots].into_boxed_slice(),
            flags: vec![0; slots].into_boxed_slice(),
            used: 0,
        }
    }

    /// Slots not holding a datagram.
    pub fn free(&self) -> usize {
        self.slots.len() - self.used
    }

    /// Forgets every datagram held; their slots are reused by the next receive.
    pub fn clear(&mut self) {
        self.used = 0;
    }

    /// Receives up to [`BATCH`] datagrams (fewer if fewer slots are free) after those already
    /// held, returning the indexes of the new ones; empty when none is waiting. EINTR is retried.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<std::ops::Range<usize>> {
        let start = self.used;
        let wanted = self.free().min(BATCH);
        // SAFETY: iovec and mmsghdr are plain data; zeroed is valid and every pointer field is
        // set below before use.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (offset, (iovec, header)) in iovecs
            .iter_mut()
            .zip(headers.iter_mut())
            .take(wanted)
            .enumerate()
        {
            let index = start + offset;
            iovec.iov_base = self.slots[index][HEADROOM..].as_mut_ptr().cast();
            iovec.iov_len = MAX_DATAGRAM;
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_name = std::ptr::from_mut(&mut self.addresses[index]).cast();
            header.msg_hdr.msg_namelen = SOCKADDR_STORAGE_LEN;
        }
        let wanted_c = libc::c_uint::try_from(wanted).unwrap_or(BATCH_C);
        loop {
            // SAFETY: the first `wanted` headers point at a live iovec, slot and address of this
            // pool, all of which outlive the call; the kernel writes at most the lengths given.
            let received = unsafe {
                libc::recvmmsg(
                    fd,
                    headers.as_mut_ptr(),
                    wanted_c,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if received >= 0 {
                let count = usize::try_from(received).unwrap_or(0);
                for (offset, header) in headers.iter().take(count).enumerate() {
                    self.lengths[start + offset] = header.msg_len as usize;
                    self.flags[start + offset] = header.msg_hdr.msg_flags;
                }
                self.used += count;
                return Ok(start..self.used);
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(start..start),
                _ => return Err(error),
            }
        }
    }

    pub fn get(&mut self, index: usize) -> Option<Received<'_>> {
        if index >= self.used {
            return None;
        }
        Some(Received {
            from: to_socket_addr(&self.addresses[index]),
            truncated: self.flags[index] & libc::MSG_TRUNC != 0,
            len: self.lengths[index].min(MAX_DATAGRAM),
            slot: &mut self.slots[index],
        })
    }
}

/// A datagram waiting to be sent: its bytes stay where they are until the flush.
#[derive(Debug)]
struct Pending {
    fd: RawFd,
    to: SockAddr,
    data: *const u8,
    len: usize,
}

/// Outgoing datagrams collected while one receive batch is processed, then sent with as few
/// `sendmmsg` calls as consecutive runs to the same socket allow.
///
/// The datagrams point into the receive batch (and into owned buffers for control messages),
/// so [`SendBatch::flush`] must run before that batch receives again; the event loop does this
/// after every batch.
#[derive(Debug, Default)]
pub struct SendBatch {
    pending: Vec<Pending>,
}

/// Counts of send outcomes, for metrics: nothing here stops the relay.
#[derive(Debug, Default, Clone, Copy)]
pub struct SendOutcome {
    pub sent: u64,
    /// Kernel buffers full (ENOBUFS, EAGAIN): the datagram is dropped, as a router would.
    pub buffer_full: u64,
    /// An ICMP error from an earlier send (ECONNREFUSED, EHOSTUNREACH, ...) surfaced here.
    pub unreachable: u64,
    pub other: u64,
}

impl SendBatch {
    /// Queues `data` to be sent from `socket` to `to`.
    ///
    /// `data` must stay valid and unchanged until the next [`flush`](Self::flush).
    pub fn push(&mut self, socket: &impl AsRawFd, to: SocketAddr, data: &[u8]) {
        self.pending.push(Pending {
            fd: socket.as_raw_fd(),
            to: SockAddr::from(to),
            data: data.as_ptr(),
            len: data.len(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Sends everything queued. Errors are counted per datagram, never returned.
    pub fn flush(&mut self, outcome: &mut SendOutcome) {
        let mut start = 0;
        while start < self.pending.len() {
            let fd = self.pending[start].fd;
            let end = self.pending[start..]
                .iter()
                .position(|p| p.fd != fd)
                .map_or(self.pending.len(), |n| start + n);
            let mut offset = start;
            while offset < end {
                let chunk = (end - offset).min(BATCH);
                match self.send_run(fd, offset, chunk) {
                    Ok(sent) => {
                        outcome.sent += sent as u64;
                        offset += sent.max(1);
                        if sent == 0 {
                            outcome.other += 1;
                        }
                    }
                    Err(error) => {
                        count_error(&error, outcome);
                        // Skip the datagram that failed; the rest of the run is tried again.
                        offset += 1;
                    }
                }
            }
            start = end;
        }
        self.pending.clear();
    }

    fn send_run(&self, fd: RawFd, start: usize, count: usize) -> io::Result<usize> {
        // SAFETY: plain data, every pointer set below.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (index, pending) in self.pending[start..start + count].iter().enumerate() {
            iovecs[index].iov_base = pending.data.cast_mut().cast();
            iovecs[index].iov_len = pending.len;
            headers[index].msg_hdr.msg_iov = &mut iovecs[index];
            headers[index].msg_hdr.msg_iovlen = 1;
            headers[index].msg_hdr.msg_name = pending.to.as_ptr().cast_mut().cast();
            headers[index].msg_hdr.msg_namelen = pending.to.len();
        }
        loop {
            // SAFETY: the headers point at iovecs and addresses alive for the call, and the
            // data pointers are valid by the contract of `push` (flush runs before the buffers
            // are reused). sendmmsg only reads them.
            let sent = unsafe {
                libc::sendmmsg(
                    fd,
                    headers.as_mut_ptr(),
                    libc::c_uint::try_from(count).unwrap_or(BATCH_C),
                    libc::MSG_DONTWAIT,
                )
            };
            if sent >= 0 {
                return Ok(usize::try_from(sent).unwrap_or(0));
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

fn count_error(error: &io::Error, outcome: &mut SendOutcome) {
    match error.raw_os_error() {
        Some(libc::ENOBUFS | libc::EAGAIN) => outcome.buffer_full += 1,
        Some(
            libc::ECONNREFUSED
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::EMSGSIZE,
        ) => {
            outcome.unreachable += 1;
        }
        _ => outcome.other += 1,
    }
}

/// Waits until `fd` is readable or `timeout` passes; returns whether it is readable.
pub fn wait_readable(fd: RawFd, timeout: std::time::Duration) -> io::Result<bool> {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, alive for the call.
    let ready = unsafe { libc::poll(&mut poll, 1, millis) };
    match ready {
        0 => Ok(false),
        1.. => Ok(true),
        _ => {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(error)
            }
        }
    }
}

/// Sends one owned datagram right away (control messages), counting the outcome.
pub fn send_now(socket: &UdpSocket, to: SocketAddr, data: &[u8], outcome: &mut SendOutcome) {
    loop {
        match socket.send_to(data, to) {
            Ok(_) => {
                outcome.sent += 1;
                return;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                count_error(&error, outcome);
                return;
            }
        }
    }
}

/// Raises the open-file limit to its hard maximum: every relayed port is a socket per family.
pub fn raise_file_limit(needed: u64) -> io::Result<u64> {
    let mut limit = MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: getrlimit writes a whole rlimit on success, checked before reading.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, limit.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful call above.
    let mut limit = unsafe { limit.assume_init() };
    if limit.rlim_cur >= needed {
        return Ok(limit.rlim_cur);
    }
    limit.rlim_cur = limit.rlim_max.min(needed.max(limit.rlim_cur));
    // SAFETY: setrlimit reads a fully initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}
