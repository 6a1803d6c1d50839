//! Start-up choice of the I/O backend in a real process: `auto` falls back to `pwritev` with
//! one clear log line when io_uring is forbidden (here by a seccomp filter returning EPERM or
//! ENOSYS, as container runtimes do), and `uring` refuses to start instead of falling back.

use std::process::Command;

fn probe(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spate-io-probe")).args(args).output().expect("run probe");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn auto_falls_back_with_one_log_line_when_io_uring_is_forbidden() {
    for deny in ["deny-eperm", "deny-enosys"] {
        let (ok, stdout, stderr) = probe(&["auto", deny]);
        assert!(ok, "{deny}: {stderr}");
        assert_eq!(stdout.trim(), "backend=fallback", "{deny}");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("io_uring unavailable")).collect();
        assert_eq!(lines.len(), 1, "{deny}: exactly one log line, got:\n{stderr}");
        assert!(lines[0].contains("WARN") && lines[0].contains("fallback"), "{}", lines[0]);
        let errno_text = if deny == "deny-eperm" { "Operation not permitted" } else { "not implemented" };
        assert!(lines[0].contains(errno_text), "the line names the cause: {}", lines[0]);
    }
}

#[test]
fn explicit_uring_fails_clearly_instead_of_falling_back() {
    let (ok, stdout, stderr) = probe(&["uring", "deny-eperm"]);
    assert!(!ok);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("io_uring setup failed") && stderr.contains("Operation not permitted"),
        "{stderr}"
    );
}

#[test]
fn fallback_is_chosen_without_probing_and_auto_uses_io_uring_where_allowed() {
    let (ok, stdout, _) = probe(&["fallback", "deny-eperm"]);
    assert!(ok);
    assert_eq!(stdout.trim(), "backend=fallback");
    let (ok, stdout, stderr) = probe(&["auto"]);
    assert!(ok, "{stderr}");
    if std::env::var_os("SPATE_REQUIRE_URING").is_some() {
        assert_eq!(stdout.trim(), "backend=uring");
        assert!(!stderr.contains("io_uring unavailable"));
    }
}
