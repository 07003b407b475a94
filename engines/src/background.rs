//! Background threads give way to the latency path.
//!
//! Checkpoint writers and the embedded log's segment writer do bulk work (serialising hundreds
//! of megabytes, writing them out) that nothing waits on at once. On a machine with two cores
//! shared by the generator and the engine workers, at normal priority they took a core for 100-200
//! ms at a time, and the generator, whose lateness is every event's latency, fell 50-150 ms
//! behind. At `SCHED_IDLE` they run when a core would otherwise idle. They cannot starve: when a
//! checkpoint or the log's write queue falls behind far enough, the thread that waits on it
//! stops using its core, and they get it.

/// Lowers the calling thread to `SCHED_IDLE` (Linux; elsewhere, and where it is refused, the
/// thread keeps its priority: this changes when work runs, never what it does).
pub fn give_way() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
        };
        let _ = set_thread_priority_and_policy(
            thread_native_id(),
            thread_priority::ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        );
    }
}
