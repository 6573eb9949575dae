//! Python bindings for `stead_core::mailbox`.

use pyo3::prelude::*;
use stead_core::mailbox::Mailbox as CoreMailbox;

use crate::errors::to_py_err;

/// Per-object FIFO of event tokens enforcing one running event per object.
#[pyclass(module = "stead._core", frozen)]
pub struct Mailbox {
    inner: CoreMailbox,
}

#[pymethods]
impl Mailbox {
    #[new]
    #[pyo3(signature = (max_pending = 1000, shards = 64))]
    fn new(max_pending: usize, shards: usize) -> PyResult<Self> {
        let inner = CoreMailbox::new(max_pending, shards).map_err(to_py_err)?;
        Ok(Mailbox { inner })
    }

    fn push(&self, object_id: &[u8], token: u64) -> PyResult<bool> {
        self.inner.push(object_id, token).map_err(to_py_err)
    }

    fn finish(&self, object_id: &[u8]) -> Option<u64> {
        self.inner.finish(object_id)
    }

    fn cancel(&self, object_id: &[u8], token: u64) -> bool {
        self.inner.cancel(object_id, token)
    }

    fn depth(&self, object_id: &[u8]) -> usize {
        self.inner.depth(object_id)
    }

    fn is_idle(&self, object_id: &[u8]) -> bool {
        self.inner.is_idle(object_id)
    }

    fn state(&self, object_id: &[u8]) -> &'static str {
        self.inner.state(object_id).as_str()
    }

    fn total_depth(&self) -> usize {
        self.inner.total_depth()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Mailbox>()
}
