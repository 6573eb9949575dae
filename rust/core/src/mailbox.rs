//! Per-object mailbox (issue 3). Under construction.
