//! Cache hints for the hot paths that walk memory in an order the hardware cannot predict.

/// Hints the CPU to load the cache line holding `value`.
///
/// `unsafe_code` is denied across the workspace; this and the Kafka producer's batch path are its
/// exceptions, because the hint has no safe wrapper in `std` and is what turns random access
/// (the generator's zone lattice, the engines' per-driver state) from a stall per event into
/// overlapped loads. A prefetch never faults and never reads the value into the program: it is
/// sound for any address, and this one is a live reference.
#[inline(always)]
#[allow(unsafe_code)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` only hints the cache; SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
