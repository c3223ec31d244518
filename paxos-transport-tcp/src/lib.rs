//! TCP transport (in progress).
