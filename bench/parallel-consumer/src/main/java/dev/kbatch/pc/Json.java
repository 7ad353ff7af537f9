package dev.kbatch.pc;

import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.Map;

/** Minimal JSON writer (no dependency): maps, collections, strings, numbers, booleans, null. */
final class Json {

    private Json() {
    }

    /** Insertion-ordered object builder. */
    static final class Obj extends LinkedHashMap<String, Object> {
        Obj with(String key, Object value) {
            put(key, value);
            return this;
        }
    }

    static Obj obj() {
        return new Obj();
    }

    static String write(Object value) {
        var sb = new StringBuilder();
        write(sb, value, -1, 0);
        return sb.toString();
    }

    /** Pretty form: one object/array element per line, but arrays of plain numbers stay on one line. */
    static String writePretty(Object value) {
        var sb = new StringBuilder();
        write(sb, value, 2, 0);
        return sb.append('\n').toString();
    }

    private static void newline(StringBuilder sb, int indent, int depth) {
        if (indent >= 0) {
            sb.append('\n').append(" ".repeat(indent * depth));
        }
    }

    private static void write(StringBuilder sb, Object v, int indent, int depth) {
        if (v == null) {
            sb.append("null");
        } else if (v instanceof String s) {
            string(sb, s);
        } else if (v instanceof Boolean || v instanceof Integer || v instanceof Long || v instanceof Short) {
            sb.append(v);
        } else if (v instanceof Double d) {
            if (d.isNaN() || d.isInfinite()) {
                sb.append("null");
            } else {
                sb.append(d);
            }
        } else if (v instanceof Number n) {
            sb.append(n);
        } else if (v instanceof Map<?, ?> m) {
            sb.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : m.entrySet()) {
                if (!first) {
                    sb.append(',');
                }
                first = false;
                newline(sb, indent, depth + 1);
                string(sb, String.valueOf(e.getKey()));
                sb.append(indent >= 0 ? ": " : ":");
                write(sb, e.getValue(), indent, depth + 1);
            }
            if (!first) {
                newline(sb, indent, depth);
            }
            sb.append('}');
        } else if (v instanceof Collection<?> c) {
            boolean flat = c.stream().allMatch(x -> x instanceof Number || x instanceof String);
            int childIndent = flat ? -1 : indent;
            sb.append('[');
            boolean first = true;
            for (Object x : c) {
                if (!first) {
                    sb.append(',');
                }
                first = false;
                newline(sb, childIndent, depth + 1);
                write(sb, x, childIndent, depth + 1);
            }
            if (!first) {
                newline(sb, childIndent, depth);
            }
            sb.append(']');
        } else {
            string(sb, v.toString());
        }
    }

    private static void string(StringBuilder sb, String s) {
        sb.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> sb.append("\\\"");
                case '\\' -> sb.append("\\\\");
                case '\n' -> sb.append("\\n");
                case '\r' -> sb.append("\\r");
                case '\t' -> sb.append("\\t");
                default -> {
                    if (c < 0x20) {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
                }
            }
        }
        sb.append('"');
    }
}
