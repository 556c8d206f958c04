//! PyO3 bindings of [`crate::plane`] and [`crate::replay`]: the objects Python's native engine
//! drives. Every `run_once` releases the GIL for the whole batch.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::io::UdpCounters;
use crate::plane::{self, RecvSession, SendSession};
use crate::replay::{self, WINDOW_SIZE};
use crate::transport::python::TransportKey;

/// The replay window of one receive session (shared by Python and the plane's workers).
#[pyclass(frozen, module = "tunplug_fastpath._native")]
pub struct ReplayWindow {
    inner: Arc<Mutex<replay::ReplayWindow>>,
}

#[pymethods]
impl ReplayWindow {
    #[new]
    #[pyo3(signature = (size = WINDOW_SIZE, limit = u64::MAX))]
    fn new(size: u64, limit: u64) -> PyResult<Self> {
        if size >= 8192 {
            return Err(PyValueError::new_err(
                "replay window size must be below 8192",
            ));
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(replay::ReplayWindow::new(size, limit))),
        })
    }

    /// Record `counter`; `True` if it is fresh.
    fn check(&self, counter: u64) -> bool {
        self.lock().check(counter)
    }

    /// The highest counter accepted so far (-1 before the first).
    #[getter]
    fn last(&self) -> i128 {
        self.lock().last().map_or(-1, i128::from)
    }
}

impl ReplayWindow {
    fn lock(&self) -> std::sync::MutexGuard<'_, replay::ReplayWindow> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// (send key, receiver index, expires, limit) as Python hands it over.
type SendSpec<'py> = (PyRef<'py, TransportKey>, u32, f64, u64);
/// (local index, receive key, replay window, expires, send side it confirms).
type ReceiverSpec<'py> = (
    u32,
    PyRef<'py, TransportKey>,
    PyRef<'py, ReplayWindow>,
    f64,
    Option<SendSpec<'py>>,
);

fn send_session(spec: Option<SendSpec<'_>>) -> Option<SendSession> {
    spec.map(|(key, receiver, expires, limit)| SendSession {
        key: Arc::clone(&key.inner),
        counter: Arc::clone(&key.counter),
        receiver,
        expires,
        limit,
    })
}

fn endpoint(spec: Option<(String, u16)>) -> PyResult<Option<SocketAddr>> {
    spec.map(|(host, port)| {
        host.parse::<IpAddr>()
            .map(|ip| SocketAddr::new(ip, port))
            .map_err(|_| PyValueError::new_err(format!("not an IP address: {host:?}")))
    })
    .transpose()
}

/// An I/O error as Python's `OSError(errno, strerror)` (so `errno` is set and the subclass
/// follows it, as for Python's own system calls).
fn os_error(error: std::io::Error) -> PyErr {
    match error.raw_os_error() {
        Some(code) => {
            let text = error.to_string();
            let message = text.split(" (os error").next().unwrap_or(&text).to_owned();
            PyOSError::new_err((code, message))
        }
        None => error.into(),
    }
}

fn counters_dict(counters: &UdpCounters) -> HashMap<&'static str, u64> {
    HashMap::from([
        ("send_calls", counters.send_calls),
        ("gso_sends", counters.gso_sends),
        ("datagrams_sent", counters.datagrams_sent),
        ("recv_calls", counters.recv_calls),
        ("gro_reads", counters.gro_reads),
        ("datagrams_received", counters.datagrams_received),
        ("unreachable_drops", counters.unreachable_drops),
        ("gso_fallbacks", counters.gso_fallbacks),
        ("unreachable_reports", counters.unreachable_reports),
        ("truncated_drops", counters.truncated_drops),
    ])
}

/// One tunnel's native data plane (see `tunplug_fastpath.engine`).
#[pyclass(frozen, module = "tunplug_fastpath._native")]
pub struct Plane {
    inner: Arc<plane::Plane>,
}

type ActivityRow = (
    u32,
    u64,
    u64,
    f64,
    u64,
    u64,
    u64,
    f64,
    Option<(String, u16)>,
);

#[pymethods]
impl Plane {
    #[new]
    fn new(
        udp_fd: i32,
        gso: bool,
        gro: bool,
        tun_fds: Vec<i32>,
        vnet_hdr: bool,
        mtu: usize,
    ) -> PyResult<Self> {
        if tun_fds.is_empty() {
            return Err(PyValueError::new_err(
                "at least one TUN descriptor is needed",
            ));
        }
        Ok(Self {
            inner: Arc::new(plane::Plane::new(udp_fd, gso, gro, tun_fds, vnet_hdr, mtu)),
        })
    }

    #[getter]
    fn gso_enabled(&self) -> bool {
        self.inner.gso_enabled()
    }

    /// Replace what the plane knows of `peer`: endpoint, AllowedIPs (address bytes, prefix),
    /// the session to send with, and the sessions to receive on.
    #[pyo3(signature = (peer, endpoint_spec, allowed, send, receivers))]
    fn update_peer(
        &self,
        peer: u32,
        endpoint_spec: Option<(String, u16)>,
        allowed: Vec<(Vec<u8>, u8)>,
        send: Option<SendSpec<'_>>,
        receivers: Vec<ReceiverSpec<'_>>,
    ) -> PyResult<()> {
        let receivers = receivers
            .into_iter()
            .map(|(index, key, replay, expires, confirms)| {
                (
                    index,
                    RecvSession {
                        key: Arc::clone(&key.inner),
                        replay: Arc::clone(&replay.inner),
                        peer,
                        expires,
                        confirms: send_session(confirms),
                    },
                )
            })
            .collect();
        self.inner.update_peer(
            peer,
            endpoint(endpoint_spec)?,
            &allowed,
            send_session(send),
            receivers,
        );
        Ok(())
    }

    fn remove_peer(&self, peer: u32) {
        self.inner.remove_peer(peer);
    }

    fn clear(&self) {
        self.inner.clear();
    }

    /// Per peer since the last call: (peer, tx bytes, tx packets, tx last, rx bytes, rx
    /// authenticated, rx data, rx last, last endpoint).
    fn take_activity(&self) -> Vec<ActivityRow> {
        self.inner
            .take_activity()
            .into_iter()
            .map(|(peer, a)| {
                let endpoint = a
                    .endpoint
                    .map(|address| (address.ip().to_string(), address.port()));
                (
                    peer,
                    a.tx_bytes,
                    a.tx_packets,
                    a.tx_last,
                    a.rx_bytes,
                    a.rx_packets,
                    a.rx_data,
                    a.rx_last,
                    endpoint,
                )
            })
            .collect()
    }

    fn take_drops(&self) -> HashMap<&'static str, u64> {
        self.inner.take_drops().into_iter().collect()
    }

    /// Up to `max` datagrams waiting for Python (handshakes, cookies, unknown sessions), with
    /// their sources, oldest first.
    fn take_control<'py>(
        &self,
        py: Python<'py>,
        max: usize,
    ) -> Vec<(Bound<'py, PyBytes>, (String, u16))> {
        self.inner
            .take_control(max)
            .iter()
            .map(|(data, source)| {
                (
                    PyBytes::new(py, data),
                    (source.ip().to_string(), source.port()),
                )
            })
            .collect()
    }

    /// Local indices of next sessions the peer has used since the last call.
    fn take_confirmed(&self) -> Vec<u32> {
        self.inner.take_confirmed()
    }

    /// Write packets (Python's, e.g. from a session the plane did not know yet) to the device.
    fn write_tun(&self, py: Python<'_>, packets: Vec<Vec<u8>>) -> HashMap<&'static str, u64> {
        let inner = &self.inner;
        py.detach(|| {
            let mut drops = HashMap::new();
            inner.write_tun(&packets, &mut drops);
            drops
        })
    }

    fn outbound_worker(&self, queue: usize) -> PyResult<OutboundWorker> {
        plane::Outbound::new(Arc::clone(&self.inner), queue)
            .map(|inner| OutboundWorker { inner })
            .ok_or_else(|| PyValueError::new_err(format!("no TUN queue {queue}")))
    }

    fn inbound_worker(&self) -> InboundWorker {
        InboundWorker {
            inner: plane::Inbound::new(Arc::clone(&self.inner)),
        }
    }
}

/// The loop body of one TUN queue's thread.
#[pyclass(module = "tunplug_fastpath._native")]
pub struct OutboundWorker {
    inner: plane::Outbound,
}

#[pymethods]
impl OutboundWorker {
    /// Wait up to `timeout_ms` for the queue and carry one batch; returns the packets left for
    /// Python (no usable session) and how many were sent.
    fn run_once<'py>(
        &mut self,
        py: Python<'py>,
        timeout_ms: i32,
    ) -> PyResult<(Vec<Bound<'py, PyBytes>>, usize)> {
        let inner = &mut self.inner;
        let result = py.detach(|| inner.run_once(timeout_ms)).map_err(os_error)?;
        let leftovers = result
            .leftovers
            .iter()
            .map(|p| PyBytes::new(py, p))
            .collect();
        Ok((leftovers, result.sent))
    }

    fn stats(&self) -> HashMap<&'static str, u64> {
        let mut stats = counters_dict(&self.inner.counters);
        stats.insert("tun_reads", self.inner.tun_reads);
        stats.insert("tun_packets", self.inner.tun_packets);
        stats
    }
}

/// The loop body of the socket's thread.
#[pyclass(module = "tunplug_fastpath._native")]
pub struct InboundWorker {
    inner: plane::Inbound,
}

#[pymethods]
impl InboundWorker {
    /// Carry batches for up to `timeout_ms` (GIL released); returns early when Python must act:
    /// (packets written, a session was confirmed, datagrams wait in `Plane.take_control`).
    fn run_once(&mut self, py: Python<'_>, timeout_ms: i32) -> PyResult<(usize, bool, bool)> {
        let inner = &mut self.inner;
        let result = py.detach(|| inner.run_for(timeout_ms)).map_err(os_error)?;
        Ok((result.delivered, result.confirmed, result.control_ready))
    }

    fn stats(&self) -> HashMap<&'static str, u64> {
        counters_dict(&self.inner.counters)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ReplayWindow>()?;
    m.add_class::<Plane>()?;
    m.add_class::<OutboundWorker>()?;
    m.add_class::<InboundWorker>()?;
    Ok(())
}
