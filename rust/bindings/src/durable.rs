//! Python bindings for `stead_core::seq_queue`: asyncio futures that wait for
//! commit sequence numbers to become durable.
//!
//! The commit waiter hands the hot path `future_for` as this class's bound
//! method, so a durable call creates and registers its future without a
//! Python frame, and a group commit resolves its waiters in one native loop.

use pyo3::exceptions::PyTypeError;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::{intern, PyTraverseError};
use stead_core::seq_queue::SeqQueue;

/// Futures waiting for commit sequence numbers to become durable.
#[pyclass(module = "stead._core")]
pub struct DurableFutures {
    waiting: SeqQueue<Py<PyAny>>,
    future_type: Py<PyAny>,
    /// `{"loop": loop}`, reused for every future (only read by the constructor).
    future_kwargs: Py<PyDict>,
    durable: u64,
    immediate: bool,
    failure: Option<Py<PyAny>>,
}

#[pymethods]
impl DurableFutures {
    #[new]
    #[pyo3(signature = (future_type, r#loop, durable, immediate = false))]
    fn new(
        future_type: Bound<'_, PyAny>,
        r#loop: Bound<'_, PyAny>,
        durable: u64,
        immediate: bool,
    ) -> PyResult<Self> {
        let py = future_type.py();
        let future_kwargs = PyDict::new(py);
        future_kwargs.set_item("loop", r#loop)?;
        Ok(DurableFutures {
            waiting: SeqQueue::new(),
            future_type: future_type.unbind(),
            future_kwargs: future_kwargs.unbind(),
            durable,
            immediate,
            failure: None,
        })
    }

    /// The highest sequence number released so far.
    #[getter]
    fn durable(&self) -> u64 {
        self.durable
    }

    /// A future resolved once `seq` is durable, or `None` if it already is.
    fn future_for(&mut self, py: Python<'_>, seq: u64) -> PyResult<Option<Py<PyAny>>> {
        if let Some(failure) = &self.failure {
            return Err(PyErr::from_value(failure.bind(py).clone()));
        }
        if seq <= self.durable || self.immediate {
            return Ok(None);
        }
        let future = self
            .future_type
            .bind(py)
            .call((), Some(self.future_kwargs.bind(py)))?
            .unbind();
        self.waiting.push(seq, future.clone_ref(py));
        Ok(Some(future))
    }

    /// Resolve the futures waiting for a number `<= durable` (the oldest
    /// `limit` of them, if given); how many were resolved.
    #[pyo3(signature = (durable, limit = None))]
    fn release(&mut self, py: Python<'_>, durable: u64, limit: Option<usize>) -> PyResult<usize> {
        self.durable = self.durable.max(durable);
        let released: Vec<Py<PyAny>> = self
            .waiting
            .release_at_most(self.durable, limit.unwrap_or(usize::MAX))
            .collect();
        settle_all(py, released, intern!(py, "set_result"), py.None().bind(py))
    }

    /// Fail every waiting future with `error`, and every later `future_for`.
    fn fail(&mut self, py: Python<'_>, error: Bound<'_, PyAny>) -> PyResult<usize> {
        if !error.is_instance_of::<pyo3::exceptions::PyBaseException>() {
            return Err(PyTypeError::new_err("fail() takes an exception instance"));
        }
        self.failure = Some(error.clone().unbind());
        let failed: Vec<Py<PyAny>> = self.waiting.drain_all().collect();
        settle_all(py, failed, intern!(py, "set_exception"), &error)
    }

    /// Futures whose number is already durable but not yet resolved (left by a
    /// `release` with a `limit`).
    #[getter]
    fn ready(&self) -> usize {
        self.waiting.count_at_or_below(self.durable)
    }

    fn __len__(&self) -> usize {
        self.waiting.len()
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for future in self.waiting.iter() {
            visit.call(future)?;
        }
        visit.call(&self.future_type)?;
        visit.call(&self.future_kwargs)?;
        if let Some(failure) = &self.failure {
            visit.call(failure)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.waiting.drain_all().for_each(drop);
        self.failure = None;
    }
}

/// Call `method(value)` on every future, skipping those already done (a
/// cancelled waiter). Every future is settled even if one call fails; the
/// first unexpected error is returned after.
fn settle_all(
    py: Python<'_>,
    futures: Vec<Py<PyAny>>,
    method: &Bound<'_, pyo3::types::PyString>,
    value: &Bound<'_, PyAny>,
) -> PyResult<usize> {
    let mut first_error = None;
    let mut settled = 0;
    for future in futures {
        let future = future.bind(py);
        match future.call_method1(method, (value,)) {
            Ok(_) => settled += 1,
            Err(error) => {
                let done = future
                    .call_method0(intern!(py, "done"))
                    .and_then(|done| done.is_truthy())
                    .unwrap_or(false);
                if !done && first_error.is_none() {
                    first_error = Some(error);
                }
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(settled),
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<DurableFutures>()
}
