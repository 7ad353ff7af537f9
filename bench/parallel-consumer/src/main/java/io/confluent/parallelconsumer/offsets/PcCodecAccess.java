package io.confluent.parallelconsumer.offsets;

import io.confluent.parallelconsumer.offsets.OffsetMapCodecManager.HighestOffsetAndIncompletes;

import java.util.ArrayList;
import java.util.EnumMap;
import java.util.List;
import java.util.Map;
import java.util.SortedSet;

/**
 * kbatch harness helper. Lives in PC's own package so it can reach the package-private parts of PC's offset codec
 * ({@link OffsetSimultaneousEncoder#addByteBufferEncoder()}, {@link OffsetSimultaneousEncoder#packEncoding},
 * {@link OffsetSimpleSerialisation#base64}). Every byte produced here comes from PC's own classes; nothing is
 * re-implemented.
 */
public final class PcCodecAccess {

    private PcCodecAccess() {
    }

    /** One encoding's output: PC's raw encoder bytes (no magic) and the packed, base64 metadata string. */
    public record Encoded(OffsetEncoding encoding, byte[] payload, String metadata) {
    }

    /** What PC puts in the commit metadata, and the other encodings it may pick instead (same smallest size). */
    public record Chosen(OffsetEncoding encoding, String metadata, int packedBytes, List<OffsetEncoding> tiedWith) {
    }

    /**
     * Runs PC's {@link OffsetSimultaneousEncoder} exactly as {@link OffsetMapCodecManager#encodeOffsetsCompressed}
     * does, but with {@link OffsetSimultaneousEncoder#compressionForced} on (so the zstd variants are produced even
     * when PC would skip them) and, optionally, the (otherwise disabled) ByteArray encoder.
     *
     * @return every encoding PC could produce for this input, in {@link OffsetEncoding} order
     */
    public static List<Encoded> encodeAll(long baseOffset, long highestSucceeded, SortedSet<Long> incompletes,
                                          boolean withByteArray) throws Exception {
        boolean saved = OffsetSimultaneousEncoder.compressionForced;
        OffsetSimultaneousEncoder.compressionForced = true;
        try {
            var enc = new OffsetSimultaneousEncoder(baseOffset, highestSucceeded, incompletes);
            if (withByteArray) {
                enc.addByteBufferEncoder();
            }
            enc.invoke();
            var out = new ArrayList<Encoded>();
            for (Map.Entry<OffsetEncoding, byte[]> e : new EnumMap<>(enc.getEncodingMap()).entrySet()) {
                byte[] packed = enc.packEncoding(new EncodedOffsetPair(e.getKey(), java.nio.ByteBuffer.wrap(e.getValue())));
                out.add(new Encoded(e.getKey(), e.getValue(), OffsetSimpleSerialisation.base64(packed)));
            }
            return out;
        } finally {
            OffsetSimultaneousEncoder.compressionForced = saved;
        }
    }

    /**
     * The string PC commits: {@code base64(packSmallest())}, the same calls as
     * {@link OffsetMapCodecManager#serialiseIncompleteOffsetMapToBase64} (default settings, compression only when no
     * plain encoding is under 200 bytes).
     * <p>
     * PC breaks ties in size non-deterministically: candidates sit in a TreeSet ordered by size only, so the first
     * registered wins, and the plain encoders register in ConcurrentHashMap order of the encoder objects (identity
     * hash codes); compressed ones register after all plain ones. So the candidates are the plain encodings of the
     * smallest size, or, if no plain one has that size, the compressed ones of that size. To keep golden data stable
     * this returns the candidate with the lowest {@link OffsetEncoding} ordinal and lists the others in
     * {@code tiedWith}; it checks that PC's own pick (this run) is one of the candidates.
     */
    public static Chosen encodeAsCommitted(long baseOffset, long highestSucceeded, SortedSet<Long> incompletes)
            throws Exception {
        boolean saved = OffsetSimultaneousEncoder.compressionForced;
        OffsetSimultaneousEncoder.compressionForced = false;
        try {
            var enc = new OffsetSimultaneousEncoder(baseOffset, highestSucceeded, incompletes);
            enc.invoke();
            byte[] pcPacked = enc.packSmallest();
            OffsetEncoding pcChoice = enc.getSortedEncodings().first().getEncoding();

            var all = new EnumMap<>(enc.getEncodingMap());
            int min = all.values().stream().mapToInt(b -> b.length).min().orElseThrow();
            var candidates = new ArrayList<OffsetEncoding>();
            for (var e : all.entrySet()) {
                if (e.getValue().length == min && !e.getKey().name().contains("Compressed")) {
                    candidates.add(e.getKey());
                }
            }
            if (candidates.isEmpty()) {
                for (var e : all.entrySet()) {
                    if (e.getValue().length == min) {
                        candidates.add(e.getKey());
                    }
                }
            }
            if (!candidates.contains(pcChoice) || pcPacked.length != min + 1) {
                throw new IllegalStateException("PC chose " + pcChoice + " (" + pcPacked.length
                        + " bytes), not one of " + candidates + " (" + (min + 1) + " bytes)");
            }
            OffsetEncoding canonical = candidates.get(0); // EnumMap order = ordinal order
            byte[] packed = enc.packEncoding(new EncodedOffsetPair(canonical, java.nio.ByteBuffer.wrap(all.get(canonical))));
            return new Chosen(canonical, OffsetSimpleSerialisation.base64(packed), packed.length,
                    List.copyOf(candidates.subList(1, candidates.size())));
        } finally {
            OffsetSimultaneousEncoder.compressionForced = saved;
        }
    }

    /** PC's own decoder, as used when a partition is assigned. */
    public static HighestOffsetAndIncompletes decode(long committedOffset, String metadata) throws OffsetDecodingError {
        return OffsetMapCodecManager.deserialiseIncompleteOffsetMapFromBase64(committedOffset, metadata);
    }

    /** Magic byte of an encoding (the first byte of the base64-decoded metadata). */
    public static int magic(OffsetEncoding e) {
        return e.getMagicByte() & 0xff;
    }

    /** Name of the encoding whose magic byte starts this metadata, or null if empty / unknown. */
    public static String encodingOf(String metadata) {
        if (metadata == null || metadata.isEmpty()) {
            return null;
        }
        try {
            byte[] raw = OffsetSimpleSerialisation.decodeBase64(metadata);
            return raw.length == 0 ? null : OffsetEncoding.decode(raw[0]).name();
        } catch (RuntimeException e) {
            return null;
        }
    }

    /** Mirrors PC's hard limit: a payload longer than this is stripped from the commit (PartitionState). */
    public static int maxMetadataSize() {
        return OffsetMapCodecManager.DefaultMaxMetadataSize;
    }
}
