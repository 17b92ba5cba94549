//! Decimals with the range implied by their written precision: `1.5` stands for
//! [1.45, 1.55), `100` for [99.5, 100.5), `1.00e2` for [99.5, 100.5).

/// Parses a FHIR decimal (optionally with an exponent) into `(value, low, high)`.
pub fn parse_decimal(text: &str) -> Option<(f64, f64, f64)> {
    let text = text.trim();
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], text[at + 1..].parse::<i32>().ok()?),
        None => (text, 0),
    };
    let unsigned = mantissa.strip_prefix(['-', '+']).unwrap_or(mantissa);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
    if whole.is_empty()
        || !all_digits(whole)
        || !all_digits(fraction)
        || (unsigned.contains('.') && fraction.is_empty())
    {
        return None;
    }
    let value: f64 = text.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    let decimals = i32::try_from(fraction.len()).ok()? - exponent;
    // Bounds are built from the digits (mantissa·10 ± 5, one decimal further) and parsed, so
    // `0.4` gives exactly the f64 of `0.35` as its low bound, the same as a stored `0.35`.
    let digits = format!("{whole}{fraction}");
    let negative = mantissa.starts_with('-');
    let bounds = digits.parse::<i128>().ok().and_then(|magnitude| {
        let scaled = magnitude.checked_mul(10)?;
        let (below, above) = (scaled - 5, scaled + 5);
        let bound = |digits: i128| format!("{digits}e{}", -decimals - 1).parse::<f64>().ok();
        if negative {
            Some((-bound(above)?, -bound(below)?))
        } else {
            Some((bound(below)?, bound(above)?))
        }
    });
    let (low, high) = bounds.unwrap_or_else(|| {
        let half_step = 0.5 * 10_f64.powi(-decimals);
        (value - half_step, value + half_step)
    });
    Some((value, low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn precision_gives_the_range() {
        let (value, low, high) = parse_decimal("1.5").unwrap();
        assert!(close(value, 1.5) && close(low, 1.45) && close(high, 1.55));
        let (_, low, high) = parse_decimal("100").unwrap();
        assert!(close(low, 99.5) && close(high, 100.5));
        let (_, low, high) = parse_decimal("1.00e2").unwrap();
        assert!(close(low, 99.5) && close(high, 100.5));
        let (value, low, _) = parse_decimal("-0.25").unwrap();
        assert!(close(value, -0.25) && close(low, -0.255));
    }

    #[test]
    fn bounds_equal_the_written_neighbours() {
        assert_eq!(parse_decimal("0.4").unwrap().1, 0.35);
        assert_eq!(parse_decimal("-0.4").unwrap().2, -0.35);
        assert_eq!(parse_decimal("0.40").unwrap().1, 0.395);
    }

    #[test]
    fn rejects_non_decimals() {
        for bad in [
            "", "abc", "1.", ".5", "1,5", "1e", "NaN", "inf", "--1", "1.5.2",
        ] {
            assert_eq!(parse_decimal(bad), None, "{bad}");
        }
    }
}
