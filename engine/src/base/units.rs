//! Byte sizes as users write them (`1048576`, `512KiB`, `10GiB`, `1.5TB`) and as we print
//! them; durations as users write them (`90`, `30s`, `15m`, `6h`, `7d`).

/// Parses a size: a number with an optional unit (B, KiB/MiB/GiB/TiB binary;
/// KB/MB/GB/TB decimal; K/M/G/T binary). Fractions are allowed with a unit.
pub fn parse_size(input: &str) -> Result<u64, String> {
    let text = input.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit '{other}' in '{input}' (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
            ))
        }
    };
    let value: f64 = number.parse().map_err(|_| format!("'{input}' is not a size (expected e.g. 10GiB or 1048576)"))?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("size '{input}' is out of range"));
    }
    Ok(bytes as u64)
}

/// Parses a duration in whole seconds: a whole number with an optional unit (s, m, h, d;
/// none means seconds).
pub fn parse_duration(input: &str) -> Result<u64, String> {
    let text = input.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown duration unit '{other}' in '{input}' (use s, m, h or d)")),
    };
    let value: u64 = number.parse().map_err(|_| format!("'{input}' is not a duration (expected e.g. 6h or 90s)"))?;
    value.checked_mul(multiplier).ok_or_else(|| format!("duration '{input}' is out of range"))
}

/// Formats seconds with the largest unit that divides them, e.g. `6h`, `90s`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        0 => "0s".to_string(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Formats bytes with a binary unit, e.g. `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("1.5MiB"), Ok(3 << 19));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5XB").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn durations_parse_and_print_back() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("6h"), Ok(21_600));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert!(parse_duration("1.5h").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        for secs in [0, 59, 60, 3600, 5400, 86_400, 21_600] {
            assert_eq!(parse_duration(&human_duration(secs)), Ok(secs));
        }
    }

    #[test]
    fn formats_with_binary_units() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 19), "1.5 MiB");
    }
}
