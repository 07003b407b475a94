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
//!
//! **A write that fails is undone and tried again.** Each file keeps what it has not yet
//! written in a buffer of its own, and the length its file had after the last write that
//! succeeded. A failed write (a full disk: `ENOSPC`) cuts the file back to that length, so no
//! torn frame stays in the middle of it, and keeps the bytes. The writer then tries again every
//! [`RETRY_EVERY`], running nothing after it, while appends fail with the error (the run stops
//! and says why). Once space is freed the write succeeds, the error clears, and every append
//! that was acknowledged reaches the file in order. A log dropped while its disk is still full
//! tries once more, then says on stderr which file lost how many bytes.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::log::LogError;

/// Where the writer's bytes go: the file system, or in tests a disk that fills up.
pub trait Disk: Send + Sync + std::fmt::Debug {
    /// Writes all of `bytes` at the end of `file` (opened to append), or fails; a failure may
    /// have written a part of them.
    fn append(&self, file: &mut File, bytes: &[u8]) -> std::io::Result<()>;
}

/// The file system, as it is.
#[derive(Debug, Default)]
pub struct RealDisk;

impl Disk for RealDisk {
    fn append(&self, file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
        file.write_all(bytes)
    }
}

/// Bytes a file gathers before a write to it.
const BUFFER_BYTES: usize = 1 << 20;

/// How long the writer waits before trying a failed write again.
pub(crate) const RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// A segment's file, written by the queue's thread only.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    pub(crate) path: PathBuf,
    state: Mutex<FileState>,
    /// Sealed and written in full.
    complete: AtomicBool,
}

#[derive(Debug, Default)]
struct FileState {
    /// Opened (created) at the first write, unless given open.
    file: Option<File>,
    /// Bytes not yet written.
    buffer: Vec<u8>,
    /// The file's length after the last write that succeeded.
    written: u64,
}

impl SegmentFile {
    /// A new segment's file, created when its first frame is written.
    pub(crate) fn new(path: PathBuf) -> Arc<Self> {
        Arc::new(Self { path, state: Mutex::new(FileState::default()), complete: AtomicBool::new(false) })
    }

    /// A segment file that exists; `open` for the one appends continue into.
    pub(crate) fn existing(path: PathBuf, open: Option<File>) -> Arc<Self> {
        let complete = open.is_none();
        let written = open.as_ref().and_then(|file| file.metadata().ok()).map_or(0, |metadata| metadata.len());
        let state = FileState { file: open, buffer: Vec::new(), written };
        Arc::new(Self { path, state: Mutex::new(state), complete: AtomicBool::new(complete) })
    }

    /// Whether the segment is sealed and all of it is on disk.
    pub(crate) fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// Bytes of the file not yet written.
    fn unwritten(&self) -> usize {
        self.state.lock().expect("not poisoned").buffer.len()
    }

    /// Buffers `bytes`, and writes the buffer once it is full.
    fn write(&self, disk: &dyn Disk, bytes: &[u8]) -> std::io::Result<()> {
        let mut state = self.state.lock().expect("not poisoned");
        state.buffer.extend_from_slice(bytes);
        // Opened at the first frame, so a file that cannot be created is reported at once.
        if state.buffer.len() >= BUFFER_BYTES || state.file.is_none() {
            self.write_out(disk, &mut state)
        } else {
            Ok(())
        }
    }

    /// Writes what is buffered. On failure the file is cut back to its length before, and the
    /// bytes stay buffered for the next try.
    fn write_out(&self, disk: &dyn Disk, state: &mut FileState) -> std::io::Result<()> {
        if state.buffer.is_empty() {
            return Ok(());
        }
        if state.file.is_none() {
            let opened = OpenOptions::new().create(true).append(true).open(&self.path)?;
            state.written = opened.metadata()?.len();
            state.file = Some(opened);
        }
        let FileState { file, buffer, written } = state;
        let file = file.as_mut().expect("opened above");
        match disk.append(file, buffer) {
            Ok(()) => {
                *written += buffer.len() as u64;
                buffer.clear();
                Ok(())
            }
            Err(error) => {
                // No torn frame stays behind: appends go on from the last whole write.
                file.set_len(*written)?;
                Err(error)
            }
        }
    }

    fn flush(&self, disk: &dyn Disk) -> std::io::Result<()> {
        let mut state = self.state.lock().expect("not poisoned");
        self.write_out(disk, &mut state)
    }

    /// Writes out and closes the file (creating it if it never had a frame), and marks it
    /// complete.
    fn seal(&self, disk: &dyn Disk) -> std::io::Result<()> {
        let mut state = self.state.lock().expect("not poisoned");
        self.write_out(disk, &mut state)?;
        match state.file.take() {
            Some(open) => {
                if let Err(error) = open.sync_data() {
                    state.file = Some(open);
                    return Err(error);
                }
            }
            None => drop(OpenOptions::new().create(true).append(true).open(&self.path)?),
        }
        self.complete.store(true, Ordering::Release);
        Ok(())
    }

    fn delete(&self) -> std::io::Result<()> {
        let mut state = self.state.lock().expect("not poisoned");
        state.file = None;
        state.buffer = Vec::new();
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
    /// A queue holding at most `limit_bytes` of frames, and its thread, writing to `disk`.
    pub(crate) fn start(limit_bytes: usize, disk: Arc<dyn Disk>) -> Result<Self, LogError> {
        let shared = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let thread = std::thread::Builder::new()
            .name("lk-log-writer".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run(&shared, limit_bytes, &*disk)
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

    /// Waits until everything queued so far is written and flushed to the OS, or a write fails.
    pub(crate) fn barrier(&self) -> Result<(), LogError> {
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        self.push(Job::Barrier(Arc::clone(&done)))?;
        let (flag, signal) = &*done;
        let mut finished = flag.lock().expect("not poisoned");
        while !*finished {
            finished = signal.wait_timeout(finished, RETRY_EVERY).expect("not poisoned").0;
            if !*finished {
                // A write that keeps failing holds everything behind it: say so now.
                failed(&self.shared.0.lock().expect("not poisoned"))?;
            }
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
            cause: std::io::Error::new(
                *kind,
                format!(
                    "{message} (written behind; the records are still in memory, and lk writes them once the \
                     file system takes them again: free space, or fix the file's folder)"
                ),
            ),
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
    /// A write failed: try it again.
    Retry,
    Stop,
}

/// A write that failed, to be tried again before anything after it.
enum Retry {
    /// The file's buffered bytes.
    Write(Arc<SegmentFile>),
    /// Its sealing.
    Seal(Arc<SegmentFile>),
}

impl Retry {
    fn file(&self) -> &Arc<SegmentFile> {
        match self {
            Retry::Write(file) | Retry::Seal(file) => file,
        }
    }

    fn attempt(&self, disk: &dyn Disk) -> std::io::Result<()> {
        match self {
            Retry::Write(file) => file.flush(disk),
            Retry::Seal(file) => file.seal(disk),
        }
    }
}

/// The writer thread: runs jobs in order until the queue is closed and empty. It runs at idle
/// priority while it keeps up, and at normal priority from when its queue passes half of
/// `limit_bytes` until it is back under an eighth (see [`crate::runtime::background`]).
fn run(shared: &(Mutex<Queue>, Condvar), limit_bytes: usize, disk: &dyn Disk) {
    crate::runtime::background::give_way();
    let mut giving_way = true;
    // Cleared when raising the priority was refused (an unprivileged process): not tried again.
    let mut may_take_turn = true;
    let (lock, changed) = shared;
    // Files written since the last flush.
    let mut dirty: Vec<Arc<SegmentFile>> = Vec::new();
    // The write that failed, with its error, until it succeeds.
    let mut failing: Option<(Retry, std::io::Error)> = None;
    // A failed deletion: reported, not retried (nothing is lost by it).
    let mut failure: Option<(PathBuf, std::io::Error)> = None;
    let flush_all = |dirty: &mut Vec<Arc<SegmentFile>>| -> Result<(), (Retry, std::io::Error)> {
        while let Some(file) = dirty.first() {
            if let Err(error) = file.flush(disk) {
                return Err((Retry::Write(dirty.remove(0)), error));
            }
            dirty.remove(0);
        }
        Ok(())
    };
    loop {
        let mut queued = 0;
        let next = {
            let mut queue = lock.lock().expect("not poisoned");
            match (&failing, failure.take()) {
                (Some((retry, error)), _) => {
                    if queue.failure.is_none() {
                        queue.failure = Some((retry.file().path.clone(), error.kind(), error.to_string()));
                        changed.notify_all();
                    }
                }
                (None, Some((path, error))) => {
                    queue.failure.get_or_insert((path, error.kind(), error.to_string()));
                    changed.notify_all();
                }
                (None, None) => {}
            }
            loop {
                if failing.is_some() {
                    if !queue.closed {
                        queue = changed.wait_timeout(queue, RETRY_EVERY).expect("not poisoned").0;
                    }
                    break Next::Retry;
                }
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
                if let Err(failed) = flush_all(&mut dirty) {
                    failing = Some(failed);
                    continue;
                }
                return;
            }
            Next::Retry => {
                let (retry, _) = failing.take().expect("retrying a failure");
                match retry.attempt(disk) {
                    Ok(()) => {
                        let mut queue = lock.lock().expect("not poisoned");
                        queue.failure = None;
                        changed.notify_all();
                    }
                    Err(error) if lock.lock().expect("not poisoned").closed => {
                        give_up(shared, &retry, &error, &dirty);
                        return;
                    }
                    Err(error) => failing = Some((retry, error)),
                }
            }
            Next::Flush => {
                if let Err(failed) = flush_all(&mut dirty) {
                    failing = Some(failed);
                }
            }
            Next::Run(Job::Frame(file, mut frame)) => {
                if !dirty.iter().any(|known| Arc::ptr_eq(known, &file)) {
                    dirty.push(Arc::clone(&file));
                }
                if let Err(error) = file.write(disk, &frame) {
                    dirty.retain(|known| !Arc::ptr_eq(known, &file));
                    failing = Some((Retry::Write(file), error));
                }
                frame.clear();
                let mut queue = lock.lock().expect("not poisoned");
                if queue.spare.len() < 64 {
                    queue.spare.push(frame);
                }
            }
            Next::Run(Job::Seal(file)) => {
                dirty.retain(|known| !Arc::ptr_eq(known, &file));
                if let Err(error) = file.seal(disk) {
                    failing = Some((Retry::Seal(file), error));
                }
            }
            Next::Run(Job::Delete(file)) => {
                dirty.retain(|known| !Arc::ptr_eq(known, &file));
                if let Err(error) = file.delete()
                    && failure.is_none()
                {
                    failure = Some((file.path.clone(), error));
                }
            }
            Next::Run(Job::Barrier(done)) => {
                if let Err(failed) = flush_all(&mut dirty) {
                    // Run again once the write succeeds.
                    lock.lock().expect("not poisoned").jobs.push_front(Job::Barrier(done));
                    failing = Some(failed);
                    continue;
                }
                let (flag, signal) = &*done;
                *flag.lock().expect("not poisoned") = true;
                signal.notify_all();
            }
        }
    }
}

/// The log is closing and a write still fails: says what is lost, and releases anyone waiting.
fn give_up(shared: &(Mutex<Queue>, Condvar), retry: &Retry, error: &std::io::Error, dirty: &[Arc<SegmentFile>]) {
    let (lock, changed) = shared;
    let mut queue = lock.lock().expect("not poisoned");
    let mut lost: Vec<(PathBuf, usize)> = vec![(retry.file().path.clone(), retry.file().unwritten())];
    lost.extend(dirty.iter().map(|file| (file.path.clone(), file.unwritten())));
    for job in queue.jobs.drain(..) {
        match job {
            Job::Frame(file, frame) => lost.push((file.path.clone(), frame.len())),
            Job::Barrier(done) => {
                *done.0.lock().expect("not poisoned") = true;
                done.1.notify_all();
            }
            Job::Seal(_) | Job::Delete(_) => {}
        }
    }
    let mut by_file: std::collections::BTreeMap<PathBuf, usize> = std::collections::BTreeMap::new();
    for (path, bytes) in lost {
        *by_file.entry(path).or_default() += bytes;
    }
    for (path, bytes) in by_file.into_iter().filter(|(_, bytes)| *bytes > 0) {
        eprintln!(
            "error: the embedded log closed while {} could not be written ({error}): its last {bytes} bytes of \
             records are lost; the file ends at its last whole frame",
            path.display()
        );
    }
    queue.failure.get_or_insert((retry.file().path.clone(), error.kind(), error.to_string()));
    changed.notify_all();
}
