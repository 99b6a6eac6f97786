//! Durations as the config file and the lineage files write them (`30d`,
//! `1d12h`): one reader and one writer, so that what `certsmith` records
//! reads back the same.

use std::time::Duration;

/// Parses a duration such as `30d`, `12h`, `90m`, `45s`, `2w` or `1d12h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("the duration is empty".to_owned());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if c.is_whitespace() {
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(format!("unknown unit '{c}' (use s, m, h, d or w)")),
        };
        if digits.is_empty() {
            return Err(format!("a number must come before '{c}'"));
        }
        let n: u64 = digits.parse().map_err(|_| "the number is too large")?;
        total = n
            .checked_mul(unit)
            .and_then(|x| total.checked_add(x))
            .ok_or("the duration is too large")?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!(
            "'{digits}' has no unit: write {digits}s, {digits}m, {digits}h or {digits}d"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way [`parse_duration`] reads it (`30d`, `1d12h`).
pub fn format_duration(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86_400u64), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    out
}
