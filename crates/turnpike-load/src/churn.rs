//! `turnpike-load channels`: many channels per allocation, to fill a relay's channel tables (the
//! kernel data plane's route maps hold 65,536 bindings; `scripts/test-xdp-netns.sh` binds more
//! and checks the rest are relayed in user space).
//!
//! Each allocation binds `--channels` channels, numbers 0x4000 upwards, to the peer ports
//! `--peer-port` upwards on `--peer-ip` (nothing needs to listen there: a binding is state in the
//! relay, whether or not anyone answers), one thread per allocation. The allocations are held
//! for `--hold` seconds (ChannelBind refreshed nothing meanwhile: keep it below the relay's
//! lifetimes) and then deleted.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use turnpike_proto::{Attribute, Class, Message, Method, TransactionId};

use turnpike_load::turn_client;

#[derive(Debug, clap::Args)]
pub(crate) struct ChannelsArgs {
    /// The TURN server (UDP).
    #[arg(long)]
    server: SocketAddr,
    /// REST API shared secret the server accepts (also TURNPIKE_LOAD_SECRET).
    #[arg(long, env = "TURNPIKE_LOAD_SECRET", hide_env_values = true)]
    secret: String,
    /// Allocations to open.
    #[arg(long, default_value_t = 1)]
    allocations: usize,
    /// Channels to bind per allocation (at most 4,096: 0x4000-0x4FFF).
    #[arg(long, default_value_t = 64)]
    channels: u16,
    /// The peers' address.
    #[arg(long)]
    peer_ip: IpAddr,
    /// The first peer port; channel i of every allocation goes to port + i.
    #[arg(long, default_value_t = 10_000)]
    peer_port: u16,
    /// Local address for client sockets [default: the unspecified address of the server's family].
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Seconds to hold the bindings before deleting the allocations.
    #[arg(long, default_value_t = 0)]
    hold: u64,
}

pub(crate) fn run(args: &ChannelsArgs) -> Result<()> {
    ensure!(
        (1..=0x1000).contains(&args.channels),
        "--channels must be 1 to 4096"
    );
    ensure!(
        u32::from(args.peer_port) + u32::from(args.channels) <= 0x1_0000,
        "--peer-port + --channels must stay below 65536"
    );
    let bind = args.bind.unwrap_or(if args.server.is_ipv4() {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    });
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs()
        + 3600;
    let started = Instant::now();
    let workers: Vec<_> = (0..args.allocations)
        .map(|index| {
            let (username, password) =
                turn_client::rest_credentials(&args.secret, &format!("channels{index}"), expiry);
            let server = args.server;
            let (channels, peer_ip, peer_port) = (args.channels, args.peer_ip, args.peer_port);
            std::thread::spawn(move || -> Result<Session> {
                let mut session = Session {
                    socket: UdpSocket::bind(SocketAddr::new(bind, 0))
                        .context("cannot bind a client socket")?,
                    server,
                    username,
                    password,
                    realm: String::new(),
                    nonce: None,
                };
                session
                    .transact(
                        Method::Allocate,
                        &[Attribute::RequestedTransport(17), Attribute::Lifetime(3600)],
                    )
                    .with_context(|| format!("allocation {index}"))?;
                let binds: Vec<(u16, SocketAddr)> = (0..channels)
                    .map(|offset| {
                        (
                            0x4000 + offset,
                            SocketAddr::new(peer_ip, peer_port + offset),
                        )
                    })
                    .collect();
                for chunk in binds.chunks(WINDOW) {
                    session
                        .bind_many(chunk)
                        .with_context(|| format!("allocation {index}"))?;
                }
                Ok(session)
            })
        })
        .collect();
    let mut sessions = Vec::new();
    let mut failures = Vec::new();
    for worker in workers {
        match worker.join() {
            Ok(Ok(session)) => sessions.push(session),
            Ok(Err(error)) => failures.push(format!("{error:#}")),
            Err(_) => failures.push("a thread panicked".to_owned()),
        }
    }
    let bound = sessions.len() * usize::from(args.channels);
    println!(
        "{{\"allocations\":{},\"channels\":{bound},\"failures\":{},\"seconds\":{:.1}}}",
        sessions.len(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    if args.hold > 0 {
        eprintln!("holding {bound} channels for {} s", args.hold);
        std::thread::sleep(Duration::from_secs(args.hold));
    }
    for mut session in sessions {
        let _ = session.transact(Method::Refresh, &[Attribute::Lifetime(0)]);
    }
    if let Some(first) = failures.first() {
        bail!("{} allocations failed; the first: {first}", failures.len());
    }
    Ok(())
}

/// ChannelBind requests in flight per allocation: few, as a relay with thousands of channels
/// per allocation answers slowly (retransmissions wait up to 4 s, 10 times).
const WINDOW: usize = 8;

/// A blocking TURN client session with long-term credentials (the realm and nonce learnt from
/// the first 401), retransmitting like `turn_client`.
struct Session {
    socket: UdpSocket,
    server: SocketAddr,
    username: String,
    password: String,
    realm: String,
    nonce: Option<String>,
}

impl Session {
    fn transact(&mut self, method: Method, attributes: &[Attribute<'_>]) -> Result<()> {
        for _ in 0..3 {
            let response = self.exchange(method, attributes)?;
            if turnpike_load::turn_client::interpret_response(
                method,
                response,
                &mut self.realm,
                &mut self.nonce,
            )?
            .is_some()
            {
                return Ok(());
            }
        }
        bail!("{method:?}: the server keeps refusing the credentials")
    }

    /// Binds every (channel, peer) of `binds` with all requests in flight at once (the nonce is
    /// known from the Allocate), retransmitting the unanswered; any error answer is retried
    /// alone through `transact` (a stale nonce, say).
    fn bind_many(&mut self, binds: &[(u16, SocketAddr)]) -> Result<()> {
        let requests = binds
            .iter()
            .map(|&(channel, peer)| {
                let attributes = [
                    Attribute::ChannelNumber(channel),
                    Attribute::XorPeerAddress(peer),
                ];
                self.encode(Method::ChannelBind, &attributes)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut pending: Vec<usize> = (0..requests.len()).collect();
        let mut retry = Vec::new();
        let mut response = vec![0; 2048];
        let mut timeout = Duration::from_millis(250);
        for _ in 0..10 {
            for &index in &pending {
                self.socket
                    .send_to(&requests[index].1, self.server)
                    .context("cannot send to the server")?;
            }
            self.socket.set_read_timeout(Some(timeout))?;
            let deadline = Instant::now() + timeout;
            while !pending.is_empty() && Instant::now() < deadline {
                match self.socket.recv_from(&mut response) {
                    Ok((len, from)) if from == self.server => {
                        let Ok(message) = Message::parse(&response[..len]) else {
                            continue;
                        };
                        let id = message.transaction_id();
                        if let Some(position) =
                            pending.iter().position(|&index| requests[index].0 == id)
                        {
                            let index = pending.swap_remove(position);
                            if message.class() != Class::SuccessResponse {
                                retry.push(index);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(error)
                        if matches!(
                            error.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    Err(error) => return Err(error).context("cannot receive from the server"),
                }
            }
            if pending.is_empty() {
                break;
            }
            timeout = (timeout * 2).min(Duration::from_secs(4));
        }
        ensure!(
            pending.is_empty(),
            "no response from {} to {} ChannelBinds",
            self.server,
            pending.len()
        );
        for index in retry {
            let (channel, peer) = binds[index];
            self.transact(
                Method::ChannelBind,
                &[
                    Attribute::ChannelNumber(channel),
                    Attribute::XorPeerAddress(peer),
                ],
            )
            .with_context(|| format!("channel {channel:#06x} to {peer}"))?;
        }
        Ok(())
    }

    /// A request with a new transaction ID, authenticated once the nonce is known.
    fn encode(
        &self,
        method: Method,
        attributes: &[Attribute<'_>],
    ) -> Result<(TransactionId, Vec<u8>)> {
        turnpike_load::turn_client::encode_request(
            method,
            attributes,
            &self.username,
            &self.password,
            &self.realm,
            self.nonce.as_deref(),
        )
    }

    fn exchange(&self, method: Method, attributes: &[Attribute<'_>]) -> Result<Vec<u8>> {
        let (transaction_id, request) = self.encode(method, attributes)?;
        turnpike_load::turn_client::udp_exchange(
            &self.socket,
            self.server,
            method,
            transaction_id,
            &request,
        )
    }
}
