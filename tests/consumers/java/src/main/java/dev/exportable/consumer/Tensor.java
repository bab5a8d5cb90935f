package dev.exportable.consumer;

import java.util.Arrays;

/**
 * One tensor as docs/vectors.md describes it, decoded into exactly one Java array: {@code longs}
 * for integers and booleans (int64 must not go through double), {@code doubles} for floats,
 * {@code strings} for strings. Both sides of a comparison use this, whatever produced them.
 */
record Tensor(String dtype, long[] shape, long[] longs, double[] doubles, String[] strings) {

    static Tensor ofLongs(String dtype, long[] shape, long[] v) { return new Tensor(dtype, shape, v, null, null); }
    static Tensor ofDoubles(String dtype, long[] shape, double[] v) { return new Tensor(dtype, shape, null, v, null); }
    static Tensor ofStrings(long[] shape, String[] v) { return new Tensor("string", shape, null, null, v); }

    /** float, int, bool or string: values of one family compare with each other, across widths. */
    static String family(String dtype) {
        return switch (dtype) {
            case "float32", "float64" -> "float";
            case "int64", "int32", "uint8" -> "int";
            case "bool", "string" -> dtype;
            default -> throw new IllegalArgumentException("unsupported dtype " + dtype
                    + " (docs/vectors.md allows float32, float64, int64, int32, uint8, bool, string)");
        };
    }

    static int itemSize(String dtype) {
        return switch (dtype) {
            case "float64", "int64" -> 8;
            case "float32", "int32" -> 4;
            case "uint8", "bool" -> 1;
            default -> throw new IllegalArgumentException("no fixed item size for dtype " + dtype);
        };
    }

    static long count(long[] shape) {
        long n = 1;
        for (long d : shape) n *= d;
        return n;
    }

    int size() {
        return longs != null ? longs.length : doubles != null ? doubles.length : strings.length;
    }

    /** Element {@code i} as text, for diffs. */
    String show(int i) {
        if (strings != null) return '"' + strings[i].replace("\"", "\\\"") + '"';
        if (longs != null) return dtype.equals("bool") ? String.valueOf(longs[i] != 0) : String.valueOf(longs[i]);
        return String.format("%.9g", doubles[i]);
    }

    /** Row-major flat index -> multi-index, e.g. 7 in [2, 4] -> [1, 3]. */
    static String index(long[] shape, long flat) {
        long[] idx = new long[shape.length];
        for (int d = shape.length - 1; d >= 0; d--) {
            idx[d] = shape[d] == 0 ? 0 : flat % shape[d];
            flat = shape[d] == 0 ? 0 : flat / shape[d];
        }
        return Arrays.toString(idx);
    }
}
