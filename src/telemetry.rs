//! Logging set-up: human-readable lines on a terminal, JSON lines for CloudWatch.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line, for CloudWatch Logs.
    Json,
}

/// Installs the global subscriber. The level comes from `RUST_LOG` (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,aws_config=warn,aws_smithy_runtime=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .fmt_fields(JsonMembers)
            .event_format(JsonLines)
            .try_init(),
        // Colours only on a terminal: piped logs (CloudWatch, files, tests) stay plain text.
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    // Already installed (tests, library users): keep theirs.
    drop(result);
}

/// One JSON object per line, in the shape of tracing-subscriber's `json()` with flattened event
/// fields and the current span: `{"timestamp","level",<event fields>,"target","span":{<span
/// fields>,"name"}}`. Written directly: the stock formatter parses each span's fields back from
/// JSON for every event, a large share of the logging cost at thousands of jobs a second.
/// Span fields must be formatted by [`JsonMembers`] (as [`init`] sets up).
pub struct JsonLines;

/// Formats span fields as JSON object members, each as `,"name":value`, for [`JsonLines`] to
/// splice in. The stock `JsonFields` built a serde map for every span: one span per job.
pub struct JsonMembers;

impl<'w> FormatFields<'w> for JsonMembers {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = JsonVisitor {
            w: &mut writer,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // Members carry their own leading comma: no separator to add.
        self.format_fields(current.as_writer(), fields)
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events forwarded from the `log` crate (reqwest's) carry their real target and level
        // in fields: show those, as the stock formatter does.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        w.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut w)?;
        write!(w, "\",\"level\":\"{}\"", meta.level())?;
        // Event fields are written as span fields are: flattened members.
        JsonMembers.format_fields(w.by_ref(), event)?;
        w.write_str(",\"target\":")?;
        json_str(&mut w, meta.target())?;
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            w.write_str(",\"span\":{")?;
            let ext = span.extensions();
            if let Some(members) = ext
                .get::<FormattedFields<N>>()
                .and_then(|f| f.fields.strip_prefix(','))
            {
                w.write_str(members)?;
                w.write_char(',')?;
            }
            w.write_str("\"name\":")?;
            json_str(&mut w, span.name())?;
            w.write_char('}')?;
        }
        w.write_str("}\n")
    }
}

/// Writes each field as `,"name":value`.
struct JsonVisitor<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl JsonVisitor<'_, '_> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = (|| {
                self.w.write_char(',')?;
                json_str(self.w, field.name())?;
                self.w.write_char(':')?;
                value(self.w)
            })();
        }
    }
}

impl Visit for JsonVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |w| json_str(w, value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| write!(w, "{value}"));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| write!(w, "{value}"));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| write!(w, "{value}"));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity.
        if value.is_finite() {
            self.field(field, |w| write!(w, "{value}"));
        } else {
            self.field(field, |w| w.write_str("null"));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

fn json_str(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(s)?;
    w.write_char('"')
}

/// Escapes what JSON strings cannot hold as is; everything else is written in runs.
struct Escaped<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let esc: &str = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[start..i])?;
            if esc.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(esc)?;
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn lines(log: impl FnOnce()) -> Vec<serde_json::Value> {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .fmt_fields(JsonMembers)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(sub, log);
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf-8");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn json_lines_are_valid_json_with_event_and_span_fields() {
        let tricky = "quote \" backslash \\ newline \n tab \t bell \u{7} é ✓";
        let got = lines(|| {
            let span = tracing::info_span!(
                "job",
                message_id = %"m-\"1",
                receive_count = 2u32,
                late = tracing::field::Empty
            );
            span.record("late", "set after");
            let _g = span.enter();
            tracing::info!(
                elapsed_ms = 3u64,
                ok = true,
                ratio = 0.5,
                neg = -4i64,
                "done"
            );
            tracing::warn!(reason = tricky, err = ?tricky, "job failed; {}", "retrying");
            tracing::info!(nan = f64::NAN, "odd");
        });
        assert_eq!(got.len(), 3);
        let done = &got[0];
        assert_eq!(done["level"], "INFO");
        assert_eq!(done["message"], "done");
        assert_eq!(done["elapsed_ms"], 3);
        assert_eq!(done["ok"], true);
        assert_eq!(done["ratio"], 0.5);
        assert_eq!(done["neg"], -4);
        assert_eq!(done["target"], module_path!());
        assert_eq!(done["span"]["message_id"], "m-\"1");
        assert_eq!(done["span"]["late"], "set after");
        assert_eq!(done["span"]["receive_count"], 2);
        assert_eq!(done["span"]["name"], "job");
        assert!(done["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        let failed = &got[1];
        assert_eq!(failed["level"], "WARN");
        assert_eq!(failed["message"], "job failed; retrying");
        assert_eq!(failed["reason"], tricky);
        assert_eq!(failed["err"], format!("{tricky:?}"));
        assert_eq!(got[2]["nan"], serde_json::Value::Null);
    }

    #[test]
    fn events_from_the_log_crate_show_their_own_target() {
        let got = lines(|| {
            let record = log::Record::builder()
                .level(log::Level::Warn)
                .target("reqwest::connect")
                .args(format_args!("connection reset"))
                .build();
            tracing_log::format_trace(&record).expect("forwarded");
        });
        assert_eq!(got[0]["target"], "reqwest::connect");
        assert_eq!(got[0]["level"], "WARN");
        assert_eq!(got[0]["message"], "connection reset");
    }

    #[test]
    fn events_outside_spans_have_no_span_key() {
        let got = lines(|| tracing::info!(count = 1u64, "worker started"));
        assert_eq!(got[0]["message"], "worker started");
        assert!(got[0].get("span").is_none());
    }
}
