//! Per-site resource drivers (issue 4).
