//! The line every `bulkhead bench` prints above its tables: on what host, from what commit and
//! when the figures were taken, so that a reader can tell a regression from another machine.

use bulkhead_core::host::HostKind;

/// The host, the build and the time of a measurement, as one line.
pub fn line() -> String {
    let cpu = cpu_model().unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
    let kvm = HostKind::detect().describe();
    let commit = env!("BULKHEAD_COMMIT");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "Host: {cpu}, {cores} cores, Linux {kernel}, {kvm}; bulkhead {commit}; {} UTC",
        utc(now)
    )
}

/// The CPU's model name from `/proc/cpuinfo`.
fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, name)| name.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM`, in UTC (the proleptic Gregorian calendar;
/// the days-to-date step is Howard Hinnant's `civil_from_days`).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let minutes = (secs % 86_400) / 60;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", minutes / 60, minutes % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_the_calendar_ones() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc(1_796_658_000), "2026-12-07 15:40");
        assert_eq!(utc(4_107_542_399), "2100-02-28 23:59");
    }

    #[test]
    fn the_line_names_host_build_and_time() {
        let line = line();
        for part in ["Host: ", " cores, Linux ", "; bulkhead ", " UTC"] {
            assert!(line.contains(part), "{line}");
        }
    }
}
