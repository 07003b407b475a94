package dev.lk.kstreams;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.time.Duration;
import java.util.Iterator;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Repartitioned;
import org.apache.kafka.streams.kstream.SessionWindows;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.kstream.Windowed;
import org.apache.kafka.streams.processor.api.ContextualFixedKeyProcessor;
import org.apache.kafka.streams.processor.api.FixedKeyRecord;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;

/**
 * lk's five queries as a Kafka Streams application: the Kappa architecture's canonical engine.
 *
 * <p>lk starts it with {@code java -cp} and talks to it only through Kafka topics, the
 * environment and two files (docs/engines.md, "The engine protocol"):
 *
 * <ul>
 *   <li>input: the run's ride events as JSON, from the earliest offset; a record lk's codec
 *       refuses goes to the dead-letter topic through the deserialization exception handler
 *       ({@link DeadLetters});
 *   <li>output: every view as upserts, one JSON object per (query, key, window) with its count and
 *       id checksum; a session merged into another is removed with a {@code q4_session_removed}
 *       record;
 *   <li>late: what each aggregation drops by Kafka Streams' own rule ({@link Observed});
 *   <li>progress: the application's committed input offsets, polled from the group coordinator,
 *       one JSON line each time they move ({@link Progress}).
 * </ul>
 *
 * <p>Exactly-once is Kafka's own: {@code processing.guarantee=exactly_once_v2} (KIP-447) commits
 * each task's output, state changelogs, late records, dead letters and input offsets in one
 * transaction; lk's {@code [engine] guarantee = "at-least-once"} selects {@code at_least_once}.
 */
public final class Kappa {
    private Kappa() {}

    private static final String SESSION_OBSERVER = "q4-observe-lateness";

    static String setting(String name) {
        String value = System.getenv(name);
        if (value == null || value.isEmpty()) {
            System.err.println("lk kstreams: the environment variable " + name + " is not set; lk sets it (docs/engines.md)");
            System.exit(2);
        }
        return value;
    }

    static long micros(String name) {
        return Long.parseLong(setting("LK_" + name + "_US"));
    }

    /** A JSON string literal. */
    static String quote(String text) {
        StringBuilder out = new StringBuilder(text.length() + 2).append('"');
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                default -> {
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        return out.append('"').toString();
    }

    /**
     * Stamps an output record with the time it was served. Kafka Streams would give it its
     * event's time: the scenario's date, which may be months back, and the broker deletes a
     * segment whose records are older than the topic's retention as soon as the segment rolls.
     */
    static final class Served<K> extends ContextualFixedKeyProcessor<K, String, String> {
        @Override
        public void process(FixedKeyRecord<K, String> record) {
            context().forward(record.withTimestamp(System.currentTimeMillis()));
        }
    }

    /** Stamps each event with where it was in the input (kept across repartitions). */
    static final class Stamp extends ContextualFixedKeyProcessor<byte[], Event, Event> {
        @Override
        public void process(FixedKeyRecord<byte[], Event> record) {
            Event event = record.value();
            context().recordMetadata().ifPresent(metadata -> {
                event.partition = metadata.partition();
                event.offset = metadata.offset();
            });
            context().forward(record);
        }
    }

    public static void main(String[] args) throws Exception {
        String brokers = setting("LK_BROKERS");
        String input = setting("LK_INPUT_TOPIC");
        String control = setting("LK_CONTROL_TOPIC");
        String output = setting("LK_OUTPUT_TOPIC");
        String deadLetters = setting("LK_DEAD_LETTER_TOPIC");
        String lateTopic = setting("LK_LATE_TOPIC");
        String applicationId = setting("LK_APPLICATION_ID");
        int partitions = Integer.parseInt(setting("LK_PARTITIONS"));
        Path stateDir = Path.of(setting("LK_CHECKPOINT_DIR"));
        Path progressFile = Path.of(setting("LK_PROGRESS_FILE"));
        Path readyFile = Path.of(setting("LK_READY_FILE"));
        String guarantee = setting("LK_GUARANTEE");
        long commitIntervalMs = Long.parseLong(setting("LK_COMMIT_INTERVAL_MS"));
        Duration grace = Duration.ofMillis((micros("WATERMARK_DELAY") + micros("ALLOWED_LATENESS")) / 1000);

        Properties props = new Properties();
        // The cluster's client settings (security included), as lk's own clients use them.
        Map<?, ?> options = new com.fasterxml.jackson.databind.ObjectMapper()
                .readValue(System.getenv().getOrDefault("LK_KAFKA_OPTIONS", "{}"), Map.class);
        options.forEach((key, value) -> props.put(key, String.valueOf(value)));
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, applicationId);
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toAbsolutePath().toString());
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, switch (guarantee) {
            case "exactly-once" -> StreamsConfig.EXACTLY_ONCE_V2;
            case "at-least-once" -> StreamsConfig.AT_LEAST_ONCE;
            default -> throw new IllegalArgumentException(
                    "LK_GUARANTEE is " + guarantee + "; Kafka Streams offers exactly-once and at-least-once");
        });
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Long.toString(commitIntervalMs));
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, setting("LK_THREADS"));
        // Where the aggregations keep their state between commits: RocksDB on local disk (Kafka
        // Streams' default), or in memory; either way every change goes to a changelog topic,
        // which a restart restores from.
        props.put(StreamsConfig.DSL_STORE_SUPPLIERS_CLASS_CONFIG, switch (setting("LK_STORE")) {
            case "memory" -> org.apache.kafka.streams.state.BuiltInDslStoreSuppliers.InMemoryDslStoreSuppliers.class;
            case "rocksdb" -> org.apache.kafka.streams.state.BuiltInDslStoreSuppliers.RocksDBDslStoreSuppliers.class;
            default -> throw new IllegalArgumentException("LK_STORE is " + setting("LK_STORE") + "; give memory or rocksdb");
        });
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
        // A SIGKILLed instance leaves the group only when its session times out: at the default
        // 45 s its restart waits that long for its tasks. 6 s is the broker's least.
        props.put(StreamsConfig.consumerPrefix("session.timeout.ms"), "6000");
        props.put(StreamsConfig.consumerPrefix("heartbeat.interval.ms"), "1500");
        props.put("processing.exception.handler.global.enabled", "true");
        // The window and session stores' changelogs are compacted and deleted by time: the
        // broker deletes what is older than the store's retention plus this, by the records'
        // timestamps, which are event times. A scenario's events may be months in the past (its
        // city's date), and a restart would restore windows whose changes the broker had already
        // deleted: ten years more keeps them.
        props.put(StreamsConfig.WINDOW_STORE_CHANGE_LOG_ADDITIONAL_RETENTION_MS_CONFIG,
                Long.toString(Duration.ofDays(3650).toMillis()));
        props.put(StreamsConfig.DESERIALIZATION_EXCEPTION_HANDLER_CLASS_CONFIG, DeadLetters.class.getName());
        props.put(DeadLetters.TOPIC, deadLetters);

        StreamsBuilder builder = new StreamsBuilder();
        Serde<Event> events = Event.serde();
        Serde<Cell> cells = Cell.serde();
        Serde<byte[]> bytes = Serdes.ByteArray();
        Serde<String> strings = Serdes.String();
        Produced<String, String> out = Produced.with(strings, strings);

        KStream<byte[], Event> valid = builder
                .stream(input, Consumed.with(bytes, Serdes.serdeFrom(events.serializer(), new Event.InputDeserializer()))
                        .withTimestampExtractor((record, partitionTime) -> ((Event) record.value()).timeMs()))
                .processValues(Stamp::new);
        // The end-of-input record is read (its offset is committed, which is how lk sees that the
        // engine has read it) and goes no further: Kafka Streams emits every update as it
        // happens, so no window waits for the end to be served.
        builder.stream(control, Consumed.with(bytes, bytes)).filter((key, value) -> false);

        // Driver queries (Q1, Q2, Q4) in tasks by driver; zone queries (Q3, Q5) in tasks by zone.
        KStream<Long, Event> byDriver = valid
                .filter((key, e) -> e.kind == Event.PING || e.kind == Event.PICKED_UP)
                .selectKey((key, e) -> e.driver)
                .repartition(Repartitioned.with(Serdes.Long(), events).withName("by-driver")
                        .withNumberOfPartitions(partitions));
        KStream<String, Event> byZone = valid
                .filter((key, e) -> e.kind == Event.REQUESTED || e.kind == Event.DROPPED_OFF)
                .selectKey((key, e) -> e.zone)
                .repartition(Repartitioned.with(strings, events).withName("by-zone")
                        .withNumberOfPartitions(partitions));

        // Q1 driver location: the latest ping per driver (event time, then id); never late.
        byDriver.filter((driver, e) -> e.kind == Event.PING)
                .groupByKey(Grouped.with(Serdes.Long(), events))
                .reduce((kept, ping) -> ping.timeUs > kept.timeUs || (ping.timeUs == kept.timeUs && ping.id > kept.id)
                        ? ping : kept, Materialized.<Long, Event, org.apache.kafka.streams.state.KeyValueStore<org.apache.kafka.common.utils.Bytes, byte[]>>as("q1-location")
                        .withKeySerde(Serdes.Long()).withValueSerde(events))
                .toStream()
                .map((driver, ping) -> KeyValue.pair("q1|" + driver, "{\"query\":\"q1_driver_location\",\"driver\":"
                        + driver + ",\"event_time_us\":" + ping.timeUs + ",\"event_id\":" + ping.id + ",\"lat_e6\":"
                        + ping.latE6 + ",\"lon_e6\":" + ping.lonE6 + ",\"zone\":" + quote(ping.zone) + ",\"due_ns\":"
                        + ping.dueNs + "}"))
                .processValues(Served::new)
                .to(output, out);

        // Q2 rides per driver: pickups per driver in tumbling windows.
        TimeWindows rides = TimeWindows.ofSizeAndGrace(Duration.ofMillis(micros("RIDES_WINDOW") / 1000), grace);
        KStream<Long, Observed> pickups = observed(
                byDriver.filter((driver, e) -> e.kind == Event.PICKED_UP)
                        .processValues(() -> new Observed.Windows<>("q2_rides_per_driver", rides)),
                lateTopic, out);
        pickups.groupByKey(Grouped.keySerde(Serdes.Long()))
                .windowedBy(rides)
                .aggregate(Cell::new, (driver, o, cell) -> cell.add(o.event),
                        Materialized.<Long, Cell, org.apache.kafka.streams.state.WindowStore<org.apache.kafka.common.utils.Bytes, byte[]>>as("q2-rides")
                                .withKeySerde(Serdes.Long()).withValueSerde(cells))
                .toStream()
                .map((window, cell) -> KeyValue.pair("q2|" + window.key() + "|" + window.window().start(),
                        "{\"query\":\"q2_rides_per_driver\",\"driver\":" + window.key() + ",\"window_start_us\":"
                                + window.window().start() * 1000 + ",\"count\":" + cell.count + ",\"lat_e6_sum\":"
                                + cell.latE6Sum + ",\"lon_e6_sum\":" + cell.lonE6Sum + ",\"ids\":" + cell.ids
                                + ",\"max_due_ns\":" + cell.maxDueNs + "}"))
                .processValues(Served::new)
                .to(output, out);

        // Q3 zone demand: requests per zone in sliding (hopping) windows.
        TimeWindows demand = TimeWindows.ofSizeAndGrace(Duration.ofMillis(micros("DEMAND_WINDOW") / 1000), grace)
                .advanceBy(Duration.ofMillis(micros("DEMAND_SLIDE") / 1000));
        observed(byZone.filter((zone, e) -> e.kind == Event.REQUESTED)
                        .processValues(() -> new Observed.Windows<>("q3_zone_demand", demand)), lateTopic, out)
                .groupByKey(Grouped.keySerde(strings))
                .windowedBy(demand)
                .aggregate(Cell::new, (zone, o, cell) -> cell.add(o.event),
                        Materialized.<String, Cell, org.apache.kafka.streams.state.WindowStore<org.apache.kafka.common.utils.Bytes, byte[]>>as("q3-demand")
                                .withKeySerde(strings).withValueSerde(cells))
                .toStream()
                .map((window, cell) -> KeyValue.pair("q3|" + window.key() + "|" + window.window().start(),
                        "{\"query\":\"q3_zone_demand\",\"zone\":" + quote(window.key()) + ",\"window_start_us\":"
                                + window.window().start() * 1000 + ",\"count\":" + cell.count + ",\"ids\":" + cell.ids
                                + ",\"max_due_ns\":" + cell.maxDueNs + "}"))
                .processValues(Served::new)
                .to(output, out);

        // Q4 driver sessions: pings and pickups per driver in session windows. lk's sessions split
        // at a gap of at least the session gap; Kafka Streams merges events up to its inactivity
        // gap apart, inclusive, in milliseconds: one millisecond less is the same rule.
        long gapMs = micros("SESSION_GAP") / 1000 - 1;
        SessionWindows sessions = SessionWindows.ofInactivityGapAndGrace(Duration.ofMillis(gapMs), grace);
        // The store keeps a session for twice the gap plus the grace period: an event that is not
        // dropped (up to the gap and grace behind the stream time) must still find a session that
        // ended up to a gap before it. At the default retention (the gap plus the grace) the
        // store has already let that session go, and the event starts a second session.
        Duration sessionRetention = Duration.ofMillis(2 * gapMs).plus(grace).plusSeconds(1);
        observed(byDriver.processValues(
                        () -> new Observed.Sessions<>("q4_driver_sessions", "q4-sessions", gapMs, grace.toMillis()),
                        org.apache.kafka.streams.kstream.Named.as(SESSION_OBSERVER)), lateTopic, out)
                .groupByKey(Grouped.keySerde(Serdes.Long()))
                .windowedBy(sessions)
                .aggregate(Cell::new, (driver, o, cell) -> cell.add(o.event), (driver, one, two) -> Cell.merge(one, two),
                        Materialized.<Long, Cell, org.apache.kafka.streams.state.SessionStore<org.apache.kafka.common.utils.Bytes, byte[]>>as("q4-sessions")
                                .withKeySerde(Serdes.Long()).withValueSerde(cells).withCachingDisabled()
                                .withRetention(sessionRetention))
                .toStream()
                .map((Windowed<Long> window, Cell cell) -> KeyValue.pair(
                        "q4|" + window.key() + "|" + window.window().start(),
                        cell == null
                                ? "{\"query\":\"q4_session_removed\",\"driver\":" + window.key() + ",\"start_ms\":"
                                        + window.window().start() + ",\"end_ms\":" + window.window().end() + "}"
                                : "{\"query\":\"q4_driver_sessions\",\"driver\":" + window.key() + ",\"start_us\":"
                                        + cell.startUs + ",\"last_us\":" + cell.lastUs + ",\"pings\":" + cell.pings
                                        + ",\"rides\":" + cell.rides + ",\"ids\":" + cell.ids + ",\"max_due_ns\":"
                                        + cell.maxDueNs + "}"))
                .processValues(Served::new)
                .to(output, out);

        // Q5 historical trends: drop-offs, fares and distance per zone in tumbling windows.
        TimeWindows trends = TimeWindows.ofSizeAndGrace(Duration.ofMillis(micros("TRENDS_WINDOW") / 1000), grace);
        observed(byZone.filter((zone, e) -> e.kind == Event.DROPPED_OFF)
                        .processValues(() -> new Observed.Windows<>("q5_historical_trends", trends)), lateTopic, out)
                .groupByKey(Grouped.keySerde(strings))
                .windowedBy(trends)
                .aggregate(Cell::new, (zone, o, cell) -> cell.add(o.event),
                        Materialized.<String, Cell, org.apache.kafka.streams.state.WindowStore<org.apache.kafka.common.utils.Bytes, byte[]>>as("q5-trends")
                                .withKeySerde(strings).withValueSerde(cells))
                .toStream()
                .map((window, cell) -> KeyValue.pair("q5|" + window.key() + "|" + window.window().start(),
                        "{\"query\":\"q5_historical_trends\",\"zone\":" + quote(window.key()) + ",\"window_start_us\":"
                                + window.window().start() * 1000 + ",\"count\":" + cell.count + ",\"fare_cents_sum\":"
                                + cell.fareCentsSum + ",\"distance_m_sum\":" + cell.distanceMSum + ",\"ids\":" + cell.ids
                                + ",\"max_due_ns\":" + cell.maxDueNs + "}"))
                .processValues(Served::new)
                .to(output, out);

        org.apache.kafka.streams.Topology topology = builder.build();
        // The session observer reads the session aggregation's store, which the DSL adds after it.
        topology.connectProcessorAndStateStores(SESSION_OBSERVER, "q4-sessions");
        KafkaStreams streams = new KafkaStreams(topology, props);
        Progress progress = new Progress(progressFile, props, applicationId, input, control);
        CountDownLatch stopped = new CountDownLatch(1);
        AtomicBoolean ready = new AtomicBoolean(false);
        streams.setUncaughtExceptionHandler(error -> {
            progress.failed(error);
            stopped.countDown();
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.setStateListener((now, before) -> {
            // Ready once its tasks are assigned and their state restored from the changelogs: a
            // restart's restoration is part of its recovery, which lk times until this file.
            if (now == KafkaStreams.State.RUNNING) {
                // Which tasks this instance runs, after each rebalance: where partitions moved.
                java.util.List<String> tasks = new java.util.ArrayList<>();
                streams.metadataForLocalThreads().forEach(thread -> thread.activeTasks()
                        .forEach(task -> tasks.add(task.taskId().toString())));
                java.util.Collections.sort(tasks);
                System.err.println("lk kstreams: running with active tasks " + tasks);
                if (ready.compareAndSet(false, true)) {
                    writeReady(readyFile);
                }
            }
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                stopped.countDown();
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(Duration.ofSeconds(8));
            progress.close();
        }, "lk-kstreams-shutdown"));
        streams.start();
        progress.start();
        stopped.await();
        System.exit(1);
    }

    /** The late records an observer declared go to the late topic; the events go on. */
    private static <K> KStream<K, Observed> observed(KStream<K, Observed> stream, String lateTopic,
            Produced<String, String> out) {
        stream.filter((key, o) -> o.late != null)
                .flatMap((key, o) -> {
                    Iterator<String> records = o.late.iterator();
                    java.util.List<KeyValue<String, String>> pairs = new java.util.ArrayList<>(o.late.size());
                    while (records.hasNext()) {
                        pairs.add(KeyValue.pair(o.event.partition + "/" + o.event.offset, records.next()));
                    }
                    return pairs;
                })
                .processValues(Served::new)
                .to(lateTopic, out);
        return stream;
    }

    private static void writeReady(Path readyFile) {
        try {
            Path temporary = readyFile.resolveSibling(readyFile.getFileName() + ".tmp");
            Files.writeString(temporary, "{\"readers\":[\"" + Progress.READER + "\"]}", StandardCharsets.UTF_8);
            Files.move(temporary, readyFile, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } catch (IOException error) {
            System.err.println("lk kstreams: could not write the ready file " + readyFile + ": " + error);
            System.exit(1);
        }
    }
}
