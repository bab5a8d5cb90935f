package dev.exportable.consumer;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OnnxValue;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtSession;
import ai.onnxruntime.extensions.OrtxPackage;

import java.util.Arrays;
import java.util.Map;

/**
 * Using an artifact from Java: texts in, every output printed.
 * {@code java -cp target/replay-vectors.jar dev.exportable.consumer.Example ARTIFACT_DIR "some text" ...}
 * for an artifact whose single input is a string tensor [batch] (the text recipes).
 */
public final class Example {
    public static void main(String[] args) throws Exception {
        String[] texts = Arrays.copyOfRange(args, 1, args.length);
        OrtEnvironment env = OrtEnvironment.getEnvironment();
        try (OrtSession.SessionOptions options = new OrtSession.SessionOptions()) {
            // Text artifacts tokenize inside the graph with onnxruntime-extensions ops.
            options.registerCustomOpLibrary(OrtxPackage.getLibraryPath());
            try (OrtSession session = env.createSession(args[0] + "/model.onnx", options);
                 OnnxTensor text = OnnxTensor.createTensor(env, texts, new long[] {texts.length});
                 OrtSession.Result result = session.run(Map.of(session.getInputNames().iterator().next(), text))) {
                for (Map.Entry<String, OnnxValue> output : result) {
                    // getValue() gives float[][], long[], String[]... by the output's type and rank.
                    System.out.println(output.getKey() + " = " + Arrays.deepToString(new Object[] {output.getValue().getValue()}));
                }
            }
        }
    }

    private Example() {}
}
