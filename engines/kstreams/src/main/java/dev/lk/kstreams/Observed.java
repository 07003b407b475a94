package dev.lk.kstreams;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.kstream.Window;
import org.apache.kafka.streams.processor.api.ContextualFixedKeyProcessor;
import org.apache.kafka.streams.processor.api.FixedKeyProcessorContext;
import org.apache.kafka.streams.processor.api.FixedKeyRecord;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.SessionStore;

/**
 * An event on its way into one query's aggregation, with the windows that aggregation will drop
 * it from as late.
 *
 * <p>Kafka Streams drops a late event by its own rule: each aggregation keeps the largest
 * timestamp it has seen in its task (its stream time, from -1 when the task starts), and an event
 * no longer counts towards a window that ended at or before the stream time minus the grace
 * period (a session: whose merged session ends before the stream time less the grace period and
 * the inactivity gap). After a repartition, which events
 * reach a task first depends on how the upstream tasks interleaved their writes, so no one outside
 * the task can know its stream time. The observers sit in the same task just before each
 * aggregation, see the same records in the same order, apply the same rule (the session observer
 * asks the aggregation's own store), and declare each drop on the late topic, in the same
 * transaction as the aggregation's output. lk judges the engine against the truth without the
 * declared drops, so a drop the rule does not explain is still a loss, and a declared drop the
 * aggregation counted anyway is a mismatch.
 */
final class Observed {
    final Event event;
    /** The late topic's records for this event, if the aggregation drops it from any window. */
    List<String> late;

    Observed(Event event) {
        this.event = event;
    }

    private void declare(String query, String window) {
        if (late == null) {
            late = new ArrayList<>(1);
        }
        late.add("{\"query\":\"" + query + "\",\"partition\":" + event.partition + ",\"offset\":" + event.offset
                + window + "}");
    }

    /** Before a windowed aggregation (KStreamWindowAggregate's rule). */
    static final class Windows<K> extends ContextualFixedKeyProcessor<K, Event, Observed> {
        private final String query;
        private final TimeWindows windows;
        private long observedStreamTime = -1;

        Windows(String query, TimeWindows windows) {
            this.query = query;
            this.windows = windows;
        }

        @Override
        public void process(FixedKeyRecord<K, Event> record) {
            Observed observed = new Observed(record.value());
            long timestamp = record.timestamp();
            observedStreamTime = Math.max(observedStreamTime, timestamp);
            long closeTime = observedStreamTime - windows.gracePeriodMs();
            for (Map.Entry<Long, ? extends Window> window : windows.windowsFor(timestamp).entrySet()) {
                long end = window.getValue().end();
                if (end <= closeTime) {
                    observed.declare(query, ",\"window_end_us\":" + end * 1000);
                }
            }
            context().forward(record.withValue(observed));
        }
    }

    /** Before a session aggregation (KStreamSessionWindowAggregate's rule, on its own store). */
    static final class Sessions<K> extends ContextualFixedKeyProcessor<K, Event, Observed> {
        private final String query;
        private final String storeName;
        private final long gapMs;
        private final long graceMs;
        private long observedStreamTime = -1;
        private SessionStore<K, ?> store;

        Sessions(String query, String storeName, long gapMs, long graceMs) {
            this.query = query;
            this.storeName = storeName;
            this.gapMs = gapMs;
            this.graceMs = graceMs;
        }

        @Override
        public void init(FixedKeyProcessorContext<K, Observed> context) {
            super.init(context);
            store = context.getStateStore(storeName);
        }

        @Override
        public void process(FixedKeyRecord<K, Event> record) {
            Observed observed = new Observed(record.value());
            long timestamp = record.timestamp();
            observedStreamTime = Math.max(observedStreamTime, timestamp);
            long closeTime = observedStreamTime - graceMs - gapMs;
            // The merged session ends at the event or later: only an event older than the close
            // time can be dropped, and only then is the store asked (a range scan per segment).
            long end = timestamp;
            if (end < closeTime) {
                try (KeyValueIterator<? extends org.apache.kafka.streams.kstream.Windowed<K>, ?> sessions =
                        store.findSessions(record.key(), timestamp - gapMs, timestamp + gapMs)) {
                    while (sessions.hasNext()) {
                        end = Math.max(end, sessions.next().key.window().end());
                    }
                }
            }
            if (end < closeTime) {
                observed.declare(query, "");
            }
            context().forward(record.withValue(observed));
        }
    }
}
