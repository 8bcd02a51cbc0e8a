//! A strict validator for Kubernetes resource quantities (`5m`, `64Mi`, `1e3`, `0.5`).
//!
//! The grammar follows apimachinery's `resource.Quantity`: an unsigned decimal number followed by a
//! binary-SI suffix (`Ki`..`Ei`), a decimal-SI suffix (`n`, `u`, `m`, none, `k`, `M`, `G`, `T`, `P`, `E`)
//! or a decimal exponent (`e3`, `E-2`). Negative values are rejected because the apiserver refuses
//! negative resource requirements, and a rejected pod would break a deploy.

use std::{cmp::Ordering, fmt, str::FromStr};

/// Longest annotation value we bother parsing; real quantities are a handful of characters.
const MAX_LEN: usize = 64;

/// A validated, non-negative quantity. Keeps the original text (that is what goes into the pod) and
/// its value in nano-units (rounded up, as Kubernetes rounds sub-nano precision) for comparisons.
#[derive(Debug, Clone)]
pub struct Quantity {
    text: String,
    nanos: u128,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("is negative")]
    Negative,
    #[error("has no digits")]
    NoDigits,
    #[error("has an unknown suffix {0:?}")]
    BadSuffix(String),
    #[error("is too large")]
    TooLarge,
}

impl Quantity {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// As the text it was given: that is what goes into the pod.
impl serde::Serialize for Quantity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let nanos = parse_nanos(s)?;
        Ok(Quantity {
            text: s.to_owned(),
            nanos,
        })
    }
}

/// Scale of a suffix: value = number * 2^bin * 10^dec.
struct Scale {
    bin: u32,
    dec: i32,
}

fn parse_nanos(s: &str) -> Result<u128, QuantityError> {
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(QuantityError::TooLong);
    }
    let rest = match s.as_bytes()[0] {
        b'-' => return Err(QuantityError::Negative),
        b'+' => &s[1..],
        _ => s,
    };
    let number_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, suffix) = rest.split_at(number_len);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) if !f.contains('.') => (i, f),
        Some(_) => return Err(QuantityError::BadSuffix(number.to_owned())),
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(QuantityError::NoDigits);
    }
    let scale = parse_suffix(suffix)?;

    // mantissa = all digits without the dot; value = mantissa * 10^(dec - frac_len) * 2^bin.
    let mut mantissa: u128 = 0;
    for b in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(b - b'0')))
            .ok_or(QuantityError::TooLarge)?;
    }
    let frac_len = i32::try_from(frac_part.len()).map_err(|_| QuantityError::TooLong)?;
    // Work in nano-units: shift the decimal exponent by 9.
    let exp10 = scale.dec + 9 - frac_len;
    let scaled = mantissa
        .checked_mul(
            2u128
                .checked_pow(scale.bin)
                .ok_or(QuantityError::TooLarge)?,
        )
        .ok_or(QuantityError::TooLarge)?;
    if exp10 >= 0 {
        let factor = 10u128
            .checked_pow(exp10.unsigned_abs())
            .ok_or(QuantityError::TooLarge)?;
        scaled.checked_mul(factor).ok_or(QuantityError::TooLarge)
    } else {
        // Finer than a nano-unit: round up like Kubernetes does; beyond 10^38 it is all zero digits.
        match 10u128.checked_pow(exp10.unsigned_abs()) {
            Some(div) => Ok(scaled.div_ceil(div)),
            None => Ok(u128::from(scaled != 0)),
        }
    }
}

fn parse_suffix(suffix: &str) -> Result<Scale, QuantityError> {
    let scale = |bin, dec| Ok(Scale { bin, dec });
    match suffix {
        "Ki" => scale(10, 0),
        "Mi" => scale(20, 0),
        "Gi" => scale(30, 0),
        "Ti" => scale(40, 0),
        "Pi" => scale(50, 0),
        "Ei" => scale(60, 0),
        "n" => scale(0, -9),
        "u" => scale(0, -6),
        "m" => scale(0, -3),
        "" => scale(0, 0),
        "k" => scale(0, 3),
        "M" => scale(0, 6),
        "G" => scale(0, 9),
        "T" => scale(0, 12),
        "P" => scale(0, 15),
        "E" => scale(0, 18),
        _ => {
            // Decimal exponent: `e` or `E` then an optionally signed integer.
            let bad = || QuantityError::BadSuffix(suffix.to_owned());
            let exp = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))
                .ok_or_else(bad)?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            // Beyond +-1000 the value is either absurd or zero; treat both as errors rather than guess.
            let dec: i32 = exp.parse().map_err(|_| QuantityError::TooLarge)?;
            if dec.abs() > 1000 {
                return Err(QuantityError::TooLarge);
            }
            scale(0, dec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nanos(s: &str) -> u128 {
        s.parse::<Quantity>().unwrap().nanos
    }

    #[test]
    fn accepts_kubernetes_forms() {
        assert_eq!(nanos("5m"), 5_000_000);
        assert_eq!(nanos("1"), 1_000_000_000);
        assert_eq!(nanos("+1"), 1_000_000_000);
        assert_eq!(nanos("0.5"), 500_000_000);
        assert_eq!(nanos(".5"), 500_000_000);
        assert_eq!(nanos("5."), 5_000_000_000);
        assert_eq!(nanos("16Mi"), 16 * 1024 * 1024 * 1_000_000_000);
        assert_eq!(nanos("1Gi"), nanos("1073741824"));
        assert_eq!(nanos("1e3"), nanos("1k"));
        assert_eq!(nanos("1E3"), nanos("1000"));
        assert_eq!(nanos("1E"), nanos("1000000000000000000"));
        assert_eq!(nanos("2e-3"), nanos("2m"));
        assert_eq!(nanos("100n"), 100);
        assert_eq!(nanos("3u"), 3_000);
        assert_eq!(nanos("0"), 0);
        assert_eq!(nanos("1.5Ki"), 1536 * 1_000_000_000);
    }

    #[test]
    fn compares_across_suffixes() {
        let q = |s: &str| s.parse::<Quantity>().unwrap();
        assert_eq!(q("0.1"), q("100m"));
        assert!(q("64Mi") > q("64M"));
        assert!(q("1Gi") > q("1G"));
        assert!(q("500m") < q("1"));
    }

    #[test]
    fn rounds_sub_nano_up() {
        assert_eq!(nanos("0.1n"), 1);
        assert_eq!(nanos("1e-100"), 1);
        assert_eq!(nanos("0e-100"), 0);
    }

    #[test]
    fn rejects_bad_input() {
        let err = |s: &str| s.parse::<Quantity>().unwrap_err();
        assert_eq!(err(""), QuantityError::Empty);
        assert_eq!(err("-1"), QuantityError::Negative);
        assert_eq!(err("."), QuantityError::NoDigits);
        assert_eq!(err("Mi"), QuantityError::NoDigits);
        for bad in [
            "1K", "1ki", "1mi", "1 Mi", " 1", "1 ", "1..2", "1.2.3", "1e", "1e+", "1e1.5", "abc",
            "1Mi1", "1,5", "0x10", "1ee3", "١",
        ] {
            assert!(bad.parse::<Quantity>().is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(err("1e100000"), QuantityError::TooLarge);
        assert_eq!(
            err("999999999999999999999999999999999Ei"),
            QuantityError::TooLarge
        );
        assert_eq!(err(&"1".repeat(65)), QuantityError::TooLong);
    }

    #[test]
    fn keeps_original_text() {
        let q: Quantity = "+0.50Gi".parse().unwrap();
        assert_eq!(q.to_string(), "+0.50Gi");
    }
}
