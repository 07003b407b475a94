//! The HTML report in a real browser: headless Chromium loads a report rendered from the fixture,
//! without console errors, and its DOM holds every chart. Needs Debian's `chromium`
//! (`scripts/install-optional` installs it); gated by `LK_BROWSER_TESTS=1`, which `.ci/run` sets.

use std::path::Path;
use std::process::Command;

#[test]
fn the_html_report_loads_in_headless_chromium_with_its_charts() {
    if std::env::var("LK_BROWSER_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: set LK_BROWSER_TESTS=1 to run the browser test (.ci/run does)");
        return;
    }
    let browser = std::env::var("LK_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let run = lk_reports::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quickstart.json")).unwrap();
    let directory = tempfile::tempdir().unwrap();
    let (html, _) = lk_reports::write_reports(directory.path(), &[run]).unwrap();
    let output = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--log-level=0",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", directory.path().join("profile").display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap_or_else(|error| panic!("cannot start {browser} ({error}); install it with scripts/install-optional"));
    let (dom, log) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "chromium failed: {log}");
    let console_errors: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("CONSOLE") && (line.contains("ERROR") || line.contains("Uncaught")))
        .collect();
    assert!(console_errors.is_empty(), "the page logged errors: {console_errors:#?}");
    assert!(dom.contains("<h1>lk: Lambda vs Kappa on quickstart (seed 42)</h1>"), "not the report: {dom:.500}");
    assert_eq!(dom.matches("<svg").count(), 6, "a chart is missing from the loaded page");
    assert!(dom.matches("<polyline").count() >= 8, "the line charts have no lines");
    assert!(dom.contains("Comparison matrix"));
}
