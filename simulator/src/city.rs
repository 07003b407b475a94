//! The city: geometry helpers and the zone cache.
//!
//! An H3 lookup costs about 400 ns, several times the whole budget of generating an event, so
//! zones are resolved on a lattice: the city's box is cut into squares of about an eighth of an
//! H3 edge, and each square's zone is the H3 cell of its centre, computed once on first use.
//! An event within a few tens of metres of a cell border may therefore be attributed to the
//! neighbouring cell, about as often as a GPS fix that close to a border would be anyway.
//! `tests::lattice_zones_mostly_agree_with_exact_h3` measures how often.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};

use crate::event::{LatLon, Zone};
use crate::workload::BoundingBox;

/// Metres per degree of latitude (and of longitude at the equator).
pub const METRES_PER_DEGREE: f64 = 111_320.0;
/// At most this many lattice squares (4 or 8 bytes each).
const MAX_SQUARES: usize = 8 << 20;
/// Resolutions up to this one keep their cells in 31 bits on the lattice (see [`Cells`]).
const COMPACT_MAX_RESOLUTION: u8 = 8;
/// Where an H3 cell index holds its base cell (7 bits, above the 15 three-bit digits).
const H3_BASE_CELL_SHIFT: u32 = 45;
/// An H3 cell index's header: mode 1 (a cell), with the resolution at bit 52.
const H3_CELL_MODE: u64 = 1 << 59;
const H3_RESOLUTION_SHIFT: u32 = 52;
/// Marks a compact lattice entry as filled (a compact cell value may be 0).
const COMPACT_FILLED: u32 = 1 << 31;

/// The lattice's cells, in the smallest form the box allows: the lattice is read once a ping, so
/// its size is its speed. A city's box is [`Indexed`] (16 bits a square; the clean generator ran
/// 5-6% faster than with `Compact`). A box too big to number in 16 bits is `Compact` up to
/// resolution 8: at resolution `r` an H3 cell index is fixed but for its base cell and its first
/// `r` digits, 7 + 3r bits, 31 at resolution 8 (10-15% faster than whole indices). Finer
/// resolutions keep whole indices (`Full`).
enum Cells {
    Indexed(Indexed),
    Compact(Vec<AtomicU32>),
    Full(Vec<AtomicU64>),
}

/// A lattice of 16-bit entries, each the number of its square's cell in a table of the cells
/// seen so far (0: not yet filled). A city holds a few thousand cells at the default resolution,
/// so the lattice is a quarter of the whole indices' size, and fits the core's L2 cache.
struct Indexed {
    entries: Vec<AtomicU16>,
    /// The cells by number (slot 0 unused); a slot is written before any entry names it.
    table: Vec<AtomicU64>,
    /// Cell to number, for the fill path only.
    numbers: Mutex<std::collections::HashMap<u64, u16>>,
}

/// The most cells an indexed lattice numbers; past that, squares are answered exactly, uncached.
const INDEXED_MAX_CELLS: usize = u16::MAX as usize;

/// A lattice's geometry by value: what locating a square needs, without the lattice.
#[derive(Clone, Copy)]
struct Locator {
    south_e6: i32,
    west_e6: i32,
    squares_per_lat_e6: f32,
    squares_per_lon_e6: f32,
    last_row: f32,
    last_column: f32,
    columns: usize,
}

impl Locator {
    /// The square of `position`, row-major, with its row and column; positions outside the box
    /// are clamped to its edge. The clamp is on the float (`max` first, which also maps NaN to
    /// 0), and gives the squares that clamping the converted integers gave.
    #[inline]
    fn locate(self, position: LatLon) -> (usize, usize, usize) {
        let row = ((position.lat_e6 - self.south_e6) as f32 * self.squares_per_lat_e6).max(0.0).min(self.last_row);
        let column = ((position.lon_e6 - self.west_e6) as f32 * self.squares_per_lon_e6).max(0.0).min(self.last_column);
        let (row, column) = (row as u32 as usize, column as u32 as usize);
        (row * self.columns + column, row, column)
    }
}

/// Zones of the city's lattice squares, filled lazily and shared by every shard. Each entry is a
/// pure function of its square, so concurrent fills race harmlessly to the same value.
pub struct ZoneGrid {
    south_e6: i32,
    west_e6: i32,
    rows: usize,
    columns: usize,
    squares_per_lat_e6: f32,
    squares_per_lon_e6: f32,
    resolution: h3o::Resolution,
    cells: Cells,
}

impl std::fmt::Debug for ZoneGrid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneGrid").field("rows", &self.rows).field("columns", &self.columns).finish()
    }
}

impl ZoneGrid {
    /// A lattice over `bbox` fine enough for `resolution`.
    pub fn new(bbox: BoundingBox, resolution: h3o::Resolution) -> Self {
        let mid_lat_cos = ((bbox.south + bbox.north) / 2.0).to_radians().cos();
        let mut step_m = resolution.edge_length_m() / 8.0;
        let (height_m, width_m) =
            ((bbox.north - bbox.south) * METRES_PER_DEGREE, (bbox.east - bbox.west) * METRES_PER_DEGREE * mid_lat_cos);
        while (height_m / step_m).ceil() * (width_m / step_m).ceil() > MAX_SQUARES as f64 {
            step_m *= 1.25;
        }
        let step_lat_e6 = step_m / METRES_PER_DEGREE * 1e6;
        let step_lon_e6 = step_lat_e6 / mid_lat_cos;
        let rows = (height_m / step_m).ceil() as usize + 1;
        let columns = (width_m / step_m).ceil() as usize + 1;
        Self {
            south_e6: LatLon::from_degrees(bbox.south, bbox.west).lat_e6,
            west_e6: LatLon::from_degrees(bbox.south, bbox.west).lon_e6,
            rows,
            columns,
            squares_per_lat_e6: (1.0 / step_lat_e6) as f32,
            squares_per_lon_e6: (1.0 / step_lon_e6) as f32,
            resolution,
            cells: if indexed_fits(height_m * width_m, resolution) {
                Cells::Indexed(Indexed {
                    entries: (0..rows * columns).map(|_| AtomicU16::new(0)).collect(),
                    table: (0..=INDEXED_MAX_CELLS).map(|_| AtomicU64::new(0)).collect(),
                    numbers: Mutex::new(std::collections::HashMap::new()),
                })
            } else if u8::from(resolution) <= COMPACT_MAX_RESOLUTION {
                Cells::Compact((0..rows * columns).map(|_| AtomicU32::new(0)).collect())
            } else {
                Cells::Full((0..rows * columns).map(|_| AtomicU64::new(0)).collect())
            },
        }
    }

    /// How many low bits of a cell index at this grid's resolution are unused digits.
    fn unused_digit_bits(&self) -> u32 {
        H3_BASE_CELL_SHIFT - 3 * u32::from(u8::from(self.resolution))
    }

    /// A cell index at a compact resolution in 31 bits, marked filled.
    fn compact(&self, zone: Zone) -> u32 {
        let bits = zone.0 >> self.unused_digit_bits();
        let value = (bits & ((1 << (H3_BASE_CELL_SHIFT - self.unused_digit_bits() + 7)) - 1)) as u32;
        debug_assert!(value < COMPACT_FILLED);
        COMPACT_FILLED | value
    }

    /// The cell index a filled compact entry stands for.
    #[inline]
    fn expand(&self, entry: u32) -> Zone {
        let unused = self.unused_digit_bits();
        Zone(
            H3_CELL_MODE
                | u64::from(u8::from(self.resolution)) << H3_RESOLUTION_SHIFT
                | u64::from(entry & !COMPACT_FILLED) << unused
                | ((1 << unused) - 1),
        )
    }

    /// The lattice square of `position`, row-major (positions outside the box are clamped), with
    /// its row and column.
    #[inline]
    fn locate(&self, position: LatLon) -> (usize, usize, usize) {
        self.locator().locate(position)
    }

    /// The lattice's geometry, to be held in registers over a loop.
    #[inline]
    fn locator(&self) -> Locator {
        Locator {
            south_e6: self.south_e6,
            west_e6: self.west_e6,
            squares_per_lat_e6: self.squares_per_lat_e6,
            squares_per_lon_e6: self.squares_per_lon_e6,
            last_row: (self.rows - 1) as f32,
            last_column: (self.columns - 1) as f32,
            columns: self.columns,
        }
    }

    /// The row-major index of `position`'s lattice square: nearby positions get nearby indices,
    /// which the generator uses to keep its fleet in a cache-friendly order.
    pub fn square_of(&self, position: LatLon) -> usize {
        self.locate(position).0
    }

    /// The zone of `position` (which must lie in the box; positions outside are clamped).
    #[inline]
    pub fn zone_of(&self, position: LatLon) -> Zone {
        let mut zone = Zone(0);
        self.set_zones(std::iter::once((position, &mut zone)));
        zone
    }

    /// Writes the zone of each position to its place: [`zone_of`](Self::zone_of) for a batch,
    /// with the lattice's form matched and its geometry loaded once, not per event (a lattice
    /// load is an acquire, which the compiler may not hoist later loads above).
    #[inline]
    pub fn set_zones<'e>(&self, places: impl Iterator<Item = (LatLon, &'e mut Zone)>) {
        let locator = self.locator();
        match &self.cells {
            Cells::Indexed(indexed) => {
                let (entries, table) = (&indexed.entries[..], &indexed.table[..]);
                for (position, zone) in places {
                    let (square, row, column) = locator.locate(position);
                    let number = entries[square].load(Ordering::Acquire);
                    *zone = if number != 0 {
                        Zone(table[usize::from(number)].load(Ordering::Relaxed))
                    } else {
                        self.fill(square, row, column)
                    };
                }
            }
            Cells::Compact(cells) => {
                for (position, zone) in places {
                    let (square, row, column) = locator.locate(position);
                    let entry = cells[square].load(Ordering::Relaxed);
                    *zone = if entry != 0 { self.expand(entry) } else { self.fill(square, row, column) };
                }
            }
            Cells::Full(cells) => {
                for (position, zone) in places {
                    let (square, row, column) = locator.locate(position);
                    let cell = cells[square].load(Ordering::Relaxed);
                    *zone = if cell != 0 { Zone(cell) } else { self.fill(square, row, column) };
                }
            }
        }
    }

    #[cold]
    fn fill(&self, square: usize, row: usize, column: usize) -> Zone {
        let lat = (f64::from(self.south_e6) + (row as f64 + 0.5) / f64::from(self.squares_per_lat_e6)) / 1e6;
        let lon = (f64::from(self.west_e6) + (column as f64 + 0.5) / f64::from(self.squares_per_lon_e6)) / 1e6;
        let zone = exact_zone(LatLon::from_degrees(lat, lon), self.resolution);
        match &self.cells {
            Cells::Indexed(indexed) => {
                let mut numbers = indexed.numbers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let next = numbers.len() + 1;
                let number = match numbers.get(&zone.0) {
                    Some(&number) => number,
                    None if next < indexed.table.len() => {
                        let number = next as u16;
                        indexed.table[next].store(zone.0, Ordering::Relaxed);
                        numbers.insert(zone.0, number);
                        number
                    }
                    None => return zone,
                };
                indexed.entries[square].store(number, Ordering::Release);
            }
            Cells::Compact(cells) => {
                let entry = self.compact(zone);
                debug_assert_eq!(self.expand(entry), zone, "a compact entry stands for its cell");
                cells[square].store(entry, Ordering::Relaxed);
            }
            Cells::Full(cells) => cells[square].store(zone.0, Ordering::Relaxed),
        }
        zone
    }

    /// Lattice squares in the grid.
    pub fn squares(&self) -> usize {
        self.rows * self.columns
    }
}

/// Whether a box of `area_m2` holds few enough cells at `resolution` to number them in 16 bits,
/// with room to spare (cells along the edges, and the spread of cell areas over the globe).
fn indexed_fits(area_m2: f64, resolution: h3o::Resolution) -> bool {
    area_m2 / resolution.area_m2() * 2.0 < INDEXED_MAX_CELLS as f64
}

/// The exact H3 cell of a position.
pub fn exact_zone(position: LatLon, resolution: h3o::Resolution) -> Zone {
    let coordinates = h3o::LatLng::new(position.lat(), position.lon()).expect("positions are validated finite");
    Zone(u64::from(coordinates.to_cell(resolution)))
}

/// Distance in metres between two nearby positions (equirectangular: exact enough within a city).
pub fn distance_m(a: LatLon, b: LatLon) -> f64 {
    let (north, east) = offset_m(a, b);
    north.hypot(east)
}

/// The (north, east) offset in metres from `a` to `b`.
pub fn offset_m(a: LatLon, b: LatLon) -> (f64, f64) {
    let cos_lat = a.lat().to_radians().cos();
    let north = f64::from(b.lat_e6 - a.lat_e6) * METRES_PER_DEGREE / 1e6;
    let east = f64::from(b.lon_e6 - a.lon_e6) * METRES_PER_DEGREE * cos_lat / 1e6;
    (north, east)
}

/// `position` moved by (north, east) metres.
pub fn moved_m(position: LatLon, north_m: f64, east_m: f64) -> LatLon {
    let cos_lat = position.lat().to_radians().cos();
    LatLon {
        lat_e6: position.lat_e6 + (north_m / METRES_PER_DEGREE * 1e6).round() as i32,
        lon_e6: position.lon_e6 + (east_m / (METRES_PER_DEGREE * cos_lat) * 1e6).round() as i32,
    }
}

/// The box in microdegrees, for clamping.
#[derive(Debug, Clone, Copy)]
pub struct BoxE6 {
    /// Southern edge.
    pub south: i32,
    /// Western edge.
    pub west: i32,
    /// Northern edge.
    pub north: i32,
    /// Eastern edge.
    pub east: i32,
}

impl BoxE6 {
    /// The box of `bbox`.
    pub fn new(bbox: BoundingBox) -> Self {
        let south_west = LatLon::from_degrees(bbox.south, bbox.west);
        let north_east = LatLon::from_degrees(bbox.north, bbox.east);
        Self { south: south_west.lat_e6, west: south_west.lon_e6, north: north_east.lat_e6, east: north_east.lon_e6 }
    }

    /// `position` clamped into the box.
    pub fn clamp(self, position: LatLon) -> LatLon {
        LatLon {
            lat_e6: position.lat_e6.clamp(self.south, self.north),
            lon_e6: position.lon_e6.clamp(self.west, self.east),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW_YORK: BoundingBox = BoundingBox { south: 40.50, west: -74.26, north: 40.92, east: -73.70 };

    /// A small deterministic random stream for sampling positions.
    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// A compact lattice entry stands for exactly its cell, at every resolution stored compact,
    /// all over the globe (every base cell, digits of every value); finer resolutions keep
    /// whole indices and answer like the coarser ones.
    #[test]
    fn compact_entries_stand_for_exactly_their_cells() {
        let mut next = xorshift(0x2545_F491_4F6C_DD1Du64);
        for resolution in 0..=COMPACT_MAX_RESOLUTION {
            let resolution = h3o::Resolution::try_from(resolution).expect("valid");
            let grid = ZoneGrid::new(NEW_YORK, resolution);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..5_000 {
                let lat = (next() % 179_000_000) as f64 / 1e6 - 89.5;
                let lon = (next() % 359_000_000) as f64 / 1e6 - 179.5;
                let zone = exact_zone(LatLon::from_degrees(lat, lon), resolution);
                let entry = grid.compact(zone);
                assert_ne!(entry, 0, "a filled entry is never the empty mark");
                assert_eq!(grid.expand(entry), zone, "resolution {resolution}: {:x}", zone.0);
                seen.insert(entry);
            }
            assert!(seen.len() >= 100, "the samples reach only {} cells", seen.len());
        }
        for resolution in [h3o::Resolution::Nine, h3o::Resolution::Fifteen] {
            let grid = with_cells(ZoneGrid::new(NEW_YORK, resolution), Representation::Full);
            let position = LatLon::from_degrees(40.75, -73.98);
            let zone = grid.zone_of(position);
            assert_eq!(grid.zone_of(position), zone, "a filled square answers the same");
            assert_eq!(h3o::CellIndex::try_from(zone.0).expect("a valid cell").resolution(), resolution);
        }
    }

    enum Representation {
        Indexed { capacity: usize },
        Compact,
        Full,
    }

    /// `grid` with empty cells of the given representation.
    fn with_cells(mut grid: ZoneGrid, representation: Representation) -> ZoneGrid {
        let squares = grid.squares();
        grid.cells = match representation {
            Representation::Indexed { capacity } => Cells::Indexed(Indexed {
                entries: (0..squares).map(|_| AtomicU16::new(0)).collect(),
                table: (0..=capacity).map(|_| AtomicU64::new(0)).collect(),
                numbers: Mutex::new(std::collections::HashMap::new()),
            }),
            Representation::Compact => Cells::Compact((0..squares).map(|_| AtomicU32::new(0)).collect()),
            Representation::Full => Cells::Full((0..squares).map(|_| AtomicU64::new(0)).collect()),
        };
        grid
    }

    /// The city's own box is numbered; a whole country's at a fine resolution is not.
    #[test]
    fn a_city_numbers_its_cells_and_a_country_keeps_whole_indices() {
        assert!(matches!(ZoneGrid::new(NEW_YORK, h3o::Resolution::Eight).cells, Cells::Indexed(_)));
        assert!(matches!(ZoneGrid::new(NEW_YORK, h3o::Resolution::Nine).cells, Cells::Indexed(_)));
        let country = BoundingBox { south: 25.0, west: -124.0, north: 49.0, east: -67.0 };
        assert!(matches!(ZoneGrid::new(country, h3o::Resolution::Eight).cells, Cells::Compact(_)));
        assert!(matches!(ZoneGrid::new(country, h3o::Resolution::Ten).cells, Cells::Full(_)));
    }

    /// Every representation of the lattice gives every square the same zone, read once to fill
    /// it and again from the cache; an indexed lattice whose table is full answers the squares
    /// it cannot number exactly, uncached.
    #[test]
    fn every_representation_gives_the_same_zones() {
        for resolution in [h3o::Resolution::Seven, h3o::Resolution::Eight, h3o::Resolution::Nine] {
            let mut representations = vec![
                Representation::Full,
                Representation::Indexed { capacity: 65_535 },
                Representation::Indexed { capacity: 3 },
            ];
            if u8::from(resolution) <= COMPACT_MAX_RESOLUTION {
                representations.push(Representation::Compact);
            }
            let grids: Vec<ZoneGrid> = representations
                .into_iter()
                .map(|representation| with_cells(ZoneGrid::new(NEW_YORK, resolution), representation))
                .collect();
            let mut next = xorshift(0x5851_F42D_4C95_7F2Du64);
            let mut zones = std::collections::HashSet::new();
            for _ in 0..20_000 {
                let lat = 40.50 + (next() % 420_000) as f64 / 1e6;
                let lon = -74.26 + (next() % 560_000) as f64 / 1e6;
                let position = LatLon::from_degrees(lat, lon);
                let zone = grids[0].zone_of(position);
                zones.insert(zone);
                for (which, grid) in grids.iter().enumerate() {
                    assert_eq!(grid.zone_of(position), zone, "representation {which}, resolution {resolution}");
                    assert_eq!(grid.zone_of(position), zone, "representation {which} cached, resolution {resolution}");
                }
            }
            assert!(zones.len() > 10, "the samples reach only {} cells", zones.len());
        }
    }

    #[test]
    fn lattice_zones_mostly_agree_with_exact_h3() {
        let grid = ZoneGrid::new(NEW_YORK, h3o::Resolution::Eight);
        let mut next = xorshift(0x9E37_79B9_7F4A_7C15u64);
        let samples = 20_000;
        let mut disagree = 0;
        for _ in 0..samples {
            let lat = 40.50 + (next() % 420_000) as f64 / 1e6;
            let lon = -74.26 + (next() % 560_000) as f64 / 1e6;
            let position = LatLon::from_degrees(lat, lon);
            if grid.zone_of(position) != exact_zone(position, h3o::Resolution::Eight) {
                disagree += 1;
            }
        }
        let share = f64::from(disagree) / f64::from(samples);
        // About 10% of random points lie within half a lattice square of a border.
        assert!(share < 0.15, "lattice zones disagree with exact H3 for {:.1}% of points", share * 100.0);
        assert!(share > 0.0, "a lattice cannot be exact; the test samples are not reaching borders");
    }

    #[test]
    fn moving_and_measuring_agree() {
        let start = LatLon::from_degrees(40.75, -73.98);
        let end = moved_m(start, 300.0, 400.0);
        assert!((distance_m(start, end) - 500.0).abs() < 1.0);
    }
}
