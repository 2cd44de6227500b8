//! Sizes (`"512MB"`, `"1.5GiB"`) and durations (`"30m"`, `"1h30m"`, `90`) as operators write them.
//!
//! Pure functions: no I/O, so they cannot fail for outside reasons.

use std::time::Duration;

/// Parses a memory size into whole megabytes, the unit Nomad's `memory` takes.
///
/// Nomad and Terraform users mean binary units, so `GB` and `GiB` both multiply by 1024
/// (`"2GB"` → 2048). A bare number is already megabytes.
pub fn parse_size_mb(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let amount: f64 = number.parse().map_err(|_| {
        format!("`{text}` is not a size: expected a number with a unit, e.g. \"512MB\" or \"2GB\"")
    })?;
    let factor = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => 1.0,
        "G" | "GB" | "GIB" => 1024.0,
        "T" | "TB" | "TIB" => 1024.0 * 1024.0,
        "K" | "KB" | "KIB" => 1.0 / 1024.0,
        other => {
            return Err(format!(
                "`{text}` has an unknown size unit `{other}`: use MB, GB, MiB or GiB"
            ))
        }
    };
    let mb = amount * factor;
    if !mb.is_finite() || mb < 1.0 || mb.fract() != 0.0 {
        return Err(format!(
            "`{text}` is not a whole, positive number of megabytes"
        ));
    }
    if mb > u32::MAX as f64 {
        return Err(format!("`{text}` is too large"));
    }
    Ok(mb as u64)
}

/// Parses a Go-style duration (`"90s"`, `"30m"`, `"1h30m"`, `"500ms"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration: use e.g. \"90s\", \"30m\" or \"1h30m\"");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let amount: f64 = number.parse().map_err(|_| bad())?;
        let seconds = match unit {
            "ns" => amount / 1e9,
            "us" | "µs" => amount / 1e6,
            "ms" => amount / 1e3,
            "s" => amount,
            "m" => amount * 60.0,
            "h" => amount * 3600.0,
            "d" => amount * 86400.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(seconds).map_err(|_| bad())?;
        rest = next;
    }
    Ok(total)
}

/// Formats a duration the way Nomad's jobspec accepts it, using the largest exact unit.
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if duration.subsec_nanos() != 0 {
        return format!("{}ms", duration.as_millis());
    }
    if secs != 0 && secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs != 0 && secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// A `major.minor.patch` version, compared numerically (`"2.0.10"` > `"2.0.3"`).
pub fn parse_version(text: &str) -> Result<(u64, u64, u64), String> {
    let core = text.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next().unwrap_or(core);
    let mut parts = core.split('.').map(|p| p.parse::<u64>());
    let bad = || format!("`{text}` is not a version: expected e.g. \"1.9.4\"");
    let major = parts.next().and_then(|p| p.ok()).ok_or_else(bad)?;
    let minor = parts
        .next()
        .map(|p| p.map_err(|_| bad()))
        .transpose()?
        .unwrap_or(0);
    let patch = parts
        .next()
        .map(|p| p.map_err(|_| bad()))
        .transpose()?
        .unwrap_or(0);
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_to_megabytes() {
        for (text, mb) in [
            ("512MB", 512),
            ("2GB", 2048),
            ("1.5GiB", 1536),
            ("256", 256),
            ("1g", 1024),
            ("2048KB", 2),
        ] {
            assert_eq!(parse_size_mb(text), Ok(mb), "{text}");
        }
    }

    #[test]
    fn bad_sizes_are_refused() {
        for text in [
            "2GX", "", "MB", "0MB", "-1GB", "0.5MB", "1.2.3GB", "1e400GB",
        ] {
            assert!(parse_size_mb(text).is_err(), "{text} should be refused");
        }
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("10 minutes").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(format_duration(Duration::from_secs(5400)), "90m");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(45)), "45s");
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(parse_version("2.0.10").unwrap() > parse_version("2.0.3").unwrap());
        assert_eq!(parse_version("v1.9"), Ok((1, 9, 0)));
        assert_eq!(parse_version("2.0.3-beta.1"), Ok((2, 0, 3)));
        assert!(parse_version("two").is_err());
    }
}
