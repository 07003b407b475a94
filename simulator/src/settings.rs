//! Reading a scenario file's sections: the error a bad file gets, and the field reader every
//! section's owner uses (the simulator for the workload, the engines and the harness for theirs),
//! so that a bad value reads the same whichever section it is in.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::time::parse_duration;

/// A scenario file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {problem}")]
pub struct ScenarioError {
    /// The file (or other origin) the scenario came from.
    pub origin: String,
    /// What is wrong.
    pub problem: ScenarioProblem,
}

/// What is wrong with a scenario.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioProblem {
    /// The file could not be read.
    #[error("cannot read the scenario file: {0}")]
    Io(#[source] std::io::Error),
    /// Not valid TOML, an unknown field, or a value of the wrong type.
    #[error("{0}")]
    Syntax(String),
    /// A field's value is not acceptable.
    #[error("field `{field}`: {message}")]
    Invalid {
        /// Dotted path of the field, e.g. `lateness.mean`.
        field: String,
        /// What is wrong and what would be right.
        message: String,
    },
}

impl ScenarioError {
    /// A problem with the scenario from `origin`.
    pub fn new(origin: &str, problem: ScenarioProblem) -> Self {
        ScenarioError { origin: origin.to_owned(), problem }
    }
}

/// The text of a scenario file, or why it cannot be read.
pub fn read_file(path: &Path) -> Result<String, ScenarioError> {
    std::fs::read_to_string(path)
        .map_err(|error| ScenarioError::new(&path.display().to_string(), ScenarioProblem::Io(error)))
}

/// The sections `T` declares, deserialized from scenario TOML (the file's other sections are
/// ignored here; their owners read them).
pub fn parse_sections<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ScenarioError> {
    toml::from_str(text)
        .map_err(|error| ScenarioError::new(origin, ScenarioProblem::Syntax(error.to_string().trim_end().to_owned())))
}

/// The name a scenario gets when its file gives none: the file's stem.
pub fn fallback_name(origin: &str) -> String {
    Path::new(origin).file_stem().map_or_else(|| "scenario".to_owned(), |stem| stem.to_string_lossy().into_owned())
}

/// A field's value that is not acceptable.
pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ScenarioProblem {
    ScenarioProblem::Invalid { field: field.into(), message: message.into() }
}

/// Reads a section's fields, filling defaults and keeping the first problem found, so that one
/// pass reads a whole file and the error names the first bad field.
pub struct Reader<'a> {
    problems: &'a mut Option<ScenarioProblem>,
}

impl<'a> Reader<'a> {
    /// A reader that records its first problem in `problems`.
    pub fn new(problems: &'a mut Option<ScenarioProblem>) -> Self {
        Reader { problems }
    }

    /// Records a problem (only the first is kept).
    pub fn fail(&mut self, problem: ScenarioProblem) {
        if self.problems.is_none() {
            *self.problems = Some(problem);
        }
    }

    /// A duration field (`"2s"`, `"5m"`), or `default`.
    pub fn duration(&mut self, field: &str, text: Option<&String>, default: &str) -> Duration {
        let text = text.map(String::as_str).unwrap_or(default);
        match parse_duration(text) {
            Ok(duration) => duration,
            Err(error) => {
                self.fail(invalid(field, error.to_string()));
                Duration::ZERO
            }
        }
    }

    /// A fraction in [0, 1], or `default`.
    pub fn fraction(&mut self, field: &str, value: Option<f64>, default: f64) -> f64 {
        let value = value.unwrap_or(default);
        if !(0.0..=1.0).contains(&value) {
            self.fail(invalid(field, format!("must be a fraction between 0 and 1, got {value}")));
        }
        value
    }

    /// A finite number above 0, or `default`.
    pub fn positive(&mut self, field: &str, value: Option<f64>, default: f64) -> f64 {
        let value = value.unwrap_or(default);
        if !(value.is_finite() && value > 0.0) {
            self.fail(invalid(field, format!("must be a number greater than 0, got {value}")));
        }
        value
    }

    /// A duration above 0, or `default`.
    pub fn positive_duration(&mut self, field: &str, text: Option<&String>, default: &str) -> Duration {
        let duration = self.duration(field, text, default);
        if duration.is_zero() && self.problems.is_none() {
            self.fail(invalid(field, "must be longer than 0"));
        }
        duration
    }
}
