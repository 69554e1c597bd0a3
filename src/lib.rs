//! queue-worker: an SQS worker for Amazon ECS that holds task scale-in protection while jobs run.
//!
//! - [`agent_double`]: a faithful stand-in for the ECS agent's task-protection and metadata endpoints (tests, demo).
pub mod agent_double;
