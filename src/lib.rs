//! queue-worker
