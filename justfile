# Everyday recipes; thin wrappers over cargo and scripts. `just` is optional: every recipe is one
# command you can run yourself.

# The README's main command: the quickstart scenario.
quickstart:
    cargo run --release -- run scenarios/quickstart.toml

# The rush-hour measurement the README records.
rush-hour:
    cargo run --release -- run scenarios/rush-hour.toml

# Crashes under a delivery guarantee: exactly-once must hold; the weaker ones show what they allow.
crash-recovery guarantee="exactly-once":
    cargo run --release -- run scenarios/crash-recovery.toml --guarantee {{guarantee}}

# Half an hour at a steady rate: fails unless memory levelled off and latency did not drift.
soak duration="30m" out="soak-run":
    cargo run --release -- run scenarios/soak.toml --duration {{duration}} --out {{out}} --require-steady

# An overload under a backpressure strategy: buffer, slow-source, drop or scale-out.
overload strategy="buffer":
    cargo run --release -- run scenarios/overload.toml --backpressure {{strategy}}

# The late-data trade-off: one run per watermark delay.
sweep scenario="scenarios/late-data.toml" delays="0s,5s,30s,2m":
    cargo run --release -- sweep {{scenario}} --watermark {{delays}}

# lk's producer against Kafka's ProducerPerformance on the same broker (needs `just kafka-up`).
kafka-bench scenario="scenarios/rush-hour.toml" duration="20s":
    cargo build --release && scripts/kafka-bench {{scenario}} {{duration}}

# The log and window-operator benchmarks.
bench-engines:
    cargo bench -p lk-engines --bench engines

# Re-render the report of a saved run (or compare several).
report +results:
    cargo run --release -- report {{results}}

# Compare two runs for CI: exit 1 on a significant regression or any correctness loss.
diff baseline current:
    cargo run --release -- diff {{baseline}} {{current}}

# The regression gate's A/A and A/B checks (docs/benchmarks.md).
gate-check pairs="10" repeat="5":
    scripts/diff-gate-check {{pairs}} {{repeat}}

# The README's test command.
test:
    cargo test --release --workspace

# What CI runs.
ci:
    bash .ci/run

# The generator against Nexmark, on one core.
bench-generator:
    cargo bench -p lk-simulator --bench generator_ratios

# Flat-out generation of rush hour to /dev/null, the figure the README records.
simulate-max scenario="scenarios/rush-hour.toml":
    cargo run --release -- simulate {{scenario}} --rate max --format bin --out /dev/null

# The single-node Kafka broker (KRaft, 127.0.0.1:9092) assembled from Maven Central.
kafka-up:
    scripts/kafka up

kafka-down:
    scripts/kafka down

kafka-status:
    scripts/kafka status

kafka-logs:
    scripts/kafka logs
