//! The text log's field formatter: byte for byte what `tracing_subscriber`'s
//! default one writes, without its detour when colours are off. The default
//! writes every field as `{styled name}{styled "="}{value:?}` through
//! `core::fmt`, styles that paint nothing included; an access line has about
//! twenty fields, and that detour was measurable on the hot path. Here a string
//! of printable ASCII with no quote or backslash (what its `Debug` leaves as
//! it is) and an integer are written directly; anything else, the `message`
//! field, and every field when colours are on, go to the default visitor.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultFields, DefaultVisitor, Writer};

/// The text layer's [`tracing_subscriber::fmt::FormatFields`].
#[derive(Debug, Default)]
pub struct PlainFields;

impl<'a> MakeVisitor<Writer<'a>> for PlainFields {
    type Visitor = PlainVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> Self::Visitor {
        if writer.has_ansi_escapes() {
            PlainVisitor::Default(DefaultFields::new().make_visitor(writer))
        } else {
            PlainVisitor::Plain { writer, is_empty: true, result: Ok(()) }
        }
    }
}

/// Writes one event's (or span's) fields.
pub enum PlainVisitor<'a> {
    /// Colours on: the default visitor, for all fields.
    Default(DefaultVisitor<'a>),
    /// Colours off.
    Plain { writer: Writer<'a>, is_empty: bool, result: fmt::Result },
}

/// What `str`'s `Debug` writes unchanged between its quotes.
fn debug_leaves_as_is(value: &str) -> bool {
    value.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

/// A field name the default visitor writes as it is (not `message`, not a
/// `log.` one it skips, not a raw `r#` identifier it strips).
fn plain_name(name: &str) -> bool {
    name != "message" && !name.starts_with("log.") && !name.starts_with("r#")
}

impl PlainVisitor<'_> {
    /// Writes `name=` (after the separating space), then `value`.
    fn write_field(&mut self, name: &str, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        let Self::Plain { writer, is_empty, result } = self else { unreachable!("only called when plain") };
        if result.is_err() {
            return;
        }
        *result = (|| {
            if !std::mem::take(is_empty) {
                writer.write_char(' ')?;
            }
            writer.write_str(name)?;
            writer.write_char('=')?;
            value(writer)
        })();
    }

    /// Hands one field to the default visitor: what it writes, separating
    /// space included, is what it would have written.
    fn delegate(&mut self, field: &Field, visit: impl FnOnce(&mut DefaultVisitor<'_>)) {
        match self {
            Self::Default(inner) => visit(inner),
            Self::Plain { writer, is_empty, result } => {
                if result.is_err() {
                    return;
                }
                let mut inner = DefaultVisitor::new(writer.by_ref(), *is_empty);
                visit(&mut inner);
                *result = inner.finish();
                // It skips `log.` fields without writing (or padding).
                *is_empty = *is_empty && field.name().starts_with("log.");
            }
        }
    }

    fn is_plain(&self) -> bool {
        matches!(self, Self::Plain { .. })
    }

    fn write_integer(&mut self, name: &str, n: impl itoa::Integer) {
        self.write_field(name, |w| w.write_str(itoa::Buffer::new().format(n)));
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.is_plain() && plain_name(field.name()) && debug_leaves_as_is(value) {
            self.write_field(field.name(), |w| {
                w.write_char('"')?;
                w.write_str(value)?;
                w.write_char('"')
            });
        } else {
            self.delegate(field, |inner| inner.record_str(field, value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.is_plain() && plain_name(field.name()) {
            self.write_integer(field.name(), value);
        } else {
            self.delegate(field, |inner| inner.record_u64(field, value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.is_plain() && plain_name(field.name()) {
            self.write_integer(field.name(), value);
        } else {
            self.delegate(field, |inner| inner.record_i64(field, value));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.delegate(field, |inner| inner.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.delegate(field, |inner| inner.record_debug(field, value));
    }
}

impl VisitOutput<fmt::Result> for PlainVisitor<'_> {
    fn finish(self) -> fmt::Result {
        match self {
            Self::Default(inner) => inner.finish(),
            Self::Plain { result, .. } => result,
        }
    }
}

impl VisitFmt for PlainVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        match self {
            Self::Default(inner) => inner.writer(),
            Self::Plain { writer, .. } => writer,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// The lines `events` writes through a text layer with `fields`.
    fn lines<N>(fields: N, ansi: bool, events: fn()) -> String
    where
        N: for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static,
    {
        let out = Captured::default();
        let layer =
            tracing_subscriber::fmt::layer().with_ansi(ansi).without_time().fmt_fields(fields).with_writer(out.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), events);
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    fn events() {
        let none: Option<&str> = None;
        let error = std::io::Error::other("disk \"full\"");
        tracing::info!(target: "access", request_id = "b5614eda9a4a7cf9", method = "GET", path = "/a b",
            status = 200u16, count = 0u64, max = u64::MAX, delta = -3i64, zero = 0i64, ratio = 0.000339f64,
            tiny = 1e-7f64, ok = true, missing = none, shown = %"display \"quoted\"", peer = ?"debug");
        tracing::info!(target: "access", quote = "say \"hi\"", backslash = "a\\b", tab = "a\tb",
            newline = "a\nb", escape = "\u{1b}[31mred", unicode = "日本語", combining = "e\u{301}",
            empty = "", r#type = "raw", "a message with \"quotes\" and \u{1b}[0m");
        tracing::warn!(message = "message as a field", after = "x");
        tracing::error!(error = &error as &(dyn std::error::Error + 'static), "failed");
        tracing::info!("only a message");
        tracing::info!(only = "one");
        // The default visitor skips `log.` fields (tracing-log's) without a
        // separating space; `delegate` counts on it, this line checks it.
        tracing::info!(log.target = "x", n = 1u64, log.line = 3u64, after = "y");
        let span = tracing::info_span!("span", id = "abc", n = 7u64);
        let _entered = span.enter();
        tracing::info!(inside = "yes");
    }

    #[test]
    fn writes_what_the_default_formatter_writes() {
        for ansi in [false, true] {
            let default = lines(DefaultFields::new(), ansi, events);
            let plain = lines(PlainFields, ansi, events);
            assert_eq!(plain, default, "ansi = {ansi}");
            assert_eq!(default.lines().count(), 8, "{default}");
        }
    }

    #[test]
    fn only_what_debug_leaves_unchanged_is_written_as_it_is() {
        for plain in ["", "abc", "/a b", "b5614eda9a4a7cf9", "~!#$%&'()*+,-./:;<=>?@[]^_`{|}"] {
            assert!(debug_leaves_as_is(plain), "{plain}");
            assert_eq!(format!("{plain:?}"), format!("\"{plain}\""));
        }
        for escaped in ["\"", "\\", "\t", "\n", "\u{1b}", "\u{7f}", "é", "日本"] {
            assert!(!debug_leaves_as_is(escaped), "{escaped:?}");
        }
    }
}
