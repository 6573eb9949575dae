//! `stead._core`: thin PyO3 bindings over `stead_core`.
//!
//! Each submodule only converts types, calls the core and maps errors; all
//! logic lives in `rust/core`.

use pyo3::prelude::*;

mod durable;
mod engine;
mod errors;
mod mailbox;
mod wheel;

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    durable::register(module)?;
    engine::register(module)?;
    mailbox::register(module)?;
    wheel::register(module)?;
    Ok(())
}
