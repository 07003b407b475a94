//! Runs the Lambda batch layer over an existing master dataset and prints its rate:
//! `cargo run --release -p lk-engines --example batch_layer -- out/rush-hour/master [threads]`.

use lk_engines::lambda::batch;
use lk_engines::lambda::master::MasterDataset;
use lk_engines::runtime::queries::QueryConfig;

fn main() {
    let mut args = std::env::args().skip(1);
    let root = std::path::PathBuf::from(args.next().expect("usage: batch_layer MASTER_DIR [THREADS]"));
    let threads = args.next().map_or(2, |text| text.parse().expect("threads is a number"));
    let files = MasterDataset::files_in(&root).expect("a master dataset");
    let minute = 60_000_000;
    let config = QueryConfig {
        rides_window_us: 5 * minute,
        demand_window_us: 5 * minute,
        demand_slide_us: minute,
        session_gap_us: 10 * minute,
        trends_window_us: 60 * minute,
        watermark_delay_us: 2_000_000,
        allowed_lateness_us: 30_000_000,
    };
    let repeats: usize = std::env::var("LK_REPEATS").ok().and_then(|text| text.parse().ok()).unwrap_or(1);
    for _ in 1..repeats {
        let (_, stats) = batch::compute(&root, &files, &config, threads, true).expect("the batch run");
        println!("{:.1}M rows/s", stats.rows as f64 / stats.seconds / 1e6);
    }
    let (views, stats) = batch::compute(&root, &files, &config, threads, true).expect("the batch run");
    println!(
        "{} rows in {:.2} s: {:.1}M rows/s, {:.2} CPU s; {} drivers located",
        stats.rows,
        stats.seconds,
        stats.rows as f64 / stats.seconds / 1e6,
        stats.cpu_seconds,
        views.driver_location.len()
    );
}
