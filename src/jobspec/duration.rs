//! Go's `time.ParseDuration`, which Nomad applies to every duration attribute: `"30s"`,
//! `"1h30m"`, `"1.5h"`, `"250ms"` become integer nanoseconds in the API JSON.

const NS: u64 = 1;
const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
const M: u64 = 60 * S;
const H: u64 = 60 * M;
const LIMIT: u64 = 1 << 63;

/// Parses a Go duration string into nanoseconds; the error is a short reason.
pub(crate) fn parse_go_duration(input: &str) -> Result<i64, String> {
    let invalid = || format!("invalid duration {input:?}");
    let (neg, mut rest) = match input.as_bytes().first() {
        Some(b'-') => (true, &input[1..]),
        Some(b'+') => (false, &input[1..]),
        _ => (false, input),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let (value, after) = parse_component(rest).ok_or_else(invalid)?;
        rest = after;
        total = total
            .checked_add(value)
            .filter(|t| *t <= LIMIT)
            .ok_or_else(invalid)?;
    }
    if neg {
        // -(1<<63) is representable; wrapping_neg handles it exactly.
        Ok((total as i64).wrapping_neg())
    } else if total > LIMIT - 1 {
        Err(invalid())
    } else {
        Ok(total as i64)
    }
}

/// One `<number>[.<fraction>]<unit>` group: its value in ns and the rest of the input.
fn parse_component(s: &str) -> Option<(u64, &str)> {
    let first = *s.as_bytes().first()?;
    if !(first == b'.' || first.is_ascii_digit()) {
        return None;
    }
    let (int_part, mut rest) = leading_int(s)?;
    let had_int = rest.len() != s.len();
    let (mut frac, mut scale, mut had_frac) = (0u64, 1f64, false);
    if let Some(after_dot) = rest.strip_prefix('.') {
        let (f, sc, after) = leading_fraction(after_dot);
        had_frac = after.len() != after_dot.len();
        (frac, scale, rest) = (f, sc, after);
    }
    if !had_int && !had_frac {
        return None;
    }
    let unit_len = rest
        .find(|c: char| c == '.' || c.is_ascii_digit())
        .unwrap_or(rest.len());
    if unit_len == 0 {
        return None;
    }
    let unit = unit_nanos(&rest[..unit_len])?;
    rest = &rest[unit_len..];
    if int_part > LIMIT / unit {
        return None;
    }
    let mut value = int_part * unit;
    if frac > 0 {
        // Same float arithmetic as Go, so "1.1s" rounds identically.
        value = value.checked_add((frac as f64 * (unit as f64 / scale)) as u64)?;
        if value > LIMIT {
            return None;
        }
    }
    Some((value, rest))
}

fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => NS,
        "us" | "\u{b5}s" | "\u{3bc}s" => US,
        "ms" => MS,
        "s" => S,
        "m" => M,
        "h" => H,
        _ => return None,
    })
}

/// Leading decimal digits as an integer; `None` on overflow past 2^63.
fn leading_int(s: &str) -> Option<(u64, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let mut value: u64 = 0;
    for b in s[..digits].bytes() {
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        if value > LIMIT {
            return None;
        }
    }
    Some((value, &s[digits..]))
}

/// Leading fraction digits: value, 10^(digits kept), rest. Digits past u64 precision are
/// consumed but ignored, as Go does.
fn leading_fraction(s: &str) -> (u64, f64, &str) {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (mut value, mut scale, mut overflow) = (0u64, 1f64, false);
    for b in s[..digits].bytes() {
        if overflow {
            continue;
        }
        match value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
        {
            Some(v) if v <= LIMIT => {
                value = v;
                scale *= 10.0;
            }
            _ => overflow = true,
        }
    }
    (value, scale, &s[digits..])
}

#[cfg(test)]
mod tests {
    use super::parse_go_duration as p;

    #[test]
    fn units_and_combinations() {
        assert_eq!(p("30s"), Ok(30_000_000_000));
        assert_eq!(p("10m"), Ok(600_000_000_000));
        assert_eq!(p("1h"), Ok(3_600_000_000_000));
        assert_eq!(p("1h30m"), Ok(5_400_000_000_000));
        assert_eq!(p("250ms"), Ok(250_000_000));
        assert_eq!(p("5us"), Ok(5_000));
        assert_eq!(p("5µs"), Ok(5_000));
        assert_eq!(p("7ns"), Ok(7));
        assert_eq!(p("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(p(".5s"), Ok(500_000_000));
        assert_eq!(p("-2s"), Ok(-2_000_000_000));
        assert_eq!(p("+2s"), Ok(2_000_000_000));
        assert_eq!(p("0"), Ok(0));
        assert_eq!(p("2562047h47m16.854775807s"), Ok(i64::MAX));
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "",
            "s",
            "10",
            "1d",
            "1.s.",
            "-",
            "1hh",
            ".s",
            "9223372036854775808ns",
        ] {
            assert!(p(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
