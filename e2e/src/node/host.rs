//! What the node changes on the host, and undoing it: the bridge and its
//! routes, the sysctls, a firewall guard, and what kubelet, kube-proxy and
//! containerd leave behind (iptables chains, mounts, cgroups, CNI state).
//!
//! Undoing is best effort and idempotent: it runs before a node starts
//! (after a run that died) and when it stops.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::HarnessError;
use crate::node::config::{CNI_NETWORK, Network};

/// The chain that keeps pod traffic on the machine: packets from the
/// bridge may be forwarded only back onto the bridge.
const GUARD_CHAIN: &str = "PIER-E2E-GUARD";

/// Kernel settings the node needs or that the kubelet changes, with the
/// values to restore.
const SYSCTLS: [(&str, Option<&str>); 5] = [
    ("net/ipv4/ip_forward", Some("1")),
    ("net/bridge/bridge-nf-call-iptables", Some("1")),
    ("vm/overcommit_memory", None),
    ("kernel/panic", None),
    ("kernel/panic_on_oops", None),
];

/// Host state saved when the node started, restored when it stops.
#[derive(Debug)]
pub(crate) struct Host {
    network: Network,
    saved: Vec<(&'static str, String)>,
}

impl Host {
    /// Clears what an earlier run may have left, then makes the bridge with
    /// the gateway address, routes the Service range onto it, sets the
    /// sysctls and installs the forwarding guard.
    pub(crate) fn prepare(network: Network) -> Result<Self, HarnessError> {
        let mut saved = Vec::new();
        for (key, _) in SYSCTLS {
            let path = Path::new("/proc/sys").join(key);
            if let Ok(value) = std::fs::read_to_string(&path) {
                saved.push((key, value.trim().to_owned()));
            }
        }
        let host = Self { network, saved };
        host.clean();
        let bridge = network.bridge;
        let address = format!("{}/{}", network.gateway, network.prefix);
        run("ip", &["link", "add", bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &address, "dev", bridge])?;
        run("ip", &["link", "set", bridge, "up"])?;
        run("ip", &["route", "add", network.services, "dev", bridge])?;
        for (key, value) in SYSCTLS {
            if let Some(value) = value {
                let path = Path::new("/proc/sys").join(key);
                std::fs::write(&path, value)
                    .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))?;
            }
        }
        run("iptables", &["-N", GUARD_CHAIN])?;
        run(
            "iptables",
            &[
                "-A",
                GUARD_CHAIN,
                "-i",
                bridge,
                "-o",
                bridge,
                "-j",
                "ACCEPT",
            ],
        )?;
        run("iptables", &["-A", GUARD_CHAIN, "-i", bridge, "-j", "DROP"])?;
        run("iptables", &["-I", "FORWARD", "1", "-j", GUARD_CHAIN])?;
        Ok(host)
    }

    /// Removes the harness's and the node's traces, leaving the sysctls.
    fn clean(&self) {
        remove_kube_chains();
        let _ = run("ip", &["route", "del", self.network.services]);
        // Pods' veths whose namespace outlived them go with their bridge
        // port, before the bridge itself.
        if let Ok(ports) = output("ip", &["-o", "link", "show", "master", self.network.bridge]) {
            for port in ports.lines().filter_map(|l| l.split(": ").nth(1)) {
                let name = port.split('@').next().unwrap_or(port);
                let _ = run("ip", &["link", "del", name]);
            }
        }
        let _ = run("ip", &["link", "del", self.network.bridge]);
        remove_cgroups("kubepods");
        for dir in [
            PathBuf::from("/var/lib/cni/networks").join(CNI_NETWORK),
            PathBuf::from("/var/lib/cni/results"),
            PathBuf::from("/var/log/containers"),
        ] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.clean();
        for (key, value) in &self.saved {
            let _ = std::fs::write(Path::new("/proc/sys").join(key), value);
        }
    }
}

/// Unmounts everything under `dir`, deepest first (the kubelet bind-mounts
/// its root onto itself, and volumes and container roots sit below).
pub(crate) fn unmount_under(dir: &Path) {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = run("umount", &["-l", point]);
    }
}

/// Removes the files of `dir` whose names start with `prefix`.
pub(crate) fn remove_matching(dir: &Path, prefix: &str) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// SIGKILLs every process whose command line `matches`, and all of its
/// descendants, children first.
pub(crate) fn kill_trees(matches: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    // (pid, parent pid, command line) of every process.
    let mut all = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The parent is the second field after the parenthesised name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok())
            .unwrap_or(0);
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        all.push((
            pid,
            ppid,
            String::from_utf8_lossy(&cmdline).replace('\0', " "),
        ));
    }
    let mut doomed: Vec<i32> = all
        .iter()
        .filter(|(_, _, cmd)| matches(cmd))
        .map(|(pid, _, _)| *pid)
        .collect();
    let mut i = 0;
    while i < doomed.len() {
        let parent = doomed[i];
        doomed.extend(
            all.iter()
                .filter(|(_, p, _)| *p == parent)
                .map(|(pid, _, _)| *pid),
        );
        i += 1;
    }
    for pid in doomed.iter().rev() {
        if let Some(pid) = rustix::process::Pid::from_raw(*pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Deletes every rule that jumps to a `KUBE-` chain or the guard, then
/// those chains, in every table of IPv4 and IPv6 (kubelet and kube-proxy
/// leave them after they exit; `KUBE-FIREWALL` drops traffic to loopback
/// from other interfaces).
fn remove_kube_chains() {
    for tool in ["iptables", "ip6tables"] {
        for table in ["filter", "nat", "mangle"] {
            let Ok(rules) = output(tool, &["-t", table, "-S"]) else {
                continue;
            };
            let ours = |name: &str| name.starts_with("KUBE-") || name == GUARD_CHAIN;
            let mut chains = Vec::new();
            for line in rules.lines() {
                let words = rule_words(line);
                let words: Vec<&str> = words.iter().map(String::as_str).collect();
                match words.as_slice() {
                    ["-N", chain] if ours(chain) => chains.push((*chain).to_owned()),
                    ["-A", chain, rest @ ..] if !ours(chain) && rest.iter().any(|w| ours(w)) => {
                        let mut args = vec!["-t", table, "-D", chain];
                        args.extend_from_slice(rest);
                        let _ = run(tool, &args);
                    }
                    _ => {}
                }
            }
            for chain in &chains {
                let _ = run(tool, &["-t", table, "-F", chain]);
            }
            for chain in &chains {
                let _ = run(tool, &["-t", table, "-X", chain]);
            }
        }
    }
}

/// The words of one `iptables -S` line, as the shell would split it
/// (comments are double-quoted, with `\"` inside).
fn rule_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut started = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            '\\' if quoted => word.extend(chars.next()),
            c if c.is_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

/// Removes the cgroups named `name` at the root of every cgroup v1
/// hierarchy, deepest first (pods' cgroups sit there, outside the caller's).
fn remove_cgroups(name: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for hierarchy in hierarchies.flatten() {
        let root = hierarchy.path().join(name);
        if root.is_dir() {
            let mut dirs = Vec::new();
            collect_dirs(&root, &mut dirs);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for dir in dirs {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}

/// Runs a command; an error quotes its output.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<(), HarnessError> {
    output(program, args).map(drop)
}

/// Runs a command and returns its standard output.
pub(crate) fn output(program: &str, args: &[&str]) -> Result<String, HarnessError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| HarnessError::io(format!("running {program}"), e))?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            command: format!("{program} {}", args.join(" ")),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_words_keep_quoted_comments_whole() {
        let line =
            r#"-A INPUT -m comment --comment "kubernetes \"health\" ports" -j KUBE-NODEPORTS"#;
        assert_eq!(
            rule_words(line),
            [
                "-A",
                "INPUT",
                "-m",
                "comment",
                "--comment",
                "kubernetes \"health\" ports",
                "-j",
                "KUBE-NODEPORTS"
            ]
        );
        assert_eq!(
            rule_words(r#"-A X --comment "" -j Y"#),
            ["-A", "X", "--comment", "", "-j", "Y"]
        );
    }
}
