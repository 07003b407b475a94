//! Write-behind for the embedded log's segment files: appends hand their frames to a queue, and
//! one thread per log writes them to disk in order.
//!
//! Why: the embedded log is appended to by the generator's thread, whose lateness is every
//! event's latency. Written through, a segment's frames met the file system's stalls there (a
//! `write` blocked for 250-500 ms under dirty-page writeback at 88 MB/s, measured in `lk run`
//! on rush hour). The queue absorbs such stalls; it is bounded in bytes, so a disk that cannot
//! keep up still slows the appends down, and nothing is dropped.
//!
//! The writer syncs each segment it seals (`fdatasync`), so written pages never pile up to the
//! kernel's background-writeback threshold (about 2.3 GB here, reached 26 s into rush hour),
//! where the kernel's flusher took the CPU in bursts; the writing happens on this thread, which
//! runs at idle priority ([`crate::runtime::background`]).
//!
//! **Invariants:** jobs run in the order they were queued, so a segment's frames land in order
//! and a deletion or a barrier comes after every frame queued before it. A segment is marked
//! complete only once it is sealed and all of it is written: the log drops a segment's memory
//! only then, so a read never meets a file that is not all there. A write that fails is kept
//! and returned to the next caller of [`WriteQueue::push`] or [`WriteQueue::barrier`], naming
//! the file; what is in memory is not lost. When the queue has nothing to do it flushes what it
//! wrote, so an idle log's files are up to date.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::log::LogError;

/// A segment's file, written by the queue's thread only.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    pub(crate) path: PathBuf,
    /// Opened (created) at the first frame, unless given open.
    file: Mutex<Option<BufWriter<File>>>,
    /// Sealed and written in full.
    complete: AtomicBool,
}

impl SegmentFile {
    /// A new segment's file, created when its first frame is written.
    pub(crate) fn new(path: PathBuf) -> Arc<Self> {
        Arc::new(Self { path, file: Mutex::new(None), complete: AtomicBool::new(false) })
    }

    /// A segment file that exists; `open` for the one appends continue into.
    pub(crate) fn existing(path: PathBuf, open: Option<File>) -> Arc<Self> {
        let complete = open.is_none();
        let file = open.map(|file| BufWriter::with_capacity(1 << 20, file));
        Arc::new(Self { path, file: Mutex::new(file), complete: AtomicBool::new(complete) })
    }

    /// Whether the segment is sealed and all of it is on disk.
    pub(crate) fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut file = self.file.lock().expect("not poisoned");
        if file.is_none() {
            let opened = OpenOptions::new().create(true).append(true).open(&self.path)?;
            *file = Some(BufWriter::with_capacity(1 << 20, opened));
        }
        file.as_mut().expect("opened above").write_all(bytes)
    }

    fn flush(&self) -> std::io::Result<()> {
        match self.file.lock().expect("not poisoned").as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }

    /// Flushes and closes the file (creating it if it never had a frame) and marks it complete.
    fn seal(&self) -> std::io::Result<()> {
        let mut file = self.file.lock().expect("not poisoned");
        match file.take() {
            Some(mut open) => {
                open.flush()?;
                open.get_ref().sync_data()?;
            }
            None => drop(OpenOptions::new().create(true).append(true).open(&self.path)?),
        }
        self.complete.store(true, Ordering::Release);
        Ok(())
    }

    fn delete(&self) -> std::io::Result<()> {
        drop(self.file.lock().expect("not poisoned").take());
        match std::fs::remove_file(&self.path) {
            // A segment that never had a frame may never have been created.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

enum Job {
    Frame(Arc<SegmentFile>, Vec<u8>),
    Seal(Arc<SegmentFile>),
    Delete(Arc<SegmentFile>),
    /// Everything queued before it is written and flushed; then the flag is set.
    Barrier(Arc<(Mutex<bool>, Condvar)>),
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Frame bytes queued.
    bytes: usize,
    closed: bool,
    /// The first write that failed: the file and what went wrong.
    failure: Option<(PathBuf, std::io::ErrorKind, String)>,
    /// Written frames' buffers, for the next frames.
    spare: Vec<Vec<u8>>,
}

/// The queue and its writer thread. Dropping it writes out everything queued.
pub(crate) struct WriteQueue {
    shared: Arc<(Mutex<Queue>, Condvar)>,
    limit_bytes: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WriteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queue = self.shared.0.lock().expect("not poisoned");
        f.debug_struct("WriteQueue").field("jobs", &queue.jobs.len()).field("bytes", &queue.bytes).finish()
    }
}

impl WriteQueue {
    /// A queue holding at most `limit_bytes` of frames, and its thread.
    pub(crate) fn start(limit_bytes: usize) -> Result<Self, LogError> {
        let shared = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let thread = std::thread::Builder::new()
            .name("lk-log-writer".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run(&shared, limit_bytes)
            })
            .map_err(|cause| LogError::Io { path: "the embedded log's writer thread".to_owned(), cause })?;
        Ok(Self { shared, limit_bytes, thread: Some(thread) })
    }

    /// A buffer for a frame (a written frame's, when there is one).
    pub(crate) fn buffer(&self) -> Vec<u8> {
        self.shared.0.lock().expect("not poisoned").spare.pop().unwrap_or_default()
    }

    /// Queues `frame` for `file`, waiting while the queue is full.
    pub(crate) fn push_frame(&self, file: &Arc<SegmentFile>, frame: Vec<u8>) -> Result<(), LogError> {
        let (lock, changed) = &*self.shared;
        let mut queue = lock.lock().expect("not poisoned");
        while queue.bytes > 0 && queue.bytes + frame.len() > self.limit_bytes && queue.failure.is_none() {
            queue = changed.wait(queue).expect("not poisoned");
        }
        failed(&queue)?;
        queue.bytes += frame.len();
        queue.jobs.push_back(Job::Frame(Arc::clone(file), frame));
        changed.notify_all();
        Ok(())
    }

    /// Queues the sealing of `file`: it is complete once written.
    pub(crate) fn seal(&self, file: &Arc<SegmentFile>) -> Result<(), LogError> {
        self.push(Job::Seal(Arc::clone(file)))
    }

    /// Queues the deletion of `file`, after its frames.
    pub(crate) fn delete(&self, file: &Arc<SegmentFile>) -> Result<(), LogError> {
        self.push(Job::Delete(Arc::clone(file)))
    }

    /// Waits until everything queued so far is written and flushed to the OS.
    pub(crate) fn barrier(&self) -> Result<(), LogError> {
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        self.push(Job::Barrier(Arc::clone(&done)))?;
        let (flag, signal) = &*done;
        let mut finished = flag.lock().expect("not poisoned");
        while !*finished {
            finished = signal.wait(finished).expect("not poisoned");
        }
        drop(finished);
        failed(&self.shared.0.lock().expect("not poisoned"))
    }

    fn push(&self, job: Job) -> Result<(), LogError> {
        let (lock, changed) = &*self.shared;
        let mut queue = lock.lock().expect("not poisoned");
        failed(&queue)?;
        queue.jobs.push_back(job);
        changed.notify_all();
        Ok(())
    }
}

impl Drop for WriteQueue {
    fn drop(&mut self) {
        let (lock, changed) = &*self.shared;
        lock.lock().expect("not poisoned").closed = true;
        changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn failed(queue: &Queue) -> Result<(), LogError> {
    match &queue.failure {
        Some((path, kind, message)) => Err(LogError::Io {
            path: path.display().to_string(),
            cause: std::io::Error::new(*kind, format!("{message} (written behind; the records are still in memory)")),
        }),
        None => Ok(()),
    }
}

/// How long written frames may sit in the writer's buffers once the queue is idle.
const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_millis(50);

/// What the writer does next.
enum Next {
    Run(Job),
    /// The queue has been idle for [`IDLE_FLUSH`]: flush what was written.
    Flush,
    Stop,
}

/// The writer thread: runs jobs in order until the queue is closed and empty. It runs at idle
/// priority while it keeps up, and at normal priority from when its queue passes half of
/// `limit_bytes` until it is back under an eighth (see [`crate::runtime::background`]).
fn run(shared: &(Mutex<Queue>, Condvar), limit_bytes: usize) {
    crate::runtime::background::give_way();
    let mut giving_way = true;
    // Cleared when raising the priority was refused (an unprivileged process): not tried again.
    let mut may_take_turn = true;
    let (lock, changed) = shared;
    // Files written since the last flush.
    let mut dirty: Vec<Arc<SegmentFile>> = Vec::new();
    let mut failure: Option<(PathBuf, std::io::Error)> = None;
    let note = |failure: &mut Option<(PathBuf, std::io::Error)>, path: &Path, result: std::io::Result<()>| {
        if let Err(error) = result
            && failure.is_none()
        {
            *failure = Some((path.to_owned(), error));
        }
    };
    let flush_all = |dirty: &mut Vec<Arc<SegmentFile>>, failure: &mut Option<(PathBuf, std::io::Error)>| {
        for file in dirty.drain(..) {
            note(failure, &file.path, file.flush());
        }
    };
    loop {
        let mut queued = 0;
        let next = {
            let mut queue = lock.lock().expect("not poisoned");
            if let Some((path, error)) = failure.take() {
                queue.failure.get_or_insert((path, error.kind(), error.to_string()));
                changed.notify_all();
            }
            loop {
                if let Some(job) = queue.jobs.pop_front() {
                    if let Job::Frame(_, frame) = &job {
                        queue.bytes -= frame.len();
                        changed.notify_all();
                    }
                    queued = queue.bytes;
                    break Next::Run(job);
                }
                if queue.closed {
                    break Next::Stop;
                }
                if dirty.is_empty() {
                    queue = changed.wait(queue).expect("not poisoned");
                } else {
                    let (woken, waited) = changed.wait_timeout(queue, IDLE_FLUSH).expect("not poisoned");
                    queue = woken;
                    if waited.timed_out() && queue.jobs.is_empty() {
                        break Next::Flush;
                    }
                }
            }
        };
        if giving_way && may_take_turn && queued > limit_bytes / 2 {
            giving_way = !crate::runtime::background::take_turn();
            may_take_turn = !giving_way;
        } else if !giving_way && queued < limit_bytes / 8 {
            crate::runtime::background::give_way();
            giving_way = true;
        }
        match next {
            Next::Stop => {
                flush_all(&mut dirty, &mut failure);
                return;
            }
            Next::Flush => flush_all(&mut dirty, &mut failure),
            Next::Run(Job::Frame(file, mut frame)) => {
                note(&mut failure, &file.path, file.write(&frame));
                if !dirty.iter().any(|known| Arc::ptr_eq(known, &file)) {
                    dirty.push(file);
                }
                frame.clear();
                let mut queue = lock.lock().expect("not poisoned");
                if queue.spare.len() < 64 {
                    queue.spare.push(frame);
                }
            }
            Next::Run(Job::Seal(file)) => {
                note(&mut failure, &file.path, file.seal());
                dirty.retain(|known| !Arc::ptr_eq(known, &file));
            }
            Next::Run(Job::Delete(file)) => {
                note(&mut failure, &file.path, file.delete());
                dirty.retain(|known| !Arc::ptr_eq(known, &file));
            }
            Next::Run(Job::Barrier(done)) => {
                flush_all(&mut dirty, &mut failure);
                if let Some((path, error)) = failure.take() {
                    lock.lock().expect("not poisoned").failure.get_or_insert((path, error.kind(), error.to_string()));
                }
                let (flag, signal) = &*done;
                *flag.lock().expect("not poisoned") = true;
                signal.notify_all();
            }
        }
    }
}
