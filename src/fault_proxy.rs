//! A fault-injecting proxy in front of an SQS-compatible server (test and drill tool).
