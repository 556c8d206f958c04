//! Bounded fuzzing of every native function that parses untrusted bytes, with proptest
//! (cargo-fuzz is not installed here, and the crate's tests stay on stable Rust).
//!
//! - [`offload::split`]: any TUN read (virtio-net header and super-packet) from the kernel;
//! - [`offload::coalesce`]: any batch of decrypted packets (peers choose their content);
//! - the inbound datagram path of [`plane::Inbound`]: datagrams sent over loopback to a plane
//!   with one peer and one session, raw, mangled after sealing, sealed around arbitrary inner
//!   packets, or replayed; classification, the open, the replay window, the inner-length and
//!   AllowedIPs checks all run as in production, with a Unix datagram socket as the TUN device;
//! - [`replay::ReplayWindow`]: any sequence of counters.
//!
//! Inputs are valid packets changed at random as often as random bytes, so that cases get past
//! the first length check. Case counts stay at proptest's default or below so that
//! `cargo test --release` grows by a few seconds.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use crate::offload::{self, Packets, VnetHeader, VNET_HDR_LEN};
use crate::plane::{Inbound, Plane, RecvSession};
use crate::replay::{ReplayWindow, WINDOW_SIZE};
use crate::transport::{TransportKey, TAG_LEN, TRANSPORT_TYPE};

const PEER_V4: [u8; 4] = [10, 0, 0, 2];
const OTHER_V4: [u8; 4] = [10, 0, 0, 9];
const LOCAL_V4: [u8; 4] = [10, 0, 0, 1];
const KEY: [u8; 32] = [7; 32];
const RECEIVER: u32 = 0x1122_3344;

/// An IPv4 packet with a correct total length (checksums are not checked on this path).
fn ipv4(source: [u8; 4], protocol: u8, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + payload.len()).unwrap();
    let mut packet = vec![0x45, 0];
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
    packet.extend_from_slice(&source);
    packet.extend_from_slice(&LOCAL_V4);
    packet.extend_from_slice(payload);
    packet
}

/// A TCP segment (20-byte header, ACK|PSH) in IPv4 or IPv6, as a TUN device hands it over.
fn tcp(v6: bool, sequence: u32, payload: &[u8]) -> Vec<u8> {
    let mut segment = vec![0x30, 0x39, 0x01, 0xbb];
    segment.extend_from_slice(&sequence.to_be_bytes());
    segment.extend_from_slice(&[0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    segment.extend_from_slice(payload);
    if !v6 {
        return ipv4(LOCAL_V4, 6, &segment);
    }
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&u16::try_from(segment.len()).unwrap().to_be_bytes());
    packet.extend_from_slice(&[6, 64]);
    packet.extend_from_slice(&[0xfd; 16]);
    packet.extend_from_slice(&[0xfe; 16]);
    packet.extend_from_slice(&segment);
    packet
}

/// `data` with bytes XORed at the given positions, then cut to at most `keep` bytes.
fn mangle(mut data: Vec<u8>, flips: &[(usize, u8)], keep: usize) -> Vec<u8> {
    if !data.is_empty() {
        for &(at, bits) in flips {
            let len = data.len();
            data[at % len] ^= bits;
        }
    }
    data.truncate(keep);
    data
}

fn flips() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((any::<usize>(), 1u8..), 0..4)
}

/// A TUN read: a plausible or random virtio-net header, then a real or random packet.
fn tun_read() -> impl Strategy<Value = Vec<u8>> {
    let header = (
        prop_oneof![Just(0u8), Just(offload::NEEDS_CSUM), any::<u8>()],
        prop_oneof![
            Just(offload::GSO_NONE),
            Just(offload::GSO_TCPV4),
            Just(offload::GSO_TCPV6),
            Just(offload::GSO_UDP_L4),
            Just(offload::GSO_TCPV4 | offload::GSO_ECN),
            any::<u8>(),
        ],
        any::<u16>(),
        prop_oneof![1u16..1500, any::<u16>()],
        prop_oneof![Just(20u16), Just(40u16), any::<u16>()],
        prop_oneof![Just(16u16), Just(6u16), any::<u16>()],
    )
        .prop_map(
            |(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)| {
                VnetHeader {
                    flags,
                    gso_type,
                    hdr_len,
                    gso_size,
                    csum_start,
                    csum_offset,
                }
                .to_bytes()
                .to_vec()
            },
        );
    let packet = prop_oneof![
        (any::<bool>(), 0usize..3000, flips(), any::<usize>())
            .prop_map(|(v6, size, f, keep)| mangle(tcp(v6, 1, &vec![0x61; size]), &f, keep)),
        prop::collection::vec(any::<u8>(), 0..200),
    ];
    prop_oneof![
        (header, packet).prop_map(|(h, p)| [h, p].concat()),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// What one datagram sent to the plane is.
#[derive(Debug, Clone)]
enum Datagram {
    /// Any bytes.
    Raw(Vec<u8>),
    /// A valid transport message around an inner packet from `source`, or around any bytes.
    Sealed { inner: Vec<u8> },
    /// A valid message around a valid packet, then mangled (bits flipped, cut).
    Mangled {
        flips: Vec<(usize, u8)>,
        keep: usize,
    },
    /// The previous datagram again.
    Replay,
    /// A transport header with any counter and index, and a random body.
    Header {
        receiver: bool,
        counter: u64,
        body: Vec<u8>,
    },
}

fn datagram() -> impl Strategy<Value = Datagram> {
    let inner = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|p| ipv4(PEER_V4, 17, &p)),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|p| ipv4(OTHER_V4, 17, &p)),
        (
            prop::collection::vec(any::<u8>(), 0..40),
            flips(),
            any::<usize>()
        )
            .prop_map(|(p, f, keep)| mangle(ipv4(PEER_V4, 17, &p), &f, keep)),
        prop::collection::vec(any::<u8>(), 0..80),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..100).prop_map(Datagram::Raw),
        inner.prop_map(|inner| Datagram::Sealed { inner }),
        (flips(), any::<usize>()).prop_map(|(flips, keep)| Datagram::Mangled { flips, keep }),
        Just(Datagram::Replay),
        (
            any::<bool>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(receiver, counter, body)| Datagram::Header {
                receiver,
                counter,
                body
            }),
    ]
}

fn transport_message(key: &TransportKey, receiver: u32, counter: u64, inner: &[u8]) -> Vec<u8> {
    let mut message = TRANSPORT_TYPE.to_le_bytes().to_vec();
    message.extend_from_slice(&receiver.to_le_bytes());
    message.extend_from_slice(&counter.to_le_bytes());
    message.extend_from_slice(&key.seal(counter, inner, &[]));
    message
}

/// A plane on a loopback UDP socket with peer 1 (AllowedIPs 10.0.0.2/32) and one receive
/// session; the returned Unix socket reads what it writes to "the TUN device".
struct Harness {
    plane: Arc<Plane>,
    inbound: Inbound,
    udp: UdpSocket,
    sender: UdpSocket,
    tun: UnixDatagram,
    _tun_writer: UnixDatagram,
}

impl Harness {
    fn new() -> Self {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_nonblocking(true).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (tun, tun_writer) = UnixDatagram::pair().unwrap();
        tun.set_nonblocking(true).unwrap();
        let plane = Arc::new(Plane::new(
            udp.as_raw_fd(),
            false,
            false,
            vec![tun_writer.as_raw_fd()],
            false,
            1420,
        ));
        let session = RecvSession {
            key: Arc::new(TransportKey::new(&KEY).unwrap()),
            replay: Arc::new(Mutex::new(ReplayWindow::new(WINDOW_SIZE, u64::MAX - 8192))),
            peer: 1,
            expires: f64::INFINITY,
            confirms: None,
        };
        plane.update_peer(
            1,
            Some(sender.local_addr().unwrap()),
            &[(PEER_V4.to_vec(), 32)],
            None,
            vec![(RECEIVER, session)],
        );
        let inbound = Inbound::new(Arc::clone(&plane));
        Self {
            plane,
            inbound,
            udp,
            sender,
            tun,
            _tun_writer: tun_writer,
        }
    }

    /// Send `datagrams`, let the plane take them in, and return what reached the TUN device.
    fn deliver(&mut self, datagrams: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let target = self.udp.local_addr().unwrap();
        for datagram in datagrams {
            self.sender.send_to(datagram, target).unwrap();
        }
        // Loopback queues them at once; run until the socket has nothing more.
        loop {
            let result = self.inbound.run_once(0).unwrap();
            if result.delivered == 0
                && !result.confirmed
                && !result.control_ready
                && !self.pending()
            {
                break;
            }
        }
        let mut delivered = Vec::new();
        let mut buffer = vec![0u8; 70_000];
        loop {
            match self.tun.recv(&mut buffer) {
                Ok(size) => delivered.push(buffer[..size].to_vec()),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return delivered,
                Err(error) => panic!("reading the fake TUN device: {error}"),
            }
        }
    }

    fn pending(&self) -> bool {
        let mut byte = [0u8; 1];
        self.udp.peek_from(&mut byte).is_ok()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_tun_read_splits_or_is_refused(frame in tun_read()) {
        let mut out = Packets::new();
        match offload::split(&frame, &mut out) {
            Ok(()) => {
                prop_assert!(!out.is_empty());
                for packet in out.iter() {
                    prop_assert!(!packet.is_empty());
                    prop_assert!(packet.len() <= frame.len().saturating_sub(VNET_HDR_LEN));
                }
            }
            Err(_) => prop_assert!(out.is_empty(), "a refused read leaves nothing behind"),
        }
    }

    #[test]
    fn any_batch_coalesces_with_every_packet_written_once(
        packets in prop::collection::vec(
            prop_oneof![
                (any::<bool>(), 0u32..4, 1usize..1400, flips(), any::<usize>()).prop_map(
                    |(v6, n, size, f, keep)| mangle(
                        tcp(v6, n * 1400, &vec![0x62; size]), &f, keep
                    )
                ),
                (any::<bool>(), 0u32..4).prop_map(|(v6, n)| tcp(v6, n * 1000, &[0x63; 1000])),
                prop::collection::vec(any::<u8>(), 0..80),
            ],
            0..24,
        ),
        verify in any::<bool>(),
    ) {
        let writes = offload::coalesce(&packets, verify);
        prop_assert_eq!(writes.iter().map(|w| w.count).sum::<usize>(), packets.len());
        for write in &writes {
            prop_assert!(write.frame.len() >= VNET_HDR_LEN && write.count >= 1);
            prop_assert!(write.count <= offload::MAX_COALESCED_SEGMENTS);
            prop_assert!(write.frame.len() - VNET_HDR_LEN <= offload::MAX_IP_LENGTH.max(
                packets.iter().map(Vec::len).max().unwrap_or(0)
            ));
        }
    }

    #[test]
    fn any_counters_are_accepted_at_most_once(
        counters in prop::collection::vec(
            prop_oneof![0u64..20_000, any::<u64>()], 0..200
        ),
    ) {
        let mut window = ReplayWindow::new(WINDOW_SIZE, u64::MAX - 8192);
        let mut accepted = HashSet::new();
        for counter in counters {
            if window.check(counter) {
                prop_assert!(accepted.insert(counter), "counter {} accepted twice", counter);
            }
        }
    }
}

proptest! {
    // Each case sends real datagrams over loopback: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn inbound_datagrams_deliver_only_authentic_allowed_packets(
        plan in prop::collection::vec(datagram(), 1..16),
    ) {
        let key = TransportKey::new(&KEY).unwrap();
        let mut harness = Harness::new();
        let mut sent: Vec<Vec<u8>> = Vec::new();
        // What an authenticated, fresh, allowed message may put on the TUN device.
        let mut deliverable: Vec<Vec<u8>> = Vec::new();
        for (counter, step) in (0u64..).zip(&plan) {
            let valid = ipv4(PEER_V4, 17, &counter.to_be_bytes());
            let datagram = match step {
                Datagram::Raw(bytes) => bytes.clone(),
                Datagram::Sealed { inner } => {
                    if inner.len() >= 20 && inner[0] >> 4 == 4 && inner[12..16] == PEER_V4 {
                        let length = usize::from(u16::from_be_bytes([inner[2], inner[3]]));
                        if (20..=inner.len()).contains(&length) {
                            deliverable.push(inner[..length].to_vec());
                        }
                    }
                    transport_message(&key, RECEIVER, counter, inner)
                }
                Datagram::Mangled { flips, keep } => {
                    let message = transport_message(&key, RECEIVER, counter, &valid);
                    let mangled = mangle(message.clone(), flips, *keep);
                    if mangled == message {
                        deliverable.push(valid);
                    }
                    mangled
                }
                Datagram::Replay => sent.last().cloned().unwrap_or_default(),
                Datagram::Header { receiver, counter, body } => {
                    let index = if *receiver { RECEIVER } else { RECEIVER ^ 1 };
                    let mut message = TRANSPORT_TYPE.to_le_bytes().to_vec();
                    message.extend_from_slice(&index.to_le_bytes());
                    message.extend_from_slice(&counter.to_le_bytes());
                    message.extend_from_slice(body);
                    message
                }
            };
            sent.push(datagram);
        }
        let delivered = harness.deliver(&sent);
        for packet in &delivered {
            prop_assert!(packet[12..16] == PEER_V4, "source not in AllowedIPs: {:?}", packet);
            // Each authentic packet once at most: a replayed message delivers nothing.
            let at = deliverable.iter().position(|p| p == packet);
            prop_assert!(at.is_some(), "not an authentic packet (or twice): {:?}", packet);
            deliverable.swap_remove(at.unwrap());
        }
        prop_assert!(deliverable.is_empty(), "authentic packets lost: {:?}", deliverable);
        // Everything not opened on the fast path goes to Python, none of it twice.
        let control = harness.plane.take_control(usize::MAX);
        let transport_for_session = sent
            .iter()
            .filter(|d| {
                d.len() >= 16 + TAG_LEN
                    && d[..4] == TRANSPORT_TYPE.to_le_bytes()
                    && d[4..8] == RECEIVER.to_le_bytes()
            })
            .count();
        prop_assert_eq!(control.len(), sent.len() - transport_for_session);
    }
}
