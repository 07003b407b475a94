//! One client configuration for every Kafka client lk makes (producers, consumers, the admin
//! client, transactional producers) and for the engines it drives: a properties file in the
//! Kafka command-line tools' convention (`--kafka-config FILE`, like their `--command-config`)
//! plus `--kafka-property KEY=VALUE` overrides.
//!
//! Each client takes the keys of its kind: producer settings reach producers only, consumer
//! settings consumers only, and the rest (security, sockets) every client. The Java clients'
//! `sasl.jaas.config` is translated for librdkafka (`sasl.username`, `sasl.password`), and
//! [`ClientProperties::for_java`] makes the Java form back for JVM engines.
//!
//! **Secrets** (passwords, JAAS configurations, keys, tokens) are masked in `Debug`, and every
//! secret loaded is registered so that [`redact`] scrubs it from any text lk prints or writes.

use std::path::Path;
use std::sync::Mutex;

/// A kind of Kafka client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// A producer, transactional or not.
    Producer,
    /// A consumer, or a client that only reads metadata.
    Consumer,
    /// The admin client.
    Admin,
}

/// Why a client configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum PropertiesError {
    /// The file could not be read.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
    /// A property is malformed or cannot be used.
    #[error("{place}: {problem}")]
    Invalid {
        /// The file and line, or the command-line flag.
        place: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

/// Keys only producers take (librdkafka's names and the Java clients' where they differ).
const PRODUCER_KEYS: &[&str] = &[
    "acks",
    "request.required.acks",
    "linger.ms",
    "queue.buffering.max.ms",
    "batch.size",
    "batch.num.messages",
    "compression.type",
    "compression.codec",
    "compression.level",
    "enable.idempotence",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "retries",
    "message.send.max.retries",
    "transaction.timeout.ms",
    "partitioner",
    "sticky.partitioning.linger.ms",
    "enable.gapless.guarantee",
    "request.timeout.ms",
];

/// Keys only consumers take.
const CONSUMER_KEYS: &[&str] = &[
    "fetch.wait.max.ms",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.error.backoff.ms",
    "fetch.queue.backoff.ms",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "check.crcs",
    "group.protocol",
    "group.remote.assignor",
    "auto.commit.interval.ms",
];

/// Keys lk sets itself, from its own flags or for its guarantees: a configuration may not
/// change them.
const LK_KEYS: &[(&str, &str)] = &[
    ("bootstrap.servers", "lk takes the cluster's address from --brokers (or LK_KAFKA_BROKERS)"),
    ("group.id", "lk names its consumer groups under the run's namespace"),
    ("transactional.id", "lk names its transactional ids under the run's namespace"),
    ("isolation.level", "lk reads read-committed: exactly-once depends on it"),
    ("enable.auto.commit", "lk commits offsets itself, with its results"),
    ("enable.auto.offset.store", "lk commits offsets itself, with its results"),
    ("auto.offset.reset", "lk starts every reader at an offset it chose"),
    ("enable.partition.eof", "lk's readers depend on its setting"),
];

/// Java client keys that librdkafka has no equivalent for under the same name.
const JAVA_ONLY_KEYS: &[(&str, &str)] = &[
    ("ssl.truststore.location", "librdkafka reads PEM files: set ssl.ca.location to the CA certificate instead"),
    ("ssl.truststore.password", "librdkafka reads PEM files: set ssl.ca.location to the CA certificate instead"),
    ("ssl.truststore.type", "librdkafka reads PEM files: set ssl.ca.location to the CA certificate instead"),
    ("ssl.keystore.location", "librdkafka reads PEM files: set ssl.certificate.location and ssl.key.location instead"),
    ("ssl.keystore.type", "librdkafka reads PEM files: set ssl.certificate.location and ssl.key.location instead"),
    ("key.serializer", "lk's clients write bytes; remove it"),
    ("value.serializer", "lk's clients write bytes; remove it"),
    ("key.deserializer", "lk's clients read bytes; remove it"),
    ("value.deserializer", "lk's clients read bytes; remove it"),
];

/// Whether a key's value is a secret.
fn is_secret(key: &str) -> bool {
    ["password", "secret", "jaas", "token", "ssl.key.pem", "ssl_key", "credentials"]
        .iter()
        .any(|word| key.contains(word))
}

/// Every secret loaded in this process, for [`redact`].
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// `text` with every secret lk has loaded replaced by `***`.
pub fn redact(text: &str) -> String {
    let secrets = SECRETS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut text = text.to_owned();
    for secret in secrets.iter() {
        text = text.replace(secret.as_str(), "***");
    }
    text
}

fn register_secret(value: &str) {
    // A very short value would mask ordinary words in every message; librdkafka does not echo
    // credentials, so this is a second line of defence, not the first.
    if value.len() >= 3 {
        let mut secrets = SECRETS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !secrets.iter().any(|known| known == value) {
            secrets.push(value.to_owned());
            // Longest first, so that a secret containing another is masked whole.
            secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        }
    }
}

/// A client configuration: keys and values in the Kafka clients' names, later settings
/// overriding earlier ones.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientProperties {
    entries: Vec<(String, String)>,
}

impl std::fmt::Debug for ClientProperties {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_map()
            .entries(self.entries.iter().map(|(key, value)| (key, if is_secret(key) { "***" } else { value.as_str() })))
            .finish()
    }
}

impl ClientProperties {
    /// No properties: lk's defaults alone.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a properties file in the Java convention: `key=value` or `key: value` lines, `#`
    /// and `!` comments, a trailing `\` continuing a line.
    pub fn from_file(path: &Path) -> Result<Self, PropertiesError> {
        let text = std::fs::read_to_string(path)
            .map_err(|cause| PropertiesError::Io { path: path.display().to_string(), cause })?;
        let mut properties = Self::new();
        let mut logical = String::new();
        let mut first_line = 0;
        for (index, line) in text.lines().enumerate() {
            let line = if logical.is_empty() { line.trim_start() } else { line.trim() };
            if logical.is_empty() {
                first_line = index + 1;
                if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                    continue;
                }
            }
            if let Some(continued) = line.strip_suffix('\\') {
                logical.push_str(continued);
                continue;
            }
            logical.push_str(line);
            let place = format!("{}:{first_line}", path.display());
            let separator = logical.find(['=', ':']).ok_or_else(|| PropertiesError::Invalid {
                place: place.clone(),
                problem: "expected key=value (as in a Kafka client properties file)".to_owned(),
            })?;
            let (key, value) = (logical[..separator].trim(), logical[separator + 1..].trim());
            properties.set(key, value, &place)?;
            logical.clear();
        }
        Ok(properties)
    }

    /// Applies `--kafka-property KEY=VALUE` overrides.
    pub fn with_overrides(mut self, overrides: &[String]) -> Result<Self, PropertiesError> {
        for text in overrides {
            let place = format!("--kafka-property {}", redact_pair(text));
            let (key, value) = text.split_once('=').ok_or_else(|| PropertiesError::Invalid {
                place: place.clone(),
                problem: "expected KEY=VALUE, e.g. compression.type=none".to_owned(),
            })?;
            self.set(key.trim(), value.trim(), &place)?;
        }
        Ok(self)
    }

    /// Sets `key` to `value`; `place` names where it came from, for errors.
    pub fn set(&mut self, key: &str, value: &str, place: &str) -> Result<(), PropertiesError> {
        let invalid = |problem: String| PropertiesError::Invalid { place: place.to_owned(), problem };
        if key.is_empty() {
            return Err(invalid("a property has no key".to_owned()));
        }
        if let Some((_, why)) = LK_KEYS.iter().find(|(lk_key, _)| *lk_key == key) {
            return Err(invalid(format!("{key}: {why}; remove it")));
        }
        if let Some((_, why)) = JAVA_ONLY_KEYS.iter().find(|(java_key, _)| *java_key == key) {
            return Err(invalid(format!("{key} is a Java client setting: {why}")));
        }
        if is_secret(key) {
            register_secret(value);
        }
        if key == "sasl.jaas.config" {
            let (username, password) = parse_jaas(value).map_err(invalid)?;
            register_secret(&password);
            self.put("sasl.username", &username);
            self.put("sasl.password", &password);
            return Ok(());
        }
        self.put(key, value);
        Ok(())
    }

    fn put(&mut self, key: &str, value: &str) {
        self.entries.retain(|(existing, _)| existing != key);
        self.entries.push((key.to_owned(), value.to_owned()));
    }

    /// Whether there are no properties.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(existing, _)| existing == key).map(|(_, value)| value.as_str())
    }

    /// The librdkafka properties a client of `kind` takes.
    pub fn for_client(&self, kind: ClientKind) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .filter(move |(key, _)| {
                let key = key.as_str();
                match kind {
                    ClientKind::Producer => !CONSUMER_KEYS.contains(&key),
                    ClientKind::Consumer => !PRODUCER_KEYS.contains(&key),
                    ClientKind::Admin => !PRODUCER_KEYS.contains(&key) && !CONSUMER_KEYS.contains(&key),
                }
            })
            .map(|(key, value)| (key.as_str(), value.as_str()))
    }

    /// The same configuration for a Java client (Kafka Streams, Spark's `kafka.` options):
    /// `sasl.username`/`sasl.password` become the `sasl.jaas.config` of the configured
    /// mechanism.
    pub fn for_java(&self) -> Vec<(String, String)> {
        let mut java: Vec<(String, String)> =
            self.entries.iter().filter(|(key, _)| key != "sasl.username" && key != "sasl.password").cloned().collect();
        if let (Some(username), Some(password)) = (self.get("sasl.username"), self.get("sasl.password")) {
            let module = match self.get("sasl.mechanism").unwrap_or("PLAIN") {
                mechanism if mechanism.starts_with("SCRAM-") => {
                    "org.apache.kafka.common.security.scram.ScramLoginModule"
                }
                _ => "org.apache.kafka.common.security.plain.PlainLoginModule",
            };
            let quote = |text: &str| text.replace('\\', "\\\\").replace('"', "\\\"");
            java.push((
                "sasl.jaas.config".to_owned(),
                format!("{module} required username=\"{}\" password=\"{}\";", quote(username), quote(password)),
            ));
        }
        java
    }
}

/// `KEY=VALUE` with the value masked when the key names a secret.
fn redact_pair(text: &str) -> String {
    match text.split_once('=') {
        Some((key, _)) if is_secret(key) => format!("{key}=***"),
        _ => text.to_owned(),
    }
}

/// The username and password of a JAAS configuration for the PLAIN or SCRAM login modules.
fn parse_jaas(text: &str) -> Result<(String, String), String> {
    let unsupported = || {
        "sasl.jaas.config: lk understands the PlainLoginModule and ScramLoginModule forms (username=\"...\" \
         password=\"...\"); for other mechanisms set librdkafka's own properties (e.g. sasl.oauthbearer.*)"
            .to_owned()
    };
    let text = text.trim();
    let module_end = text.find(char::is_whitespace).ok_or_else(unsupported)?;
    let module = &text[..module_end];
    if !(module.ends_with("PlainLoginModule") || module.ends_with("ScramLoginModule")) {
        return Err(unsupported());
    }
    let mut rest = text[module_end..].trim_start();
    rest = rest.strip_prefix("required").ok_or_else(unsupported)?;
    let (mut username, mut password) = (None, None);
    loop {
        rest = rest.trim_start();
        if rest.is_empty() || rest == ";" {
            break;
        }
        let equals = rest.find('=').ok_or_else(unsupported)?;
        let key = rest[..equals].trim();
        rest = rest[equals + 1..].trim_start();
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut parsed = String::new();
            let mut characters = quoted.char_indices();
            let mut end = None;
            while let Some((index, character)) = characters.next() {
                match character {
                    '\\' => parsed.extend(characters.next().map(|(_, escaped)| escaped)),
                    '"' => {
                        end = Some(index + 1);
                        break;
                    }
                    other => parsed.push(other),
                }
            }
            let end = end.ok_or_else(|| "sasl.jaas.config: a quoted value is not closed".to_owned())?;
            value = parsed;
            rest = &quoted[end..];
        } else {
            let end = rest.find(|c: char| c.is_whitespace() || c == ';').unwrap_or(rest.len());
            value = rest[..end].to_owned();
            rest = &rest[end..];
        }
        match key {
            "username" => username = Some(value),
            "password" => password = Some(value),
            _ => {}
        }
    }
    match (username, password) {
        (Some(username), Some(password)) => Ok((username, password)),
        _ => Err("sasl.jaas.config: the login module needs both username=\"...\" and password=\"...\"".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAAS: &str =
        r#"org.apache.kafka.common.security.scram.ScramLoginModule required username="lk" password="s3cr\"et-42";"#;

    #[test]
    fn a_kafka_cli_properties_file_becomes_librdkafka_properties_per_client() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("client.properties");
        std::fs::write(
            &path,
            format!(
                "# a Kafka CLI command-config\nsecurity.protocol=SASL_PLAINTEXT\nsasl.mechanism: SCRAM-SHA-256\n\
                 sasl.jaas.config={JAAS}\nlinger.ms=\\\n  20\nfetch.wait.max.ms=10\n"
            ),
        )
        .unwrap();
        let properties = ClientProperties::from_file(&path).unwrap();
        assert_eq!(properties.get("sasl.username"), Some("lk"));
        assert_eq!(properties.get("sasl.password"), Some("s3cr\"et-42"));
        assert_eq!(properties.get("linger.ms"), Some("20"));
        let keys = |kind| properties.for_client(kind).map(|(key, _)| key.to_owned()).collect::<Vec<_>>();
        assert!(keys(ClientKind::Producer).contains(&"linger.ms".to_owned()));
        assert!(!keys(ClientKind::Producer).contains(&"fetch.wait.max.ms".to_owned()));
        assert!(keys(ClientKind::Consumer).contains(&"fetch.wait.max.ms".to_owned()));
        for kind in [ClientKind::Producer, ClientKind::Consumer, ClientKind::Admin] {
            assert!(
                keys(kind).contains(&"sasl.password".to_owned())
                    && keys(kind).contains(&"security.protocol".to_owned())
            );
        }
        assert!(!keys(ClientKind::Admin).contains(&"linger.ms".to_owned()));

        let overridden = properties.with_overrides(&["linger.ms=5".to_owned()]).unwrap();
        assert_eq!(overridden.get("linger.ms"), Some("5"));
    }

    #[test]
    fn secrets_are_masked_in_debug_and_redacted_from_text() {
        let properties = ClientProperties::new().with_overrides(&[format!("sasl.jaas.config={JAAS}")]).unwrap();
        let debug = format!("{properties:?}");
        assert!(!debug.contains("s3cr") && debug.contains("***"), "{debug}");
        assert_eq!(redact("auth failed for lk with s3cr\"et-42 at broker"), "auth failed for lk with *** at broker");
        let error = ClientProperties::new().with_overrides(&["sasl.password".to_owned()]).unwrap_err().to_string();
        assert!(error.contains("KEY=VALUE"), "{error}");
    }

    #[test]
    fn the_java_form_carries_the_credentials_as_jaas() {
        let properties = ClientProperties::new()
            .with_overrides(&["sasl.mechanism=SCRAM-SHA-512".to_owned(), format!("sasl.jaas.config={JAAS}")])
            .unwrap();
        let java = properties.for_java();
        let jaas = &java.iter().find(|(key, _)| key == "sasl.jaas.config").unwrap().1;
        assert!(jaas.starts_with("org.apache.kafka.common.security.scram.ScramLoginModule required"), "{jaas}");
        assert_eq!(parse_jaas(jaas).unwrap(), ("lk".to_owned(), "s3cr\"et-42".to_owned()));
        assert!(!java.iter().any(|(key, _)| key == "sasl.password"));
    }

    #[test]
    fn keys_lk_sets_itself_and_java_only_keys_are_refused_with_what_to_do() {
        for (key, hint) in [
            ("group.id", "namespace"),
            ("bootstrap.servers", "--brokers"),
            ("ssl.truststore.location", "ssl.ca.location"),
        ] {
            let error = ClientProperties::new().with_overrides(&[format!("{key}=x")]).unwrap_err().to_string();
            assert!(error.contains(hint), "{key}: {error}");
        }
        let error = ClientProperties::new()
            .with_overrides(&["sasl.jaas.config=com.example.OAuthLoginModule required;".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("sasl.oauthbearer"), "{error}");
    }
}
