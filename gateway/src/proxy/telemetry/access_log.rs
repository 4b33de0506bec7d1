//! The access log: one line per HTTP request and per passthrough connection, naming the
//! peer, its identity and the authorization decision.
//!
//! The log is its own stream, not a `tracing` event, so its format does not depend on
//! `RUST_LOG` and a file or stdout gets nothing but access lines.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, LineWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::ResponseFlags;

/// Where access lines go (`--access-log`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogTarget {
    Off,
    Stderr,
    Stdout,
    File(PathBuf),
}

impl FromStr for AccessLogTarget {
    type Err = std::convert::Infallible;

    /// `off`, `stderr`, `stdout`, or a file path (appended to).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "off" => Self::Off,
            "stderr" => Self::Stderr,
            "stdout" => Self::Stdout,
            path => Self::File(PathBuf::from(path)),
        })
    }
}

/// The line format (`--access-log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessLogFormat {
    /// `key=value` pairs after a timestamp, values quoted when they hold spaces.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// One access-log record. `None` fields print as `-` in text and are left out of JSON.
#[derive(Debug, Default, Serialize)]
pub struct AccessEntry<'a> {
    /// `http` for a request, `passthrough` for a TLS passthrough (TCP) connection, `outbound`
    /// for a request the mesh originator carried (its `principal` is the server's identity).
    pub kind: &'static str,
    pub peer: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub duration_ms: u64,
    /// Bytes from the client (request body, or everything on a TCP connection).
    pub bytes_received: u64,
    /// Bytes to the client.
    pub bytes_sent: u64,
    /// The authorization decision as [`Decision`](crate::policy::authz::Decision) prints it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authz: Option<String>,
    /// The policy (`namespace/name`) whose rule decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<&'a str>,
    /// Envoy's response flags (`-`, `UF`, `NR`, …).
    pub response_flags: ResponseFlags,
}

/// An open access log. Cheap to call when off.
pub struct AccessLog {
    out: Option<Mutex<Box<dyn Write + Send>>>,
    format: AccessLogFormat,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("enabled", &self.out.is_some())
            .field("format", &self.format)
            .finish()
    }
}

impl Default for AccessLog {
    /// Text lines on stderr, where the daemon's other logs go.
    fn default() -> Self {
        Self {
            out: Some(Mutex::new(Box::new(io::stderr()))),
            format: AccessLogFormat::Text,
        }
    }
}

impl AccessLog {
    /// Opens the target; a file is created if needed and appended to.
    pub fn open(target: &AccessLogTarget, format: AccessLogFormat) -> io::Result<Self> {
        let out: Option<Box<dyn Write + Send>> = match target {
            AccessLogTarget::Off => None,
            AccessLogTarget::Stderr => Some(Box::new(io::stderr())),
            AccessLogTarget::Stdout => Some(Box::new(LineWriter::new(io::stdout()))),
            AccessLogTarget::File(path) => Some(Box::new(LineWriter::new(
                OpenOptions::new().create(true).append(true).open(path)?,
            ))),
        };
        Ok(Self {
            out: out.map(Mutex::new),
            format,
        })
    }

    pub fn off() -> Self {
        Self {
            out: None,
            format: AccessLogFormat::Text,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.out.is_some()
    }

    /// Writes one line. A failing log write is reported through `tracing`, never to the
    /// client.
    pub fn write(&self, entry: &AccessEntry<'_>) {
        let Some(out) = &self.out else {
            return;
        };
        let line = format_line(self.format, &now_rfc3339(), entry);
        let Ok(mut out) = out.lock() else {
            return;
        };
        if let Err(e) = out.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "cannot write the access log");
        }
    }
}

/// One access-log line, newline included, exactly as [`AccessLog::write`] writes it. Public
/// as the log-injection fuzzing entry point (`fuzz/fuzz_targets/access_log.rs`).
pub fn format_line(format: AccessLogFormat, time: &str, e: &AccessEntry<'_>) -> String {
    match format {
        AccessLogFormat::Json => {
            #[derive(Serialize)]
            struct Line<'a, 'b> {
                time: &'a str,
                #[serde(flatten)]
                entry: &'a AccessEntry<'b>,
            }
            let s = serde_json::to_string(&Line { time, entry: e })
                .unwrap_or_else(|err| format!("{{\"error\":\"{err}\"}}"));
            // JSON allows NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR raw inside strings, but
            // log tools split lines on them (Python's `splitlines`, older JavaScript): escape
            // them so a client-sent value can never break the line. They only occur inside
            // strings, so the escape decodes to the same value.
            let mut s = s
                .replace('\u{85}', "\\u0085")
                .replace('\u{2028}', "\\u2028")
                .replace('\u{2029}', "\\u2029");
            s.push('\n');
            s
        }
        AccessLogFormat::Text => {
            let mut s = format!("{time} access {}", e.kind);
            let mut field = |k: &str, v: Option<&str>| {
                let v = v.unwrap_or("-");
                // Quoted with Rust's escapes: anything empty, holding `"` or `=`, or holding
                // whitespace or a control character (Unicode line separators included), so a
                // client-sent value can never end the line or forge a field.
                let plain =
                    |c: char| !(c.is_whitespace() || c.is_control() || c == '"' || c == '=');
                if v.is_empty() || !v.chars().all(plain) {
                    let _ = write!(s, " {k}={v:?}");
                } else {
                    let _ = write!(s, " {k}={v}");
                }
            };
            field("peer", e.peer.map(|p| p.to_string()).as_deref());
            field("sni", e.sni);
            field("principal", e.principal);
            field("method", e.method);
            field("authority", e.authority);
            field("path", e.path);
            field("status", e.status.map(|c| c.to_string()).as_deref());
            field("duration_ms", Some(&e.duration_ms.to_string()));
            field("bytes_received", Some(&e.bytes_received.to_string()));
            field("bytes_sent", Some(&e.bytes_sent.to_string()));
            field("authz", e.authz.as_deref());
            field("policy", e.policy.as_deref());
            field("upstream", e.upstream);
            field("response_flags", Some(e.response_flags.as_str()));
            s.push('\n');
            s
        }
    }
}

/// The current UTC time as `2026-01-02T03:04:05.678Z`.
fn now_rfc3339() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_millis())
}

fn rfc3339(unix: i64, millis: u32) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied() -> AccessEntry<'static> {
        AccessEntry {
            kind: "http",
            peer: Some("127.0.0.1:5555".parse().unwrap()),
            sni: Some("test.com"),
            principal: Some("test.client"),
            method: Some("GET"),
            authority: Some("test.com:443"),
            path: Some("/status/418"),
            status: Some(403),
            duration_ms: 1,
            bytes_received: 0,
            bytes_sent: 19,
            authz: Some("DENY by istio-system/test rule 0".to_owned()),
            policy: Some("istio-system/test".to_owned()),
            upstream: None,
            response_flags: ResponseFlags::None,
        }
    }

    #[test]
    fn text_lines_are_key_value_with_quoted_spaces() {
        let line = format_line(AccessLogFormat::Text, "T", &denied());
        assert_eq!(
            line,
            "T access http peer=127.0.0.1:5555 sni=test.com principal=test.client method=GET \
             authority=test.com:443 path=/status/418 status=403 duration_ms=1 bytes_received=0 \
             bytes_sent=19 authz=\"DENY by istio-system/test rule 0\" policy=istio-system/test \
             upstream=- response_flags=-\n"
        );
    }

    #[test]
    fn json_lines_parse_and_skip_absent_fields() {
        let line = format_line(AccessLogFormat::Json, "T", &denied());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "T");
        assert_eq!(v["principal"], "test.client");
        assert_eq!(v["status"], 403);
        assert_eq!(v["authz"], "DENY by istio-system/test rule 0");
        assert!(v.get("upstream").is_none());
    }

    /// Found by the `access_log` fuzz target: an unspaced value with a raw `\n` or `\r` was
    /// written unquoted (a forged line), and JSON kept U+2028 raw (a line break to
    /// `splitlines`).
    #[test]
    fn client_values_cannot_break_the_line() {
        for evil in [
            "/a\nT",
            "x\r",
            "a\u{b}b",
            "a\u{c}b",
            "a\u{85}b",
            "a\u{2028}b",
            "a\u{2029}b",
            "a\tb",
            "a\u{1e}b",
        ] {
            let entry = AccessEntry {
                sni: Some(evil),
                path: Some(evil),
                ..denied()
            };
            for format in [AccessLogFormat::Text, AccessLogFormat::Json] {
                let line = format_line(format, "T", &entry);
                let body = line.strip_suffix('\n').expect("one final newline");
                assert!(
                    !body
                        .chars()
                        .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')),
                    "{format:?} line for {evil:?} holds a raw break: {line:?}"
                );
            }
            let json = format_line(AccessLogFormat::Json, "T", &entry);
            let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
            assert_eq!(v["path"], evil);
            let text = format_line(AccessLogFormat::Text, "T", &entry);
            assert!(text.contains(&format!(" path={evil:?} ")), "{text}");
        }
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_798_761_599, 999), "2026-12-31T23:59:59.999Z");
    }

    #[test]
    fn targets_parse() {
        assert_eq!("off".parse(), Ok(AccessLogTarget::Off));
        assert_eq!("stdout".parse(), Ok(AccessLogTarget::Stdout));
        assert_eq!(
            "/var/log/a.log".parse(),
            Ok(AccessLogTarget::File(PathBuf::from("/var/log/a.log")))
        );
    }
}
