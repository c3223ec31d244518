//! The log: what a replica holds per slot.

use crate::types::{Ballot, Value};

#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) ballot: Ballot,
    pub(super) value: Value,
    pub(super) chosen: bool,
}
