//! The native data plane: whole batches from the TUN device to the UDP socket and back, with
//! no Python per packet.
//!
//! Python decides: the WireGuard device (handshakes, timers, cookies, configuration) owns the
//! sessions and hands this plane what it needs per peer ([`Plane::update_peer`]): AllowedIPs,
//! the endpoint, the session to send with (key, receiver index, a counter shared with Python)
//! and the sessions it may receive on (key, replay window shared with Python). Rust moves
//! packets: a worker per TUN queue ([`Outbound`]) reads, splits TSO/USO super-packets, routes,
//! seals and sends with UDP GSO; one worker ([`Inbound`]) receives with UDP GRO, opens, checks
//! replay and the allowed source, coalesces TCP segments and writes the TUN device. Everything
//! the plane cannot do goes back to Python unchanged: packets for a peer without a usable
//! session (Python stages them and starts a handshake), and every datagram that is not a
//! transport message for a session it knows (handshakes, cookies, unknown or expired indices).
//! What happened (bytes, times, endpoints, confirmed sessions) is kept per peer and taken by
//! Python's timer task ([`Plane::take_activity`]), which drives WireGuard's timers with it.
//!
//! A counter is never used twice: the send counter is one atomic per session, shared by every
//! worker and by Python, and each batch reserves its range with one `fetch_add`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::io::{
    monotonic, poll_readable, read_fd, write_fd, Datagrams, SockAddr, Udp, UdpCounters,
};
use crate::offload::{self, Packets, VNET_HDR_LEN};
use crate::replay::ReplayWindow;
use crate::transport::{TransportKey, HEADER_LEN, TAG_LEN, TRANSPORT_TYPE};

/// The device's name for a peer (Python's ``Peer.id``).
pub type PeerId = u32;
/// A datagram for Python and where it came from.
pub type Control = (Vec<u8>, SocketAddr);

/// Reads per outbound batch at most (each up to a 64 KiB super-packet).
const MAX_READS: usize = 64;
/// Packets per outbound batch at most.
const MAX_OUT_PACKETS: usize = 512;
/// Datagrams per inbound batch at most.
const MAX_IN_DATAGRAMS: usize = 512;
/// Largest TUN read: a vnet header and a 64 KiB (super-)packet.
const READ_SIZE: usize = VNET_HDR_LEN + 65535;
/// Datagrams waiting for Python (handshakes, cookies, unknown indices) at most; beyond that
/// they are dropped and counted (`handshake-queue-full`), never transport data: wireguard-go's
/// QueueHandshakeSize. A flood of handshake messages fills this queue, not the socket.
pub const CONTROL_QUEUE: usize = 4096;

/// The session a peer's packets are sealed with.
#[derive(Clone)]
pub struct SendSession {
    pub key: Arc<TransportKey>,
    pub counter: Arc<AtomicU64>,
    /// The peer's index for this session (the receiver field of our messages).
    pub receiver: u32,
    /// Monotonic seconds after which it must not be used (created + Reject-After-Time).
    pub expires: f64,
    /// Counters at or beyond this are never used (Reject-After-Messages).
    pub limit: u64,
}

/// A session transport messages may arrive on, by our local index.
pub struct RecvSession {
    pub key: Arc<TransportKey>,
    pub replay: Arc<Mutex<ReplayWindow>>,
    pub peer: PeerId,
    pub expires: f64,
    /// For a responder's unconfirmed (``next``) session: the send side that becomes the peer's
    /// current one on the first authenticated packet (reported by [`Plane::take_confirmed`]).
    pub confirms: Option<SendSession>,
}

#[derive(Default)]
struct PeerState {
    endpoint: Option<SockAddr>,
    send: Option<SendSession>,
}

/// What happened to one peer since the last [`Plane::take_activity`].
#[derive(Default, Clone, Debug, PartialEq)]
pub struct Activity {
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_last: f64,
    pub rx_bytes: u64,
    /// Authenticated transport messages (keepalives included) and data packets among them.
    pub rx_packets: u64,
    pub rx_data: u64,
    pub rx_last: f64,
    /// Where the last authenticated message came from (the peer may have roamed).
    pub endpoint: Option<SocketAddr>,
}

/// Cryptokey routing: longest-prefix match over the peers' AllowedIPs (one hash map per prefix
/// length, longest first; a handful of lengths in practice).
#[derive(Default)]
pub struct Routes {
    v4: Vec<(u8, HashMap<u32, PeerId>)>,
    v6: Vec<(u8, HashMap<u128, PeerId>)>,
}

fn mask4(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn mask6(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

impl Routes {
    pub fn insert_v4(&mut self, network: u32, prefix: u8, peer: PeerId) {
        let prefix = prefix.min(32);
        let key = network & mask4(prefix);
        match self.v4.iter_mut().find(|(p, _)| *p == prefix) {
            Some((_, map)) => {
                map.insert(key, peer);
            }
            None => {
                self.v4.push((prefix, HashMap::from([(key, peer)])));
                self.v4.sort_by_key(|entry| std::cmp::Reverse(entry.0));
            }
        }
    }

    pub fn insert_v6(&mut self, network: u128, prefix: u8, peer: PeerId) {
        let prefix = prefix.min(128);
        let key = network & mask6(prefix);
        match self.v6.iter_mut().find(|(p, _)| *p == prefix) {
            Some((_, map)) => {
                map.insert(key, peer);
            }
            None => {
                self.v6.push((prefix, HashMap::from([(key, peer)])));
                self.v6.sort_by_key(|entry| std::cmp::Reverse(entry.0));
            }
        }
    }

    pub fn remove_peer(&mut self, peer: PeerId) {
        for (_, map) in &mut self.v4 {
            map.retain(|_, p| *p != peer);
        }
        for (_, map) in &mut self.v6 {
            map.retain(|_, p| *p != peer);
        }
        self.v4.retain(|(_, map)| !map.is_empty());
        self.v6.retain(|(_, map)| !map.is_empty());
    }

    pub fn lookup_v4(&self, address: u32) -> Option<PeerId> {
        self.v4
            .iter()
            .find_map(|(prefix, map)| map.get(&(address & mask4(*prefix))).copied())
    }

    pub fn lookup_v6(&self, address: u128) -> Option<PeerId> {
        self.v6
            .iter()
            .find_map(|(prefix, map)| map.get(&(address & mask6(*prefix))).copied())
    }

    /// The peer an IP packet's destination (or source) routes to; `None` for a packet too short
    /// to have one or of another version.
    fn lookup_packet(&self, packet: &[u8], source: bool) -> Option<PeerId> {
        match packet.first()? >> 4 {
            4 if packet.len() >= 20 => {
                let at = if source { 12 } else { 16 };
                self.lookup_v4(u32::from_be_bytes(packet[at..at + 4].try_into().ok()?))
            }
            6 if packet.len() >= 40 => {
                let at = if source { 8 } else { 24 };
                self.lookup_v6(u128::from_be_bytes(packet[at..at + 16].try_into().ok()?))
            }
            _ => None,
        }
    }
}

#[derive(Default)]
struct Tables {
    peers: HashMap<PeerId, PeerState>,
    routes: Routes,
    receivers: HashMap<u32, RecvSession>,
}

/// One network: a route (address bytes, prefix length).
pub type Network = (Vec<u8>, u8);

/// The shared state of one tunnel's native data plane; workers hold it in an `Arc`.
pub struct Plane {
    tables: RwLock<Tables>,
    activity: Mutex<HashMap<PeerId, Activity>>,
    drops: Mutex<HashMap<&'static str, u64>>,
    confirmed: Mutex<Vec<u32>>,
    /// Datagrams for Python, and whether Python has been told that some wait (set by the
    /// socket worker, cleared when Python empties the queue; both under the queue's lock).
    control: Mutex<(VecDeque<Control>, bool)>,
    udp: Udp,
    tun: Vec<RawFd>,
    vnet_hdr: bool,
    mtu: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A worker that panicked mid-update leaves counters at worst slightly off: keep going.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Plane {
    /// `udp_fd` and `tun_fds` stay owned by Python (never closed here); `gso`/`gro` say which
    /// UDP offloads the socket has; `vnet_hdr` whether the TUN fds carry virtio-net headers.
    pub fn new(
        udp_fd: RawFd,
        gso: bool,
        gro: bool,
        tun_fds: Vec<RawFd>,
        vnet_hdr: bool,
        mtu: usize,
    ) -> Self {
        Self {
            tables: RwLock::default(),
            activity: Mutex::default(),
            drops: Mutex::default(),
            confirmed: Mutex::default(),
            control: Mutex::default(),
            udp: Udp::new(udp_fd, gso, gro),
            tun: tun_fds,
            vnet_hdr,
            mtu,
        }
    }

    pub fn udp_is_v6(&self) -> bool {
        self.udp.is_v6()
    }

    pub fn gso_enabled(&self) -> bool {
        self.udp.gso_enabled()
    }

    /// Replace everything the plane knows about `peer`.
    pub fn update_peer(
        &self,
        peer: PeerId,
        endpoint: Option<SocketAddr>,
        allowed: &[Network],
        send: Option<SendSession>,
        receivers: Vec<(u32, RecvSession)>,
    ) {
        let mut tables = self
            .tables
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tables.routes.remove_peer(peer);
        for (address, prefix) in allowed {
            match address.len() {
                4 => tables.routes.insert_v4(
                    u32::from_be_bytes(address[..].try_into().unwrap()),
                    *prefix,
                    peer,
                ),
                16 => tables.routes.insert_v6(
                    u128::from_be_bytes(address[..].try_into().unwrap()),
                    *prefix,
                    peer,
                ),
                _ => {}
            }
        }
        tables.receivers.retain(|_, session| session.peer != peer);
        for (index, session) in receivers {
            tables.receivers.insert(index, session);
        }
        let is_v6 = self.udp.is_v6();
        tables.peers.insert(
            peer,
            PeerState {
                endpoint: endpoint.map(|address| SockAddr::new(address, is_v6)),
                send,
            },
        );
    }

    pub fn remove_peer(&self, peer: PeerId) {
        let mut tables = self
            .tables
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tables.routes.remove_peer(peer);
        tables.receivers.retain(|_, session| session.peer != peer);
        tables.peers.remove(&peer);
        lock(&self.activity).remove(&peer);
    }

    pub fn clear(&self) {
        *self
            .tables
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Tables::default();
        lock(&self.activity).clear();
    }

    pub fn take_activity(&self) -> Vec<(PeerId, Activity)> {
        lock(&self.activity).drain().collect()
    }

    pub fn take_drops(&self) -> Vec<(&'static str, u64)> {
        lock(&self.drops).drain().collect()
    }

    /// Up to `max` datagrams waiting for Python, oldest first. When this empties the queue,
    /// the socket worker will tell Python again about the next one.
    pub fn take_control(&self, max: usize) -> Vec<Control> {
        let mut control = lock(&self.control);
        let (queue, signaled) = &mut *control;
        let taken: Vec<_> = queue.drain(..max.min(queue.len())).collect();
        if queue.is_empty() {
            *signaled = false;
        }
        taken
    }

    /// Queue datagrams for Python; `true` if Python must be told (none were waiting unseen).
    fn queue_control(
        &self,
        datagrams: Vec<(Vec<u8>, SocketAddr)>,
        drops: &mut HashMap<&'static str, u64>,
    ) -> bool {
        if datagrams.is_empty() {
            return false;
        }
        let mut control = lock(&self.control);
        let (queue, signaled) = &mut *control;
        for datagram in datagrams {
            if queue.len() < CONTROL_QUEUE {
                queue.push_back(datagram);
            } else {
                *drops.entry("handshake-queue-full").or_default() += 1;
            }
        }
        let tell = !queue.is_empty() && !*signaled;
        *signaled |= tell;
        tell
    }

    pub fn take_confirmed(&self) -> Vec<u32> {
        std::mem::take(&mut *lock(&self.confirmed))
    }

    fn count_drops(&self, counts: &mut HashMap<&'static str, u64>) {
        if counts.is_empty() {
            return;
        }
        let mut drops = lock(&self.drops);
        for (reason, count) in counts.drain() {
            *drops.entry(reason).or_default() += count;
        }
    }

    /// Write decrypted packets to the TUN device (queue 0), coalesced when it has offloads.
    /// Returns the drops by reason.
    pub fn write_tun<P: AsRef<[u8]>>(&self, packets: &[P], drops: &mut HashMap<&'static str, u64>) {
        let Some(&fd) = self.tun.first() else { return };
        if self.vnet_hdr {
            for write in offload::coalesce(packets, false) {
                if let Err(error) = write_fd(fd, &write.frame) {
                    *drops.entry(write_error(&error)).or_default() += write.count as u64;
                }
            }
        } else {
            for packet in packets {
                if let Err(error) = write_fd(fd, packet.as_ref()) {
                    *drops.entry(write_error(&error)).or_default() += 1;
                }
            }
        }
    }
}

fn write_error(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::EINVAL) => "write_einval",
        Some(libc::EAGAIN) => "write_eagain",
        Some(libc::EIO) => "write_eio",
        Some(libc::ENOBUFS) => "write_enobufs",
        _ => "write_error",
    }
}

/// One TUN queue's outbound worker: its own buffers, reused batch after batch.
pub struct Outbound {
    plane: Arc<Plane>,
    fd: RawFd,
    read_buffer: Vec<u8>,
    packets: Packets,
    sealed: Vec<u8>,
    pub counters: UdpCounters,
    pub tun_reads: u64,
    pub tun_packets: u64,
}

/// What an outbound batch leaves for Python: packets it could not send (no usable session or
/// no endpoint for their peer).
pub struct OutboundResult {
    pub leftovers: Vec<Vec<u8>>,
    pub sent: usize,
}

impl Outbound {
    pub fn new(plane: Arc<Plane>, queue: usize) -> Option<Self> {
        let fd = *plane.tun.get(queue)?;
        Some(Self {
            plane,
            fd,
            read_buffer: vec![0; READ_SIZE],
            packets: Packets::new(),
            sealed: Vec::with_capacity(1 << 17),
            counters: UdpCounters::default(),
            tun_reads: 0,
            tun_packets: 0,
        })
    }

    /// Wait up to `timeout_ms` for the TUN queue, then read, route, seal and send one batch.
    pub fn run_once(&mut self, timeout_ms: i32) -> io::Result<OutboundResult> {
        let mut result = OutboundResult {
            leftovers: Vec::new(),
            sent: 0,
        };
        if poll_readable(&[self.fd], timeout_ms)? == 0 {
            return Ok(result);
        }
        let plane = Arc::clone(&self.plane);
        let mut drops: HashMap<&'static str, u64> = HashMap::new();
        self.packets.clear();
        for _ in 0..MAX_READS {
            // Without vnet headers, read behind a zero header: split() then just copies.
            let start = if plane.vnet_hdr { 0 } else { VNET_HDR_LEN };
            let size = match read_fd(self.fd, &mut self.read_buffer[start..]) {
                Ok(0) => break,
                Ok(size) => size,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(error),
            };
            self.tun_reads += 1;
            if start > 0 {
                self.read_buffer[..start].fill(0);
            }
            if let Err(error) = offload::split(&self.read_buffer[..start + size], &mut self.packets)
            {
                *drops.entry(error.reason.as_str()).or_default() += 1;
            }
            if self.packets.len() >= MAX_OUT_PACKETS {
                break;
            }
        }
        self.tun_packets += self.packets.len() as u64;
        let now = monotonic();
        // Group by peer, keeping each peer's packets in order.
        let mut groups: Vec<(PeerId, Vec<&[u8]>)> = Vec::new();
        let tables = plane
            .tables
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for packet in self.packets.iter() {
            let Some(peer) = tables.routes.lookup_packet(packet, false) else {
                *drops.entry("no-route").or_default() += 1;
                continue;
            };
            match groups.iter_mut().find(|(id, _)| *id == peer) {
                Some((_, list)) => list.push(packet),
                None => groups.push((peer, vec![packet])),
            }
        }
        let mut activity: Vec<(PeerId, u64, u64)> = Vec::new();
        for (peer, packets) in &groups {
            let state = tables.peers.get(peer);
            let usable = state.and_then(|state| {
                let send = state.send.as_ref()?;
                let endpoint = state.endpoint.as_ref()?;
                (now < send.expires).then_some((send, endpoint))
            });
            let Some((send, endpoint)) = usable else {
                result.leftovers.extend(packets.iter().map(|p| p.to_vec()));
                continue;
            };
            let count = packets.len() as u64;
            let first = send.counter.fetch_add(count, Ordering::Relaxed);
            if first.checked_add(count).is_none_or(|end| end > send.limit) {
                // Past Reject-After-Messages: Python starts a new handshake for these.
                result.leftovers.extend(packets.iter().map(|p| p.to_vec()));
                continue;
            }
            self.sealed.clear();
            let lengths =
                send.key
                    .seal_transport(send.receiver, first, packets, plane.mtu, &mut self.sealed);
            send_runs(
                &plane.udp,
                endpoint,
                &self.sealed,
                &lengths,
                &mut self.counters,
            )?;
            activity.push((*peer, self.sealed.len() as u64, count));
            result.sent += packets.len();
        }
        drop(tables);
        if !activity.is_empty() {
            let mut map = lock(&plane.activity);
            for (peer, bytes, count) in activity {
                let entry = map.entry(peer).or_default();
                entry.tx_bytes += bytes;
                entry.tx_packets += count;
                entry.tx_last = now;
            }
        }
        plane.count_drops(&mut drops);
        Ok(result)
    }
}

impl Outbound {
    /// Carry batches for up to `timeout_ms`, returning early only with packets for Python.
    pub fn run_for(&mut self, timeout_ms: i32) -> io::Result<OutboundResult> {
        let deadline = monotonic() + f64::from(timeout_ms.max(0)) / 1000.0;
        let mut sent = 0;
        loop {
            let left = ((deadline - monotonic()) * 1000.0).ceil().max(0.0) as i32;
            let mut result = self.run_once(left)?;
            sent += result.sent;
            if !result.leftovers.is_empty() || left == 0 {
                result.sent = sent;
                return Ok(result);
            }
        }
    }
}

/// Send messages laid out back to back with the given lengths: each run of equal lengths (a
/// shorter one may end it) is one GSO send.
fn send_runs(
    udp: &Udp,
    endpoint: &SockAddr,
    buffer: &[u8],
    lengths: &[usize],
    counters: &mut UdpCounters,
) -> io::Result<()> {
    let mut offset = 0;
    let mut index = 0;
    while index < lengths.len() {
        let segment = lengths[index];
        let mut end = index + 1;
        while end < lengths.len() && lengths[end] == segment {
            end += 1;
        }
        if end < lengths.len() && lengths[end] < segment {
            end += 1; // a shorter datagram may close the run
        }
        let bytes: usize = lengths[index..end].iter().sum();
        udp.send_segments(endpoint, &buffer[offset..offset + bytes], segment, counters)?;
        offset += bytes;
        index = end;
    }
    Ok(())
}

/// The inbound worker (one per socket): its buffers, reused batch after batch.
pub struct Inbound {
    plane: Arc<Plane>,
    scratch: Vec<u8>,
    datagrams: Datagrams,
    opened: Vec<u8>,
    packets: Packets,
    pub counters: UdpCounters,
}

/// What inbound batches tell Python: packets written, whether a session was confirmed, and
/// whether datagrams now wait in the control queue ([`Plane::take_control`]) unannounced.
#[derive(Default)]
pub struct InboundResult {
    pub delivered: usize,
    pub confirmed: bool,
    pub control_ready: bool,
}

impl Inbound {
    pub fn new(plane: Arc<Plane>) -> Self {
        Self {
            plane,
            scratch: vec![0; 1 << 17],
            datagrams: Datagrams::default(),
            opened: Vec::with_capacity(1 << 16),
            packets: Packets::new(),
            counters: UdpCounters::default(),
        }
    }

    /// Wait up to `timeout_ms` for the socket, then receive, open, check and write one batch.
    pub fn run_once(&mut self, timeout_ms: i32) -> io::Result<InboundResult> {
        let mut result = InboundResult::default();
        let mut control = Vec::new();
        let plane = Arc::clone(&self.plane);
        if poll_readable(&[plane.udp.fd()], timeout_ms)? == 0 {
            return Ok(result);
        }
        self.datagrams.clear();
        plane.udp.recv_into(
            &mut self.scratch,
            &mut self.datagrams,
            MAX_IN_DATAGRAMS,
            &mut self.counters,
        )?;
        let now = monotonic();
        let mut drops: HashMap<&'static str, u64> = HashMap::new();
        let mut activity: HashMap<PeerId, Activity> = HashMap::new();
        let mut confirmed: Vec<u32> = Vec::new();
        self.packets.clear();
        {
            let tables = plane
                .tables
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for i in 0..self.datagrams.len() {
                let (data, source) = self.datagrams.get(i);
                let session = (data.len() >= HEADER_LEN + TAG_LEN
                    && data[..4] == TRANSPORT_TYPE.to_le_bytes())
                .then(|| u32::from_le_bytes(data[4..8].try_into().unwrap()))
                .and_then(|index| tables.receivers.get(&index).map(|s| (index, s)))
                .filter(|(_, session)| now < session.expires);
                let Some((index, session)) = session else {
                    if let Some(address) = source.to_std() {
                        control.push((data.to_vec(), address));
                    }
                    continue;
                };
                let counter = u64::from_le_bytes(data[8..16].try_into().unwrap());
                self.opened.clear();
                self.opened.extend_from_slice(&data[HEADER_LEN..]);
                let Ok(plain_len) = session.key.open_in_place(counter, &mut self.opened) else {
                    *drops.entry("decrypt-failed").or_default() += 1;
                    continue;
                };
                if !lock(&session.replay).check(counter) {
                    *drops.entry("replay").or_default() += 1;
                    continue;
                }
                if session.confirms.is_some() && !confirmed.contains(&index) {
                    confirmed.push(index);
                }
                let entry = activity.entry(session.peer).or_default();
                entry.rx_packets += 1;
                entry.rx_bytes += (plain_len + 32) as u64;
                entry.rx_last = now;
                entry.endpoint = source.to_std();
                let plain = &self.opened[..plain_len];
                if plain.is_empty() {
                    continue; // keepalive
                }
                let Some(length) = inner_length(plain) else {
                    *drops.entry("bad-inner-packet").or_default() += 1;
                    continue;
                };
                let packet = &plain[..length];
                if tables.routes.lookup_packet(packet, true) != Some(session.peer) {
                    *drops.entry("not-allowed-source").or_default() += 1;
                    continue;
                }
                entry.rx_data += 1;
                self.packets.push_packet(packet);
            }
        }
        // Roaming: the peer's endpoint follows its last authenticated message at once (Python
        // learns it with the activity), so replies go to where the peer is now.
        let is_v6 = plane.udp.is_v6();
        let moved: Vec<(PeerId, SockAddr)> = {
            let tables = plane
                .tables
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            activity
                .iter()
                .filter_map(|(peer, entry)| {
                    let address = SockAddr::new(entry.endpoint?, is_v6);
                    let state = tables.peers.get(peer)?;
                    (state.endpoint != Some(address)).then_some((*peer, address))
                })
                .collect()
        };
        if !moved.is_empty() {
            let mut tables = plane
                .tables
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (peer, address) in moved {
                if let Some(state) = tables.peers.get_mut(&peer) {
                    state.endpoint = Some(address);
                }
            }
        }
        if !confirmed.is_empty() {
            {
                let mut guard = plane
                    .tables
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let tables = &mut *guard;
                for index in &confirmed {
                    if let Some(session) = tables.receivers.get_mut(index) {
                        if let Some(send) = session.confirms.take() {
                            if let Some(peer) = tables.peers.get_mut(&session.peer) {
                                peer.send = Some(send);
                            }
                        }
                    }
                }
            }
            lock(&plane.confirmed).extend(confirmed);
            result.confirmed = true;
        }
        if !activity.is_empty() {
            let mut map = lock(&plane.activity);
            for (peer, new) in activity {
                let entry = map.entry(peer).or_default();
                entry.rx_bytes += new.rx_bytes;
                entry.rx_packets += new.rx_packets;
                entry.rx_data += new.rx_data;
                entry.rx_last = new.rx_last;
                if new.endpoint.is_some() {
                    entry.endpoint = new.endpoint;
                }
            }
        }
        result.delivered = self.packets.len();
        let packets: Vec<&[u8]> = self.packets.iter().collect();
        plane.write_tun(&packets, &mut drops);
        result.control_ready = plane.queue_control(control, &mut drops);
        plane.count_drops(&mut drops);
        Ok(result)
    }

    /// Carry batches for up to `timeout_ms`, returning early only when Python must act (a
    /// confirmed session, datagrams newly waiting for it). So the thread takes the GIL about
    /// ten times a second, not once per batch, and a Python side busy with a handshake flood
    /// cannot slow the transport data down.
    pub fn run_for(&mut self, timeout_ms: i32) -> io::Result<InboundResult> {
        let deadline = monotonic() + f64::from(timeout_ms.max(0)) / 1000.0;
        let mut total = InboundResult::default();
        loop {
            let left = ((deadline - monotonic()) * 1000.0).ceil().max(0.0) as i32;
            let result = self.run_once(left)?;
            total.delivered += result.delivered;
            total.confirmed |= result.confirmed;
            total.control_ready |= result.control_ready;
            if total.confirmed || total.control_ready || left == 0 {
                return Ok(total);
            }
        }
    }
}

/// The length of an inner IP packet by its own header, as the Python reference checks it;
/// `None` when it is malformed or longer than what arrived.
fn inner_length(plain: &[u8]) -> Option<usize> {
    let size = plain.len();
    let length = match plain[0] >> 4 {
        4 if size >= 20 => {
            let length = usize::from(u16::from_be_bytes([plain[2], plain[3]]));
            if length < 20 {
                return None;
            }
            length
        }
        6 if size >= 40 => 40 + usize::from(u16::from_be_bytes([plain[4], plain[5]])),
        _ => return None,
    };
    (length <= size).then_some(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let mut routes = Routes::default();
        routes.insert_v4(0x0a00_0000, 8, 1);
        routes.insert_v4(0x0a00_0002, 32, 2);
        routes.insert_v4(0, 0, 3);
        assert_eq!(routes.lookup_v4(0x0a00_0002), Some(2));
        assert_eq!(routes.lookup_v4(0x0a00_0003), Some(1));
        assert_eq!(routes.lookup_v4(0x0b00_0003), Some(3));
        routes.remove_peer(3);
        assert_eq!(routes.lookup_v4(0x0b00_0003), None);
        routes.insert_v6(0xfd00 << 112, 16, 4);
        assert_eq!(routes.lookup_v6((0xfd00 << 112) | 5), Some(4));
        assert_eq!(routes.lookup_v6(5), None);
    }

    #[test]
    fn inner_lengths_follow_the_reference() {
        let mut v4 = vec![0u8; 40];
        v4[0] = 0x45;
        v4[3] = 28;
        assert_eq!(inner_length(&v4), Some(28));
        v4[3] = 19;
        assert_eq!(inner_length(&v4), None);
        v4[3] = 41;
        assert_eq!(inner_length(&v4), None);
        let mut v6 = vec![0u8; 60];
        v6[0] = 0x60;
        v6[5] = 20;
        assert_eq!(inner_length(&v6), Some(60));
        assert_eq!(inner_length(&v6[..50]), None);
        assert_eq!(inner_length(&[0x45; 10]), None);
        assert_eq!(inner_length(&[0x10; 40]), None);
    }
}
