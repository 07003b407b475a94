//! A map from u32 ids on a regular stride (the driver ids of one partition: `id % stride` is the
//! partition) to values, stored in lazily allocated pages and indexed directly.
//!
//! Per-driver state is the engines' largest structure (millions of drivers at rush hour) and is
//! touched at random on every ping. A hash map costs two cache misses per lookup (its control
//! bytes and its slot) plus the probing; direct indexing costs one.

/// Values per page.
const PAGE: usize = 1024;

/// See the module documentation. Absent entries hold `V::default()`.
#[derive(Debug, Clone)]
pub struct IdMap<V> {
    stride: u32,
    residue: u32,
    pages: Vec<Option<Box<[V]>>>,
}

impl<V: Default + Clone> IdMap<V> {
    /// A map for ids with `id % stride == residue`.
    pub fn new(stride: u32, residue: u32) -> Self {
        assert!(stride > 0 && residue < stride);
        Self { stride, residue, pages: Vec::new() }
    }

    #[inline]
    fn index(&self, id: u32) -> usize {
        debug_assert_eq!(id % self.stride, self.residue, "an id from another partition");
        (id / self.stride) as usize
    }

    /// The value of `id`, created as the default if its page is new.
    #[inline]
    pub fn get_mut(&mut self, id: u32) -> &mut V {
        let index = self.index(id);
        let (page, slot) = (index / PAGE, index % PAGE);
        if page >= self.pages.len() {
            self.pages.resize_with(page + 1, || None);
        }
        let values = self.pages[page].get_or_insert_with(|| vec![V::default(); PAGE].into_boxed_slice());
        &mut values[slot]
    }

    /// The value of `id`, if its page exists.
    #[inline]
    pub fn get(&self, id: u32) -> Option<&V> {
        let index = self.index(id);
        self.pages.get(index / PAGE)?.as_ref().map(|values| &values[index % PAGE])
    }

    /// Every (id, value) whose page exists, in id order (the caller skips defaults).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &V)> + '_ {
        self.pages.iter().enumerate().flat_map(move |(page, values)| {
            values.iter().flat_map(move |values| {
                values
                    .iter()
                    .enumerate()
                    .map(move |(slot, value)| (((page * PAGE + slot) as u32) * self.stride + self.residue, value))
            })
        })
    }

    /// Every (id, value) whose page exists, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut V)> + '_ {
        let (stride, residue) = (self.stride, self.residue);
        self.pages.iter_mut().enumerate().flat_map(move |(page, values)| {
            values.iter_mut().flat_map(move |values| {
                values
                    .iter_mut()
                    .enumerate()
                    .map(move |(slot, value)| (((page * PAGE + slot) as u32) * stride + residue, value))
            })
        })
    }

    /// Asks the CPU to start loading `id`'s value into cache, so that a lookup a few events later
    /// does not stall on memory. Does nothing when its page does not exist.
    #[inline]
    pub fn prefetch(&self, id: u32) {
        if id % self.stride != self.residue {
            return;
        }
        let index = (id / self.stride) as usize;
        if let Some(Some(values)) = self.pages.get(index / PAGE) {
            prefetch(&values[index % PAGE]);
        }
    }

    /// Slots allocated (present or not).
    pub fn capacity(&self) -> usize {
        self.pages.iter().flatten().count() * PAGE
    }
}

pub use lk_simulator::hint::prefetch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_on_a_stride_round_trip() {
        let mut map: IdMap<u64> = IdMap::new(8, 3);
        for id in [3u32, 11, 8 * 5000 + 3, 8 * 100_000 + 3] {
            *map.get_mut(id) = u64::from(id) * 2;
        }
        assert_eq!(map.get(11), Some(&22));
        assert_eq!(map.get(19), Some(&0), "an absent id in an allocated page reads as the default");
        assert_eq!(map.get(8 * 200_000 + 3), None);
        let present: Vec<(u32, u64)> =
            map.iter().filter(|(_, value)| **value != 0).map(|(id, value)| (id, *value)).collect();
        assert_eq!(present, vec![(3, 6), (11, 22), (40_003, 80_006), (800_003, 1_600_006)]);
    }
}
