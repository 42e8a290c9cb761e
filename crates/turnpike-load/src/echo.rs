//! UDP echo peers: every datagram goes back to where it came from, in batches.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use turnpike_io::{HEADROOM, RecvBatch, SendBatch, SendOutcome};

/// Echoes on `socket` until `stop` is set; returns how many datagrams it echoed.
pub fn echo(socket: &std::net::UdpSocket, stop: &AtomicBool, echoed: &AtomicU64) -> Result<()> {
    let fd = socket.as_raw_fd();
    let mut batch = RecvBatch::new();
    let mut sends = SendBatch::default();
    let mut outcome = SendOutcome::default();
    while !stop.load(Ordering::Relaxed) {
        if !turnpike_io::wait_readable(fd, Duration::from_millis(100))? {
            continue;
        }
        batch.clear();
        let received = batch.recv(fd)?;
        let count = received.len();
        for index in received {
            let Some(received) = batch.get(index) else {
                break;
            };
            if let (Some(from), false) = (received.from, received.truncated) {
                // SAFETY: the pool receives again only after the flush below, and `socket`
                // outlives this loop.
                unsafe {
                    sends.push(
                        socket,
                        from,
                        &received.slot[HEADROOM..HEADROOM + received.len],
                    );
                }
            }
        }
        sends.flush(&mut outcome);
        echoed.fetch_add(count as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Binds `threads` echo sockets on `listen` (sharing it with SO_REUSEPORT) and runs them until
/// `stop`; returns the bound address.
pub fn spawn(
    listen: SocketAddr,
    threads: usize,
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
) -> Result<SocketAddr> {
    let (first, _) = turnpike_io::bind(listen, true, 4 << 20)
        .with_context(|| format!("echo: cannot bind {listen}"))?;
    let address = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..threads {
        sockets.push(turnpike_io::bind(address, true, 4 << 20)?.0);
    }
    for socket in sockets {
        let (stop, echoed) = (Arc::clone(&stop), Arc::clone(&echoed));
        std::thread::Builder::new()
            .name("echo".to_owned())
            .spawn(move || {
                if let Err(error) = echo(&socket, &stop, &echoed) {
                    eprintln!("echo: {error:#}");
                }
            })?;
    }
    Ok(address)
}
