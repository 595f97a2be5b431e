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
                set_thread_priority_and_policy, thread_native_id, thread_schedule_policy,
                NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
            };
            let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            match set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
                // After the policy, the library resets the nice value to 0,
                // which a process started niced may not do. The policy is
                // what counts, and it is set.
                Err(_) if thread_schedule_policy().ok() == Some(idle) => Ok(()),
                other => other.map_err(|err| err.to_string()),
            }
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
