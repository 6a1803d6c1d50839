//! Opens the I/O backend the way a shard does, optionally after forbidding io_uring with a
//! seccomp filter (as Docker's default profile does), and prints which backend it got.
//!
//! Usage: `spate-io-probe <auto|uring|fallback> [deny-eperm|deny-enosys]`. Prints
//! `backend=<uring|fallback>` on success; log lines go to stderr.

use spate::io::BackendChoice;

/// Makes `io_uring_setup` fail with `errno` for this thread and every thread it creates later.
fn deny_io_uring(errno: i32) -> std::io::Result<()> {
    // seccomp_data.nr is at offset 0 of the data the filter inspects.
    let filter = [
        libc::sock_filter { code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, jt: 0, jf: 0, k: 0 },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA),
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog =
        libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut libc::sock_filter };
    // SAFETY: plain prctl calls; `prog` points to a filter that outlives the call, and the kernel
    // copies it before returning.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).init();
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() >= 2, "usage: {} <auto|uring|fallback> [deny-eperm|deny-enosys]", args[0]);
    let choice: BackendChoice = args[1].parse().map_err(anyhow::Error::msg)?;
    match args.get(2).map(String::as_str) {
        None => {}
        Some("deny-eperm") => deny_io_uring(libc::EPERM)?,
        Some("deny-enosys") => deny_io_uring(libc::ENOSYS)?,
        Some(other) => anyhow::bail!("unknown option {other:?}"),
    }
    let backend = spate::io::probe(choice)?;
    println!("backend={backend}");
    Ok(())
}
