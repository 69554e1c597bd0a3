//! Stand-in for the ECS agent endpoints (being written).
