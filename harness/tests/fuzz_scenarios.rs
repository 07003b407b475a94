//! A scenario file is input: whatever it holds, loading it is a scenario or an error that names
//! the field, never a panic; and a scenario that loads generates its stream. Property tests
//! mutate the shipped scenarios the way hand edits do (values replaced with extremes or nonsense,
//! keys removed), then load them and generate the start of what loads.

use lk_harness::scenario::Scenario;
use lk_simulator::generator::{Generator, GeneratorOptions};
use proptest::prelude::*;
use toml::Value;

fn shipped() -> Vec<(String, Value)> {
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files: Vec<_> = std::fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            (path.display().to_string(), toml::from_str(&text).unwrap())
        })
        .collect()
}

fn paths(value: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(at.clone());
    match value {
        Value::Table(table) => {
            for (key, child) in table {
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
        Value::Table(table) => table.get_mut(step),
        Value::Array(items) => step.parse::<usize>().ok().and_then(|index| items.get_mut(index)),
        _ => None,
    })
}

/// What replaces `old`: a value of the same type at an extreme, or nonsense of that type (a
/// hand edit keeps a number a number more often than not), or (`None`) nothing.
fn replacement(old: &Value, choice: usize) -> Option<Value> {
    let integers = [0, -1, 1, i64::MAX, i64::MIN, 1 << 40];
    let floats = [0.0, -1.0, 1e308, 1e-300, f64::NAN, f64::INFINITY, 0.999_999_999];
    let strings = [
        "0s",
        "1e400s",
        "-5s",
        "99999999999d",
        "1ns",
        "",
        "2099-12-31T23:59:59+14:00",
        "1969-01-01T00:00:00Z",
        "Mars/Olympus",
        "box",
    ];
    if choice.is_multiple_of(8) {
        return None;
    }
    Some(match old {
        Value::Integer(_) => Value::Integer(integers[choice % integers.len()]),
        Value::Float(_) => Value::Float(floats[choice % floats.len()]),
        Value::String(_) => Value::String(strings[choice % strings.len()].to_owned()),
        Value::Boolean(flag) => Value::Boolean(!flag),
        Value::Array(_) if choice.is_multiple_of(2) => Value::Array(Vec::new()),
        _ => Value::Integer(integers[choice % integers.len()]),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, max_shrink_iters: 8, ..ProptestConfig::default() })]

    #[test]
    fn mutated_scenarios_load_or_are_refused_never_a_panic(
        file in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<usize>()), 1..3),
    ) {
        let files = shipped();
        let (name, mut value) = file.get(&files).clone();
        for (index, choice) in mutations {
            let mut all = Vec::new();
            paths(&value, &mut Vec::new(), &mut all);
            let path = index.get(&all).clone();
            let Some((last, parent)) = path.split_last() else { continue };
            let Some(old) = at_path(&mut value, &path).map(|old| old.clone()) else { continue };
            match replacement(&old, choice) {
                Some(new) => {
                    if let Some(slot) = at_path(&mut value, &path) {
                        *slot = new;
                    }
                }
                None => {
                    if let Some(Value::Table(table)) = at_path(&mut value, parent) {
                        table.remove(last);
                    }
                }
            }
        }
        let text = toml::to_string(&value).unwrap();
        // Loading and generating on a thread with a deadline: a hang is a failure that shows
        // the scenario, not a CI job that never ends.
        let (sender, receiver) = std::sync::mpsc::channel();
        let (loaded, origin) = (text.clone(), name.clone());
        std::thread::spawn(move || {
            let outcome = match Scenario::from_toml(&loaded, &origin) {
                Ok(scenario) => {
                    // What loads generates: the first events of its stream, on one thread.
                    let mut generator = Generator::new(
                        &scenario.workload,
                        GeneratorOptions {
                            threads: 1,
                            background: false,
                            limit_events: Some(20_000),
                            limit_due_ns: None,
                        },
                    );
                    while generator.next_batch().is_some() {}
                    Ok(())
                }
                Err(error) => Err(error.to_string()),
            };
            let _ = sender.send(outcome);
        });
        match receiver.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(Ok(())) => {}
            Ok(Err(message)) => prop_assert!(!message.is_empty()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                prop_assert!(false, "loading and generating 20,000 events took over a minute:\n{text}");
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                prop_assert!(false, "loading or generating panicked (its message is above):\n{text}");
            }
        }
    }
}
