//! Logging: the process's logger, its level from the config, and the access log's lines: one
//! per request, stamped with the time in UTC, as text (`key=value`, grep-friendly) or JSON (one
//! object per line, for log shippers). The lines are written by [`crate::access_log`], not
//! through the logger.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// What one request leaves in the access log. Borrowed, so building one costs nothing when the
/// access log is off (the express lane's hits are counted in nanoseconds).
pub struct AccessEntry<'a> {
    pub client: Option<&'a dyn std::fmt::Display>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a dyn std::fmt::Display,
    pub status: u16,
    pub bytes: usize,
    pub route: &'a str,
    pub origin: &'a str,
    pub server: &'a str,
    /// `reused`, `new` or `-` (no upstream connection).
    pub conn: &'a str,
    pub cache: &'a str,
    pub connect: Option<Duration>,
    pub ttfb: Option<Duration>,
    pub total: Duration,
    pub tries: usize,
    pub refused: Option<&'a str>,
    pub error: Option<String>,
}

/// Set when `RUST_LOG` chose the level: the config's `log.level` then stays out of the way.
static LEVEL_FROM_ENV: AtomicBool = AtomicBool::new(false);

/// Starts the logger (stderr, or the error_log file Pingora redirects to when daemonized).
pub fn init(level: log::LevelFilter) {
    let from_env = std::env::var_os("RUST_LOG").is_some();
    LEVEL_FROM_ENV.store(from_env, Ordering::Relaxed);
    // Without RUST_LOG the filter passes everything and the global max level does the work,
    // because only the max level can change at run time (on reload).
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("trace"))
        .format_timestamp_millis()
        .init();
    set_level(level);
}

/// Applies the config's level, unless `RUST_LOG` set it.
pub fn set_level(level: log::LevelFilter) {
    if !LEVEL_FROM_ENV.load(Ordering::Relaxed) {
        log::set_max_level(level);
    }
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

/// `2024-02-29T12:34:56.789Z`: UTC to the millisecond, as the logger stamped access lines
/// when they went through it.
fn write_time(out: &mut String, at: SystemTime) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        since.subsec_millis()
    );
}

/// The date of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`), so that no
/// date crate is needed for one timestamp.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl AccessEntry<'_> {
    /// The line (without its newline) for a request that ended `at`.
    pub fn render(&self, format: Format, at: SystemTime) -> String {
        match format {
            Format::Text => self.text(at),
            Format::Json => self.json(at),
        }
    }

    fn text(&self, at: SystemTime) -> String {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        let client: &dyn std::fmt::Display = self.client.unwrap_or(&"-");
        let mut s = String::with_capacity(256);
        write_time(&mut s, at);
        let _ = write!(
            s,
            " {} {} {} {} status={} bytes={} route={} origin={} server={} conn={} cache={} \
             connect_ms={} ttfb_ms={} total_ms={:.3} tries={}",
            client,
            self.method,
            self.host,
            self.path,
            self.status,
            self.bytes,
            self.route,
            self.origin,
            self.server,
            self.conn,
            self.cache,
            opt(ms(self.connect)),
            opt(ms(self.ttfb)),
            self.total.as_secs_f64() * 1e3,
            self.tries,
        );
        if let Some(r) = self.refused {
            let _ = write!(s, " refused={r}");
        }
        if let Some(e) = &self.error {
            let _ = write!(s, " error=\"{}\"", e.replace('"', "'"));
        }
        s
    }

    fn json(&self, at: SystemTime) -> String {
        let mut time = String::with_capacity(24);
        write_time(&mut time, at);
        let mut s = String::with_capacity(384);
        s.push('{');
        let mut field = |k: &str, v: Json| {
            if s.len() > 1 {
                s.push(',');
            }
            json_str(&mut s, k);
            s.push(':');
            match v {
                Json::Str(v) => json_str(&mut s, v),
                Json::Num(v) => {
                    let _ = write!(s, "{v}");
                }
                Json::Null => s.push_str("null"),
            }
        };
        let num_or_null = |v: Option<f64>| v.map_or(Json::Null, Json::Num);
        let client = self.client.map_or("-".to_string(), |c| c.to_string());
        let path = self.path.to_string();
        field("time", Json::Str(&time));
        field("client", Json::Str(&client));
        field("method", Json::Str(self.method));
        field("host", Json::Str(self.host));
        field("path", Json::Str(&path));
        field("status", Json::Num(self.status as f64));
        field("bytes", Json::Num(self.bytes as f64));
        field("route", Json::Str(self.route));
        field("origin", Json::Str(self.origin));
        field("server", Json::Str(self.server));
        field("conn", Json::Str(self.conn));
        field("cache", Json::Str(self.cache));
        field("connect_ms", num_or_null(ms(self.connect)));
        field("ttfb_ms", num_or_null(ms(self.ttfb)));
        field(
            "total_ms",
            Json::Num(ms(Some(self.total)).unwrap_or_default()),
        );
        field("tries", Json::Num(self.tries as f64));
        field("refused", self.refused.map_or(Json::Null, Json::Str));
        field("error", self.error.as_deref().map_or(Json::Null, Json::Str));
        s.push('}');
        s
    }
}

enum Json<'a> {
    Str(&'a str),
    Num(f64),
    Null,
}

fn json_str(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AccessEntry<'static> {
        AccessEntry {
            client: Some(&"127.0.0.1:5000"),
            method: "GET",
            host: "example.com",
            path: &"/a\"b",
            status: 200,
            bytes: 42,
            route: "routes[0]",
            origin: "web",
            server: "10.0.0.1:80",
            conn: "reused",
            cache: "pass",
            connect: None,
            ttfb: Some(Duration::from_micros(1500)),
            total: Duration::from_millis(2),
            tries: 1,
            refused: None,
            error: None,
        }
    }

    /// `date -u -d @1709210096`: Thu Feb 29 12:34:56 UTC 2024.
    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_709_210_096_789)
    }

    #[test]
    fn text_line() {
        assert_eq!(
            entry().render(Format::Text, at()),
            "2024-02-29T12:34:56.789Z 127.0.0.1:5000 GET example.com /a\"b status=200 bytes=42 route=routes[0] origin=web \
             server=10.0.0.1:80 conn=reused cache=pass connect_ms=- ttfb_ms=1.500 total_ms=2.000 tries=1"
        );
    }

    #[test]
    fn json_line_escapes() {
        let j = entry().render(Format::Json, at());
        assert!(
            j.starts_with(
                r#"{"time":"2024-02-29T12:34:56.789Z","client":"127.0.0.1:5000","method":"GET""#
            ),
            "{j}"
        );
        assert!(j.contains(r#""path":"/a\"b""#), "{j}");
        assert!(
            j.contains(r#""connect_ms":null,"ttfb_ms":1.5,"total_ms":2"#),
            "{j}"
        );
        assert!(j.ends_with(r#""refused":null,"error":null}"#), "{j}");
    }

    /// Against `date -u -d @N +%FT%T` for the epoch, a leap day, a century's leap day and the
    /// year 2100 (not a leap year).
    #[test]
    fn dates_in_utc() {
        let day = |secs: u64| {
            let mut s = String::new();
            write_time(&mut s, UNIX_EPOCH + Duration::from_secs(secs));
            s
        };
        assert_eq!(day(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(day(951_868_799), "2000-02-29T23:59:59.000Z");
        assert_eq!(day(951_868_800), "2000-03-01T00:00:00.000Z");
        assert_eq!(day(4_107_542_399), "2100-02-28T23:59:59.000Z");
        assert_eq!(day(4_107_542_400), "2100-03-01T00:00:00.000Z");
        assert_eq!(day(1_735_689_599), "2024-12-31T23:59:59.000Z");
    }
}
