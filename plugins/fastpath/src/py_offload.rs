//! PyO3 bindings of [`crate::offload`]: `split`, `coalesce` and `OffloadError` of
//! `tunplug_fastpath._native`.
//!
//! Who calls it: `tunplug_fastpath.datapath.NativePacketOps`, from the linux-mq backend's
//! reader and writer threads. Inputs are read first (borrowed from `bytes`, copied from
//! anything else), the work runs with the GIL released, and the Python results are built
//! afterwards. Errors become Python exceptions in one place, [`offload_error`].

use std::borrow::Cow;

use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::offload::{self, Packets};

create_exception!(
    _native,
    OffloadError,
    PyValueError,
    "A read split() cannot turn into packets: args[0] (also .reason) names the drop counter, \
     args[1] says what was wrong."
);

/// `error` as an [`OffloadError`] with `args == (reason, detail)` and a `reason` attribute,
/// like the pure-Python `OffloadError`'s.
fn offload_error(py: Python<'_>, error: offload::OffloadError) -> PyErr {
    let reason = error.reason.as_str();
    let exception = OffloadError::new_err((reason, error.detail));
    if let Err(failed) = exception.value(py).setattr("reason", reason) {
        return failed;
    }
    exception
}

/// The bytes of a bytes-like object (`bytes`, `bytearray`, `memoryview`, any buffer of
/// bytes). Borrowed from `bytes`, which cannot change, so they may be read with the GIL
/// released; copied from anything else, which another thread could change meanwhile.
fn bytes_of<'a>(object: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(bytes) = object.cast::<PyBytes>() {
        return Ok(Cow::Borrowed(bytes.as_bytes()));
    }
    let buffer = PyBuffer::<u8>::get(object)?;
    Ok(Cow::Owned(buffer.to_vec(object.py())?))
}

/// The IP packets of one TUN read (`virtio_net_hdr` first), checksums complete.
///
/// Raises `OffloadError` (a `ValueError`, the drop reason in `args[0]`) when the read is
/// malformed or of a GSO type the backend did not negotiate.
#[pyfunction]
fn split<'py>(py: Python<'py>, frame: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    let frame = bytes_of(frame)?;
    let mut packets = Packets::new();
    py.detach(|| offload::split(&frame, &mut packets))
        .map_err(|error| offload_error(py, error))?;
    PyList::new(py, packets.iter().map(|packet| PyBytes::new(py, packet)))
}

/// `packets` as TUN writes `(frame, count, size)`: runs of same-flow TCP segments merged into
/// super-packets, everything else behind a zero `virtio_net_hdr`; `size` is the IP bytes of
/// the `count` packets a frame carries.
#[pyfunction]
#[pyo3(signature = (packets, verify_checksums = false))]
fn coalesce<'py>(
    py: Python<'py>,
    packets: &Bound<'py, PyAny>,
    verify_checksums: bool,
) -> PyResult<Vec<(Bound<'py, PyBytes>, usize, usize)>> {
    let objects = packets.try_iter()?.collect::<PyResult<Vec<_>>>()?;
    let packets = objects.iter().map(bytes_of).collect::<PyResult<Vec<_>>>()?;
    let writes = py.detach(|| offload::coalesce(&packets, verify_checksums));
    Ok(writes
        .into_iter()
        .map(|write| (PyBytes::new(py, &write.frame), write.count, write.size))
        .collect())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("OffloadError", m.py().get_type::<OffloadError>())?;
    m.add_function(wrap_pyfunction!(split, m)?)?;
    m.add_function(wrap_pyfunction!(coalesce, m)?)?;
    Ok(())
}
