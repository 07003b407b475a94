"""lk's five queries as the seed's Lambda on Spark Structured Streaming and Delta Lake.

One Spark driver runs the four layers, and lk talks to it through the engine protocol
(docs/engines.md) as it does to spark-kappa, whose queries and readers this job imports:

- master dataset: every valid input record appended to a Delta table partitioned by date and
  hour, with its partition and offset, by a streaming query whose foreachBatch writes with
  Delta's idempotent transaction ids (txnAppId, txnVersion = the micro-batch id), so that a
  micro-batch replayed after a crash is not appended twice; the same micro-batch's records that
  do not parse or validate go to the dead-letter topic;
- batch layer: on the scenario's schedule (a cutoff every batch interval of event time, once the
  master dataset's event time is a watermark delay past it), a batch job over the master
  dataset recomputes the five views from every event before the cutoff, de-duplicated by event
  id, and overwrites one Delta table of batch views in one commit (one consistent version;
  Delta's time travel keeps the old ones); after the input ends, a final run over everything;
- speed layer: spark-kappa's streaming queries over the whole input, whose upserts are served
  only for cells the batch view does not own;
- serving layer: the exact merge. A cell belongs to the batch view once the cutoff has passed
  the event time from which no event can change it (its window's end; its session's last event
  plus the gap), and to the speed layer before that. Publishing a batch view swaps the cutoff
  under a lock the speed layer's sinks also take, so no speed upsert of a cell the batch owns
  lands after the batch's. Q1 (a driver's latest ping) is the later of the two layers' pings,
  which is always the speed layer's: its query has no watermark and reads every ping.

`LK_SPARK_MERGE=seed` serves the seed's merge instead: the batch job windows Q2, Q3 and Q5 by
day, both layers publish every cell, and the output topic's upsert by cell is
`batch.unionByName(realtime).dropDuplicates([key, window])`, the last writer standing in for
Spark's arbitrary row. Decision 0014 says why the merge runs here.

`LK_LAMBDA_MODE=reprocess` reruns the batch job over the whole master dataset into a fresh output
topic, then restores the batch view table to its previous version with Delta's time travel, each
timed, and exits.
"""

import json
import os
import pathlib
import sys
import threading
import time

from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F

import kappa as k

LAKE = k.setting("LK_LAKE_DIR")
MASTER = f"{LAKE}/master"
BATCH_VIEWS = f"{LAKE}/batch_views"
BATCH_INTERVAL_US = int(k.setting("LK_BATCH_INTERVAL_US"))
REPORT = k.setting("LK_LAMBDA_REPORT")
MERGE = os.environ.get("LK_SPARK_MERGE", "exact")
MODE = os.environ.get("LK_LAMBDA_MODE", "live")
# While a batch view is being written, this file exists: a crash fault aimed at the write waits
# for it (docs/engines.md).
WRITING = pathlib.Path(k.setting("LK_BATCH_WRITING_FILE"))
STATE = pathlib.Path(k.CHECKPOINTS) / "serving.json"
PUBLISHED_SESSIONS = pathlib.Path(k.CHECKPOINTS) / "published-sessions.jsonl"
DAY_US = 86_400_000_000
# The speed layer's watermark trails the largest event time by this much; a cutoff trails the
# master dataset's largest event time by as much, so the batch takes over windows the speed layer
# has closed.
DELAY_US = k.US["WATERMARK_DELAY"] + k.US["ALLOWED_LATENESS"]
GAP_US = k.US["SESSION_GAP"]

if MERGE not in ("exact", "seed"):
    sys.exit(f"lk spark-lambda: LK_SPARK_MERGE is {MERGE!r}; it must be exact or seed")


class SharedLock:
    """Many speed-layer sinks at once, or one publication of a batch view alone."""

    def __init__(self):
        self.condition = threading.Condition()
        self.readers = 0
        self.writer = False

    def shared(self):
        return _Held(self, False)

    def exclusive(self):
        return _Held(self, True)


class _Held:
    def __init__(self, lock, exclusive):
        self.lock, self.exclusive = lock, exclusive

    def __enter__(self):
        with self.lock.condition:
            if self.exclusive:
                while self.lock.writer or self.lock.readers:
                    self.lock.condition.wait()
                self.lock.writer = True
            else:
                while self.lock.writer:
                    self.lock.condition.wait()
                self.lock.readers += 1

    def __exit__(self, *_):
        with self.lock.condition:
            if self.exclusive:
                self.lock.writer = False
            else:
                self.lock.readers -= 1
            self.lock.condition.notify_all()


class Serving:
    """What the serving layer has published, kept in the checkpoint folder so that a restarted job
    serves the same cutoff: the batch view's cutoff, whether the input has ended, and every
    session either layer published (a later batch view that owns one and does not have it, as
    when a late event moved its start, must remove it: another start is another cell)."""

    def __init__(self):
        self.lock = SharedLock()
        self.wake = threading.Condition()
        state = json.loads(STATE.read_text()) if STATE.exists() else {}
        self.cutoff_us = state.get("cutoff_us")
        self.runs = state.get("runs", 0)
        self.end_seen = state.get("end_seen", False)
        self.final_done = state.get("final_done", False)
        self.master_max_us = state.get("master_max_us")
        self.published_sessions = {}
        if PUBLISHED_SESSIONS.exists():
            for line in PUBLISHED_SESSIONS.read_text().splitlines():
                try:
                    driver, start_us, last_us = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash: its session was not published
                self.published_sessions.setdefault((driver, start_us), set()).add(last_us)
        self.sessions_file = open(PUBLISHED_SESSIONS, "a")

    def save(self):
        state = {"cutoff_us": self.cutoff_us, "runs": self.runs, "end_seen": self.end_seen,
                 "final_done": self.final_done, "master_max_us": self.master_max_us}
        temporary = STATE.with_suffix(".tmp")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, STATE)

    def owns_after(self, frame):
        """The rows of a speed-layer frame the serving layer serves from the speed layer."""
        if MERGE == "seed" or self.cutoff_us is None:
            return frame
        return frame.where(F.col("end_us").isNull() | (F.col("end_us") > F.lit(self.cutoff_us)))

    def record_sessions(self, sessions):
        """Notes sessions, (driver, start, last), before they are published (on disk first)."""
        for driver, start_us, last_us in sessions:
            lasts = self.published_sessions.setdefault((driver, start_us), set())
            if last_us not in lasts:
                lasts.add(last_us)
                self.sessions_file.write(json.dumps([driver, start_us, last_us]) + "\n")
        self.sessions_file.flush()
        os.fsync(self.sessions_file.fileno())


def kafka_write(frame, topic=None):
    writer = (frame.write.format("kafka").option("kafka.bootstrap.servers", k.BROKERS)
              .option("topic", topic or k.OUTPUT))
    for key, value in k.KAFKA_OPTIONS.items():
        writer = writer.option(f"kafka.{key}", value)
    writer.save()


def speed_sink(serving, name):
    def sink(frame, _batch_id):
        with serving.lock.shared():
            rows = serving.owns_after(frame).select("key", "value")
            if name == "q4_driver_sessions" and MERGE == "exact":
                collected = rows.collect()
                if not collected:
                    return
                values = [json.loads(row["value"]) for row in collected]
                serving.record_sessions([(v["driver"], v["start_us"], v["last_us"]) for v in values])
                rows = frame.sparkSession.createDataFrame(
                    [(row["key"], row["value"]) for row in collected], "key string, value string")
            kafka_write(rows)
    return sink


MASTER_COLUMNS = ["event_id", "kind", "event_time_us", "due_ns", "zone", "lat", "lon", "driver_id", "rider_id",
                  "ride_id", "speed_mps", "heading_deg", "fare_cents", "distance_m", "cancelled_by"]


def master_sink(serving):
    """The master dataset's append, and the dead letters of the same records: one read and parse
    of the input for both (a replayed micro-batch writes its dead letters again, which name the
    same input positions)."""
    def sink(frame, batch_id):
        frame.persist()
        valid = frame.where(F.col("valid")).select(
            *MASTER_COLUMNS,
            F.col("partition").alias("kafka_partition"), F.col("offset").alias("kafka_offset"),
            F.date_format(F.timestamp_micros("event_time_us"), "yyyy-MM-dd").alias("date"),
            F.hour(F.timestamp_micros("event_time_us")).alias("hour"))
        (valid.write.format("delta").mode("append").partitionBy("date", "hour")
         .option("txnAppId", "lk-master").option("txnVersion", batch_id).save(MASTER))
        kafka_write(k.dead_letter_records(frame), k.DEAD_LETTERS)
        seen = frame.agg(F.max(F.when(F.col("valid"), F.col("event_time_us"))).alias("max_us"),
                         F.max(F.col("control").cast("int")).alias("end")).collect()[0]
        frame.unpersist()
        with serving.wake:
            if seen["max_us"] is not None:
                serving.master_max_us = max(serving.master_max_us or seen["max_us"], seen["max_us"])
            serving.end_seen = serving.end_seen or seen["end"] == 1
            serving.save()
            serving.wake.notify_all()
    return sink


def upsert(frame, key, value_columns, end_us):
    return frame.select(F.concat_ws("|", *key).alias("key"), F.to_json(F.struct(*value_columns)).alias("value"),
                        end_us.alias("end_us"))


def batch_views(events):
    """The five views over `events` (de-duplicated), as the speed layer's upserts with their
    query; the seed's merge windows Q2, Q3 and Q5 by day."""
    seed = MERGE == "seed"
    e = events.withColumn("mark", k.id_mark("event_id")).withColumn("ts", F.timestamp_micros("event_time_us"))
    window = lambda us, slide=None: F.window("ts", k.interval(us), k.interval(slide or us)).alias("w")  # noqa: E731
    start, end = F.unix_micros(F.col("w.start")), F.unix_micros(F.col("w.end"))
    pings = e.where(F.col("kind") == "driver_ping").groupBy("driver_id").agg(F.max(F.struct(
        "event_time_us", "event_id", (F.col("lat") * 1000000).cast("long").alias("lat_e6"),
        (F.col("lon") * 1000000).cast("long").alias("lon_e6"), "zone", "due_ns")).alias("l"))
    q1 = upsert(pings, [F.lit("q1"), F.col("driver_id")], [
        F.lit("q1_driver_location").alias("query"), F.col("driver_id").alias("driver"),
        "l.event_time_us", "l.event_id", "l.lat_e6", "l.lon_e6", "l.zone", "l.due_ns"], F.lit(None).cast("long"))
    rides = e.where(F.col("kind") == "picked_up").groupBy(
        "driver_id", window(DAY_US if seed else k.US["RIDES_WINDOW"])).agg(
        F.count("*").alias("count"),
        F.sum((F.col("lat") * 1000000).cast("long")).alias("lat_e6_sum"),
        F.sum((F.col("lon") * 1000000).cast("long")).alias("lon_e6_sum"),
        F.sum("mark").alias("ids"), F.max("due_ns").alias("max_due_ns"))
    q2 = upsert(rides, [F.lit("q2"), F.col("driver_id"), start], [
        F.lit("q2_rides_per_driver").alias("query"), F.col("driver_id").alias("driver"),
        start.alias("window_start_us"), "count", "lat_e6_sum", "lon_e6_sum", "ids", "max_due_ns"], end)
    demand_window = window(DAY_US) if seed else window(k.US["DEMAND_WINDOW"], k.US["DEMAND_SLIDE"])
    demand = e.where(F.col("kind") == "ride_requested").groupBy("zone", demand_window).agg(
        F.count("*").alias("count"), F.sum("mark").alias("ids"), F.max("due_ns").alias("max_due_ns"))
    q3 = upsert(demand, [F.lit("q3"), F.col("zone"), start], [
        F.lit("q3_zone_demand").alias("query"), "zone", start.alias("window_start_us"), "count", "ids",
        "max_due_ns"], end)
    # Sessions as lk defines them: an event a gap or more after its driver's previous one starts
    # a new session (a window function over each driver's events in time order).
    by_driver = Window.partitionBy("driver_id").orderBy("event_time_us", "event_id")
    activity = e.where(F.col("kind").isin("driver_ping", "picked_up")).withColumn(
        "new", F.coalesce((F.col("event_time_us") - F.lag("event_time_us").over(by_driver)) >= GAP_US,
                          F.lit(True)).cast("int"))
    activity = activity.withColumn("session", F.sum("new").over(
        by_driver.rowsBetween(Window.unboundedPreceding, Window.currentRow)))
    sessions = activity.groupBy("driver_id", "session").agg(
        F.min("event_time_us").alias("start_us"), F.max("event_time_us").alias("last_us"),
        F.sum(F.when(F.col("kind") == "driver_ping", 1).otherwise(0)).alias("pings"),
        F.sum(F.when(F.col("kind") == "picked_up", 1).otherwise(0)).alias("rides"),
        F.sum("mark").alias("ids"), F.max("due_ns").alias("max_due_ns"))
    q4 = upsert(sessions, [F.lit("q4"), F.col("driver_id"), F.col("start_us")], [
        F.lit("q4_driver_sessions").alias("query"), F.col("driver_id").alias("driver"), "start_us", "last_us",
        "pings", "rides", "ids", "max_due_ns"], F.col("last_us") + F.lit(GAP_US))
    trends = e.where(F.col("kind") == "dropped_off").groupBy(
        "zone", window(DAY_US if seed else k.US["TRENDS_WINDOW"])).agg(
        F.count("*").alias("count"), F.sum("fare_cents").alias("fare_cents_sum"),
        F.sum("distance_m").alias("distance_m_sum"), F.sum("mark").alias("ids"),
        F.max("due_ns").alias("max_due_ns"))
    q5 = upsert(trends, [F.lit("q5"), F.col("zone"), start], [
        F.lit("q5_historical_trends").alias("query"), "zone", start.alias("window_start_us"), "count",
        "fare_cents_sum", "distance_m_sum", "ids", "max_due_ns"], end)
    return (q1.withColumn("query", F.lit("q1")).unionByName(q2.withColumn("query", F.lit("q2")))
            .unionByName(q3.withColumn("query", F.lit("q3"))).unionByName(q4.withColumn("query", F.lit("q4")))
            .unionByName(q5.withColumn("query", F.lit("q5"))))


def table_version(spark, path):
    return spark.sql(f"DESCRIBE HISTORY delta.`{path}` LIMIT 1").collect()[0]["version"]


def compute_batch(spark, cutoff_us, final):
    """Recomputes the views from the master dataset's current version (every event before the
    cutoff, or every event) and overwrites the batch view table with them in one commit. Returns
    the views (cached), the master version read and the rows read."""
    master_version = table_version(spark, MASTER)
    events = spark.read.format("delta").option("versionAsOf", master_version).load(MASTER)
    if not final:
        events = events.where(F.col("event_time_us") < F.lit(cutoff_us))
    rows = events.count()
    views = batch_views(events.dropDuplicates(["event_id"])).withColumn(
        "cutoff_us", F.lit(cutoff_us)).withColumn("master_version", F.lit(master_version)).persist()
    WRITING.touch()
    try:
        (views.write.format("delta").mode("overwrite").partitionBy("query")
         .option("overwriteSchema", "true").save(BATCH_VIEWS))
    finally:
        WRITING.unlink(missing_ok=True)
    return views, master_version, rows


def publish(spark, serving, views, cutoff_us, final, topic=None):
    """Serves a batch view: the cells it owns (all of them in the seed's merge), after removing
    the sessions either layer published that it owns and does not have; into `topic`, a rerun's
    fresh output topic, every view. Returns (cells, removals)."""
    owned = views if topic is not None else views.where(F.col("query") != "q1")
    if MERGE == "exact" and not final:
        owned = owned.where(F.col("end_us") <= F.lit(cutoff_us))
    removals = []
    if MERGE == "exact" and topic is None:
        values = [json.loads(row["value"]) for row in owned.where(F.col("query") == "q4").select("value").collect()]
        batch_sessions = {(v["driver"], v["start_us"], v["last_us"]) for v in values}
        for (driver, start_us), lasts in serving.published_sessions.items():
            for last_us in list(lasts):
                if (final or last_us + GAP_US <= cutoff_us) and (driver, start_us, last_us) not in batch_sessions:
                    # Keyed as the session is, so that it lands in the session's partition, after it.
                    removals.append((f"q4|{driver}|{start_us}", json.dumps({
                        "query": "q4_session_removed", "driver": driver, "start_ms": start_us // 1000,
                        "end_ms": last_us // 1000})))
                    lasts.discard(last_us)
        serving.record_sessions(batch_sessions)
    cells = owned.count()
    if removals:
        kafka_write(spark.createDataFrame(removals, "key string, value string"), topic)
    kafka_write(owned.select("key", "value"), topic)
    return cells, len(removals)


def batch_run(spark, serving, progress, cutoff_us, final):
    decided = time.time()
    views, master_version, rows = compute_batch(spark, cutoff_us, final)
    written = time.time()
    with serving.lock.exclusive():
        cells, removals = publish(spark, serving, views, cutoff_us, final)
        serving.cutoff_us = cutoff_us
        serving.runs += 1
        serving.final_done = serving.final_done or final
        serving.save()
    served = time.time()
    views.unpersist()
    report = {"run": serving.runs, "cutoff_us": cutoff_us, "final": final, "master_version": master_version,
              "view_version": table_version(spark, BATCH_VIEWS), "rows": rows, "cells": cells,
              "sessions_removed": removals, "decided_at": decided, "written_at": written, "served_at": served,
              "merge": MERGE}
    with open(REPORT, "a") as out:
        out.write(json.dumps(report) + "\n")
    progress.pending = 0 if serving.final_done else 1
    progress.out.write(json.dumps({"query": "batch_layer", "batch": serving.runs, "rows": rows,
                                   "duration_ms": int((served - decided) * 1000),
                                   "pending": progress.pending}) + "\n")


def scheduler(spark, serving, progress):
    """Runs the batch layer: a scheduled run whenever the master dataset's event time has passed
    the next cutoff by the watermark delay, and the final run once the input has ended. Under
    `--spark-conf spark.scheduler.mode=FAIR` its jobs run in a pool of their own, as do the
    master dataset's and the speed layer's."""
    spark.sparkContext.setLocalProperty("spark.scheduler.pool", "batch")
    try:
        while True:
            with serving.wake:
                serving.wake.wait(timeout=0.5)
                end, done, latest, cutoff = (serving.end_seen, serving.final_done, serving.master_max_us,
                                             serving.cutoff_us)
            if end and not done:
                batch_run(spark, serving, progress, k.END_OF_INPUT_US, True)
            elif not end and latest is not None:
                target = (latest - DELAY_US) // BATCH_INTERVAL_US * BATCH_INTERVAL_US
                if cutoff is None or target > cutoff:
                    batch_run(spark, serving, progress, target, False)
    except Exception as error:  # noqa: BLE001 - the job ends with the batch layer's error
        progress.out.write(json.dumps({"query_failed": "batch_layer", "error": str(error)}) + "\n")
        os._exit(1)


def reprocess(spark):
    """The seed's Lambda reprocessing: the batch job over the whole master dataset, served into
    a fresh output topic; then the batch view restored to its previous version (time travel)."""
    serving = Serving()
    before = table_version(spark, BATCH_VIEWS)
    started = time.time()
    views, master_version, rows = compute_batch(spark, k.END_OF_INPUT_US, True)
    cells, _ = publish(spark, serving, views, k.END_OF_INPUT_US, True, topic=k.OUTPUT)
    rerun_seconds = time.time() - started
    views.unpersist()
    started = time.time()
    spark.sql(f"RESTORE TABLE delta.`{BATCH_VIEWS}` TO VERSION AS OF {before}")
    restore_seconds = time.time() - started
    restored = spark.read.format("delta").load(BATCH_VIEWS).agg(
        F.count("*").alias("cells"), F.countDistinct("cutoff_us").alias("cutoffs")).collect()[0]
    report = {"rows": rows, "cells": cells, "seconds": rerun_seconds, "master_version": master_version,
              "restored_version": before, "restore_seconds": restore_seconds, "restored_cells": restored["cells"],
              "restored_cutoffs": restored["cutoffs"], "version_after_restore": table_version(spark, BATCH_VIEWS)}
    pathlib.Path(REPORT).write_text(json.dumps(report) + "\n")


def main():
    spark = SparkSession.builder.appName("lk-spark-lambda").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if MODE == "reprocess":
        reprocess(spark)
        return
    serving = Serving()
    progress = k.Progress(k.PROGRESS)
    progress.pending = 0 if serving.final_done else 1
    queries = []
    # A query's jobs run in the fair-scheduler pool of the thread that started it.
    spark.sparkContext.setLocalProperty("spark.scheduler.pool", "master")
    queries.append(k.parsed(spark).writeStream.foreachBatch(master_sink(serving))
                   .option("checkpointLocation", f"{k.CHECKPOINTS}/master").queryName("master").start())
    spark.sparkContext.setLocalProperty("spark.scheduler.pool", "speed")
    for name, frame, mode in k.views(spark):
        queries.append(frame.writeStream.foreachBatch(speed_sink(serving, name)).outputMode(mode)
                       .option("checkpointLocation", f"{k.CHECKPOINTS}/{name}").queryName(name).start())
    threading.Thread(target=scheduler, args=(spark, serving, progress), name="batch-layer", daemon=True).start()
    ready = pathlib.Path(k.READY)
    ready.with_suffix(".tmp").write_text(json.dumps({"readers": [query.name for query in queries]}))
    ready.with_suffix(".tmp").replace(ready)
    if serving.final_done:
        progress.out.write(json.dumps({"query": "batch_layer", "batch": serving.runs, "pending": 0}) + "\n")
    while True:
        for query in queries:
            progress.poll(query)
        stopped = [query for query in queries if not query.isActive]
        if stopped:
            for query in stopped:
                progress.poll(query)
                if query.exception():
                    progress.failed(query)
                    sys.exit(f"lk spark-lambda: query {query.name} failed: {query.exception()}")
            sys.exit(f"lk spark-lambda: query {stopped[0].name} stopped")
        time.sleep(k.PROGRESS_POLL_SECONDS)


if __name__ == "__main__":
    main()
