//! tunplug's native data-plane core.
//!
//! Python decides, Rust moves packets: the control plane (Noise handshakes, timers, cookies,
//! configuration, plugins) stays in Python; this crate does the per-packet work of a batch in
//! one call, with the GIL released:
//!
//! - [`transport`]: WireGuard transport messages sealed and opened in batches with `ring`'s
//!   ChaCha20-Poly1305 (never hand-written crypto), laid out in place for UDP GSO;
//! - [`offload`]: the `virtio_net_hdr` packet surgery of a Linux TUN device with offloads:
//!   TSO/USO super-packets split with their checksums completed, TCP segments coalesced
//!   (GRO) for one write;
//! - [`checksum`]: the Internet checksum those need.
//!
//! The pure-Rust modules build and test without Python (`cargo test`); the PyO3 bindings
//! (`python` feature, enabled by maturin) live in [`python`] and are the only place that
//! touches the interpreter.

pub mod checksum;
#[cfg(test)]
mod fuzz_tests;
pub mod io;
pub mod offload;
pub mod plane;
pub mod replay;
pub mod transport;

#[cfg(feature = "python")]
mod py_offload;
#[cfg(feature = "python")]
mod py_plane;
#[cfg(feature = "python")]
mod python;
