//! WireGuard transport messages (type 4), sealed and opened a batch at a time.
//!
//! A message is `type(4) || 0 0 0 || receiver u32 LE || counter u64 LE || ciphertext || tag`;
//! the AEAD is ChaCha20-Poly1305 with nonce `0^4 || LE64(counter)` and empty AAD, the
//! plaintext zero-padded to a multiple of 16 without exceeding the MTU (whitepaper 5.4.6).
//! The cipher is `ring`'s, never our own. The caller owns the counter: these functions use
//! the counters they are given, so a counter is used twice only if the caller hands it out
//! twice (the Python device hands out each once, from one thread).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

/// Bytes before the ciphertext: type word, receiver index, counter.
pub const HEADER_LEN: usize = 16;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Type word of a transport message (type 4 and three zero bytes), little-endian.
pub const TRANSPORT_TYPE: u32 = 4;

/// The WireGuard nonce for `counter`: four zero bytes, then the counter little-endian.
fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// The length a plaintext of `len` bytes is padded to: zeros up to a multiple of 16, not
/// beyond `mtu` (wireguard-go's `calculatePaddingSize`; a packet longer than the MTU pads its
/// remainder modulo the MTU). Keepalives (0 bytes) stay empty. `mtu` is at least 16.
pub fn padded_len(len: usize, mtu: usize) -> usize {
    let last = if len > mtu { len % mtu } else { len };
    let target = (last.div_ceil(16) * 16).min(mtu);
    if target <= last {
        len
    } else {
        len + target - last
    }
}

/// One session direction: a ChaCha20-Poly1305 key.
pub struct TransportKey {
    key: LessSafeKey,
}

/// The AEAD refused: wrong key, tampered or truncated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecryptionFailed;

impl TransportKey {
    /// `None` unless `key` is 32 bytes.
    pub fn new(key: &[u8]) -> Option<Self> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).ok()?;
        Some(Self {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Seal `plaintext` with `aad`: ciphertext with the tag appended.
    pub fn seal(&self, counter: u64, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(aad), &mut out)
            .expect("ChaCha20-Poly1305 seals any length a Vec can hold");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Open `ciphertext` (with its tag) and `aad`; the plaintext.
    pub fn open(
        &self,
        counter: u64,
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, DecryptionFailed> {
        let mut buffer = ciphertext.to_vec();
        let len = self
            .key
            .open_in_place(nonce(counter), Aad::from(aad), &mut buffer)
            .map_err(|_| DecryptionFailed)?
            .len();
        buffer.truncate(len);
        Ok(buffer)
    }

    /// Open in place: `buffer` holds ciphertext and tag; on success the plaintext is its first
    /// returned-length bytes.
    pub fn open_in_place(
        &self,
        counter: u64,
        buffer: &mut [u8],
    ) -> Result<usize, DecryptionFailed> {
        self.key
            .open_in_place(nonce(counter), Aad::empty(), buffer)
            .map(|plain| plain.len())
            .map_err(|_| DecryptionFailed)
    }

    /// Seal in place: `region` holds the plaintext followed by `TAG_LEN` spare bytes.
    fn seal_region(&self, counter: u64, region: &mut [u8]) {
        let (plain, tag_room) = region.split_at_mut(region.len() - TAG_LEN);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), plain)
            .expect("a packet is far below ChaCha20-Poly1305's length limit");
        tag_room.copy_from_slice(tag.as_ref());
    }

    /// Whole transport messages for `packets`, one after the other in `out` (appended), with
    /// counters `first_counter`, `first_counter + 1`, ...; returns each message's length.
    ///
    /// Each packet is padded with zeros to [`padded_len`]; `receiver` is the peer's index.
    /// The messages are laid out back to back, so a run of equal lengths is ready for one UDP
    /// GSO send.
    pub fn seal_transport<P: AsRef<[u8]>>(
        &self,
        receiver: u32,
        first_counter: u64,
        packets: &[P],
        mtu: usize,
        out: &mut Vec<u8>,
    ) -> Vec<usize> {
        let mut lengths = Vec::with_capacity(packets.len());
        let needed: usize = packets
            .iter()
            .map(|p| HEADER_LEN + padded_len(p.as_ref().len(), mtu) + TAG_LEN)
            .sum();
        out.reserve(needed);
        for (i, packet) in packets.iter().enumerate() {
            let packet = packet.as_ref();
            let counter = first_counter + i as u64;
            let body = padded_len(packet.len(), mtu);
            let start = out.len();
            out.extend_from_slice(&TRANSPORT_TYPE.to_le_bytes());
            out.extend_from_slice(&receiver.to_le_bytes());
            out.extend_from_slice(&counter.to_le_bytes());
            out.extend_from_slice(packet);
            out.resize(start + HEADER_LEN + body + TAG_LEN, 0);
            self.seal_region(counter, &mut out[start + HEADER_LEN..]);
            lengths.push(HEADER_LEN + body + TAG_LEN);
        }
        lengths
    }

    /// Open a batch of ciphertexts (each with its tag; header already removed) with their
    /// counters: each plaintext, or `None` where the tag did not verify.
    pub fn open_many<C: AsRef<[u8]>>(
        &self,
        counters: &[u64],
        ciphertexts: &[C],
    ) -> Vec<Option<Vec<u8>>> {
        counters
            .iter()
            .zip(ciphertexts)
            .map(|(&counter, ciphertext)| self.open(counter, ciphertext.as_ref(), &[]).ok())
            .collect()
    }
}

#[cfg(feature = "python")]
pub mod python {
    //! `TransportKey` for Python: the AEAD of one session direction.

    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use pyo3::create_exception;
    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyList};

    create_exception!(
        _native,
        DecryptionFailed,
        PyValueError,
        "An AEAD tag did not verify."
    );

    /// Bytes of a bytes-like object (bytes, bytearray, memoryview), copied once.
    fn bytes_of(object: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
        if let Ok(bytes) = object.cast::<PyBytes>() {
            return Ok(bytes.as_bytes().to_vec());
        }
        let buffer = pyo3::buffer::PyBuffer::<u8>::get(object)?;
        buffer.to_vec(object.py())
    }

    /// A ChaCha20-Poly1305 key of one direction of a WireGuard session, and (for the send
    /// direction) the session's counter, shared with the native data plane's workers.
    #[pyclass(frozen, module = "tunplug_fastpath._native")]
    pub struct TransportKey {
        pub(crate) inner: Arc<super::TransportKey>,
        pub(crate) counter: Arc<AtomicU64>,
    }

    #[pymethods]
    impl TransportKey {
        #[new]
        fn new(key: &[u8]) -> PyResult<Self> {
            super::TransportKey::new(key)
                .map(|inner| Self {
                    inner: Arc::new(inner),
                    counter: Arc::new(AtomicU64::new(0)),
                })
                .ok_or_else(|| {
                    PyValueError::new_err(format!("key must be 32 bytes, got {}", key.len()))
                })
        }

        /// Reserve `count` consecutive send counters; returns the first. One atomic step, so
        /// Python and the plane's workers never hand out a counter twice.
        fn reserve(&self, count: u64) -> u64 {
            self.counter.fetch_add(count, Ordering::Relaxed)
        }

        /// The next send counter (how many were reserved so far).
        #[getter]
        fn counter(&self) -> u64 {
            self.counter.load(Ordering::Relaxed)
        }

        /// Ciphertext and tag of `plaintext` under nonce `counter` with `aad`.
        #[pyo3(signature = (counter, plaintext, aad = None))]
        fn seal<'py>(
            &self,
            py: Python<'py>,
            counter: u64,
            plaintext: &Bound<'py, PyAny>,
            aad: Option<&Bound<'py, PyAny>>,
        ) -> PyResult<Bound<'py, PyBytes>> {
            let plaintext = bytes_of(plaintext)?;
            let aad = aad.map(bytes_of).transpose()?.unwrap_or_default();
            let sealed = py.detach(|| self.inner.seal(counter, &plaintext, &aad));
            Ok(PyBytes::new(py, &sealed))
        }

        /// Plaintext of `ciphertext` (tag included); raises `DecryptionFailed`.
        #[pyo3(signature = (counter, ciphertext, aad = None))]
        fn open<'py>(
            &self,
            py: Python<'py>,
            counter: u64,
            ciphertext: &Bound<'py, PyAny>,
            aad: Option<&Bound<'py, PyAny>>,
        ) -> PyResult<Bound<'py, PyBytes>> {
            let ciphertext = bytes_of(ciphertext)?;
            let aad = aad.map(bytes_of).transpose()?.unwrap_or_default();
            match py.detach(|| self.inner.open(counter, &ciphertext, &aad)) {
                Ok(plain) => Ok(PyBytes::new(py, &plain)),
                Err(_) => Err(DecryptionFailed::new_err("decryption failed")),
            }
        }

        /// Transport messages for `packets` with counters from `first_counter`, padded for
        /// `mtu`, back to back: `(buffer, lengths)`.
        fn seal_transport<'py>(
            &self,
            py: Python<'py>,
            receiver: u32,
            first_counter: u64,
            packets: &Bound<'py, PyList>,
            mtu: usize,
        ) -> PyResult<(Bound<'py, PyBytes>, Vec<usize>)> {
            let packets = packets
                .iter()
                .map(|p| bytes_of(&p))
                .collect::<PyResult<Vec<_>>>()?;
            let (buffer, lengths) = py.detach(|| {
                let mut buffer = Vec::new();
                let lengths =
                    self.inner
                        .seal_transport(receiver, first_counter, &packets, mtu, &mut buffer);
                (buffer, lengths)
            });
            Ok((PyBytes::new(py, &buffer), lengths))
        }

        /// Plaintexts of a batch of ciphertexts (tags included), `None` where a tag failed.
        fn open_many<'py>(
            &self,
            py: Python<'py>,
            counters: Vec<u64>,
            ciphertexts: &Bound<'py, PyList>,
        ) -> PyResult<Vec<Option<Bound<'py, PyBytes>>>> {
            if counters.len() != ciphertexts.len() {
                return Err(PyValueError::new_err(
                    "counters and ciphertexts differ in length",
                ));
            }
            let ciphertexts = ciphertexts
                .iter()
                .map(|c| bytes_of(&c))
                .collect::<PyResult<Vec<_>>>()?;
            let opened = py.detach(|| self.inner.open_many(&counters, &ciphertexts));
            Ok(opened
                .into_iter()
                .map(|plain| plain.map(|p| PyBytes::new(py, &p)))
                .collect())
        }
    }

    pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_class::<TransportKey>()?;
        m.add("DecryptionFailed", m.py().get_type::<DecryptionFailed>())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_follows_the_whitepaper() {
        assert_eq!(padded_len(0, 1420), 0);
        assert_eq!(padded_len(1, 1420), 16);
        assert_eq!(padded_len(16, 1420), 16);
        assert_eq!(padded_len(1419, 1420), 1420);
        assert_eq!(padded_len(1415, 1420), 1420);
        assert_eq!(padded_len(1420, 1420), 1420);
        assert_eq!(padded_len(1500, 1420), 1500);
        assert_eq!(padded_len(1430, 1420), 1436);
        assert_eq!(padded_len(2840, 1420), 2840);
    }

    #[test]
    fn rfc8439_aead_test_vector() {
        // RFC 8439 section 2.8.2: key 80..9f, nonce 07000000 4041424344454647, AAD 50..c7.
        let key: Vec<u8> = (0x80..=0x9f).collect();
        let aad = [
            0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
        ];
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        // The RFC's nonce is 07 00 00 00 || 40..47; ours is 0^4 || LE64(counter): build it.
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
        let mut buf = plaintext.to_vec();
        let nonce_bytes = [
            0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47,
        ];
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad),
                &mut buf,
            )
            .unwrap();
        assert_eq!(&buf[..4], &[0xd3, 0x1a, 0x8d, 0x34]);
        assert_eq!(
            tag.as_ref(),
            &[
                0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60,
                0x06, 0x91
            ]
        );
    }

    #[test]
    fn transport_messages_open_with_the_same_key_and_counter() {
        let key = TransportKey::new(&[7u8; 32]).unwrap();
        let packets: Vec<Vec<u8>> = vec![vec![0x45; 100], vec![], vec![1; 1420]];
        let mut out = Vec::new();
        let lengths = key.seal_transport(0xdead_beef, 41, &packets, 1420, &mut out);
        assert_eq!(lengths, vec![16 + 112 + 16, 32, 16 + 1420 + 16]);
        let mut offset = 0;
        for (i, (len, packet)) in lengths.iter().zip(&packets).enumerate() {
            let message = &out[offset..offset + len];
            assert_eq!(&message[..4], &[4, 0, 0, 0]);
            assert_eq!(&message[4..8], &0xdead_beefu32.to_le_bytes());
            assert_eq!(
                u64::from_le_bytes(message[8..16].try_into().unwrap()),
                41 + i as u64
            );
            let plain = key.open(41 + i as u64, &message[16..], &[]).unwrap();
            assert_eq!(&plain[..packet.len()], &packet[..]);
            assert!(plain[packet.len()..].iter().all(|&b| b == 0));
            offset += len;
        }
        assert_eq!(offset, out.len());
    }

    #[test]
    fn tampering_and_wrong_counters_fail() {
        let key = TransportKey::new(&[9u8; 32]).unwrap();
        let sealed = key.seal(5, b"hello", b"");
        assert_eq!(key.open(5, &sealed, b"").unwrap(), b"hello");
        assert_eq!(key.open(6, &sealed, b""), Err(DecryptionFailed));
        let mut bad = sealed.clone();
        bad[0] ^= 1;
        assert_eq!(key.open(5, &bad, b""), Err(DecryptionFailed));
        assert_eq!(key.open(5, &sealed[..10], b""), Err(DecryptionFailed));
        assert_eq!(key.open(5, &[], b""), Err(DecryptionFailed));
        assert!(TransportKey::new(&[0u8; 31]).is_none());
    }
}
