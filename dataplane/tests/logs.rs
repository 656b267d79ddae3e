//! The binary's log lines: JSON with the message at the top level, and no
//! terminal colour codes when the output is not a terminal.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The binary's log lines up to and including the one that says it is
/// serving (at most 10 s).
fn first_lines(format: &str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pier-dataplane"))
        .args(["--routes", &dir.path().display().to_string()])
        .args(["--listen", "127.0.0.1:0", "--listen-tls", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0", "--workers", "1"])
        .args(["--log-format", format])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        let serving = line.contains("serving");
        lines.push(line);
        if serving {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn json_lines_carry_the_message_at_the_top_level() {
    let lines = first_lines("json");
    let serving = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "serving")
        .unwrap_or_else(|| panic!("a JSON line with message \"serving\": {lines:#?}"));
    assert!(
        serving["listen"].is_string(),
        "fields at the top level too: {serving}"
    );
    assert!(serving.get("fields").is_none(), "{serving}");
}

#[test]
fn text_logs_to_a_pipe_have_no_colour_codes() {
    let lines = first_lines("text");
    assert!(lines.iter().any(|l| l.contains("serving")), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains('\x1b')), "{lines:#?}");
}
