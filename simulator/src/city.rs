//! The city: geometry helpers and the zone cache.
//!
//! An H3 lookup costs about 400 ns, several times the whole budget of generating an event, so
//! zones are resolved on a lattice: the city's box is cut into squares of about an eighth of an
//! H3 edge, and each square's zone is the H3 cell of its centre, computed once on first use.
//! An event within a few tens of metres of a cell border may therefore be attributed to the
//! neighbouring cell, about as often as a GPS fix that close to a border would be anyway.
//! `tests::lattice_zones_mostly_agree_with_exact_h3` measures how often.
//!
//! The lattice is read in no order a cache can follow, a miss per read. So each driver keeps a
//! [`ZoneMemo`]: the square it last looked up and how many squares around it share that zone.
//! A ping moves a driver about half a square; at rush hour three pings in four find their zone
//! in the memo, which answers exactly as the lattice would.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::event::{LatLon, Zone};
use crate::scenario::BoundingBox;

/// Metres per degree of latitude (and of longitude at the equator).
pub const METRES_PER_DEGREE: f64 = 111_320.0;
/// At most this many lattice squares (8 bytes each).
const MAX_SQUARES: usize = 8 << 20;
/// Where an H3 cell index holds its base cell (7 bits, above the 15 three-bit digits).
const H3_BASE_CELL_SHIFT: u32 = 45;
/// An H3 cell index's header: mode 1 (a cell), with the resolution at bit 52.
const H3_CELL_MODE: u64 = 1 << 59;
const H3_RESOLUTION_SHIFT: u32 = 52;

/// A lattice entry: bit 63 marks it filled; bits 56-59 hold its square's [radius](ZoneGrid)
/// plus one (0 while not yet worked out); the low bits hold the cell. At resolution `r` an H3
/// cell index is fixed but for its base cell and its first `r` digits, `7 + 3r` bits (31 at the
/// default resolution 8, 52 at 15), so those are all an entry keeps.
const ENTRY_FILLED: u64 = 1 << 63;
const ENTRY_RADIUS_SHIFT: u32 = 56;
const ENTRY_CELL_MASK: u64 = (1 << 52) - 1;
/// How far around a square the lattice looks for a zone border. A square is an eighth of an H3
/// edge, so a cell's inner circle is about 7 squares across its centre: larger radii are rare.
const MAX_RADIUS: u64 = 14;

/// Where a driver last looked its zone up: the square, how many squares around it share the
/// zone, and the zone. Pings move a driver a fraction of a square, so most pings find their
/// zone here instead of in the lattice, whose entries, read in no order the cache can follow,
/// cost a miss each. It answers exactly as the lattice would: the stream does not change.
///
/// Bit 63 marks it set; the row (12 bits) at 51, the column (12 bits) at 39, the radius (4
/// bits) at 35, and the cell's bits (at most 35: resolutions up to 9) below.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZoneMemo(u64);

const MEMO_SET: u64 = 1 << 63;
const MEMO_ROW_SHIFT: u32 = 51;
const MEMO_COLUMN_SHIFT: u32 = 39;
const MEMO_RADIUS_SHIFT: u32 = 35;
const MEMO_CELL_MASK: u64 = (1 << 35) - 1;
/// Rows and columns a memo can name (12 bits each).
const MEMO_MAX_LINES: usize = 1 << 12;
/// The finest resolution whose cells fit a memo (`7 + 3 * 9 = 34` bits).
const MEMO_MAX_RESOLUTION: u8 = 9;

impl ZoneMemo {
    fn new(row: usize, column: usize, radius: u64, cell: u64) -> Self {
        debug_assert!(row < MEMO_MAX_LINES && column < MEMO_MAX_LINES && radius <= MAX_RADIUS);
        debug_assert!(cell <= MEMO_CELL_MASK);
        Self(
            MEMO_SET
                | (row as u64) << MEMO_ROW_SHIFT
                | (column as u64) << MEMO_COLUMN_SHIFT
                | radius << MEMO_RADIUS_SHIFT
                | cell,
        )
    }

    /// The memo's cell bits, if it holds for the square at `row` and `column`.
    #[inline]
    fn cell_at(self, row: usize, column: usize) -> Option<u64> {
        let radius = (self.0 >> MEMO_RADIUS_SHIFT) & 0xF;
        let memo_row = ((self.0 >> MEMO_ROW_SHIFT) & 0xFFF) as usize;
        let memo_column = ((self.0 >> MEMO_COLUMN_SHIFT) & 0xFFF) as usize;
        (self.0 & MEMO_SET != 0
            && row.abs_diff(memo_row) as u64 <= radius
            && column.abs_diff(memo_column) as u64 <= radius)
            .then_some(self.0 & MEMO_CELL_MASK)
    }
}

/// Zones of the city's lattice squares, filled lazily and shared by every shard. Each entry is a
/// pure function of its square (its zone, and its radius: how many squares around it, in every
/// direction, share that zone), so concurrent fills race harmlessly to the same value.
pub struct ZoneGrid {
    south_e6: i32,
    west_e6: i32,
    rows: usize,
    columns: usize,
    squares_per_lat_e6: f32,
    squares_per_lon_e6: f32,
    resolution: h3o::Resolution,
    /// Whether this lattice's squares and cells fit a [`ZoneMemo`].
    memo_fits: bool,
    entries: Vec<AtomicU64>,
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
            memo_fits: rows <= MEMO_MAX_LINES
                && columns <= MEMO_MAX_LINES
                && u8::from(resolution) <= MEMO_MAX_RESOLUTION,
            entries: (0..rows * columns).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// How many low bits of a cell index at this grid's resolution are unused digits.
    fn unused_digit_bits(&self) -> u32 {
        H3_BASE_CELL_SHIFT - 3 * u32::from(u8::from(self.resolution))
    }

    /// The bits of `zone` an entry keeps: its base cell and its used digits.
    fn cell_bits(&self, zone: Zone) -> u64 {
        let bits = zone.0 >> self.unused_digit_bits();
        bits & ((1 << (H3_BASE_CELL_SHIFT - self.unused_digit_bits() + 7)) - 1)
    }

    /// The cell index `cell_bits` stand for.
    #[inline]
    fn expand(&self, cell_bits: u64) -> Zone {
        let unused = self.unused_digit_bits();
        Zone(
            H3_CELL_MODE
                | u64::from(u8::from(self.resolution)) << H3_RESOLUTION_SHIFT
                | cell_bits << unused
                | ((1 << unused) - 1),
        )
    }

    /// The lattice square of `position`, row-major (positions outside the box are clamped), with
    /// its row and column.
    #[inline]
    fn locate(&self, position: LatLon) -> (usize, usize, usize) {
        let row = (((position.lat_e6 - self.south_e6) as f32 * self.squares_per_lat_e6) as usize).min(self.rows - 1);
        let column =
            (((position.lon_e6 - self.west_e6) as f32 * self.squares_per_lon_e6) as usize).min(self.columns - 1);
        (row * self.columns + column, row, column)
    }

    /// The row-major index of `position`'s lattice square: nearby positions get nearby indices,
    /// which the generator uses to keep its fleet in a cache-friendly order.
    pub fn square_of(&self, position: LatLon) -> usize {
        self.locate(position).0
    }

    /// The zone of `position` (which must lie in the box; positions outside are clamped).
    #[inline]
    pub fn zone_of(&self, position: LatLon) -> Zone {
        let (square, row, column) = self.locate(position);
        let entry = self.entries[square].load(Ordering::Relaxed);
        let entry = if entry == 0 { self.fill(square, row, column) } else { entry };
        self.expand(entry & ENTRY_CELL_MASK)
    }

    /// The zone of `position`, from `memo` when it holds there; else from the lattice, leaving
    /// in `memo` the square and how far around it that zone holds. The same answer as
    /// [`zone_of`](Self::zone_of), every time.
    #[inline]
    pub fn zone_remembered(&self, position: LatLon, memo: &mut ZoneMemo) -> Zone {
        let (square, row, column) = self.locate(position);
        if let Some(cell) = memo.cell_at(row, column) {
            return self.expand(cell);
        }
        let entry = self.entries[square].load(Ordering::Relaxed);
        let entry =
            if entry >> ENTRY_RADIUS_SHIFT & 0xF == 0 { self.work_out_radius(square, row, column) } else { entry };
        let cell = entry & ENTRY_CELL_MASK;
        if self.memo_fits {
            *memo = ZoneMemo::new(row, column, (entry >> ENTRY_RADIUS_SHIFT & 0xF) - 1, cell);
        }
        self.expand(cell)
    }

    /// The entry of the square at `row` and `column`, filled if it was not.
    fn entry(&self, row: usize, column: usize) -> u64 {
        let square = row * self.columns + column;
        match self.entries[square].load(Ordering::Relaxed) {
            0 => self.fill(square, row, column),
            entry => entry,
        }
    }

    /// Fills a square's entry with its zone (its radius not yet worked out) and returns it.
    #[cold]
    fn fill(&self, square: usize, row: usize, column: usize) -> u64 {
        let lat = (f64::from(self.south_e6) + (row as f64 + 0.5) / f64::from(self.squares_per_lat_e6)) / 1e6;
        let lon = (f64::from(self.west_e6) + (column as f64 + 0.5) / f64::from(self.squares_per_lon_e6)) / 1e6;
        let zone = exact_zone(LatLon::from_degrees(lat, lon), self.resolution);
        let entry = ENTRY_FILLED | self.cell_bits(zone);
        debug_assert_eq!(self.expand(entry & ENTRY_CELL_MASK), zone, "an entry stands for its cell");
        // A racing `work_out_radius` may have stored the same cell with its radius: keep that.
        match self.entries[square].compare_exchange(0, entry, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => entry,
            Err(stored) => stored,
        }
    }

    /// Works out how many rings of squares around a square share its zone (up to
    /// [`MAX_RADIUS`]; squares beyond the lattice's edge cannot be reached and do not count),
    /// stores it in the square's entry and returns the entry. Once per square: the rings'
    /// entries are mostly filled already, or soon will be, by the drivers around.
    #[cold]
    fn work_out_radius(&self, square: usize, row: usize, column: usize) -> u64 {
        let entry = self.entry(row, column);
        let cell = entry & ENTRY_CELL_MASK;
        let same = |r: usize, c: usize| self.entry(r, c) & ENTRY_CELL_MASK == cell;
        let mut radius = 0;
        'rings: while radius < MAX_RADIUS as usize {
            let ring = radius + 1;
            let (top, bottom) = (row.saturating_sub(ring), (row + ring).min(self.rows - 1));
            let (left, right) = (column.saturating_sub(ring), (column + ring).min(self.columns - 1));
            for r in top..=bottom {
                let whole_row = r + ring == row || r == row + ring;
                let differs = if whole_row {
                    (left..=right).any(|c| !same(r, c))
                } else {
                    (column >= ring && !same(r, left)) || (column + ring < self.columns && !same(r, right))
                };
                if differs {
                    break 'rings;
                }
            }
            radius = ring;
        }
        let entry = entry | (radius as u64 + 1) << ENTRY_RADIUS_SHIFT;
        self.entries[square].store(entry, Ordering::Relaxed);
        entry
    }

    /// Lattice squares in the grid.
    pub fn squares(&self) -> usize {
        self.rows * self.columns
    }
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

    /// An entry's cell bits stand for exactly their cell at every resolution, all over the globe
    /// (every base cell, digits of every value).
    #[test]
    fn entries_stand_for_exactly_their_cells() {
        let mut next = xorshift(0x2545_F491_4F6C_DD1Du64);
        for resolution in 0..=15 {
            let resolution = h3o::Resolution::try_from(resolution).expect("valid");
            let grid = ZoneGrid::new(NEW_YORK, resolution);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..5_000 {
                let lat = (next() % 179_000_000) as f64 / 1e6 - 89.5;
                let lon = (next() % 359_000_000) as f64 / 1e6 - 179.5;
                let zone = exact_zone(LatLon::from_degrees(lat, lon), resolution);
                let bits = grid.cell_bits(zone);
                assert_eq!(bits & !ENTRY_CELL_MASK, 0, "resolution {resolution}: the cell overlaps the flags");
                assert_eq!(grid.expand(bits), zone, "resolution {resolution}: {:x}", zone.0);
                seen.insert(bits);
            }
            assert!(seen.len() >= 100, "the samples reach only {} cells", seen.len());
            let position = LatLon::from_degrees(40.75, -73.98);
            let zone = grid.zone_of(position);
            assert_eq!(grid.zone_of(position), zone, "a filled square answers the same");
            assert_eq!(zone, grid.zone_remembered(position, &mut ZoneMemo::default()));
            assert_eq!(h3o::CellIndex::try_from(zone.0).expect("a valid cell").resolution(), resolution);
        }
    }

    /// Drivers wandering the city in steps of a fraction of a square to a few squares: the zone
    /// a memo gives is the lattice's every time, at resolutions with and without memos, and at
    /// the default resolution most steps are answered by the memo.
    #[test]
    fn a_memo_answers_as_the_lattice_does() {
        for resolution in [h3o::Resolution::Seven, h3o::Resolution::Eight, h3o::Resolution::Nine, h3o::Resolution::Ten]
        {
            let grid = ZoneGrid::new(NEW_YORK, resolution);
            let lattice = ZoneGrid::new(NEW_YORK, resolution);
            let step_e6 = (1.0 / grid.squares_per_lat_e6) as i64;
            let mut next = xorshift(0x9E37_79B9_7F4A_7C15u64 ^ u64::from(u8::from(resolution)));
            let (mut remembered, mut steps) = (0, 0);
            for _ in 0..200 {
                let mut position = LatLon::from_degrees(
                    40.50 + (next() % 420_000) as f64 / 1e6,
                    -74.26 + (next() % 560_000) as f64 / 1e6,
                );
                let mut memo = ZoneMemo::default();
                let reach = [step_e6 / 2, step_e6 * 3][(next() % 2) as usize].max(1);
                for _ in 0..200 {
                    let (_, row, column) = grid.locate(position);
                    remembered += usize::from(memo.cell_at(row, column).is_some());
                    steps += 1;
                    assert_eq!(grid.zone_remembered(position, &mut memo), lattice.zone_of(position));
                    assert_eq!(memo == ZoneMemo::default(), !grid.memo_fits);
                    let d_lat = (next() % (2 * reach as u64 + 1)) as i64 - reach;
                    let d_lon = (next() % (2 * reach as u64 + 1)) as i64 - reach;
                    position = BoxE6::new(NEW_YORK).clamp(LatLon {
                        lat_e6: (i64::from(position.lat_e6) + d_lat) as i32,
                        lon_e6: (i64::from(position.lon_e6) + d_lon) as i32,
                    });
                }
            }
            if resolution == h3o::Resolution::Eight {
                let share = remembered as f64 / steps as f64;
                assert!(share > 0.4, "only {:.0}% of steps were answered by the memo", share * 100.0);
            }
        }
    }

    /// A square's radius is the largest ring count around it that all share its zone: the next
    /// ring out has a square of another zone, or the lattice or the radius cap ends there.
    #[test]
    fn a_radius_reaches_exactly_to_the_nearest_other_zone() {
        let grid = ZoneGrid::new(NEW_YORK, h3o::Resolution::Eight);
        let mut next = xorshift(0xD1B5_4A32_D192_ED03u64);
        let mut radii = [0usize; MAX_RADIUS as usize + 1];
        for _ in 0..500 {
            let (row, column) = ((next() as usize) % grid.rows, (next() as usize) % grid.columns);
            let square = row * grid.columns + column;
            let entry = grid.work_out_radius(square, row, column);
            let radius = (entry >> ENTRY_RADIUS_SHIFT & 0xF) as usize - 1;
            radii[radius] += 1;
            let cell = entry & ENTRY_CELL_MASK;
            let ring_differs = |ring: usize| {
                (row.saturating_sub(ring)..=(row + ring).min(grid.rows - 1)).any(|r| {
                    (column.saturating_sub(ring)..=(column + ring).min(grid.columns - 1))
                        .any(|c| grid.entry(r, c) & ENTRY_CELL_MASK != cell)
                })
            };
            assert!(!ring_differs(radius), "a square within radius {radius} of ({row}, {column}) has another zone");
            if radius < MAX_RADIUS as usize
                && row > radius
                && column > radius
                && row + radius + 1 < grid.rows
                && column + radius + 1 < grid.columns
            {
                assert!(ring_differs(radius + 1), "ring {} around ({row}, {column}) shares the zone", radius + 1);
            }
        }
        assert!(radii[0] > 0 && radii[2..].iter().sum::<usize>() > 0, "radii seen: {radii:?}");
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
