//! Frames for `BPF_PROG_TEST_RUN`, built independently of the program under test: headers byte
//! by byte, checksums from scratch with the plain RFC 1071 sum below. The expected output of a
//! relayed frame is built the same way, from the rules in `crates/turnpike-xdp/src/relay.rs`,
//! never from the program's own arithmetic.
#![allow(dead_code, reason = "each test binary uses a different part")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    reason = "test helpers: a test frame that cannot be built should fail the test loudly"
)]

use std::net::{IpAddr, SocketAddr};

use turnpike_xdp_user::{LoadOptions, XdpRelay};

pub(crate) const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub(crate) const RELAY_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/// Says why a test cannot run here. Under CI (`CI` set, as `.ci/run` is run) nothing may be
/// skipped: the reason fails the test instead, so a missing ELF or missing root cannot pass
/// silently.
pub(crate) fn skip(reason: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "cannot run in CI: {reason}"
    );
    eprintln!("skipped: {reason}");
}

/// Loads the relay program from `TURNPIKE_XDP_ELF`, or says why the test cannot run and returns
/// `None`. The tests need root (maps and BPF_PROG_TEST_RUN) and the ELF built by
/// `scripts/build-xdp.sh`; `scripts/test.sh` runs as root and exports the path. With the
/// variable set, a load failure fails the test.
pub(crate) fn load_relay() -> Option<XdpRelay> {
    // SAFETY: `geteuid` has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("needs root for BPF maps and BPF_PROG_TEST_RUN");
        return None;
    }
    let Some(path) = std::env::var_os("TURNPIKE_XDP_ELF") else {
        skip("TURNPIKE_XDP_ELF is not set (build with scripts/build-xdp.sh)");
        return None;
    };
    match XdpRelay::load(&path, &LoadOptions { max_channels: 1024 }) {
        Ok(relay) => Some(relay),
        Err(error) => panic!("loading {}: {error}\n{error:?}", path.to_string_lossy()),
    }
}

/// The IP header fields a test frame carries besides addresses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IpFields {
    /// IPv4 TOS / IPv6 traffic class.
    pub(crate) traffic_class: u8,
    /// IPv4 TTL / IPv6 hop limit.
    pub(crate) hop_limit: u8,
    /// IPv4 identification (ignored for IPv6).
    pub(crate) id: u16,
    /// IPv4 DF (ignored for IPv6).
    pub(crate) dont_fragment: bool,
    /// IPv6 flow label (ignored for IPv4).
    pub(crate) flow_label: u32,
}

impl Default for IpFields {
    fn default() -> Self {
        Self {
            traffic_class: 0xb9, // DSCP EF (46), ECN ECT(1)
            hop_limit: 57,
            id: 0x1234,
            dont_fragment: true,
            flow_label: 0x5_4321,
        }
    }
}

/// RFC 1071: the one's complement of the one's complement sum of big-endian 16-bit words.
pub(crate) fn internet_checksum(chunks: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = chunks.concat();
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let word = u32::from(pair[0]) << 8 | pair.get(1).copied().map_or(0, u32::from);
        sum += word;
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The UDP checksum of `segment` (header with a zero checksum field, then payload) between
/// `src` and `dst`, as transmitted (a computed zero is sent as 0xFFFF).
pub(crate) fn udp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    let len = segment.len();
    let pseudo: Vec<u8> = match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => [
            octets(src),
            octets(dst),
            vec![0, 17],
            u16::try_from(len).unwrap().to_be_bytes().to_vec(),
        ]
        .concat(),
        (IpAddr::V6(_), IpAddr::V6(_)) => [
            octets(src),
            octets(dst),
            u32::try_from(len).unwrap().to_be_bytes().to_vec(),
            vec![0, 0, 0, 17],
        ]
        .concat(),
        _ => panic!("mixed families"),
    };
    match internet_checksum(&[&pseudo, segment]) {
        0 => 0xFFFF,
        checksum => checksum,
    }
}

/// A UDP datagram from `src` to `dst` in an Ethernet frame from `src_mac` to `dst_mac`, with
/// correct IPv4 header and UDP checksums (or a zero UDP checksum if `checksum` is false).
pub(crate) fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    fields: IpFields,
    payload: &[u8],
    checksum: bool,
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut segment = Vec::with_capacity(udp_len);
    segment.extend_from_slice(&src.port().to_be_bytes());
    segment.extend_from_slice(&dst.port().to_be_bytes());
    segment.extend_from_slice(&u16::try_from(udp_len).unwrap().to_be_bytes());
    segment.extend_from_slice(&[0, 0]);
    segment.extend_from_slice(payload);
    if checksum {
        let sum = udp_checksum(src.ip(), dst.ip(), &segment);
        segment[6..8].copy_from_slice(&sum.to_be_bytes());
    }

    let mut frame = Vec::new();
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame.extend_from_slice(&[0x08, 0x00]);
            let mut header = vec![0x45, fields.traffic_class];
            header.extend_from_slice(&u16::try_from(20 + udp_len).unwrap().to_be_bytes());
            header.extend_from_slice(&fields.id.to_be_bytes());
            header.extend_from_slice(&[if fields.dont_fragment { 0x40 } else { 0 }, 0]);
            header.extend_from_slice(&[fields.hop_limit, 17, 0, 0]);
            header.extend_from_slice(&s.octets());
            header.extend_from_slice(&d.octets());
            let sum = internet_checksum(&[&header]);
            header[10..12].copy_from_slice(&sum.to_be_bytes());
            frame.extend_from_slice(&header);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            frame.extend_from_slice(&[0x86, 0xdd]);
            let first = 6u32 << 28 | u32::from(fields.traffic_class) << 20 | fields.flow_label;
            frame.extend_from_slice(&first.to_be_bytes());
            frame.extend_from_slice(&u16::try_from(udp_len).unwrap().to_be_bytes());
            frame.extend_from_slice(&[17, fields.hop_limit]);
            frame.extend_from_slice(&s.octets());
            frame.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    frame.extend_from_slice(&segment);
    frame
}

/// A ChannelData message: channel, length, payload, then `padding` bytes (0xEE, so that a
/// checksum that forgot them would be wrong).
pub(crate) fn channel_data(channel: u16, payload: &[u8], padding: usize) -> Vec<u8> {
    let mut message = Vec::new();
    message.extend_from_slice(&channel.to_be_bytes());
    message.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    message.extend_from_slice(payload);
    message.extend(std::iter::repeat_n(0xEE, padding));
    message
}

/// A payload of `len` bytes that differs from byte to byte.
pub(crate) fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// Checks a frame's IPv4 header checksum and UDP checksum independently: both must sum to zero
/// over what they cover.
pub(crate) fn assert_checksums_valid(frame: &[u8]) {
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let (src, dst, udp_at): (IpAddr, IpAddr, usize) = match ethertype {
        0x0800 => {
            assert_eq!(
                internet_checksum(&[&frame[14..34]]),
                0,
                "IPv4 header checksum"
            );
            let s: [u8; 4] = frame[26..30].try_into().unwrap();
            let d: [u8; 4] = frame[30..34].try_into().unwrap();
            (s.into(), d.into(), 34)
        }
        0x86dd => {
            let s: [u8; 16] = frame[22..38].try_into().unwrap();
            let d: [u8; 16] = frame[38..54].try_into().unwrap();
            (s.into(), d.into(), 54)
        }
        other => panic!("not IP: {other:#06x}"),
    };
    let udp_len = usize::from(u16::from_be_bytes([frame[udp_at + 4], frame[udp_at + 5]]));
    let segment = &frame[udp_at..udp_at + udp_len];
    let stored = u16::from_be_bytes([segment[6], segment[7]]);
    if stored == 0 {
        assert!(
            matches!(src, IpAddr::V4(_)),
            "IPv6 with a zero UDP checksum"
        );
        return;
    }
    let mut zeroed = segment.to_vec();
    zeroed[6..8].copy_from_slice(&[0, 0]);
    assert_eq!(udp_checksum(src, dst, &zeroed), stored, "UDP checksum");
}

/// Moves this thread into a fresh network namespace (it affects only the calling thread);
/// `false`, with the reason given to [`skip`], if it cannot.
pub(crate) fn private_namespace() -> bool {
    // SAFETY: `unshare` affects only the calling thread, which is the test's own.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        skip(&format!(
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        ));
        return false;
    }
    true
}

/// Runs a command that must succeed.
pub(crate) fn run_command(program: &str, args: &[&str]) {
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .expect("command runs");
    assert!(status.success(), "{program} {args:?} failed");
}
