//! Maps `stead_core::Error` onto the one exception hierarchy, which lives in
//! Python (`stead.errors`) so that Python code and Rust raise the same classes.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use stead_core::Error;

/// Raise the `stead.errors` class named `class_name` with `message`.
fn stead_error(class_name: &str, message: String) -> PyErr {
    Python::attach(|py| {
        let class = py
            .import("stead.errors")
            .and_then(|module| module.getattr(class_name));
        match class {
            Ok(class) => match class.call1((message.clone(),)) {
                Ok(instance) => PyErr::from_value(instance),
                Err(err) => err,
            },
            // stead.errors must import; if it cannot, still surface the message.
            Err(_) => PyValueError::new_err(message),
        }
    })
}

/// Convert a core error into the matching Python exception.
pub fn to_py_err(error: Error) -> PyErr {
    let message = error.to_string();
    match error {
        Error::Io { .. } | Error::InjectedFault | Error::Closed(_) => {
            stead_error("StorageError", message)
        }
        Error::Corruption { .. } => stead_error("CorruptionError", message),
        Error::Locked { .. } => stead_error("DataDirLockedError", message),
        Error::Limit(_) => stead_error("LimitError", message),
        Error::Overloaded { .. } => stead_error("OverloadedError", message),
        Error::InvalidArgument(_) => PyValueError::new_err(message),
    }
}
