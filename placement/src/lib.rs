//! Pure placement planner (see issue 6).
