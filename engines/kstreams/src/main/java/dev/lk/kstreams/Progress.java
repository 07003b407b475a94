package dev.lk.kstreams;

import java.io.IOException;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ListOffsetsOptions;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.IsolationLevel;
import org.apache.kafka.common.TopicPartition;

/**
 * The application's progress as lk reads it (docs/engines.md, "Progress"): the input offsets the
 * application has committed, polled from the group coordinator, one JSON line each time they
 * move. Under exactly_once_v2 an offset is committed in the same transaction as what it led to.
 *
 * <p>The input's offsets say how far the first stage has read; what it wrote to the repartition
 * topics is still inside the application until the tasks after them have committed it. Each line
 * says how many such records are pending (the repartition topics' committed ends less the
 * application's committed offsets on them), and lk waits for none before it stops the engine.
 */
final class Progress {
    /** The one reader of the input lk follows: the application's consumer group. */
    static final String READER = "kstreams";

    /** How often the committed offsets are polled: lk's view of the engine's position lags by this. */
    private static final long POLL_MS = 100;

    private final Path file;
    private final Admin admin;
    private final String group;
    private final String input;
    private final String control;
    private final String internalPrefix;
    private final Thread thread;
    private volatile boolean closed;

    Progress(Path file, Properties streams, String group, String input, String control) {
        Properties props = new Properties();
        for (String key : streams.stringPropertyNames()) {
            if (AdminClientConfig.configNames().contains(key)) {
                props.put(key, streams.getProperty(key));
            }
        }
        this.file = file;
        this.admin = Admin.create(props);
        this.group = group;
        this.input = input;
        this.control = control;
        this.internalPrefix = group + "-";
        this.thread = new Thread(this::run, "lk-kstreams-progress");
        this.thread.setDaemon(true);
    }

    void start() {
        thread.start();
    }

    void close() {
        closed = true;
        admin.close(java.time.Duration.ofSeconds(2));
    }

    private void run() {
        Map<String, Map<Integer, Long>> last = null;
        long lastPending = -1;
        long lastAt = System.nanoTime();
        while (!closed) {
            try {
                Map<TopicPartition, OffsetAndMetadata> committed = admin.listConsumerGroupOffsets(group)
                        .partitionsToOffsetAndMetadata().get(5, TimeUnit.SECONDS);
                Map<String, Map<Integer, Long>> end = new TreeMap<>();
                Map<TopicPartition, OffsetSpec> internal = new java.util.HashMap<>();
                committed.forEach((partition, offset) -> {
                    String topic = partition.topic();
                    if (offset != null && (topic.equals(input) || topic.equals(control))) {
                        end.computeIfAbsent(topic, t -> new TreeMap<>()).put(partition.partition(), offset.offset());
                    } else if (topic.startsWith(internalPrefix) && topic.endsWith("-repartition")) {
                        internal.put(partition, OffsetSpec.latest());
                    }
                });
                long pending = 0;
                if (!internal.isEmpty()) {
                    var ends = admin.listOffsets(internal, new ListOffsetsOptions(IsolationLevel.READ_COMMITTED))
                            .all().get(5, TimeUnit.SECONDS);
                    for (var entry : ends.entrySet()) {
                        OffsetAndMetadata at = committed.get(entry.getKey());
                        pending += Math.max(0, entry.getValue().offset() - (at == null ? 0 : at.offset()));
                    }
                }
                if (!end.isEmpty() && (!end.equals(last) || pending != lastPending)) {
                    long now = System.nanoTime();
                    write(last != null && !end.equals(last) ? last : null, end, pending, (now - lastAt) / 1_000_000);
                    last = end;
                    lastPending = pending;
                    lastAt = now;
                }
            } catch (Exception error) {
                if (closed) {
                    return;
                }
                System.err.println("lk kstreams: could not read the committed offsets: " + error);
            }
            try {
                Thread.sleep(POLL_MS);
            } catch (InterruptedException interrupted) {
                return;
            }
        }
    }

    private static long sum(Map<String, Map<Integer, Long>> offsets) {
        return offsets == null ? 0 : offsets.values().stream().flatMap(p -> p.values().stream())
                .mapToLong(Long::longValue).sum();
    }

    private static String json(Map<String, Map<Integer, Long>> offsets) {
        StringBuilder out = new StringBuilder("{");
        offsets.forEach((topic, partitions) -> {
            if (out.length() > 1) {
                out.append(',');
            }
            out.append(Kappa.quote(topic)).append(":{");
            StringBuilder inner = new StringBuilder();
            partitions.forEach((partition, offset) -> {
                if (inner.length() > 0) {
                    inner.append(',');
                }
                inner.append('"').append(partition).append("\":").append(offset);
            });
            out.append(inner).append('}');
        });
        return out.append('}').toString();
    }

    private void write(Map<String, Map<Integer, Long>> start, Map<String, Map<Integer, Long>> end, long pending,
            long ms) {
        // A batch is "what one move of the committed offsets covered"; its id is the committed
        // position's sum, which only grows, so that a restarted process never reuses one.
        long rows = start == null ? 0 : sum(end) - sum(start);
        String line = "{\"query\":\"" + READER + "\",\"batch\":" + sum(end) + ",\"watermark\":null,\"rows\":" + rows
                + (start == null ? "" : ",\"start\":" + json(start)) + ",\"end\":" + json(end)
                + ",\"pending\":" + pending + ",\"duration_ms\":" + ms + "}\n";
        append(line);
    }

    void failed(Throwable error) {
        append("{\"query_failed\":\"" + READER + "\",\"error\":" + Kappa.quote(String.valueOf(error)) + "}\n");
    }

    private synchronized void append(String line) {
        try (Writer out = Files.newBufferedWriter(file, StandardCharsets.UTF_8, StandardOpenOption.CREATE,
                StandardOpenOption.APPEND)) {
            out.write(line);
        } catch (IOException error) {
            System.err.println("lk kstreams: could not append to the progress file " + file + ": " + error);
        }
    }
}
