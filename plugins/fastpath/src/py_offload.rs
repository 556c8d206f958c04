//! PyO3 bindings of [`crate::offload`] (placeholder: filled in with the offload module).

use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
