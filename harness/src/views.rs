//! Served views as Parquet: `DIR/views/<engine>/<query>.parquet`, one row per key and window,
//! window bounds as UTC timestamps, so that any figure a report shows can be checked in DuckDB,
//! pandas or Spark. Columns are documented in `docs/results.md`.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use lk_engines::runtime::queries::{Query, QueryConfig, ViewSet};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

fn timestamp(name: &str) -> Field {
    Field::new(name, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false)
}

fn times(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(values).with_timezone("UTC"))
}

fn u64s(values: impl Iterator<Item = u64>) -> ArrayRef {
    Arc::new(UInt64Array::from_iter_values(values))
}

fn ratio(sum: f64, count: u64) -> f64 {
    if count == 0 { f64::NAN } else { sum / count as f64 }
}

/// The rows of one query's view.
pub fn query_batch(views: &ViewSet, query: Query, config: &QueryConfig) -> RecordBatch {
    let (fields, columns): (Vec<Field>, Vec<ArrayRef>) = match query {
        Query::DriverLocation => {
            let rows = &views.driver_location;
            (
                vec![
                    Field::new("driver_id", DataType::UInt32, false),
                    timestamp("event_time"),
                    Field::new("event_id", DataType::UInt64, false),
                    Field::new("lat", DataType::Float64, false),
                    Field::new("lon", DataType::Float64, false),
                    Field::new("zone", DataType::UInt64, false),
                ],
                vec![
                    Arc::new(UInt32Array::from_iter_values(rows.keys().copied())),
                    times(rows.values().map(|location| location.event_time_us)),
                    u64s(rows.values().map(|location| location.event_id)),
                    Arc::new(Float64Array::from_iter_values(
                        rows.values().map(|location| f64::from(location.lat_e6) / 1e6),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        rows.values().map(|location| f64::from(location.lon_e6) / 1e6),
                    )),
                    u64s(rows.values().map(|location| location.zone)),
                ],
            )
        }
        Query::RidesPerDriver => {
            let rows = &views.rides_per_driver;
            let size = config.rides_window_us;
            (
                vec![
                    Field::new("driver_id", DataType::UInt32, false),
                    timestamp("window_start"),
                    timestamp("window_end"),
                    Field::new("rides", DataType::UInt64, false),
                    Field::new("pickup_lat_e6_sum", DataType::Int64, false),
                    Field::new("pickup_lon_e6_sum", DataType::Int64, false),
                    Field::new("avg_pickup_lat", DataType::Float64, true),
                    Field::new("avg_pickup_lon", DataType::Float64, true),
                    Field::new("id_checksum", DataType::UInt64, false),
                ],
                vec![
                    Arc::new(UInt32Array::from_iter_values(rows.keys().map(|(driver, _)| *driver))),
                    times(rows.keys().map(|(_, start)| *start)),
                    times(rows.keys().map(|(_, start)| start + size)),
                    u64s(rows.values().map(|cell| cell.rides)),
                    Arc::new(Int64Array::from_iter_values(rows.values().map(|cell| cell.pickup_lat_e6_sum))),
                    Arc::new(Int64Array::from_iter_values(rows.values().map(|cell| cell.pickup_lon_e6_sum))),
                    Arc::new(Float64Array::from_iter_values(
                        rows.values().map(|cell| ratio(cell.pickup_lat_e6_sum as f64 / 1e6, cell.rides)),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        rows.values().map(|cell| ratio(cell.pickup_lon_e6_sum as f64 / 1e6, cell.rides)),
                    )),
                    u64s(rows.values().map(|cell| cell.ids)),
                ],
            )
        }
        Query::ZoneDemand => {
            let rows = &views.zone_demand;
            let size = config.demand_window_us;
            (
                vec![
                    Field::new("zone", DataType::UInt64, false),
                    timestamp("window_start"),
                    timestamp("window_end"),
                    Field::new("requests", DataType::UInt64, false),
                    Field::new("id_checksum", DataType::UInt64, false),
                ],
                vec![
                    u64s(rows.keys().map(|(zone, _)| *zone)),
                    times(rows.keys().map(|(_, start)| *start)),
                    times(rows.keys().map(|(_, start)| start + size)),
                    u64s(rows.values().map(|cell| cell.requests)),
                    u64s(rows.values().map(|cell| cell.ids)),
                ],
            )
        }
        Query::DriverSessions => {
            let rows = &views.driver_sessions;
            (
                vec![
                    Field::new("driver_id", DataType::UInt32, false),
                    timestamp("session_start"),
                    timestamp("last_event"),
                    Field::new("pings", DataType::UInt64, false),
                    Field::new("rides", DataType::UInt64, false),
                    Field::new("id_checksum", DataType::UInt64, false),
                ],
                vec![
                    Arc::new(UInt32Array::from_iter_values(rows.keys().map(|(driver, _)| *driver))),
                    times(rows.values().map(|session| session.start_us)),
                    times(rows.values().map(|session| session.last_us)),
                    u64s(rows.values().map(|session| session.pings)),
                    u64s(rows.values().map(|session| session.rides)),
                    u64s(rows.values().map(|session| session.ids)),
                ],
            )
        }
        Query::HistoricalTrends => {
            let rows = &views.historical_trends;
            let size = config.trends_window_us;
            (
                vec![
                    Field::new("zone", DataType::UInt64, false),
                    timestamp("window_start"),
                    timestamp("window_end"),
                    Field::new("rides", DataType::UInt64, false),
                    Field::new("fare_cents_sum", DataType::UInt64, false),
                    Field::new("distance_m_sum", DataType::UInt64, false),
                    Field::new("avg_distance_m", DataType::Float64, true),
                    Field::new("id_checksum", DataType::UInt64, false),
                ],
                vec![
                    u64s(rows.keys().map(|(zone, _)| *zone)),
                    times(rows.keys().map(|(_, start)| *start)),
                    times(rows.keys().map(|(_, start)| start + size)),
                    u64s(rows.values().map(|cell| cell.rides)),
                    u64s(rows.values().map(|cell| cell.fare_cents_sum)),
                    u64s(rows.values().map(|cell| cell.distance_m_sum)),
                    Arc::new(Float64Array::from_iter_values(
                        rows.values().map(|cell| ratio(cell.distance_m_sum as f64, cell.rides)),
                    )),
                    u64s(rows.values().map(|cell| cell.ids)),
                ],
            )
        }
    };
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("columns match their fields")
}

/// Writes all five views of one engine under `directory` (`<query>.parquet` each).
pub fn write_views(directory: &Path, views: &ViewSet, config: &QueryConfig) -> Result<(), std::io::Error> {
    std::fs::create_dir_all(directory)?;
    for query in Query::ALL {
        let batch = query_batch(views, query, config);
        let path = directory.join(format!("{}.parquet", query.name()));
        let file = File::create(&path)?;
        let properties = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(properties)).map_err(std::io::Error::other)?;
        writer.write(&batch).map_err(std::io::Error::other)?;
        writer.close().map_err(std::io::Error::other)?;
    }
    Ok(())
}
