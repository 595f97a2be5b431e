//! Which worker thread this is. With `--workers N` each worker runs a
//! runtime of its own and serves the connections it accepted from start to
//! end; state that connections share per thread (backend pools) is kept in
//! one shard per worker, found by this index.

use std::cell::Cell;
use std::sync::OnceLock;

/// Shards are sized once, for the machine; past this many workers, shards
/// are shared (correct, only slower).
const MAX_SHARDS: usize = 64;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker running on this thread; 0 on any thread that is not one of
/// the extra workers (the main thread is the first worker).
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Marks the calling thread as worker `index`.
pub(crate) fn set_current(index: usize) {
    INDEX.with(|cell| cell.set(index));
}

/// How many shards per-worker state keeps: one per core, as the default
/// worker count is.
pub fn shard_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| default_count().min(MAX_SHARDS))
}

/// The default number of workers: one per core.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
