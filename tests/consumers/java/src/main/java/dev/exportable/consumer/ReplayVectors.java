package dev.exportable.consumer;

import ai.onnxruntime.OnnxJavaType;
import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OnnxValue;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import ai.onnxruntime.TensorInfo;
import ai.onnxruntime.extensions.OrtxPackage;
import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.DoubleBuffer;
import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import java.nio.LongBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Stream;

/**
 * Replays the test vectors of exportable artifacts (docs/vectors.md) with ONNX Runtime for Java.
 *
 * <pre>java -jar target/replay-vectors.jar ARTIFACT_DIR | ARTIFACTS_DIR ...</pre>
 *
 * Exit status: 0 every case passed, 1 a case failed (or a model did not load or run),
 * 2 a path is not an artifact or its vectors are malformed.
 */
public final class ReplayVectors {
    static final String FORMAT = "exportable.vectors/1";
    static final String CONTRIB = "ai.onnx.contrib";

    /** The input is not what docs/vectors.md describes: exit 2, one line. */
    static final class BadInput extends Exception {
        BadInput(String message) { super(message); }
    }

    public static void main(String[] args) {
        if (args.length == 0 || args[0].startsWith("-")) {
            System.err.println("usage: java -jar replay-vectors.jar ARTIFACT_DIR|ARTIFACTS_DIR ...");
            System.exit(2);
        }
        try {
            List<Path> artifacts = new ArrayList<>();
            for (String arg : args) artifacts.addAll(findArtifacts(Path.of(arg)));
            OrtEnvironment env = OrtEnvironment.getEnvironment();
            System.out.println("onnxruntime " + env.getVersion() + " (java " + jarVersion(OrtEnvironment.class)
                    + "), onnxruntime-extensions " + jarVersion(OrtxPackage.class));
            int[] counts = new int[2]; // passed, failed
            for (Path dir : artifacts) replayArtifact(env, dir, counts);
            // The plain closing line test-log readers understand.
            if (expectedFailures > 0) {
                System.out.println(expectedFailures + " expected failures (known limitations recorded by the exporter)");
            }
            System.out.println((counts[0] - expectedFailures) + " passed, " + counts[1] + " failed");
            System.exit(counts[1] == 0 ? 0 : 1);
        } catch (BadInput e) {
            System.err.println("error: " + e.getMessage());
            System.exit(2);
        }
    }

    static String jarVersion(Class<?> cls) {
        String v = cls.getPackage().getImplementationVersion();
        return v == null ? "unknown" : v;
    }

    /** An artifact directory itself, or every subdirectory of a folder that is one. */
    static List<Path> findArtifacts(Path path) throws BadInput {
        if (Files.isRegularFile(path.resolve("vectors/manifest.json"))) return List.of(path);
        if (!Files.isDirectory(path)) throw new BadInput(path + " is not a directory");
        try (Stream<Path> children = Files.list(path)) {
            List<Path> found = children.filter(p -> Files.isRegularFile(p.resolve("vectors/manifest.json")))
                    .sorted().toList();
            if (found.isEmpty()) {
                throw new BadInput("no artifact at " + path + ": expected " + path.resolve("vectors/manifest.json")
                        + " or subdirectories that have one");
            }
            return found;
        } catch (IOException e) {
            throw new BadInput("cannot list " + path + ": " + e.getMessage());
        }
    }

    static void replayArtifact(OrtEnvironment env, Path dir, int[] counts) throws BadInput {
        Path vectors = dir.resolve("vectors");
        JsonObject manifest = readManifest(vectors.resolve("manifest.json"));
        String name = manifest.has("recipe") ? manifest.get("recipe").getAsString() : dir.getFileName().toString();
        Path model = dir.resolve(manifest.getAsJsonObject("models").get("onnx").getAsString());
        if (!Files.isRegularFile(model)) throw new BadInput("model file " + model + " does not exist");
        checkRecordedHash(manifest, model);
        Set<String> domains = new TreeSet<>();
        manifest.getAsJsonArray("custom_op_domains").forEach(d -> domains.add(d.getAsString()));
        Map<String, Compare.Tolerance> tolerances = readTolerances(manifest.getAsJsonObject("tolerances"));
        JsonArray cases = manifest.getAsJsonArray("cases");
        System.out.println("artifact " + name + " (" + dir + "): " + cases.size() + " cases, custom op domains "
                + (domains.isEmpty() ? "none" : String.join(",", domains)));

        try (OrtSession.SessionOptions options = new OrtSession.SessionOptions()) {
            for (String d : domains) {
                // Only the extensions library we ship with, never a library the model names.
                if (!d.equals(CONTRIB)) throw new OrtException("custom op domain " + d + " has no library here; "
                        + "only " + CONTRIB + " (onnxruntime-extensions) is supported");
            }
            if (domains.contains(CONTRIB)) options.registerCustomOpLibrary(OrtxPackage.getLibraryPath());
            try (OrtSession session = env.createSession(model.toString(), options)) {
                checkMetadata(session, domains);
                for (JsonElement c : cases) {
                    boolean ok = replayCase(env, session, vectors, name, c.getAsJsonObject(), tolerances);
                    counts[ok ? 0 : 1]++;
                }
            }
        } catch (OrtException e) {
            // The artifact does not load or run here: every case fails, with the runtime's reason.
            System.out.println("FAIL " + name + ": " + oneLine(e.getMessage()));
            counts[1] += Math.max(1, cases.size());
        }
    }

    /** The model file must be the one exported: its sha256 as recorded in the manifest's "files"
     *  (docs/vectors.md); a changed file is bad input (exit 2), refused before ONNX Runtime reads it.
     *  A model over 2 GB keeps its weights in model.onnx.data beside it (ONNX Runtime finds it by
     *  itself): when the manifest records that file, it is checked too. */
    static void checkRecordedHash(JsonObject manifest, Path model) throws BadInput {
        checkRecordedFile(manifest, model);
        checkRecordedFile(manifest, model.resolveSibling(model.getFileName() + ".data"));
    }

    static void checkRecordedFile(JsonObject manifest, Path file) throws BadInput {
        JsonObject files = manifest.has("files") ? manifest.getAsJsonObject("files") : null;
        String name = file.getFileName().toString();
        if (files == null || !files.has(name)) return; // exported before hashes were recorded
        String want = files.getAsJsonObject(name).get("sha256").getAsString();
        String got;
        try (var in = Files.newInputStream(file)) {
            var digest = java.security.MessageDigest.getInstance("SHA-256");
            byte[] block = new byte[1 << 20];
            for (int n; (n = in.read(block)) > 0; ) digest.update(block, 0, n);
            got = java.util.HexFormat.of().formatHex(digest.digest());
        } catch (IOException | java.security.NoSuchAlgorithmException e) {
            throw new BadInput("cannot read " + file + ": " + e.getMessage());
        }
        if (!got.equals(want)) throw new BadInput(name + " does not match its recorded sha256 (manifest "
                + want.substring(0, 16) + "..., file " + got.substring(0, 16) + "...); re-export the artifact");
    }

    /** The manifest and the model's metadata_props must agree on the custom op domains. */
    static void checkMetadata(OrtSession session, Set<String> domains) throws OrtException {
        var claimed = session.getMetadata().getCustomMetadataValue("exportable.custom_op_domains");
        if (claimed.isEmpty()) return; // a model not written by exportable: nothing to cross-check
        Set<String> meta = new TreeSet<>();
        for (String d : claimed.get().split(",")) if (!d.isBlank()) meta.add(d.trim());
        if (!meta.equals(domains)) {
            throw new OrtException("model metadata exportable.custom_op_domains=" + meta
                    + " but the manifest says " + domains);
        }
    }

    static boolean replayCase(OrtEnvironment env, OrtSession session, Path vectors, String artifact,
                              JsonObject c, Map<String, Compare.Tolerance> tolerances) throws BadInput {
        String label = artifact + "/" + c.get("name").getAsString();
        // A known limitation of this runtime, recorded at export: reported, not run (some crash the
        // process, e.g. ONNX Runtime 1.29's SIGFPE on an empty batch in an NMS graph).
        if (expectedFailure(label, c)) return true;
        // A case may carry ONNX-specific inputs beside the generic ones (exportable/vectors.py).
        JsonObject inputs = c.getAsJsonObject("inputs");
        if (c.has("inputs_by_format") && c.getAsJsonObject("inputs_by_format").has("onnx")) {
            inputs = c.getAsJsonObject("inputs_by_format").getAsJsonObject("onnx");
        }
        Map<String, Tensor> expected = new LinkedHashMap<>();
        for (var e : c.getAsJsonObject("expected").entrySet()) {
            expected.put(e.getKey(), readTensor(vectors, e.getKey(), e.getValue().getAsJsonObject()));
        }
        Map<String, OnnxTensor> feed = new LinkedHashMap<>();
        List<Compare.Result> results = new ArrayList<>();
        try {
            for (var e : inputs.entrySet()) {
                feed.put(e.getKey(), toOnnx(env, readTensor(vectors, e.getKey(), e.getValue().getAsJsonObject())));
            }
            Set<String> wanted = new LinkedHashSet<>(expected.keySet());
            wanted.retainAll(session.getOutputNames());
            try (OrtSession.Result out = session.run(feed, wanted)) {
                for (var e : expected.entrySet()) {
                    var tol = tolerances.getOrDefault(e.getKey(), Compare.Tolerance.DEFAULT);
                    var value = out.get(e.getKey());
                    results.add(value.isEmpty()
                            ? new Compare.Result(e.getKey(), Double.NaN, null, "the model has no output of this name", List.of())
                            : Compare.compare(e.getKey(), fromOnnx(value.get()), e.getValue(), tol));
                }
            }
        } catch (OrtException e) {
            System.out.println("FAIL " + label + "  " + oneLine(e.getMessage()));
            return expectedFailure(label, c);
        } finally {
            feed.values().forEach(OnnxTensor::close);
        }
        boolean ok = report(label, results);
        if (!ok && hasSupplementary(inputs)) {
            System.out.println("  note: an input string has characters beyond U+FFFF (e.g. emoji); ONNX Runtime Java"
                    + " passes them to the graph as modified UTF-8 (surrogate pairs), see tests/consumers/README.md");
        }
        return ok || expectedFailure(label, c);
    }

    static int expectedFailures = 0;

    /** A case the exporter recorded in advance as a known limitation of this runtime
     * (manifest: case.known_failures.java) is reported as XFAIL, not run and not counted as failed. */
    static boolean expectedFailure(String label, JsonObject c) {
        if (!c.has("known_failures") || !c.getAsJsonObject("known_failures").has("java")) return false;
        System.out.println("XFAIL " + label + ": " + c.getAsJsonObject("known_failures").get("java").getAsString());
        expectedFailures++;
        return true;
    }

    /** ORT Java's String[] tensors carry such characters as modified UTF-8, not UTF-8. */
    static boolean hasSupplementary(JsonObject inputs) {
        for (var e : inputs.entrySet()) {
            JsonArray values = e.getValue().getAsJsonObject().getAsJsonArray("values");
            if (values == null) continue;
            for (JsonElement v : values) {
                if (v.getAsString().codePoints().anyMatch(Character::isSupplementaryCodePoint)) return true;
            }
        }
        return false;
    }

    /** One line per case; for a failure, one line per failing output and a few differing elements. */
    static boolean report(String label, List<Compare.Result> results) {
        boolean ok = results.stream().allMatch(Compare.Result::ok);
        double maxAbs = results.stream().mapToDouble(Compare.Result::maxAbs).filter(d -> !Double.isNaN(d)).max().orElse(0);
        Double cos = results.stream().map(Compare.Result::worstCosine).filter(x -> x != null).min(Double::compare).orElse(null);
        System.out.println((ok ? "PASS " : "FAIL ") + label + "  max_abs_diff=" + num(maxAbs)
                + "  worst_cosine=" + cosine(cos));
        for (Compare.Result r : results) {
            if (r.ok()) continue;
            System.out.println("  " + r.output() + ": " + r.problem() + "  (max_abs_diff=" + num(r.maxAbs())
                    + ", worst_cosine=" + cosine(r.worstCosine()) + ")");
            r.diff().forEach(line -> System.out.println("    " + line));
        }
        return ok;
    }

    /** Three significant digits without trailing zeros, as Go's %.3g prints them. */
    static String num(double d) {
        if (Double.isNaN(d)) return "-";
        if (d == 0) return "0";
        String s = String.format("%.3g", d);
        return s.contains(".") ? s.replaceAll("0+(e|$)", "$1").replaceAll("\\.(e|$)", "$1") : s;
    }

    static String cosine(Double c) {
        return c == null ? "-" : String.format("%.9f", c);
    }

    static String oneLine(String s) {
        return s == null ? "(no message)" : s.replaceAll("\\s+", " ").trim();
    }

    static JsonObject readManifest(Path path) throws BadInput {
        JsonObject m;
        try {
            m = JsonParser.parseString(Files.readString(path, StandardCharsets.UTF_8)).getAsJsonObject();
        } catch (IOException | RuntimeException e) {
            throw new BadInput("cannot read " + path + ": " + oneLine(e.getMessage()));
        }
        String format = m.has("format") ? m.get("format").getAsString() : null;
        if (!FORMAT.equals(format)) throw new BadInput(path + " has format " + format + ", expected " + FORMAT);
        for (String key : List.of("models", "custom_op_domains", "tolerances", "cases")) {
            if (!m.has(key)) throw new BadInput(path + " lacks \"" + key + "\"");
        }
        if (!m.getAsJsonObject("models").has("onnx")) throw new BadInput(path + " names no ONNX model in \"models\"");
        return m;
    }

    static Map<String, Compare.Tolerance> readTolerances(JsonObject json) {
        Map<String, Compare.Tolerance> out = new LinkedHashMap<>();
        for (var e : json.entrySet()) {
            JsonObject t = e.getValue().getAsJsonObject();
            boolean exact = t.has("exact") && t.get("exact").getAsBoolean();
            out.put(e.getKey(), exact ? new Compare.Tolerance(true, 0, 0, null) : new Compare.Tolerance(false,
                    t.get("atol").getAsDouble(), t.get("rtol").getAsDouble(),
                    t.has("min_cosine") && !t.get("min_cosine").isJsonNull() ? t.get("min_cosine").getAsDouble() : null));
        }
        return out;
    }

    /** A manifest tensor entry: numbers from a little-endian file, strings inline. */
    static Tensor readTensor(Path vectors, String name, JsonObject entry) throws BadInput {
        String dtype = entry.get("dtype").getAsString();
        JsonArray dims = entry.getAsJsonArray("shape");
        long[] shape = new long[dims.size()];
        for (int i = 0; i < shape.length; i++) shape[i] = dims.get(i).getAsLong();
        int n = Math.toIntExact(Tensor.count(shape));
        try {
            Tensor.family(dtype);
        } catch (IllegalArgumentException e) {
            throw new BadInput(name + ": " + e.getMessage());
        }
        if (dtype.equals("string")) {
            JsonArray values = entry.getAsJsonArray("values");
            if (values == null || values.size() != n) {
                throw new BadInput(name + ": shape " + Arrays.toString(shape) + " needs " + n + " strings in \"values\"");
            }
            String[] s = new String[n];
            for (int i = 0; i < n; i++) s[i] = values.get(i).getAsString();
            return Tensor.ofStrings(shape, s);
        }
        Path file = vectors.resolve(entry.get("file").getAsString());
        ByteBuffer bytes;
        try {
            bytes = ByteBuffer.wrap(Files.readAllBytes(file)).order(ByteOrder.LITTLE_ENDIAN);
        } catch (IOException e) {
            throw new BadInput(name + ": cannot read " + file + ": " + e.getMessage());
        }
        if (bytes.capacity() != (long) n * Tensor.itemSize(dtype)) {
            throw new BadInput(file + " has " + bytes.capacity() + " bytes, but " + dtype + " "
                    + Arrays.toString(shape) + " needs " + (long) n * Tensor.itemSize(dtype));
        }
        switch (dtype) {
            case "float32", "float64" -> {
                double[] v = new double[n];
                for (int i = 0; i < n; i++) v[i] = dtype.equals("float32") ? bytes.getFloat() : bytes.getDouble();
                return Tensor.ofDoubles(dtype, shape, v);
            }
            default -> {
                long[] v = new long[n];
                for (int i = 0; i < n; i++) {
                    v[i] = switch (dtype) {
                        case "int64" -> bytes.getLong();
                        case "int32" -> bytes.getInt();
                        default -> Byte.toUnsignedLong(bytes.get()); // uint8, bool
                    };
                }
                return Tensor.ofLongs(dtype, shape, v);
            }
        }
    }

    static OnnxTensor toOnnx(OrtEnvironment env, Tensor t) throws OrtException {
        long[] s = t.shape();
        int n = t.size();
        return switch (t.dtype()) {
            case "string" -> OnnxTensor.createTensor(env, t.strings(), s);
            case "float32" -> {
                float[] v = new float[n];
                for (int i = 0; i < n; i++) v[i] = (float) t.doubles()[i];
                yield OnnxTensor.createTensor(env, FloatBuffer.wrap(v), s);
            }
            case "float64" -> OnnxTensor.createTensor(env, DoubleBuffer.wrap(t.doubles()), s);
            case "int64" -> OnnxTensor.createTensor(env, LongBuffer.wrap(t.longs()), s);
            case "int32" -> OnnxTensor.createTensor(env, IntBuffer.wrap(Arrays.stream(t.longs()).mapToInt(Math::toIntExact).toArray()), s);
            default -> { // uint8 and bool: one byte each, told apart by the OnnxJavaType
                ByteBuffer b = ByteBuffer.allocate(n);
                for (long x : t.longs()) b.put((byte) x);
                b.flip();
                yield OnnxTensor.createTensor(env, b, s, t.dtype().equals("bool") ? OnnxJavaType.BOOL : OnnxJavaType.UINT8);
            }
        };
    }

    static Tensor fromOnnx(OnnxValue value) throws OrtException {
        if (!(value instanceof OnnxTensor tensor)) throw new OrtException("output is a " + value.getType() + ", not a tensor");
        TensorInfo info = tensor.getInfo();
        long[] s = info.getShape();
        int n = Math.toIntExact(Tensor.count(s));
        switch (info.onnxType) {
            case ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING -> {
                List<String> flat = new ArrayList<>(n);
                flatten(tensor.getValue(), flat);
                return Tensor.ofStrings(s, flat.toArray(new String[0]));
            }
            case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT -> {
                FloatBuffer b = tensor.getFloatBuffer();
                double[] v = new double[n];
                for (int i = 0; i < n; i++) v[i] = b.get(i);
                return Tensor.ofDoubles("float32", s, v);
            }
            case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE -> {
                double[] v = new double[n];
                tensor.getDoubleBuffer().get(v);
                return Tensor.ofDoubles("float64", s, v);
            }
            case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 -> {
                long[] v = new long[n];
                tensor.getLongBuffer().get(v);
                return Tensor.ofLongs("int64", s, v);
            }
            case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 -> {
                IntBuffer b = tensor.getIntBuffer();
                long[] v = new long[n];
                for (int i = 0; i < n; i++) v[i] = b.get(i);
                return Tensor.ofLongs("int32", s, v);
            }
            case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL -> {
                ByteBuffer b = tensor.getByteBuffer();
                long[] v = new long[n];
                for (int i = 0; i < n; i++) v[i] = Byte.toUnsignedLong(b.get(i));
                boolean bool = info.onnxType == TensorInfo.OnnxTensorType.ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
                return Tensor.ofLongs(bool ? "bool" : "uint8", s, v);
            }
            default -> throw new OrtException("output element type " + info.onnxType + " is not in docs/vectors.md");
        }
    }

    /** getValue() gives strings as nested arrays, one level per dimension. */
    private static void flatten(Object o, List<String> out) {
        if (o instanceof Object[] arr) for (Object x : arr) flatten(x, out);
        else out.add((String) o);
    }

    private ReplayVectors() {}
}
