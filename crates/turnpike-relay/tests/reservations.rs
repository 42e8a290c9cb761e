//! EVEN-PORT with the R bit and RESERVATION-TOKEN (RFC 8656 §7.2, §14.6, §14.9), in virtual
//! time: the port after an even one is held for 30 s for the Allocate that presents the token,
//! counts against the quotas like an allocation, stays inside the server's block of ports, and
//! is freed at its deadline, used or not.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code, and the harness it shares: a panic is how a test reports a failure"
)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use turnpike_proto::{AddressFamily, Attribute, ErrorCode, Method};
use turnpike_relay::{AllocationBudget, Command, Config, UserBudget};

const UDP: u8 = 17;

fn udp() -> Attribute<'static> {
    Attribute::RequestedTransport(UDP)
}

fn reserve() -> Attribute<'static> {
    Attribute::EvenPort { reserve_next: true }
}

/// A client of its own source port.
fn client(index: u16) -> Client {
    Client::new(&format!("203.0.113.5:{}", 40_000 + index))
}

fn with(change: impl FnOnce(&mut Config)) -> Config {
    let mut config = config();
    change(&mut config);
    config
}

/// A relay handing out `ports` only.
fn ports(ports: core::ops::RangeInclusive<u16>) -> Config {
    with(|config| config.relay_ports = ports)
}

fn token_in(response: &[u8]) -> Option<[u8; 8]> {
    attributes(response)
        .into_iter()
        .find_map(|attribute| match attribute {
            Attribute::ReservationToken(token) => Some(token),
            _ => None,
        })
}

/// Allocates with EVEN-PORT and the R bit; returns the relayed address and the token.
fn reserving(harness: &mut Harness, client: &mut Client) -> (SocketAddr, [u8; 8]) {
    let (response, _) = client.send(harness, Method::Allocate, &[udp(), reserve()]);
    assert_eq!(error_code(&response), None, "reserving allocation refused");
    client.verify_response(&response);
    let relayed = relayed_addresses(&response);
    assert_eq!(relayed.len(), 1);
    (relayed[0], token_in(&response).expect("RESERVATION-TOKEN"))
}

/// Allocates with `token`; returns the response and the commands.
fn with_token(
    harness: &mut Harness,
    client: &mut Client,
    token: [u8; 8],
) -> (Vec<u8>, Vec<Command>) {
    client.send(
        harness,
        Method::Allocate,
        &[udp(), Attribute::ReservationToken(token)],
    )
}

#[test]
fn the_next_port_is_reserved_and_the_token_allocates_it() {
    for seed in 0..16 {
        let mut harness = Harness::with_seed(config(), seed);
        let (relayed, token) = reserving(&mut harness, &mut client(0));
        assert_eq!(relayed.port() % 2, 0, "{relayed}");
        assert_eq!(harness.server.reservation_count(), 1);
        assert_eq!(harness.server.allocation_count(), 1);

        let mut second = client(1);
        let (response, commands) = with_token(&mut harness, &mut second, token);
        assert_eq!(error_code(&response), None, "seed {seed}");
        second.verify_response(&response);
        let next = SocketAddr::new(relayed.ip(), relayed.port() + 1);
        assert_eq!(relayed_addresses(&response), [next]);
        assert_eq!(token_in(&response), None, "no token for a reserved port");
        assert_eq!(
            commands[0],
            Command::OpenRelaySocket(relay_socket(next)),
            "the socket opens before the answer"
        );
        assert_eq!(harness.server.reservation_count(), 0);
        assert_eq!(harness.server.allocation_count(), 2);
    }
}

#[test]
fn a_token_is_good_for_one_allocation() {
    let mut harness = Harness::new();
    let (_, token) = reserving(&mut harness, &mut client(0));
    let (response, _) = with_token(&mut harness, &mut client(1), token);
    assert_eq!(error_code(&response), None);
    let mut third = client(2);
    let (response, commands) = with_token(&mut harness, &mut third, token);
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::INSUFFICIENT_CAPACITY)
    );
    assert_eq!(commands.len(), 1, "nothing opened: {commands:?}");
    assert_eq!(harness.server.allocation_count(), 2);
    assert_eq!(
        harness
            .server
            .stats()
            .refusals
            .get(&turnpike_relay::Refusal::BadReservationToken),
        Some(&1)
    );
}

#[test]
fn a_wrong_token_is_refused_and_leaves_the_reservation_alone() {
    let mut harness = Harness::new();
    let (relayed, token) = reserving(&mut harness, &mut client(0));
    let mut wrong = token;
    wrong[0] ^= 1;
    let mut second = client(1);
    let (response, _) = with_token(&mut harness, &mut second, wrong);
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::INSUFFICIENT_CAPACITY)
    );
    assert_eq!(harness.server.reservation_count(), 1);
    // The refused client may try again with the right one.
    let (response, _) = with_token(&mut harness, &mut second, token);
    assert_eq!(
        relayed_addresses(&response),
        [SocketAddr::new(relayed.ip(), relayed.port() + 1)]
    );
}

#[test]
fn a_reservation_lasts_30_seconds() {
    // Used a moment before its deadline: still there.
    let mut harness = Harness::new();
    let (_, token) = reserving(&mut harness, &mut client(0));
    assert!(harness.advance(Duration::from_millis(29_999)).is_empty());
    let (response, _) = with_token(&mut harness, &mut client(1), token);
    assert_eq!(error_code(&response), None);

    // At its deadline: gone, without a command (no socket was ever opened for it).
    let mut harness = Harness::new();
    let (_, token) = reserving(&mut harness, &mut client(0));
    assert_eq!(
        harness.server.poll_timeout(),
        Some(harness.now + Duration::from_secs(30)),
        "the reservation's deadline comes first"
    );
    assert!(harness.advance(Duration::from_secs(30)).is_empty());
    assert_eq!(harness.server.reservation_count(), 0);
    let (response, _) = with_token(&mut harness, &mut client(1), token);
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::INSUFFICIENT_CAPACITY)
    );
    assert_eq!(harness.server.footprint().timers, 1, "the allocation's");
}

/// Allocates plain addresses from new clients until the relay refuses; returns how many.
fn fill(harness: &mut Harness, first_client: u16) -> usize {
    (first_client..first_client + 100)
        .take_while(|index| {
            let (response, _) = client(*index).send(harness, Method::Allocate, &[udp()]);
            error_code(&response).is_none()
        })
        .count()
}

#[test]
fn an_unused_reservation_gives_its_port_back_at_its_deadline() {
    // Four ports: the reserving allocation holds one and the reservation another, so two are
    // left until the reservation ends, three after.
    let mut harness = Harness::with_config(ports(50_000..=50_003));
    reserving(&mut harness, &mut client(0));
    assert_eq!(fill(&mut harness, 1), 2);
    harness.advance(Duration::from_secs(30));
    assert_eq!(fill(&mut harness, 10), 1);
}

#[test]
fn a_used_reservation_holds_its_port_as_long_as_the_allocation() {
    let mut harness = Harness::with_config(ports(50_000..=50_003));
    let (_, token) = reserving(&mut harness, &mut client(0));
    let (response, _) = with_token(&mut harness, &mut client(1), token);
    assert_eq!(error_code(&response), None);
    // The reservation's deadline passes: the allocation made with it keeps its port.
    harness.advance(Duration::from_secs(30));
    assert_eq!(fill(&mut harness, 2), 2);
    assert_eq!(harness.server.allocation_count(), 4);
}

#[test]
fn the_reserving_allocation_may_end_first() {
    let mut harness = Harness::new();
    let mut first = client(0);
    let (relayed, token) = reserving(&mut harness, &mut first);
    let (response, _) = first.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(0)]);
    assert_eq!(error_code(&response), None);
    assert_eq!(harness.server.allocation_count(), 0);
    let (response, _) = with_token(&mut harness, &mut client(1), token);
    assert_eq!(
        relayed_addresses(&response),
        [SocketAddr::new(relayed.ip(), relayed.port() + 1)]
    );
}

#[test]
fn a_reservation_counts_against_the_total_quota() {
    let quota = |total| with(|config| config.quotas.allocations_total = total);
    // One place left: EVEN-PORT with R needs two.
    let mut harness = Harness::with_config(quota(1));
    let (response, commands) = client(0).send(&mut harness, Method::Allocate, &[udp(), reserve()]);
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::ALLOCATION_QUOTA_REACHED)
    );
    assert_eq!(commands.len(), 1);
    assert_eq!(fill(&mut harness, 1), 1);

    let mut harness = Harness::with_config(quota(2));
    let (_, token) = reserving(&mut harness, &mut client(0));
    assert_eq!(
        fill(&mut harness, 1),
        0,
        "the reservation holds the second place"
    );
    // The token turns the reservation's place into an allocation's. (Each client here has a
    // port of its own: a client made again would repeat its transaction IDs, and get the
    // cached answer.)
    let (response, _) = with_token(&mut harness, &mut client(50), token);
    assert_eq!(error_code(&response), None);
    assert_eq!(fill(&mut harness, 60), 0);

    let mut harness = Harness::with_config(quota(2));
    reserving(&mut harness, &mut client(0));
    harness.advance(Duration::from_secs(30));
    assert_eq!(
        fill(&mut harness, 1),
        1,
        "an expired reservation gives its place back"
    );
}

#[test]
fn a_reservation_counts_against_its_users_quota() {
    let quota = |per_user| with(|config| config.quotas.allocations_per_user = per_user);
    let mut harness = Harness::with_config(quota(1));
    let (response, _) = client(0).send(&mut harness, Method::Allocate, &[udp(), reserve()]);
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::ALLOCATION_QUOTA_REACHED)
    );

    let mut harness = Harness::with_config(quota(2));
    let (_, token) = reserving(&mut harness, &mut client(0));
    assert_eq!(fill(&mut harness, 1), 0);
    // Another user holds no place yet.
    let mut bob = Client::with_credentials("203.0.113.6:40000", "bob", "hunter2");
    let (response, _) = bob.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(error_code(&response), None);
    // The same user's token allocation takes the reservation's place.
    let (response, _) = with_token(&mut harness, &mut client(50), token);
    assert_eq!(error_code(&response), None);
    assert_eq!(fill(&mut harness, 60), 0);
}

#[test]
fn a_token_used_by_another_user_moves_the_place_to_that_user() {
    let mut harness = Harness::with_config(with(|config| {
        config.quotas.allocations_per_user = 2;
    }));
    let (_, token) = reserving(&mut harness, &mut client(0));
    let mut bob = Client::with_credentials("203.0.113.6:40000", "bob", "hunter2");
    let (response, _) = with_token(&mut harness, &mut bob, token);
    assert_eq!(error_code(&response), None);
    // Alice holds one place again, bob one.
    assert_eq!(fill(&mut harness, 1), 1);
    let mut bob_again = Client::with_credentials("203.0.113.6:40001", "bob", "hunter2");
    let (response, _) = bob_again.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(error_code(&response), None);
    let mut bob_third = Client::with_credentials("203.0.113.6:40002", "bob", "hunter2");
    let (response, _) = bob_third.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::ALLOCATION_QUOTA_REACHED)
    );
}

#[test]
fn a_token_is_refused_to_a_user_at_its_quota_and_stays_usable() {
    let mut harness = Harness::with_config(with(|config| {
        config.quotas.allocations_per_user = 2;
    }));
    let (_, token) = reserving(&mut harness, &mut client(0));
    let bob =
        |port: u16| Client::with_credentials(&format!("203.0.113.6:{port}"), "bob", "hunter2");
    for port in [40_000, 40_001] {
        let (response, _) = bob(port).send(&mut harness, Method::Allocate, &[udp()]);
        assert_eq!(error_code(&response), None);
    }
    let (response, _) = with_token(&mut harness, &mut bob(40_002), token);
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::ALLOCATION_QUOTA_REACHED)
    );
    assert_eq!(harness.server.reservation_count(), 1);
    let (response, _) = with_token(&mut harness, &mut client(1), token);
    assert_eq!(error_code(&response), None);
}

#[test]
fn reservations_hold_places_in_the_budgets_shared_with_other_threads() {
    let budget = AllocationBudget::new(10);
    let users = UserBudget::new(10);
    let mut harness = Harness::with_config(with(|config| {
        config.shared_budget = Some(budget.clone());
        config.shared_user_budget = Some(users.clone());
    }));
    let (_, token) = reserving(&mut harness, &mut client(0));
    assert_eq!((budget.used(), users.held_by(USER)), (2, 2));
    let (response, _) = with_token(&mut harness, &mut client(1), token);
    assert_eq!(error_code(&response), None);
    assert_eq!((budget.used(), users.held_by(USER)), (2, 2));
    reserving(&mut harness, &mut client(2));
    assert_eq!((budget.used(), users.held_by(USER)), (4, 4));
    harness.advance(Duration::from_secs(30));
    assert_eq!((budget.used(), users.held_by(USER)), (3, 3));
    harness.server.shutdown();
    assert_eq!((budget.used(), users.held_by(USER)), (0, 0));

    // A shared budget with one place left refuses R and gives nothing away.
    let budget = AllocationBudget::new(1);
    let mut harness = Harness::with_config(with(|config| {
        config.shared_budget = Some(budget.clone());
        config.shared_user_budget = Some(users.clone());
    }));
    let (response, _) = client(0).send(&mut harness, Method::Allocate, &[udp(), reserve()]);
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::ALLOCATION_QUOTA_REACHED)
    );
    assert_eq!((budget.used(), users.held_by(USER)), (0, 0));
    assert_eq!(fill(&mut harness, 1), 1, "no port was kept either");
}

#[test]
fn shutdown_frees_reservations_too() {
    let mut harness = Harness::with_config(ports(50_000..=50_001));
    reserving(&mut harness, &mut client(0));
    harness.server.shutdown();
    harness.drain();
    assert_eq!(harness.server.reservation_count(), 0);
    assert_eq!(harness.server.footprint().timers, 0);
    assert_eq!(fill(&mut harness, 1), 2);
}

#[test]
fn the_pair_stays_inside_the_servers_block_of_ports() {
    // This server's block is 50000-50002 of a wider range: 50002's successor belongs to a
    // sibling, so the only pair is 50000 and 50001, whatever the seed.
    let block = || {
        with(|config| {
            config.relay_ports = 50_000..=50_099;
            config.shard_ports = Some(50_000..=50_002);
        })
    };
    for seed in 0..32 {
        let mut harness = Harness::with_seed(block(), seed);
        let (relayed, _) = reserving(&mut harness, &mut client(0));
        assert_eq!(relayed.port(), 50_000, "seed {seed}");
        // No pair is left: R is refused, a plain EVEN-PORT still gets 50002.
        let (response, _) = client(1).send(&mut harness, Method::Allocate, &[udp(), reserve()]);
        assert_eq!(
            error_code(&response),
            Some(ErrorCode::INSUFFICIENT_CAPACITY)
        );
        let (response, _) = client(2).send(
            &mut harness,
            Method::Allocate,
            &[
                udp(),
                Attribute::EvenPort {
                    reserve_next: false,
                },
            ],
        );
        assert_eq!(relayed_addresses(&response)[0].port(), 50_002);
    }
}

#[test]
fn an_even_port_whose_successor_is_taken_is_not_chosen() {
    for seed in 0..32 {
        let mut harness = Harness::with_seed(ports(50_000..=50_005), seed);
        // The driver could not bind 50001 and 50005: only 50002 has a free successor.
        harness.server.exclude_relay_port(50_001);
        harness.server.exclude_relay_port(50_005);
        let (relayed, _) = reserving(&mut harness, &mut client(0));
        assert_eq!(relayed.port(), 50_002, "seed {seed}");
        let (response, _) = client(1).send(&mut harness, Method::Allocate, &[udp(), reserve()]);
        assert_eq!(
            error_code(&response),
            Some(ErrorCode::INSUFFICIENT_CAPACITY)
        );
        // The refusal kept nothing: 50000 and 50004 are still there.
        assert_eq!(fill(&mut harness, 2), 2);
    }
}

#[test]
fn ports_and_tokens_follow_from_the_seed() {
    let run = |seed| {
        let mut harness = Harness::with_seed(config(), seed);
        (0..4)
            .map(|index| reserving(&mut harness, &mut client(index)))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
    let tokens: Vec<[u8; 8]> = run(7).into_iter().map(|(_, token)| token).collect();
    assert!(tokens.iter().all(|token| *token != [0; 8]));
}

#[test]
fn an_ipv6_reservation_allocates_an_ipv6_address() {
    let mut harness = Harness::new();
    let mut first = client(0);
    let (response, _) = first.send(
        &mut harness,
        Method::Allocate,
        &[
            udp(),
            Attribute::RequestedAddressFamily(AddressFamily::V6),
            reserve(),
        ],
    );
    let relayed = relayed_addresses(&response)[0];
    assert!(relayed.is_ipv6());
    let (response, _) = with_token(&mut harness, &mut client(1), token_in(&response).unwrap());
    assert_eq!(
        relayed_addresses(&response),
        [SocketAddr::new(relayed.ip(), relayed.port() + 1)]
    );
}

#[test]
fn a_retransmitted_reserving_allocate_gets_the_same_token_and_reserves_nothing_more() {
    let mut harness = Harness::new();
    let mut first = client(0);
    first.handshake(&mut harness);
    let request = first.request(Method::Allocate, &[udp(), reserve()]);
    let (_, commands) = harness.from_client(first.five_tuple, &request);
    let response = only_response(&commands);
    let (_, commands) = harness.from_client(first.five_tuple, &request);
    assert_eq!(only_response(&commands), response);
    assert_eq!(harness.server.reservation_count(), 1);
}

#[test]
fn reserving_the_next_port_of_a_dual_allocation_is_malformed() {
    let mut harness = Harness::new();
    let (response, _) = client(0).send(
        &mut harness,
        Method::Allocate,
        &[
            udp(),
            reserve(),
            Attribute::AdditionalAddressFamily(AddressFamily::V6),
        ],
    );
    assert_eq!(error_code(&response), Some(ErrorCode::BAD_REQUEST));
    assert_eq!(harness.server.reservation_count(), 0);
}

#[test]
fn a_draining_relay_honours_no_token() {
    let mut harness = Harness::new();
    let (_, token) = reserving(&mut harness, &mut client(0));
    harness.server.begin_drain();
    let (response, _) = with_token(&mut harness, &mut client(1), token);
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::INSUFFICIENT_CAPACITY)
    );
    harness.advance(Duration::from_secs(30));
    assert_eq!(harness.server.reservation_count(), 0);
}
