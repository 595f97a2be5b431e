//! The shadow thread's CPU priority: below the client path's, so that when
//! the cores are busy, mirrors wait (or are dropped and counted), never
//! clients.

/// Raises the calling thread's nice value by `nice` (0 leaves it). Only
/// this thread: on Linux each thread has its own nice value.
#[cfg(target_os = "linux")]
pub fn lower_current_thread(nice: u8) {
    if nice == 0 {
        return;
    }
    let thread = rustix::thread::gettid();
    if let Err(err) = rustix::process::setpriority_process(Some(thread), i32::from(nice)) {
        tracing::warn!(error = %err, nice, "cannot lower the shadow thread's CPU priority");
    }
}

/// Elsewhere the nice value is per process; lowering it would slow the
/// client path too.
#[cfg(not(target_os = "linux"))]
pub fn lower_current_thread(_nice: u8) {}
