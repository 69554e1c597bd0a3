//! The soak: many messages, failing jobs and restarts, checked by exact accounting.
