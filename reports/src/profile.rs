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
    // Small shares (a hot key's, offline phones') keep two significant digits.
    if share > 0.0 && share < 0.001 {
        format!("{:.2}%", share * 100.0).replace("0.00%", "<0.01%")
    } else {
        format!("{:.1}%", share * 100.0)
    }
}

/// The profile's measured properties, as (label, value) rows.
fn properties(profile: &StreamProfile) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let mut line = |label: &str, value: String| rows.push((label.to_owned(), value));
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
            "{} seen; busiest 1% have {} of their events, 10% have {}, the busiest one {}",
            profile.drivers.keys,
            percent(profile.drivers.top_1pct_share),
            percent(profile.drivers.top_10pct_share),
            percent(profile.drivers.top_key_share)
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
    line(
        "delivery delay",
        format!(
            "{}; against the stream's send clock, which trails arrival by what offline phones hold (each shard \
             sends its events in its own slots)",
            quantiles(&profile.delivery_delay_seconds, "s of event time")
        ),
    );
    line(
        "offline phones",
        if profile.late_driver_events_share > 0.0 {
            format!(
                "{} of events are drivers' and more than 5 s late; {} of those arrive in the same second as \
                 another of the same phone's (a buffer delivered in a burst on reconnecting)",
                percent(profile.late_driver_events_share),
                percent(profile.late_in_bursts_share)
            )
        } else {
            "no driver event is more than 5 s late".to_owned()
        },
    );
    line(
        "clocks running ahead",
        if profile.clock_ahead_phones_share > 0.0 {
            format!(
                "{} of phones, {} of events, stamped up to {:.1} s ahead of the stream's median delay: such a \
                 phone sets the latest event time of its partition, and a watermark behind it calls others' \
                 events late",
                percent(profile.clock_ahead_phones_share),
                percent(profile.clock_ahead_events_share),
                profile.clock_lead_seconds_max
            )
        } else {
            "none (no event is delayed 0.5 s less than the median)".to_owned()
        },
    );
    line(
        "behind the latest by > 2 s",
        format!(
            "{} of events (late for a watermark 2 s behind the latest event time)",
            percent(profile.behind_max_event_time_2s_share)
        ),
    );
    rows
}

/// What the profile concludes, in a sentence.
fn conclusion(profile: &StreamProfile) -> &'static str {
    if profile.within_tolerance() {
        "every measured property is within its tolerance"
    } else {
        "some properties are off their references: the stream does not resemble the reference city there"
    }
}

/// The profile as lines of text, for a terminal.
pub fn profile_text(profile: &StreamProfile) -> String {
    let mut text = String::from("\nstream profile\n");
    for (label, value) in properties(profile) {
        let _ = writeln!(text, "  {label:<26} {value}");
    }
    let _ = writeln!(text, "\n  against the references (docs/workload.md):");
    for check in &profile.checks {
        let measured = check.measured.map_or_else(|| "-".to_owned(), |value| format!("{value:.2}"));
        let _ = writeln!(
            text,
            "  {:<52} {:>8} {:<18} range {:.2}-{:.2}  {}\n      reference: {} ({})",
            check.property, measured, check.unit, check.low, check.high, check.verdict, check.reference, check.source
        );
    }
    let _ = writeln!(text, "  {}", conclusion(profile));
    text
}

/// The profile as a section of report.html.
pub fn profile_html(profile: &StreamProfile) -> String {
    use crate::html::escape;
    let mut out = String::from(
        "<h2>The stream</h2><p>What the engines were sent, measured: an architect reads it to decide whether the \
         workload resembles theirs, a scenario author tunes by it (<code>lk simulate SCENARIO --profile</code> prints \
         it; the references and their sources are in docs/workload.md).</p><table>",
    );
    for (label, value) in properties(profile) {
        let _ = write!(
            out,
            "<tr><th class=\"text\">{}</th><td class=\"text\">{}</td></tr>",
            escape(&label),
            escape(&value)
        );
    }
    out.push_str(
        "</table><table><tr><th class=\"text\">property</th><th>measured</th><th>range</th><th class=\"text\">verdict</th>\
         <th class=\"text\">reference</th></tr>",
    );
    for check in &profile.checks {
        let measured = check.measured.map_or_else(|| "-".to_owned(), |value| format!("{value:.2} {}", check.unit));
        let _ = write!(
            out,
            "<tr><td class=\"text\">{}</td><td>{}</td><td>{:.2}-{:.2}</td><td class=\"text\">{}</td><td class=\"text\">{} \
             ({})</td></tr>",
            escape(&check.property),
            escape(&measured),
            check.low,
            check.high,
            escape(&check.verdict),
            escape(&check.reference),
            escape(&check.source)
        );
    }
    let _ = write!(out, "</table><p>{}.</p>", escape(conclusion(profile)));
    out
}

/// The profile as a section of report.md.
pub fn profile_markdown(profile: &StreamProfile) -> String {
    let mut out = String::from("## The stream\n\n| property | measured |\n|---|---|\n");
    for (label, value) in properties(profile) {
        let _ = writeln!(out, "| {label} | {} |", value.replace('|', "/"));
    }
    out.push_str("\n| checked against | measured | range | verdict |\n|---|---:|---|---|\n");
    for check in &profile.checks {
        let measured = check.measured.map_or_else(|| "-".to_owned(), |value| format!("{value:.2} {}", check.unit));
        let _ = writeln!(
            out,
            "| {} ({}) | {measured} | {:.2}-{:.2} | {} |",
            check.property, check.reference, check.low, check.high, check.verdict
        );
    }
    let _ = writeln!(out, "\n{}.\n", conclusion(profile));
    out
}
