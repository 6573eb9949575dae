//! Python bindings for `stead_core::wheel`.

use std::sync::Mutex;

use pyo3::prelude::*;
use stead_core::wheel::TimerWheel as CoreWheel;

/// Hierarchical hashed timer wheel of 1 ms resolution.
#[pyclass(module = "stead._core", frozen)]
pub struct TimerWheel {
    // A mutex, not `&mut self`: the wheel may be shared by loop threads later.
    inner: Mutex<CoreWheel>,
}

impl TimerWheel {
    fn wheel(&self) -> std::sync::MutexGuard<'_, CoreWheel> {
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

#[pymethods]
impl TimerWheel {
    #[new]
    fn new(now_ms: i64) -> Self {
        TimerWheel {
            inner: Mutex::new(CoreWheel::new(now_ms)),
        }
    }

    fn set(&self, token: u64, when_ms: i64) {
        self.wheel().set(token, when_ms);
    }

    fn set_many(&self, entries: Vec<(u64, i64)>) {
        let mut wheel = self.wheel();
        for (token, when_ms) in entries {
            wheel.set(token, when_ms);
        }
    }

    fn cancel(&self, token: u64) -> bool {
        self.wheel().cancel(token)
    }

    fn get(&self, token: u64) -> Option<i64> {
        self.wheel().get(token)
    }

    fn next_deadline(&self) -> Option<i64> {
        self.wheel().next_deadline()
    }

    fn advance(&self, now_ms: i64) -> Vec<u64> {
        self.wheel().advance(now_ms)
    }

    fn memory_bytes(&self) -> usize {
        self.wheel().memory_bytes()
    }

    fn __len__(&self) -> usize {
        self.wheel().len()
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<TimerWheel>()
}
