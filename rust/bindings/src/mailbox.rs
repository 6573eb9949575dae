//! Python bindings for `stead_core::mailbox`. Under construction.

use pyo3::prelude::*;

pub fn register(_module: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
