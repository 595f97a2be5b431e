//! The `strangler` command: parse arguments, call the library, report errors.

use std::error::Error;
use std::process::ExitCode;

use clap::Parser;

/// jemalloc, because it gives memory back: an idle keep-alive connection
/// is parked without its buffers (`server::park`), and glibc's malloc kept
/// the freed buffers of 10,000 parked connections resident (170 MB against
/// 55 MB; `benches/RESULTS.md`).
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its start. A background thread purges
/// freed pages after a second (`dirty_decay_ms`, 10 s by default) instead
/// of waiting for allocations that an idle proxy does not make.
#[cfg(all(unix, not(target_env = "musl")))]
#[export_name = "_rjem_malloc_conf"]
pub static JEMALLOC_CONF: Option<&'static std::ffi::c_char> = Some(unsafe {
    // SAFETY: a NUL-terminated literal, alive for the whole program.
    &*c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr()
});

fn main() -> ExitCode {
    let cli = strangler::cli::Cli::parse();
    match strangler::cli::execute(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            let mut cause = err.source();
            while let Some(c) = cause {
                eprintln!("  caused by: {c}");
                cause = c.source();
            }
            ExitCode::FAILURE
        }
    }
}
