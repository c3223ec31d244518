//! Account names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The most characters of a rejected input quoted back in an [`AccountError`].
const MAX_QUOTED: usize = 16;

/// An account name: one ASCII letter, stored upper-case.
///
/// The default bank holds accounts `A` to `J` (see [`Account::default_set`]); any letter
/// `A`–`Z` is a well-formed account, and a bank or script built with another account set
/// decides which of them exist. Parsing is case-insensitive and ignores surrounding
/// whitespace:
///
/// ```
/// use bank_app::Account;
/// let a: Account = " b ".parse().unwrap();
/// assert_eq!(a.as_char(), 'B');
/// assert!("BB".parse::<Account>().is_err());
/// assert!("7".parse::<Account>().is_err());
/// ```
///
/// On the wire (serde) an account is a `char`; deserializing anything but a letter fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "char", into = "char")]
pub struct Account(u8);

impl Account {
    /// Account `A`.
    pub const A: Account = Account(b'A');
    /// Account `J`, the last of the default set.
    pub const J: Account = Account(b'J');

    /// The account named by `letter` (either case).
    pub fn new(letter: char) -> Result<Account, AccountError> {
        if letter.is_ascii_alphabetic() {
            Ok(Account(letter.to_ascii_uppercase() as u8))
        } else {
            Err(AccountError::new(&letter.to_string()))
        }
    }

    /// The account's letter, upper-case.
    pub fn as_char(self) -> char {
        char::from(self.0)
    }

    /// The default accounts, `A` to `J`, in order.
    pub fn default_set() -> impl Iterator<Item = Account> + Clone {
        (Account::A.0..=Account::J.0).map(Account)
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_char())
    }
}

impl FromStr for Account {
    type Err = AccountError;

    fn from_str(s: &str) -> Result<Account, AccountError> {
        let mut chars = s.trim().chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Account::new(c).map_err(|_| AccountError::new(s)),
            _ => Err(AccountError::new(s)),
        }
    }
}

impl TryFrom<char> for Account {
    type Error = AccountError;

    fn try_from(c: char) -> Result<Account, AccountError> {
        Account::new(c)
    }
}

impl From<Account> for char {
    fn from(a: Account) -> char {
        a.as_char()
    }
}

/// Text that does not name an account.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("invalid account {input:?}: expected one letter A-Z")]
pub struct AccountError {
    /// The rejected input (at most 16 characters of it).
    pub input: String,
}

impl AccountError {
    fn new(input: &str) -> AccountError {
        AccountError {
            input: input.chars().take(MAX_QUOTED).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_case_insensitively() {
        assert_eq!("a".parse::<Account>().unwrap(), Account::A);
        assert_eq!("J".parse::<Account>().unwrap(), Account::J);
        assert_eq!(" c\t".parse::<Account>().unwrap().to_string(), "C");
        assert_eq!(Account::new('z').unwrap().as_char(), 'Z');
    }

    #[test]
    fn rejects_non_letters() {
        for bad in ["", " ", "AB", "1", "é", "-", "A B", "ÄÖ"] {
            let err = bad.parse::<Account>().unwrap_err();
            assert!(
                err.to_string().contains("expected one letter A-Z"),
                "{bad:?}"
            );
        }
        let long = "x".repeat(1000);
        assert_eq!(long.parse::<Account>().unwrap_err().input.len(), MAX_QUOTED);
    }

    #[test]
    fn default_set_is_a_to_j() {
        let s: String = Account::default_set().map(Account::as_char).collect();
        assert_eq!(s, "ABCDEFGHIJ");
    }

    #[test]
    fn serde_validates() {
        let bytes = postcard::to_stdvec(&Account::J).unwrap();
        assert_eq!(postcard::from_bytes::<Account>(&bytes).unwrap(), Account::J);
        let bad = postcard::to_stdvec(&'7').unwrap();
        assert!(postcard::from_bytes::<Account>(&bad).is_err());
        let lower = postcard::to_stdvec(&'j').unwrap();
        assert_eq!(postcard::from_bytes::<Account>(&lower).unwrap(), Account::J);
    }
}
