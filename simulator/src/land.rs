//! Where a city's land is, and which district of it a position is in: a raster of the city's
//! box, about 50 m a square, filled once from the district outlines (for New York, its five
//! boroughs' shorelines, [`crate::new_york`]). Demand is placed on land, drivers start and turn
//! back on land, and `lk simulate --profile` counts requests by district, all with one array read.

use rand::Rng;
use rand_pcg::Pcg64Mcg;

use crate::city::METRES_PER_DEGREE;
use crate::event::LatLon;
use crate::workload::BoundingBox;

/// Target side of a square, metres.
const SQUARE_M: f64 = 50.0;

/// The districts of New York, in the order of their codes (1-based on the raster).
pub const NEW_YORK_DISTRICTS: [&str; 5] = ["Manhattan", "Brooklyn", "Queens", "Bronx", "Staten Island"];

/// A city's land on a raster of its box.
pub struct Land {
    south_e6: i32,
    west_e6: i32,
    rows: usize,
    columns: usize,
    squares_per_lat_e6: f64,
    squares_per_lon_e6: f64,
    /// Per square, row-major: 0 for water or outside every district, else district code.
    squares: Vec<u8>,
    /// District names, by code - 1.
    districts: Vec<&'static str>,
    /// Per district, its squares (for sampling a place in it uniformly).
    district_squares: Vec<Vec<u32>>,
}

impl std::fmt::Debug for Land {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Land").field("rows", &self.rows).field("columns", &self.columns).finish()
    }
}

impl Land {
    /// New York City's five boroughs, on a raster of `bbox`.
    pub fn new_york(bbox: BoundingBox) -> Self {
        let rings: Vec<(u8, &[[i32; 2]])> = crate::new_york::RINGS
            .iter()
            .map(|ring| {
                let code = NEW_YORK_DISTRICTS.iter().position(|name| *name == ring.borough).expect("a known borough");
                (code as u8 + 1, ring.points)
            })
            .collect();
        Self::from_rings(bbox, NEW_YORK_DISTRICTS.to_vec(), &rings)
    }

    /// Land made of `rings` ((longitude, latitude) microdegree points, each with its district's
    /// code, 1-based into `districts`), on a raster of `bbox`. A square is in a district when
    /// its centre is inside an odd number of that district's rings (holes are rings too).
    pub fn from_rings(bbox: BoundingBox, districts: Vec<&'static str>, rings: &[(u8, &[[i32; 2]])]) -> Self {
        let mid_lat_cos = ((bbox.south + bbox.north) / 2.0).to_radians().cos();
        let height_m = (bbox.north - bbox.south) * METRES_PER_DEGREE;
        let width_m = (bbox.east - bbox.west) * METRES_PER_DEGREE * mid_lat_cos;
        let rows = (height_m / SQUARE_M).ceil().max(1.0) as usize;
        let columns = (width_m / SQUARE_M).ceil().max(1.0) as usize;
        let south_e6 = (bbox.south * 1e6).round() as i32;
        let west_e6 = (bbox.west * 1e6).round() as i32;
        let squares_per_lat_e6 = rows as f64 / ((bbox.north - bbox.south) * 1e6);
        let squares_per_lon_e6 = columns as f64 / ((bbox.east - bbox.west) * 1e6);
        let mut squares = vec![0u8; rows * columns];
        let mut crossings: Vec<f64> = Vec::new();
        for code in 1..=districts.len() as u8 {
            for row in 0..rows {
                // Scan line through the row's centres: where the district's edges cross it.
                let lat = f64::from(south_e6) + (row as f64 + 0.5) / squares_per_lat_e6;
                crossings.clear();
                for &(_, points) in rings.iter().filter(|(ring_code, _)| *ring_code == code) {
                    for (index, a) in points.iter().enumerate() {
                        let b = points[(index + 1) % points.len()];
                        let (a_lat, b_lat) = (f64::from(a[1]), f64::from(b[1]));
                        if (a_lat <= lat) != (b_lat <= lat) {
                            let t = (lat - a_lat) / (b_lat - a_lat);
                            crossings.push(f64::from(a[0]) + t * f64::from(b[0] - a[0]));
                        }
                    }
                }
                crossings.sort_by(f64::total_cmp);
                for pair in crossings.chunks_exact(2) {
                    // Columns whose centres lie between the two crossings.
                    let first = ((pair[0] - f64::from(west_e6)) * squares_per_lon_e6 - 0.5).ceil().max(0.0) as usize;
                    let last = ((pair[1] - f64::from(west_e6)) * squares_per_lon_e6 - 0.5).floor();
                    if last < 0.0 {
                        continue;
                    }
                    let last = (last as usize).min(columns - 1);
                    for column in first..=last {
                        squares[row * columns + column] = code;
                    }
                }
            }
        }
        let mut district_squares = vec![Vec::new(); districts.len()];
        for (index, &code) in squares.iter().enumerate() {
            if code > 0 {
                district_squares[usize::from(code) - 1].push(index as u32);
            }
        }
        Self {
            south_e6,
            west_e6,
            rows,
            columns,
            squares_per_lat_e6,
            squares_per_lon_e6,
            squares,
            districts,
            district_squares,
        }
    }

    /// The district code of `position` (1-based), or 0 for water and anywhere off the raster.
    #[inline]
    pub fn code_at(&self, position: LatLon) -> u8 {
        let row = (f64::from(position.lat_e6 - self.south_e6) * self.squares_per_lat_e6).floor();
        let column = (f64::from(position.lon_e6 - self.west_e6) * self.squares_per_lon_e6).floor();
        if row < 0.0 || column < 0.0 || row >= self.rows as f64 || column >= self.columns as f64 {
            return 0;
        }
        self.squares[row as usize * self.columns + column as usize]
    }

    /// Whether `position` is on land.
    #[inline]
    pub fn is_land(&self, position: LatLon) -> bool {
        self.code_at(position) != 0
    }

    /// The name of the district with `code` (1-based).
    pub fn district(&self, code: u8) -> Option<&'static str> {
        self.districts.get(usize::from(code).checked_sub(1)?).copied()
    }

    /// The districts, by code - 1.
    pub fn districts(&self) -> &[&'static str] {
        &self.districts
    }

    /// Land area of each district, km², from the raster.
    pub fn areas_km2(&self) -> Vec<f64> {
        let square_m2 = (METRES_PER_DEGREE / 1e6 / self.squares_per_lat_e6)
            * (METRES_PER_DEGREE / 1e6 / self.squares_per_lon_e6)
            * (f64::from(self.south_e6) / 1e6).to_radians().cos();
        self.district_squares.iter().map(|squares| squares.len() as f64 * square_m2 / 1e6).collect()
    }

    /// A place in district `code`, uniformly over its land; None if it has none.
    pub fn sample_in(&self, rng: &mut Pcg64Mcg, code: u8) -> Option<LatLon> {
        let squares = self.district_squares.get(usize::from(code).checked_sub(1)?)?;
        if squares.is_empty() {
            return None;
        }
        let square = squares[rng.random_range(0..squares.len())] as usize;
        let (row, column) = (square / self.columns, square % self.columns);
        Some(LatLon {
            lat_e6: self.south_e6 + ((row as f64 + rng.random::<f64>()) / self.squares_per_lat_e6) as i32,
            lon_e6: self.west_e6 + ((column as f64 + rng.random::<f64>()) / self.squares_per_lon_e6) as i32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW_YORK: BoundingBox = BoundingBox { south: 40.50, west: -74.26, north: 40.92, east: -73.70 };

    #[test]
    fn a_square_ring_fills_the_squares_whose_centres_it_holds_and_a_hole_empties_them() {
        let bbox = BoundingBox { south: 0.0, west: 0.0, north: 0.1, east: 0.1 };
        let outer: &[[i32; 2]] = &[[20_000, 20_000], [80_000, 20_000], [80_000, 80_000], [20_000, 80_000]];
        let hole: &[[i32; 2]] = &[[40_000, 40_000], [60_000, 40_000], [60_000, 60_000], [40_000, 60_000]];
        let land = Land::from_rings(bbox, vec!["a"], &[(1, outer), (1, hole)]);
        let at = |lat: i32, lon: i32| land.code_at(LatLon { lat_e6: lat, lon_e6: lon });
        assert_eq!(at(30_000, 30_000), 1);
        assert_eq!(at(50_000, 50_000), 0, "the hole");
        assert_eq!(at(10_000, 50_000), 0);
        assert_eq!(at(90_000, 90_000), 0);
        assert_eq!(at(-1, 50_000), 0, "off the raster");
        // A 0.06° square less a 0.02° hole, of a box 0.1° a side: 32% of it.
        let share = land.district_squares[0].len() as f64 / (land.rows * land.columns) as f64;
        assert!((share - 0.32).abs() < 0.01, "{share}");
        let mut rng = rand::SeedableRng::seed_from_u64(7);
        for _ in 0..1000 {
            let place = land.sample_in(&mut rng, 1).unwrap();
            assert_eq!(land.code_at(place), 1, "{place:?}");
        }
        assert_eq!(land.sample_in(&mut rng, 2), None);
    }

    #[test]
    fn new_york_is_its_five_boroughs_and_not_the_water_or_new_jersey() {
        let land = Land::new_york(NEW_YORK);
        let borough = |lat: f64, lon: f64| land.district(land.code_at(LatLon::from_degrees(lat, lon)));
        assert_eq!(borough(40.7549, -73.9840), Some("Manhattan"), "Times Square");
        assert_eq!(borough(40.6782, -73.9442), Some("Brooklyn"), "Crown Heights");
        assert_eq!(borough(40.6413, -73.7781), Some("Queens"), "JFK");
        assert_eq!(borough(40.8448, -73.8648), Some("Bronx"));
        assert_eq!(borough(40.5795, -74.1502), Some("Staten Island"));
        assert_eq!(borough(40.7282, -74.0776), None, "Jersey City");
        assert_eq!(borough(40.7680, -74.0030), None, "the Hudson");
        assert_eq!(borough(40.5500, -73.9000), None, "the Atlantic");
        assert_eq!(borough(40.6100, -73.8300), None, "Jamaica Bay");
        // The city's land is 783 km² (NYC DCP); the raster's squares sum to it within 2%.
        let total: f64 = land.areas_km2().iter().sum();
        assert!((total - 783.0).abs() < 16.0, "{total} km²");
        let manhattan = land.areas_km2()[0];
        assert!((manhattan - 59.1).abs() < 3.0, "Manhattan is 59 km²: {manhattan}");
    }
}
