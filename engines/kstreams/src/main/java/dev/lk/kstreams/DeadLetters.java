package dev.lk.kstreams;

import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.streams.errors.DeserializationExceptionHandler;
import org.apache.kafka.streams.errors.ErrorHandlerContext;

/**
 * Records the input's deserializer refuses go to the dead-letter topic, as lk reads them: one
 * JSON object with the record's partition and offset, the reason and the record itself. The
 * handler's records are sent by the task's producer, so under exactly_once_v2 they are in the
 * same transaction as the offsets that passed over the record.
 */
public final class DeadLetters implements DeserializationExceptionHandler {
    /** The property that names the dead-letter topic. */
    static final String TOPIC = "lk.dead.letter.topic";

    private String topic;

    @Override
    public void configure(Map<String, ?> configs) {
        topic = (String) configs.get(TOPIC);
    }

    @Override
    public Response handleError(ErrorHandlerContext context, ConsumerRecord<byte[], byte[]> record, Exception error) {
        String text = record.value() == null ? "" : new String(record.value(), StandardCharsets.UTF_8);
        String value = "{\"partition\":" + record.partition() + ",\"offset\":" + record.offset() + ",\"error\":"
                + Kappa.quote(String.valueOf(error.getMessage())) + ",\"record\":" + Kappa.quote(text) + "}";
        byte[] key = (record.partition() + "/" + record.offset()).getBytes(StandardCharsets.UTF_8);
        return Response.resume(List.of(new ProducerRecord<>(topic, key, value.getBytes(StandardCharsets.UTF_8))));
    }
}
