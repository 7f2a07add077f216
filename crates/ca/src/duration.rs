//! Durations as flags and CLI arguments write them: `90s`, `30m`, `24h`, `7d`, `1h30m`, or
//! plain seconds.

use std::time::Duration;

use crate::CaError;

/// Parses `90s`, `30m`, `24h`, `7d`, combinations such as `1h30m`, or a plain number of seconds.
pub fn parse(text: &str) -> Result<Duration, CaError> {
    let bad = || {
        CaError::InvalidInput(format!(
            "{text:?} is not a duration: write e.g. 90s, 30m, 24h, 7d or 1h30m"
        ))
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// A duration written back the way [`parse`] reads it, in its largest whole unit (`24h`, `90s`).
pub fn format(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".to_string(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn units_and_combinations_parse_and_garbage_is_refused() {
        assert_eq!(parse("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("7d").unwrap(), Duration::from_secs(604_800));
        for bad in ["", "h", "1x", "1h30", "-1h", "99999999999999999999d"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(format(Duration::from_secs(86_400)), "1d");
        assert_eq!(format(Duration::from_secs(3600)), "1h");
        assert_eq!(format(Duration::from_secs(90)), "90s");
    }
}
