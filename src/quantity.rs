//! Storage sizes written as Kubernetes quantities (`1Gi`, `500M`, `1.5Ti`, `2e9`).
//!
//! `k8s_openapi`'s `Quantity` is only the string; comparing a claim's request with a volume's
//! capacity needs the number. Hand-written because no maintained crate offers just this: the
//! grammar is small (resource.Quantity's), and only non-negative byte counts are needed.

use std::fmt;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity that is not a non-negative storage size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a storage size: {reason}")]
pub struct QuantityError {
    pub value: String,
    pub reason: &'static str,
}

/// Longest digit string accepted: beyond this a size cannot be exact in 128 bits.
const MAX_DIGITS: usize = 30;

/// Bytes of a storage quantity, rounded up to a whole byte as Kubernetes does
/// (`resource.Quantity.Value()`): `1Gi` is 1073741824, `1.5k` 1500, `100m` (0.1) 1.
pub fn bytes(quantity: &str) -> Result<u128, QuantityError> {
    let err = |reason| QuantityError {
        value: quantity.to_string(),
        reason,
    };
    let s = quantity.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('-') {
        return Err(err("negative"));
    }
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(err("no digits"));
    }
    if fraction.contains('.') {
        return Err(err("more than one decimal point"));
    }
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > MAX_DIGITS {
        return Err(err("too many digits"));
    }
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| err("not a number"))?
    };
    // value = mantissa * binary * 10^exp10 (exp10 may be negative)
    let mut exp10 = -(fraction.len() as i32);
    let binary: u128 = match suffix {
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => {
            exp10 += match suffix {
                "" => 0,
                "m" => -3,
                "k" => 3,
                "M" => 6,
                "G" => 9,
                "T" => 12,
                "P" => 15,
                "E" => 18,
                e if e.starts_with(['e', 'E']) => {
                    let exp = &e[1..];
                    let exp = exp.strip_prefix('+').unwrap_or(exp);
                    if exp.is_empty() {
                        return Err(err("bad exponent"));
                    }
                    exp.parse::<i32>().map_err(|_| err("bad exponent"))?
                }
                _ => return Err(err("unknown suffix")),
            };
            1
        }
    };
    let scaled = mantissa
        .checked_mul(binary)
        .ok_or_else(|| err("too large"))?;
    if exp10 >= 0 {
        let factor = 10u128
            .checked_pow(exp10 as u32)
            .ok_or_else(|| err("too large"))?;
        scaled.checked_mul(factor).ok_or_else(|| err("too large"))
    } else {
        let Some(divisor) = 10u128.checked_pow((-exp10) as u32) else {
            // Smaller than any divisor we can hold: a fraction of a byte, or nothing.
            return Ok(u128::from(scaled > 0));
        };
        Ok(scaled.div_ceil(divisor))
    }
}

/// [`bytes`] of a `Quantity`.
pub fn quantity_bytes(quantity: &Quantity) -> Result<u128, QuantityError> {
    bytes(&quantity.0)
}

/// A byte count for people: `1.5 GiB`, `512 B`.
pub struct HumanBytes(pub u128);

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let mut unit = 0;
        let mut value = self.0 as f64;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_suffixes() {
        assert_eq!(bytes("1Gi"), Ok(1 << 30));
        assert_eq!(bytes("1024Mi"), bytes("1Gi"));
        assert_eq!(bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(bytes("500M"), Ok(500_000_000));
        assert_eq!(bytes("1k"), Ok(1000));
        assert_eq!(bytes("1Ki"), Ok(1024));
        assert_eq!(bytes("16Ei"), Ok(16 << 60));
        assert_eq!(bytes("123"), Ok(123));
        assert_eq!(bytes("0"), Ok(0));
        assert_eq!(bytes("+5"), Ok(5));
    }

    #[test]
    fn exponents_and_fractions_round_up_to_a_byte() {
        assert_eq!(bytes("2e9"), Ok(2_000_000_000));
        assert_eq!(bytes("2E3"), Ok(2000));
        assert_eq!(bytes("1e+3"), Ok(1000));
        assert_eq!(bytes("15e-1"), Ok(2));
        assert_eq!(bytes("100m"), Ok(1));
        assert_eq!(bytes("1500m"), Ok(2));
        assert_eq!(bytes("0.5"), Ok(1));
        assert_eq!(bytes(".5k"), Ok(500));
        assert_eq!(bytes("1."), Ok(1));
        assert_eq!(bytes("1e-200"), Ok(1));
        assert_eq!(bytes("0e-200"), Ok(0));
    }

    #[test]
    fn what_is_not_a_size_is_an_error() {
        for bad in [
            "", "Gi", "-1Gi", "1GB", "1.2.3", "1e", "1e99999", "1x", "1 Gi", "1e400",
        ] {
            assert!(bytes(bad).is_err(), "{bad:?} was accepted");
        }
        let e = bytes("1GB").unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"1GB\" is not a storage size: unknown suffix"
        );
        assert!(bytes("99999999999999999999999999Ei").is_err());
    }

    #[test]
    fn human_bytes() {
        assert_eq!(HumanBytes(512).to_string(), "512 B");
        assert_eq!(HumanBytes(3 << 29).to_string(), "1.5 GiB");
    }
}
