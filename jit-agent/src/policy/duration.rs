//! Durations as policy files and operators write them: `30m`, `2h`, `1h30m`.

use std::time::Duration;

/// Longest duration a policy may name. Access for longer than a year is
/// standing access, not just-in-time; the cap also keeps time arithmetic far
/// from overflow.
pub const MAX_POLICY_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses a duration of whole seconds between 1s and [`MAX_POLICY_DURATION`].
/// The error says what is wrong, for an operator.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| match e {
        humantime::DurationError::UnknownUnit { unit, .. } => {
            format!("`{unit}` is not a time unit")
        }
        humantime::DurationError::NumberExpected(_) if text.trim().starts_with('-') => {
            "durations cannot be negative".to_owned()
        }
        humantime::DurationError::Empty => "the duration is empty".to_owned(),
        other => format!("not a duration ({other})"),
    })?;
    if d.subsec_nanos() != 0 {
        return Err("durations are whole seconds".to_owned());
    }
    if d < Duration::from_secs(1) {
        return Err("the duration is zero".to_owned());
    }
    if d > MAX_POLICY_DURATION {
        return Err(format!(
            "longer than the limit of {}",
            format_duration(MAX_POLICY_DURATION)
        ));
    }
    Ok(d)
}

/// Formats compactly, largest unit first: `1d2h`, `1h30m`, `45s`, `250ms`.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    let ms = d.subsec_millis();
    if ms != 0 || out.is_empty() {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

/// Serde for [`Duration`] as text (`"1h30m"`), so stored records and audit
/// lines stay readable. Reads anything `humantime` parses.
pub mod serde_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as [`super::format_duration`] text.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    /// Deserializes humantime text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn refuses_nonsense() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("0s").unwrap_err().contains("zero"));
        assert!(parse_duration("500ms").unwrap_err().contains("whole"));
        assert!(parse_duration("2 fortnights").unwrap_err().contains("unit"));
        assert!(parse_duration("-1h").unwrap_err().contains("negative"));
        assert!(parse_duration("400d").unwrap_err().contains("limit"));
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration("90").is_err());
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(93_784)), "1d2h3m4s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::ZERO), "0ms");
        for d in [1u64, 59, 60, 3599, 86_401, 31_622_400] {
            let d = Duration::from_secs(d);
            assert_eq!(humantime::parse_duration(&format_duration(d)).unwrap(), d);
        }
    }
}
