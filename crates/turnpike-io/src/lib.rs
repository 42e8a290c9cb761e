//! UDP sockets and batched I/O, shared by the relay daemon and the load generator.
//!
//! Written against libc rather than through a crate: `quinn-udp` batches receives but sends one
//! destination per call, and `socket2` has no `recvmmsg`. A relay needs both directions batched
//! *and* receive buffers with headroom, so the ChannelData header can be written in front of a
//! peer's payload and the same bytes sent on without a copy. The unsafe code is confined to
//! this module, and each block states what it relies on.

use std::io;
use std::mem::{MaybeUninit, size_of, zeroed};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
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

/// Binds one IPv6 socket on `[::]:port` that also takes IPv4 (`IPV6_V6ONLY` off): one
/// descriptor for both families of a relayed port instead of two. Datagrams from IPv4 peers
/// arrive from IPv4-mapped addresses (callers canonicalize them); sending to an IPv4 address
/// from it works as from an IPv4 socket.
///
/// # Errors
///
/// As [`bind`]; also when the host has no IPv6 at all.
pub fn bind_dual_stack(port: u16, buffer: usize) -> io::Result<(UdpSocket, BufferSizes)> {
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_only_v6(false)?;
    socket.set_nonblocking(true)?;
    socket.set_recv_buffer_size(buffer)?;
    socket.set_send_buffer_size(buffer)?;
    socket.bind(&SockAddr::from(SocketAddr::from((
        std::net::Ipv6Addr::UNSPECIFIED,
        port,
    ))))?;
    let sizes = BufferSizes {
        receive: socket.recv_buffer_size()? / 2,
        send: socket.send_buffer_size()? / 2,
    };
    Ok((socket.into(), sizes))
}

/// Asks the kernel to say, for every datagram `socket` receives, which local address it was
/// sent to (`IP_PKTINFO`, `IPV6_RECVPKTINFO`): on a wildcard listener of a host with several
/// addresses, that is the address the answer must leave from, or the client drops it.
///
/// # Errors
///
/// When the kernel refuses the option.
pub fn receive_destination(socket: &UdpSocket, ipv6: bool) -> io::Result<()> {
    let (level, option) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    let on: libc::c_int = 1;
    // SAFETY: the option value is a c_int that outlives the call, and its length is given.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            std::ptr::from_ref(&on).cast(),
            libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Room for one receive's control messages: an `in6_pktinfo` (the larger) with its header.
const RECEIVE_CONTROL: usize = 64;

/// The destination address in a received datagram's control messages, if the socket asked for
/// it ([`receive_destination`]).
///
/// # Safety
///
/// `header` is a `msghdr` that `recvmmsg` filled, whose `msg_control` (if not null) points to
/// at least `msg_controllen` bytes that are alive.
unsafe fn destination_of(header: &libc::msghdr) -> Option<IpAddr> {
    if header.msg_control.is_null() || header.msg_controllen == 0 {
        return None;
    }
    // SAFETY: per the contract, the control buffer holds `msg_controllen` bytes the kernel
    // wrote as a sequence of cmsghdrs; CMSG_FIRSTHDR and CMSG_NXTHDR stay inside it and return
    // null at its end.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                let info =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>());
                return Some(IpAddr::V4(u32::from_be(info.ipi_addr.s_addr).into()));
            }
            if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                let info =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>());
                return Some(IpAddr::V6(info.ipi6_addr.s6_addr.into()));
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    None
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
    /// Control-message buffers (u64 for cmsghdr alignment) and what they said.
    controls: Box<[[u64; RECEIVE_CONTROL / 8]]>,
    destinations: Box<[Option<IpAddr>]>,
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
    /// The local address the datagram was sent to, when the socket asked for it
    /// ([`receive_destination`]).
    pub destination: Option<IpAddr>,
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
            controls: vec![[0; RECEIVE_CONTROL / 8]; slots].into_boxed_slice(),
            destinations: vec![None; slots].into_boxed_slice(),
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
            header.msg_hdr.msg_control = self.controls[index].as_mut_ptr().cast();
            header.msg_hdr.msg_controllen = RECEIVE_CONTROL;
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
                    // SAFETY: the kernel filled this header, whose control buffer is the
                    // slot's, alive and `msg_controllen` long.
                    self.destinations[start + offset] = unsafe { destination_of(&header.msg_hdr) };
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
            destination: self.destinations[index],
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
    to: SocketAddr,
    /// The local address to send from, on a socket bound to a wildcard address.
    from: Option<IpAddr>,
    data: *const u8,
    len: usize,
}

/// One message of a `sendmmsg` call: a single datagram, or with `segment` a run of datagrams
/// to the same destination that the kernel splits (UDP GSO).
#[derive(Debug)]
struct Outgoing {
    fd: RawFd,
    to: SockAddr,
    from: Option<IpAddr>,
    data: *const u8,
    len: usize,
    segment: Option<u16>,
    datagrams: usize,
}

/// Most datagrams the kernel takes in one GSO send (`UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO send: an IP datagram's limit, less room for headers.
const MAX_GSO_BYTES: usize = 65_000;

/// Outgoing datagrams collected while a round of receive batches is processed, then sent with
/// as few system calls and as few trips through the network stack as the kernel allows.
///
/// At the flush, datagrams are grouped by socket and destination (keeping their order within a
/// destination); a run of equal-sized datagrams to one destination becomes one UDP GSO send,
/// which the stack routes once and splits at the end, and the messages of one socket go out in
/// one `sendmmsg`. The datagrams point into the receive pool (and into owned buffers for
/// control messages), so [`SendBatch::flush`] must run before that pool receives again.
#[derive(Debug)]
pub struct SendBatch {
    pending: Vec<Pending>,
    /// Copies of GSO runs, contiguous as the kernel wants them.
    arena: Vec<u8>,
    /// Datagrams queued with [`SendBatch::push_copy`]: chunks that are filled only up to the
    /// capacity they were created with, so a pointer into one stays valid until the flush.
    copies: Vec<Vec<u8>>,
    /// Emptied chunks kept for the next round (at most [`SPARE_CHUNKS`]).
    spare: Vec<Vec<u8>>,
    copied: usize,
    gso: bool,
}

/// Size of a chunk of [`SendBatch::push_copy`] data.
const COPY_CHUNK: usize = 64 * 1024;
/// Chunks kept between flushes; more are freed.
const SPARE_CHUNKS: usize = 4;

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            pending: Vec::new(),
            arena: Vec::new(),
            copies: Vec::new(),
            spare: Vec::new(),
            copied: 0,
            gso: true,
        }
    }
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
    /// GSO sends (each carrying several datagrams).
    pub segmented: u64,
}

impl SendBatch {
    /// Queues `data` to be sent from `socket` to `to`, without copying it.
    ///
    /// # Safety
    ///
    /// Until the next [`flush`](Self::flush) (or until the batch is dropped), the bytes of
    /// `data` must stay allocated and unchanged, and `socket`'s descriptor must stay open and
    /// refer to the same socket: the batch keeps only a pointer and the raw descriptor. The
    /// relay meets this by pointing into a receive pool that receives again only after the
    /// flush, from sockets it keeps for the life of the thread; data that does not live that
    /// long goes through [`push_copy`](Self::push_copy).
    pub unsafe fn push(&mut self, socket: &impl AsRawFd, to: SocketAddr, data: &[u8]) {
        // SAFETY: the caller keeps `push`'s contract, which is `push_from`'s.
        unsafe { self.push_from(socket, None, to, data) };
    }

    /// As [`push`](Self::push), leaving from local address `from` (on a socket bound to a
    /// wildcard address: `IP_PKTINFO` or `IPV6_PKTINFO` in the send's control message).
    ///
    /// # Safety
    ///
    /// As for [`push`](Self::push).
    pub unsafe fn push_from(
        &mut self,
        socket: &impl AsRawFd,
        from: Option<IpAddr>,
        to: SocketAddr,
        data: &[u8],
    ) {
        self.pending.push(Pending {
            fd: socket.as_raw_fd(),
            to,
            from,
            data: data.as_ptr(),
            len: data.len(),
        });
    }

    /// Queues a copy of `data` to be sent from `socket` to `to`: for data that does not outlive
    /// the call (a message cut out of a TCP stream, say), batched like the rest.
    ///
    /// # Safety
    ///
    /// Until the next [`flush`](Self::flush), `socket`'s descriptor must stay open and refer
    /// to the same socket: the batch keeps only the raw descriptor.
    pub unsafe fn push_copy(&mut self, socket: &impl AsRawFd, to: SocketAddr, data: &[u8]) {
        let fits = self
            .copies
            .last()
            .is_some_and(|chunk| chunk.capacity() - chunk.len() >= data.len());
        if !fits {
            let mut chunk = self.spare.pop().unwrap_or_default();
            chunk.clear();
            chunk.reserve_exact(COPY_CHUNK.max(data.len()));
            self.copies.push(chunk);
        }
        let Some(chunk) = self.copies.last_mut() else {
            unreachable!("a chunk was just pushed")
        };
        let start = chunk.len();
        // Within the capacity checked above: the chunk does not reallocate, so the pointers
        // taken into it earlier stay valid.
        chunk.extend_from_slice(data);
        self.copied += data.len();
        self.pending.push(Pending {
            fd: socket.as_raw_fd(),
            to,
            from: None,
            // `as_ptr` takes no reference to the buffer, so later writes past `start + len`
            // leave this pointer valid (the aliasing guarantee of `Vec::as_ptr`).
            data: chunk.as_ptr().wrapping_add(start),
            len: data.len(),
        });
    }

    /// Bytes of copies queued since the last flush; a caller flushes early to bound them.
    pub fn copied_bytes(&self) -> usize {
        self.copied
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Turns UDP GSO off (it is on by default and turns itself off if the kernel refuses it).
    pub fn disable_gso(&mut self) {
        self.gso = false;
    }

    /// Sends everything queued. Errors are counted per datagram, never returned.
    pub fn flush(&mut self, outcome: &mut SendOutcome) {
        if self.pending.is_empty() {
            return;
        }
        // Stable: datagrams to one destination keep their order.
        self.pending.sort_by_key(|pending| (pending.fd, pending.to));
        let outgoing = self.plan();
        let mut start = 0;
        while start < outgoing.len() {
            let fd = outgoing[start].fd;
            let end = outgoing[start..]
                .iter()
                .position(|o| o.fd != fd)
                .map_or(outgoing.len(), |n| start + n);
            let mut offset = start;
            while offset < end {
                let chunk = (end - offset).min(BATCH);
                match send_messages(fd, &outgoing[offset..offset + chunk]) {
                    Ok(0) => {
                        outcome.other += outgoing[offset].datagrams as u64;
                        offset += 1;
                    }
                    Ok(sent) => {
                        for message in &outgoing[offset..offset + sent] {
                            outcome.sent += message.datagrams as u64;
                            outcome.segmented += u64::from(message.segment.is_some());
                        }
                        offset += sent;
                    }
                    Err(error) => {
                        let message = &outgoing[offset];
                        if message.segment.is_some()
                            && matches!(
                                error.raw_os_error(),
                                Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT)
                            )
                        {
                            // This kernel or device cannot segment: never try again.
                            self.gso = false;
                        }
                        for _ in 0..message.datagrams {
                            count_error(&error, outcome);
                        }
                        // Skip the message that failed; the rest of the run is tried again.
                        offset += 1;
                    }
                }
            }
            start = end;
        }
        self.pending.clear();
        self.arena.clear();
        self.copied = 0;
        for chunk in self.copies.drain(..) {
            if self.spare.len() < SPARE_CHUNKS && chunk.capacity() == COPY_CHUNK {
                self.spare.push(chunk);
            }
        }
    }

    /// Groups the sorted pending datagrams into messages, copying GSO runs into the arena.
    fn plan(&mut self) -> Vec<Outgoing> {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        let mut index = 0;
        while index < self.pending.len() {
            let first = &self.pending[index];
            let mut end = index + 1;
            if self.gso {
                let mut bytes = first.len;
                while end < self.pending.len() && end - index < MAX_SEGMENTS {
                    let next = &self.pending[end];
                    // Every segment but the last has the first one's size; the last may be shorter.
                    let same_destination =
                        next.fd == first.fd && next.to == first.to && next.from == first.from;
                    let previous_full = self.pending[end - 1].len == first.len;
                    if !same_destination
                        || !previous_full
                        || next.len > first.len
                        || bytes + next.len > MAX_GSO_BYTES
                    {
                        break;
                    }
                    bytes += next.len;
                    end += 1;
                }
            }
            runs.push((index, end));
            index = end;
        }
        let arena_len: usize = runs
            .iter()
            .filter(|(start, end)| end - start > 1)
            .map(|(start, end)| {
                self.pending[*start..*end]
                    .iter()
                    .map(|p| p.len)
                    .sum::<usize>()
            })
            .sum();
        self.arena.clear();
        // Reserved once, so the pointers taken below stay valid while the arena fills.
        self.arena.reserve(arena_len);
        let mut outgoing = Vec::with_capacity(runs.len());
        for (start, end) in runs {
            let first = &self.pending[start];
            if end - start == 1 || first.len == 0 {
                for pending in &self.pending[start..end] {
                    outgoing.push(Outgoing {
                        fd: pending.fd,
                        to: SockAddr::from(pending.to),
                        from: pending.from,
                        data: pending.data,
                        len: pending.len,
                        segment: None,
                        datagrams: 1,
                    });
                }
                continue;
            }
            let offset = self.arena.len();
            for pending in &self.pending[start..end] {
                // SAFETY: `push`'s contract (and `push_copy`'s own chunks, which are freed only
                // after the flush) keep every pending datagram valid until the flush.
                self.arena.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(pending.data, pending.len)
                });
            }
            let len = self.arena.len() - offset;
            outgoing.push(Outgoing {
                fd: first.fd,
                to: SockAddr::from(first.to),
                from: first.from,
                data: self.arena[offset..].as_ptr(),
                len,
                segment: u16::try_from(first.len).ok(),
                datagrams: end - start,
            });
        }
        outgoing
    }
}

/// Writes the send's control messages (a GSO segment size, a source address) into `control`
/// and points `header` at them.
///
/// # Safety
///
/// `control` must stay alive while `header` is used, and hold both messages (64 bytes do).
unsafe fn write_control(
    header: &mut libc::msghdr,
    control: &mut [u64; 8],
    segment: Option<u16>,
    from: Option<IpAddr>,
) {
    header.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = |len: usize| unsafe { libc::CMSG_SPACE(u32::try_from(len).unwrap_or(0)) } as usize;
    let pktinfo_len = match from {
        Some(IpAddr::V4(_)) => size_of::<libc::in_pktinfo>(),
        Some(IpAddr::V6(_)) => size_of::<libc::in6_pktinfo>(),
        None => 0,
    };
    header.msg_controllen =
        segment.map_or(0, |_| space(2)) + from.map_or(0, |_| space(pktinfo_len));
    // SAFETY: msg_controllen covers exactly the messages written below, inside `control`;
    // CMSG_FIRSTHDR/CMSG_NXTHDR return headers within it with room for each payload.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        if let Some(segment) = segment {
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(2) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
        match from {
            Some(IpAddr::V4(ip)) => {
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(u32::try_from(pktinfo_len).unwrap_or(0)) as usize;
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(ip).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), info);
            }
            Some(IpAddr::V6(ip)) => {
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(u32::try_from(pktinfo_len).unwrap_or(0)) as usize;
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>(), info);
            }
            None => {}
        }
    }
}

/// Sends up to [`BATCH`] messages of one socket with one `sendmmsg`.
fn send_messages(fd: RawFd, messages: &[Outgoing]) -> io::Result<usize> {
    // UDP_SEGMENT (CMSG_SPACE(2) = 24) and IPV6_PKTINFO (CMSG_SPACE(20) = 40) at most.
    const CONTROL: usize = 64;
    // SAFETY: plain data, every pointer set below.
    let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
    // u64 keeps the control buffers aligned for cmsghdr.
    let mut controls = [[0_u64; CONTROL / 8]; BATCH];
    let count = messages.len().min(BATCH);
    for index in 0..count {
        let message = &messages[index];
        iovecs[index].iov_base = message.data.cast_mut().cast();
        iovecs[index].iov_len = message.len;
        let header = &mut headers[index].msg_hdr;
        header.msg_iov = &mut iovecs[index];
        header.msg_iovlen = 1;
        header.msg_name = message.to.as_ptr().cast_mut().cast();
        header.msg_namelen = message.to.len();
        if message.segment.is_some() || message.from.is_some() {
            // SAFETY: the control buffer is CONTROL bytes, aligned for cmsghdr, and the
            // messages written fill at most CMSG_SPACE(2) + CMSG_SPACE(20) = 64 of them.
            unsafe { write_control(header, &mut controls[index], message.segment, message.from) };
        }
    }
    loop {
        // SAFETY: the headers point at iovecs, addresses and control buffers alive for the call,
        // and the data pointers are valid by the contract of `SendBatch::push` (and the arena is
        // not touched until the flush ends). sendmmsg only reads them.
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
/// Sends one datagram at once from local address `from` (see [`SendBatch::push_from`]);
/// without one, as [`send_now`].
pub fn send_now_from(
    socket: &UdpSocket,
    from: Option<IpAddr>,
    to: SocketAddr,
    data: &[u8],
    outcome: &mut SendOutcome,
) {
    if from.is_none() {
        return send_now(socket, to, data, outcome);
    }
    let message = Outgoing {
        fd: socket.as_raw_fd(),
        to: SockAddr::from(to),
        from,
        data: data.as_ptr(),
        len: data.len(),
        segment: None,
        datagrams: 1,
    };
    match send_messages(socket.as_raw_fd(), std::slice::from_ref(&message)) {
        Ok(1) => outcome.sent += 1,
        Ok(_) => outcome.other += 1,
        Err(error) => count_error(&error, outcome),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_send_errors_are_counted_by_kind() {
        let mut outcome = SendOutcome::default();
        for errno in [libc::ENOBUFS, libc::EAGAIN] {
            count_error(&io::Error::from_raw_os_error(errno), &mut outcome);
        }
        for errno in [
            libc::ECONNREFUSED,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::EMSGSIZE,
        ] {
            count_error(&io::Error::from_raw_os_error(errno), &mut outcome);
        }
        count_error(&io::Error::from_raw_os_error(libc::EPERM), &mut outcome);
        assert_eq!(
            (outcome.buffer_full, outcome.unreachable, outcome.other),
            (2, 4, 1)
        );
    }

    #[test]
    fn receiving_from_an_empty_socket_returns_no_datagrams() {
        let (socket, _) = bind("127.0.0.1:0".parse().unwrap(), false, 1 << 16).unwrap();
        let mut pool = RecvBatch::new();
        assert_eq!(pool.recv(socket.as_raw_fd()).unwrap(), 0..0);
        assert_eq!(pool.free(), BATCH);
    }
}
