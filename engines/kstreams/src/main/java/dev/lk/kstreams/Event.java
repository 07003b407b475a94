package dev.lk.kstreams;

import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.math.BigDecimal;
import java.util.Set;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/**
 * One ride event, as much of it as the five queries read, with where it was in the input.
 *
 * <p>The input's JSON form is docs/ride-event.schema.json; {@link #PARSER} reads it and refuses
 * what lk's codec refuses (the record then goes to the dead-letter topic through {@link
 * DeadLetters}). Between tasks (the repartition topics) events travel in a fixed binary form.
 */
final class Event {
    static final byte PING = 0, REQUESTED = 1, ACCEPTED = 2, ARRIVED = 3, PICKED_UP = 4, DROPPED_OFF = 5,
            CANCELLED = 6;
    private static final String[] KINDS = {
        "driver_ping", "ride_requested", "ride_accepted", "driver_arrived", "picked_up", "dropped_off",
        "ride_cancelled"
    };
    private static final Set<String> CANCELLERS = Set.of("rider", "driver", "platform");

    long id;
    byte kind;
    long timeUs;
    long dueNs;
    String zone;
    long latE6;
    long lonE6;
    long driver;
    long fareCents;
    long distanceM;
    /** Where the event was in the input (stamped after the source; kept across repartitions). */
    int partition = -1;
    long offset = -1;

    /** Its event time in Kafka's milliseconds, rounded down. */
    long timeMs() {
        return Math.floorDiv(timeUs, 1000);
    }

    /** The id checksum's mark of this event (docs/engines.md): SplitMix64's finaliser. */
    long mark() {
        long z = id + 0x9E3779B97F4A7C15L;
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    private static final ObjectMapper JSON =
            new ObjectMapper().enable(DeserializationFeature.USE_BIG_DECIMAL_FOR_FLOATS);

    /** Reads an input record; throws what is wrong with it when lk's codec would refuse it. */
    static Event parse(byte[] bytes) {
        JsonNode node;
        try {
            node = JSON.readTree(bytes);
        } catch (IOException error) {
            throw new SerializationException("not JSON: " + error.getMessage());
        }
        if (node == null || !node.isObject()) {
            throw new SerializationException("not a JSON object");
        }
        Event event = new Event();
        event.id = integer(node, "event_id");
        if (event.id <= 0) {
            throw new SerializationException("event_id is not positive");
        }
        String kind = text(node, "kind");
        event.kind = -1;
        for (byte code = 0; code < KINDS.length; code++) {
            if (KINDS[code].equals(kind)) {
                event.kind = code;
            }
        }
        if (event.kind < 0) {
            throw new SerializationException("unknown kind " + kind);
        }
        event.timeUs = integer(node, "event_time_us");
        event.dueNs = integer(node, "due_ns");
        event.zone = text(node, "zone");
        event.latE6 = micro(node, "lat", 90);
        event.lonE6 = micro(node, "lon", 180);
        byte k = event.kind;
        if (k == PING || k == ACCEPTED || k == ARRIVED || k == PICKED_UP || k == DROPPED_OFF) {
            event.driver = positive(node, "driver_id");
        }
        if (k != PING) {
            positive(node, "ride_id");
        }
        if (k == REQUESTED || k == ACCEPTED || k == CANCELLED) {
            positive(node, "rider_id");
        }
        if (k == PING) {
            micro(node, "speed_mps", Double.POSITIVE_INFINITY);
            micro(node, "heading_deg", Double.POSITIVE_INFINITY);
        }
        if (k == DROPPED_OFF) {
            event.fareCents = integer(node, "fare_cents");
            event.distanceM = integer(node, "distance_m");
        }
        if (k == CANCELLED && !CANCELLERS.contains(text(node, "cancelled_by"))) {
            throw new SerializationException("cancelled_by is not rider, driver or platform");
        }
        return event;
    }

    private static JsonNode field(JsonNode node, String name) {
        JsonNode value = node.get(name);
        if (value == null || value.isNull()) {
            throw new SerializationException(name + " is missing");
        }
        return value;
    }

    private static long integer(JsonNode node, String name) {
        JsonNode value = field(node, name);
        if (!value.isIntegralNumber() || !value.canConvertToLong()) {
            throw new SerializationException(name + " is not a 64-bit integer");
        }
        return value.longValue();
    }

    private static long positive(JsonNode node, String name) {
        long value = integer(node, name);
        if (value <= 0) {
            throw new SerializationException(name + " is not positive");
        }
        return value;
    }

    private static String text(JsonNode node, String name) {
        JsonNode value = field(node, name);
        if (!value.isTextual()) {
            throw new SerializationException(name + " is not a string");
        }
        return value.textValue();
    }

    /** A decimal field in millionths (truncated, as lk's fixed point and Spark's cast do). */
    private static long micro(JsonNode node, String name, double bound) {
        JsonNode value = field(node, name);
        if (!value.isNumber()) {
            throw new SerializationException(name + " is not a number");
        }
        BigDecimal decimal = value.decimalValue();
        if (!Double.isInfinite(bound) && decimal.abs().compareTo(BigDecimal.valueOf(bound)) > 0) {
            throw new SerializationException(name + " is out of range");
        }
        return decimal.movePointRight(6).longValue();
    }

    /** The input's deserializer: a record lk's codec refuses throws, for the dead-letter handler. */
    static final class InputDeserializer implements Deserializer<Event> {
        @Override
        public Event deserialize(String topic, byte[] data) {
            if (data == null) {
                throw new SerializationException("a record without a value");
            }
            return parse(data);
        }
    }

    /** Events between tasks: fixed binary fields. */
    static Serde<Event> serde() {
        Serializer<Event> serializer = (topic, event) -> {
            ByteArrayOutputStream bytes = new ByteArrayOutputStream(96);
            try (DataOutputStream out = new DataOutputStream(bytes)) {
                out.writeLong(event.id);
                out.writeByte(event.kind);
                out.writeLong(event.timeUs);
                out.writeLong(event.dueNs);
                out.writeUTF(event.zone);
                out.writeLong(event.latE6);
                out.writeLong(event.lonE6);
                out.writeLong(event.driver);
                out.writeLong(event.fareCents);
                out.writeLong(event.distanceM);
                out.writeInt(event.partition);
                out.writeLong(event.offset);
            } catch (IOException error) {
                throw new UncheckedIOException(error);
            }
            return bytes.toByteArray();
        };
        Deserializer<Event> deserializer = (topic, data) -> {
            Event event = new Event();
            try (DataInputStream in = new DataInputStream(new ByteArrayInputStream(data))) {
                event.id = in.readLong();
                event.kind = in.readByte();
                event.timeUs = in.readLong();
                event.dueNs = in.readLong();
                event.zone = in.readUTF();
                event.latE6 = in.readLong();
                event.lonE6 = in.readLong();
                event.driver = in.readLong();
                event.fareCents = in.readLong();
                event.distanceM = in.readLong();
                event.partition = in.readInt();
                event.offset = in.readLong();
            } catch (IOException error) {
                throw new SerializationException("an event between tasks is cut short", error);
            }
            return event;
        };
        return Serdes.serdeFrom(serializer, deserializer);
    }
}
