//! Segmentation offloads of a Linux TUN device: the `virtio_net_hdr` packet surgery.
//!
//! Who calls it: the `tunplug_fastpath._native` bindings ([`crate::py_offload`]), for the
//! linux-mq backend's reader and writer threads when the device has `IFF_VNET_HDR` and
//! `TUNSETOFFLOAD`. This is the native twin of `tunplug_tun_linux_mq/offload.py` and must
//! agree with it byte for byte (`tests/plugins/fastpath/test_offload_native.py` checks that):
//! same packets out, same inputs refused, same `reason` strings.
//!
//! - [`split`] (read side): one read, a 10-byte `struct virtio_net_hdr` in host byte order
//!   followed by an IP packet, becomes ordinary IP packets with complete checksums: a
//!   TSO/USO super-packet is cut into `gso_size` segments, a partial checksum is completed.
//! - [`coalesce`] (write side): runs of same-flow TCP segments of a batch become super-packets
//!   the kernel segments itself; everything else gets a zero header. Each [`Write`] is one
//!   contiguous frame (header and packet bytes) for one `write()`.
//!
//! Pure functions over byte slices, no I/O and no Python.

use std::collections::HashMap;
use std::fmt;

use crate::checksum::{finish, fold, sum};

/// Length of `struct virtio_net_hdr` (no `num_buffers`): flags u8, gso_type u8, hdr_len u16,
/// gso_size u16, csum_start u16, csum_offset u16, all in host byte order.
pub const VNET_HDR_LEN: usize = 10;
/// The header of a packet that needs nothing from the kernel (checksums already complete).
pub const ZERO_VNET_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// `virtio_net_hdr` flag: the checksum at `csum_start + csum_offset` is partial.
pub const NEEDS_CSUM: u8 = 0x01;
/// `virtio_net_hdr` flag: the checksums were verified.
pub const DATA_VALID: u8 = 0x02;
/// `gso_type`: not a super-packet.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 (TSO).
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (UFO), never negotiated here.
pub const GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 (TSO).
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP super-packet carries ECN (CWR on its first segment only).
pub const GSO_ECN: u8 = 0x80;

/// Most segments [`coalesce`] puts in one super-packet (Linux GRO's limit as well).
pub const MAX_COALESCED_SEGMENTS: usize = 64;
/// Largest IPv4 total length, and largest IPv6 payload length.
pub const MAX_IP_LENGTH: usize = 0xFFFF;

const TCP: u8 = 6;
const UDP: u8 = 17;
// TCP flag bits (byte 13 of the header).
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const CWR: u8 = 0x80;
const TCP_CHECKSUM_OFFSET: usize = 16;
const UDP_CHECKSUM_OFFSET: usize = 6;
const IPV6_HEADER_LEN: usize = 40;

/// Why a read cannot be turned into packets; [`Reason::as_str`] names the drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Shorter than a `virtio_net_hdr`.
    ShortRead,
    /// A `gso_type` the backend did not negotiate (UFO or unknown).
    GsoUnsupported,
    /// A header or length that makes no sense for the `gso_type`.
    MalformedGso,
    /// The partial checksum field lies outside the packet.
    MalformedCsum,
    /// The IP length field disagrees with the read.
    Truncated,
}

impl Reason {
    /// The reason string of the Python `OffloadError`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ShortRead => "rx_short_read",
            Self::GsoUnsupported => "rx_gso_unsupported",
            Self::MalformedGso => "rx_malformed_gso",
            Self::MalformedCsum => "rx_malformed_csum",
            Self::Truncated => "rx_truncated",
        }
    }
}

/// A read [`split`] refused: `reason` names the drop counter, `detail` says what was wrong
/// (the same text as the Python reference's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffloadError {
    pub reason: Reason,
    pub detail: String,
}

impl OffloadError {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

impl std::error::Error for OffloadError {}

/// A parsed `struct virtio_net_hdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHeader {
    /// The header at the start of `frame` (at least [`VNET_HDR_LEN`] bytes).
    pub fn read(frame: &[u8]) -> Self {
        let field = |at: usize| u16::from_ne_bytes([frame[at], frame[at + 1]]);
        Self {
            flags: frame[0],
            gso_type: frame[1],
            hdr_len: field(2),
            gso_size: field(4),
            csum_start: field(6),
            csum_offset: field(8),
        }
    }

    /// The header's bytes, as the kernel reads them.
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut bytes = [0u8; VNET_HDR_LEN];
        bytes[0] = self.flags;
        bytes[1] = self.gso_type;
        for (at, value) in [
            (2, self.hdr_len),
            (4, self.gso_size),
            (6, self.csum_start),
            (8, self.csum_offset),
        ] {
            bytes[at..at + 2].copy_from_slice(&value.to_ne_bytes());
        }
        bytes
    }
}

/// Packets laid out back to back in one buffer: what [`split`] appends to. Reuse one across
/// reads ([`Packets::clear`]) to keep its allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packets {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Packets {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many packets there are.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Forget every packet, keeping the allocations.
    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }

    /// The packets, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.ends.iter().enumerate().map(|(index, &end)| {
            let start = if index == 0 { 0 } else { self.ends[index - 1] };
            &self.data[start..end]
        })
    }

    /// The packets as separate vectors (tests and callers that want ownership).
    pub fn to_vecs(&self) -> Vec<Vec<u8>> {
        self.iter().map(<[u8]>::to_vec).collect()
    }

    /// Append one packet.
    pub fn push_packet(&mut self, packet: &[u8]) {
        self.push(packet);
    }

    fn push(&mut self, packet: &[u8]) {
        self.data.extend_from_slice(packet);
        self.ends.push(self.data.len());
    }

    /// Close the packet written since the last one ended.
    fn end_packet(&mut self) {
        self.ends.push(self.data.len());
    }
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn put16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// The source and destination addresses: contiguous in both IP headers.
fn addresses(packet: &[u8], version: u8) -> &[u8] {
    if version == 4 {
        &packet[12..20]
    } else {
        &packet[8..40]
    }
}

// -- read side -------------------------------------------------------------------------------

/// Append the ordinary IP packets carried by one read to `out`: `frame` is the vnet header +
/// packet.
///
/// `gso_type` NONE gives the packet itself, with its checksum completed when the kernel left
/// it partial (`NEEDS_CSUM`). TCPV4/TCPV6 and UDP_L4 super-packets give segments of
/// `gso_size` payload bytes, each with its own IP length, IPv4 id and header checksum, TCP
/// sequence number (FIN and PSH only on the last, CWR only on the first) and a complete L4
/// checksum.
///
/// On error `out` is left as it was.
pub fn split(frame: &[u8], out: &mut Packets) -> Result<(), OffloadError> {
    if frame.len() < VNET_HDR_LEN {
        return Err(OffloadError::new(
            Reason::ShortRead,
            format!("{} bytes", frame.len()),
        ));
    }
    let vnet = VnetHeader::read(frame);
    let packet = &frame[VNET_HDR_LEN..];
    let kind = vnet.gso_type & !GSO_ECN;
    let needs_csum = vnet.flags & NEEDS_CSUM != 0;
    if kind == GSO_NONE {
        if needs_csum {
            return complete_checksum(packet, vnet.csum_start, vnet.csum_offset, out);
        }
        out.push(packet);
        return Ok(());
    }
    if !matches!(kind, GSO_TCPV4 | GSO_TCPV6 | GSO_UDP_L4) {
        return Err(OffloadError::new(
            Reason::GsoUnsupported,
            format!("gso_type {:#x}", vnet.gso_type),
        ));
    }
    if vnet.gso_size == 0 {
        return Err(OffloadError::new(Reason::MalformedGso, "gso_size 0"));
    }
    let (version, l4) = ip_layout(packet, needs_csum.then_some(vnet.csum_start))?;
    if (kind == GSO_TCPV4 && version == 6) || (kind == GSO_TCPV6 && version == 4) {
        return Err(OffloadError::new(
            Reason::MalformedGso,
            format!("gso_type {:#x} on IPv{version}", vnet.gso_type),
        ));
    }
    let gso_size = usize::from(vnet.gso_size);
    if kind == GSO_UDP_L4 {
        return segments(packet, version, l4, l4 + 8, gso_size, UDP, out);
    }
    // The Python reference reads the data offset without checking that it is inside the
    // packet (an IndexError there); refusing it as a bad TCP header length is what it means.
    let header_end = match packet.get(l4 + 12) {
        Some(&offset) => l4 + usize::from(offset >> 4) * 4,
        None => 0,
    };
    if header_end < l4 + 20 || header_end > packet.len() {
        return Err(OffloadError::new(Reason::MalformedGso, "TCP header length"));
    }
    segments(packet, version, l4, header_end, gso_size, TCP, out)
}

/// Append `packet` with the partial checksum at `csum_start + csum_offset` completed.
///
/// The kernel leaves the pseudo-header sum in the field, so the checksum of everything from
/// `csum_start` on, field included, is the final value.
fn complete_checksum(
    packet: &[u8],
    csum_start: u16,
    csum_offset: u16,
    out: &mut Packets,
) -> Result<(), OffloadError> {
    let start = usize::from(csum_start);
    let field = start + usize::from(csum_offset);
    if field + 2 > packet.len() {
        return Err(OffloadError::new(
            Reason::MalformedCsum,
            format!("checksum at {field} of {} bytes", packet.len()),
        ));
    }
    let mut checksum = finish(sum(&packet[start..]));
    if checksum == 0 && usize::from(csum_offset) == UDP_CHECKSUM_OFFSET {
        checksum = 0xFFFF; // 0 means "no checksum" in UDP
    }
    let begin = out.data.len();
    out.data.extend_from_slice(packet);
    put16(&mut out.data[begin..], field, checksum);
    out.end_packet();
    Ok(())
}

/// The IP version and the offset of the L4 header, checking the IP length fields.
fn ip_layout(packet: &[u8], csum_start: Option<u16>) -> Result<(u8, usize), OffloadError> {
    let Some(&first) = packet.first() else {
        return Err(OffloadError::new(Reason::MalformedGso, "empty packet"));
    };
    let version = first >> 4;
    let mut l4 = match version {
        4 => {
            if packet.len() < 20 || usize::from(be16(packet, 2)) != packet.len() {
                return Err(OffloadError::new(
                    Reason::Truncated,
                    "IPv4 total length differs from the read",
                ));
            }
            usize::from(first & 0x0F) * 4
        }
        6 => {
            if packet.len() < IPV6_HEADER_LEN
                || usize::from(be16(packet, 4)) + IPV6_HEADER_LEN != packet.len()
            {
                return Err(OffloadError::new(
                    Reason::Truncated,
                    "IPv6 payload length differs from the read",
                ));
            }
            IPV6_HEADER_LEN
        }
        _ => {
            return Err(OffloadError::new(
                Reason::MalformedGso,
                format!("IP version {version}"),
            ))
        }
    };
    if let Some(start) = csum_start {
        l4 = usize::from(start); // the kernel knows where L4 starts, after any extension headers
    }
    if l4 < 20 || l4 + 8 > packet.len() {
        return Err(OffloadError::new(
            Reason::MalformedGso,
            format!("L4 header at {l4} of {} bytes", packet.len()),
        ));
    }
    Ok((version, l4))
}

/// Cut `packet`'s payload in `gso_size` pieces, each behind a fixed-up header copy.
fn segments(
    packet: &[u8],
    version: u8,
    l4: usize,
    header_end: usize,
    gso_size: usize,
    protocol: u8,
    out: &mut Packets,
) -> Result<(), OffloadError> {
    let total = packet.len();
    let payload_total = total - header_end;
    let count = payload_total.div_ceil(gso_size).max(1);
    if version == 6 && l4 < IPV6_HEADER_LEN {
        // Only a `csum_start` inside the IPv6 header can make a segment shorter than that
        // header, or a UDP length above 0xFFFF: the Python reference then fails packing the
        // field (struct.error). Refused here as what it is, a malformed super-packet.
        let shortest = header_end + payload_total - (count - 1) * gso_size;
        let longest = header_end + gso_size.min(payload_total);
        if shortest < IPV6_HEADER_LEN || (protocol == UDP && longest - l4 > 0xFFFF) {
            return Err(OffloadError::new(
                Reason::MalformedGso,
                format!("L4 header at {l4} inside the IPv6 header"),
            ));
        }
    }
    let checksum_at = l4
        + if protocol == TCP {
            TCP_CHECKSUM_OFFSET
        } else {
            UDP_CHECKSUM_OFFSET
        };
    let (seq, flags) = if protocol == TCP {
        (be32(packet, l4 + 4), packet[l4 + 13])
    } else {
        (0, 0)
    };
    // The IPv4 header checksum covers the IHL's bytes, as far as the copied header goes.
    let ip_end = (usize::from(packet[0] & 0x0F) * 4).min(header_end);
    let first_id = be16(packet, 4);
    let pseudo_sum = sum(addresses(packet, version)) + u64::from(protocol);

    out.data.reserve(count * header_end + payload_total);
    out.ends.reserve(count);
    let mut start = header_end;
    for index in 0..count {
        let end = (start + gso_size).min(total);
        let length = header_end + end - start;
        let begin = out.data.len();
        out.data.extend_from_slice(&packet[..header_end]);
        let header = &mut out.data[begin..];
        header[checksum_at..checksum_at + 2].fill(0);
        if version == 4 {
            put16(header, 2, length as u16);
            put16(header, 4, first_id.wrapping_add(index as u16));
            header[10..12].fill(0);
            let ip_checksum = finish(sum(&header[..ip_end]));
            put16(header, 10, ip_checksum);
        } else {
            put16(header, 4, (length - IPV6_HEADER_LEN) as u16);
        }
        if protocol == TCP {
            let segment_seq = seq.wrapping_add((index * gso_size) as u32);
            header[l4 + 4..l4 + 8].copy_from_slice(&segment_seq.to_be_bytes());
            let mut segment_flags = flags;
            if end < total {
                segment_flags &= !(FIN | PSH);
            }
            if index > 0 {
                segment_flags &= !CWR;
            }
            header[l4 + 13] = segment_flags;
        } else {
            put16(header, l4 + 4, (length - l4) as u16);
        }
        let payload = &packet[start..end];
        // The L4 header has even length, so its sum and the payload's simply add up.
        let l4_sum = pseudo_sum + (length - l4) as u64 + sum(&header[l4..]) + sum(payload);
        let mut checksum = finish(l4_sum);
        if checksum == 0 && protocol == UDP {
            checksum = 0xFFFF; // 0 means "no checksum" in UDP
        }
        put16(header, checksum_at, checksum);
        out.data.extend_from_slice(payload);
        out.end_packet();
        start = end;
    }
    Ok(())
}

// -- write side ------------------------------------------------------------------------------

/// One `write()` of [`coalesce`]: the frame (vnet header and packet bytes), the number of
/// packets of the batch it carries, and their combined size (the sum of their lengths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub frame: Vec<u8>,
    pub count: usize,
    pub size: usize,
}

impl Write {
    fn single(packet: &[u8]) -> Self {
        let mut frame = Vec::with_capacity(VNET_HDR_LEN + packet.len());
        frame.extend_from_slice(&ZERO_VNET_HDR);
        frame.extend_from_slice(packet);
        Self {
            frame,
            count: 1,
            size: packet.len(),
        }
    }
}

/// What identifies a TCP flow: IPv4 addresses and ports (12 bytes), or IPv6 addresses and
/// ports (36 bytes); the lengths keep the two versions apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    len: u8,
    bytes: [u8; 36],
}

/// What [`tcp_layout`] found in a TCP packet.
struct TcpLayout {
    key: FlowKey,
    version: u8,
    l4: usize,
    header_end: usize,
    /// Whether the packet may be coalesced at all (no IP options, DF, only ACK/PSH, ...).
    candidate: bool,
}

/// Flow key, IP version, L4 offset, header end and whether `packet` may be coalesced.
///
/// `None` for anything but an unfragmented TCP packet (those never join a run, and do not
/// break one).
fn tcp_layout(packet: &[u8]) -> Option<TcpLayout> {
    let length = packet.len();
    if length < 40 {
        return None;
    }
    let version = packet[0] >> 4;
    let mut key = FlowKey {
        len: 0,
        bytes: [0; 36],
    };
    let (l4, candidate) = match version {
        4 => {
            let l4 = usize::from(packet[0] & 0x0F) * 4;
            if packet[9] != TCP || packet[6] & 0x3F != 0 || packet[7] != 0 || length < l4 + 20 {
                return None;
            }
            key.len = 12;
            key.bytes[..8].copy_from_slice(&packet[12..20]);
            key.bytes[8..12].copy_from_slice(&packet[l4..l4 + 4]);
            let candidate = l4 == 20 && packet[6] == 0x40 && usize::from(be16(packet, 2)) == length;
            (l4, candidate)
        }
        6 => {
            if packet[6] != TCP || length < 60 {
                return None; // extension headers: never coalesced, keyed like other protocols
            }
            key.len = 36;
            key.bytes.copy_from_slice(&packet[8..44]);
            (
                IPV6_HEADER_LEN,
                usize::from(be16(packet, 4)) + IPV6_HEADER_LEN == length,
            )
        }
        _ => return None,
    };
    let header_end = l4 + usize::from(packet[l4 + 12] >> 4) * 4;
    let candidate =
        candidate && l4 + 20 <= header_end && header_end <= length && packet[l4 + 13] & !PSH == ACK;
    Some(TcpLayout {
        key,
        version,
        l4,
        header_end,
        candidate,
    })
}

/// Same-flow TCP segments [`coalesce`] is collecting into one super-packet.
struct Run {
    /// Indexes into the batch.
    packets: Vec<usize>,
    version: u8,
    l4: usize,
    header_end: usize,
    gso_size: usize,
    /// Of the super-packet: one header, every payload.
    length: usize,
    next_seq: u32,
}

impl Run {
    fn new(index: usize, packet: &[u8], layout: &TcpLayout) -> Self {
        let gso_size = packet.len() - layout.header_end;
        Self {
            packets: vec![index],
            version: layout.version,
            l4: layout.l4,
            header_end: layout.header_end,
            gso_size,
            length: packet.len(),
            next_seq: be32(packet, layout.l4 + 4).wrapping_add(gso_size as u32),
        }
    }

    /// Whether `packet` (same flow) can follow: same headers, next in sequence.
    fn accepts(&self, first: &[u8], packet: &[u8], layout: &TcpLayout, payload: usize) -> bool {
        let (l4, header_end) = (layout.l4, layout.header_end);
        // The limit is on IPv4's total length and on IPv6's payload length.
        let ip_length = self.length + payload - if self.version == 6 { l4 } else { 0 };
        // IPv4: TOS and TTL (the rest is fixed by the candidate check);
        // IPv6: version, traffic class, flow label and hop limit.
        let same_ip_fields = if self.version == 4 {
            packet[1] == first[1] && packet[8] == first[8]
        } else {
            packet[..4] == first[..4] && packet[7] == first[7]
        };
        header_end == self.header_end
            && l4 == self.l4
            && 0 < payload
            && payload <= self.gso_size
            && self.packets.len() < MAX_COALESCED_SEGMENTS
            && ip_length <= MAX_IP_LENGTH
            && be32(packet, l4 + 4) == self.next_seq
            && same_ip_fields
            // ACK number and data offset; flags but PSH; window; urgent pointer and options.
            && packet[l4 + 8..l4 + 13] == first[l4 + 8..l4 + 13]
            && packet[l4 + 13] & !PSH == first[l4 + 13] & !PSH
            && packet[l4 + 14..l4 + 16] == first[l4 + 14..l4 + 16]
            && packet[l4 + 18..header_end] == first[l4 + 18..header_end]
    }

    /// Append `packet`; `false` when nothing may follow it (short or PSH).
    fn add(&mut self, index: usize, packet: &[u8], payload: usize) -> bool {
        self.packets.push(index);
        self.length += payload;
        self.next_seq = self.next_seq.wrapping_add(payload as u32);
        payload == self.gso_size && packet[self.l4 + 13] & PSH == 0
    }
}

/// A write of [`coalesce`] before it is built: one packet, or a run.
enum Entry {
    Single(usize),
    Run(usize),
}

/// Turn a batch into frames for a descriptor with a vnet header.
///
/// Consecutive segments of one TCP flow (in the batch's order for that flow, other flows may
/// come between them) become one super-packet when they may: IPv4 without options and with
/// DF, or IPv6 without extension headers; equal TOS/traffic class and TTL/hop limit; equal
/// ACK number, window and options; only ACK set (PSH on the last); contiguous sequence
/// numbers; equal payload sizes but a shorter last one; at most 64 segments and 64 KiB.
/// Every other packet gets a zero header. A super-packet takes the place of its first
/// segment, so the packets of one flow are never reordered.
///
/// The kernel does not verify the checksums of a super-packet's segments. With
/// `verify_checksums` a run whose IP or TCP checksums do not verify is written as single
/// packets (the kernel then drops the bad ones).
pub fn coalesce<P: AsRef<[u8]>>(packets: &[P], verify_checksums: bool) -> Vec<Write> {
    let mut entries = Vec::with_capacity(packets.len());
    let mut runs: Vec<Run> = Vec::new();
    let mut open_runs: HashMap<FlowKey, usize> = HashMap::new();
    for (index, packet) in packets.iter().enumerate() {
        let packet = packet.as_ref();
        let Some(layout) = tcp_layout(packet) else {
            entries.push(Entry::Single(index));
            continue;
        };
        // Only read when `candidate`, which guarantees header_end <= len.
        let payload = packet.len().saturating_sub(layout.header_end);
        if let Some(&open) = open_runs.get(&layout.key) {
            let run = &mut runs[open];
            let first = packets[run.packets[0]].as_ref();
            if layout.candidate && run.accepts(first, packet, &layout, payload) {
                if !run.add(index, packet, payload) {
                    open_runs.remove(&layout.key);
                }
                continue;
            }
            open_runs.remove(&layout.key);
        }
        if layout.candidate && payload > 0 {
            entries.push(Entry::Run(runs.len()));
            if packet[layout.l4 + 13] & PSH == 0 {
                open_runs.insert(layout.key, runs.len());
            }
            runs.push(Run::new(index, packet, &layout));
        } else {
            entries.push(Entry::Single(index));
        }
    }
    let mut writes = Vec::with_capacity(entries.len());
    for entry in entries {
        match entry {
            Entry::Single(index) => writes.push(Write::single(packets[index].as_ref())),
            Entry::Run(run) => {
                let run = &runs[run];
                if run.packets.len() == 1 || (verify_checksums && !checksums_valid(packets, run)) {
                    writes.extend(
                        run.packets
                            .iter()
                            .map(|&index| Write::single(packets[index].as_ref())),
                    );
                } else {
                    writes.push(super_packet(packets, run));
                }
            }
        }
    }
    writes
}

fn checksums_valid<P: AsRef<[u8]>>(packets: &[P], run: &Run) -> bool {
    let l4 = run.l4;
    let first = packets[run.packets[0]].as_ref();
    let pseudo_sum = sum(addresses(first, run.version)) + u64::from(TCP);
    run.packets.iter().all(|&index| {
        let packet = packets[index].as_ref();
        let ip_valid = run.version == 6 || fold(sum(&packet[..20])) == 0xFFFF;
        let tcp_sum = pseudo_sum + (packet.len() - l4) as u64 + sum(&packet[l4..]);
        ip_valid && fold(tcp_sum) == 0xFFFF
    })
}

fn super_packet<P: AsRef<[u8]>>(packets: &[P], run: &Run) -> Write {
    let first = packets[run.packets[0]].as_ref();
    let last = packets[run.packets[run.packets.len() - 1]].as_ref();
    let (l4, header_end, length) = (run.l4, run.header_end, run.length);
    let gso_type = if run.version == 4 {
        GSO_TCPV4
    } else {
        GSO_TCPV6
    };
    let vnet = VnetHeader {
        flags: NEEDS_CSUM,
        gso_type,
        hdr_len: header_end as u16,
        gso_size: run.gso_size as u16,
        csum_start: l4 as u16,
        csum_offset: TCP_CHECKSUM_OFFSET as u16,
    };
    let mut frame = Vec::with_capacity(VNET_HDR_LEN + length);
    frame.extend_from_slice(&vnet.to_bytes());
    frame.extend_from_slice(&first[..header_end]);
    let header = &mut frame[VNET_HDR_LEN..];
    if run.version == 4 {
        put16(header, 2, length as u16);
        header[10..12].fill(0);
        let ip_checksum = finish(sum(&header[..l4]));
        put16(header, 10, ip_checksum);
    } else {
        put16(header, 4, (length - IPV6_HEADER_LEN) as u16);
    }
    header[l4 + 13] = last[l4 + 13]; // PSH, if any, belongs to the last segment
                                     // CHECKSUM_PARTIAL: the field holds the (uncomplemented) pseudo-header sum over the whole
                                     // super-packet; the kernel's segmentation adjusts it per segment.
    let partial = fold(sum(addresses(header, run.version)) + u64::from(TCP) + (length - l4) as u64);
    put16(header, l4 + TCP_CHECKSUM_OFFSET, partial);
    for &index in &run.packets {
        frame.extend_from_slice(&packets[index].as_ref()[header_end..]);
    }
    let count = run.packets.len();
    Write {
        frame,
        count,
        size: length + (count - 1) * header_end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const PSH: u8 = 0x08;
    const ACK: u8 = 0x10;
    const CWR: u8 = 0x80;
    const SRC4: [u8; 4] = [10, 1, 0, 1];
    const DST4: [u8; 4] = [10, 1, 0, 2];
    const SRC6: [u8; 16] = [0xfd, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST6: [u8; 16] = [0xfd, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    /// Ones'-complement sum of 16-bit words, the slow textbook way: independent of
    /// [`crate::checksum`], which the code under test uses.
    fn word_sum(data: &[u8]) -> u16 {
        let mut total = 0u32;
        for pair in data.chunks(2) {
            total += u32::from(pair[0]) << 8 | pair.get(1).map_or(0, |&b| u32::from(b));
            total = (total & 0xFFFF) + (total >> 16);
        }
        total as u16
    }

    fn pseudo(v6: bool, protocol: u8, length: usize) -> Vec<u8> {
        if v6 {
            let mut bytes = [SRC6.as_slice(), DST6.as_slice()].concat();
            bytes.extend_from_slice(&(length as u32).to_be_bytes());
            bytes.extend_from_slice(&[0, 0, 0, protocol]);
            bytes
        } else {
            let mut bytes = [SRC4.as_slice(), DST4.as_slice()].concat();
            bytes.extend_from_slice(&[0, protocol]);
            bytes.extend_from_slice(&(length as u16).to_be_bytes());
            bytes
        }
    }

    /// A TCP segment between the test addresses, with valid checksums unless asked otherwise.
    #[derive(Clone, Debug)]
    struct Segment {
        v6: bool,
        seq: u32,
        flags: u8,
        ident: u16,
        ttl: u8,
        tos: u8,
        df: bool,
        ack: u32,
        window: u16,
        sport: u16,
        options: Vec<u8>,
        ip_options: Vec<u8>,
        bad_checksum: bool,
    }

    impl Default for Segment {
        fn default() -> Self {
            Self {
                v6: false,
                seq: 1000,
                flags: ACK,
                ident: 7,
                ttl: 64,
                tos: 0,
                df: true,
                ack: 555,
                window: 512,
                sport: 40000,
                options: Vec::new(),
                ip_options: Vec::new(),
                bad_checksum: false,
            }
        }
    }

    fn ip_header(seg: &Segment, protocol: u8, l4_length: usize) -> Vec<u8> {
        if seg.v6 {
            let mut header = (6u32 << 28 | u32::from(seg.tos) << 20)
                .to_be_bytes()
                .to_vec();
            header.extend_from_slice(&(l4_length as u16).to_be_bytes());
            header.extend_from_slice(&[protocol, seg.ttl]);
            header.extend_from_slice(&SRC6);
            header.extend_from_slice(&DST6);
            return header;
        }
        let ihl = 20 + seg.ip_options.len();
        let mut header = vec![0x40 | (ihl / 4) as u8, seg.tos];
        header.extend_from_slice(&((ihl + l4_length) as u16).to_be_bytes());
        header.extend_from_slice(&seg.ident.to_be_bytes());
        header.extend_from_slice(&[if seg.df { 0x40 } else { 0 }, 0, seg.ttl, protocol, 0, 0]);
        header.extend_from_slice(&SRC4);
        header.extend_from_slice(&DST4);
        header.extend_from_slice(&seg.ip_options);
        let checksum = !word_sum(&header);
        header[10..12].copy_from_slice(&checksum.to_be_bytes());
        header
    }

    fn tcp(seg: &Segment, payload: &[u8]) -> Vec<u8> {
        let mut l4 = seg.sport.to_be_bytes().to_vec();
        l4.extend_from_slice(&5201u16.to_be_bytes());
        l4.extend_from_slice(&seg.seq.to_be_bytes());
        l4.extend_from_slice(&seg.ack.to_be_bytes());
        l4.extend_from_slice(&[(((20 + seg.options.len()) / 4) << 4) as u8, seg.flags]);
        l4.extend_from_slice(&seg.window.to_be_bytes());
        l4.extend_from_slice(&[0, 0, 0, 0]);
        l4.extend_from_slice(&seg.options);
        l4.extend_from_slice(payload);
        let mut checksum = !word_sum(&[pseudo(seg.v6, TCP, l4.len()), l4.clone()].concat());
        if seg.bad_checksum {
            checksum ^= 0x5555;
        }
        l4[16..18].copy_from_slice(&checksum.to_be_bytes());
        [ip_header(seg, TCP, l4.len()), l4].concat()
    }

    fn udp(v6: bool, payload: &[u8]) -> Vec<u8> {
        let length = 8 + payload.len();
        let mut l4 = [5000u16, 6000, length as u16, 0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect::<Vec<u8>>();
        l4.extend_from_slice(payload);
        let checksum = match !word_sum(&[pseudo(v6, UDP, length), l4.clone()].concat()) {
            0 => 0xFFFF,
            value => value,
        };
        l4[6..8].copy_from_slice(&checksum.to_be_bytes());
        let seg = Segment {
            v6,
            ..Segment::default()
        };
        [ip_header(&seg, UDP, l4.len()), l4].concat()
    }

    fn l4_offset(packet: &[u8]) -> usize {
        if packet[0] >> 4 == 6 {
            40
        } else {
            usize::from(packet[0] & 15) * 4
        }
    }

    /// What the kernel hands a tun reader: vnet header + packet with a partial L4 checksum.
    fn kernel_super_packet(packet: &[u8], gso_type: u8, gso_size: u16) -> Vec<u8> {
        let v6 = packet[0] >> 4 == 6;
        let l4 = l4_offset(packet);
        let protocol = if v6 { packet[6] } else { packet[9] };
        let field = l4 + if protocol == TCP { 16 } else { 6 };
        let partial = word_sum(&pseudo(v6, protocol, packet.len() - l4));
        let mut packet = packet.to_vec();
        packet[field..field + 2].copy_from_slice(&partial.to_be_bytes());
        let vnet = VnetHeader {
            flags: NEEDS_CSUM,
            gso_type,
            hdr_len: (l4 + 20) as u16,
            gso_size,
            csum_start: l4 as u16,
            csum_offset: (field - l4) as u16,
        };
        [vnet.to_bytes().as_slice(), &packet].concat()
    }

    fn l4_valid(packet: &[u8]) -> bool {
        let v6 = packet[0] >> 4 == 6;
        let l4 = l4_offset(packet);
        let protocol = if v6 { packet[6] } else { packet[9] };
        let segment = &packet[l4..];
        word_sum(&[pseudo(v6, protocol, segment.len()), segment.to_vec()].concat()) == 0xFFFF
    }

    fn ip_valid(packet: &[u8]) -> bool {
        if packet[0] >> 4 == 6 {
            return usize::from(be16(packet, 4)) + 40 == packet.len();
        }
        word_sum(&packet[..l4_offset(packet)]) == 0xFFFF
            && usize::from(be16(packet, 2)) == packet.len()
    }

    fn split_vecs(frame: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
        let mut out = Packets::new();
        split(frame, &mut out)?;
        Ok(out.to_vecs())
    }

    fn payload_bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 256) as u8).collect()
    }

    // -- split -------------------------------------------------------------------------------

    #[test]
    fn a_tso_super_packet_splits_into_valid_segments() {
        let payload = payload_bytes(5120);
        for (v6, gso_type) in [
            (false, GSO_TCPV4),
            (true, GSO_TCPV6),
            (false, GSO_TCPV4 | GSO_ECN),
        ] {
            let big = tcp(
                &Segment {
                    v6,
                    seq: 0xFFFF_F000,
                    flags: ACK | PSH | FIN | CWR,
                    ident: 65534,
                    ..Segment::default()
                },
                &payload,
            );
            let segments = split_vecs(&kernel_super_packet(&big, gso_type, 1368)).unwrap();
            let l4 = l4_offset(&big);
            let sizes: Vec<usize> = segments.iter().map(|s| s.len() - l4 - 20).collect();
            assert_eq!(sizes, [1368, 1368, 1368, 1016]);
            let joined: Vec<u8> = segments
                .iter()
                .flat_map(|s| s[l4 + 20..].to_vec())
                .collect();
            assert_eq!(joined, payload);
            for (i, segment) in segments.iter().enumerate() {
                assert!(ip_valid(segment) && l4_valid(segment), "segment {i}");
                let seq = 0xFFFF_F000u32.wrapping_add(i as u32 * 1368);
                assert_eq!(be32(segment, l4 + 4), seq);
                let last = i == segments.len() - 1;
                let flags = ACK | if last { PSH | FIN } else { 0 } | if i == 0 { CWR } else { 0 };
                assert_eq!(segment[l4 + 13], flags);
                assert_eq!(segment[l4..l4 + 4], big[l4..l4 + 4]);
                if v6 {
                    assert_eq!(segment[8..40], big[8..40]);
                } else {
                    assert_eq!(be16(segment, 4), 65534u16.wrapping_add(i as u16));
                    assert_eq!(segment[12..20], big[12..20]);
                }
            }
        }
    }

    #[test]
    fn tcp_options_are_kept_in_every_segment() {
        let options = [1, 1, 8, 10, 0, 1, 2, 3, 4, 5, 6, 7];
        let seg = Segment {
            options: options.to_vec(),
            ..Segment::default()
        };
        let big = tcp(&seg, &payload_bytes(3000));
        let segments = split_vecs(&kernel_super_packet(&big, GSO_TCPV4, 1000)).unwrap();
        assert_eq!(segments.len(), 3);
        for segment in &segments {
            assert_eq!(segment[40..52], options);
            assert_eq!(segment.len(), 20 + 32 + 1000);
            assert!(ip_valid(segment) && l4_valid(segment));
        }
    }

    #[test]
    fn a_uso_super_packet_splits_into_valid_datagrams() {
        let payload = payload_bytes(2500);
        for v6 in [false, true] {
            let big = udp(v6, &payload);
            let segments = split_vecs(&kernel_super_packet(&big, GSO_UDP_L4, 1000)).unwrap();
            let l4 = l4_offset(&big);
            let sizes: Vec<usize> = segments.iter().map(|s| s.len() - l4 - 8).collect();
            assert_eq!(sizes, [1000, 1000, 500]);
            for segment in &segments {
                assert_eq!(usize::from(be16(segment, l4 + 4)), segment.len() - l4);
                assert!(ip_valid(segment) && l4_valid(segment));
            }
            let joined: Vec<u8> = segments.iter().flat_map(|s| s[l4 + 8..].to_vec()).collect();
            assert_eq!(joined, payload);
        }
    }

    #[test]
    fn a_super_packet_without_payload_is_one_segment() {
        let bare = tcp(&Segment::default(), &[]);
        assert_eq!(
            split_vecs(&kernel_super_packet(&bare, GSO_TCPV4, 1000)).unwrap(),
            [bare]
        );
    }

    #[test]
    fn a_partial_checksum_is_completed() {
        for packet in [
            tcp(&Segment::default(), b"hello"),
            udp(true, b"hello"),
            udp(false, b""),
        ] {
            let frame = kernel_super_packet(&packet, GSO_NONE, 0);
            assert!(!l4_valid(&frame[VNET_HDR_LEN..]));
            assert_eq!(split_vecs(&frame).unwrap(), [packet]);
        }
    }

    #[test]
    fn a_finished_packet_passes_through() {
        let packet = udp(false, &[b'x'; 100]);
        let frame = [ZERO_VNET_HDR.as_slice(), &packet].concat();
        assert_eq!(split_vecs(&frame).unwrap(), [packet]);
        assert_eq!(split_vecs(&ZERO_VNET_HDR).unwrap(), [Vec::<u8>::new()]);
    }

    #[test]
    fn malformed_reads_are_refused_with_the_python_reason_and_detail() {
        let big = tcp(&Segment::default(), &[b'x'; 3000]);
        let frame = kernel_super_packet(&big, GSO_TCPV4, 1000);
        let with_vnet = |vnet: VnetHeader, packet: &[u8]| [&vnet.to_bytes()[..], packet].concat();
        let mut ipv5 = frame.clone();
        ipv5[VNET_HDR_LEN] = 0x55;
        // The L4 header begins 10 bytes before the end: the data offset byte is missing.
        let late_l4 = {
            let mut f = frame.clone();
            f[6..8].copy_from_slice(&((big.len() - 10) as u16).to_ne_bytes());
            f
        };
        // IPv6 USO with csum_start 20: the last datagram would be shorter than 40 bytes.
        let inside_ipv6 = {
            let mut f = kernel_super_packet(&udp(true, &[7; 30]), GSO_UDP_L4, 5);
            f[6..8].copy_from_slice(&20u16.to_ne_bytes());
            f
        };
        let cases: Vec<(Vec<u8>, Reason, String)> = vec![
            (vec![0; 5], Reason::ShortRead, "5 bytes".into()),
            (
                with_vnet(
                    VnetHeader {
                        gso_type: GSO_UDP,
                        gso_size: 1000,
                        ..VnetHeader::default()
                    },
                    &udp(false, &[b'x'; 3000]),
                ),
                Reason::GsoUnsupported,
                "gso_type 0x3".into(),
            ),
            (
                frame[..frame.len() - 1].to_vec(),
                Reason::Truncated,
                "IPv4 total length differs from the read".into(),
            ),
            (
                kernel_super_packet(&big, GSO_TCPV6 | GSO_ECN, 1000),
                Reason::MalformedGso,
                "gso_type 0x84 on IPv4".into(),
            ),
            (
                kernel_super_packet(&big, GSO_TCPV4, 0),
                Reason::MalformedGso,
                "gso_size 0".into(),
            ),
            (
                with_vnet(
                    VnetHeader {
                        flags: NEEDS_CSUM,
                        csum_start: 30,
                        csum_offset: 16,
                        ..VnetHeader::default()
                    },
                    &udp(false, b"x"),
                ),
                Reason::MalformedCsum,
                "checksum at 46 of 29 bytes".into(),
            ),
            (
                frame[..VNET_HDR_LEN].to_vec(),
                Reason::MalformedGso,
                "empty packet".into(),
            ),
            (ipv5, Reason::MalformedGso, "IP version 5".into()),
            (late_l4, Reason::MalformedGso, "TCP header length".into()),
            (
                inside_ipv6,
                Reason::MalformedGso,
                "L4 header at 20 inside the IPv6 header".into(),
            ),
        ];
        for (frame, reason, detail) in cases {
            let mut out = Packets::new();
            out.push(b"earlier");
            let error = split(&frame, &mut out).unwrap_err();
            assert_eq!(
                (error.reason, error.detail.as_str()),
                (reason, detail.as_str())
            );
            assert_eq!(out.to_vecs(), [b"earlier".to_vec()], "left as it was");
        }
        let error = split(&[0; 5], &mut Packets::new()).unwrap_err();
        assert_eq!(error.to_string(), "rx_short_read: 5 bytes");
    }

    #[test]
    fn split_appends_to_what_is_there() {
        let mut out = Packets::new();
        let first = udp(false, b"one");
        split(&[&ZERO_VNET_HDR[..], &first].concat(), &mut out).unwrap();
        let big = udp(true, &payload_bytes(2500));
        split(&kernel_super_packet(&big, GSO_UDP_L4, 1000), &mut out).unwrap();
        assert_eq!(out.len(), 4);
        assert_eq!(out.iter().next().unwrap(), first);
        out.clear();
        assert!(out.is_empty());
    }

    // -- coalesce ----------------------------------------------------------------------------

    /// `count` consecutive segments of one flow with consecutive IPv4 ids.
    fn stream(count: usize, size: usize, last: Option<usize>, seg: &Segment) -> Vec<Vec<u8>> {
        let mut offset = 0u32;
        (0..count)
            .map(|i| {
                let n = if i + 1 == count {
                    last.unwrap_or(size)
                } else {
                    size
                };
                let seq = seg.seq.wrapping_add(offset);
                let chunk: Vec<u8> = (0..n as u32).map(|j| seq.wrapping_add(j) as u8).collect();
                offset += n as u32;
                let this = Segment {
                    seq,
                    ident: seg.ident.wrapping_add(i as u16),
                    ..seg.clone()
                };
                tcp(&this, &chunk)
            })
            .collect()
    }

    fn unwrapped(writes: &[Write]) -> Vec<Vec<u8>> {
        writes
            .iter()
            .flat_map(|w| split_vecs(&w.frame).unwrap())
            .collect()
    }

    fn counts(writes: &[Write]) -> Vec<usize> {
        writes.iter().map(|w| w.count).collect()
    }

    #[test]
    fn segments_of_one_flow_become_one_super_packet() {
        for v6 in [false, true] {
            let seg = Segment {
                v6,
                ..Segment::default()
            };
            let mut packets = stream(5, 1000, Some(400), &seg);
            let l4 = l4_offset(&packets[0]);
            packets[4] = tcp(
                &Segment {
                    seq: 5000,
                    ident: 11,
                    flags: ACK | PSH,
                    ..seg.clone()
                },
                &packets[4][l4 + 20..],
            );
            let writes = coalesce(&packets, false);
            assert_eq!(writes.len(), 1);
            let write = &writes[0];
            assert_eq!(write.count, 5);
            assert_eq!(write.size, packets.iter().map(Vec::len).sum::<usize>());
            let vnet = VnetHeader::read(&write.frame);
            let gso_type = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
            let expected = VnetHeader {
                flags: NEEDS_CSUM,
                gso_type,
                hdr_len: (l4 + 20) as u16,
                gso_size: 1000,
                csum_start: l4 as u16,
                csum_offset: 16,
            };
            assert_eq!(vnet, expected);
            let big = &write.frame[VNET_HDR_LEN..];
            let payloads: Vec<u8> = packets.iter().flat_map(|p| p[l4 + 20..].to_vec()).collect();
            assert_eq!(big[l4 + 20..], payloads);
            assert!(ip_valid(big));
            assert_eq!(be32(big, l4 + 4), 1000);
            assert_eq!(big[l4 + 13], ACK | PSH);
            let partial = word_sum(&pseudo(v6, TCP, big.len() - l4));
            assert_eq!(be16(big, l4 + 16), partial);
            // The kernel's segmentation gives the segments back (their IPv4 ids are
            // consecutive, as the kernel numbers them).
            assert_eq!(split_vecs(&write.frame).unwrap(), packets);
        }
    }

    #[test]
    fn a_batch_of_several_flows_and_other_packets_keeps_each_flow_in_order() {
        let a = stream(
            4,
            1000,
            None,
            &Segment {
                sport: 1,
                ..Segment::default()
            },
        );
        let b = stream(
            3,
            1000,
            None,
            &Segment {
                sport: 2,
                seq: 77777,
                ..Segment::default()
            },
        );
        let ping = udp(false, b"ping");
        let batch = [&a[0], &b[0], &ping, &a[1], &b[1], &a[2], &a[3], &b[2]];
        let writes = coalesce(&batch, false);
        assert_eq!(counts(&writes), [4, 3, 1]);
        let expected: Vec<Vec<u8>> = [a, b, vec![ping]].concat();
        assert_eq!(unwrapped(&writes), expected);
    }

    #[test]
    fn packets_that_must_not_be_merged_stay_separate_and_in_order() {
        let base = stream(3, 1000, None, &Segment::default());
        let payload = base[1][40..].to_vec();
        let next = |changes: Segment| {
            tcp(
                &Segment {
                    seq: 2000,
                    ..changes
                },
                &payload,
            )
        };
        let d = Segment::default;
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            (
                "different flow",
                vec![
                    base[0].clone(),
                    next(Segment { sport: 1, ..d() }),
                    base[2].clone(),
                ],
            ),
            (
                "gap in seq",
                vec![
                    base[0].clone(),
                    tcp(&Segment { seq: 2001, ..d() }, &payload),
                    base[2].clone(),
                ],
            ),
            (
                "different ack",
                vec![
                    base[0].clone(),
                    next(Segment { ack: 556, ..d() }),
                    base[2].clone(),
                ],
            ),
            (
                "different window",
                vec![
                    base[0].clone(),
                    next(Segment { window: 9, ..d() }),
                    base[2].clone(),
                ],
            ),
            (
                "different ttl",
                vec![
                    base[0].clone(),
                    next(Segment { ttl: 3, ..d() }),
                    base[2].clone(),
                ],
            ),
            (
                "different tos",
                vec![
                    base[0].clone(),
                    next(Segment { tos: 1, ..d() }),
                    base[2].clone(),
                ],
            ),
            (
                "no DF",
                vec![
                    base[0].clone(),
                    next(Segment { df: false, ..d() }),
                    base[2].clone(),
                ],
            ),
            (
                "IP options",
                vec![
                    base[0].clone(),
                    next(Segment {
                        ip_options: vec![1, 1, 1, 0],
                        ..d()
                    }),
                    base[2].clone(),
                ],
            ),
            (
                "bigger after smaller",
                vec![
                    base[0].clone(),
                    tcp(
                        &Segment { seq: 2000, ..d() },
                        &[payload.as_slice(), b"x"].concat(),
                    ),
                    base[2].clone(),
                ],
            ),
            (
                "FIN",
                vec![
                    base[0].clone(),
                    next(Segment {
                        flags: ACK | FIN,
                        ..d()
                    }),
                ],
            ),
            (
                "SYN",
                vec![
                    tcp(
                        &Segment {
                            seq: 999,
                            flags: SYN,
                            ..d()
                        },
                        &payload,
                    ),
                    base[0].clone(),
                ],
            ),
            (
                "pure ACK",
                vec![
                    base[0].clone(),
                    tcp(&Segment { seq: 2000, ..d() }, &[]),
                    base[1].clone(),
                ],
            ),
            (
                "TCP options differ",
                vec![
                    base[0].clone(),
                    next(Segment {
                        options: vec![1; 4],
                        ..d()
                    }),
                    base[2].clone(),
                ],
            ),
        ];
        for (case, batch) in cases {
            let writes = coalesce(&batch, false);
            assert!(writes.iter().all(|w| w.count == 1), "{case}");
            assert!(
                writes
                    .iter()
                    .all(|w| w.frame[..VNET_HDR_LEN] == ZERO_VNET_HDR),
                "{case}"
            );
            assert_eq!(unwrapped(&writes), batch, "{case}");
        }
    }

    #[test]
    fn a_shorter_segment_or_psh_ends_a_run() {
        let first = stream(3, 1000, Some(500), &Segment::default());
        let second = stream(
            2,
            1000,
            None,
            &Segment {
                seq: 3500,
                ..Segment::default()
            },
        );
        let batch = [first.clone(), second.clone()].concat();
        assert_eq!(counts(&coalesce(&batch, false)), [3, 2]);
        assert_eq!(unwrapped(&coalesce(&batch, false)), batch);

        let base = stream(3, 1000, None, &Segment::default());
        let pushed = tcp(
            &Segment {
                seq: 2000,
                ident: 8,
                flags: ACK | PSH,
                ..Segment::default()
            },
            &base[1][40..],
        );
        let batch = [base[0].clone(), pushed, base[2].clone()];
        assert_eq!(counts(&coalesce(&batch, false)), [2, 1]);
        assert_eq!(unwrapped(&coalesce(&batch, false)), batch);
    }

    #[test]
    fn bad_checksums_keep_a_run_apart_only_when_verified() {
        let mut packets = stream(3, 1000, None, &Segment::default());
        packets[1] = tcp(
            &Segment {
                seq: 2000,
                ident: 8,
                bad_checksum: true,
                ..Segment::default()
            },
            &packets[1][40..],
        );
        let writes = coalesce(&packets, true);
        assert_eq!(counts(&writes), [1, 1, 1]);
        let frames: Vec<Vec<u8>> = writes.into_iter().map(|w| w.frame).collect();
        let expected: Vec<Vec<u8>> = packets
            .iter()
            .map(|p| [&ZERO_VNET_HDR[..], p].concat())
            .collect();
        assert_eq!(frames, expected);
        let mut bad_ip = stream(3, 1000, None, &Segment::default())[1].clone();
        bad_ip[10] ^= 0xFF;
        assert_eq!(
            counts(&coalesce(&[packets[0].clone(), bad_ip], true)),
            [1, 1]
        );
        assert_eq!(counts(&coalesce(&packets, false)), [3]);
        let good = stream(
            3,
            1000,
            None,
            &Segment {
                v6: true,
                ..Segment::default()
            },
        );
        assert_eq!(counts(&coalesce(&good, true)), [3]);
    }

    #[test]
    fn super_packets_stay_within_64_segments_and_64_kib() {
        let many = stream(100, 100, None, &Segment::default());
        assert_eq!(counts(&coalesce(&many, false)), [64, 36]);
        let big = stream(60, 1400, None, &Segment::default());
        // 20 + 20 + 46 * 1400 <= 65535 < 20 + 20 + 47 * 1400
        assert_eq!(counts(&coalesce(&big, false)), [46, 14]);
        assert_eq!(unwrapped(&coalesce(&big, false)), big);
        // IPv6 counts the payload length: 20 + 46 * 1400 <= 65535 as well.
        let big6 = stream(
            60,
            1400,
            None,
            &Segment {
                v6: true,
                ..Segment::default()
            },
        );
        assert_eq!(counts(&coalesce(&big6, false)), [46, 14]);
    }

    #[test]
    fn non_tcp_and_odd_packets_get_a_zero_header() {
        let mut v6_short = vec![0x60];
        v6_short.extend_from_slice(&[0; 10]);
        let batch = [
            udp(false, b"a"),
            v6_short,
            Vec::new(),
            vec![0; 60],
            udp(true, b"b"),
        ];
        let writes = coalesce(&batch, false);
        for (write, packet) in writes.iter().zip(&batch) {
            assert_eq!(write.frame, [&ZERO_VNET_HDR[..], packet].concat());
            assert_eq!((write.count, write.size), (1, packet.len()));
        }
        assert_eq!(writes.len(), batch.len());
        assert!(coalesce::<&[u8]>(&[], false).is_empty());
    }

    // -- properties --------------------------------------------------------------------------

    prop_compose! {
        /// In-order segments of one flow: equal sizes but maybe a shorter last, maybe PSH last.
        fn flow()(
            v6 in any::<bool>(),
            seq in any::<u32>(),
            ident in any::<u16>(),
            size in 1usize..1500,
            count in 1usize..80,
            options in prop_oneof![Just(0usize), Just(12), Just(40)],
            push_last in any::<bool>(),
            shorter_last in any::<bool>(),
        )(
            last in if shorter_last { 1..=size } else { size..=size },
            v6 in Just(v6), seq in Just(seq), ident in Just(ident), size in Just(size),
            count in Just(count), options in Just(options), push_last in Just(push_last),
        ) -> Vec<Vec<u8>> {
            let seg = Segment {
                v6,
                seq,
                ident,
                options: (0..options as u8).collect(),
                ..Segment::default()
            };
            let mut packets = stream(count, size, Some(last), &seg);
            if push_last {
                let last_packet = packets.last_mut().unwrap();
                let l4 = l4_offset(last_packet);
                let payload = last_packet[l4 + 20 + options..].to_vec();
                let this = Segment {
                    seq: be32(last_packet, l4 + 4),
                    ident: ident.wrapping_add(count as u16 - 1),
                    flags: ACK | PSH,
                    ..seg
                };
                *last_packet = tcp(&this, &payload);
            }
            packets
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn split_undoes_coalesce(packets in flow(), verify in any::<bool>()) {
            let writes = coalesce(&packets, verify);
            prop_assert_eq!(writes.iter().map(|w| w.count).sum::<usize>(), packets.len());
            for write in &writes {
                let sizes = split_vecs(&write.frame).unwrap().iter().map(Vec::len).sum::<usize>();
                prop_assert_eq!(write.size, sizes);
                prop_assert!(write.count <= MAX_COALESCED_SEGMENTS);
                prop_assert!(write.frame.len() <= VNET_HDR_LEN + 40 + MAX_IP_LENGTH);
            }
            if packets.len() <= MAX_COALESCED_SEGMENTS && packets.iter().map(Vec::len).sum::<usize>() < 30_000 {
                prop_assert_eq!(writes.len(), 1, "one flow in order: one write");
            }
            prop_assert_eq!(unwrapped(&writes), packets);
        }

        #[test]
        fn random_frames_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = split(&frame, &mut Packets::new());
            let _ = coalesce(&[&frame[..]], true);
        }

        #[test]
        fn damaged_super_packets_never_panic(
            packets in flow(),
            gso_type in prop_oneof![Just(GSO_TCPV4), Just(GSO_TCPV6), Just(GSO_UDP_L4), Just(GSO_NONE), any::<u8>()],
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let writes = coalesce(&packets, false);
            let mut frame = writes[0].frame.clone();
            frame[1] = gso_type;
            for (at, value) in flips {
                let at = at.index(frame.len());
                frame[at] = value;
            }
            if truncate {
                frame.truncate(cut.index(frame.len() + 1));
            }
            let mut out = Packets::new();
            if split(&frame, &mut out).is_err() {
                prop_assert!(out.is_empty());
            }
            let damaged: Vec<&[u8]> = packets.iter().map(|p| &p[..]).chain([&frame[VNET_HDR_LEN.min(frame.len())..]]).collect();
            let _ = coalesce(&damaged, true);
        }
    }
}
