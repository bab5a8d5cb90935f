package dev.exportable.consumer;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * The comparison rules of docs/vectors.md, measured and judged in one place:
 * equal shapes; exact outputs equal element by element; others within atol + rtol * |expected|
 * (NaN never is) and, with min_cosine, every row's cosine (last axis; rank 1: whole tensor) at
 * least min_cosine, two all-zero rows counting as 1. Mirrors exportable/parity.py.
 */
final class Compare {
    private static final int SHOWN = 5; // differing elements printed per failing output

    /** A tolerance entry of the manifest; a missing entry gets torch.testing's fp32 defaults. */
    record Tolerance(boolean exact, double atol, double rtol, Double minCosine) {
        static final Tolerance DEFAULT = new Tolerance(false, 1e-5, 1.3e-6, null);
    }

    /** What one output measured; {@code problem} is null when it passes. */
    record Result(String output, double maxAbs, Double worstCosine, String problem, List<String> diff) {
        boolean ok() { return problem == null; }
    }

    static Result compare(String output, Tensor actual, Tensor expected, Tolerance tol) {
        List<String> diff = new ArrayList<>();
        if (!Tensor.family(actual.dtype()).equals(Tensor.family(expected.dtype()))) {
            return new Result(output, Double.NaN, null,
                    "dtype " + actual.dtype() + " != expected " + expected.dtype(), diff);
        }
        if (!Arrays.equals(actual.shape(), expected.shape())) {
            return new Result(output, Double.NaN, null, "shape " + Arrays.toString(actual.shape())
                    + " != expected " + Arrays.toString(expected.shape()), diff);
        }
        int n = expected.size();
        boolean floats = expected.doubles() != null;
        double maxAbs = 0;
        int bad = 0;
        long first = -1;
        for (int i = 0; i < n; i++) {
            boolean ok;
            if (!floats) {
                ok = expected.strings() != null ? expected.strings()[i].equals(actual.strings()[i])
                        : expected.longs()[i] == actual.longs()[i];
                if (expected.longs() != null) maxAbs = Math.max(maxAbs, Math.abs((double) expected.longs()[i] - actual.longs()[i]));
            } else {
                double e = expected.doubles()[i], a = actual.doubles()[i], d = Math.abs(a - e);
                maxAbs = Double.isNaN(d) || d > maxAbs ? d : maxAbs;
                ok = tol.exact() ? a == e : d <= tol.atol() + tol.rtol() * Math.abs(e); // false for NaN
            }
            if (!ok) {
                if (bad++ == 0) first = i;
                if (diff.size() < SHOWN) {
                    String gap = floats ? "  |diff| " + ReplayVectors.num(Math.abs(actual.doubles()[i] - expected.doubles()[i])) : "";
                    diff.add(Tensor.index(expected.shape(), i) + "  expected " + expected.show(i)
                            + "  actual " + actual.show(i) + gap);
                }
            }
        }
        Double worst = floats && tol.minCosine() != null && n > 0 ? worstCosine(actual, expected) : null;
        String problem = null;
        if (bad > 0) {
            String rule = tol.exact() || !floats ? "differ" : "exceed atol " + ReplayVectors.num(tol.atol()) + " + rtol " + ReplayVectors.num(tol.rtol());
            problem = bad + "/" + n + " elements " + rule + ", first at " + Tensor.index(expected.shape(), first);
        } else if (worst != null && !(worst >= tol.minCosine())) {
            problem = String.format("worst row cosine %.9f < min_cosine %s", worst, tol.minCosine());
        }
        return new Result(output, maxAbs, worst, problem, diff);
    }

    static double worstCosine(Tensor actual, Tensor expected) {
        long[] shape = expected.shape();
        int n = expected.size();
        int row = shape.length > 1 ? (int) shape[shape.length - 1] : n;
        if (row == 0) return 1.0;
        double worst = 1.0;
        for (int start = 0; start < n; start += row) {
            double dot = 0, na = 0, ne = 0;
            for (int i = start; i < start + row; i++) {
                double a = actual.doubles()[i], e = expected.doubles()[i];
                dot += a * e;
                na += a * a;
                ne += e * e;
            }
            double cos = na == 0 && ne == 0 ? 1.0 : na == 0 || ne == 0 ? 0.0 : dot / (Math.sqrt(na) * Math.sqrt(ne));
            worst = Double.isNaN(cos) ? cos : Math.min(worst, cos);
            if (Double.isNaN(worst)) break;
        }
        return worst;
    }

    private Compare() {}
}
