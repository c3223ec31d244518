//! In-process transport (in progress).
