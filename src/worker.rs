//! Which worker thread this is. With `--workers N` each worker runs a
//! runtime of its own and serves the connections it accepted from start to
//! end; state that connections share per thread (backend pools) is kept in
//! one shard per worker, found by this index.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Past this many workers, workers share shards (correct, only slower).
const MAX_SHARDS: usize = 64;

/// The index of threads that serve no client (the shadow thread). They
/// keep a shard of their own: a backend connection is driven by the
/// runtime that opened it, and a lock taken at low CPU priority must not
/// be one a worker waits for.
pub(crate) const BACKGROUND: usize = usize::MAX;

/// The most workers any proxy in this process was started with.
static EXPECTED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker running on this thread; 0 on any thread that is not one of
/// the extra workers (the main thread is the first worker).
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// A worker's runtime: single-threaded, with I/O and timers, writing the
/// access lines the thread holds whenever it is about to wait for events
/// (see `telemetry::access::batch_on_this_thread`).
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(crate::telemetry::access::flush)
        .build()
}

/// Marks the calling thread as worker `index`.
pub(crate) fn set_current(index: usize) {
    INDEX.with(|cell| cell.set(index));
}

/// Which of `shards` (made with `shard_count() + 1`) this thread uses:
/// its worker's, or the last one for a background thread.
pub fn shard_index(shards: usize) -> usize {
    match current() {
        BACKGROUND => shards.saturating_sub(1),
        worker => worker % shards.saturating_sub(1).max(1),
    }
}

/// How many shards per-worker state made from now on keeps: one per core,
/// or per worker when more were asked for (`expect_workers`).
pub fn shard_count() -> usize {
    EXPECTED
        .load(Ordering::Relaxed)
        .max(default_count())
        .min(MAX_SHARDS)
}

/// Tells per-worker state made after this call that `workers` workers may
/// use it (pools are built before the workers start).
pub(crate) fn expect_workers(workers: usize) {
    EXPECTED.fetch_max(workers, Ordering::Relaxed);
}

/// The default number of workers: one per core (as the process's CPU
/// quota allows). Read once: it reads cgroup files.
pub fn default_count() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_workers_asked_for_up_to_the_cap() {
        assert!(shard_count() >= default_count());
        expect_workers(3);
        assert!(shard_count() >= 3);
        expect_workers(10_000);
        assert_eq!(shard_count(), MAX_SHARDS);
        // Fewer workers later never shrink what others were promised.
        expect_workers(1);
        assert_eq!(shard_count(), MAX_SHARDS);
    }

    #[test]
    fn background_threads_keep_the_last_shard_to_themselves() {
        // 3 shards: workers 0 and 1, then the background one.
        assert_eq!(shard_index(3), 0);
        let shards = std::thread::spawn(|| {
            set_current(1);
            let worker = shard_index(3);
            set_current(2);
            let wrapped = shard_index(3);
            set_current(BACKGROUND);
            (worker, wrapped, shard_index(3))
        })
        .join()
        .unwrap();
        assert_eq!(shards, (1, 0, 2));
    }
}
