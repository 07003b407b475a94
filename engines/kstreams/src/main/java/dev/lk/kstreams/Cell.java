package dev.lk.kstreams;

import java.nio.ByteBuffer;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;

/**
 * One cell of a windowed or session view: counts, sums, the id checksum of its events (a
 * wrapping sum, so that a lost event and a duplicated one both show), and the latest due time.
 * Its state store and changelog hold it in a fixed binary form.
 */
final class Cell {
    long count;
    long latE6Sum;
    long lonE6Sum;
    long fareCentsSum;
    long distanceMSum;
    long ids;
    long maxDueNs;
    long startUs = Long.MAX_VALUE;
    long lastUs = Long.MIN_VALUE;
    long pings;
    long rides;

    Cell add(Event event) {
        count++;
        latE6Sum += event.latE6;
        lonE6Sum += event.lonE6;
        fareCentsSum += event.fareCents;
        distanceMSum += event.distanceM;
        ids += event.mark();
        maxDueNs = Math.max(maxDueNs, event.dueNs);
        startUs = Math.min(startUs, event.timeUs);
        lastUs = Math.max(lastUs, event.timeUs);
        if (event.kind == Event.PING) {
            pings++;
        } else if (event.kind == Event.PICKED_UP) {
            rides++;
        }
        return this;
    }

    /** Two sessions joined by an event between them. */
    static Cell merge(Cell one, Cell two) {
        Cell merged = new Cell();
        merged.count = one.count + two.count;
        merged.latE6Sum = one.latE6Sum + two.latE6Sum;
        merged.lonE6Sum = one.lonE6Sum + two.lonE6Sum;
        merged.fareCentsSum = one.fareCentsSum + two.fareCentsSum;
        merged.distanceMSum = one.distanceMSum + two.distanceMSum;
        merged.ids = one.ids + two.ids;
        merged.maxDueNs = Math.max(one.maxDueNs, two.maxDueNs);
        merged.startUs = Math.min(one.startUs, two.startUs);
        merged.lastUs = Math.max(one.lastUs, two.lastUs);
        merged.pings = one.pings + two.pings;
        merged.rides = one.rides + two.rides;
        return merged;
    }

    private static final int FIELDS = 11;

    static Serde<Cell> serde() {
        return Serdes.serdeFrom(
                (topic, cell) -> {
                    if (cell == null) {
                        return null;
                    }
                    return ByteBuffer.allocate(FIELDS * Long.BYTES)
                            .putLong(cell.count).putLong(cell.latE6Sum).putLong(cell.lonE6Sum)
                            .putLong(cell.fareCentsSum).putLong(cell.distanceMSum).putLong(cell.ids)
                            .putLong(cell.maxDueNs).putLong(cell.startUs).putLong(cell.lastUs)
                            .putLong(cell.pings).putLong(cell.rides).array();
                },
                (topic, data) -> {
                    if (data == null) {
                        return null;
                    }
                    if (data.length != FIELDS * Long.BYTES) {
                        throw new SerializationException("a stored cell of " + data.length + " bytes");
                    }
                    ByteBuffer in = ByteBuffer.wrap(data);
                    Cell cell = new Cell();
                    cell.count = in.getLong();
                    cell.latE6Sum = in.getLong();
                    cell.lonE6Sum = in.getLong();
                    cell.fareCentsSum = in.getLong();
                    cell.distanceMSum = in.getLong();
                    cell.ids = in.getLong();
                    cell.maxDueNs = in.getLong();
                    cell.startUs = in.getLong();
                    cell.lastUs = in.getLong();
                    cell.pings = in.getLong();
                    cell.rides = in.getLong();
                    return cell;
                });
    }
}
