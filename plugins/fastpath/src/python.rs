//! The `tunplug_fastpath._native` extension module: thin PyO3 bindings over the pure-Rust
//! modules. Every call that does per-packet work releases the GIL (`py.detach`) while it runs.

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    crate::transport::python::register(m)?;
    crate::py_offload::register(m)?;
    crate::py_plane::register(m)?;
    Ok(())
}
