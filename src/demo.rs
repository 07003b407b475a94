//! `lk demo`: a run of a scenario with a live dashboard, for someone explaining Lambda and Kappa
//! to a room. Both engines run side by side; the dashboard shows, a few times a second, what
//! each is doing (rate, lag, visible latency, checkpoints, batch runs, restarts) and what a user
//! of each is served (Q3's demand per window), and says in a sentence what just happened. Keys
//! crash an engine (through the crash injector, as a scenario's `[[faults]]` are fired, so the
//! crash is in results.json), silence a share of the phones for a while (a late burst, a
//! `late-burst` fault in results.json), freeze the view, or end the input early. Beside what each
//! engine serves, the dashboard shows the truth so far (every request delivered to the log),
//! each engine's completeness against it and any window it counts above it. `--no-tui` prints the same as lines, and
//! `--script` presses keys at set times, so a demo can be replayed and tested.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use lk_engines::runtime::queries::QueryConfig;
use lk_harness::engine::EngineKind;
#[cfg(test)]
use lk_harness::live::RaceOutcome;
use lk_harness::live::{EngineSnapshot, LATENCY_BUCKETS_S, Snapshot, bucket_quantile};
use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Sparkline, Wrap};

/// The smallest terminal the dashboard draws in.
pub const MIN_WIDTH: u16 = 80;
/// See [`MIN_WIDTH`].
pub const MIN_HEIGHT: u16 = 24;

/// How often the dashboard reads the run.
pub const TICK: Duration = Duration::from_millis(250);

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Crash an engine now.
    Crash(EngineKind),
    /// Silence a share of the phones for a while: what they record arrives late, together.
    LateBurst,
    /// Multiply the input rate for a few seconds.
    Overload,
    /// Race the two ways to reprocess everything so far, beside the live run.
    Race,
    /// Freeze the view (the run goes on), or thaw it.
    Pause,
    /// End the input now: the run drains, judges and reports.
    EndInput,
}

/// The action of a key; None for a key that does nothing.
pub fn action_of(key: char) -> Option<Action> {
    match key.to_ascii_lowercase() {
        'k' => Some(Action::Crash(EngineKind::Kappa)),
        'l' => Some(Action::Crash(EngineKind::Lambda)),
        'b' => Some(Action::LateBurst),
        'o' => Some(Action::Overload),
        'r' => Some(Action::Race),
        'p' => Some(Action::Pause),
        'e' => Some(Action::EndInput),
        _ => None,
    }
}

/// The keys' legend, as the dashboard's last line shows it.
pub const LEGEND: &str = "k/l crash Kappa/Lambda  b late  o overload  r reprocess  p freeze  e end  q quit";

/// An overload key's factor and length: five times the rate for three seconds.
pub const OVERLOAD: (f64, Duration) = (5.0, Duration::from_secs(3));

/// A late burst's length in the run's time: long enough in event time (the scenario runs
/// `compression` event seconds a second) that what the silenced phones record arrives after
/// Kappa's watermark has closed one of its windows at least (a slide of Q3's window, the
/// watermark's delay and the allowed lateness), between one and ten seconds of the demo.
pub fn late_burst_duration(queries: &QueryConfig, compression: f64) -> Duration {
    let event_s = (queries.demand_slide_us + queries.watermark_delay_us + queries.allowed_lateness_us) as f64 / 1e6;
    Duration::from_secs_f64((event_s / compression.max(1e-9)).clamp(1.0, 10.0))
}

/// `--script 2s:k,5s:l,9s:e`: keys pressed at times since the run's start.
pub fn parse_script(text: &str) -> Result<Vec<(Duration, char)>, String> {
    let mut keys = Vec::new();
    for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        let Some((at, key)) = part.split_once(':') else {
            return Err(format!("--script: {part:?} is not TIME:KEY, e.g. 2s:k"));
        };
        let at = lk_simulator::time::parse_duration(at.trim())
            .map_err(|_| format!("--script: {at:?} in {part:?} is not a duration such as 2s or 500ms"))?;
        let mut chars = key.trim().chars();
        let (Some(key), None) = (chars.next(), chars.next()) else {
            return Err(format!("--script: {key:?} in {part:?} is not one key"));
        };
        if action_of(key).is_none() {
            return Err(format!("--script: {key:?} in {part:?} is not a key the demo acts on ({LEGEND})"));
        }
        keys.push((at, key));
    }
    keys.sort_by_key(|(at, _)| *at);
    Ok(keys)
}

/// One engine's figures over the last tick.
#[derive(Clone, Debug, Default, PartialEq)]
struct EngineView {
    name: String,
    rate_eps: f64,
    lag: Option<u64>,
    p50_s: Option<f64>,
    p99_s: Option<f64>,
    /// p99 per tick, ms, oldest first.
    p99_history: VecDeque<u64>,
    restarts: u64,
    checkpoints: u64,
    batch_runs: u64,
    dead_letters: u64,
    /// Served over the truth in settled windows (None before any window settled).
    completeness: Option<f64>,
    /// Settled windows served above the truth: requests counted twice.
    over_truth: usize,
    /// Cores' worth its threads used over the last second or so (None where unknown).
    cpu_cores: Option<f64>,
}

/// The dashboard's state: the last snapshot, each engine's recent figures, and what happened.
pub struct Dashboard {
    scenario: String,
    /// Event time after a Q3 window's start from which it no longer changes in the speed layer
    /// (its size, the watermark delay and the allowed lateness), µs.
    settled_us: i64,
    elapsed_s: f64,
    last: Option<Snapshot>,
    engines: Vec<EngineView>,
    narration: VecDeque<String>,
    /// Q3 served per window, by engine, from the last snapshot.
    demand: BTreeMap<String, BTreeMap<i64, u64>>,
    /// Q3's requests delivered so far per window, from the last snapshot.
    truth: BTreeMap<i64, u64>,
    /// Whether the view is frozen (the presenter's `p`).
    frozen: bool,
    /// Batch runs not told yet: their views are not sampled yet.
    pending_batches: Vec<PendingBatch>,
    /// Race outcomes told so far.
    races_told: usize,
    phase: &'static str,
    generated: u64,
    schedule_lag_ns: u64,
}

/// A batch run seen in the counters, told once its views are sampled.
struct PendingBatch {
    name: String,
    /// The run before it.
    before: Snapshot,
    /// The sample that holds its views: the first started after it was seen.
    after_sample: u64,
}

/// Ticks of p99 kept for the sparklines.
const HISTORY: usize = 120;

/// Lines of narration kept.
const NARRATION: usize = 64;

fn title(name: &str) -> String {
    match name {
        "kappa" => "Kappa".to_owned(),
        "lambda" => "Lambda".to_owned(),
        other => other.to_owned(),
    }
}

impl Dashboard {
    /// A dashboard for a run of `scenario`, whose windows and watermark are `queries`.
    pub fn new(scenario: &str, queries: QueryConfig) -> Self {
        Self {
            scenario: scenario.to_owned(),
            settled_us: queries.demand_window_us + queries.watermark_delay_us + queries.allowed_lateness_us,
            elapsed_s: 0.0,
            last: None,
            engines: Vec::new(),
            narration: VecDeque::new(),
            demand: BTreeMap::new(),
            truth: BTreeMap::new(),
            frozen: false,
            pending_batches: Vec::new(),
            races_told: 0,
            phase: "starting",
            generated: 0,
            schedule_lag_ns: 0,
        }
    }

    /// Notes a line of narration at the current time; returns it as printed.
    pub fn say(&mut self, text: &str) -> String {
        let line = format!("{:>6.1} s  {text}", self.elapsed_s);
        self.narration.push_back(line.clone());
        while self.narration.len() > NARRATION {
            self.narration.pop_front();
        }
        line
    }

    /// Takes the run as it is `elapsed_s` after its start, `dt_s` after the last; returns the
    /// narration it gives rise to.
    pub fn update(&mut self, snapshot: Snapshot, elapsed_s: f64, dt_s: f64) -> Vec<String> {
        self.elapsed_s = elapsed_s;
        let mut said = Vec::new();
        let previous = self.last.take();
        // Every phase entered since the last tick, in order (a short one can fall between two).
        let from = previous.as_ref().map_or(0, |previous| phase_index(previous.phase) + 1);
        for phase in PHASES.iter().take(phase_index(snapshot.phase) + 1).skip(from) {
            if let Some(text) = phase_sentence(phase) {
                said.push(self.say(text));
            }
        }
        for engine in &snapshot.engines {
            let before = previous.as_ref().and_then(|previous| previous.engines.iter().find(|e| e.name == engine.name));
            let view = match self.engines.iter_mut().position(|view| view.name == engine.name) {
                Some(index) => &mut self.engines[index],
                None => {
                    self.engines.push(EngineView { name: engine.name.clone(), ..EngineView::default() });
                    self.engines.last_mut().expect("just pushed")
                }
            };
            let delta = |now: &[u64; LATENCY_BUCKETS_S.len()], before: Option<&EngineSnapshot>| {
                let mut delta = *now;
                if let Some(before) = before {
                    for (bucket, earlier) in delta.iter_mut().zip(before.latency) {
                        *bucket = bucket.saturating_sub(earlier);
                    }
                }
                delta
            };
            let recent = delta(&engine.latency, before);
            view.rate_eps =
                before.map_or(0.0, |before| engine.processed.saturating_sub(before.processed) as f64 / dt_s.max(1e-3));
            view.lag = engine.lag;
            view.p50_s = bucket_quantile(&recent, 0.5).or(view.p50_s);
            view.p99_s = bucket_quantile(&recent, 0.99).or(view.p99_s);
            view.p99_history.push_back(view.p99_s.map_or(0, |p99| (p99.min(10.0) * 1000.0) as u64));
            while view.p99_history.len() > HISTORY {
                view.p99_history.pop_front();
            }
            view.checkpoints = engine.checkpoints;
            view.dead_letters = engine.dead_letters;
            let restarted = before.is_some_and(|before| engine.restarts > before.restarts);
            let batch_ran = before.is_some_and(|before| engine.batch_runs > before.batch_runs);
            view.restarts = engine.restarts;
            view.batch_runs = engine.batch_runs;
            if restarted {
                said.push(self.say(&restart_sentence(&engine.name)));
            }
            // A batch run is told once a sample of the views taken after it is in (the views are
            // sampled once a second, the counters at every tick), against the views before it.
            if batch_ran
                && let Some(previous) = &previous
                && !self.pending_batches.iter().any(|pending| pending.name == engine.name)
            {
                self.pending_batches.push(PendingBatch {
                    name: engine.name.clone(),
                    before: previous.clone(),
                    after_sample: snapshot.samples_started + 1,
                });
            }
        }
        let ready: Vec<PendingBatch> = {
            let (ready, waiting) = std::mem::take(&mut self.pending_batches)
                .into_iter()
                .partition(|pending: &PendingBatch| snapshot.samples_done >= pending.after_sample);
            self.pending_batches = waiting;
            ready
        };
        for pending in ready {
            let Some(engine) = snapshot.engines.iter().find(|engine| engine.name == pending.name) else { continue };
            {
                let (put_back, others_short) = corrected(&pending.before, &snapshot, &engine.name, self.settled_us);
                let text = if put_back > 0 {
                    let others = if others_short > 0 {
                        format!(
                            "; Kappa serves {others_short} fewer in those windows: its watermark dropped them for good"
                        )
                    } else {
                        String::new()
                    };
                    let newest = snapshot.truth.keys().next_back().copied().unwrap_or(i64::MIN);
                    let completeness = against_truth(&engine.demand, &snapshot.truth, newest - self.settled_us).0;
                    let now = completeness
                        .map(|completeness| format!(" (complete so far: {})", share(Some(completeness))))
                        .unwrap_or_default();
                    format!(
                        "{}'s batch run {} recomputed every view from the master dataset and put back {put_back} late \
                         requests in settled windows that its speed layer had dropped{now}{others}",
                        title(&engine.name),
                        engine.batch_runs
                    )
                } else {
                    format!(
                        "{}'s batch run {} recomputed every view from the master dataset; its closed windows agreed \
                         with the speed layer's",
                        title(&engine.name),
                        engine.batch_runs
                    )
                };
                said.push(self.say(&text));
            }
        }
        for index in self.races_told..snapshot.races.len() {
            let (race, name, outcome) = &snapshot.races[index];
            let (how, what) = if name == "lambda" {
                ("batch recompute", "rows of its master dataset (what its speed layer had sealed)")
            } else {
                ("replay", "records of the log")
            };
            said.push(self.say(&match outcome {
                Ok(outcome) => format!(
                    "race {race}: {}'s {how} went through {} {what} in {:.2} s ({}/s)",
                    title(name),
                    compact(outcome.records as f64),
                    outcome.seconds,
                    compact(outcome.records as f64 / outcome.seconds.max(1e-9))
                ),
                Err(problem) => format!("race {race}: {}'s {how} failed: {problem}", title(name)),
            }));
            let finished: Vec<(&String, f64)> = snapshot.races[..=index]
                .iter()
                .filter(|(other, _, _)| other == race)
                .filter_map(|(_, name, outcome)| outcome.as_ref().ok().map(|outcome| (name, outcome.seconds)))
                .collect();
            if finished.len() == 2 && snapshot.races[..index].iter().any(|(other, _, _)| other == race) {
                let (first, second) = if finished[0].1 <= finished[1].1 {
                    (finished[0], finished[1])
                } else {
                    (finished[1], finished[0])
                };
                said.push(self.say(&format!(
                    "race {race}: {} reprocessed everything {:.2} s before {} ({:.1}x as fast)",
                    title(first.0),
                    second.1 - first.1,
                    title(second.0),
                    second.1 / first.1.max(1e-9)
                )));
            }
        }
        self.races_told = snapshot.races.len();
        self.demand = snapshot.engines.iter().map(|engine| (engine.name.clone(), engine.demand.clone())).collect();
        self.truth.clone_from(&snapshot.truth);
        let newest = self.truth.keys().next_back().copied();
        for index in 0..self.engines.len() {
            let name = self.engines[index].name.clone();
            let (completeness, over_truth) = match (newest, self.demand.get(&name)) {
                (Some(newest), Some(served)) => against_truth(served, &self.truth, newest - self.settled_us),
                _ => (None, 0),
            };
            let view = &mut self.engines[index];
            let (was, was_over) = (view.completeness, view.over_truth);
            (view.completeness, view.over_truth) = (completeness, over_truth);
            // A fall of half a point or more: a scenario's own lateness moves it by less.
            if let (Some(was), Some(now)) = (was, completeness)
                && now < was - 0.005
            {
                let next = if name == "lambda" {
                    "; its next batch run will count them"
                } else if name == "kappa" {
                    ", and it will not count them"
                } else {
                    ""
                };
                said.push(self.say(&format!(
                    "{}'s completeness so far fell to {:.2}%: requests arrived after its watermark had closed their \
                     windows{next}",
                    title(&name),
                    now * 100.0
                )));
            }
            if over_truth > was_over {
                said.push(self.say(&format!(
                    "{} serves more requests than were delivered in {over_truth} settled windows: requests counted \
                     twice",
                    title(&name)
                )));
            }
        }
        self.phase = snapshot.phase;
        self.generated = snapshot.generated;
        self.schedule_lag_ns = snapshot.schedule_lag_ns;
        self.last = Some(snapshot);
        said
    }

    /// Each engine's CPU, cores, over the last second or so: the engine's name and the
    /// cores' worth its threads used.
    pub fn set_cpu(&mut self, cores: &[(String, f64)]) {
        for view in &mut self.engines {
            view.cpu_cores = cores.iter().find(|(name, _)| *name == view.name).map(|(_, cores)| *cores);
        }
    }

    /// Freezes the view, or thaws it; returns whether it is frozen now.
    pub fn toggle_frozen(&mut self) -> bool {
        self.frozen = !self.frozen;
        self.frozen
    }

    /// Whether the view is frozen.
    pub fn frozen(&self) -> bool {
        self.frozen
    }

    /// A status line for `--no-tui`.
    pub fn status_line(&self) -> String {
        let engines: Vec<String> = self
            .engines
            .iter()
            .map(|view| {
                format!(
                    "{} {}/s lag {} p99 {} complete {}",
                    view.name,
                    compact(view.rate_eps),
                    view.lag.map_or_else(|| "-".to_owned(), |lag| compact(lag as f64)),
                    latency(view.p99_s),
                    share(view.completeness)
                )
            })
            .collect();
        format!("{:>6.1} s  [{}] {}", self.elapsed_s, self.phase, engines.join(" | "))
    }

    /// Draws the dashboard into `frame`.
    pub fn draw(&self, frame: &mut Frame) {
        let area = frame.area();
        if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
            let text = format!(
                "lk demo needs a terminal of at least {MIN_WIDTH}x{MIN_HEIGHT}; this one is {}x{}. Enlarge it, or run \
                 with --no-tui.",
                area.width, area.height
            );
            frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
            return;
        }
        let rows = Layout::default()
            .direction(Direction::Vertical)
            .constraints([
                Constraint::Length(1),
                Constraint::Length(10),
                Constraint::Length(6),
                Constraint::Min(4),
                Constraint::Length(1),
            ])
            .split(area);
        let header = format!(
            "{} lk demo: {}  {}  {:.1} s  {} events  schedule lag {:.1} ms",
            if self.frozen { " FROZEN (p thaws; the run goes on) |" } else { "" },
            self.scenario,
            self.phase,
            self.elapsed_s,
            self.generated,
            self.schedule_lag_ns as f64 / 1e6
        );
        frame.render_widget(Paragraph::new(header).style(Style::new().add_modifier(Modifier::BOLD)), rows[0]);
        let count = self.engines.len().max(1) as u32;
        let columns = Layout::default()
            .direction(Direction::Horizontal)
            .constraints((0..count).map(|_| Constraint::Ratio(1, count)))
            .split(rows[1]);
        for (view, column) in self.engines.iter().zip(columns.iter()) {
            self.draw_engine(frame, view, *column);
        }
        self.draw_served(frame, rows[2]);
        let lines: Vec<Line> = self
            .narration
            .iter()
            .rev()
            .take(rows[3].height.saturating_sub(2) as usize)
            .rev()
            .map(|line| Line::from(line.as_str()))
            .collect();
        frame.render_widget(
            Paragraph::new(lines)
                .wrap(Wrap { trim: false })
                .block(Block::default().borders(Borders::ALL).title(" what just happened ")),
            rows[3],
        );
        frame.render_widget(Paragraph::new(LEGEND).style(Style::new().add_modifier(Modifier::REVERSED)), rows[4]);
    }

    fn draw_engine(&self, frame: &mut Frame, view: &EngineView, area: Rect) {
        let block = Block::default().borders(Borders::ALL).title(format!(" {} ", title(&view.name)));
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let parts = Layout::default()
            .direction(Direction::Vertical)
            .constraints([Constraint::Length(6), Constraint::Min(1)])
            .split(inner);
        let mut lines = vec![
            Line::from(format!(
                "processed {:>9}/s  cpu {}",
                compact(view.rate_eps),
                view.cpu_cores.map_or_else(|| "-".to_owned(), |cores| format!("{cores:.2}"))
            )),
            Line::from(format!(
                "lag       {:>9} records",
                view.lag.map_or_else(|| "-".to_owned(), |lag| compact(lag as f64))
            )),
            Line::from(format!("visible   p50 {}  p99 {}", latency(view.p50_s), latency(view.p99_s))),
        ];
        let work = if view.name == "lambda" {
            format!("batch runs {}  seals {}", view.batch_runs, view.checkpoints)
        } else {
            format!("checkpoints {}", view.checkpoints)
        };
        lines.push(Line::from(format!("{work}  restarts {}", view.restarts)));
        lines.push(Line::from(format!(
            "complete  {}  over truth {}",
            share(view.completeness),
            if view.completeness.is_some() { view.over_truth.to_string() } else { "-".to_owned() }
        )));
        lines.push(Line::from(Span::styled("p99 over time:", Style::new().add_modifier(Modifier::DIM))));
        frame.render_widget(Paragraph::new(lines), parts[0]);
        let history: Vec<u64> = view.p99_history.iter().copied().collect();
        let width = parts[1].width as usize;
        let shown = &history[history.len().saturating_sub(width)..];
        frame.render_widget(Sparkline::default().data(shown), parts[1]);
    }

    /// What a user of each engine is served: Q3's total requests in the latest windows that
    /// every engine serves (Kappa serves a window once its watermark closes it; Lambda's speed
    /// layer from its first event), so that the numbers side by side are comparable.
    fn draw_served(&self, frame: &mut Frame, area: Rect) {
        let mut windows: Vec<i64> = self.demand.values().flat_map(|by_window| by_window.keys().copied()).collect();
        windows.sort_unstable();
        windows.dedup();
        let common = self.demand.values().map(|by_window| by_window.keys().next_back().copied()).min().flatten();
        let upto = common.or(windows.last().copied()).unwrap_or(i64::MAX);
        windows.retain(|window| *window <= upto);
        let rows = area.height.saturating_sub(3) as usize;
        let shown = &windows[windows.len().saturating_sub(rows)..];
        let mut lines = vec![Line::from(format!(
            "{:<12}{}{:>14}",
            "window",
            self.engines.iter().map(|view| format!("{:>14}", title(&view.name))).collect::<String>(),
            "delivered"
        ))];
        for &window in shown {
            let cells: String = self
                .engines
                .iter()
                .map(|view| {
                    let served = self.demand.get(&view.name).and_then(|by_window| by_window.get(&window));
                    format!("{:>14}", served.map_or_else(|| "-".to_owned(), u64::to_string))
                })
                .collect();
            let truth = self.truth.get(&window).map_or_else(|| "-".to_owned(), u64::to_string);
            lines.push(Line::from(format!("{:<12}{cells}{truth:>14}", clock_of(window))));
        }
        frame.render_widget(
            Paragraph::new(lines)
                .block(Block::default().borders(Borders::ALL).title(" what users see: ride requests per window (Q3) ")),
            area,
        );
    }
}

/// An engine's completeness against the truth over the windows starting at or before `settled`
/// (served, capped at the truth, over the truth), and the windows it serves above the truth.
fn against_truth(served: &BTreeMap<i64, u64>, truth: &BTreeMap<i64, u64>, settled: i64) -> (Option<f64>, usize) {
    let (mut counted, mut delivered, mut over) = (0, 0, 0);
    for (window, &truth) in truth.range(..=settled) {
        let served = served.get(window).copied().unwrap_or(0);
        counted += served.min(truth);
        delivered += truth;
        over += usize::from(served > truth);
    }
    ((delivered > 0).then(|| counted as f64 / delivered as f64), over)
}

/// A share as a percentage, or "-".
fn share(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| format!("{:.2}%", value * 100.0))
}

/// What a batch run of `name` put back: the requests it serves now, and did not in `previous`,
/// in windows the speed layer had settled (the newest window starts more than `settled_us`
/// after theirs); and how many fewer Kappa serves in the windows it changed.
fn corrected(previous: &Snapshot, now: &Snapshot, name: &str, settled_us: i64) -> (u64, u64) {
    let (Some(before), Some(after)) = (
        previous.engines.iter().find(|engine| engine.name == name),
        now.engines.iter().find(|engine| engine.name == name),
    ) else {
        return (0, 0);
    };
    // Settled by the truth's newest window when there is one (what the panel's completeness is
    // over), else by the engine's own.
    let Some(&newest) = now.truth.keys().next_back().or(after.demand.keys().next_back()) else { return (0, 0) };
    let kappa = now.engines.iter().find(|engine| engine.name == "kappa" && engine.name != name);
    let (mut put_back, mut kappa_short) = (0, 0);
    for (&window, &is) in after.demand.range(..=newest.saturating_sub(settled_us)) {
        let grown = is.saturating_sub(before.demand.get(&window).copied().unwrap_or(0));
        if grown > 0 {
            put_back += grown;
            if let Some(kappa) = kappa {
                kappa_short += is.saturating_sub(kappa.demand.get(&window).copied().unwrap_or(0));
            }
        }
    }
    (put_back, kappa_short)
}

/// The run's phases in order, as [`Snapshot::phase`] names them.
const PHASES: [&str; 6] = ["starting", "generating", "draining", "verifying", "reporting", "done"];

fn phase_index(phase: &str) -> usize {
    PHASES.iter().position(|known| *known == phase).unwrap_or(0)
}

fn phase_sentence(phase: &str) -> Option<&'static str> {
    Some(match phase {
        "generating" => {
            "the stream starts: both engines read the same log, Kappa through one streaming job, Lambda through a speed \
             layer and scheduled batch runs"
        }
        "draining" => {
            "the input has ended: the engines drain what is left, and Lambda's final batch run covers every event"
        }
        "verifying" => {
            "the oracle recomputes every view from the log, and the checker compares each engine's served views with it"
        }
        "reporting" => "writing results.json and the report",
        "done" => "done: the verdict and the report follow",
        _ => return None,
    })
}

fn restart_sentence(name: &str) -> String {
    match name {
        "kappa" => {
            "Kappa is back after its crash: state from its last checkpoint, and the log replayed from the offsets \
                    that checkpoint holds, so nothing is lost or counted twice"
                .to_owned()
        }
        "lambda" => {
            "Lambda is back after its crash: its speed layer replays from the offsets of its last sealed epoch, and \
                     its master dataset and batch view are untouched"
                .to_owned()
        }
        other => format!("{other} is back after its crash"),
    }
}

/// A window start, µs since the epoch, as hh:mm UTC.
fn clock_of(window_us: i64) -> String {
    let minutes = window_us.div_euclid(60_000_000).rem_euclid(24 * 60);
    format!("{:02}:{:02} UTC", minutes / 60, minutes % 60)
}

fn compact(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

/// A latency from a bucket bound: "≤ 25 ms", or "-" without samples.
fn latency(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".to_owned(),
        Some(seconds) if seconds.is_infinite() => "> 10 s".to_owned(),
        Some(seconds) if seconds < 1.0 => format!("≤{:.0} ms", seconds * 1000.0),
        Some(seconds) => format!("≤{seconds:.1} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn engine(
        name: &str,
        processed: u64,
        restarts: u64,
        batch_runs: u64,
        fast: u64,
        demand: &[(i64, u64)],
    ) -> EngineSnapshot {
        let mut latency = [0; LATENCY_BUCKETS_S.len()];
        latency[4] = fast; // ≤ 25 ms
        EngineSnapshot {
            name: name.to_owned(),
            processed,
            lag: Some(1_200),
            restarts,
            checkpoints: 3,
            batch_runs,
            dead_letters: 1,
            latency,
            demand: demand.iter().copied().collect(),
        }
    }

    fn queries() -> QueryConfig {
        QueryConfig {
            rides_window_us: 300_000_000,
            demand_window_us: 60_000_000,
            demand_slide_us: 60_000_000,
            session_gap_us: 600_000_000,
            trends_window_us: 3_600_000_000,
            watermark_delay_us: 5_000_000,
            allowed_lateness_us: 0,
        }
    }

    fn snapshot(phase: &'static str, engines: Vec<EngineSnapshot>) -> Snapshot {
        Snapshot {
            phase,
            generated: 50_000,
            appended: 50_000,
            schedule_lag_ns: 100_000,
            engines,
            truth: BTreeMap::new(),
            races: Vec::new(),
            samples_started: 0,
            samples_done: 0,
        }
    }

    fn text(terminal: &Terminal<TestBackend>) -> String {
        let buffer = terminal.backend().buffer();
        (0..buffer.area.height)
            .map(|y| (0..buffer.area.width).map(|x| buffer[(x, y)].symbol()).collect::<String>() + "\n")
            .collect()
    }

    #[test]
    fn the_dashboard_shows_both_engines_what_users_see_and_the_keys_in_80x24() {
        let mut dashboard = Dashboard::new("quickstart", queries());
        let windows = [(60_000_000 * 480, 900), (60_000_000 * 481, 950), (60_000_000 * 482, 400)];
        dashboard.update(
            snapshot("generating", vec![engine("kappa", 0, 0, 0, 0, &windows), engine("lambda", 0, 0, 0, 0, &windows)]),
            0.25,
            0.25,
        );
        dashboard.update(
            snapshot(
                "generating",
                vec![engine("kappa", 25_000, 0, 0, 100, &windows), engine("lambda", 24_000, 0, 0, 100, &windows)],
            ),
            0.5,
            0.25,
        );
        dashboard.set_cpu(&[("kappa".to_owned(), 0.42)]);
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        terminal.draw(|frame| dashboard.draw(frame)).unwrap();
        let screen = text(&terminal);
        for expected in [
            "lk demo: quickstart",
            "cpu 0.42",
            "cpu -",
            "Kappa",
            "Lambda",
            "100.0k/s",
            "1.2k records",
            "p99 ≤25 ms",
            "what users see",
            "08:01 UTC",
            "950",
            "what just happened",
            "the stream starts",
            "k/l crash Kappa/Lambda",
            "b late",
            "o overload",
            "r reprocess",
            "delivered",
        ] {
            assert!(screen.contains(expected), "{expected:?} is not on the screen:\n{screen}");
        }
    }

    #[test]
    fn a_terminal_too_small_is_told_so_instead_of_drawn_into() {
        let dashboard = Dashboard::new("quickstart", queries());
        let mut terminal = Terminal::new(TestBackend::new(60, 20)).unwrap();
        terminal.draw(|frame| dashboard.draw(frame)).unwrap();
        let screen = text(&terminal);
        assert!(screen.contains("at least 80x24"), "{screen}");
        assert!(!screen.contains("what users see"), "{screen}");
    }

    #[test]
    fn a_restart_and_a_correcting_batch_run_are_narrated() {
        // Windows of 1 min settle 1 min 5 s after their start (size, 5 s of watermark delay).
        let mut dashboard = Dashboard::new("quickstart", queries());
        let minute = 60_000_000;
        let before = [(0, 100), (minute, 100), (2 * minute, 50), (3 * minute, 10)];
        let after = [(0, 112), (minute, 100), (2 * minute, 60), (3 * minute, 30)];
        dashboard.update(
            snapshot("generating", vec![engine("kappa", 10, 0, 0, 0, &before), engine("lambda", 10, 0, 0, 0, &before)]),
            1.0,
            1.0,
        );
        // The batch run is in the counters, its views not yet in a sample: told once they are.
        let mut ran =
            snapshot("generating", vec![engine("kappa", 20, 1, 0, 0, &before), engine("lambda", 20, 0, 1, 0, &before)]);
        (ran.samples_started, ran.samples_done) = (4, 4);
        let said = dashboard.update(ran.clone(), 2.0, 1.0);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("Kappa is back after its crash"), "{said:?}");
        let mut sampled =
            snapshot("generating", vec![engine("kappa", 20, 1, 0, 0, &before), engine("lambda", 20, 0, 1, 0, &after)]);
        (sampled.samples_started, sampled.samples_done) = (5, 4);
        assert!(dashboard.update(sampled.clone(), 2.25, 0.25).is_empty(), "a sample started, not published");
        sampled.samples_done = 5;
        let said = dashboard.update(sampled, 2.5, 0.25);
        assert_eq!(said.len(), 1, "{said:?}");
        // Settled windows (starting 0 and 1 min): 12 requests put back, which Kappa lacks; the
        // unsettled windows' growth is the speed layer's, not a correction.
        assert!(said[0].contains("batch run 1"), "{said:?}");
        assert!(said[0].contains("put back 12 late requests"), "{said:?}");
        assert!(said[0].contains("Kappa serves 12 fewer"), "{said:?}");
        // A phase that fell between two ticks is still told.
        let said = dashboard.update(snapshot("verifying", vec![]), 3.0, 1.0);
        assert!(said[0].contains("the input has ended") && said[1].contains("the oracle"), "{said:?}");
        let status = dashboard.status_line();
        assert!(status.contains("kappa") && status.contains("lambda"), "{status}");
    }

    #[test]
    fn completeness_against_the_truth_its_falls_and_windows_counted_twice_are_shown() {
        let mut dashboard = Dashboard::new("quickstart", queries());
        let minute = 60_000_000;
        // Windows of 1 min settle 1 min 5 s after their start: those at 0 and 1 min, with the
        // truth's newest at 3 min.
        let truth: BTreeMap<i64, u64> = [(0, 100), (minute, 100), (2 * minute, 50), (3 * minute, 10)].into();
        let served = [(0, 100), (minute, 100), (2 * minute, 50), (3 * minute, 10)];
        let mut first = snapshot("generating", vec![engine("kappa", 10, 0, 0, 0, &served)]);
        first.truth = truth.clone();
        dashboard.update(first, 1.0, 1.0);
        assert!(dashboard.status_line().contains("complete 100.00%"), "{}", dashboard.status_line());
        // A late burst's requests arrive in the settled windows; Kappa does not count them.
        let mut later = snapshot("generating", vec![engine("kappa", 20, 0, 0, 0, &served)]);
        later.truth = [(0, 120), (minute, 130), (2 * minute, 50), (3 * minute, 10)].into();
        let said = dashboard.update(later, 2.0, 1.0);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("Kappa's completeness so far fell to 80.00%"), "{said:?}");
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        terminal.draw(|frame| dashboard.draw(frame)).unwrap();
        let screen = text(&terminal);
        assert!(screen.contains("complete  80.00%  over truth 0"), "{screen}");
        assert!(screen.contains("130"), "the truth column: {screen}");
        // Served above the truth: counted twice, and said.
        let mut doubled = snapshot("generating", vec![engine("kappa", 30, 0, 0, 0, &[(0, 125), (minute, 130)])]);
        doubled.truth = [(0, 120), (minute, 130), (2 * minute, 50), (3 * minute, 10)].into();
        let said = dashboard.update(doubled, 3.0, 1.0);
        assert!(said.iter().any(|line| line.contains("in 1 settled windows: requests counted twice")), "{said:?}");
        // A frozen view says so in its header.
        assert!(dashboard.toggle_frozen());
        terminal.draw(|frame| dashboard.draw(frame)).unwrap();
        assert!(text(&terminal).contains("FROZEN"));
        assert!(!dashboard.toggle_frozen());
    }

    #[test]
    fn a_race_is_told_engine_by_engine_then_who_won() {
        let mut dashboard = Dashboard::new("quickstart", queries());
        let mut first =
            snapshot("generating", vec![engine("kappa", 10, 0, 0, 0, &[]), engine("lambda", 10, 0, 0, 0, &[])]);
        first.races = vec![(1, "lambda".to_owned(), Ok(RaceOutcome { records: 400_000, seconds: 0.04 }))];
        let said = dashboard.update(first.clone(), 1.0, 1.0);
        assert_eq!(said.len(), 2, "the stream's start, and the race: {said:?}");
        assert!(said[1].contains("race 1: Lambda's batch recompute went through 400.0k rows"), "{said:?}");
        first.races.push((1, "kappa".to_owned(), Ok(RaceOutcome { records: 500_000, seconds: 0.1 })));
        first.races.push((2, "kappa".to_owned(), Err("the log is away".to_owned())));
        let said = dashboard.update(first.clone(), 2.0, 1.0);
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(
            said[0].contains("race 1: Kappa's replay went through 500.0k records of the log in 0.10 s"),
            "{said:?}"
        );
        assert!(
            said[1].contains("race 1: Lambda reprocessed everything 0.06 s before Kappa (2.5x as fast)"),
            "{said:?}"
        );
        assert!(said[2].contains("race 2: Kappa's replay failed: the log is away"), "{said:?}");
        assert!(dashboard.update(first, 3.0, 1.0).is_empty(), "told once");
    }

    #[test]
    fn a_late_burst_outlasts_a_slide_and_the_watermark_within_the_demos_bounds() {
        // A slide of 1 min and 5 s of delay: 65 s of event time, 2.2 s at 30x.
        let duration = late_burst_duration(&queries(), 30.0);
        assert!((duration.as_secs_f64() - 65.0 / 30.0).abs() < 1e-9, "{duration:?}");
        assert_eq!(late_burst_duration(&queries(), 1.0), Duration::from_secs(10), "at most ten seconds");
        assert_eq!(late_burst_duration(&queries(), 1000.0), Duration::from_secs(1), "at least one");
    }

    #[test]
    fn keys_and_scripts() {
        assert_eq!(action_of('b'), Some(Action::LateBurst));
        assert_eq!(action_of('p'), Some(Action::Pause));
        assert_eq!(action_of('o'), Some(Action::Overload));
        assert_eq!(action_of('r'), Some(Action::Race));
        assert_eq!(action_of('k'), Some(Action::Crash(EngineKind::Kappa)));
        assert_eq!(action_of('L'), Some(Action::Crash(EngineKind::Lambda)));
        assert_eq!(action_of('e'), Some(Action::EndInput));
        assert_eq!(action_of('x'), None, "an unknown key does nothing");
        assert_eq!(
            parse_script("5s:l, 2s:k,9s:e").unwrap(),
            vec![(Duration::from_secs(2), 'k'), (Duration::from_secs(5), 'l'), (Duration::from_secs(9), 'e')]
        );
        assert!(parse_script("2s").unwrap_err().contains("TIME:KEY"));
        assert!(parse_script("soon:k").unwrap_err().contains("not a duration"));
        assert!(parse_script("2s:x").unwrap_err().contains("not a key"));
        assert!(parse_script("2s:kl").unwrap_err().contains("not one key"));
    }
}
