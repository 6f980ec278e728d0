//! Parsing of the human units used in policies, the system config and the CLI.
//!
//! Sizes are binary (`K` = 1024): `512K`, `64M`, `1G`, `1.5G`, `2GiB`, or a plain number of
//! bytes. Durations: `500ms`, `10s`, `2m`, `1h`, or a plain number of seconds (`1.5`).
//! Zero, negative values, overflow and unknown units are errors with a one-line reason.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("empty value")]
    Empty,
    #[error("must be greater than zero")]
    Zero,
    #[error("must not be negative")]
    Negative,
    #[error("not a number: {0:?}")]
    NotANumber(String),
    #[error("unknown unit {unit:?} (use {expected})")]
    UnknownUnit { unit: String, expected: &'static str },
    #[error("too large (at most {max})")]
    Overflow { max: String },
    #[error("must be between 0.01 and {MAX_CORES} cores")]
    CoresOutOfRange,
}

/// A hard ceiling on CPU bandwidth.
pub const MAX_CORES: u64 = 1024;

const SIZE_UNITS: &str = "B, K, M, G, T (KiB, MiB, ... also accepted)";
const DURATION_UNITS: &str = "ms, s, m, h";

/// Split `"1.5G"` into `("1.5", "G")`.
fn split_number(s: &str) -> Result<(&str, &str), UnitError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(UnitError::Empty);
    }
    if s.starts_with('-') {
        return Err(UnitError::Negative);
    }
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    if num.is_empty() {
        return Err(UnitError::NotANumber(s.to_string()));
    }
    Ok((num, unit.trim()))
}

/// Multiply a decimal string by an integer factor without going through f64 for integers,
/// so `"9223372036854775807"` is exact and overflow is detected.
fn scale(num: &str, factor: u128, max: u128, max_text: impl Fn() -> String) -> Result<u128, UnitError> {
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() || frac_part.contains('.') {
        return Err(UnitError::NotANumber(num.to_string()));
    }
    let overflow = || UnitError::Overflow { max: max_text() };
    let mut value: u128 = 0;
    for c in int_part.chars() {
        let d = u128::from(c.to_digit(10).ok_or_else(|| UnitError::NotANumber(num.to_string()))?);
        value = value.checked_mul(10).and_then(|v| v.checked_add(d)).ok_or_else(overflow)?;
        if value > max {
            return Err(overflow());
        }
    }
    let mut total = value.checked_mul(factor).ok_or_else(overflow)?;
    // Fractional part: at most 9 digits are meaningful for our factors.
    let mut denom: u128 = 1;
    let mut frac: u128 = 0;
    for c in frac_part.chars().take(9) {
        let d = u128::from(c.to_digit(10).ok_or_else(|| UnitError::NotANumber(num.to_string()))?);
        frac = frac * 10 + d;
        denom *= 10;
    }
    total = total.checked_add(frac * factor / denom).ok_or_else(overflow)?;
    if total > max {
        return Err(overflow());
    }
    Ok(total)
}

/// Parse a size in bytes. Zero is rejected: no limit in this tool means "nothing allowed".
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let (num, unit) = split_number(s)?;
    let factor: u128 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(UnitError::UnknownUnit { unit: unit.to_string(), expected: SIZE_UNITS }),
    };
    // i64::MAX keeps every value representable in cgroup files and rlimits.
    let max = i64::MAX as u128;
    let v = scale(num, factor, max, || "8E".to_string())?;
    if v == 0 {
        return Err(UnitError::Zero);
    }
    Ok(v as u64)
}

/// Parse a duration. Zero is rejected.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let (num, unit) = split_number(s)?;
    let factor_ms: u128 = match unit {
        "ms" => 1,
        "" | "s" | "sec" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(UnitError::UnknownUnit { unit: unit.to_string(), expected: DURATION_UNITS }),
    };
    // One year is far beyond any sane limit and keeps arithmetic on Instants safe.
    let max_ms: u128 = 365 * 24 * 3_600_000;
    let ms = scale(num, factor_ms, max_ms, || "365 days".to_string())?;
    if ms == 0 {
        return Err(UnitError::Zero);
    }
    Ok(Duration::from_millis(ms as u64))
}

/// Parse a positive count (pids, open files).
pub fn parse_count(s: &str, max: u64) -> Result<u64, UnitError> {
    let (num, unit) = split_number(s)?;
    if !unit.is_empty() || num.contains('.') {
        return Err(UnitError::NotANumber(s.trim().to_string()));
    }
    let v = scale(num, 1, u128::from(max), || max.to_string())?;
    if v == 0 {
        return Err(UnitError::Zero);
    }
    Ok(v as u64)
}

/// Parse CPU bandwidth in cores (`0.5`, `2`) into millicores, from 0.01 to [`MAX_CORES`].
pub fn parse_cores(s: &str) -> Result<u64, UnitError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(UnitError::Empty);
    }
    let cores: f64 = s.parse().map_err(|_| UnitError::NotANumber(s.to_string()))?;
    // NaN and the infinities fail this too
    if !(0.01..=MAX_CORES as f64).contains(&cores) {
        return Err(UnitError::CoresOutOfRange);
    }
    Ok((cores * 1000.0).round() as u64)
}

/// Render bytes the way a person would write them in a policy (`1G`, `64M`, `1536K`).
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Render a duration as seconds (`1.5s`) or milliseconds (`250ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else if ms >= 1000 {
        format!("{}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1"), Ok(1));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size(" 2 m "), Ok(2 << 20));
    }

    #[test]
    fn bad_sizes() {
        assert_eq!(parse_size("0"), Err(UnitError::Zero));
        assert_eq!(parse_size("0G"), Err(UnitError::Zero));
        assert_eq!(parse_size("-1G"), Err(UnitError::Negative));
        assert_eq!(parse_size(""), Err(UnitError::Empty));
        assert!(matches!(parse_size("1Q"), Err(UnitError::UnknownUnit { .. })));
        assert!(matches!(parse_size("G"), Err(UnitError::NotANumber(_))));
        assert!(matches!(parse_size("1.2.3M"), Err(UnitError::NotANumber(_))));
        assert!(matches!(parse_size("99999999999999999999999"), Err(UnitError::Overflow { .. })));
        assert!(matches!(parse_size("9000000T"), Err(UnitError::Overflow { .. })));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Err(UnitError::Zero));
        assert_eq!(parse_duration("0.0001"), Err(UnitError::Zero));
        assert_eq!(parse_duration("-3"), Err(UnitError::Negative));
        assert!(matches!(parse_duration("3d"), Err(UnitError::UnknownUnit { .. })));
        assert!(matches!(parse_duration("100000h"), Err(UnitError::Overflow { .. })));
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("64", 1000), Ok(64));
        assert_eq!(parse_count("0", 1000), Err(UnitError::Zero));
        assert!(matches!(parse_count("1001", 1000), Err(UnitError::Overflow { .. })));
        assert!(matches!(parse_count("1.5", 1000), Err(UnitError::NotANumber(_))));
        assert!(matches!(parse_count("10k", 1000), Err(UnitError::NotANumber(_))));
    }

    #[test]
    fn formatting_round_trips() {
        for s in ["1G", "64M", "1536K", "7"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(60)), "60s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn cores() {
        assert_eq!(parse_cores("1"), Ok(1000));
        assert_eq!(parse_cores(" 0.5 "), Ok(500));
        assert_eq!(parse_cores("0.01"), Ok(10));
        assert_eq!(parse_cores("1024"), Ok(1_024_000));
        for out in ["0", "0.001", "-1", "1025", "1e9", "NaN", "inf", "-inf"] {
            assert_eq!(parse_cores(out), Err(UnitError::CoresOutOfRange), "{out}");
        }
        assert_eq!(parse_cores("half"), Err(UnitError::NotANumber("half".into())));
        assert_eq!(parse_cores(""), Err(UnitError::Empty));
        assert_eq!(UnitError::CoresOutOfRange.to_string(), "must be between 0.01 and 1024 cores");
    }
}
