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
    pages: Vec<Option<Page<V>>>,
    /// Pages of an earlier generation hold stale values: they read as absent, and are reset
    /// when next written ([`IdMap::clear`]).
    generation: u64,
}

#[derive(Debug, Clone)]
struct Page<V> {
    generation: u64,
    values: Box<[V]>,
}

impl<V: Default + Clone> IdMap<V> {
    /// A map for ids with `id % stride == residue`.
    pub fn new(stride: u32, residue: u32) -> Self {
        assert!(stride > 0 && residue < stride);
        Self { stride, residue, pages: Vec::new(), generation: 0 }
    }

    #[inline]
    fn index(&self, id: u32) -> usize {
        debug_assert_eq!(id % self.stride, self.residue, "an id from another partition");
        (id / self.stride) as usize
    }

    /// The page of `index` if it holds values of this generation.
    #[inline]
    fn page(&self, index: usize) -> Option<&[V]> {
        match self.pages.get(index / PAGE) {
            Some(Some(page)) if page.generation == self.generation => Some(&page.values),
            _ => None,
        }
    }

    /// The value of `id`, created as the default if its page is new.
    #[inline]
    pub fn get_mut(&mut self, id: u32) -> &mut V {
        let index = self.index(id);
        let (page, slot) = (index / PAGE, index % PAGE);
        if page >= self.pages.len() {
            self.pages.resize_with(page + 1, || None);
        }
        let generation = self.generation;
        let page = self.pages[page]
            .get_or_insert_with(|| Page { generation, values: vec![V::default(); PAGE].into_boxed_slice() });
        if page.generation != generation {
            page.values.fill(V::default());
            page.generation = generation;
        }
        &mut page.values[slot]
    }

    /// The value of `id`, if its page exists.
    #[inline]
    pub fn get(&self, id: u32) -> Option<&V> {
        let index = self.index(id);
        self.page(index).map(|values| &values[index % PAGE])
    }

    /// Every (id, value) whose page exists, in id order (the caller skips defaults).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &V)> + '_ {
        let generation = self.generation;
        self.pages.iter().enumerate().flat_map(move |(page, values)| {
            values.iter().filter(move |values| values.generation == generation).flat_map(move |values| {
                values
                    .values
                    .iter()
                    .enumerate()
                    .map(move |(slot, value)| (((page * PAGE + slot) as u32) * self.stride + self.residue, value))
            })
        })
    }

    /// Every (id, value) whose page exists, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut V)> + '_ {
        let (stride, residue, generation) = (self.stride, self.residue, self.generation);
        self.pages.iter_mut().enumerate().flat_map(move |(page, values)| {
            values.iter_mut().filter(move |values| values.generation == generation).flat_map(move |values| {
                values
                    .values
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
        if let Some(values) = self.page(index) {
            prefetch(&values[index % PAGE]);
        }
    }

    /// Empties the map and keeps its memory: every page reads as absent, and is reset to
    /// defaults a page at a time as it is written again. An engine that starts its state afresh
    /// (the speed layer, at each batch cutoff) pays neither for freeing millions of entries
    /// nor for faulting fresh memory in again, which stalled it for a second and more.
    pub fn clear(&mut self) {
        self.generation += 1;
    }

    /// Makes this map a copy of `source`, writing into the pages it already has rather than
    /// allocating new ones (when both hold the same ids): a checkpoint's copy of millions of
    /// drivers, taken again into the last one's memory, faults nothing in.
    pub fn copy_from(&mut self, source: &IdMap<V>) {
        if (self.stride, self.residue) != (source.stride, source.residue) {
            *self = source.clone();
            return;
        }
        self.generation = source.generation;
        self.pages.resize_with(source.pages.len(), || None);
        for (page, from) in self.pages.iter_mut().zip(&source.pages) {
            match (page.as_mut(), from) {
                (Some(page), Some(from)) => {
                    page.values.clone_from_slice(&from.values);
                    page.generation = from.generation;
                }
                (None, Some(from)) => *page = Some(from.clone()),
                // A page the source lacks reads as absent if it is of an older generation.
                (Some(page), None) => page.generation = source.generation.wrapping_sub(1),
                (None, None) => {}
            }
        }
    }

    /// Slots allocated (present or not, including pages kept by [`IdMap::clear`]).
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

    #[test]
    fn a_cleared_map_reads_empty_keeps_its_pages_and_resets_them_when_written() {
        let mut map: IdMap<u64> = IdMap::new(8, 3);
        for id in [3u32, 11, 8 * 5000 + 3] {
            *map.get_mut(id) = u64::from(id);
        }
        let capacity = map.capacity();
        map.clear();
        assert_eq!(map.capacity(), capacity, "the pages are kept");
        assert_eq!(map.get(3), None);
        assert_eq!(map.get(8 * 5000 + 3), None);
        assert_eq!(map.iter().count(), 0);
        assert_eq!(map.iter_mut().count(), 0);
        map.prefetch(11);
        // Writing one id brings its page back, reset: the other ids on it read as defaults.
        *map.get_mut(19) = 7;
        assert_eq!(map.get(19), Some(&7));
        assert_eq!(map.get(11), Some(&0), "a stale value on a page written again is reset");
        assert_eq!(map.get(8 * 5000 + 3), None, "a page not written again stays absent");
        let present: Vec<(u32, u64)> =
            map.iter().filter(|(_, value)| **value != 0).map(|(id, value)| (id, *value)).collect();
        assert_eq!(present, vec![(19, 7)]);
        assert_eq!(map.capacity(), capacity);
    }

    #[test]
    fn a_copy_into_a_used_map_equals_the_source() {
        let mut source: IdMap<u64> = IdMap::new(8, 3);
        let mut copy: IdMap<u64> = IdMap::new(8, 3);
        // The copy holds pages the source lacks, and stale values on pages both have.
        for id in [3u32, 8 * 3000 + 3, 8 * 9000 + 3] {
            *copy.get_mut(id) = 99;
        }
        source.clear();
        for id in [11u32, 8 * 3000 + 11, 8 * 20_000 + 3] {
            *source.get_mut(id) = u64::from(id);
        }
        copy.copy_from(&source);
        let entries = |map: &IdMap<u64>| map.iter().map(|(id, value)| (id, *value)).collect::<Vec<_>>();
        assert_eq!(entries(&copy), entries(&source));
        assert_eq!(copy.get(8 * 9000 + 3), None, "a page only the copy had reads as absent");
        assert_eq!(copy.get(3), Some(&0));
        *copy.get_mut(8 * 9000 + 3) = 1;
        assert_eq!(copy.get(8 * 9000 + 11), Some(&0), "and is reset when written");
    }
}
