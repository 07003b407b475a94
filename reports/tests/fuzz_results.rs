//! A results file is input lk did not write in this process (`lk report`, `lk diff`): whatever
//! it holds, reading it is an error or a report, never a panic. Property tests mutate the
//! fixtures the way a hand edit, a truncated copy or another tool would (values replaced with
//! extremes, fields removed, arrays emptied, bytes cut), then read, render and diff what still
//! parses.

use lk_harness::results::Results;
use proptest::prelude::*;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every path to a leaf or container of `value`, in document order.
fn paths(value: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(at.clone());
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                at.push(key.clone());
                paths(child, at, out);
                at.pop();
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                at.push(index.to_string());
                paths(child, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn at_path<'a>(value: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |value, step| match value {
        Value::Object(map) => map.get_mut(step),
        Value::Array(items) => step.parse::<usize>().ok().and_then(|index| items.get_mut(index)),
        _ => None,
    })
}

/// What a mutation puts in place of a value.
fn replacement() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::from(0))),
        Just(Some(Value::from(-1))),
        Just(Some(Value::from(u64::MAX))),
        Just(Some(Value::from(i64::MIN))),
        Just(Some(Value::from(1e308))),
        Just(Some(Value::from(-1e308))),
        Just(Some(Value::from(1e-300))),
        Just(Some(Value::from(""))),
        Just(Some(Value::from("x".repeat(300)))),
        Just(Some(Value::Array(Vec::new()))),
        Just(Some(Value::Null)),
        Just(Some(Value::from(true))),
    ]
}

/// Reads `text` as `lk report` does, then renders and diffs what parses: none may panic.
fn read_render_and_diff(text: &str, baseline: &Results) {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("results.json");
    std::fs::write(&path, text).unwrap();
    if let Ok(run) = lk_reports::load(&path) {
        let _ = lk_reports::html::render(std::slice::from_ref(&run));
        let _ = lk_reports::markdown::render(std::slice::from_ref(&run));
        let diff = lk_reports::diff::diff(baseline, &run.results, Some(5.0));
        let _ = lk_reports::diff::render(&diff);
        let diff = lk_reports::diff::diff(&run.results, baseline, None);
        let _ = lk_reports::diff::render_compact(&diff);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Values replaced with extremes or removed, up to three at a time.
    #[test]
    fn mutated_results_are_read_or_refused_never_a_panic(
        fixture_index in 0usize..2,
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), replacement()), 1..4),
    ) {
        let name = ["quickstart.json", "crash-recovery-at-least-once.json"][fixture_index];
        let original = fixture(name);
        let baseline: Results = serde_json::from_value(original.clone()).unwrap();
        let mut value = original;
        for (index, replacement) in mutations {
            let mut all = Vec::new();
            paths(&value, &mut Vec::new(), &mut all);
            let path = index.get(&all).clone();
            let Some((last, parent)) = path.split_last() else { continue };
            match replacement {
                Some(new) => {
                    if let Some(slot) = at_path(&mut value, &path) {
                        *slot = new;
                    }
                }
                None => match at_path(&mut value, parent) {
                    Some(Value::Object(map)) => {
                        map.remove(last);
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(index) = last.parse::<usize>() && index < items.len() {
                            items.remove(index);
                        }
                    }
                    _ => {}
                },
            }
        }
        read_render_and_diff(&serde_json::to_string(&value).unwrap(), &baseline);
    }

    /// A copy cut short anywhere, or with a byte changed.
    #[test]
    fn cut_or_corrupted_results_are_refused_never_a_panic(at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
        let text = serde_json::to_string_pretty(&fixture("quickstart.json")).unwrap();
        let baseline: Results = serde_json::from_str(&text).unwrap();
        let mut bytes = text.into_bytes();
        let at = at.index(bytes.len());
        if cut {
            bytes.truncate(at);
        } else {
            bytes[at] = byte;
        }
        read_render_and_diff(&String::from_utf8_lossy(&bytes), &baseline);
    }
}
