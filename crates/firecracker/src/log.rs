//! The front's own log, as Firecracker's `--level`/`--log-path` and `PUT /logger` set it:
//! lines to a file (or a named pipe) or, without one, to stderr. The VMM's own output (the
//! guest's console, the core's messages) is not in it: it goes to this process's stdout and
//! stderr, which the core inherits.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Firecracker's log levels, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Off,
    Error,
    Warning,
    Info,
    Debug,
    Trace,
}

impl Level {
    /// Parses a level as Firecracker does: case-insensitive; `Warn` as well as `Warning`.
    pub fn parse(s: &str) -> Result<Level, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "off" => Level::Off,
            "error" => Level::Error,
            "warning" | "warn" => Level::Warning,
            "info" => Level::Info,
            "debug" => Level::Debug,
            "trace" => Level::Trace,
            _ => {
                return Err(format!(
                    "Invalid log level {s:?}: use Error, Warning, Info, Debug, Trace or Off."
                ))
            }
        })
    }
}

struct Sink {
    level: Level,
    show_level: bool,
    file: Option<File>,
}

/// Lines that could not be written (a full pipe): Firecracker's `logger.missed_log_count`.
static MISSED: AtomicU64 = AtomicU64::new(0);

/// The lines lost since the last call.
pub fn take_missed() -> u64 {
    MISSED.swap(0, Ordering::Relaxed)
}

static SINK: Mutex<Sink> =
    Mutex::new(Sink { level: Level::Warning, show_level: false, file: None });

/// Opens a log or metrics file as Firecracker does: appended, created if absent, and without
/// blocking — a named pipe (what firecracker-containerd gives) is opened read-write, which
/// never waits for its reader; a line a full pipe cannot take is lost.
pub fn open_output(path: &str) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// Sets the level and, where given, the file lines go to ([`open_output`]).
pub fn configure(
    level: Option<Level>,
    path: Option<&str>,
    show_level: Option<bool>,
) -> Result<(), String> {
    let file = match path {
        Some(p) => Some(open_output(p).map_err(|e| format!("Cannot open the log file {p}: {e}."))?),
        None => None,
    };
    let mut sink = SINK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(level) = level {
        sink.level = level;
    }
    if let Some(show) = show_level {
        sink.show_level = show;
    }
    if file.is_some() {
        sink.file = file;
    }
    Ok(())
}

/// Writes one line at `level`, if the level lets it through.
pub fn log(level: Level, message: &str) {
    let mut sink = SINK.lock().unwrap_or_else(|e| e.into_inner());
    if level > sink.level || level == Level::Off {
        return;
    }
    let line = if sink.show_level {
        format!("[bulkhead-firecracker:{level:?}] {message}\n")
    } else {
        format!("[bulkhead-firecracker] {message}\n")
    };
    // One write: a named pipe's reader gets the line whole or, when full, not at all.
    let written = match sink.file.as_mut() {
        Some(f) => f.write(line.as_bytes()),
        None => std::io::stderr().write(line.as_bytes()),
    };
    if !matches!(written, Ok(n) if n == line.len()) {
        MISSED.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_as_firecracker_spells_them() {
        assert_eq!(Level::parse("WARN"), Ok(Level::Warning));
        assert_eq!(Level::parse("Debug"), Ok(Level::Debug));
        assert!(Level::parse("loud").unwrap_err().contains("Error, Warning"));
        assert!(Level::Error < Level::Info);
    }
}
