//! Background threads give way to the latency path.
//!
//! Checkpoint writers and the embedded log's segment writer do bulk work (serialising hundreds
//! of megabytes, writing them out) that nothing waits on at once. On a machine with two cores
//! shared by the generator and the engine workers, at normal priority they took a core for 100-200
//! ms at a time, and the generator, whose lateness is every event's latency, fell 50-150 ms
//! behind. At `SCHED_IDLE` they run when a core would otherwise idle. They cannot starve: when a
//! checkpoint or the log's write queue falls behind far enough, the thread that waits on it
//! stops using its core, and they get it.
//!
//! Idle priority only pays while there is idle time. On a machine the run saturates (Lambda's
//! batch runs beside the generator), an idle writer barely ran, its queue filled and the
//! generator waited on it: Lambda alone at rush hour reached 895 k events/s with a 7 s schedule
//! lag. So the log's writer takes its turn at normal priority ([`take_turn`]) once its queue is
//! half full, and gives way again once it is down to an eighth: then 1.00 M/s with a 0.9 s lag,
//! while Kappa at rush hour, which leaves idle time, never crosses the mark.

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

/// Puts the calling thread back at normal priority (`SCHED_OTHER`, nice 0) after [`give_way`].
/// Returns whether it could: raising a priority needs `CAP_SYS_NICE` or a `RLIMIT_NICE` that
/// allows it, so an unprivileged thread stays where it is (and what waits on it waits longer).
pub fn take_turn() -> bool {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
        };
        // The crate maps 0-99 onto nice 19..-20; 48 is nice 0.
        let nice_zero = thread_priority::ThreadPriorityValue::try_from(48u8).expect("in 0..=99");
        set_thread_priority_and_policy(
            thread_native_id(),
            thread_priority::ThreadPriority::Crossplatform(nice_zero),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other),
        )
        .is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        true
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The calling thread's scheduling policy, from `/proc/thread-self/stat` (field 41).
    fn policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(38).unwrap().parse().unwrap()
    }

    #[test]
    fn a_thread_gives_way_and_takes_its_turn_back_where_it_may() {
        const SCHED_OTHER: u32 = 0;
        const SCHED_IDLE: u32 = 5;
        std::thread::spawn(|| {
            assert_eq!(policy(), SCHED_OTHER);
            super::give_way();
            assert_eq!(policy(), SCHED_IDLE);
            if super::take_turn() {
                assert_eq!(policy(), SCHED_OTHER);
            } else {
                // Unprivileged: refused, and nothing changed.
                assert_eq!(policy(), SCHED_IDLE);
            }
        })
        .join()
        .unwrap();
    }
}
