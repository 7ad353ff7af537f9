package dev.kbatch.pc;

import io.confluent.parallelconsumer.PCRetriableException;
import io.confluent.parallelconsumer.ParallelConsumerOptions;
import io.confluent.parallelconsumer.ParallelConsumerOptions.ProcessingOrder;
import io.confluent.parallelconsumer.ParallelStreamProcessor;
import io.confluent.parallelconsumer.offsets.OffsetMapCodecManager.HighestOffsetAndIncompletes;
import io.confluent.parallelconsumer.offsets.PcCodecAccess;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.common.utils.AppInfoParser;

import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Random;
import java.util.Set;
import java.util.SortedSet;
import java.util.TreeSet;
import java.util.UUID;
import java.util.concurrent.ConcurrentSkipListSet;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Runs the real Confluent Parallel Consumer against a real broker. Subcommands:
 *
 * <pre>
 * bench   --bootstrap B --topic T [--group G] --records N [--ordering KEY|PARTITION|UNORDERED]
 *         [--sleep-max-ms 5] [--max-concurrency C] [--fill [--keys K] [--partitions P]] [--timeout-s 600]
 * partial --bootstrap B --topic T [--group G] --records N --fail-every M [--ordering UNORDERED]
 *         [--retry-delay-ms D] [--fill] [--close-immediately] [--timeout-s 120]
 * vectors --out FILE
 * decode  --offset X --metadata S
 * </pre>
 * <p>
 * Every subcommand prints exactly one JSON line on stdout at the end; everything else goes to stderr.
 */
public final class PcHarness {

    /** Options each subcommand accepts (anything else is a usage error, reported before any work). */
    private static final Map<String, Set<String>> OPTIONS = Map.of(
            "bench", Set.of("bootstrap", "topic", "group", "records", "ordering", "sleep-max-ms", "max-concurrency",
                    "timeout-s", "fill", "keys", "partitions"),
            "partial", Set.of("bootstrap", "topic", "group", "records", "fail-every", "ordering", "retry-delay-ms",
                    "timeout-s", "fill", "close-immediately"),
            "vectors", Set.of("out"),
            "decode", Set.of("offset", "metadata"));

    /** The real stdout, reserved for the one JSON result line. */
    private static final PrintStream RESULT = System.out;

    private PcHarness() {
    }

    public static void main(String[] argv) {
        // Anything that prints to stdout by accident (libraries) must not corrupt the JSON line.
        System.setOut(System.err);
        int code;
        try {
            if (argv.length == 0) {
                throw new UsageException("missing subcommand (bench | partial | vectors | decode)");
            }
            Args args = Args.parse(argv, 1);
            Set<String> allowed = OPTIONS.get(argv[0]);
            if (allowed == null) {
                throw new UsageException("unknown subcommand: " + argv[0]);
            }
            args.checkKnown(allowed);
            Json.Obj result = switch (argv[0]) {
                case "bench" -> bench(args);
                case "partial" -> partial(args);
                case "vectors" -> vectors(args);
                case "decode" -> decode(args);
                default -> throw new UsageException("unknown subcommand: " + argv[0]);
            };
            code = Boolean.FALSE.equals(result.get("ok")) ? 1 : 0;
            RESULT.println(Json.write(result));
        } catch (UsageException e) {
            log("usage error: " + e.getMessage());
            RESULT.println(Json.write(Json.obj().with("ok", false).with("error", "usage: " + e.getMessage())));
            code = 2;
        } catch (Throwable e) {
            e.printStackTrace(System.err);
            RESULT.println(Json.write(Json.obj().with("ok", false).with("error", e.toString())));
            code = 1;
        }
        RESULT.flush();
        // PC / Kafka may leave non-daemon threads behind after a failure: do not hang.
        Runtime.getRuntime().halt(code);
    }

    // ------------------------------------------------------------------------------------------------------------
    // bench

    private static Json.Obj bench(Args a) throws Exception {
        String bootstrap = a.req("bootstrap");
        String topic = a.req("topic");
        String group = a.get("group", "pc-bench-" + UUID.randomUUID());
        long records = a.reqLong("records");
        ProcessingOrder ordering = ordering(a.get("ordering", "KEY"));
        int sleepMax = (int) a.getLong("sleep-max-ms", 5);
        Long maxConcurrency = a.optLong("max-concurrency");
        long timeoutS = a.getLong("timeout-s", 600);
        boolean fill = a.flag("fill");
        long keys = a.getLong("keys", records);
        int partitions = (int) a.getLong("partitions", 1);

        Json.Obj fillInfo = null;
        if (fill) {
            fillInfo = fill(bootstrap, topic, records, keys, partitions);
        }

        var count = new AtomicLong();
        // Time spent inside the handler, summed over records: the harness's own measure of what one record costs,
        // so the caller can compute an ideal (records x mean handler time / concurrency) for this JVM's sleep.
        var handlerNs = new AtomicLong();
        var firstNs = new AtomicLong();
        var lastNs = new AtomicLong();
        var done = new CountDownLatch(1);

        long t0 = System.nanoTime();
        var consumer = new KafkaConsumer<String, byte[]>(consumerProps(bootstrap, group));
        var builder = ParallelConsumerOptions.<String, byte[]>builder().consumer(consumer).ordering(ordering);
        if (maxConcurrency != null) {
            builder.maxConcurrency(Math.toIntExact(maxConcurrency));
        }
        var options = builder.build();
        var pc = ParallelStreamProcessor.createEosStreamProcessor(options);
        pc.subscribe(List.of(topic));
        pc.poll(ctx -> {
            long h0 = System.nanoTime();
            firstNs.compareAndSet(0, h0);
            // PC README benchmark (VolumeTests#testTiming): sleep((long) (Math.random() * 5)), i.e. a uniform
            // integer number of ms in [0, sleep-max-ms): 0..4 ms, mean 2.0 ms, for the default 5.
            sleepMs(sleepMax <= 0 ? 0 : ThreadLocalRandom.current().nextInt(sleepMax));
            handlerNs.addAndGet(System.nanoTime() - h0);
            long c = count.addAndGet(ctx.size());
            if (c >= records && lastNs.compareAndSet(0, System.nanoTime())) {
                done.countDown();
            }
        });

        boolean finished = awaitOrFail(done, timeoutS, pc::isClosedOrFailed);
        long t1 = finished ? lastNs.get() : System.nanoTime();
        long c0 = System.nanoTime();
        pc.close();
        double closeS = (System.nanoTime() - c0) / 1e9;

        var out = Json.obj()
                .with("subcommand", "bench")
                .with("ok", finished)
                .with("records", records)
                .with("processed", count.get())
                .with("seconds", round((t1 - t0) / 1e9))
                .with("seconds_first_to_last", firstNs.get() == 0 ? null : round((t1 - firstNs.get()) / 1e9))
                .with("records_per_second", round(count.get() / ((t1 - t0) / 1e9)))
                .with("mean_handler_ms", count.get() == 0 ? null : round(handlerNs.get() / 1e6 / count.get()))
                .with("ordering", ordering.name())
                .with("max_concurrency", options.getMaxConcurrency())
                .with("max_concurrency_default", ParallelConsumerOptions.DEFAULT_MAX_CONCURRENCY)
                .with("commit_mode", options.getCommitMode().name())
                .with("sleep_ms", "uniform integer in [0," + sleepMax + ")")
                .with("close_seconds", round(closeS))
                .with("topic", topic)
                .with("group", group)
                .with("pc_version", pcVersion())
                .with("kafka_clients_version", AppInfoParser.getVersion());
        if (fillInfo != null) {
            out.with("fill", fillInfo);
        }
        if (!finished) {
            out.with("error", pc.isClosedOrFailed() ? "PC closed or failed before all records were processed"
                    : "timed out after " + timeoutS + " s");
        }
        return out;
    }

    // ------------------------------------------------------------------------------------------------------------
    // partial (migration test)

    private static Json.Obj partial(Args a) throws Exception {
        String bootstrap = a.req("bootstrap");
        String topic = a.req("topic");
        String group = a.get("group", "pc-partial-" + UUID.randomUUID());
        long records = a.reqLong("records");
        long failEvery = a.reqLong("fail-every");
        if (failEvery < 1) {
            throw new UsageException("--fail-every must be >= 1");
        }
        ProcessingOrder ordering = ordering(a.get("ordering", "UNORDERED"));
        Long retryDelayMs = a.optLong("retry-delay-ms");
        long timeoutS = a.getLong("timeout-s", 120);
        boolean fill = a.flag("fill");
        boolean closeImmediately = a.flag("close-immediately");

        Json.Obj fillInfo = null;
        if (fill) {
            fillInfo = fill(bootstrap, topic, records, records, 1);
        }
        var tp = new TopicPartition(topic, 0);
        try (Admin admin = admin(bootstrap)) {
            int parts = admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic).partitions().size();
            if (parts != 1) {
                throw new UsageException("partial needs a single-partition topic, " + topic + " has " + parts);
            }
            long end = admin.listOffsets(Map.of(tp, OffsetSpec.latest())).all().get().get(tp).offset();
            if (end != records) {
                throw new UsageException("topic " + topic + " holds " + end + " records, --records says " + records);
            }
        }

        // What must happen: offsets with offset % M == 0 fail forever, all others succeed once.
        var expectedOk = new TreeSet<Long>();
        var expectedFail = new TreeSet<Long>();
        for (long o = 0; o < records; o++) {
            (o % failEvery == 0 ? expectedFail : expectedOk).add(o);
        }

        var processed = new ConcurrentSkipListSet<Long>();
        var duplicates = new AtomicLong();
        var failedAttempts = new AtomicLong();
        var allOk = new CountDownLatch(1);

        var consumer = new KafkaConsumer<String, byte[]>(consumerProps(bootstrap, group));
        var builder = ParallelConsumerOptions.<String, byte[]>builder().consumer(consumer).ordering(ordering);
        if (retryDelayMs != null) {
            builder.defaultMessageRetryDelay(Duration.ofMillis(retryDelayMs));
        }
        var options = builder.build();
        var pc = ParallelStreamProcessor.createEosStreamProcessor(options);
        pc.subscribe(List.of(topic));
        pc.poll(ctx -> {
            for (var rec : ctx.getConsumerRecordsFlattened()) {
                long off = rec.offset();
                if (off % failEvery == 0) {
                    failedAttempts.incrementAndGet();
                    // PCRetriableException: PC retries (after the retry delay) and logs at DEBUG, not ERROR.
                    throw new PCRetriableException("kbatch harness: offset " + off + " always fails");
                }
                if (!processed.add(off)) {
                    duplicates.incrementAndGet();
                }
                if (processed.size() == expectedOk.size()) {
                    allOk.countDown();
                }
            }
        });
        if (expectedOk.isEmpty()) {
            allOk.countDown();
        }

        long t0 = System.nanoTime();
        boolean allProcessed = awaitOrFail(allOk, timeoutS, pc::isClosedOrFailed);
        double processS = (System.nanoTime() - t0) / 1e9;

        // PC commits every commitInterval (5 s by default, asynchronously). Wait until the group's committed
        // offset + metadata, decoded by PC itself, shows exactly the expected state.
        long expectedCommit = expectedFail.isEmpty() ? records : expectedFail.first();
        long expectedHighest = expectedOk.isEmpty() ? -1 : expectedOk.last();
        OffsetAndMetadata beforeClose = null;
        boolean commitMatched = false;
        long w0 = System.nanoTime();
        try (Admin admin = admin(bootstrap)) {
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Math.max(30, timeoutS / 2));
            while (!closeImmediately && allProcessed && !expectedOk.isEmpty() && System.nanoTime() < deadline
                    && !pc.isClosedOrFailed()) {
                beforeClose = committed(admin, group, tp);
                if (commitReflects(beforeClose, expectedCommit, expectedHighest, expectedFail)) {
                    commitMatched = true;
                    break;
                }
                Thread.sleep(200);
            }
        }
        double commitWaitS = (System.nanoTime() - w0) / 1e9;

        long c0 = System.nanoTime();
        pc.close();
        double closeS = (System.nanoTime() - c0) / 1e9;

        OffsetAndMetadata fin;
        try (Admin admin = admin(bootstrap)) {
            fin = committed(admin, group, tp);
        }
        var incomplete = new ArrayList<Long>();
        for (long o = 0; o < records; o++) {
            if (!processed.contains(o)) {
                incomplete.add(o);
            }
        }
        boolean finalMatched = commitReflects(fin, expectedCommit, expectedHighest, expectedFail);
        boolean ok = allProcessed && (expectedOk.isEmpty() || ((commitMatched || closeImmediately) && finalMatched))
                && duplicates.get() == 0 && incomplete.equals(new ArrayList<>(expectedFail));

        String metadata = fin == null ? null : fin.metadata();
        var out = Json.obj()
                .with("subcommand", "partial")
                .with("ok", ok)
                .with("records", records)
                .with("fail_every", failEvery)
                .with("processed", new ArrayList<>(processed))
                .with("incomplete", incomplete)
                .with("committed_offset", fin == null ? null : fin.offset())
                .with("metadata", metadata)
                .with("metadata_length", metadata == null ? null : metadata.length())
                .with("metadata_encoding", PcCodecAccess.encodingOf(metadata))
                .with("decoded_by_pc", decodedJson(fin))
                .with("commit_before_close_matched", closeImmediately ? null : commitMatched)
                .with("close_immediately", closeImmediately)
                .with("final_commit_matched", finalMatched)
                .with("metadata_changed_by_close", beforeClose == null || fin == null
                        || !beforeClose.equals(fin))
                .with("failed_attempts", failedAttempts.get())
                .with("duplicates", duplicates.get())
                .with("seconds_processing", round(processS))
                .with("seconds_commit_wait", round(commitWaitS))
                .with("close_seconds", round(closeS))
                .with("ordering", ordering.name())
                .with("retry_delay_ms", options.getDefaultMessageRetryDelay().toMillis())
                .with("commit_interval_ms", options.getCommitInterval().toMillis())
                .with("commit_mode", options.getCommitMode().name())
                .with("topic", topic)
                .with("group", group)
                .with("pc_version", pcVersion())
                .with("kafka_clients_version", AppInfoParser.getVersion());
        if (fillInfo != null) {
            out.with("fill", fillInfo);
        }
        if (!ok) {
            out.with("error", !allProcessed ? "not all succeeding records were processed in time"
                    : "committed state does not match the expected incomplete set");
        }
        return out;
    }

    private static boolean commitReflects(OffsetAndMetadata om, long expectedCommit, long expectedHighest,
                                          SortedSet<Long> expectedFail) {
        if (om == null || om.offset() != expectedCommit) {
            return false;
        }
        try {
            HighestOffsetAndIncompletes d = PcCodecAccess.decode(om.offset(), om.metadata());
            long highest = d.getHighestSeenOffset().orElse(-1L);
            return highest == expectedHighest
                    && d.getIncompleteOffsets().equals(expectedFail.headSet(expectedHighest + 1));
        } catch (Exception e) {
            return false;
        }
    }

    private static Object decodedJson(OffsetAndMetadata om) {
        if (om == null) {
            return null;
        }
        try {
            HighestOffsetAndIncompletes d = PcCodecAccess.decode(om.offset(), om.metadata());
            return Json.obj()
                    .with("highest_seen_offset", d.getHighestSeenOffset().orElse(null))
                    .with("incompletes", new ArrayList<>(d.getIncompleteOffsets()));
        } catch (Exception e) {
            return Json.obj().with("error", e.toString());
        }
    }

    private static OffsetAndMetadata committed(Admin admin, String group, TopicPartition tp)
            throws InterruptedException, ExecutionException {
        return admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get().get(tp);
    }

    // ------------------------------------------------------------------------------------------------------------
    // vectors

    /** One golden case: the arguments PC passes to its encoder (see OffsetMapCodecManager#encodeOffsetsCompressed). */
    private record Case(String name, String description, long base, long highestSucceeded, SortedSet<Long> incompletes,
                        boolean inFlight) {
    }

    private static SortedSet<Long> set(long... offsets) {
        var s = new TreeSet<Long>();
        for (long o : offsets) {
            s.add(o);
        }
        return s;
    }

    private static SortedSet<Long> range(SortedSet<Long> s, long fromInclusive, long toExclusive) {
        for (long o = fromInclusive; o < toExclusive; o++) {
            s.add(o);
        }
        return s;
    }

    private static List<Case> cases() {
        var cs = new ArrayList<Case>();
        cs.add(new Case("no_incompletes_idle",
                "everything up to 999 succeeded and nothing is in flight: PC commits offset 1000 with NO metadata "
                        + "(empty string); encoder outputs are shown for completeness (length-0 range)",
                1000, 999, set(), false));
        cs.add(new Case("no_incompletes_in_flight",
                "everything up to 999 succeeded, 1000+ polled but in flight: PC still encodes an empty (length-0) "
                        + "range; the usual steady-state commit",
                1000, 999, set(), true));
        cs.add(new Case("one_incomplete",
                "only the committed offset 100 itself is incomplete, 101..150 succeeded",
                100, 150, set(100), true));
        cs.add(new Case("one_incomplete_offset_zero",
                "offset 0 incomplete, 1..7 succeeded", 0, 7, set(0), true));
        cs.add(new Case("few_scattered",
                "a few scattered incompletes", 5000, 5300, set(5000, 5003, 5017, 5018, 5100, 5250, 5299), true));
        cs.add(new Case("adjacent_pair_at_end",
                "incompletes right below the highest succeeded", 42, 60, set(42, 58, 59), true));
        var longRuns = set();
        range(longRuns, 0, 500);
        range(longRuns, 2000, 3000);
        range(longRuns, 7000, 7010);
        cs.add(new Case("long_runs", "long runs of incompletes and completes in 0..9999", 0, 9999, longRuns, true));
        var every10 = set();
        for (long o = 0; o < 1000; o += 10) {
            every10.add(o);
        }
        cs.add(new Case("every_10th_of_1000",
                "offsets divisible by 10 incomplete in 0..999 (the shape of `partial --records 1000 --fail-every 10`)",
                0, 999, every10, true));
        var rnd = new Random(42);
        var random1000 = set(20000);
        while (random1000.size() < 1000) {
            random1000.add(20000 + (long) rnd.nextInt(9999));
        }
        cs.add(new Case("random_1000_of_10000",
                "1000 random incompletes (java.util.Random seed 42) in 20000..29998, highest succeeded 29999",
                20000, 29999, random1000, true));
        var rnd2 = new Random(7);
        var random100 = set(3_000_000L);
        while (random100.size() < 100) {
            random100.add(3_000_000L + rnd2.nextInt(20000));
        }
        cs.add(new Case("random_100_of_20000",
                "100 random incompletes (seed 7) in a 20001-offset range", 3_000_000L, 3_020_000L, random100, true));
        cs.add(new Case("gap_below_base",
                "highest succeeded (480) is below base-1 (e.g. transaction markers): PC raises it to base-1, "
                        + "so the encoded range is empty",
                500, 480, set(), true));
        // 16-bit limits: BitSet V1 length is a signed short (<= 32767 bits); RunLength V1 runs are signed shorts.
        cs.add(new Case("bitset_v1_max_length_32767",
                "range length exactly 32767 (Short.MAX_VALUE): BitSet V1 still possible",
                0, 32766, set(0, 1, 16383, 32765), true));
        cs.add(new Case("bitset_v1_over_length_32768",
                "range length 32768: BitSet V1 impossible, V2 (int length) used",
                0, 32767, set(0, 1, 16383, 32766), true));
        cs.add(new Case("runlength_v1_max_run_32767",
                "one incomplete then a complete run of exactly 32767: RunLength V1 still possible",
                10, 10 + 32767, set(10), true));
        cs.add(new Case("runlength_v1_over_run_32768",
                "one incomplete then a complete run of 32768: RunLength V1 impossible, V2 used",
                10, 10 + 32768, set(10), true));
        cs.add(new Case("runlength_v1_incomplete_run_32768",
                "an incomplete run of 32768 then one complete: RunLength V1 impossible",
                0, 32768, range(set(), 0, 32768), true));
        // Large absolute offsets: encodings are relative to the base, decoders must do 64-bit arithmetic.
        long b31 = (1L << 31) - 5;
        cs.add(new Case("base_near_2pow31",
                "base just below 2^31, incompletes straddle 2^31", b31, b31 + 20,
                set(b31, b31 + 4, b31 + 5, b31 + 6, b31 + 19), true));
        long b32 = (1L << 32) - 3;
        cs.add(new Case("base_near_2pow32",
                "base just below 2^32, incompletes straddle 2^32", b32, b32 + 40,
                set(b32, b32 + 2, b32 + 3, b32 + 30), true));
        long b53 = (1L << 53) + 11;
        cs.add(new Case("base_above_2pow53",
                "base above 2^53 (not exactly representable as a JSON double: parse as i64)", b53, b53 + 9,
                set(b53, b53 + 8), true));
        var compressible = set();
        for (long o = 0; o < 20000; o += 7) {
            compressible.add(100 + o);
        }
        cs.add(new Case("periodic_compressible_20000",
                "every 7th incomplete in a 20000 range: every plain encoding >= 200 bytes, so PC also tries the "
                        + "zstd variants",
                100, 100 + 20000, compressible, true));
        var rnd3 = new Random(99);
        var half = set(0);
        for (long o = 1; o < 28000; o++) {
            if (rnd3.nextBoolean()) {
                half.add(o);
            }
        }
        cs.add(new Case("too_large_stripped",
                "~50% random incompletes (seed 99) over 28001 offsets: even the best encoding is > 4096 base64 "
                        + "chars, so PC commits the offset with NO metadata (and stops taking new records)",
                0, 28000, half, true));
        return cs;
    }

    /** Keeps the golden file small: longer per-encoding strings are written as null (length still given). */
    private static final int MAX_VECTOR_METADATA = 16384;
    /** Longer incomplete lists are written as null; incomplete_ranges always has them. */
    private static final int MAX_VECTOR_INCOMPLETES = 4096;

    /** Sorted offsets as inclusive [first, last] runs. */
    private static List<List<Long>> ranges(SortedSet<Long> offsets) {
        var out = new ArrayList<List<Long>>();
        long first = 0;
        long last = 0;
        boolean open = false;
        for (long o : offsets) {
            if (open && o == last + 1) {
                last = o;
                continue;
            }
            if (open) {
                out.add(List.of(first, last));
            }
            first = o;
            last = o;
            open = true;
        }
        if (open) {
            out.add(List.of(first, last));
        }
        return out;
    }

    private static Json.Obj vectors(Args a) throws Exception {
        Path out = Path.of(a.req("out"));
        var arr = new ArrayList<Object>();
        boolean allOk = true;
        var failures = new ArrayList<String>();
        for (Case c : cases()) {
            long effHighest = Math.max(c.highestSucceeded(), c.base() - 1);
            long length = effHighest - c.base() + 1;
            SortedSet<Long> encoded = new TreeSet<>(c.incompletes().subSet(c.base(), c.base() + length));

            var encs = new ArrayList<Object>();
            for (var e : PcCodecAccess.encodeAll(c.base(), c.highestSucceeded(), c.incompletes(), length <= 4096)) {
                boolean omit = e.metadata().length() > MAX_VECTOR_METADATA;
                var eo = Json.obj()
                        .with("encoding", e.encoding().name())
                        .with("magic", PcCodecAccess.magic(e.encoding()))
                        .with("payload_bytes", e.payload().length)
                        .with("metadata", omit ? null : e.metadata())
                        .with("metadata_length", e.metadata().length());
                if (e.encoding().name().startsWith("ByteArray")) {
                    eo.with("pc_decodes", false);
                } else {
                    HighestOffsetAndIncompletes d = PcCodecAccess.decode(c.base(), e.metadata());
                    boolean match = d.getIncompleteOffsets().equals(encoded)
                            && d.getHighestSeenOffset().orElse(Long.MIN_VALUE) == effHighest;
                    eo.with("pc_decodes", true)
                            .with("decoded_highest_seen", d.getHighestSeenOffset().orElse(null))
                            .with("decoded_matches", match);
                    if (!match) {
                        allOk = false;
                        failures.add(c.name() + "/" + e.encoding());
                    }
                }
                encs.add(eo);
            }

            String committed;
            String committedEncoding = null;
            List<String> tied = List.of();
            boolean stripped = false;
            if (c.incompletes().isEmpty() && !c.inFlight()) {
                committed = "";
            } else {
                var chosen = PcCodecAccess.encodeAsCommitted(c.base(), c.highestSucceeded(), c.incompletes());
                committedEncoding = chosen.encoding().name();
                tied = chosen.tiedWith().stream().map(Enum::name).toList();
                if (chosen.metadata().length() > PcCodecAccess.maxMetadataSize()) {
                    stripped = true;
                    committed = "";
                } else {
                    committed = chosen.metadata();
                }
            }
            HighestOffsetAndIncompletes cd = PcCodecAccess.decode(c.base(), committed);

            var v = Json.obj()
                    .with("name", c.name())
                    .with("description", c.description())
                    .with("pc_version", pcVersion())
                    .with("committed_offset", c.base())
                    .with("highest_succeeded", c.highestSucceeded())
                    .with("encoded_length", length)
                    .with("highest_seen", effHighest)
                    .with("incompletes_count", encoded.size())
                    .with("incompletes", encoded.size() > MAX_VECTOR_INCOMPLETES ? null : new ArrayList<>(encoded))
                    .with("incomplete_ranges", ranges(encoded))
                    .with("committed_metadata", committed)
                    .with("committed_metadata_length", committed.length())
                    .with("committed_encoding", committedEncoding)
                    .with("committed_tied_with", tied)
                    .with("committed_stripped_over_4096", stripped)
                    .with("committed_decoded_highest_seen", cd.getHighestSeenOffset().orElse(null))
                    .with("committed_decoded_incompletes_count", cd.getIncompleteOffsets().size())
                    .with("encodings", encs);
            arr.add(v);
        }
        Files.createDirectories(out.toAbsolutePath().getParent());
        byte[] bytes = Json.writePretty(arr).getBytes(StandardCharsets.UTF_8);
        Files.write(out, bytes);

        var magics = Json.obj();
        for (var e : io.confluent.parallelconsumer.offsets.OffsetEncoding.values()) {
            magics.with(e.name(), PcCodecAccess.magic(e));
        }
        return Json.obj()
                .with("subcommand", "vectors")
                .with("ok", allOk)
                .with("vectors", arr.size())
                .with("file", out.toString())
                .with("bytes", bytes.length)
                .with("decode_mismatches", failures)
                .with("magic_bytes", magics)
                .with("pc_version", pcVersion());
    }

    // ------------------------------------------------------------------------------------------------------------
    // decode

    private static Json.Obj decode(Args a) throws Exception {
        long offset = a.reqLong("offset");
        String metadata = a.get("metadata", "");
        HighestOffsetAndIncompletes d = PcCodecAccess.decode(offset, metadata);
        return Json.obj()
                .with("subcommand", "decode")
                .with("ok", true)
                .with("committed_offset", offset)
                .with("encoding", PcCodecAccess.encodingOf(metadata))
                .with("highest_seen_offset", d.getHighestSeenOffset().orElse(null))
                .with("incompletes", new ArrayList<>(d.getIncompleteOffsets()))
                .with("pc_version", pcVersion());
    }

    // ------------------------------------------------------------------------------------------------------------
    // Kafka helpers

    private static Properties consumerProps(String bootstrap, String group) {
        var p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        p.put(ConsumerConfig.CLIENT_ID_CONFIG, "pc-harness");
        // PC refuses to run with auto commit on: it commits itself (with the offset map in the metadata).
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        return p;
    }

    private static Admin admin(String bootstrap) {
        var p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.CLIENT_ID_CONFIG, "pc-harness-admin");
        return Admin.create(p);
    }

    /** Creates the topic (must not exist) and produces N records, key "key-(i % K)", a 10-byte value. */
    private static Json.Obj fill(String bootstrap, String topic, long records, long keys, int partitions)
            throws Exception {
        if (keys < 1 || partitions < 1) {
            throw new UsageException("--keys and --partitions must be >= 1");
        }
        long t0 = System.nanoTime();
        var tps = new ArrayList<TopicPartition>();
        try (Admin admin = admin(bootstrap)) {
            try {
                admin.createTopics(List.of(new NewTopic(topic, partitions, (short) 1))).all().get();
            } catch (ExecutionException e) {
                if (e.getCause() instanceof TopicExistsException) {
                    throw new UsageException("--fill: topic " + topic + " already exists (use a fresh name)");
                }
                throw e;
            }
            // Wait until every partition has a leader.
            for (int i = 0; i < 100; i++) {
                var d = admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic);
                if (d.partitions().size() == partitions && d.partitions().stream().allMatch(x -> x.leader() != null)) {
                    break;
                }
                Thread.sleep(100);
            }
            for (int i = 0; i < partitions; i++) {
                tps.add(new TopicPartition(topic, i));
            }
        }
        var p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.CLIENT_ID_CONFIG, "pc-harness-fill");
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        try (var producer = new KafkaProducer<String, byte[]>(p)) {
            for (long i = 0; i < records; i++) {
                byte[] value = String.format("%010d", i % 10_000_000_000L).getBytes(StandardCharsets.US_ASCII);
                producer.send(new ProducerRecord<>(topic, "key-" + (i % keys), value));
            }
            producer.flush();
        }
        long total = 0;
        try (Admin admin = admin(bootstrap)) {
            var req = new HashMap<TopicPartition, OffsetSpec>();
            tps.forEach(tp -> req.put(tp, OffsetSpec.latest()));
            for (var r : admin.listOffsets(req).all().get().values()) {
                total += r.offset();
            }
        }
        if (total != records) {
            throw new IllegalStateException("fill: topic holds " + total + " records, expected " + records);
        }
        return Json.obj()
                .with("records", records)
                .with("keys", keys)
                .with("partitions", partitions)
                .with("seconds", round((System.nanoTime() - t0) / 1e9));
    }

    // ------------------------------------------------------------------------------------------------------------
    // misc

    private static boolean awaitOrFail(CountDownLatch latch, long timeoutS, java.util.function.BooleanSupplier failed)
            throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(timeoutS);
        while (System.nanoTime() < deadline) {
            if (latch.await(50, TimeUnit.MILLISECONDS)) {
                return true;
            }
            if (failed.getAsBoolean()) {
                return latch.getCount() == 0;
            }
        }
        return latch.getCount() == 0;
    }

    private static void sleepMs(int ms) {
        if (ms <= 0) {
            return;
        }
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new RuntimeException(e);
        }
    }

    private static ProcessingOrder ordering(String s) {
        try {
            return ProcessingOrder.valueOf(s.toUpperCase());
        } catch (IllegalArgumentException e) {
            throw new UsageException("--ordering must be KEY, PARTITION or UNORDERED, not " + s);
        }
    }

    private static double round(double d) {
        // Microseconds: a wide run at high concurrency lasts only tens of milliseconds.
        return Math.round(d * 1e6) / 1e6;
    }

    private static String pcVersionCache;

    /** PC's version, from the pom.properties Maven puts in its jar. */
    static synchronized String pcVersion() {
        if (pcVersionCache == null) {
            var props = new Properties();
            String res = "/META-INF/maven/io.confluent.parallelconsumer/parallel-consumer-core/pom.properties";
            try (InputStream in = ParallelStreamProcessor.class.getResourceAsStream(res)) {
                if (in != null) {
                    props.load(in);
                }
            } catch (IOException ignored) {
                // fall through
            }
            pcVersionCache = props.getProperty("version", "unknown");
        }
        return pcVersionCache;
    }

    static void log(String msg) {
        System.err.println("[pc-harness] " + msg);
    }

    static final class UsageException extends RuntimeException {
        UsageException(String msg) {
            super(msg);
        }
    }

    /** {@code --key value} (or {@code --key=value}) pairs and bare {@code --flag}s. */
    static final class Args {
        private static final Set<String> FLAGS = Set.of("fill", "close-immediately");
        private final Map<String, String> values = new HashMap<>();

        static Args parse(String[] argv, int from) {
            var a = new Args();
            for (int i = from; i < argv.length; i++) {
                String k = argv[i];
                if (!k.startsWith("--") || k.length() == 2) {
                    throw new UsageException("expected --option, got: " + k);
                }
                k = k.substring(2);
                int eq = k.indexOf('=');
                if (eq > 0) {
                    a.values.put(k.substring(0, eq), k.substring(eq + 1));
                } else if (FLAGS.contains(k)) {
                    a.values.put(k, "true");
                } else {
                    if (i + 1 >= argv.length) {
                        throw new UsageException("--" + k + " needs a value");
                    }
                    a.values.put(k, argv[++i]);
                }
            }
            return a;
        }

        String get(String k, String dflt) {
            return values.getOrDefault(k, dflt);
        }

        String req(String k) {
            String v = get(k, null);
            if (v == null) {
                throw new UsageException("--" + k + " is required");
            }
            return v;
        }

        Long optLong(String k) {
            String v = get(k, null);
            try {
                return v == null ? null : Long.parseLong(v);
            } catch (NumberFormatException e) {
                throw new UsageException("--" + k + " must be an integer, not " + v);
            }
        }

        long getLong(String k, long dflt) {
            Long v = optLong(k);
            return v == null ? dflt : v;
        }

        long reqLong(String k) {
            req(k);
            return optLong(k);
        }

        boolean flag(String k) {
            return Boolean.parseBoolean(get(k, "false"));
        }

        void checkKnown(Set<String> allowed) {
            var unknown = new TreeSet<>(values.keySet());
            unknown.removeAll(allowed);
            if (!unknown.isEmpty()) {
                throw new UsageException("unknown option(s): --" + String.join(", --", unknown));
            }
        }
    }
}
