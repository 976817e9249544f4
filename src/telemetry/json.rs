//! The JSON log line, written straight into the line's buffer.
//!
//! The same line tracing-subscriber's JSON format writes with `flatten_event` and the current
//! span (`timestamp`, `level`, the event's fields, `target`, `span`, `spans`; the golden test
//! below holds the two together), for a fraction of the cost: that format collects a span's
//! fields into a map to write them when the span opens, parses them back from JSON and writes
//! them again, twice per line, and writes every value through a generic serializer. With the
//! access log on, that was most of what a line cost (issue 26).

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// One JSON object per line.
pub struct JsonLines<T = SystemTime> {
    timer: T,
}

impl JsonLines {
    pub fn new() -> Self {
        Self { timer: SystemTime }
    }
}

/// A span's fields as one JSON object, kept with the span for every line written inside it.
#[derive(Debug, Default)]
pub struct SpanFields;

impl<'writer> FormatFields<'writer> for SpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        writer.write_char('{')?;
        let mut visitor = Fields::new(&mut writer, false);
        fields.record(&mut visitor);
        visitor.result?;
        writer.write_char('}')
    }

    /// Fields recorded after the span opened go into its object. (One recorded again appears
    /// twice; JSON readers keep the last.)
    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let had_fields = current.fields.len() > 2;
        if current.fields.ends_with('}') {
            current.fields.pop();
        } else {
            current.fields.push('{');
        }
        let mut writer = current.as_writer();
        let mut visitor = Fields::new(&mut writer, had_fields);
        fields.record(&mut visitor);
        visitor.result?;
        writer.write_char('}')
    }
}

impl<S, T> FormatEvent<S, SpanFields> for JsonLines<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, SpanFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str("{\"timestamp\":\"")?;
        self.timer.format_time(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\"", meta.level())?;
        let mut fields = Fields::new(&mut writer, true);
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        string(&mut writer, meta.target())?;
        let current = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = current {
            writer.write_str(",\"span\":")?;
            write_span(&mut writer, &span)?;
            writer.write_str(",\"spans\":[")?;
            if let Some(leaf) = ctx.lookup_current() {
                for (n, span) in leaf.scope().from_root().enumerate() {
                    if n > 0 {
                        writer.write_char(',')?;
                    }
                    write_span(&mut writer, &span)?;
                }
            }
            writer.write_char(']')?;
        }
        writer.write_str("}\n")
    }
}

/// A span's fields, as [`SpanFields`] stored them (an object), with its name added.
fn write_span<S>(writer: &mut Writer<'_>, span: &SpanRef<'_, S>) -> fmt::Result
where
    S: for<'a> LookupSpan<'a>,
{
    let extensions = span.extensions();
    let stored = extensions
        .get::<FormattedFields<SpanFields>>()
        .map_or("{}", |fields| fields.fields.as_str());
    let inner = stored
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or_default()
        .trim();
    writer.write_char('{')?;
    if !inner.is_empty() {
        writer.write_str(inner)?;
        writer.write_char(',')?;
    }
    writer.write_str("\"name\":")?;
    string(writer, span.metadata().name())?;
    writer.write_char('}')
}

/// Writes fields as `"name":value` pairs, values as tracing-serde writes them.
struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    /// Whether a comma goes before the next pair.
    comma: bool,
    result: fmt::Result,
}

impl<'a, 'w> Fields<'a, 'w> {
    fn new(writer: &'a mut Writer<'w>, comma: bool) -> Self {
        Self {
            writer,
            comma,
            result: Ok(()),
        }
    }

    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            let comma = std::mem::replace(&mut self.comma, true);
            self.result = (if comma {
                self.writer.write_char(',')
            } else {
                Ok(())
            })
            .and_then(|()| string(self.writer, field.name()))
            .and_then(|()| self.writer.write_char(':'))
            .and_then(|()| value(self.writer));
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json's own form, and null for what JSON cannot hold.
        self.entry(field, |w| match serde_json::Number::from_f64(value) {
            Some(number) => write!(w, "{number}"),
            None => w.write_str("null"),
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |w| string(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |w| {
            w.write_char('"')?;
            write!(Escaped(&mut *w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// `value` as a JSON string.
fn string(writer: &mut impl fmt::Write, value: &str) -> fmt::Result {
    writer.write_char('"')?;
    Escaped(&mut *writer).write_str(value)?;
    writer.write_char('"')
}

/// Escapes what passes through as serde_json does inside a string.
struct Escaped<W>(W);

impl<W: fmt::Write> fmt::Write for Escaped<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&text[plain..at])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = at + 1;
        }
        self.0.write_str(&text[plain..])
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::telemetry::Captured;

    /// One fixed instant, so that the two formats' lines can be compared whole.
    struct Fixed;

    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            w.write_str("2026-12-07T12:00:00.000001Z")
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    /// Events of every kind of value, in and out of spans, with what JSON must escape.
    fn events() {
        tracing::info!("plain");
        tracing::warn!(
            count = 3_u64,
            delta = -4_i64,
            ok = true,
            "numbers \"quoted\"\n"
        );
        tracing::error!(
            ratio = 0.0064659999999999995,
            tiny = 1e-7,
            big = 1e16,
            whole = 2.0
        );
        tracing::info!(nan = f64::NAN, text = "tab\there \u{1} \\ é", debug = ?vec!["a"]);
        let outer = tracing::info_span!("request", request_id = "abc-1");
        let _outer = outer.enter();
        tracing::info!(method = %"GET", path = "/public", status = 200_u64, "request");
        let inner = tracing::info_span!(
            "inner",
            n = 1_u64,
            label = "x\"y",
            later = tracing::field::Empty
        );
        inner.record("later", "recorded");
        let _inner = inner.enter();
        tracing::info!(error = %std::io::Error::other("disk"), "in two spans");
        let bare = tracing::info_span!("bare");
        let _bare = bare.enter();
        tracing::debug!(big = 1_u128 << 100, "no fields in the span");
    }

    #[test]
    fn lines_are_what_tracing_subscribers_json_format_writes() {
        let (ours, theirs) = (Captured::default(), Captured::default());
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_timer(Fixed)
                    .with_writer(theirs.clone()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(SpanFields)
                    .event_format(JsonLines { timer: Fixed })
                    .with_writer(ours.clone()),
            );
        tracing::subscriber::with_default(subscriber, events);
        let (ours, theirs) = (ours.text(), theirs.text());
        assert_eq!(ours.lines().count(), 7);
        for (mine, reference) in ours.lines().zip(theirs.lines()) {
            let parsed: serde_json::Value = serde_json::from_str(mine).unwrap();
            assert_eq!(
                parsed,
                serde_json::from_str::<serde_json::Value>(reference).unwrap()
            );
            // Key for key, in the same order, apart from a span's fields, which the reference
            // sorts and we keep as recorded.
            if !mine.contains("\"inner\"") {
                assert_eq!(mine, reference);
            }
        }
    }
}
