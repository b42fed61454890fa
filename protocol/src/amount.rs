//! Amounts of NEAR in yoctoNEAR, with checked arithmetic only.

use serde::{Deserialize, Serialize};

/// An amount of yoctoNEAR (10^-24 NEAR).
///
/// There is deliberately no `Add`/`Sub` implementation: every operation is checked and
/// an overflow surfaces as [`AmountOverflow`], never as a wrap or a panic.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Amount(pub u128);

/// An amount computation overflowed or went below zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("amount arithmetic overflowed")]
pub struct AmountOverflow;

impl Amount {
    /// Zero yoctoNEAR.
    pub const ZERO: Amount = Amount(0);

    /// `self + other`, or an error on overflow.
    pub fn checked_add(self, other: Amount) -> Result<Amount, AmountOverflow> {
        self.0
            .checked_add(other.0)
            .map(Amount)
            .ok_or(AmountOverflow)
    }

    /// `self - other`, or an error if `other > self`.
    pub fn checked_sub(self, other: Amount) -> Result<Amount, AmountOverflow> {
        self.0
            .checked_sub(other.0)
            .map(Amount)
            .ok_or(AmountOverflow)
    }

    /// `self * n`, or an error on overflow.
    pub fn checked_mul(self, n: u128) -> Result<Amount, AmountOverflow> {
        self.0.checked_mul(n).map(Amount).ok_or(AmountOverflow)
    }

    /// `self - other`, or zero if `other > self`.
    #[must_use]
    pub fn saturating_sub(self, other: Amount) -> Amount {
        Amount(self.0.saturating_sub(other.0))
    }

    /// Sum of an iterator of amounts, checked.
    pub fn checked_sum<I: IntoIterator<Item = Amount>>(iter: I) -> Result<Amount, AmountOverflow> {
        iter.into_iter()
            .try_fold(Amount::ZERO, |acc, a| acc.checked_add(a))
    }

    /// Whether this amount is zero.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_ops_refuse_overflow_and_underflow() {
        assert_eq!(
            Amount(u128::MAX).checked_add(Amount(1)),
            Err(AmountOverflow)
        );
        assert_eq!(Amount(1).checked_sub(Amount(2)), Err(AmountOverflow));
        assert_eq!(Amount(u128::MAX).checked_mul(2), Err(AmountOverflow));
        assert_eq!(Amount(3).checked_mul(4), Ok(Amount(12)));
        assert_eq!(
            Amount::checked_sum([Amount(1), Amount(2), Amount(3)]),
            Ok(Amount(6))
        );
        assert_eq!(
            Amount::checked_sum([Amount(u128::MAX), Amount(1)]),
            Err(AmountOverflow)
        );
        assert_eq!(Amount(1).saturating_sub(Amount(5)), Amount::ZERO);
    }
}
