//! Drills: SQS faults (through the fault-injecting proxy) and agent faults.
