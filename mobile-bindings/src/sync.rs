//! The sync's types as they cross the boundary: the foreign-implemented
//! [`SyncProgress`] trait, [`SyncStep`], [`SyncReport`], and the small
//! pieces that run the core's blocking sync off the caller's thread.

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::CrvsError;

/// The phase a sync is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncPhase {
    /// Batching new changes into signed change sets.
    Preparing,
    /// Sending change sets.
    Pushing,
    /// Receiving the server's updates.
    Pulling,
    /// Finished.
    Done,
}

impl From<crvs_core::SyncPhase> for SyncPhase {
    fn from(p: crvs_core::SyncPhase) -> Self {
        match p {
            crvs_core::SyncPhase::Preparing => SyncPhase::Preparing,
            crvs_core::SyncPhase::Pushing => SyncPhase::Pushing,
            crvs_core::SyncPhase::Pulling => SyncPhase::Pulling,
            crvs_core::SyncPhase::Done => SyncPhase::Done,
        }
    }
}

/// One step of a sync, given to [`SyncProgress::on_step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct SyncStep {
    /// The phase.
    pub phase: SyncPhase,
    /// Change sets the server acknowledged so far in this sync.
    pub pushed: u64,
    /// Change sets to acknowledge in this sync (grows if the server asks
    /// for a resend).
    pub total: u64,
    /// Record updates from the server applied so far.
    pub pulled: u64,
}

impl From<crvs_core::SyncProgress> for SyncStep {
    fn from(p: crvs_core::SyncProgress) -> Self {
        SyncStep {
            phase: p.phase.into(),
            pushed: p.pushed,
            total: p.total,
            pulled: p.pulled,
        }
    }
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SyncReport {
    /// Change sets the server acknowledged during this sync.
    pub pushed: u64,
    /// Records carried by those change sets.
    pub records_pushed: u64,
    /// Records updated by the server's changes during this sync.
    pub pulled: u64,
    /// KIdCs that arrived during this sync.
    pub kidcs_received: u64,
    /// Records of the office made on other tablets that arrived.
    pub records_received: u64,
    /// Change sets still unacknowledged after the sync.
    pub pending: u64,
    /// Records whose sync state is still `pending`.
    pub records_pending: u64,
    /// Change sets made from new changes during this sync.
    pub change_sets_created: u64,
    /// HTTP round trips.
    pub requests: u64,
    /// When the server asked to resend from an earlier change set (it lost
    /// state), the sequence number it resent from.
    pub resent_from: Option<u64>,
    /// The progress callback asked to stop: the sync stopped cleanly after
    /// a stored step. Sync again to continue.
    pub cancelled: bool,
}

impl From<crvs_core::SyncReport> for SyncReport {
    fn from(r: crvs_core::SyncReport) -> Self {
        SyncReport {
            pushed: r.pushed,
            records_pushed: r.records_pushed,
            pulled: r.pulled,
            kidcs_received: r.kidcs_received,
            records_received: r.records_received,
            pending: r.pending,
            records_pending: r.records_pending,
            change_sets_created: r.change_sets_created,
            requests: r.requests,
            resent_from: r.resent_from,
            cancelled: r.cancelled,
        }
    }
}

/// Watches a sync and may stop it; implemented in Kotlin, Swift or Python.
///
/// It is called from a background thread, never from the caller's.
#[uniffi::export(foreign)]
pub trait SyncProgress: Send + Sync {
    /// Called after each step. Return `true` to go on, `false` to stop
    /// cleanly (the report is then marked `cancelled`). Throwing stops
    /// the sync too, and the sync then fails with that `CrvsError`, or
    /// with `CrvsError.CallbackFailed` for any other exception; what was
    /// done before is stored, and the next sync goes on from there.
    fn on_step(&self, step: SyncStep) -> Result<bool, CrvsError>;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Adapts a foreign [`SyncProgress`] to the core's observer, keeping the
/// first error it threw so that the sync can fail with it.
pub(crate) struct Observer {
    progress: Arc<dyn SyncProgress>,
    failure: Mutex<Option<CrvsError>>,
}

impl Observer {
    pub(crate) fn new(progress: Arc<dyn SyncProgress>) -> Observer {
        Observer {
            progress,
            failure: Mutex::new(None),
        }
    }

    /// The core's result, unless the callback threw: then its error.
    pub(crate) fn outcome(
        self,
        result: crvs_core::Result<crvs_core::SyncReport>,
    ) -> Result<SyncReport, CrvsError> {
        match self.failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(result?.into()),
        }
    }
}

impl crvs_core::SyncObserver for Observer {
    fn progress(&self, p: crvs_core::SyncProgress) -> ControlFlow<()> {
        match self.progress.on_step(p.into()) {
            Ok(true) => ControlFlow::Continue(()),
            Ok(false) => ControlFlow::Break(()),
            Err(e) => {
                lock(&self.failure).get_or_insert(e);
                ControlFlow::Break(())
            }
        }
    }
}

/// Runs `work` on a new thread and resolves to its result, so that an
/// async export needs no async runtime on the tablet. A panic in `work`
/// becomes an error; the core's transactions roll back on unwind.
pub(crate) fn on_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CrvsError> + Send + 'static,
) -> impl Future<Output = Result<T, CrvsError>> + Send {
    let slot: Arc<Mutex<Slot<T>>> = Arc::new(Mutex::new(Slot {
        value: None,
        waker: None,
    }));
    let sender = Arc::clone(&slot);
    let spawned = std::thread::Builder::new()
        .name("crvs-sync".into())
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|_| {
                Err(CrvsError::Other {
                    code: "internal".into(),
                    reason: "the sync stopped on an internal error".into(),
                })
            });
            let waker = {
                let mut s = lock(&sender);
                s.value = Some(result);
                s.waker.take()
            };
            // Woken after the lock is released: waking may poll at once.
            if let Some(w) = waker {
                w.wake();
            }
        });
    if let Err(e) = spawned {
        lock(&slot).value = Some(Err(CrvsError::Storage {
            message: format!("could not start the sync thread: {e}"),
        }));
    }
    Receiver(slot)
}

struct Slot<T> {
    value: Option<Result<T, CrvsError>>,
    waker: Option<Waker>,
}

struct Receiver<T>(Arc<Mutex<Slot<T>>>);

impl<T> Future for Receiver<T> {
    type Output = Result<T, CrvsError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = lock(&self.0);
        match slot.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct ThreadWaker(std::thread::Thread);

    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    /// A minimal executor: polls, parks until woken.
    fn block_on<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    #[test]
    fn work_on_a_thread_resolves_to_its_result_off_the_callers_thread() {
        let caller = std::thread::current().id();
        let worker = block_on(on_thread(|| Ok(std::thread::current().id()))).unwrap();
        assert_ne!(worker, caller);
        assert_eq!(
            block_on(on_thread(|| Err::<(), _>(CrvsError::NotFound))),
            Err(CrvsError::NotFound)
        );
    }

    #[test]
    fn a_panic_on_the_thread_becomes_an_error() {
        let result = block_on(on_thread(|| -> Result<(), CrvsError> { panic!("boom") }));
        assert!(matches!(result, Err(CrvsError::Other { ref code, .. }) if code == "internal"));
    }

    struct Scripted(Vec<Result<bool, CrvsError>>, Mutex<usize>);

    impl SyncProgress for Scripted {
        fn on_step(&self, _: SyncStep) -> Result<bool, CrvsError> {
            let mut i = lock(&self.1);
            *i += 1;
            self.0[*i - 1].clone()
        }
    }

    fn step() -> crvs_core::SyncProgress {
        crvs_core::SyncProgress {
            phase: crvs_core::SyncPhase::Pushing,
            pushed: 1,
            total: 2,
            pulled: 0,
        }
    }

    #[test]
    fn a_throwing_callback_stops_the_sync_and_its_error_wins_over_the_report() {
        use crvs_core::SyncObserver;
        let scripted = Scripted(
            vec![Ok(true), Err(CrvsError::CallbackFailed), Ok(true)],
            Mutex::new(0),
        );
        let observer = Observer::new(Arc::new(scripted));
        assert_eq!(observer.progress(step()), ControlFlow::Continue(()));
        assert_eq!(observer.progress(step()), ControlFlow::Break(()));
        let report = crvs_core::SyncReport {
            cancelled: true,
            ..Default::default()
        };
        assert_eq!(observer.outcome(Ok(report)), Err(CrvsError::CallbackFailed));
    }

    #[test]
    fn a_callback_returning_false_cancels_with_a_report() {
        use crvs_core::SyncObserver;
        let observer = Observer::new(Arc::new(Scripted(vec![Ok(false)], Mutex::new(0))));
        assert_eq!(observer.progress(step()), ControlFlow::Break(()));
        let report = crvs_core::SyncReport {
            cancelled: true,
            ..Default::default()
        };
        assert!(observer.outcome(Ok(report)).unwrap().cancelled);
    }
}
