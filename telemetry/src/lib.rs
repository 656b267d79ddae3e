//! What both of Pier's binaries report about themselves on `/metrics`,
//! written once: the standard `process_*` families (as Prometheus client
//! libraries name them, so the usual dashboards and alerts work) and
//! `pier_build_info`.
//!
//! The figures come from `/proc/self` when it is read (on scrape, never on
//! a request path). Where a file cannot be read (not Linux, a restricted
//! `/proc`), its families are left out rather than reported as zero.

use std::fmt::Write as _;

/// Appends `pier_build_info{binary,version} 1`.
pub fn render_build_info(out: &mut String, binary: &str, version: &str) {
    let _ = writeln!(
        out,
        "# HELP pier_build_info The running binary and its version.\n\
         # TYPE pier_build_info gauge\n\
         pier_build_info{{binary=\"{binary}\",version=\"{version}\"}} 1"
    );
}

/// Appends the `process_*` families of this process.
pub fn render_process(out: &mut String) {
    if let Some(stat) = read("/proc/self/stat").as_deref().and_then(Stat::parse) {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as u64;
        family(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            format_args!("{}", (stat.utime + stat.stime) as f64 / ticks),
        );
        family(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            format_args!("{}", stat.rss_pages * page),
        );
        family(
            out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            format_args!("{}", stat.vsize),
        );
        family(
            out,
            "process_threads",
            "gauge",
            "Threads of the process.",
            format_args!("{}", stat.threads),
        );
        if let Some(boot) = read("/proc/stat").as_deref().and_then(boot_time) {
            family(
                out,
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
                format_args!("{}", boot as f64 + stat.start_ticks as f64 / ticks),
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        family(
            out,
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            format_args!("{}", fds.count()),
        );
    }
    if let Some(max) = read("/proc/self/limits")
        .as_deref()
        .and_then(max_open_files)
    {
        family(
            out,
            "process_max_fds",
            "gauge",
            "The limit of open file descriptors.",
            format_args!("{max}"),
        );
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn family(out: &mut String, name: &str, kind: &str, help: &str, value: std::fmt::Arguments<'_>) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// The fields of `/proc/self/stat` reported here (proc(5)).
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    threads: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

impl Stat {
    /// Parses the line; the command name (field 2) may hold spaces and
    /// parentheses, so fields are counted from its last `)`.
    fn parse(line: &str) -> Option<Self> {
        let rest = &line[line.rfind(')')? + 1..];
        // Field 3 (state) is the first after the name.
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Self {
            utime: field(14)?,
            stime: field(15)?,
            threads: field(20)?,
            start_ticks: field(22)?,
            vsize: field(23)?,
            rss_pages: field(24)?,
        })
    }
}

/// `btime` of `/proc/stat`: boot time, seconds since the epoch.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The soft limit on the `Max open files` line of `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_whatever_the_command_name() {
        let line = "4242 (pier (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 150 50 0 0 20 0 7 0 123456 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                utime: 150,
                stime: 50,
                threads: 7,
                start_ticks: 123_456,
                vsize: 104_857_600,
                rss_pages: 2560,
            })
        );
        assert_eq!(Stat::parse("garbage"), None);
        assert_eq!(Stat::parse("1 (x) S 1 2"), None);
    }

    #[test]
    fn limits_and_boot_time_parse() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1764720000\n"),
            Some(1_764_720_000)
        );
    }

    #[test]
    fn this_process_reports_its_families() {
        let mut out = String::new();
        render_process(&mut out);
        render_build_info(&mut out, "pier-test", "1.2.3");
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
            "pier_build_info{binary=\"pier-test\",version=\"1.2.3\"} 1",
        ] {
            assert!(out.contains(name), "{name} missing from:\n{out}");
        }
        let rss: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse().ok())
            .expect("a number");
        assert!(rss > 1 << 20, "a running test holds more than 1 MiB: {rss}");
    }
}
