"""lk's five queries as the seed's Kappa job on Spark Structured Streaming.

lk starts this file with spark-submit and talks to it only through Kafka topics and the
environment (docs/engines.md, "The engine protocol"):

- input: the run's ride events as JSON (docs/ride-event.schema.json), read from the earliest
  offset; records that do not parse or validate go to the dead-letter topic;
- output: every view as upserts, one JSON object per (query, key, window), carrying the count of
  contributions and the id checksum of the contributing events;
- progress: one JSON line per micro-batch and query (its offsets and its watermark) appended to
  LK_PROGRESS_FILE (polled from each query's recent progress), from which lk knows what the
  engine has read and what its watermark dropped;
- end of input: lk writes one record to the control topic, an event time past every event's,
  which moves the watermark past every window, as a bounded source's end does in Flink.

Exactly-once is the seed's "idempotent sink" route: Spark's checkpointed source offsets and
state, and upserts by key, so a micro-batch that is replayed after a crash writes the same
values again.
"""

import json
import os
import pathlib
import pickle
import sys
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T


def setting(name):
    value = os.environ.get(name)
    if value is None or value == "":
        sys.exit(f"lk {os.environ.get('LK_ENGINE', 'spark')}: the environment variable {name} is not set; lk sets it (docs/engines.md)")
    return value


BROKERS = setting("LK_BROKERS")
KAFKA_OPTIONS = json.loads(os.environ.get("LK_KAFKA_OPTIONS") or "{}")
INPUT = setting("LK_INPUT_TOPIC")
CONTROL = setting("LK_CONTROL_TOPIC")
OUTPUT = setting("LK_OUTPUT_TOPIC")
DEAD_LETTERS = setting("LK_DEAD_LETTER_TOPIC")
CHECKPOINTS = setting("LK_CHECKPOINT_DIR")
PROGRESS = setting("LK_PROGRESS_FILE")
READY = setting("LK_READY_FILE")
US = {name: int(setting(f"LK_{name}_US")) for name in
      ("RIDES_WINDOW", "DEMAND_WINDOW", "DEMAND_SLIDE", "SESSION_GAP", "TRENDS_WINDOW",
       "WATERMARK_DELAY", "ALLOWED_LATENESS")}
# Test only: a sink that adds each micro-batch's counts to totals of its own, ignoring the batch
# id, as the Spark guide warns foreachBatch sinks not to; the checker must catch it.
TEST_SINK = os.environ.get("LK_TEST_SINK", "")

# How often the job reads its queries' progress: lk's view of what it has read lags by this.
PROGRESS_POLL_SECONDS = 0.2

# The end-of-input record's event time (lk's END_OF_INPUT_US): 9999-12-31T23:59:59Z.
END_OF_INPUT_US = 253402300799000000

KINDS = ["driver_ping", "ride_requested", "ride_accepted", "driver_arrived", "picked_up",
         "dropped_off", "ride_cancelled"]

SCHEMA = T.StructType([
    T.StructField("event_id", T.LongType()),
    T.StructField("kind", T.StringType()),
    T.StructField("event_time_us", T.LongType()),
    T.StructField("due_ns", T.LongType()),
    T.StructField("zone", T.StringType()),
    T.StructField("lat", T.DecimalType(12, 6)),
    T.StructField("lon", T.DecimalType(12, 6)),
    T.StructField("driver_id", T.LongType()),
    T.StructField("rider_id", T.LongType()),
    T.StructField("ride_id", T.LongType()),
    T.StructField("speed_mps", T.DecimalType(12, 2)),
    T.StructField("heading_deg", T.DecimalType(12, 2)),
    T.StructField("fare_cents", T.LongType()),
    T.StructField("distance_m", T.LongType()),
    T.StructField("cancelled_by", T.StringType()),
])


def signed(value):
    """A 64-bit constant as the signed long Spark computes with."""
    return value - (1 << 64) if value >= 1 << 63 else value


# The id checksum (docs/engines.md): SplitMix64's finaliser of the event id, summed with
# wrap-around over a cell's events. Spark's longs wrap like lk's u64 with ANSI mode off.
def id_mark(column):
    z1 = F.col(column) + F.lit(signed(0x9E3779B97F4A7C15))
    z2 = (z1.bitwiseXOR(F.shiftrightunsigned(z1, 30))) * F.lit(signed(0xBF58476D1CE4E5B9))
    z3 = (z2.bitwiseXOR(F.shiftrightunsigned(z2, 27))) * F.lit(signed(0x94D049BB133111EB))
    return z3.bitwiseXOR(F.shiftrightunsigned(z3, 31))


def kafka_reader(spark, topics):
    reader = (spark.readStream.format("kafka")
              .option("kafka.bootstrap.servers", BROKERS)
              .option("subscribe", topics)
              .option("startingOffsets", "earliest")
              .option("failOnDataLoss", "true"))
    for key, value in KAFKA_OPTIONS.items():
        reader = reader.option(f"kafka.{key}", value)
    return reader.load()


def kafka_writer(frame, name):
    writer = (frame.writeStream.format("kafka")
              .option("kafka.bootstrap.servers", BROKERS)
              .option("topic", OUTPUT)
              .option("checkpointLocation", f"{CHECKPOINTS}/{name}")
              .queryName(name))
    for key, value in KAFKA_OPTIONS.items():
        writer = writer.option(f"kafka.{key}", value)
    return writer


def parsed(spark, kinds=None):
    """The input and the control topic as rows; `valid` says whether a row is a ride event lk's
    codec accepts (docs/ride-event.schema.json). With `kinds`, only records that name one of
    them are parsed: JSON parsing is most of the job's work, and every query parses for itself."""
    raw = kafka_reader(spark, f"{INPUT},{CONTROL}")
    if kinds:
        text = F.col("value").cast("string")
        named = text.contains(kinds[0])
        for kind in kinds[1:]:
            named = named | text.contains(kind)
        raw = raw.where((F.col("topic") == CONTROL) | named)
    event = F.from_json(F.col("value").cast("string"), SCHEMA, {"mode": "PERMISSIVE"})
    rows = raw.select(F.col("topic"), F.col("partition"), F.col("offset"), F.col("value"), event.alias("e"))
    e = lambda name: F.col(f"e.{name}")  # noqa: E731
    kind = e("kind")
    needs_driver = kind.isin("driver_ping", "ride_accepted", "driver_arrived", "picked_up", "dropped_off")
    needs_ride = kind != "driver_ping"
    needs_rider = kind.isin("ride_requested", "ride_accepted", "ride_cancelled")
    valid = (
        e("event_id").isNotNull() & (e("event_id") > 0)
        & kind.isin(*KINDS)
        & e("event_time_us").isNotNull() & e("due_ns").isNotNull() & e("zone").isNotNull()
        & e("lat").isNotNull() & e("lat").between(-90, 90)
        & e("lon").isNotNull() & e("lon").between(-180, 180)
        & (~needs_driver | (e("driver_id").isNotNull() & (e("driver_id") > 0)))
        & (~needs_ride | (e("ride_id").isNotNull() & (e("ride_id") > 0)))
        & (~needs_rider | (e("rider_id").isNotNull() & (e("rider_id") > 0)))
        & ((kind != "driver_ping") | (e("speed_mps").isNotNull() & e("heading_deg").isNotNull()))
        & ((kind != "dropped_off") | (e("fare_cents").isNotNull() & e("distance_m").isNotNull()))
        & ((kind != "ride_cancelled") | e("cancelled_by").isin("rider", "driver", "platform"))
    )
    control = F.col("topic") == CONTROL
    return rows.select(
        "topic", "partition", "offset", "value", "e.*",
        F.when(control, F.lit(False)).otherwise(F.coalesce(valid, F.lit(False))).alias("valid"),
        control.alias("control"),
    )


def events(spark, *kinds):
    """Valid events of `kinds`, and the end-of-input record, under the query's watermark; the
    end-of-input record only moves the watermark and is dropped after it.

    Spark keeps one watermark per streaming query, over all partitions, from the rows that
    reach it: here the query's own kinds of events (a filter that does not read the event time
    runs before the watermark, where Spark's optimiser would push it anyway)."""
    rows = parsed(spark, kinds).where((F.col("valid") & F.col("kind").isin(*kinds)) | F.col("control"))
    rows = rows.withColumn("ts", F.timestamp_micros(F.col("event_time_us")))
    # Spark has no allowed lateness beyond the watermark: a window closes once the watermark
    # passes its end, so lk's delay plus lateness is Spark's delay (the same windows close).
    delay_us = US["WATERMARK_DELAY"] + US["ALLOWED_LATENESS"]
    # This filter reads the event time, so it stays above the watermark.
    return rows.withWatermark("ts", f"{delay_us // 1000} milliseconds").where(
        F.col("ts") < F.timestamp_micros(F.lit(END_OF_INPUT_US)))


def interval(us):
    return f"{us} microseconds"


def upserts(frame, key, value_columns, end_us):
    return frame.select(
        F.concat_ws("|", *key).alias("key"),
        F.to_json(F.struct(*value_columns)).alias("value"),
        end_us.alias("end_us"),
    )


def views(spark):
    """The five views as upserts: (name, frame of key, value and end_us, output mode). `end_us`
    is the event time from which no event can change the cell (a window's end; a session's last
    event plus the gap; none for Q1, whose cell any later ping changes): the Lambda job's serving
    layer hands a cell to the batch view once its cutoff has passed it."""
    out = []
    # Q1 driver location: the latest ping per driver (event time, then id); never late, so
    # without a watermark.
    pings = parsed(spark, ["driver_ping"]).where(F.col("valid") & (F.col("kind") == "driver_ping"))
    latest = pings.groupBy("driver_id").agg(F.max(F.struct(
        "event_time_us", "event_id", (F.col("lat") * 1000000).cast("long").alias("lat_e6"),
        (F.col("lon") * 1000000).cast("long").alias("lon_e6"), "zone", "due_ns")).alias("l"))
    q1 = upserts(latest, [F.lit("q1"), F.col("driver_id")], [
        F.lit("q1_driver_location").alias("query"), F.col("driver_id").alias("driver"),
        "l.event_time_us", "l.event_id", "l.lat_e6", "l.lon_e6", "l.zone", "l.due_ns"], F.lit(None).cast("long"))
    out.append(("q1_driver_location", q1, "update"))

    # Q2 rides per driver: pickups per driver in tumbling windows.
    pickups = events(spark, "picked_up").withColumn("mark", id_mark("event_id"))
    rides = pickups.groupBy("driver_id", F.window("ts", interval(US["RIDES_WINDOW"])).alias("w")).agg(
        F.count("*").alias("count"),
        F.sum((F.col("lat") * 1000000).cast("long")).alias("lat_e6_sum"),
        F.sum((F.col("lon") * 1000000).cast("long")).alias("lon_e6_sum"),
        F.sum("mark").alias("ids"), F.max("due_ns").alias("max_due_ns"))
    start = F.unix_micros(F.col("w.start"))
    q2 = upserts(rides, [F.lit("q2"), F.col("driver_id"), start], [
        F.lit("q2_rides_per_driver").alias("query"), F.col("driver_id").alias("driver"),
        start.alias("window_start_us"), "count", "lat_e6_sum", "lon_e6_sum", "ids", "max_due_ns"],
        F.unix_micros(F.col("w.end")))
    out.append(("q2_rides_per_driver", q2, "update"))

    # Q3 zone demand: requests per zone in sliding windows.
    requests = events(spark, "ride_requested").withColumn("mark", id_mark("event_id"))
    window = F.window("ts", interval(US["DEMAND_WINDOW"]), interval(US["DEMAND_SLIDE"])).alias("w")
    demand = requests.groupBy("zone", window).agg(
        F.count("*").alias("count"), F.sum("mark").alias("ids"), F.max("due_ns").alias("max_due_ns"))
    start = F.unix_micros(F.col("w.start"))
    q3 = upserts(demand, [F.lit("q3"), F.col("zone"), start], [
        F.lit("q3_zone_demand").alias("query"), "zone", start.alias("window_start_us"),
        "count", "ids", "max_due_ns"], F.unix_micros(F.col("w.end")))
    out.append(("q3_zone_demand", q3, "update"))

    # Q4 driver sessions: pings and pickups per driver in session windows. Spark rejects session
    # windows in update mode, so they are written in append mode: once the watermark closes them.
    activity = events(spark, "driver_ping", "picked_up").withColumn(
        "mark", id_mark("event_id"))
    sessions = activity.groupBy("driver_id", F.session_window("ts", interval(US["SESSION_GAP"])).alias("s")).agg(
        F.min("event_time_us").alias("start_us"), F.max("event_time_us").alias("last_us"),
        F.sum(F.when(F.col("kind") == "driver_ping", 1).otherwise(0)).alias("pings"),
        F.sum(F.when(F.col("kind") == "picked_up", 1).otherwise(0)).alias("rides"),
        F.sum("mark").alias("ids"), F.max("due_ns").alias("max_due_ns"))
    q4 = upserts(sessions, [F.lit("q4"), F.col("driver_id"), F.col("start_us")], [
        F.lit("q4_driver_sessions").alias("query"), F.col("driver_id").alias("driver"),
        "start_us", "last_us", "pings", "rides", "ids", "max_due_ns"],
        F.col("last_us") + F.lit(US["SESSION_GAP"]))
    out.append(("q4_driver_sessions", q4, "append"))

    # Q5 historical trends: drop-offs, fares and distance per zone in tumbling windows.
    dropoffs = events(spark, "dropped_off").withColumn("mark", id_mark("event_id"))
    trends = dropoffs.groupBy("zone", F.window("ts", interval(US["TRENDS_WINDOW"])).alias("w")).agg(
        F.count("*").alias("count"), F.sum("fare_cents").alias("fare_cents_sum"),
        F.sum("distance_m").alias("distance_m_sum"), F.sum("mark").alias("ids"),
        F.max("due_ns").alias("max_due_ns"))
    start = F.unix_micros(F.col("w.start"))
    q5 = upserts(trends, [F.lit("q5"), F.col("zone"), start], [
        F.lit("q5_historical_trends").alias("query"), "zone", start.alias("window_start_us"),
        "count", "fare_cents_sum", "distance_m_sum", "ids", "max_due_ns"], F.unix_micros(F.col("w.end")))
    out.append(("q5_historical_trends", q5, "update"))
    return out


def dead_letters(spark):
    """What does not parse or validate, with where it was, as the dead-letter topic's records."""
    return dead_letter_records(parsed(spark))


def dead_letter_records(rows):
    """The dead-letter topic's records for the rows of `parsed` that are not valid events."""
    return rows.where(~F.col("valid") & ~F.col("control")).select(
        F.concat_ws("/", F.col("partition").cast("string"), F.col("offset").cast("string")).alias("key"),
        F.to_json(F.struct(F.col("partition"), F.col("offset"),
                           F.col("value").cast("string").alias("record"))).alias("value"),
    )


def start_queries(spark):
    queries = []
    dead = (dead_letters(spark).writeStream.format("kafka").option("kafka.bootstrap.servers", BROKERS)
            .option("topic", DEAD_LETTERS).option("checkpointLocation", f"{CHECKPOINTS}/dead_letters")
            .queryName("dead_letters"))
    for key, value in KAFKA_OPTIONS.items():
        dead = dead.option(f"kafka.{key}", value)
    queries.append(dead.start())
    for name, frame, mode in views(spark):
        if name == "q3_zone_demand" and TEST_SINK == "non-idempotent":
            requests = events(spark, "ride_requested").withColumn("mark", id_mark("event_id"))
            window = F.window("ts", interval(US["DEMAND_WINDOW"]), interval(US["DEMAND_SLIDE"])).alias("w")
            queries.append(non_idempotent_demand(requests, window))
            continue
        queries.append(kafka_writer(frame.select("key", "value"), name).outputMode(mode).start())
    return queries


def non_idempotent_demand(requests, window):
    """Test only: Q3 through foreachBatch, adding each batch's counts to totals the sink keeps in
    a file of its own, ignoring the batch id, with a checkpoint that does not outlive the process
    (each start replays the topic from the earliest offset). Every replay adds to the totals
    again; with the idempotent upserts of the real job the same replays are harmless."""
    totals_path = pathlib.Path(CHECKPOINTS) / "non_idempotent_totals.pickle"
    checkpoint = f"{CHECKPOINTS}/q3_zone_demand-process-{os.getpid()}"

    def add_batch(frame, batch_id):
        counts = frame.groupBy("zone", window).agg(
            F.count("*").alias("count"), F.sum("mark").alias("ids"), F.max("due_ns").alias("max_due_ns"))
        rows = counts.select("zone", F.unix_micros(F.col("w.start")).alias("start"), "count", "ids",
                             "max_due_ns").collect()
        totals = pickle.loads(totals_path.read_bytes()) if totals_path.exists() else {}
        changed = {}
        for row in rows:
            key = (row["zone"], row["start"])
            count, ids, due = totals.get(key, (0, 0, 0))
            ids = (ids + row["ids"] + (1 << 63)) % (1 << 64) - (1 << 63)
            totals[key] = changed[key] = (count + row["count"], ids, max(due, row["max_due_ns"]))
        temporary = totals_path.with_suffix(".tmp")
        temporary.write_bytes(pickle.dumps(totals))
        temporary.replace(totals_path)
        out = [(f"q3|{zone}|{start}", json.dumps({
            "query": "q3_zone_demand", "zone": zone, "window_start_us": start, "count": count, "ids": ids,
            "max_due_ns": due})) for (zone, start), (count, ids, due) in changed.items()]
        if out:
            writer = (frame.sparkSession.createDataFrame(out, "key string, value string").write.format("kafka")
                      .option("kafka.bootstrap.servers", BROKERS).option("topic", OUTPUT))
            for option, value in KAFKA_OPTIONS.items():
                writer = writer.option(f"kafka.{option}", value)
            writer.save()

    return (requests.writeStream.foreachBatch(add_batch).option("checkpointLocation", checkpoint)
            .queryName("q3_zone_demand").start())


class Progress:
    """Appends each micro-batch's offsets and watermark to LK_PROGRESS_FILE, one JSON line each,
    polled from the queries' recent progress on the main thread. (A StreamingQueryListener is
    called back through py4j's callback server, which the test sink's foreachBatch also uses: a
    restarted job once stopped reporting there for good while its queries had input to read.)"""

    def __init__(self, path):
        self.out = open(path, "a", buffering=1)
        self.seen = set()
        # Records still inside the job (docs/engines.md); None reports none. The Lambda job
        # reports 1 until its final batch view is served.
        self.pending = None

    def poll(self, query):
        for progress in query.recentProgress:
            key = (str(progress.runId), progress.batchId)
            if key in self.seen:
                continue
            self.seen.add(key)
            self.write(progress)

    def write(self, progress):
        source = progress.sources[0] if progress.sources else None

        def offsets(text):
            # Per topic and partition; a first batch has none to start from.
            try:
                return json.loads(text) if text else None
            except ValueError:
                return None

        line = {
            "query": progress.name,
            "batch": progress.batchId,
            "watermark": progress.eventTime.get("watermark"),
            "rows": progress.numInputRows,
            "start": offsets(source.startOffset) if source else None,
            "end": offsets(source.endOffset) if source else None,
            "duration_ms": progress.durationMs.get("triggerExecution"),
            "durations_ms": dict(progress.durationMs),
        }
        if self.pending is not None:
            line["pending"] = self.pending
        self.out.write(json.dumps(line) + "\n")

    def failed(self, query):
        self.out.write(json.dumps({"query_failed": query.name, "error": str(query.exception())}) + "\n")


def main():
    spark = SparkSession.builder.appName("lk-spark-kappa").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    progress = Progress(PROGRESS)
    queries = start_queries(spark)
    # The ready file names the readers of the input, whose progress lk follows (docs/engines.md);
    # written whole, then renamed, so that lk never reads half of it.
    ready = pathlib.Path(READY)
    ready.with_suffix(".tmp").write_text(json.dumps({"readers": [query.name for query in queries]}))
    ready.with_suffix(".tmp").replace(ready)
    # Until lk stops the process, or one query fails, which ends the job with its error.
    while True:
        for query in queries:
            progress.poll(query)
        stopped = [query for query in queries if not query.isActive]
        if stopped:
            for query in stopped:
                progress.poll(query)
                if query.exception():
                    progress.failed(query)
                    sys.exit(f"lk spark-kappa: query {query.name} failed: {query.exception()}")
            sys.exit(f"lk spark-kappa: query {stopped[0].name} stopped")
        time.sleep(PROGRESS_POLL_SECONDS)


if __name__ == "__main__":
    main()
