//! The bank ledger (in progress).
