//! Durations and sizes as people write them, one parser each for both
//! binaries' flags and the route resources' fields, so `64Mi` or `1m30s`
//! means the same everywhere.
//!
//! - Durations: one or more of a whole number and a unit, `ms`, `s`, `m`
//!   or `h` (`250ms`, `30s`, `1m30s`); a bare number is seconds.
//! - Sizes, as Kubernetes quantities: a whole number of bytes, with a
//!   binary suffix `Ki`, `Mi`, `Gi`, `Ti` (powers of 1024) or a decimal one
//!   `k`, `M`, `G`, `T` (powers of 1000). A trailing `B` is allowed
//!   (`64KiB`, `10MB`), and `K` reads as `k`.

use std::time::Duration;

/// Why a duration or a size was not understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitError {
    /// Nothing, or something that does not start with a digit.
    NotANumber,
    /// A duration unit other than ms, s, m and h.
    DurationUnit,
    /// A size suffix that is not a Kubernetes quantity's.
    SizeSuffix,
    /// More than fits.
    TooLarge,
}

impl UnitError {
    /// The reason, to follow the value in a message.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotANumber => "must start with a whole number",
            Self::DurationUnit => "has an unknown unit; use ms, s, m or h",
            Self::SizeSuffix => "has an unknown suffix; use Ki, Mi, Gi, Ti, k, M, G or T",
            Self::TooLarge => "is too large",
        }
    }
}

impl std::fmt::Display for UnitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for UnitError {}

/// Parses a duration: `250ms`, `30s`, `5m`, `1h`, `1m30s`, or `30` (seconds).
pub fn duration(value: &str) -> Result<Duration, UnitError> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value.parse().map_err(|_| UnitError::TooLarge)?;
        return Ok(Duration::from_secs(secs));
    }
    let mut rest = value;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(UnitError::NotANumber);
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(UnitError::NotANumber);
        }
        let n: u64 = rest[..digits].parse().map_err(|_| UnitError::TooLarge)?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => n
                .checked_mul(60)
                .map(Duration::from_secs)
                .ok_or(UnitError::TooLarge)?,
            "h" => n
                .checked_mul(3600)
                .map(Duration::from_secs)
                .ok_or(UnitError::TooLarge)?,
            _ => return Err(UnitError::DurationUnit),
        };
        rest = &rest[unit..];
        total = total.checked_add(part).ok_or(UnitError::TooLarge)?;
    }
    Ok(total)
}

/// Parses a size in bytes: `4096`, `64Ki`, `64KiB`, `1Gi`, `10M`, `10MB`.
pub fn size(value: &str) -> Result<u64, UnitError> {
    let value = value.trim();
    let digits = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    if digits == 0 {
        return Err(UnitError::NotANumber);
    }
    let n: u64 = value[..digits].parse().map_err(|_| UnitError::TooLarge)?;
    let scale: u64 = match &value[digits..] {
        "" | "B" => 1,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        "k" | "K" | "kB" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        _ => return Err(UnitError::SizeSuffix),
    };
    n.checked_mul(scale).ok_or(UnitError::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("250ms", ms(250)),
            ("30s", ms(30_000)),
            ("30", ms(30_000)),
            ("0", ms(0)),
            ("0s", ms(0)),
            ("5m", ms(300_000)),
            ("1h", ms(3_600_000)),
            ("1m30s", ms(90_000)),
            ("1h2m3s4ms", ms(3_723_004)),
            (" 2s ", ms(2_000)),
        ] {
            assert_eq!(duration(text), Ok(want), "{text}");
        }
        for (text, why) in [
            ("", UnitError::NotANumber),
            ("s", UnitError::NotANumber),
            ("-1s", UnitError::NotANumber),
            ("1.5s", UnitError::DurationUnit),
            ("5x", UnitError::DurationUnit),
            ("5 s", UnitError::DurationUnit),
            ("99999999999999999999s", UnitError::TooLarge),
            ("9999999999999999999h", UnitError::TooLarge),
        ] {
            assert_eq!(duration(text), Err(why), "{text}");
        }
    }

    #[test]
    fn sizes() {
        for (text, want) in [
            ("4096", 4096),
            ("4096B", 4096),
            ("64Ki", 64 << 10),
            ("64KiB", 64 << 10),
            ("1Mi", 1 << 20),
            ("4GiB", 4 << 30),
            ("1Ti", 1 << 40),
            ("10k", 10_000),
            ("10K", 10_000),
            ("10M", 10_000_000),
            ("10MB", 10_000_000),
            ("10G", 10_000_000_000),
            ("0", 0),
        ] {
            assert_eq!(size(text), Ok(want), "{text}");
        }
        for (text, why) in [
            ("", UnitError::NotANumber),
            ("Ki", UnitError::NotANumber),
            ("1.5Mi", UnitError::SizeSuffix),
            ("1Pi", UnitError::SizeSuffix),
            ("1ki", UnitError::SizeSuffix),
            ("1BB", UnitError::SizeSuffix),
            ("99999999999Ti", UnitError::TooLarge),
        ] {
            assert_eq!(size(text), Err(why), "{text}");
        }
    }
}
