//! Where things are printed: results on stdout (text or JSON), logs and
//! progress on stderr, so that `--output json | jq` always sees clean JSON.

use std::io::Write;

use crate::GlobalArgs;

struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
            // Dependencies' debug chatter (HTTP internals) only at -vvv.
            && (metadata.target().starts_with("certsmith")
                || metadata.level() <= log::Level::Warn
                || self.level >= log::LevelFilter::Trace)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug => "debug",
                log::Level::Trace => "trace",
            };
            let _ = writeln!(std::io::stderr().lock(), "{level}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// Sends `log` records to stderr at the level `-v`/`-q` ask for.
pub(crate) fn init_logging(global: &GlobalArgs) {
    let level = if global.quiet {
        log::LevelFilter::Error
    } else {
        match global.verbose {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            2 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        }
    };
    if log::set_boxed_logger(Box::new(StderrLogger { level })).is_ok() {
        log::set_max_level(level);
    }
}

/// Prints one JSON value as a line on stdout.
pub(crate) fn print_json(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, value);
    let _ = writeln!(out);
}

/// Prints an error and an optional hint on stderr.
pub(crate) fn print_error(message: &str, hint: Option<&str>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "error: {message}");
    if let Some(h) = hint {
        let _ = writeln!(err, "hint: {h}");
    }
}
