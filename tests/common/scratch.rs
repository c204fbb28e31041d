//! What scratch servers and directories may leave behind, for tests that check they
//! leave nothing.

use std::path::Path;
use std::time::{Duration, Instant};

/// Processes working in `dir` (PostgreSQL's all run in their data directory, and so do
/// the restore_command calls of a scratch server), as "PID: command line".
pub fn processes_in(dir: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) else {
            continue;
        };
        if cwd.starts_with(dir) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!(
                "{}: {}",
                entry.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    found
}

/// Waits up to 10 s for the processes in `dir` to go.
pub fn none_left_in(dir: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_in(dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left running: {:?}",
            processes_in(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whatever is in `dir` (the scratch parent).
pub fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}
