//! What a relay thread does with the core's decisions: relayed datagrams queued in the send
//! batch or a stream client's connection, and the core's commands executed in order.

use rand::rngs::StdRng;
use turnpike_io::{HEADROOM, SendBatch};
use turnpike_relay::{Command, Forward, Server};

use super::sockets::Sockets;
use crate::metrics::ShardMetrics;
use crate::stream::Streams;

/// Queues a relayed datagram; `slot` is the receive slot (headroom, then the datagram).
pub(super) fn queue_forward(
    sockets: &Sockets<'_>,
    sends: &mut SendBatch,
    streams: &mut Streams,
    metrics: &mut ShardMetrics,
    forward: Forward,
    slot: &mut [u8],
) {
    match forward {
        Forward::ToPeer {
            relay,
            peer,
            payload,
        } => {
            let Some(socket) = sockets.relay(relay) else {
                metrics.no_socket += 1;
                return;
            };
            let bytes = &slot[HEADROOM + payload.start..HEADROOM + payload.end];
            tracing::trace!(port = relay.port, len = bytes.len(), "to peer");
            // SAFETY: `bytes` lies in the receive pool, which receives again only after
            // `Shard::flush` has sent the batch; relayed sockets live as long as the thread.
            unsafe { sends.push(socket, peer, bytes) };
        }
        Forward::ToClient {
            client,
            channel_header,
            payload,
        } if client.transport.is_stream() => {
            // Framed and copied into the connection's write buffer (and through TLS).
            let bytes = &slot[HEADROOM + payload.start..HEADROOM + payload.end];
            streams.send_frame(&client, &channel_header, bytes, &mut metrics.streams);
        }
        Forward::ToClient {
            client,
            channel_header,
            payload,
        } => {
            let Some((socket, source)) = sockets.listener(client.server) else {
                metrics.no_socket += 1;
                return;
            };
            // The header goes into the bytes just before the payload: the headroom for peer
            // data, the old header for hairpinned ChannelData.
            let start = HEADROOM + payload.start - channel_header.len();
            slot[start..HEADROOM + payload.start].copy_from_slice(&channel_header);
            let bytes = &slot[start..HEADROOM + payload.end];
            tracing::trace!(len = bytes.len(), "to client");
            // SAFETY: as above: the receive pool outlives the batch's next flush, and the
            // listening sockets live as long as the thread.
            unsafe { sends.push_from(socket, source, client.client, bytes) };
        }
    }
}

/// Executes the core's commands, in order, until there are none.
pub(crate) fn execute_commands(
    sockets: &Sockets<'_>,
    streams: &mut Streams,
    server: &mut Server<StdRng>,
    metrics: &mut ShardMetrics,
) {
    while let Some(command) = server.next_command() {
        match command {
            Command::SendToClient { to, payload } if to.transport.is_stream() => {
                streams.send_message(&to, &payload, &mut metrics.streams);
            }
            Command::SendToClient { to, payload } => match sockets.listener(to.server) {
                Some((socket, source)) => turnpike_io::send_now_from(
                    socket,
                    source,
                    to.client,
                    &payload,
                    &mut metrics.sends,
                ),
                None => metrics.no_socket += 1,
            },
            Command::SendToPeer {
                from,
                peer,
                payload,
            } => match sockets.relay(from) {
                Some(socket) => turnpike_io::send_now(socket, peer, &payload, &mut metrics.sends),
                None => metrics.no_socket += 1,
            },
            Command::OpenRelaySocket(relay) => {
                if sockets.relay(relay).is_none() {
                    // The core only hands out ports it was not told to exclude.
                    tracing::error!(
                        port = relay.port,
                        "allocated a relayed port without a socket"
                    );
                    metrics.no_socket += 1;
                }
            }
            // Relayed sockets stay bound for the life of the process (see `ShardSockets::bind`).
            Command::CloseRelaySocket(_) => {}
            // The kernel mirrors the core's channels; a failure (a full map, say) leaves that
            // channel on the user-space path, which relays it all the same.
            // The kernel program speaks UDP only: a stream client's channels stay here, and
            // their peers' data comes up to user space and out on the client's connection.
            Command::InstallChannel(route) | Command::RemoveChannel(route)
                if route.client.transport.is_stream() => {}
            Command::InstallChannel(route) => {
                if let Some(kernel) = sockets.kernel
                    && let Err(error) = kernel.install_channel(&route)
                {
                    tracing::debug!(%error, "channel stays in user space");
                    metrics.kernel_map_errors += 1;
                }
            }
            Command::RemoveChannel(route) => {
                if let Some(kernel) = sockets.kernel
                    && let Err(error) = kernel.remove_channel(&route)
                {
                    tracing::debug!(%error, "cannot remove a channel from the kernel");
                    metrics.kernel_map_errors += 1;
                }
            }
            // The kernel program relays channels only; permissions stay in user space.
            Command::InstallPermission { .. } | Command::RemovePermission { .. } => {}
        }
    }
}
