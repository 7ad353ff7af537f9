package dev.kbatch.debezium;

import io.debezium.embedded.Connect;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.RecordChangeEvent;
import io.debezium.engine.format.ChangeEventFormat;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.connect.header.Header;
import org.apache.kafka.connect.source.SourceRecord;

/**
 * The Debezium side of `kbatch bench outbox`: Debezium's embedded engine running the
 * PostgreSQL connector (pgoutput) with the outbox event router, handing every routed record
 * to a plain KafkaProducer (acks=all) and counting acknowledgements.
 *
 * <p>Protocol (stdout, one JSON object a line): {@code {"event":"ready"}} once the connector
 * task has started (its replication slot exists, so every row committed from now on will be
 * streamed); then {@code {"event":"done",...}} once {@code --rows} records are acknowledged by
 * the broker, or {@code {"event":"error",...}} and exit 1. Logs go to stderr.
 *
 * <p>Delivery per engine batch is what Debezium Server's Kafka sink does: send every record,
 * wait for every acknowledgement, then mark the batch processed — the same fire-all,
 * await-each shape as kbatch's relay, so the comparison is of the pipelines, not of a
 * fire-and-forget shortcut.
 */
public final class DebeziumPeer {
  private DebeziumPeer() {}

  public static void main(String[] argv) throws Exception {
    // Before any logger exists: Debezium is chatty at INFO and stdout is our protocol.
    System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
    System.setProperty("org.slf4j.simpleLogger.logFile", "System.err");
    Map<String, String> a = parse(argv);
    String bootstrap = need(a, "bootstrap");
    String topic = need(a, "topic");
    String table = need(a, "table");
    long rows = Long.parseLong(need(a, "rows"));
    int timeoutS = Integer.parseInt(a.getOrDefault("timeout-s", "600"));
    String slot = need(a, "slot");

    Properties p = new Properties();
    p.setProperty("name", "kbatch-bench-" + slot);
    p.setProperty("connector.class", "io.debezium.connector.postgresql.PostgresConnector");
    // A bench run starts from a fresh slot; nothing to resume, so offsets stay in memory.
    p.setProperty("offset.storage", "org.apache.kafka.connect.storage.MemoryOffsetBackingStore");
    p.setProperty("offset.flush.interval.ms", "60000");
    p.setProperty("database.hostname", need(a, "pg-host"));
    p.setProperty("database.port", need(a, "pg-port"));
    p.setProperty("database.user", need(a, "pg-user"));
    p.setProperty("database.password", need(a, "pg-password"));
    p.setProperty("database.dbname", need(a, "pg-db"));
    p.setProperty("topic.prefix", "kbatch");
    p.setProperty("plugin.name", "pgoutput");
    p.setProperty("slot.name", slot);
    p.setProperty("slot.drop.on.stop", "true");
    p.setProperty("publication.name", slot + "_pub");
    p.setProperty("publication.autocreate.mode", "filtered");
    p.setProperty("table.include.list", "public." + table);
    // The outbox router only routes inserts; rows already present are not events.
    p.setProperty("snapshot.mode", "no_data");
    p.setProperty("max.batch.size", a.getOrDefault("max-batch-size", "2048"));
    p.setProperty("max.queue.size", a.getOrDefault("max-queue-size", "8192"));
    p.setProperty("poll.interval.ms", "10");
    p.setProperty("transforms", "outbox");
    p.setProperty("transforms.outbox.type", "io.debezium.transforms.outbox.EventRouter");
    p.setProperty("transforms.outbox.route.topic.replacement", topic);

    Properties pp = new Properties();
    pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    pp.put(ProducerConfig.ACKS_CONFIG, "all");
    pp.put(ProducerConfig.LINGER_MS_CONFIG, a.getOrDefault("linger-ms", "5"));
    pp.put(ProducerConfig.BATCH_SIZE_CONFIG, a.getOrDefault("batch-bytes", "1048576"));
    pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
    pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
    KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(pp);

    AtomicLong acked = new AtomicLong();
    AtomicLong firstSeen = new AtomicLong(0);
    AtomicLong lastAck = new AtomicLong(0);
    AtomicReference<Throwable> failure = new AtomicReference<>();
    CountDownLatch done = new CountDownLatch(1);

    DebeziumEngine<RecordChangeEvent<SourceRecord>> engine =
        DebeziumEngine.create(ChangeEventFormat.of(Connect.class))
            .using(p)
            .using(
                new DebeziumEngine.ConnectorCallback() {
                  @Override
                  public void taskStarted() {
                    emit("{\"event\":\"ready\"}");
                  }
                })
            .using(
                (success, message, error) -> {
                  if (!success) {
                    failure.compareAndSet(null, error != null ? error : new RuntimeException(message));
                    done.countDown();
                  }
                })
            .notifying(
                (records, committer) -> {
                  if (firstSeen.get() == 0) firstSeen.compareAndSet(0, System.nanoTime());
                  List<Future<RecordMetadata>> sent = new ArrayList<>(records.size());
                  for (RecordChangeEvent<SourceRecord> r : records) {
                    SourceRecord sr = r.record();
                    if (sr.value() == null) continue; // tombstones: none expected, never counted
                    RecordHeaders headers = new RecordHeaders();
                    for (Header h : sr.headers()) {
                      headers.add(h.key(), bytes(h.value()));
                    }
                    sent.add(
                        producer.send(
                            new ProducerRecord<>(sr.topic(), null, bytes(sr.key()), bytes(sr.value()), headers),
                            (md, e) -> {
                              if (e != null) {
                                failure.compareAndSet(null, e);
                                done.countDown();
                              } else {
                                lastAck.set(System.nanoTime());
                                if (acked.incrementAndGet() >= rows) done.countDown();
                              }
                            }));
                  }
                  for (Future<RecordMetadata> f : sent) {
                    try {
                      f.get();
                    } catch (Exception e) {
                      throw new InterruptedException("delivery failed: " + e);
                    }
                  }
                  for (RecordChangeEvent<SourceRecord> r : records) committer.markProcessed(r);
                  committer.markBatchFinished();
                })
            .build();

    ExecutorService ex = Executors.newSingleThreadExecutor();
    ex.execute(engine);
    boolean finished = done.await(timeoutS, TimeUnit.SECONDS);
    int code = 0;
    if (failure.get() != null) {
      emit("{\"event\":\"error\",\"message\":" + quote(String.valueOf(failure.get())) + "}");
      code = 1;
    } else if (!finished) {
      emit("{\"event\":\"error\",\"message\":" + quote("timed out after " + timeoutS + " s with "
          + acked.get() + " of " + rows + " acknowledged") + "}");
      code = 1;
    } else {
      double secs = (lastAck.get() - firstSeen.get()) / 1e9;
      emit(String.format(java.util.Locale.ROOT,
          "{\"event\":\"done\",\"delivered\":%d,\"elapsed_s\":%.6f,\"msg_per_s\":%.1f}",
          acked.get(), secs, acked.get() / secs));
    }
    engine.close();
    producer.close();
    ex.shutdown();
    ex.awaitTermination(30, TimeUnit.SECONDS);
    System.exit(code);
  }

  private static byte[] bytes(Object v) {
    if (v == null) return null;
    if (v instanceof byte[] b) return b;
    if (v instanceof ByteBuffer bb) {
      byte[] out = new byte[bb.remaining()];
      bb.duplicate().get(out);
      return out;
    }
    return v.toString().getBytes(StandardCharsets.UTF_8);
  }

  private static synchronized void emit(String line) {
    System.out.println(line);
    System.out.flush();
  }

  private static String quote(String s) {
    return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n") + "\"";
  }

  private static String need(Map<String, String> a, String k) {
    String v = a.get(k);
    if (v == null) {
      System.err.println("missing --" + k);
      System.exit(2);
    }
    return v;
  }

  private static Map<String, String> parse(String[] argv) {
    Map<String, String> m = new HashMap<>();
    for (int i = 0; i < argv.length; i++) {
      if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
        System.err.println("bad argument: " + argv[i] + " (expected --name value pairs)");
        System.exit(2);
      }
      m.put(argv[i].substring(2), argv[++i]);
    }
    return m;
  }
}
