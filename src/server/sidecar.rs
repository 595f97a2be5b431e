//! Polls a rarely ready source (a shutdown signal, a once-a-second tick)
//! only when its own waker has fired, beside a busy future that wakes the
//! task on every request.
//!
//! `tokio::select!` polls every branch on every wake-up: for a connection
//! task that is the shutdown watch and the idle tick twice per request,
//! for nothing, about 2% of a small request's instructions. This is the
//! trick `FuturesUnordered` uses: each source gets a waker of its own that
//! marks it ready and then wakes the task.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

pub(crate) struct Sidecar {
    flag: Arc<Flag>,
    /// `flag` as a waker, made once.
    own_waker: Waker,
    /// The task waker last handed to `flag`, to skip the lock when the
    /// task's waker has not changed (the usual case).
    registered: Option<Waker>,
}

struct Flag {
    is_ready: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.is_ready.store(true, Ordering::Release);
        let task = match self.task.lock() {
            Ok(task) => task.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl Sidecar {
    /// The first `poll` polls the source, so that it registers its waker.
    pub(crate) fn new() -> Sidecar {
        let flag = Arc::new(Flag {
            is_ready: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        Sidecar {
            own_waker: Waker::from(flag.clone()),
            flag,
            registered: None,
        }
    }

    /// Calls `poll_source` with this sidecar's waker if that waker fired
    /// since the last call, or if the source was ready last time (a
    /// source that has just yielded, such as an interval, registers for
    /// its next event only when polled again); otherwise `Pending` without
    /// touching it.
    pub(crate) fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll_source: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let is_current = self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()));
        if !is_current {
            let waker = cx.waker().clone();
            match self.flag.task.lock() {
                Ok(mut task) => *task = Some(waker.clone()),
                Err(poisoned) => *poisoned.into_inner() = Some(waker.clone()),
            }
            self.registered = Some(waker);
        }
        if !self.flag.is_ready.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let poll = poll_source(&mut Context::from_waker(&self.own_waker));
        if poll.is_ready() {
            self.flag.is_ready.store(true, Ordering::Release);
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A task that counts its wake-ups.
    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_source_is_polled_only_after_it_woke() {
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let mut sidecar = Sidecar::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u8>();
        let polls = AtomicUsize::new(0);
        let mut poll = |sidecar: &mut Sidecar, cx: &mut Context<'_>| {
            sidecar.poll(cx, |cx| {
                polls.fetch_add(1, Ordering::SeqCst);
                rx.poll_recv(cx)
            })
        };
        // The task wakes for other work: only the first poll reaches the
        // source, to register.
        for _ in 0..3 {
            assert!(poll(&mut sidecar, &mut cx).is_pending());
        }
        tx.send(1).expect("send");
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task is woken");
        assert_eq!(poll(&mut sidecar, &mut cx), Poll::Ready(Some(1)));
        // Ready once, so polled again (to register for the next), then
        // left alone until it wakes.
        assert!(poll(&mut sidecar, &mut cx).is_pending());
        assert!(poll(&mut sidecar, &mut cx).is_pending());
        tx.send(2).expect("send");
        assert_eq!(task.0.load(Ordering::SeqCst), 2);
        assert_eq!(poll(&mut sidecar, &mut cx), Poll::Ready(Some(2)));
        assert_eq!(polls.load(Ordering::SeqCst), 4);
    }
}
