# Everyday recipes; thin wrappers over cargo and scripts. `just` is optional: every recipe is one
# command you can run yourself.

# The README's main command: the quickstart scenario.
quickstart:
    cargo run --release -- run scenarios/quickstart.toml

# The rush-hour measurement the README records.
rush-hour:
    cargo run --release -- run scenarios/rush-hour.toml

# The log and window-operator benchmarks.
bench-engines:
    cargo bench -p lk-engines --bench engines

# Re-render the report of a saved run (or compare several).
report +results:
    cargo run --release -- report {{results}}

# Compare two runs for CI: exit 1 on a regression beyond PCT percent or any correctness loss.
diff baseline current pct="10":
    cargo run --release -- diff {{baseline}} {{current}} --max-regression {{pct}}

# The README's test command.
test:
    cargo test --release --workspace

# What CI runs.
ci:
    bash .ci/run

# The generator against Nexmark, on one core.
bench-generator:
    cargo bench -p lk-simulator --bench generator

# Flat-out generation of rush hour to /dev/null, the figure the README records.
simulate-max scenario="scenarios/rush-hour.toml":
    cargo run --release -- simulate {{scenario}} --rate max --format bin --out /dev/null
