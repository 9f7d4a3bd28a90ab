//! The guest's report lines, as the test init prints them on the serial console.
//!
//! Format: `BH <event> key=value key=value …`, one event a line, values without spaces (see the
//! top of `init.sh` for the events and their fields). Anything else on the console — firmware
//! and kernel messages — is not a report line. A value may hold `=`; the key ends at the first.

use std::fmt;

/// One `BH` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BhLine {
    /// The event: `ready`, `check`, `progress`, `warn`, `done`.
    pub event: String,
    /// The fields in the order printed.
    pub fields: Vec<(String, String)>,
}

impl BhLine {
    /// Parses a console line; `None` if it is not a report line.
    pub fn parse(line: &str) -> Option<BhLine> {
        let rest = line.trim().strip_prefix("BH ")?;
        let mut words = rest.split_whitespace();
        let event = words.next()?.to_string();
        let fields = words
            .filter_map(|w| {
                let (k, v) = w.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect();
        Some(BhLine { event, fields })
    }

    /// The value of the first field named `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Whether this is a `check` (or `done`) line with `status=ok`.
    pub fn is_ok(&self) -> bool {
        self.get("status") == Some("ok")
    }
}

impl fmt::Display for BhLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BH {}", self.event)?;
        for (k, v) in &self.fields {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_check_lines() {
        let l =
            BhLine::parse("BH check name=blk status=ok dev=vda bytes=4194304 md5=ab=cd\r").unwrap();
        assert_eq!(l.event, "check");
        assert_eq!(l.get("name"), Some("blk"));
        assert_eq!(l.get("bytes"), Some("4194304"));
        assert_eq!(l.get("md5"), Some("ab=cd"));
        assert!(l.is_ok());
        assert_eq!(l.get("reason"), None);
        assert_eq!(l.to_string(), "BH check name=blk status=ok dev=vda bytes=4194304 md5=ab=cd");
    }

    #[test]
    fn other_console_lines_are_not_reports() {
        for line in ["", "BH", "[    1.3] reboot: Power down", "xBH ready", "BHready a=b"] {
            assert!(BhLine::parse(line).is_none(), "{line:?}");
        }
        let fail = BhLine::parse("BH check name=rng status=fail reason=not-random").unwrap();
        assert!(!fail.is_ok());
    }
}
