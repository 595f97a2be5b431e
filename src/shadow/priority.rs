//! The shadow thread's CPU priority: below the client path's, so that when
//! the cores are busy, mirrors wait (or are dropped and counted), never
//! clients.

use crate::server::ShadowNice;

/// Lowers the calling thread's CPU priority. Only this thread: on Linux
/// each thread has its own scheduling policy and nice value.
#[cfg(target_os = "linux")]
pub fn lower_current_thread(nice: ShadowNice) {
    let result = match nice {
        ShadowNice::Level(0) => return,
        ShadowNice::Level(level) => {
            let thread = rustix::thread::gettid();
            rustix::process::setpriority_process(Some(thread), i32::from(level))
                .map_err(|err| err.to_string())
        }
        ShadowNice::Idle => {
            use thread_priority::{
                set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
                ThreadPriority, ThreadSchedulePolicy,
            };
            set_thread_priority_and_policy(
                thread_native_id(),
                ThreadPriority::Min,
                ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
            )
            .map_err(|err| err.to_string())
        }
    };
    if let Err(error) = result {
        tracing::warn!(%error, ?nice, "cannot lower the shadow thread's CPU priority");
    }
}

/// Elsewhere the nice value is per process; lowering it would slow the
/// client path too.
#[cfg(not(target_os = "linux"))]
pub fn lower_current_thread(_nice: ShadowNice) {}
