//! The stream's profile (`lk simulate --profile`) as text: its measured properties, then each
//! checked property beside its reference, tolerance and verdict.

use std::fmt::Write;

use lk_simulator::profile::{Quantiles, StreamProfile};

fn quantiles(q: &Quantiles, unit: &str) -> String {
    if q.count == 0 {
        return "none in the stream".to_owned();
    }
    format!("median {:.1} {unit}, mean {:.1}, p90 {:.1}, p99 {:.1} ({} measured)", q.p50, q.mean, q.p90, q.p99, q.count)
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// The profile as lines of text, for a terminal.
pub fn profile_text(profile: &StreamProfile) -> String {
    let mut text = String::from("\nstream profile\n");
    let mut line = |label: &str, value: String| {
        let _ = writeln!(text, "  {label:<26} {value}");
    };
    line(
        "event mix",
        profile
            .mix
            .iter()
            .filter(|(_, share)| *share > 0.0)
            .map(|(kind, share)| format!("{kind} {}", percent(*share)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    line(
        "ride lifecycle events",
        format!(
            "{} of events (steady state for this scenario: {})",
            percent(profile.lifecycle_share),
            percent(profile.lifecycle_share_steady)
        ),
    );
    line(
        "drivers",
        format!(
            "{} seen; busiest 1% have {} of their events, 10% have {}",
            profile.drivers.keys,
            percent(profile.drivers.top_1pct_share),
            percent(profile.drivers.top_10pct_share)
        ),
    );
    line(
        "request zones",
        format!(
            "{} zones; busiest 1% have {} of requests, 10% have {}, the busiest one {}",
            profile.request_zones.keys,
            percent(profile.request_zones.top_1pct_share),
            percent(profile.request_zones.top_10pct_share),
            percent(profile.request_zones.top_key_share)
        ),
    );
    if let Some(on_land) = profile.requests_on_land {
        let districts: Vec<String> =
            profile.requests_by_district.iter().map(|(name, share)| format!("{name} {}", percent(*share))).collect();
        line("requests by borough", format!("{}; on land {}", districts.join(", "), percent(on_land)));
    }
    let median = |value: Option<f64>, unit: &str| {
        value.map_or_else(
            || "the stream ends before half of them do".to_owned(),
            |median| format!("{median:.1} {unit} counting those the stream ends during"),
        )
    };
    line(
        "trip duration",
        format!("{}; median {}", quantiles(&profile.trip_minutes, "min"), median(profile.trip_minutes_median, "min")),
    );
    line("trip distance", quantiles(&profile.trip_miles, "mi"));
    line("trip speed", quantiles(&profile.trip_mph, "mph"));
    line(
        "pickup wait",
        format!(
            "{}; median {}",
            quantiles(&profile.pickup_wait_minutes, "min"),
            median(profile.pickup_wait_minutes_median, "min")
        ),
    );
    line("ping speed (moving)", quantiles(&profile.ping_mph, "mph straight-line"));
    line("  in Manhattan", quantiles(&profile.manhattan_ping_mph, "mph straight-line"));
    if let Some(share) = profile.miles_with_passenger {
        line("miles with a passenger", percent(share));
    }
    line(
        "cancellations",
        format!(
            "riders {}, drivers {}, platform {} of requests",
            percent(profile.rider_cancel_share),
            percent(profile.driver_cancel_share),
            percent(profile.platform_cancel_share)
        ),
    );
    let total: u64 = profile.requests_by_local_hour.iter().sum();
    if total > 0 {
        let hours: Vec<String> = profile
            .requests_by_local_hour
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(hour, count)| format!("{hour:02}h {}", percent(*count as f64 / total as f64)))
            .collect();
        line("requests by local hour", hours.join(", "));
    }
    if let Some(ratio) = profile.peak_to_trough {
        line("busiest hour over quietest", format!("{ratio:.1}x"));
    }
    line(
        "burstiness",
        format!(
            "events per second vary by {:.3} (coefficient of variation; a Poisson stream at this rate: {:.3})",
            profile.arrivals_per_second_cv, profile.poisson_cv
        ),
    );
    line("delivery delay", quantiles(&profile.delivery_delay_seconds, "s of event time"));
    line(
        "behind the latest by > 2 s",
        format!(
            "{} of events (late for a watermark 2 s behind the latest event time)",
            percent(profile.behind_max_event_time_2s_share)
        ),
    );
    let _ = writeln!(text, "\n  against the references (docs/workload.md):");
    for check in &profile.checks {
        let measured = check.measured.map_or_else(|| "-".to_owned(), |value| format!("{value:.2}"));
        let _ = writeln!(
            text,
            "  {:<52} {:>8} {:<18} range {:.2}-{:.2}  {}\n      reference: {} ({})",
            check.property, measured, check.unit, check.low, check.high, check.verdict, check.reference, check.source
        );
    }
    let _ = writeln!(
        text,
        "  {}",
        if profile.within_tolerance() {
            "every measured property is within its tolerance"
        } else {
            "some properties are off their references: the stream does not resemble the reference city there"
        }
    );
    text
}
