//! The system calls of the native data plane: UDP with segmentation and receive offload
//! (GSO/GRO), `poll`, one `read`/`write` on a TUN fd, the monotonic clock.
//!
//! Who calls it: the workers of [`crate::plane`], with the GIL released. The fds belong to
//! Python (it opened, configured and will close them); this module never closes one. It is
//! the Rust twin of `tunplug.transport.UdpTransport` and `tunplug.udp_offload`: the same GSO
//! runs (at most 64 segments and 65507 bytes, only the last segment shorter), the same
//! fallback when the kernel refuses GSO, the same errnos skipped. Nothing here allocates per
//! datagram: the caller passes the buffers and reuses them batch after batch.
//!
//! Linux only: `UDP_SEGMENT` needs Linux 4.18, `UDP_GRO` 5.0 (`linux/udp.h`).

#![cfg(target_os = "linux")]

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

use libc::{c_int, c_void, socklen_t};

/// Socket option level of the two UDP offload options (`IPPROTO_UDP`).
pub const SOL_UDP: c_int = 17;
/// Control message of a GSO send: cut the payload into datagrams of this many bytes (u16).
pub const UDP_SEGMENT: c_int = 103;
/// Socket option enabling coalesced reads; their control message carries the segment size.
pub const UDP_GRO: c_int = 104;
/// Most segments in one GSO send: the kernel's `UDP_MAX_SEGMENTS` was 64 until Linux 6.16.
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one GSO send: the IPv4 limit (65535 - 20 IP - 8 UDP), below IPv6's.
pub const GSO_MAX_BYTES: usize = 65507;
/// The largest UDP payload: `recv_into` wants a scratch buffer at least this long.
pub const MAX_DATAGRAM_BYTES: usize = 65535;
/// A comfortable scratch size for `recv_into`: a coalesced read is at most 64 KiB unless the
/// device allows bigger GRO packets (BIG TCP), when 64 segments may exceed it.
pub const RECV_SCRATCH_BYTES: usize = 1 << 17;

/// How long one `poll(POLLOUT)` waits before the send is simply tried again: a bound, so that
/// a worker whose fd was closed under it finds out (EBADF) instead of sleeping forever.
const WRITABLE_POLL_MS: c_int = 1000;

// SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic on their argument (`unsafe` only by libc's
// convention); evaluating them in a constant touches no memory.
const GSO_CONTROL_SPACE: usize = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
// SAFETY: as above, arithmetic only.
const GSO_CONTROL_LEN: usize = unsafe { libc::CMSG_LEN(mem::size_of::<u16>() as u32) } as usize;
/// Room for the `UDP_GRO` message (an int) and a few others someone may have enabled.
const RECV_CONTROL_SPACE: usize = 128;

/// A control message buffer with the alignment `cmsghdr` needs.
#[repr(C, align(8))]
struct ControlBuffer<const N: usize>([u8; N]);

/// errnos of a send whose datagrams cannot reach the peer now (ICMP errors of earlier sends,
/// no route): the datagrams are dropped and counted, WireGuard's timers retry.
fn is_unreachable(errno: i32) -> bool {
    matches!(
        errno,
        libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH
    )
}

/// errnos of a GSO send meaning "this socket or route cannot do GSO": EIO when the device has
/// no transmit checksum offload (wireguard-go turns GSO off on it), EINVAL for a segment larger
/// than the path MTU or a socket without UDP checksums, ENOPROTOOPT/EOPNOTSUPP on kernels
/// without `UDP_SEGMENT`.
fn is_gso_refusal(errno: i32) -> bool {
    matches!(
        errno,
        libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP
    )
}

/// Storage for either socket address family, as the kernel reads and writes them.
#[derive(Clone, Copy)]
#[repr(C)]
union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

/// A peer's UDP address as the kernel wants it for one socket: `sockaddr_in` or
/// `sockaddr_in6`; for an `AF_INET6` (dual-stack) socket IPv4 peers are IPv4-mapped
/// (`::ffff:a.b.c.d`). Two addresses are equal when [`SockAddr::to_std`] says so (a mapped and
/// a plain IPv4 address of one peer are the same peer).
#[derive(Clone, Copy)]
pub struct SockAddr {
    raw: RawAddr,
    len: socklen_t,
}

impl SockAddr {
    /// `addr` for a socket of family `AF_INET6` (`socket_is_v6`) or `AF_INET`. An IPv6 address
    /// cannot be reached from an IPv4 socket (a send fails with EAFNOSUPPORT), except an
    /// IPv4-mapped one, which becomes the IPv4 address.
    pub fn new(addr: SocketAddr, socket_is_v6: bool) -> Self {
        match addr {
            SocketAddr::V4(v4) if socket_is_v6 => {
                Self::from_v6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            SocketAddr::V4(v4) => Self::from_v4(v4),
            SocketAddr::V6(v6) if !socket_is_v6 => match v6.ip().to_ipv4_mapped() {
                Some(ip) => Self::from_v4(SocketAddrV4::new(ip, v6.port())),
                None => Self::from_v6(v6),
            },
            SocketAddr::V6(v6) => Self::from_v6(v6),
        }
    }

    fn from_v4(addr: SocketAddrV4) -> Self {
        // SAFETY: sockaddr_in is plain integers, for which all-zero is a valid value.
        let mut v4: libc::sockaddr_in = unsafe { mem::zeroed() };
        v4.sin_family = libc::AF_INET as libc::sa_family_t;
        v4.sin_port = addr.port().to_be();
        v4.sin_addr.s_addr = u32::from_ne_bytes(addr.ip().octets());
        Self {
            raw: RawAddr { v4 },
            len: mem::size_of::<libc::sockaddr_in>() as socklen_t,
        }
    }

    fn from_v6(addr: SocketAddrV6) -> Self {
        // SAFETY: sockaddr_in6 is plain integers, for which all-zero is a valid value.
        let mut v6: libc::sockaddr_in6 = unsafe { mem::zeroed() };
        v6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        v6.sin6_port = addr.port().to_be();
        v6.sin6_addr.s6_addr = addr.ip().octets();
        // Kept as std keeps them (std converts these two fields without byte swapping).
        v6.sin6_flowinfo = addr.flowinfo();
        v6.sin6_scope_id = addr.scope_id();
        Self {
            raw: RawAddr { v6 },
            len: mem::size_of::<libc::sockaddr_in6>() as socklen_t,
        }
    }

    /// An empty address for the kernel to fill in (`recvmsg`, `getsockname`).
    fn empty() -> Self {
        Self {
            // SAFETY: both union members are plain integers: all-zero is valid for either.
            raw: unsafe { mem::zeroed() },
            len: mem::size_of::<RawAddr>() as socklen_t,
        }
    }

    fn family(&self) -> c_int {
        if (self.len as usize) < mem::size_of::<libc::sa_family_t>() {
            return libc::AF_UNSPEC;
        }
        // SAFETY: both members start with the family field at the same offset (the sockaddr
        // layout), and any bit pattern of these integer fields is valid.
        c_int::from(unsafe { self.raw.v4.sin_family })
    }

    /// The address as std, with IPv4-mapped IPv6 turned back into IPv4; `None` for a family
    /// other than `AF_INET`/`AF_INET6` or a truncated address.
    pub fn to_std(&self) -> Option<SocketAddr> {
        let len = self.len as usize;
        match self.family() {
            libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family says the kernel (or `from_v4`) wrote a sockaddr_in, and
                // every bit pattern of its integer fields is valid.
                let v4 = unsafe { self.raw.v4 };
                let ip = Ipv4Addr::from(v4.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(v4.sin_port),
                )))
            }
            libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for sockaddr_in6.
                let v6 = unsafe { self.raw.v6 };
                let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
                let port = u16::from_be(v6.sin6_port);
                Some(match ip.to_ipv4_mapped() {
                    Some(ip) => SocketAddr::V4(SocketAddrV4::new(ip, port)),
                    None => SocketAddr::V6(SocketAddrV6::new(
                        ip,
                        port,
                        v6.sin6_flowinfo,
                        v6.sin6_scope_id,
                    )),
                })
            }
            _ => None,
        }
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        ptr::from_ref(&self.raw).cast()
    }
}

impl PartialEq for SockAddr {
    fn eq(&self, other: &Self) -> bool {
        self.to_std() == other.to_std()
    }
}

impl Eq for SockAddr {}

impl std::fmt::Debug for SockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.to_std() {
            Some(addr) => write!(f, "SockAddr({addr})"),
            None => write!(f, "SockAddr(family {}, {} bytes)", self.family(), self.len),
        }
    }
}

/// The address `fd` is bound to (`getsockname`).
fn socket_name(fd: RawFd) -> io::Result<SockAddr> {
    let mut addr = SockAddr::empty();
    // SAFETY: `addr.raw` is writable for `addr.len` bytes, the length the kernel is told; it
    // writes at most that much and stores the real length in `addr.len`. A bad fd is EBADF.
    let result =
        unsafe { libc::getsockname(fd, ptr::from_mut(&mut addr.raw).cast(), &mut addr.len) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(addr)
}

/// Counters of one [`Udp`] user (plain fields, owned by the one thread that uses them).
///
/// `send_calls`/`recv_calls` count system calls that moved data; `gso_sends` the GSO sends
/// among them, `gro_reads` the reads that returned coalesced datagrams; `datagrams_sent` and
/// `datagrams_received` count datagrams however they travelled. `unreachable_drops`: datagrams
/// not sent because the peer was unreachable (ECONNREFUSED/EHOSTUNREACH/ENETUNREACH);
/// `gso_fallbacks`: GSO sends the kernel refused (their datagrams were resent one by one).
/// `unreachable_reports`: such errors a receive returned (about datagrams sent earlier) and
/// skipped; `truncated_drops`: reads dropped because the datagram did not fit the buffer.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpCounters {
    pub send_calls: u64,
    pub gso_sends: u64,
    pub datagrams_sent: u64,
    pub recv_calls: u64,
    pub gro_reads: u64,
    pub datagrams_received: u64,
    pub unreachable_drops: u64,
    pub gso_fallbacks: u64,
    pub unreachable_reports: u64,
    pub truncated_drops: u64,
}

/// Datagrams received in one batch: their payloads back to back in one buffer, reused.
#[derive(Default)]
pub struct Datagrams {
    /// Every payload, one after another.
    pub data: Vec<u8>,
    /// Per datagram: where its payload starts in `data`, its length, its source.
    pub items: Vec<(usize, usize, SockAddr)>,
}

impl Datagrams {
    /// Forget the datagrams, keep the memory.
    pub fn clear(&mut self) {
        self.data.clear();
        self.items.clear();
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Datagram `i`: its payload and source. Panics when `i >= len()`.
    pub fn get(&self, i: usize) -> (&[u8], &SockAddr) {
        let (start, len, ref source) = self.items[i];
        (&self.data[start..start + len], source)
    }

    /// Every datagram in order, as [`Datagrams::get`] returns them.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &SockAddr)> + '_ {
        self.items
            .iter()
            .map(|(start, len, source)| (&self.data[*start..start + len], source))
    }

    fn push(&mut self, payload: &[u8], source: SockAddr) {
        self.items.push((self.data.len(), payload.len(), source));
        self.data.extend_from_slice(payload);
    }
}

/// What one `recvmsg` brought.
enum Read {
    /// `len` bytes in the scratch buffer; `segment` > 0 when they are coalesced datagrams.
    Data {
        len: usize,
        segment: usize,
        source: SockAddr,
    },
    /// An ICMP error of an earlier send, or a truncated read: nothing to deliver, read on.
    Skipped,
    /// The socket is empty.
    Empty,
}

/// A non-blocking UDP socket fd that this does not own (it never closes it; the owner keeps it
/// open while any `Udp` on it is in use). Shared by threads: every method takes `&self`, and
/// whether GSO is still on is one atomic flag.
pub struct Udp {
    fd: RawFd,
    v6: bool,
    gso: AtomicBool,
    gro: bool,
}

impl Udp {
    /// `gso`/`gro`: whether to use the offloads (the caller probed them; `UDP_GRO` is already
    /// enabled on the socket when `gro`). GSO goes off for good when the kernel refuses it.
    pub fn new(fd: RawFd, gso: bool, gro: bool) -> Self {
        let v6 = socket_name(fd).is_ok_and(|name| name.family() == libc::AF_INET6);
        Self {
            fd,
            v6,
            gso: AtomicBool::new(gso),
            gro,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Whether the socket is `AF_INET6` (then IPv4 peers need [`SockAddr::new`]`(_, true)`).
    pub fn is_v6(&self) -> bool {
        self.v6
    }

    pub fn gso_enabled(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    pub fn gro_enabled(&self) -> bool {
        self.gro
    }

    /// Send `buf`, datagrams of `segment` bytes each back to back (the last may be shorter), to
    /// `dest`, in order, waiting while the socket buffer is full (never dropping for that).
    ///
    /// With GSO, one `sendmsg` per run of up to 64 segments and 65507 bytes with a
    /// `UDP_SEGMENT` control message; a run of one datagram goes plainly. Without GSO, or after
    /// the kernel refused it (EIO/EINVAL/ENOPROTOOPT/EOPNOTSUPP: GSO goes off for every user of
    /// this `Udp` and the run is resent), one `sendto` per datagram. Datagrams the kernel
    /// reports unreachable (ECONNREFUSED/EHOSTUNREACH/ENETUNREACH) are counted in
    /// `unreachable_drops` and the rest go on. Other errors are returned; datagrams before the
    /// failing one were sent. `segment` must not be 0 (unless `buf` is empty).
    pub fn send_segments(
        &self,
        dest: &SockAddr,
        buf: &[u8],
        segment: usize,
        counters: &mut UdpCounters,
    ) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if segment == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "segment size 0",
            ));
        }
        let per_send = if segment <= GSO_MAX_BYTES {
            (GSO_MAX_BYTES / segment).min(GSO_MAX_SEGMENTS)
        } else {
            1
        };
        for run in buf.chunks(segment * per_send) {
            if run.len() <= segment || !self.gso_enabled() {
                self.send_plain(dest, run, segment, counters)?;
                continue;
            }
            let datagrams = run.len().div_ceil(segment) as u64;
            match self.send_gso(dest, run, segment) {
                Ok(()) => {
                    counters.send_calls += 1;
                    counters.gso_sends += 1;
                    counters.datagrams_sent += datagrams;
                }
                Err(error) => match error.raw_os_error() {
                    Some(errno) if is_unreachable(errno) => counters.unreachable_drops += datagrams,
                    Some(errno) if is_gso_refusal(errno) => {
                        self.gso.store(false, Ordering::Relaxed);
                        counters.gso_fallbacks += 1;
                        self.send_plain(dest, run, segment, counters)?;
                    }
                    _ => return Err(error),
                },
            }
        }
        Ok(())
    }

    /// One `sendto` per datagram of `run`.
    fn send_plain(
        &self,
        dest: &SockAddr,
        run: &[u8],
        segment: usize,
        counters: &mut UdpCounters,
    ) -> io::Result<()> {
        for datagram in run.chunks(segment) {
            let sent = self.retry_send(|| {
                // SAFETY: `datagram` is readable for its length and `dest` holds a socket
                // address of `dest.len` bytes; the kernel only reads both. MSG_DONTWAIT keeps
                // the call from blocking even on a blocking fd.
                unsafe {
                    libc::sendto(
                        self.fd,
                        datagram.as_ptr().cast::<c_void>(),
                        datagram.len(),
                        libc::MSG_DONTWAIT,
                        dest.as_ptr(),
                        dest.len,
                    )
                }
            });
            match sent {
                Ok(()) => {
                    counters.send_calls += 1;
                    counters.datagrams_sent += 1;
                }
                Err(error) if error.raw_os_error().is_some_and(is_unreachable) => {
                    counters.unreachable_drops += 1
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// One GSO `sendmsg` of `run` (more than one segment, at most 64 and 65507 bytes).
    fn send_gso(&self, dest: &SockAddr, run: &[u8], segment: usize) -> io::Result<()> {
        let mut control = ControlBuffer([0u8; GSO_CONTROL_SPACE]);
        let mut iov = libc::iovec {
            iov_base: run.as_ptr().cast_mut().cast(),
            iov_len: run.len(),
        };
        // SAFETY: msghdr is plain integers and pointers, for which all-zero is valid (no name,
        // no buffers, no control).
        let mut message: libc::msghdr = unsafe { mem::zeroed() };
        message.msg_name = dest.as_ptr().cast_mut().cast();
        message.msg_namelen = dest.len;
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.0.as_mut_ptr().cast();
        message.msg_controllen = GSO_CONTROL_SPACE as _;
        // SAFETY: `message` points at `control`, which is GSO_CONTROL_SPACE bytes aligned for
        // cmsghdr, so CMSG_FIRSTHDR returns its start (not null: the space exceeds a header),
        // and the header plus a u16 of data (CMSG_LEN(2) <= CMSG_SPACE(2)) fit in it. The data
        // may be unaligned for u16, hence write_unaligned.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&message);
            (*header).cmsg_level = SOL_UDP;
            (*header).cmsg_type = UDP_SEGMENT;
            (*header).cmsg_len = GSO_CONTROL_LEN as _;
            ptr::write_unaligned(libc::CMSG_DATA(header).cast::<u16>(), segment as u16);
        }
        self.retry_send(|| {
            // SAFETY: every pointer in `message` is live for this call: the name (`dest`), the
            // one iovec over `run` (only read: the kernel never writes a send buffer), the
            // control buffer written above. MSG_DONTWAIT: never block.
            unsafe { libc::sendmsg(self.fd, &message, libc::MSG_DONTWAIT) }
        })
    }

    /// Run a send call until it is not interrupted, waiting for POLLOUT while the socket
    /// buffer is full; any other failure is returned.
    fn retry_send(&self, mut send: impl FnMut() -> isize) -> io::Result<()> {
        loop {
            if send() >= 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(errno) if errno == libc::EAGAIN || errno == libc::EWOULDBLOCK => {
                    self.wait_writable()?
                }
                _ => return Err(error),
            }
        }
    }

    fn wait_writable(&self) -> io::Result<()> {
        let mut poll_fd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one pollfd, valid and writable for the call.
        if unsafe { libc::poll(&mut poll_fd, 1, WRITABLE_POLL_MS) } < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EINTR) {
                return Err(error);
            }
        }
        Ok(())
    }

    /// Read without blocking until `out` holds `max_datagrams` datagrams or the socket is
    /// empty; returns how many datagrams were appended (0: nothing was waiting).
    ///
    /// Each read goes into `scratch` (at least [`MAX_DATAGRAM_BYTES`] long, else
    /// `InvalidInput`; [`RECV_SCRATCH_BYTES`] is safe with any GRO size); a coalesced read is
    /// split into its datagrams, and all of them are appended, so `out` may end with up to 63
    /// more than `max_datagrams` (nothing is kept back for a later call). Truncated reads are
    /// dropped (`truncated_drops`); ICMP errors of earlier sends are skipped
    /// (`unreachable_reports`). Other errors are returned, after what was already appended.
    pub fn recv_into(
        &self,
        scratch: &mut [u8],
        out: &mut Datagrams,
        max_datagrams: usize,
        counters: &mut UdpCounters,
    ) -> io::Result<usize> {
        if scratch.len() < MAX_DATAGRAM_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "receive scratch buffer under 65535 bytes",
            ));
        }
        let before = out.len();
        while out.len() < max_datagrams {
            match self.read_one(scratch, counters)? {
                Read::Empty => break,
                Read::Skipped => {}
                Read::Data {
                    len,
                    segment,
                    source,
                } => {
                    counters.recv_calls += 1;
                    let payload = &scratch[..len];
                    if segment > 0 && segment < len {
                        counters.gro_reads += 1;
                        counters.datagrams_received += len.div_ceil(segment) as u64;
                        for datagram in payload.chunks(segment) {
                            out.push(datagram, source);
                        }
                    } else {
                        counters.datagrams_received += 1;
                        out.push(payload, source);
                    }
                }
            }
        }
        Ok(out.len() - before)
    }

    fn read_one(&self, scratch: &mut [u8], counters: &mut UdpCounters) -> io::Result<Read> {
        let mut source = SockAddr::empty();
        let mut control = ControlBuffer([0u8; RECV_CONTROL_SPACE]);
        let mut iov = libc::iovec {
            iov_base: scratch.as_mut_ptr().cast(),
            iov_len: scratch.len(),
        };
        // SAFETY: msghdr is plain integers and pointers, for which all-zero is valid.
        let mut message: libc::msghdr = unsafe { mem::zeroed() };
        message.msg_name = ptr::from_mut(&mut source.raw).cast();
        message.msg_namelen = source.len;
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        // Control room even without `gro`: if the socket coalesces anyway, the segment size
        // is not lost.
        message.msg_control = control.0.as_mut_ptr().cast();
        message.msg_controllen = RECV_CONTROL_SPACE as _;
        let len = loop {
            // SAFETY: every pointer in `message` is live and writable for the length given
            // with it: the name (`source.raw`, msg_namelen bytes), the iovec over `scratch`,
            // the control buffer; the kernel writes within those lengths. MSG_DONTWAIT: never
            // block even on a blocking fd.
            let result = unsafe { libc::recvmsg(self.fd, &mut message, libc::MSG_DONTWAIT) };
            if result >= 0 {
                break result as usize;
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(errno) if errno == libc::EAGAIN || errno == libc::EWOULDBLOCK => {
                    return Ok(Read::Empty)
                }
                Some(errno) if is_unreachable(errno) => {
                    counters.unreachable_reports += 1;
                    return Ok(Read::Skipped);
                }
                _ => return Err(error),
            }
        };
        source.len = message.msg_namelen;
        let segment = gro_segment_size(&message);
        if message.msg_flags & libc::MSG_TRUNC != 0
            || (segment.is_none() && message.msg_flags & libc::MSG_CTRUNC != 0)
        {
            // Never pass on part of a datagram, nor a coalesced read whose segment size the
            // control buffer lost.
            counters.truncated_drops += 1;
            return Ok(Read::Skipped);
        }
        Ok(Read::Data {
            len,
            segment: segment.unwrap_or(0),
            source,
        })
    }
}

/// The segment size in a received message's `UDP_GRO` control message, if it has one.
fn gro_segment_size(message: &libc::msghdr) -> Option<usize> {
    // SAFETY: `message` was filled by recvmsg: msg_control points at a live buffer of which
    // msg_controllen bytes are valid control messages. CMSG_FIRSTHDR/CMSG_NXTHDR stay within
    // that length (returning null at its end); each header is aligned (the kernel aligns them,
    // the buffer is aligned for cmsghdr) and its data is read only when cmsg_len covers an int,
    // unaligned-safe.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(message);
        while !header.is_null() {
            if (*header).cmsg_level == SOL_UDP
                && (*header).cmsg_type == UDP_GRO
                && (*header).cmsg_len as usize
                    >= libc::CMSG_LEN(mem::size_of::<c_int>() as u32) as usize
            {
                let size = ptr::read_unaligned(libc::CMSG_DATA(header).cast::<c_int>());
                return usize::try_from(size).ok();
            }
            header = libc::CMSG_NXTHDR(message, header);
        }
    }
    None
}

/// Wait up to `timeout_ms` (-1: forever, 0: not at all) until one of `fds` (at most 64) can be
/// read without blocking; returns a bitmask of those that can (bit i for `fds[i]`), 0 after
/// the timeout or a signal (EINTR). An fd with an error or hangup pending counts as readable
/// (a read returns the error instead of the caller polling again and again).
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<u64> {
    const MAX_FDS: usize = 64;
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "more than 64 fds to poll",
        ));
    }
    let mut poll_fds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX_FDS];
    for (poll_fd, &fd) in poll_fds.iter_mut().zip(fds) {
        poll_fd.fd = fd;
        poll_fd.events = libc::POLLIN;
    }
    // SAFETY: `poll_fds` is valid and writable for `fds.len()` (<= 64) entries.
    let ready = unsafe { libc::poll(poll_fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if ready < 0 {
        let error = io::Error::last_os_error();
        return if error.raw_os_error() == Some(libc::EINTR) {
            Ok(0)
        } else {
            Err(error)
        };
    }
    let readable = libc::POLLIN | libc::POLLERR | libc::POLLHUP | libc::POLLNVAL;
    Ok(poll_fds[..fds.len()]
        .iter()
        .enumerate()
        .filter(|(_, poll_fd)| poll_fd.revents & readable != 0)
        .fold(0, |mask, (i, _)| mask | 1 << i))
}

/// One `read` on `fd` (a TUN fd: one packet), retried on EINTR; EAGAIN is
/// `ErrorKind::WouldBlock`.
pub fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is writable for its length, the most the kernel writes.
        let result = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if result >= 0 {
            return Ok(result as usize);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINTR) {
            return Err(error);
        }
    }
}

/// One `write` on `fd` (a TUN fd: one packet), retried on EINTR; EAGAIN is
/// `ErrorKind::WouldBlock`.
pub fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is readable for its length; the kernel only reads it.
        let result = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if result >= 0 {
            return Ok(result as usize);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINTR) {
            return Err(error);
        }
    }
}

/// Seconds on `CLOCK_MONOTONIC`, the clock Python's `time.monotonic()` reads, so times taken
/// here and there compare.
pub fn monotonic() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};

    /// A non-blocking UDP socket bound to `addr` (loopback only), with an 8 MiB receive buffer
    /// so that a test's burst is never dropped, IPV6_V6ONLY set when asked, UDP_GRO when asked.
    fn udp_socket(addr: SocketAddr, v6only: Option<bool>, gro: bool) -> OwnedFd {
        assert!(addr.ip().is_loopback() || addr.ip().to_canonical().is_loopback());
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: socket() takes no pointers; a negative result is checked below.
        let raw = unsafe {
            libc::socket(
                family,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: `raw` is a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if let Some(v6only) = v6only {
            set_int(
                &fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                c_int::from(v6only),
            )
            .unwrap();
        }
        set_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20)
            .or_else(|_| set_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 8 << 20))
            .unwrap();
        if gro {
            set_int(&fd, SOL_UDP, UDP_GRO, 1).unwrap();
        }
        let name = SockAddr::new(addr, addr.is_ipv6());
        // SAFETY: `name` holds a socket address of `name.len` bytes, only read.
        let bound = unsafe { libc::bind(fd.as_raw_fd(), name.as_ptr(), name.len) };
        assert!(bound == 0, "bind {addr}: {}", io::Error::last_os_error());
        fd
    }

    fn set_int(fd: &OwnedFd, level: c_int, option: c_int, value: c_int) -> io::Result<()> {
        // SAFETY: `value` is a readable int of the size passed.
        let result = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                option,
                ptr::from_ref(&value).cast(),
                mem::size_of::<c_int>() as socklen_t,
            )
        };
        if result == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn connect(fd: &OwnedFd, addr: &SockAddr) {
        // SAFETY: `addr` holds a socket address of `addr.len` bytes, only read.
        let result = unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr(), addr.len) };
        assert_eq!(result, 0, "connect: {}", io::Error::last_os_error());
    }

    fn local(fd: &OwnedFd) -> SocketAddr {
        socket_name(fd.as_raw_fd()).unwrap().to_std().unwrap()
    }

    const V4: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
    const V6: SocketAddr = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0));

    /// `count` datagrams of `segment` bytes and one of `last` bytes (if not 0), back to back;
    /// each datagram's bytes say its index.
    fn payload(count: usize, segment: usize, last: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut datagrams: Vec<Vec<u8>> = (0..count)
            .map(|i| (0..segment).map(|j| (i * 31 + j) as u8).collect())
            .collect();
        if last > 0 {
            datagrams.push((0..last).map(|j| (j * 7 + 3) as u8).collect());
        }
        (datagrams.concat(), datagrams)
    }

    /// Receive until `expected` datagrams arrived (or 5 s passed), then check nothing follows.
    fn receive(udp: &Udp, expected: usize, counters: &mut UdpCounters) -> Datagrams {
        let mut scratch = vec![0u8; RECV_SCRATCH_BYTES];
        let mut out = Datagrams::default();
        let deadline = Instant::now() + Duration::from_secs(5);
        while out.len() < expected && Instant::now() < deadline {
            poll_readable(&[udp.fd()], 100).unwrap();
            udp.recv_into(
                &mut scratch,
                &mut out,
                expected + GSO_MAX_SEGMENTS,
                counters,
            )
            .unwrap();
        }
        assert_eq!(
            poll_readable(&[udp.fd()], 20).unwrap(),
            0,
            "more datagrams than sent"
        );
        out
    }

    fn assert_received(out: &Datagrams, sent: &[Vec<u8>], source: SocketAddr) {
        assert_eq!(out.len(), sent.len());
        for (i, (data, from)) in out.iter().enumerate() {
            assert_eq!(data, &sent[i][..], "datagram {i}");
            assert_eq!(from.to_std(), Some(source), "source of datagram {i}");
        }
    }

    fn send_and_receive(
        sender_addr: SocketAddr,
        receiver_addr: SocketAddr,
        gso: bool,
        gro: bool,
    ) -> (UdpCounters, UdpCounters) {
        let receiver_fd = udp_socket(receiver_addr, None, gro);
        let sender_fd = udp_socket(sender_addr, sender_addr.is_ipv6().then_some(false), false);
        let (receiver, sender) = (
            Udp::new(receiver_fd.as_raw_fd(), false, gro),
            Udp::new(sender_fd.as_raw_fd(), gso, false),
        );
        let (buf, sent) = payload(10, 1200, 700);
        let dest = SockAddr::new(local(&receiver_fd), sender.is_v6());
        let (mut sent_counters, mut received_counters) =
            (UdpCounters::default(), UdpCounters::default());
        sender
            .send_segments(&dest, &buf, 1200, &mut sent_counters)
            .unwrap();
        let out = receive(&receiver, sent.len(), &mut received_counters);
        assert_received(&out, &sent, local(&sender_fd));
        assert_eq!(sent_counters.datagrams_sent, 11);
        assert_eq!(received_counters.datagrams_received, 11);
        (sent_counters, received_counters)
    }

    #[test]
    fn gso_send_to_gro_receiver_delivers_every_datagram_in_one_read() {
        let (sent, received) = send_and_receive(V4, V4, true, true);
        assert_eq!((sent.send_calls, sent.gso_sends), (1, 1));
        assert_eq!((received.recv_calls, received.gro_reads), (1, 1));
    }

    #[test]
    fn plain_send_to_gro_receiver_delivers_every_datagram() {
        let (sent, received) = send_and_receive(V4, V4, false, true);
        assert_eq!((sent.send_calls, sent.gso_sends), (11, 0));
        assert_eq!((received.recv_calls, received.gro_reads), (11, 0));
    }

    #[test]
    fn gso_send_to_receiver_without_gro_delivers_every_datagram() {
        let (sent, received) = send_and_receive(V4, V4, true, false);
        assert_eq!(sent.gso_sends, 1);
        assert_eq!((received.recv_calls, received.gro_reads), (11, 0));
    }

    #[test]
    fn gso_over_ipv6_loopback_delivers_every_datagram() {
        let (sent, received) = send_and_receive(V6, V6, true, true);
        assert_eq!(sent.gso_sends, 1);
        assert_eq!(received.gro_reads, 1);
    }

    #[test]
    fn dual_stack_socket_reaches_ipv4_peer_through_mapped_address() {
        // The dual-stack socket is bound to ::ffff:127.0.0.1 (IPV6_V6ONLY off), not [::]: the
        // tests stay on loopback; the send path is the one a [::] socket takes to IPv4 peers.
        let mapped = SocketAddr::new(Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(), 0);
        let dual_fd = udp_socket(mapped, Some(false), true);
        let v4_fd = udp_socket(V4, None, true);
        let (dual, v4) = (
            Udp::new(dual_fd.as_raw_fd(), true, true),
            Udp::new(v4_fd.as_raw_fd(), true, true),
        );
        assert!(dual.is_v6() && !v4.is_v6());
        let dual_addr = local(&dual_fd);
        assert!(
            dual_addr.is_ipv4(),
            "getsockname's mapped address reads as IPv4: {dual_addr}"
        );
        let v4_addr = local(&v4_fd);
        let dest = SockAddr::new(v4_addr, true);
        assert_eq!(dest.family(), libc::AF_INET6);
        assert_eq!(dest.to_std(), Some(v4_addr));

        let (buf, sent) = payload(10, 1200, 700);
        let mut counters = UdpCounters::default();
        dual.send_segments(&dest, &buf, 1200, &mut counters)
            .unwrap();
        assert_eq!(counters.gso_sends, 1);
        let out = receive(&v4, sent.len(), &mut counters);
        assert_received(&out, &sent, dual_addr);
        assert_eq!(out.get(0).1.family(), libc::AF_INET);

        // And back: the dual-stack socket sees the IPv4 peer as ::ffff:127.0.0.1, to_std as IPv4.
        let reply = SockAddr::new(out.get(0).1.to_std().unwrap(), false);
        v4.send_segments(&reply, &buf, 1200, &mut counters).unwrap();
        let back = receive(&dual, sent.len(), &mut counters);
        assert_eq!(back.get(0).1.family(), libc::AF_INET6);
        assert_received(&back, &sent, v4_addr);
    }

    #[test]
    fn more_than_64_segments_arrive_complete_and_in_order() {
        for (count, segment, last, gso_sends) in
            [(200, 1200, 0, 4), (150, 100, 37, 3), (130, 1400, 1, 3)]
        {
            let receiver_fd = udp_socket(V4, None, true);
            let sender_fd = udp_socket(V4, None, false);
            let (receiver, sender) = (
                Udp::new(receiver_fd.as_raw_fd(), false, true),
                Udp::new(sender_fd.as_raw_fd(), true, false),
            );
            let (buf, sent) = payload(count, segment, last);
            let mut counters = UdpCounters::default();
            let dest = SockAddr::new(local(&receiver_fd), false);
            sender
                .send_segments(&dest, &buf, segment, &mut counters)
                .unwrap();
            // 1200-byte segments: 54 per send (65507 bytes); 100-byte ones: 64 per send; 130
            // of 1400 and one byte: 46 + 46 + 38 + a lone datagram sent plainly.
            assert_eq!(counters.gso_sends, gso_sends, "{count} x {segment}");
            assert_eq!(counters.datagrams_sent, sent.len() as u64);
            let out = receive(&receiver, sent.len(), &mut counters);
            assert_received(&out, &sent, local(&sender_fd));
        }
    }

    #[test]
    fn refused_gso_is_turned_off_and_the_run_resent_one_by_one() {
        // SO_NO_CHECK (no UDP checksums) makes the kernel refuse GSO sends with EINVAL.
        let receiver_fd = udp_socket(V4, None, true);
        let sender_fd = udp_socket(V4, None, false);
        set_int(&sender_fd, libc::SOL_SOCKET, libc::SO_NO_CHECK, 1).unwrap();
        let (receiver, sender) = (
            Udp::new(receiver_fd.as_raw_fd(), false, true),
            Udp::new(sender_fd.as_raw_fd(), true, false),
        );
        let (buf, sent) = payload(100, 1200, 10);
        let mut counters = UdpCounters::default();
        sender
            .send_segments(
                &SockAddr::new(local(&receiver_fd), false),
                &buf,
                1200,
                &mut counters,
            )
            .unwrap();
        assert!(!sender.gso_enabled());
        assert_eq!((counters.gso_fallbacks, counters.gso_sends), (1, 0));
        assert_eq!((counters.send_calls, counters.datagrams_sent), (101, 101));
        let out = receive(&receiver, sent.len(), &mut counters);
        assert_received(&out, &sent, local(&sender_fd));
    }

    #[test]
    fn unreachable_port_is_counted_and_skipped_never_an_error() {
        // One GSO run of 4, then one datagram alone (plain): each call's error arrives on the
        // next call, which is why plain runs of several lose every other datagram here.
        for (gso, count) in [(true, 4), (false, 1)] {
            // A port nobody listens on: bind one, note it, close it.
            let closed = local(&udp_socket(V4, None, false));
            let sender_fd = udp_socket(V4, None, true);
            // Connected: Linux reports ICMP errors only to connected sockets (or IP_RECVERR).
            let dest = SockAddr::new(closed, false);
            connect(&sender_fd, &dest);
            let sender = Udp::new(sender_fd.as_raw_fd(), gso, true);
            let (buf, _) = payload(count, 1200, 0);
            let mut scratch = vec![0u8; RECV_SCRATCH_BYTES];
            let mut out = Datagrams::default();
            let mut counters = UdpCounters::default();
            // A receive skips the error...
            sender
                .send_segments(&dest, &buf, 1200, &mut counters)
                .unwrap();
            assert_ne!(
                poll_readable(&[sender.fd()], 1000).unwrap(),
                0,
                "POLLERR counts as readable"
            );
            assert_eq!(
                sender
                    .recv_into(&mut scratch, &mut out, 10, &mut counters)
                    .unwrap(),
                0
            );
            assert_eq!(counters.unreachable_reports, 1);
            // ...a send counts the datagrams it could not send, then goes on.
            sender
                .send_segments(&dest, &buf, 1200, &mut counters)
                .unwrap();
            assert_ne!(poll_readable(&[sender.fd()], 1000).unwrap(), 0);
            sender
                .send_segments(&dest, &buf, 1200, &mut counters)
                .unwrap();
            assert_eq!(counters.unreachable_drops, count as u64, "{counters:?}");
            assert_eq!(counters.datagrams_sent, 2 * count as u64, "{counters:?}");
            assert_eq!(counters.gso_sends, if gso { 2 } else { 0 });
            assert_eq!(
                sender.gso_enabled(),
                gso,
                "an unreachable peer is no GSO refusal"
            );
        }
    }

    #[test]
    fn poll_readable_times_out_and_reports_ready_fds() {
        let fds = [udp_socket(V4, None, false), udp_socket(V4, None, false)];
        let raw = [fds[0].as_raw_fd(), fds[1].as_raw_fd()];
        let started = Instant::now();
        assert_eq!(poll_readable(&raw, 50).unwrap(), 0);
        assert!(started.elapsed() >= Duration::from_millis(45));
        assert_eq!(poll_readable(&raw, 0).unwrap(), 0);
        let sender = Udp::new(fds[0].as_raw_fd(), false, false);
        sender
            .send_segments(
                &SockAddr::new(local(&fds[1]), false),
                b"ping",
                4,
                &mut UdpCounters::default(),
            )
            .unwrap();
        assert_eq!(poll_readable(&raw, 1000).unwrap(), 0b10);
        assert_eq!(poll_readable(&[], 0).unwrap(), 0);
        assert_eq!(
            poll_readable(&[raw[0]; 65], 0).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn read_and_write_fd_move_one_packet_and_map_eagain_to_would_block() {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        assert_eq!(write_fd(a.as_raw_fd(), b"one packet").unwrap(), 10);
        assert_eq!(write_fd(a.as_raw_fd(), b"two").unwrap(), 3);
        let mut buf = [0u8; 64];
        assert_eq!(read_fd(b.as_raw_fd(), &mut buf).unwrap(), 10);
        assert_eq!(&buf[..10], b"one packet");
        assert_eq!(read_fd(b.as_raw_fd(), &mut buf).unwrap(), 3);
        assert_eq!(
            read_fd(b.as_raw_fd(), &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(
            read_fd(-1, &mut buf).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
        // Fill the socket until the kernel says EAGAIN.
        let error = loop {
            if let Err(error) = write_fd(a.as_raw_fd(), &[0u8; 1024]) {
                break error;
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn sockaddr_maps_ipv4_for_ipv6_sockets_and_back() {
        let v4: SocketAddr = "127.0.0.1:51820".parse().unwrap();
        let v6: SocketAddr = "[fe80::1%3]:51820".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:51820".parse().unwrap();
        assert_eq!(SockAddr::new(v4, false).family(), libc::AF_INET);
        assert_eq!(SockAddr::new(v4, false).to_std(), Some(v4));
        assert_eq!(SockAddr::new(v4, true).family(), libc::AF_INET6);
        assert_eq!(SockAddr::new(v4, true).to_std(), Some(v4));
        assert_eq!(SockAddr::new(v6, true).to_std(), Some(v6));
        assert_eq!(SockAddr::new(mapped, false).family(), libc::AF_INET);
        assert_eq!(SockAddr::new(mapped, true).to_std(), Some(v4));
        assert_eq!(SockAddr::new(v4, true), SockAddr::new(v4, false));
        assert_eq!(SockAddr::empty().to_std(), None);
        assert_eq!(
            format!("{:?}", SockAddr::new(v4, true)),
            "SockAddr(127.0.0.1:51820)"
        );
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        let fd = udp_socket(V4, None, false);
        let udp = Udp::new(fd.as_raw_fd(), true, false);
        let dest = SockAddr::new(local(&fd), false);
        let mut counters = UdpCounters::default();
        assert_eq!(
            udp.send_segments(&dest, b"x", 0, &mut counters)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );
        udp.send_segments(&dest, b"", 0, &mut counters).unwrap();
        let mut small = [0u8; 1500];
        let error = udp
            .recv_into(&mut small, &mut Datagrams::default(), 1, &mut counters)
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        // IPv6 peer from an IPv4 socket: the kernel's error, returned.
        let v6 = SockAddr::new(V6, false);
        assert!(udp.send_segments(&v6, b"xx", 1, &mut counters).is_err());
        assert!(udp.gso_enabled(), "an address error is no GSO refusal");
    }

    #[test]
    fn monotonic_is_the_monotonic_clock() {
        let (start, instant) = (monotonic(), Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let elapsed = monotonic() - start;
        assert!(
            elapsed >= 0.019 && elapsed <= instant.elapsed().as_secs_f64() + 0.001,
            "{elapsed}"
        );
    }

    /// Rough datagrams/s on loopback for 1400-byte datagrams, sender and receiver in their own
    /// threads: `cargo test --release --lib io::tests::loopback_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark"]
    fn loopback_throughput() {
        const SEGMENT: usize = 1400;
        const BATCH: usize = 64;
        let seconds = Duration::from_secs(2);
        println!(
            "{:>5} {:>5} {:>14} {:>14} {:>8}",
            "gso", "gro", "sent/s", "received/s", "ratio"
        );
        let mut anchor = 0.0;
        for (gso, gro) in [(false, false), (true, false), (false, true), (true, true)] {
            let receiver_fd = udp_socket(V4, None, gro);
            let sender_fd = udp_socket(V4, None, false);
            let dest = SockAddr::new(local(&receiver_fd), false);
            let done = AtomicBool::new(false);
            let (sent, received) = std::thread::scope(|scope| {
                let receiving = scope.spawn(|| {
                    let receiver = Udp::new(receiver_fd.as_raw_fd(), false, gro);
                    let mut scratch = vec![0u8; RECV_SCRATCH_BYTES];
                    let mut out = Datagrams::default();
                    let mut counters = UdpCounters::default();
                    let started = Instant::now();
                    while !done.load(Ordering::Relaxed) {
                        if poll_readable(&[receiver.fd()], 10).unwrap() != 0 {
                            out.clear();
                            receiver
                                .recv_into(&mut scratch, &mut out, 512, &mut counters)
                                .unwrap();
                        }
                    }
                    counters.datagrams_received as f64 / started.elapsed().as_secs_f64()
                });
                let sender = Udp::new(sender_fd.as_raw_fd(), gso, false);
                let (buf, _) = payload(BATCH, SEGMENT, 0);
                let mut counters = UdpCounters::default();
                let started = Instant::now();
                while started.elapsed() < seconds {
                    sender
                        .send_segments(&dest, &buf, SEGMENT, &mut counters)
                        .unwrap();
                }
                let sent = counters.datagrams_sent as f64 / started.elapsed().as_secs_f64();
                done.store(true, Ordering::Relaxed);
                (sent, receiving.join().unwrap())
            });
            if anchor == 0.0 {
                anchor = received;
            }
            println!(
                "{gso:>5} {gro:>5} {sent:>14.0} {received:>14.0} {:>7.2}x",
                received / anchor
            );
        }
    }
}
