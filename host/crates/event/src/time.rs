//! Timestamps: nanoseconds since the Unix epoch, and their RFC 3339 form.

use crate::Timestamp;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The current time.
pub fn now() -> Timestamp {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as Timestamp).unwrap_or(0)
}

/// RFC 3339 in UTC with nanoseconds, as ECS `@timestamp` wants it.
pub fn to_rfc3339(ts: Timestamp) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(ts)).to_string()
}

/// Parses RFC 3339 (`Z` or a numeric offset such as `+02:00`), with or
/// without fractional seconds.
pub fn parse_rfc3339(s: &str) -> Result<Timestamp, String> {
    let s = s.trim();
    let (base, offset_secs) = split_offset(s)?;
    let t = humantime::parse_rfc3339_weak(base).map_err(|e| format!("bad timestamp `{s}`: {e}"))?;
    let nanos = t.duration_since(UNIX_EPOCH).map_err(|_| format!("timestamp `{s}` is before 1970"))?.as_nanos() as i128;
    let utc = nanos - offset_secs as i128 * 1_000_000_000;
    u64::try_from(utc).map_err(|_| format!("timestamp `{s}` is out of range"))
}

/// Splits a trailing `Z` or `±HH:MM` offset off an RFC 3339 string.
fn split_offset(s: &str) -> Result<(&str, i64), String> {
    if let Some(base) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        return Ok((base, 0));
    }
    // A numeric offset is the last 6 characters: `+HH:MM` or `-HH:MM`, after the time part.
    if s.len() > 6 && s.is_char_boundary(s.len() - 6) {
        let (base, off) = s.split_at(s.len() - 6);
        let b = off.as_bytes();
        if (b[0] == b'+' || b[0] == b'-') && b[3] == b':' && base.contains('T') {
            let hh: i64 = off[1..3].parse().map_err(|_| format!("bad offset in `{s}`"))?;
            let mm: i64 = off[4..6].parse().map_err(|_| format!("bad offset in `{s}`"))?;
            let sign = if b[0] == b'-' { -1 } else { 1 };
            return Ok((base, sign * (hh * 3600 + mm * 60)));
        }
    }
    Ok((s, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_nanoseconds() {
        let ts = 1_780_000_000_123_456_789;
        assert_eq!(parse_rfc3339(&to_rfc3339(ts)).unwrap(), ts);
    }

    #[test]
    fn applies_numeric_offsets() {
        let z = parse_rfc3339("2026-11-22T10:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2026-11-22T12:00:00+02:00").unwrap(), z);
        assert_eq!(parse_rfc3339("2026-11-22T09:30:00.000-00:30").unwrap(), z);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
