//! Reading the end of a log file for error messages.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How much of the end of a log is read; enough for dozens of long lines.
const TAIL_BYTES: u64 = 32 * 1024;

/// The last `lines` lines of the file at `path`, or a note saying why they
/// could not be read. Never fails: it only decorates other errors.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match read_tail(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            let last = all[start..].join("\n");
            if last.trim().is_empty() {
                "    (empty)".to_owned()
            } else {
                last.lines()
                    .map(|line| format!("    {line}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Err(e) => format!("    (cannot read {}: {e})", path.display()),
    }
}

fn read_tail(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if start > 0 {
        // Drop the first, probably partial, line.
        if let Some(newline) = text.find('\n') {
            text.drain(..=newline);
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn keeps_the_last_lines_indented() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        for i in 0..10 {
            writeln!(file, "line {i}").expect("write");
        }
        assert_eq!(tail(file.path(), 2), "    line 8\n    line 9");
    }

    #[test]
    fn says_why_it_has_nothing() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        assert_eq!(tail(file.path(), 5), "    (empty)");
        assert!(tail(Path::new("/nonexistent/pier-e2e.log"), 5).contains("cannot read"));
    }
}
