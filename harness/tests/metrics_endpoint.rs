//! `lk run --metrics`: the Prometheus endpoint is scraped while a run runs, and what it says
//! agrees with results.json at the end (counts equal).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lk_harness::engine::EngineKind;
use lk_harness::live::{Live, MetricsServer};
use lk_harness::run::{LogChoice, RunOptions, run};
use lk_harness::scenario::Scenario;
use lk_simulator::simulate::Pacing;
use lk_simulator::time::MonotonicClock;

/// Three seconds at 40k events/s with a crash of each engine, malformed records and batch runs.
fn scenario() -> Scenario {
    let text = r#"
        [run]
        rate_eps = 40000
        duration = "3s"
        time_compression = 200
        shards = 4
        [fleet]
        ping_interval = "20s"
        [lateness]
        distribution = "exponential"
        mean = "100ms"
        max = "10s"
        [malformed]
        fraction = 0.002
        [engine]
        partitions = 4
        workers = 2
        checkpoint_interval = "300ms"
        warmup = "0s"
        [lambda]
        batch_interval = "2m"
        [[faults]]
        kind = "crash"
        engine = "both"
        count = 1
        from = "0.8s"
        until = "2s"
    "#;
    Scenario::from_toml(text, "metrics.toml").unwrap()
}

/// One GET of `/metrics`.
fn scrape(address: std::net::SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: lk\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

/// The samples of a scrape: name with labels, to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            line.rsplit_once(' ').map(|(name, value)| (name.to_owned(), value.parse().unwrap_or(f64::NAN)))
        })
        .collect()
}

#[test]
fn the_endpoint_shows_the_run_live_and_ends_where_results_json_does() {
    let live = Arc::new(Live::default());
    let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), Arc::clone(&live)).unwrap();
    let address = server.address();
    let done = Arc::new(AtomicBool::new(false));
    let scraper = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut during = Vec::new();
            while !done.load(Ordering::Acquire) {
                during.push(samples(&scrape(address)));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            during
        })
    };
    let directory = tempfile::tempdir().unwrap();
    let options = RunOptions {
        out_directory: directory.path().to_owned(),
        pacing: Pacing::Scheduled,
        reprocess: false,
        engines: EngineKind::OWN.to_vec(),
        log: LogChoice::Embedded,
        takeover: lk_harness::output::Takeover::Refuse,
        test_knobs: lk_harness::run::TestKnobs::default(),
        spark: Default::default(),
        kstreams: Default::default(),
        profile: lk_harness::run::StreamProfiling::Never,
        live: Some(Arc::clone(&live)),
    };
    let results = run(&scenario(), &options, Arc::new(MonotonicClock::new()), &mut |_| {}).unwrap();
    let exposition = scrape(address);
    let last = samples(&exposition);
    done.store(true, Ordering::Release);
    let during = scraper.join().unwrap();
    // While the input ran, the generator's count rose and the engines were seen reading.
    let generating: Vec<&BTreeMap<String, f64>> =
        during.iter().filter(|scrape| scrape["lk_run_phase{phase=\"generating\"}"] == 1.0).collect();
    assert!(generating.len() >= 5, "{} scrapes while generating", generating.len());
    let counts: Vec<f64> = generating.iter().map(|scrape| scrape["lk_generator_events_total"]).collect();
    assert!(counts.windows(2).all(|pair| pair[0] <= pair[1]) && counts.last() > counts.first(), "{counts:?}");
    assert!(
        generating
            .iter()
            .any(|scrape| scrape.contains_key("lk_engine_consumer_lag_records{engine=\"kappa\",partition=\"3\"}"))
    );
    // At the end, every count is results.json's.
    assert_eq!(last["lk_run_phase{phase=\"done\"}"], 1.0);
    assert_eq!(last["lk_generator_events_total"], results.generator.events as f64);
    assert_eq!(last["lk_log_records_appended_total"], results.generator.records_appended as f64);
    for (name, engine) in &results.engines {
        let get = |metric: &str| last[&format!("{metric}{{engine=\"{name}\"}}")];
        assert_eq!(get("lk_engine_restarts_total"), engine.faults.crashes as f64, "{name}");
        assert_eq!(engine.faults.crashes, 1, "{name}");
        assert_eq!(get("lk_engine_dead_letters_total"), engine.correctness.dead_lettered as f64, "{name}");
        // Each malformed record once, however often a restarted engine read it.
        assert_eq!(engine.correctness.dead_lettered, results.oracle.dead_lettered, "{name}");
        assert_eq!(get("lk_engine_visible_latency_seconds_count"), engine.latency_ms.count as f64, "{name}");
        assert_eq!(get("lk_engine_records_replayed_total"), engine.faults.records_replayed as f64, "{name}");
        for partition in 0..4 {
            let lag = last[&format!("lk_engine_consumer_lag_records{{engine=\"{name}\",partition=\"{partition}\"}}")];
            assert_eq!(lag, 0.0, "{name} read everything");
        }
    }
    let kappa = &results.engines["kappa"];
    assert_eq!(last["lk_engine_checkpoints_total{engine=\"kappa\"}"], kappa.cost.checkpoints as f64);
    let lambda = results.engines["lambda"].lambda.as_ref().unwrap();
    assert_eq!(last["lk_lambda_batch_runs_total{engine=\"lambda\"}"], lambda.batch_runs.len() as f64);
    assert!(!lambda.batch_runs.is_empty());

    // Every metric the documentation and the Grafana dashboard name is one the endpoint serves.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in ["docs/metrics.md", "dashboards/lk.json"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let mut named = 0;
        for (at, _) in text.match_indices("lk_") {
            let name: String =
                text[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            if !name.ends_with('_') && name.len() > 3 && text[..at].ends_with(|c: char| !c.is_ascii_alphanumeric()) {
                let family = ["_total", "_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name);
                assert!(exposition.contains(&format!("# TYPE {family} ")), "{file} names {name}, which is not served");
                named += 1;
            }
        }
        assert!(named >= 8, "{file} names only {named} metrics");
    }
}
