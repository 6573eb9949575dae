//! Python bindings for `stead_core::engine`: type conversion and error
//! mapping only. Batches cross the boundary as borrowed byte slices; blocking
//! calls (open/recovery, wait_durable, compact, close) release the GIL.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use stead_core::engine::{Durability, Engine as CoreEngine, ListOptions, Op, Options};
use stead_core::Error;

use crate::errors::to_py_err;

/// The log-structured storage engine of one data dir, or fully in memory.
#[pyclass(module = "stead._core", name = "Engine", frozen)]
pub struct Engine {
    inner: CoreEngine,
    data_dir: Option<String>,
}

type Pair<'py> = (Bound<'py, PyBytes>, Bound<'py, PyBytes>);

/// Collect `(key, value)` tuples, keeping the bytes objects alive so that the
/// batch can borrow their buffers without copying.
fn extract_puts<'py>(puts: Option<&Bound<'py, PyAny>>) -> PyResult<Vec<Pair<'py>>> {
    let Some(puts) = puts else {
        return Ok(Vec::new());
    };
    if let Ok(list) = puts.cast::<PyList>() {
        return list
            .iter()
            .map(|item| item.extract::<Pair<'py>>())
            .collect();
    }
    puts.try_iter()?
        .map(|item| item?.extract::<Pair<'py>>())
        .collect()
}

fn extract_keys<'py>(keys: Option<&Bound<'py, PyAny>>) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let Some(keys) = keys else {
        return Ok(Vec::new());
    };
    if let Ok(list) = keys.cast::<PyList>() {
        return list
            .iter()
            .map(|item| item.cast_into::<PyBytes>().map_err(Into::into))
            .collect();
    }
    keys.try_iter()?
        .map(|item| item?.cast_into::<PyBytes>().map_err(Into::into))
        .collect()
}

fn optional_vec(bytes: Option<&[u8]>) -> Option<Vec<u8>> {
    bytes.map(<[u8]>::to_vec)
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (
        data_dir, durability = "fsync", *, max_key_bytes = 2048, max_value_bytes = 2_097_152,
        cache_bytes = 67_108_864, segment_bytes = 67_108_864, compaction = true,
        read_only = false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        data_dir: Option<PathBuf>,
        durability: &str,
        max_key_bytes: usize,
        max_value_bytes: usize,
        cache_bytes: usize,
        segment_bytes: u64,
        compaction: bool,
        read_only: bool,
    ) -> PyResult<Self> {
        let durability = Durability::parse(durability).map_err(to_py_err)?;
        let opts = Options {
            durability,
            max_key_bytes,
            max_value_bytes,
            cache_bytes,
            segment_bytes,
            compaction,
            read_only,
        };
        let dir = data_dir.clone();
        let inner = py
            .detach(move || CoreEngine::open(dir.as_deref(), opts))
            .map_err(to_py_err)?;
        let data_dir = data_dir.map(|d| d.to_string_lossy().into_owned());
        Ok(Engine { inner, data_dir })
    }

    #[getter]
    fn data_dir(&self) -> Option<String> {
        self.data_dir.clone()
    }

    #[getter]
    fn durability(&self) -> &'static str {
        self.inner.durability().name()
    }

    #[pyo3(signature = (object_id, puts = None, deletes = None, *, delete_all = false, alarm = None, delete_alarm = false))]
    #[pyo3(
        text_signature = "(self, object_id, puts=(), deletes=(), *, delete_all=False, alarm=None, delete_alarm=False)"
    )]
    fn commit(
        &self,
        object_id: &[u8],
        puts: Option<&Bound<'_, PyAny>>,
        deletes: Option<&Bound<'_, PyAny>>,
        delete_all: bool,
        alarm: Option<i64>,
        delete_alarm: bool,
    ) -> PyResult<u64> {
        if alarm.is_some() && delete_alarm {
            return Err(to_py_err(Error::InvalidArgument(
                "pass either alarm or delete_alarm, not both".into(),
            )));
        }
        let puts = extract_puts(puts)?;
        let deletes = extract_keys(deletes)?;
        let mut ops = Vec::with_capacity(puts.len() + deletes.len() + 2);
        if delete_all {
            ops.push(Op::DeleteAll);
        }
        ops.extend(deletes.iter().map(|key| Op::Delete(key.as_bytes())));
        ops.extend(
            puts.iter()
                .map(|(key, value)| Op::Put(key.as_bytes(), value.as_bytes())),
        );
        if let Some(when) = alarm {
            ops.push(Op::SetAlarm(when));
        } else if delete_alarm {
            ops.push(Op::DeleteAlarm);
        }
        self.inner.commit(object_id, &ops).map_err(to_py_err)
    }

    /// Commit `{key: value or None}` (None deletes) as one batch: the shape a
    /// turn's pending writes already have, so the hot path builds no lists.
    fn commit_writes(&self, object_id: &[u8], writes: &Bound<'_, PyDict>) -> PyResult<u64> {
        let entries: Vec<(Bound<'_, PyBytes>, Option<Bound<'_, PyBytes>>)> = writes
            .iter()
            .map(|(key, value)| {
                let key = key.cast_into::<PyBytes>()?;
                let value = if value.is_none() {
                    None
                } else {
                    Some(value.cast_into::<PyBytes>()?)
                };
                Ok((key, value))
            })
            .collect::<PyResult<_>>()?;
        let ops: Vec<Op<'_>> = entries
            .iter()
            .map(|(key, value)| match value {
                Some(value) => Op::Put(key.as_bytes(), value.as_bytes()),
                None => Op::Delete(key.as_bytes()),
            })
            .collect();
        self.inner.commit(object_id, &ops).map_err(to_py_err)
    }

    fn durable_seq(&self) -> u64 {
        self.inner.durable_seq()
    }

    #[getter]
    fn failure(&self) -> Option<String> {
        self.inner.failure()
    }

    fn last_seq(&self) -> u64 {
        self.inner.last_seq()
    }

    fn wakeup_fd(&self) -> i32 {
        self.inner.wakeup_fd()
    }

    /// Seconds of already-durable work the consumer has still to start.
    fn consumer_backlog(&self, seconds: f64) -> PyResult<()> {
        if !(seconds >= 0.0 && seconds.is_finite()) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "backlog seconds must be finite and >= 0",
            ));
        }
        // Beyond what a Duration holds is "busy for ever" (the engine caps it).
        let backlog = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX);
        self.inner.consumer_backlog(backlog);
        Ok(())
    }

    fn drain_wakeup(&self) -> PyResult<u64> {
        self.inner.drain_wakeup().map_err(to_py_err)
    }

    #[pyo3(signature = (seq, timeout = None))]
    fn wait_durable(&self, py: Python<'_>, seq: u64, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
        py.detach(|| self.inner.wait_durable(seq, timeout))
            .map_err(to_py_err)
    }

    fn get<'py>(
        &self,
        py: Python<'py>,
        object_id: &[u8],
        key: &[u8],
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let value = self.inner.get(object_id, key).map_err(to_py_err)?;
        Ok(value.map(|v| PyBytes::new(py, &v)))
    }

    fn get_many<'py>(
        &self,
        py: Python<'py>,
        object_id: &[u8],
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let keys = extract_keys(Some(keys))?;
        let slices: Vec<&[u8]> = keys.iter().map(|key| key.as_bytes()).collect();
        let values = self.inner.get_many(object_id, &slices).map_err(to_py_err)?;
        PyList::new(
            py,
            values
                .iter()
                .map(|v| v.as_ref().map(|v| PyBytes::new(py, v))),
        )
    }

    #[pyo3(signature = (object_id, *, prefix = None, start = None, start_after = None, end = None, reverse = false, limit = None))]
    #[allow(clippy::too_many_arguments)]
    fn list<'py>(
        &self,
        py: Python<'py>,
        object_id: &[u8],
        prefix: Option<&[u8]>,
        start: Option<&[u8]>,
        start_after: Option<&[u8]>,
        end: Option<&[u8]>,
        reverse: bool,
        limit: Option<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let options = ListOptions {
            prefix: optional_vec(prefix),
            start: optional_vec(start),
            start_after: optional_vec(start_after),
            end: optional_vec(end),
            reverse,
            limit,
        };
        let entries = self.inner.list(object_id, &options).map_err(to_py_err)?;
        let tuples = entries
            .iter()
            .map(|(key, value)| PyTuple::new(py, [PyBytes::new(py, key), PyBytes::new(py, value)]))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, tuples)
    }

    #[pyo3(signature = (*, prefix = None, after = None, limit = None))]
    fn objects<'py>(
        &self,
        py: Python<'py>,
        prefix: Option<&[u8]>,
        after: Option<&[u8]>,
        limit: Option<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let ids = self.inner.objects(prefix, after, limit);
        PyList::new(py, ids.iter().map(|id| PyBytes::new(py, id)))
    }

    fn get_alarm(&self, object_id: &[u8]) -> Option<i64> {
        self.inner.get_alarm(object_id)
    }

    fn alarms<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let alarms = self.inner.alarms();
        let tuples = alarms
            .iter()
            .map(|(id, when)| (PyBytes::new(py, id), *when).into_pyobject(py))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, tuples)
    }

    fn compact(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.compact()).map_err(to_py_err)
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let dict = PyDict::new(py);
        let fields = [
            ("objects", s.objects),
            ("keys", s.keys),
            ("segments", s.segments),
            ("live_bytes", s.live_bytes),
            ("index_bytes", s.index_bytes),
            ("key_bytes", s.key_bytes),
            ("cache_bytes", s.cache_bytes),
            ("commits", s.commits),
            ("syncs", s.syncs),
            ("held_groups", s.held_groups),
            ("compactions", s.compactions),
            ("last_seq", s.last_seq),
            ("durable_seq", s.durable_seq),
        ];
        for (name, value) in fields {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }

    fn take_sync_latencies(&self) -> Vec<u64> {
        self.inner.take_sync_latencies()
    }

    fn fail_next_commit(&self) {
        self.inner.fail_next_commit();
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.close()).map_err(to_py_err)
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Engine>()
}
