//! Which RAW to look at: windows of source time at hour granularity, and the hour of a RAW key.

/// A `--since`/`--until` value that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WindowError(pub String);

/// Which RAW to look at.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// From this source time (ms since the epoch, inclusive; rounded down to the hour).
    pub since_ms: Option<i64>,
    /// Until this source time (ms since the epoch, exclusive).
    pub until_ms: Option<i64>,
    /// Only this batch (its ledger id).
    pub batch: Option<String>,
}

/// One hour, in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;

impl Window {
    /// Parses `--since`/`--until` values: RFC 3339 (`2026-11-21T10:00:00Z`), a date-hour (`2026-11-21T10`),
    /// a date (`2026-11-21`) or a relative age (`90m`, `6h`, `2d` before now).
    pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, WindowError> {
        let bad = || {
            WindowError(format!(
                "`{text}`: use RFC 3339 (2026-11-21T10:00:00Z), a date (2026-11-21), a date and hour \
                 (2026-11-21T10) or an age (90m, 6h, 2d)"
            ))
        };
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
            return Ok(t.timestamp_millis());
        }
        if let Some(unit) = text.chars().last().filter(|c| "smhd".contains(*c))
            && let Ok(n) = text[..text.len() - 1].parse::<i64>()
        {
            let ms = match unit {
                's' => 1_000,
                'm' => 60_000,
                'h' => HOUR_MS,
                _ => 24 * HOUR_MS,
            };
            return Ok(now_ms - n * ms);
        }
        let (date, hour) = match text.split_once(['T', ' ']) {
            Some((d, h)) => (d, h.parse::<u32>().map_err(|_| bad())?),
            None => (text, 0),
        };
        let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| bad())?;
        let t = day.and_hms_opt(hour, 0, 0).ok_or_else(bad)?;
        Ok(t.and_utc().timestamp_millis())
    }

    /// Whether an hour (ms at its start) is inside the window.
    fn has_hour(&self, hour_ms: i64) -> bool {
        self.since_ms
            .is_none_or(|s| hour_ms + HOUR_MS > s.div_euclid(HOUR_MS) * HOUR_MS)
            && self.until_ms.is_none_or(|u| hour_ms < u)
    }

    /// Whether a RAW object key belongs to the window (`None` when the key names no hour).
    pub fn has_key(&self, key: &str) -> Option<bool> {
        key_hour_ms(key).map(|h| self.has_hour(h))
    }
}

/// The hour of a RAW object key (`…/dt=2026-11-21/hour=10/…`), in ms since the epoch.
pub fn key_hour_ms(key: &str) -> Option<i64> {
    let dt = key.split("dt=").nth(1)?.get(..10)?;
    let hour = key.split("/hour=").nth(1)?.get(..2)?.parse::<u32>().ok()?;
    let day = chrono::NaiveDate::parse_from_str(dt, "%Y-%m-%d").ok()?;
    Some(day.and_hms_opt(hour, 0, 0)?.and_utc().timestamp_millis())
}
