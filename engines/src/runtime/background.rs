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

/// The nice value a run's engines work at in a paced run over Kafka (see [`yield_to_driver`]).
/// At nice 19 a thread weighs about a seventieth of one at nice 0 when both want a core.
pub const ENGINE_NICE: i32 = 19;

/// Lowers the calling thread to nice [`ENGINE_NICE`], and with it every thread it starts from
/// now on: Linux threads inherit their creator's nice value, librdkafka's among them.
///
/// A run's driver (the generator and the producer that writes its events into the log) shares
/// the machine with the engines it measures. Each event's latency starts at its due time, so an
/// engine that takes the driver's core delays every event behind it, and the driver's schedule
/// lag becomes latency charged to whichever engine is measured: coordinated omission at the
/// source. On a separate machine, as the OpenMessaging Benchmark runs its producers, the driver
/// would not compete at all. Here the engines yield to it: they still get every core the driver
/// leaves idle, which, paced, is most of the machine. Where refused, the thread keeps its
/// priority.
pub fn yield_to_driver() {
    // The crate maps 0-99 onto nice 19..-20 (see `set_nice`): 0 is nice 19.
    const _: () = assert!(ENGINE_NICE == 19, "change the crate value below with the nice value");
    let _ = set_nice(0);
}

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
    // 48 is nice 0.
    set_nice(48)
}

/// Puts the calling thread at normal policy (`SCHED_OTHER`) with the nice value the
/// thread-priority crate maps `value` to: 0-99 onto nice 19..-20. Returns whether it could
/// (elsewhere than Linux, says yes and does nothing).
fn set_nice(value: u8) -> bool {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
        };
        let value = thread_priority::ThreadPriorityValue::try_from(value).expect("in 0..=99");
        set_thread_priority_and_policy(
            thread_native_id(),
            thread_priority::ThreadPriority::Crossplatform(value),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other),
        )
        .is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = value;
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

    /// The calling thread's nice value, from `/proc/thread-self/stat` (field 19).
    fn nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn an_engine_thread_yields_to_the_driver_and_so_do_the_threads_it_starts() {
        std::thread::spawn(|| {
            assert_eq!(nice(), 0);
            super::yield_to_driver();
            assert_eq!(nice(), super::ENGINE_NICE);
            assert_eq!(std::thread::spawn(nice).join().unwrap(), super::ENGINE_NICE, "a started thread inherits it");
        })
        .join()
        .unwrap();
        assert_eq!(nice(), 0, "other threads keep theirs");
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
