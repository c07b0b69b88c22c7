//! Group commit: concurrent requests share one transaction and one fsync.
//!
//! Every sync request ends in a durable commit, and on a real disk the
//! fsync of that commit costs more than the request's own writes. So the
//! requests that reach the writer while a commit is under way wait in a
//! queue; when it ends, one of them (the *leader*) takes the whole queue,
//! up to [`MAX_GROUP`], and runs it as one group: one transaction, one
//! savepoint per request, one commit. The others sleep until their result
//! is there. No thread of its own: the leader is whichever waiting request
//! finds no group running, as in PostgreSQL's and InnoDB's group commit.
//!
//! The group's work function gets every job of the group and returns one
//! result per job, in order. It decides what a failure costs: one
//! request's failure rolls back its own savepoint; a failed commit fails
//! the whole group. A panic in it fails every request of the group with the
//! `panicked` result, and the next group runs as usual.
//!
//! A request's result is handed out only after the group's work function
//! returned, and then its `settle` function: the leader gives up the lead
//! first, so that the next group's work overlaps this group's wait for
//! the disk (the work commits without syncing; `settle` syncs, and turns
//! every result into an error if it cannot). So an answer never leaves
//! before the commit it reports is durable.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Condvar, Mutex, MutexGuard};

/// At most this many requests in one group: a request never waits behind
/// more than this many others' writes.
pub const MAX_GROUP: usize = 64;

/// The queue and the results of one kind of job (see the module docs).
pub struct GroupCommit<J, R> {
    state: Mutex<State<J, R>>,
    wake: Condvar,
}

struct State<J, R> {
    queue: Vec<(u64, J)>,
    done: HashMap<u64, R>,
    leading: bool,
    /// Requests in the running group.
    running: usize,
    next_ticket: u64,
    /// Groups run, and requests in them (for the log and the tests).
    groups: u64,
    grouped: u64,
    busy: std::time::Duration,
}

/// How many groups ran, and how many requests they held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStats {
    /// Groups run (transactions committed or failed).
    pub groups: u64,
    /// Requests run in them.
    pub requests: u64,
    /// Time spent running groups (the writer's busy time).
    pub busy: std::time::Duration,
    /// Requests waiting for the next group now.
    pub queued: usize,
    /// Requests in the group running now.
    pub running: usize,
}

impl<J, R> std::fmt::Debug for GroupCommit<J, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("stats", &self.stats())
            .finish()
    }
}

impl<J, R> Default for GroupCommit<J, R> {
    fn default() -> Self {
        GroupCommit {
            state: Mutex::new(State {
                queue: Vec::new(),
                done: HashMap::new(),
                leading: false,
                running: 0,
                next_ticket: 0,
                groups: 0,
                grouped: 0,
                busy: std::time::Duration::ZERO,
            }),
            wake: Condvar::new(),
        }
    }
}

impl<J, R> GroupCommit<J, R> {
    fn lock(&self) -> MutexGuard<'_, State<J, R>> {
        // No user code runs under this lock, so a poisoned lock holds a
        // consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Groups and requests so far.
    pub fn stats(&self) -> GroupStats {
        let st = self.lock();
        GroupStats {
            groups: st.groups,
            requests: st.grouped,
            busy: st.busy,
            queued: st.queue.len(),
            running: st.running,
        }
    }

    /// Queues `job` and returns its result once its group ran: as the
    /// leader, running `work` over the group, or as a follower, woken
    /// when the leader is done. Blocking.
    pub fn run(
        &self,
        job: J,
        work: impl Fn(Vec<J>) -> Vec<R>,
        settle: impl Fn(&mut [R]),
        panicked: impl Fn() -> R,
    ) -> R {
        let mut st = self.lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push((ticket, job));
        loop {
            if let Some(result) = st.done.remove(&ticket) {
                return result;
            }
            // Wait while a group runs, or while this request's group
            // settles and nothing else is queued.
            if st.leading || st.queue.is_empty() {
                st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Lead the next group: the oldest requests first.
            st.leading = true;
            let take = st.queue.len().min(MAX_GROUP);
            let (tickets, jobs): (Vec<u64>, Vec<J>) = st.queue.drain(..take).unzip();
            st.running = take;
            drop(st);
            let n = jobs.len();
            let started = std::time::Instant::now();
            let results = catch_unwind(AssertUnwindSafe(|| work(jobs)))
                .ok()
                .filter(|r| r.len() == n);
            // Let the next group start while this one settles.
            st = self.lock();
            st.leading = false;
            st.running = 0;
            st.groups += 1;
            st.grouped += n as u64;
            st.busy += started.elapsed();
            self.wake.notify_all();
            drop(st);
            let results =
                results.and_then(|mut r| catch_unwind(AssertUnwindSafe(|| settle(&mut r))).ok().map(|()| r));
            st = self.lock();
            match results {
                Some(results) => st.done.extend(tickets.into_iter().zip(results)),
                None => {
                    tracing::error!(
                        requests = n,
                        "a commit group failed unexpectedly; its requests fail"
                    );
                    for t in tickets {
                        st.done.insert(t, panicked());
                    }
                }
            }
            self.wake.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn every_job_gets_its_own_result_and_concurrent_jobs_share_groups() {
        let group: GroupCommit<usize, usize> = GroupCommit::default();
        let runs = AtomicUsize::new(0);
        let results: Vec<usize> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..40)
                .map(|i| {
                    let (group, runs) = (&group, &runs);
                    s.spawn(move || {
                        group.run(
                            i,
                            |jobs| {
                                runs.fetch_add(1, Ordering::SeqCst);
                                // A commit that takes a while: others queue.
                                std::thread::sleep(Duration::from_millis(5));
                                jobs.into_iter().map(|j| j * 10).collect()
                            },
                            |results| results.iter_mut().for_each(|r| *r += 1),
                            || usize::MAX,
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert_eq!(results, (0..40).map(|i| i * 10 + 1).collect::<Vec<_>>());
        let stats = group.stats();
        assert_eq!(stats.requests, 40);
        assert_eq!(stats.groups, runs.load(Ordering::SeqCst) as u64);
        assert!(
            stats.groups < 40,
            "40 concurrent jobs in {} groups: none shared",
            stats.groups
        );
    }

    #[test]
    fn a_panicking_group_fails_its_jobs_and_the_next_group_runs() {
        let group: GroupCommit<i32, Result<i32, &'static str>> = GroupCommit::default();
        let ok = |jobs: Vec<i32>| jobs.into_iter().map(Ok).collect();
        let r = group.run(1, |_| panic!("boom"), |_| {}, || Err("panicked"));
        assert_eq!(r, Err("panicked"));
        let r = group.run(2, ok, |_| {}, || Err("panicked"));
        assert_eq!(r, Ok(2));
        // A work function that loses a result fails the group too.
        let r = group.run(3, |_| Vec::new(), |_| {}, || Err("panicked"));
        assert_eq!(r, Err("panicked"));
        // So does a panic while settling.
        let r = group.run(4, ok, |_| panic!("disk"), || Err("panicked"));
        assert_eq!(r, Err("panicked"));
        // A settle that fails turns the results into errors.
        let r = group.run(
            5,
            ok,
            |rs| rs.iter_mut().for_each(|r| *r = Err("unsynced")),
            || Err("panicked"),
        );
        assert_eq!(r, Err("unsynced"));
        assert_eq!(group.stats().groups, 5);
    }
}
