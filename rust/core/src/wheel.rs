//! Hierarchical timer wheel (issue 4). Under construction.
