//! Log-structured storage engine (issue 2). Under construction.
