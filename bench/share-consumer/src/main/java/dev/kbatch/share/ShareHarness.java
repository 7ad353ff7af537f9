package dev.kbatch.share;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.ShareGroupDescription;
import org.apache.kafka.clients.consumer.AcknowledgeType;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaShareConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.errors.GroupIdNotFoundException;
import org.apache.kafka.common.errors.WakeupException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.common.utils.internals.AppInfoParser;

import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.BitSet;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;

/**
 * Kafka's own queues (share groups, KIP-932) on the benchmark of {@code kbatch bench consumer}: N records on one
 * partition, each handled by sleeping a whole number of ms uniform in [0, sleep-max-ms), at a total concurrency C.
 *
 * <pre>
 * bench --bootstrap B --topic T --records N --concurrency C [--sleep-max-ms 5] [--max-members 200]
 *       [--records-per-worker M] [--lock-limit 2000] [--group G] [--timeout-s 600]
 * </pre>
 *
 * <h2>Design: K share consumers, each with W worker threads, K x W = C</h2>
 * What a user deploys for queue semantics is what KafkaShareConsumer's own documentation recommends: a thread per
 * consumer, each processing what its poll returned. So C consumers with one thread each, as long as the broker
 * lets the group have C members; {@code group.share.max.size} is 200 by default (at most 1,000), so beyond that
 * the harness uses the fewest worker threads per consumer that keeps K within the limit (W the smallest divisor of
 * C with C / W &lt;= max-members): 16 and 64 run as 16 and 64 consumers, 256 as 128 x 2, 1,024 as 128 x 8.
 * <p>
 * Each consumer uses explicit acknowledgement (each record is ACCEPTed after its handler returned, never before)
 * and {@code share.acquire.mode=record_limit} with {@code max.poll.records = W x M}: a consumer holds only what its
 * workers will process next, and the group's in-flight records (C x M) stay within the broker's per-partition
 * limit {@code group.share.partition.max.record.locks} (2,000 by default), beyond which fetches return nothing
 * and the consumers that asked sit idle. M defaults to lock-limit / C (at least 1): every poll is a round trip to
 * the broker that persists the previous acknowledgements (measured 12-50 ms on the 2-core bench machine, against
 * 2-3 ms of handler per record), so the harness takes as many records per poll as the lock limit allows. (In the
 * default {@code batch_optimized} mode a poll returns whole producer batches, hundreds of records here, which one
 * consumer would then process alone.)
 * A share consumer must acknowledge every record of a poll before it polls again, so with W &gt; 1 a consumer
 * waits for its slowest worker before fetching more: that barrier is inherent to the API (the alternative, RENEW
 * acknowledgements on every loop, is meant for records that outlive the 30 s lock, not for 2 ms handlers).
 * <p>
 * Fair start: records handled before every member has joined would time one consumer's ramp, not the group. So the
 * harness creates an empty topic, sets the group's {@code share.isolation.level=read_committed} and
 * {@code share.auto.offset.reset=earliest}, starts all K consumers, waits until the broker lists K members each
 * assigned the partition, and only then produces the N records in one transaction: they become visible at once,
 * as a backlog does for the other contenders. Times run from the first handler call to the N-th completion, like
 * the others; each worker sums its own handler time, reported as {@code mean_handler_ms}.
 * <p>
 * Prints exactly one JSON line on stdout; logs go to stderr.
 */
public final class ShareHarness {

    private static final PrintStream RESULT = System.out;

    private ShareHarness() {
    }

    public static void main(String[] argv) {
        System.setOut(System.err);
        int code;
        try {
            if (argv.length == 0 || !argv[0].equals("bench")) {
                throw new IllegalArgumentException("usage: bench --bootstrap B --topic T --records N --concurrency C"
                        + " [--sleep-max-ms 5] [--max-members 200] [--records-per-worker M] [--lock-limit 2000]"
                        + " [--group G] [--timeout-s 600]");
            }
            Map<String, String> out = bench(args(argv));
            code = "true".equals(out.get("ok")) ? 0 : 1;
            RESULT.println(json(out));
        } catch (IllegalArgumentException e) {
            System.err.println("share-harness: " + e.getMessage());
            RESULT.println(json(Map.of("ok", "false", "error", quote("usage: " + e.getMessage()))));
            code = 2;
        } catch (Throwable e) {
            e.printStackTrace(System.err);
            RESULT.println(json(Map.of("ok", "false", "error", quote(e.toString()))));
            code = 1;
        }
        RESULT.flush();
        // Hundreds of consumers closing one by one would take seconds and measure nothing: stop here.
        Runtime.getRuntime().halt(code);
    }

    private static Map<String, String> bench(Map<String, String> a) throws Exception {
        String bootstrap = req(a, "bootstrap");
        String topic = req(a, "topic");
        long records = Long.parseLong(req(a, "records"));
        int concurrency = Integer.parseInt(req(a, "concurrency"));
        int sleepMax = Integer.parseInt(a.getOrDefault("sleep-max-ms", "5"));
        int maxMembers = Integer.parseInt(a.getOrDefault("max-members", "200"));
        int lockLimit = Integer.parseInt(a.getOrDefault("lock-limit", "2000"));
        String group = a.getOrDefault("group", "share-bench-" + UUID.randomUUID());
        long timeoutS = Long.parseLong(a.getOrDefault("timeout-s", "600"));
        if (concurrency < 1 || maxMembers < 1 || records < 1 || records > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("--concurrency, --max-members and --records must be >= 1");
        }
        int workers = 1;
        while (concurrency % workers != 0 || concurrency / workers > maxMembers) {
            workers++;
        }
        int consumers = concurrency / workers;
        int perWorker = a.containsKey("records-per-worker") ? Integer.parseInt(a.get("records-per-worker"))
                : Math.max(1, lockLimit / concurrency);
        int maxPollRecords = workers * perWorker;

        long tSetup = System.nanoTime();
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap))) {
            admin.createTopics(List.of(new NewTopic(topic, 1, (short) 1))).all().get();
            var groupResource = new ConfigResource(ConfigResource.Type.GROUP, group);
            admin.incrementalAlterConfigs(Map.of(groupResource, List.of(
                    new AlterConfigOp(new ConfigEntry("share.auto.offset.reset", "earliest"), AlterConfigOp.OpType.SET),
                    new AlterConfigOp(new ConfigEntry("share.isolation.level", "read_committed"),
                            AlterConfigOp.OpType.SET)))).all().get();
        }

        var stop = new AtomicBoolean();
        var failure = new AtomicReference<Throwable>();
        var handled = new AtomicLong();
        var handlerNs = new AtomicLong();
        var firstNs = new AtomicLong();
        var lastNs = new AtomicLong();
        var seen = new BitSet((int) records + 1);
        var duplicates = new AtomicLong();
        var threads = new ArrayList<Thread>();
        var shareConsumers = new ArrayList<KafkaShareConsumer<String, byte[]>>();
        for (int i = 0; i < consumers; i++) {
            var c = new KafkaShareConsumer<String, byte[]>(consumerProps(bootstrap, group, i, maxPollRecords),
                    new StringDeserializer(), new ByteArrayDeserializer());
            shareConsumers.add(c);
            var loop = new ConsumerLoop(c, topic, workers, sleepMax, records, stop, failure, handled, handlerNs,
                    firstNs, lastNs, seen, duplicates);
            var t = new Thread(loop, "share-consumer-" + i);
            t.setDaemon(true);
            threads.add(t);
            t.start();
        }
        double setupS = (System.nanoTime() - tSetup) / 1e9;

        long tJoin = System.nanoTime();
        awaitMembers(bootstrap, group, consumers, timeoutS, failure);
        double joinS = (System.nanoTime() - tJoin) / 1e9;

        long tFill = System.nanoTime();
        fillInOneTransaction(bootstrap, topic, records);
        double fillS = (System.nanoTime() - tFill) / 1e9;

        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(timeoutS);
        while (lastNs.get() == 0 && failure.get() == null && System.nanoTime() < deadline) {
            Thread.sleep(1);
        }
        boolean finished = lastNs.get() != 0;
        stop.set(true);
        shareConsumers.forEach(KafkaShareConsumer::wakeup);

        var out = new LinkedHashMap<String, String>();
        out.put("subcommand", quote("bench"));
        out.put("ok", Boolean.toString(finished && failure.get() == null && duplicates.get() == 0));
        out.put("records", Long.toString(records));
        out.put("processed", Long.toString(handled.get()));
        out.put("distinct", Integer.toString(seenCount(seen)));
        out.put("duplicates", Long.toString(duplicates.get()));
        out.put("seconds_first_to_last", finished ? num((lastNs.get() - firstNs.get()) / 1e9) : "null");
        out.put("mean_handler_ms", handled.get() == 0 ? "null" : num(handlerNs.get() / 1e6 / handled.get()));
        out.put("concurrency", Integer.toString(concurrency));
        out.put("consumers", Integer.toString(consumers));
        out.put("workers_per_consumer", Integer.toString(workers));
        out.put("max_poll_records", Integer.toString(maxPollRecords));
        out.put("acknowledgement", quote("explicit, ACCEPT after the handler; share.acquire.mode=record_limit"));
        out.put("sleep_ms", quote("uniform integer in [0," + sleepMax + ")"));
        out.put("setup_seconds", num(setupS));
        out.put("join_seconds", num(joinS));
        out.put("fill_seconds", num(fillS));
        out.put("topic", quote(topic));
        out.put("group", quote(group));
        out.put("kafka_clients_version", quote(AppInfoParser.getVersion()));
        if (failure.get() != null) {
            out.put("error", quote(failure.get().toString()));
        } else if (!finished) {
            out.put("error", quote("timed out after " + timeoutS + " s with " + handled.get() + " handled"));
        } else if (duplicates.get() != 0) {
            out.put("error", quote(duplicates.get() + " records were handled twice"));
        }
        return out;
    }

    /** One share consumer's poll loop; with workers > 1 its batch is spread over its own worker threads. */
    private record ConsumerLoop(KafkaShareConsumer<String, byte[]> consumer, String topic, int workers,
                                int sleepMax, long records, AtomicBoolean stop, AtomicReference<Throwable> failure,
                                AtomicLong handled, AtomicLong handlerNs, AtomicLong firstNs, AtomicLong lastNs,
                                BitSet seen, AtomicLong duplicates) implements Runnable {
        @Override
        public void run() {
            ExecutorService pool = workers > 1 ? Executors.newFixedThreadPool(workers, r -> {
                var t = new Thread(r);
                t.setDaemon(true);
                return t;
            }) : null;
            try {
                consumer.subscribe(List.of(topic));
                while (!stop.get()) {
                    ConsumerRecords<String, byte[]> batch = consumer.poll(Duration.ofMillis(100));
                    if (batch.isEmpty()) {
                        continue;
                    }
                    if (pool == null) {
                        for (var r : batch) {
                            handle(r);
                        }
                    } else {
                        var futures = new ArrayList<Future<?>>(batch.count());
                        for (var r : batch) {
                            futures.add(pool.submit(() -> handle(r)));
                        }
                        for (var f : futures) {
                            f.get();
                        }
                    }
                    // Acknowledged only once handled; sent with the next poll, as a deployed consumer does.
                    for (var r : batch) {
                        consumer.acknowledge(r, AcknowledgeType.ACCEPT);
                    }
                }
            } catch (WakeupException e) {
                // stop requested
            } catch (Throwable e) {
                if (!stop.get()) {
                    failure.compareAndSet(null, e);
                }
            } finally {
                if (pool != null) {
                    pool.shutdownNow();
                }
            }
        }

        private void handle(ConsumerRecord<String, byte[]> r) {
            long h0 = System.nanoTime();
            firstNs.compareAndSet(0, h0);
            int ms = sleepMax <= 0 ? 0 : ThreadLocalRandom.current().nextInt(sleepMax);
            if (ms > 0) {
                try {
                    Thread.sleep(ms);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new RuntimeException(e);
                }
            }
            long h1 = System.nanoTime();
            handlerNs.addAndGet(h1 - h0);
            synchronized (seen) {
                if (seen.get((int) r.offset())) {
                    duplicates.incrementAndGet();
                }
                seen.set((int) r.offset());
            }
            if (handled.incrementAndGet() == records) {
                lastNs.set(h1);
            }
        }
    }

    private static Properties consumerProps(String bootstrap, String group, int i, int maxPollRecords) {
        var p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        p.put(ConsumerConfig.CLIENT_ID_CONFIG, "share-harness-" + i);
        p.put(ConsumerConfig.SHARE_ACKNOWLEDGEMENT_MODE_CONFIG, "explicit");
        p.put(ConsumerConfig.SHARE_ACQUIRE_MODE_CONFIG, "record_limit");
        p.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, Integer.toString(maxPollRecords));
        return p;
    }

    /** Waits until the broker lists `members` members of the share group, each assigned a partition. */
    private static void awaitMembers(String bootstrap, String group, int members, long timeoutS,
                                     AtomicReference<Throwable> failure) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Math.min(timeoutS, 180));
        int ready = 0;
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap))) {
            while (System.nanoTime() < deadline) {
                if (failure.get() != null) {
                    throw new IllegalStateException("a share consumer failed while joining", failure.get());
                }
                try {
                    ShareGroupDescription d = admin.describeShareGroups(List.of(group)).all().get().get(group);
                    ready = (int) d.members().stream()
                            .filter(m -> !m.assignment().topicPartitions().isEmpty())
                            .count();
                    if (ready >= members) {
                        return;
                    }
                } catch (ExecutionException e) {
                    // Until the first member's heartbeat arrives, the group does not exist yet.
                    if (!(e.getCause() instanceof GroupIdNotFoundException)) {
                        throw e;
                    }
                }
                Thread.sleep(100);
            }
        }
        throw new IllegalStateException("only " + ready + " of " + members + " share consumers joined and were"
                + " assigned within the timeout");
    }

    /** Produces the records in one transaction, so a read_committed share group sees all of them at once. */
    private static void fillInOneTransaction(String bootstrap, String topic, long records) {
        var p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.CLIENT_ID_CONFIG, "share-harness-fill");
        p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, "share-harness-fill-" + UUID.randomUUID());
        p.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        try (var producer = new KafkaProducer<String, byte[]>(p)) {
            producer.initTransactions();
            producer.beginTransaction();
            for (long i = 0; i < records; i++) {
                // Key and 10-byte value as in the other contenders' topics.
                byte[] value = String.format("%010d", i).getBytes(StandardCharsets.US_ASCII);
                producer.send(new ProducerRecord<>(topic, "key-" + i, value));
            }
            producer.commitTransaction();
        }
    }

    private static int seenCount(BitSet seen) {
        synchronized (seen) {
            return seen.cardinality();
        }
    }

    private static Map<String, String> args(String[] argv) {
        var m = new HashMap<String, String>();
        for (int i = 1; i < argv.length; i += 2) {
            if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
                throw new IllegalArgumentException("expected --name value, got " + argv[i]);
            }
            m.put(argv[i].substring(2), argv[i + 1]);
        }
        var known = List.of("bootstrap", "topic", "records", "concurrency", "sleep-max-ms", "max-members",
                "records-per-worker", "lock-limit", "group", "timeout-s");
        for (var k : m.keySet()) {
            if (!known.contains(k)) {
                throw new IllegalArgumentException("unknown option --" + k);
            }
        }
        return m;
    }

    private static String req(Map<String, String> a, String k) {
        var v = a.get(k);
        if (v == null) {
            throw new IllegalArgumentException("missing --" + k);
        }
        return v;
    }

    private static String num(double d) {
        return Double.toString(Math.round(d * 1e6) / 1e6);
    }

    private static String quote(String s) {
        var sb = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            switch (ch) {
                case '"' -> sb.append("\\\"");
                case '\\' -> sb.append("\\\\");
                case '\n' -> sb.append("\\n");
                default -> {
                    if (ch < 0x20) {
                        sb.append(String.format("\\u%04x", (int) ch));
                    } else {
                        sb.append(ch);
                    }
                }
            }
        }
        return sb.append('"').toString();
    }

    /** Values are already JSON literals (numbers, booleans, null or quoted strings). */
    private static String json(Map<String, String> m) {
        var sb = new StringBuilder("{");
        for (var e : m.entrySet()) {
            if (sb.length() > 1) {
                sb.append(',');
            }
            sb.append(quote(e.getKey())).append(':').append(e.getValue());
        }
        return sb.append('}').toString();
    }
}
