// End-to-end check of a broker started by scripts/kafka, run as
// `scripts/kafka smoke` (Java single-file source launch against the broker's
// own jars, so it needs no extra downloads).
//
// It exercises exactly what kbatch tests rely on: topic creation, a
// transactional producer (one committed and one aborted transaction), and a
// consumer group reading read_committed and committing offsets.
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class Smoke {
  public static void main(String[] args) throws Exception {
    String bootstrap = args[0];
    String id = UUID.randomUUID().toString().substring(0, 8);
    String topic = "kbatch-smoke-" + id;
    long t0 = System.nanoTime();

    Properties common = new Properties();
    common.put("bootstrap.servers", bootstrap);

    try (Admin admin = Admin.create(common)) {
      admin.createTopics(List.of(new NewTopic(topic, 1, (short) 1))).all().get();
      log(t0, "created topic " + topic);

      Properties pp = new Properties();
      pp.putAll(common);
      pp.put("transactional.id", "kbatch-smoke-" + id);
      pp.put("key.serializer", StringSerializer.class.getName());
      pp.put("value.serializer", StringSerializer.class.getName());
      try (KafkaProducer<String, String> producer = new KafkaProducer<>(pp)) {
        producer.initTransactions();
        producer.beginTransaction();
        producer.send(new ProducerRecord<>(topic, "k1", "hello"));
        producer.send(new ProducerRecord<>(topic, "k2", "world"));
        producer.commitTransaction();
        producer.beginTransaction();
        producer.send(new ProducerRecord<>(topic, "k3", "aborted"));
        producer.abortTransaction();
      }
      log(t0, "produced 1 committed + 1 aborted transaction");

      // Both consumer-group protocols: classic, and KIP-848 "consumer".
      for (String groupProtocol : List.of("classic", "consumer")) {
        String group = "kbatch-smoke-" + id + "-" + groupProtocol;
        Properties cp = new Properties();
        cp.putAll(common);
        cp.put("group.id", group);
        cp.put("group.protocol", groupProtocol);
        cp.put("auto.offset.reset", "earliest");
        cp.put("enable.auto.commit", "false");
        cp.put("isolation.level", "read_committed");
        cp.put("key.deserializer", StringDeserializer.class.getName());
        cp.put("value.deserializer", StringDeserializer.class.getName());
        List<String> got = new ArrayList<>();
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(cp)) {
          consumer.subscribe(List.of(topic));
          long deadline = System.nanoTime() + Duration.ofSeconds(30).toNanos();
          while (got.size() < 2 && System.nanoTime() < deadline) {
            for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(200))) {
              got.add(r.value());
            }
          }
          // One more poll so the aborted batch and markers are skipped too.
          for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(500))) {
            got.add(r.value());
          }
          consumer.commitSync();
        }
        if (!got.equals(List.of("hello", "world"))) {
          throw new AssertionError("expected [hello, world] (read_committed), got " + got);
        }
        log(t0, "group " + group + " (" + groupProtocol + ") consumed " + got);

        Map<TopicPartition, OffsetAndMetadata> committed =
            admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get();
        OffsetAndMetadata off = committed.get(new TopicPartition(topic, 0));
        if (off == null || off.offset() < 2) {
          throw new AssertionError("committed offset missing or too small: " + committed);
        }
        log(t0, "committed offset " + off.offset());
      }

      admin.deleteTopics(List.of(topic)).all().get();
      log(t0, "deleted topic; OK");
    }
  }

  private static void log(long t0, String msg) {
    System.err.printf("[smoke +%.2fs] %s%n", (System.nanoTime() - t0) / 1e9, msg);
  }
}
