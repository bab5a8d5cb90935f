// Command replay-vectors replays the test vectors of exportable artifacts (docs/vectors.md)
// with ONNX Runtime through github.com/yalue/onnxruntime_go.
//
//	replay-vectors [-ort LIB] [-ortx LIB] ARTIFACT_DIR|ARTIFACTS_DIR ...
//
// The shared libraries come from -ort/-ortx, else $ORT_LIB/$ORTX_LIB, else native/<platform>/
// as ../fetch_native.sh writes it. Exit status: 0 every case passed, 1 a case failed (or a model
// did not load or run), 2 a bad path, malformed vectors or no ONNX Runtime library.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	ort "github.com/yalue/onnxruntime_go"
)

const contrib = "ai.onnx.contrib"

func main() {
	ortLib := flag.String("ort", os.Getenv("ORT_LIB"), "libonnxruntime shared library (default $ORT_LIB, else native/)")
	ortxLib := flag.String("ortx", os.Getenv("ORTX_LIB"), "onnxruntime-extensions custom op library (default $ORTX_LIB, else native/)")
	flag.IntVar(&soakCalls, "soak", 0, "after the replay, run the cases this many more times from -goroutines goroutines sharing one session")
	flag.IntVar(&soakGoroutines, "goroutines", 8, "goroutines for -soak")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: replay-vectors [-ort LIB] [-ortx LIB] ARTIFACT_DIR|ARTIFACTS_DIR ...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	passed, failed, err := run(flag.Args(), *ortLib, *ortxLib)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(2)
	}
	if expectedFailures > 0 {
		fmt.Printf("%d expected failures (known limitations recorded by the exporter)\n", expectedFailures)
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed) // the plain closing line log readers know
	if failed > 0 {
		os.Exit(1)
	}
}

func run(paths []string, ortLib, ortxLib string) (passed, failed int, err error) {
	var artifacts []string
	for _, p := range paths {
		found, err := FindArtifacts(p)
		if err != nil {
			return 0, 0, err
		}
		artifacts = append(artifacts, found...)
	}
	if ortLib == "" {
		ortLib = findNative("libonnxruntime.so")
	}
	if ortxLib == "" {
		ortxLib = findNative("libortextensions.so")
	}
	if ortLib == "" {
		return 0, 0, badf("no ONNX Runtime library: pass -ort or set ORT_LIB, or run tests/consumers/fetch_native.sh")
	}
	ort.SetSharedLibraryPath(ortLib)
	if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
		return 0, 0, badf("cannot load ONNX Runtime from %s: %v", ortLib, err)
	}
	defer ort.DestroyEnvironment()
	fmt.Printf("onnxruntime %s (%s), onnxruntime-extensions %s (%s)\n",
		ort.GetVersion(), ortLib, nativeVersion(ortxLib, "onnxruntime-extensions"), orNone(ortxLib))

	for _, dir := range artifacts {
		p, f, err := replayArtifact(dir, ortxLib)
		if err != nil {
			return 0, 0, err
		}
		passed, failed = passed+p, failed+f
	}
	return passed, failed, nil
}

func replayArtifact(dir, ortxLib string) (passed, failed int, err error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return 0, 0, err
	}
	model := filepath.Join(dir, m.Models["onnx"])
	if _, err := os.Stat(model); err != nil {
		return 0, 0, badf("model file %s does not exist", model)
	}
	if err := CheckRecordedHash(m, model); err != nil {
		return 0, 0, err
	}
	domains := slices.Sorted(slices.Values(*m.CustomOpDomains))
	fmt.Printf("artifact %s (%s): %d cases, custom op domains %s\n", m.Recipe, dir, len(m.Cases), orNone(strings.Join(domains, ",")))

	s := sessions{model: model}
	defer s.destroy()
	if s.options, err = sessionOptions(domains, ortxLib); err == nil {
		err = s.checkMetadata(m, domains)
	}
	if err != nil { // the artifact does not load here: every case fails, with the reason
		fmt.Printf("FAIL %s: %v\n", m.Recipe, oneLine(err))
		return 0, max(1, len(m.Cases)), nil
	}
	for _, c := range m.Cases {
		if why, known := c.KnownFailures["go"]; known {
			// Recorded by the exporter as a limitation of this runtime: reported, not run (some
			// crash the process, e.g. ONNX Runtime 1.29's SIGFPE on an empty batch in an NMS graph).
			fmt.Printf("XFAIL %s/%s: %s\n", m.Recipe, c.Name, why)
			expectedFailures++
			continue
		}
		ok, err := replayCase(&s, filepath.Join(dir, "vectors"), m, c)
		if err != nil {
			return 0, 0, err
		}
		if ok {
			passed++
		} else {
			failed++
		}
	}
	if soakCalls > 0 {
		if ok, err := soak(&s, dir, m, soakGoroutines, soakCalls); err != nil {
			return 0, 0, err
		} else if !ok {
			failed++
		}
	}
	return passed, failed, nil
}

var expectedFailures int

var soakCalls, soakGoroutines int

// quietPasses: a soak (-soak) prints only failing cases.
var quietPasses bool

func sessionOptions(domains []string, ortxLib string) (*ort.SessionOptions, error) {
	options, err := ort.NewSessionOptions()
	if err != nil {
		return nil, err
	}
	for _, d := range domains {
		// Only the extensions library we ship with, never a library the model names.
		if d != contrib {
			return options, fmt.Errorf("custom op domain %s has no library here; only %s (onnxruntime-extensions) is supported", d, contrib)
		}
		if ortxLib == "" {
			return options, fmt.Errorf("the model needs onnxruntime-extensions: pass -ortx or set ORTX_LIB, or run tests/consumers/fetch_native.sh")
		}
		if err := options.RegisterCustomOpsLibrary(ortxLib); err != nil {
			return options, fmt.Errorf("cannot register %s: %w", ortxLib, err)
		}
	}
	return options, nil
}

// sessions keeps one session per set of input and output names, so a model loads once per
// artifact however many cases it has.
type sessions struct {
	model   string
	options *ort.SessionOptions
	byNames map[string]*ort.DynamicAdvancedSession
}

func (s *sessions) get(inputs, outputs []string) (*ort.DynamicAdvancedSession, error) {
	key := strings.Join(inputs, ",") + "->" + strings.Join(outputs, ",")
	if sess, ok := s.byNames[key]; ok {
		return sess, nil
	}
	sess, err := ort.NewDynamicAdvancedSession(s.model, inputs, outputs, s.options)
	if err != nil {
		return nil, err
	}
	if s.byNames == nil {
		s.byNames = map[string]*ort.DynamicAdvancedSession{}
	}
	s.byNames[key] = sess
	return sess, nil
}

// checkMetadata loads the model and checks that its metadata_props agree with the manifest on
// the custom op domains.
func (s *sessions) checkMetadata(m *Manifest, domains []string) error {
	if len(m.Cases) == 0 {
		return nil
	}
	c := m.Cases[0]
	sess, err := s.get(sortedKeys(onnxInputs(c)), sortedKeys(c.Expected))
	if err != nil {
		return err
	}
	meta, err := sess.GetModelMetadata()
	if err != nil {
		return err
	}
	defer meta.Destroy()
	claimed, present, err := meta.LookupCustomMetadataMap("exportable.custom_op_domains")
	if err != nil || !present { // a model not written by exportable: nothing to cross-check
		return err
	}
	var fromMeta []string
	for _, d := range strings.Split(claimed, ",") {
		if d = strings.TrimSpace(d); d != "" {
			fromMeta = append(fromMeta, d)
		}
	}
	slices.Sort(fromMeta)
	if !slices.Equal(fromMeta, domains) {
		return fmt.Errorf("model metadata exportable.custom_op_domains=%v but the manifest says %v", fromMeta, domains)
	}
	return nil
}

func (s *sessions) destroy() {
	for _, sess := range s.byNames {
		sess.Destroy()
	}
	if s.options != nil {
		s.options.Destroy()
	}
}

func onnxInputs(c Case) map[string]Entry {
	if in, ok := c.InputsByFormat["onnx"]; ok {
		return in
	}
	return c.Inputs
}

func replayCase(s *sessions, vectorsDir string, m *Manifest, c Case) (bool, error) {
	label := m.Recipe + "/" + c.Name
	inNames, outNames := sortedKeys(onnxInputs(c)), sortedKeys(c.Expected)
	expected := map[string]*Tensor{}
	for _, name := range outNames {
		t, err := ReadTensor(vectorsDir, name, c.Expected[name])
		if err != nil {
			return false, err
		}
		expected[name] = t
	}
	inputs := make([]ort.Value, 0, len(inNames))
	outputs := make([]ort.Value, len(outNames)) // nil: onnxruntime_go allocates them
	defer func() {
		for _, v := range slices.Concat(inputs, outputs) {
			if v != nil {
				v.Destroy()
			}
		}
	}()
	fail := func(err error) (bool, error) {
		fmt.Printf("FAIL %s  %s\n", label, oneLine(err))
		return false, nil
	}
	for _, name := range inNames {
		t, err := ReadTensor(vectorsDir, name, onnxInputs(c)[name])
		if err != nil {
			return false, err
		}
		v, err := toOrt(t)
		if err != nil {
			return fail(fmt.Errorf("input %s: %w", name, err))
		}
		inputs = append(inputs, v)
	}
	sess, err := s.get(inNames, outNames)
	if err != nil {
		return fail(err)
	}
	if err := sess.Run(inputs, outputs); err != nil {
		return fail(err)
	}
	var results []Result
	for i, name := range outNames {
		tol, ok := m.Tolerances[name]
		if !ok {
			tol = DefaultTolerance
		}
		actual, err := fromOrt(outputs[i])
		if err != nil {
			return fail(fmt.Errorf("output %s: %w", name, err))
		}
		results = append(results, Compare(name, actual, expected[name], tol))
	}
	return report(label, results), nil
}

// report prints one line per case; for a failure, one line per failing output and a few
// differing elements.
func report(label string, results []Result) bool {
	ok, maxAbs := true, 0.0

	var worst *float64
	for _, r := range results {
		ok = ok && r.Problem == ""
		if r.MaxAbs == r.MaxAbs { // skip NaN: not measured
			maxAbs = max(maxAbs, r.MaxAbs)
		}
		if r.WorstCosine != nil && (worst == nil || *r.WorstCosine < *worst) {
			worst = r.WorstCosine
		}
	}
	status := "PASS"
	if ok && quietPasses {
		return true
	}
	if !ok {
		status = "FAIL"
	}
	fmt.Printf("%s %s  max_abs_diff=%s  worst_cosine=%s\n", status, label, num(maxAbs), cosine(worst))
	for _, r := range results {
		if r.Problem == "" {
			continue
		}
		fmt.Printf("  %s: %s  (max_abs_diff=%s, worst_cosine=%s)\n", r.Output, r.Problem, num(r.MaxAbs), cosine(r.WorstCosine))
		for _, line := range r.Diff {
			fmt.Println("    " + line)
		}
	}
	return ok
}

func num(d float64) string {
	switch {
	case d != d:
		return "-"
	case d == 0:
		return "0"
	}
	return fmt.Sprintf("%.3g", d)
}

func cosine(c *float64) string {
	if c == nil {
		return "-"
	}
	return fmt.Sprintf("%.9f", *c)
}

func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// platform names the folder of native/ as the Maven jars name theirs.
func platform() string {
	arch := map[string]string{"amd64": "x64", "arm64": "aarch64"}[runtime.GOARCH]
	return runtime.GOOS + "-" + arch
}

// findNative looks for a library that fetch_native.sh extracted: beside a binary built in
// tests/consumers/go, or from the usual working directories.
func findNative(name string) string {
	bases := []string{"native", "../native", "tests/consumers/native"}
	if exe, err := os.Executable(); err == nil {
		bases = append([]string{filepath.Join(filepath.Dir(exe), "..", "native")}, bases...)
	}
	for _, base := range bases {
		p := filepath.Join(base, platform(), name)
		if _, err := os.Stat(p); err == nil {
			abs, _ := filepath.Abs(p)
			return abs
		}
	}
	return ""
}

// nativeVersion reads the versions.txt that fetch_native.sh writes beside the libraries: the
// extensions library has no version entry point of its own.
func nativeVersion(lib, pkg string) string {
	data, err := os.ReadFile(filepath.Join(filepath.Dir(lib), "versions.txt"))
	if lib == "" || err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == pkg {
			return f[1]
		}
	}
	return "unknown"
}

var errRank0 = errors.New("onnxruntime_go cannot make rank-0 (scalar) tensors")

func toOrt(t *Tensor) (ort.Value, error) {
	shape := ort.NewShape(t.Shape...)
	if len(shape) == 0 {
		return nil, errRank0
	}
	switch t.DType {
	case "string":
		st, err := ort.NewStringTensor(shape)
		if err == nil {
			err = st.SetContents(t.Strings)
		}
		return st, err
	case "float32":
		return ort.NewTensor(shape, convert[float32](t.Floats))
	case "float64":
		return ort.NewTensor(shape, t.Floats)
	case "int64":
		return ort.NewTensor(shape, t.Ints)
	case "int32":
		return ort.NewTensor(shape, convert[int32](t.Ints))
	case "uint8":
		return ort.NewTensor(shape, convert[uint8](t.Ints))
	case "bool":
		b := make([]bool, len(t.Ints))
		for i, x := range t.Ints {
			b[i] = x != 0
		}
		return ort.NewTensor(shape, b)
	}
	return nil, fmt.Errorf("unsupported dtype %s", t.DType)
}

func fromOrt(v ort.Value) (*Tensor, error) {
	shape := []int64(v.GetShape())
	switch v := v.(type) {
	case *ort.StringTensor:
		s, err := v.GetContents()
		return &Tensor{DType: "string", Shape: shape, Strings: s}, err
	case *ort.Tensor[float32]:
		return &Tensor{DType: "float32", Shape: shape, Floats: convert[float64](v.GetData())}, nil
	case *ort.Tensor[float64]:
		return &Tensor{DType: "float64", Shape: shape, Floats: slices.Clone(v.GetData())}, nil
	case *ort.Tensor[int64]:
		return &Tensor{DType: "int64", Shape: shape, Ints: slices.Clone(v.GetData())}, nil
	case *ort.Tensor[int32]:
		return &Tensor{DType: "int32", Shape: shape, Ints: convert[int64](v.GetData())}, nil
	case *ort.Tensor[uint8]:
		return &Tensor{DType: "uint8", Shape: shape, Ints: convert[int64](v.GetData())}, nil
	case *ort.Tensor[bool]:
		ints := make([]int64, len(v.GetData()))
		for i, b := range v.GetData() {
			if b {
				ints[i] = 1
			}
		}
		return &Tensor{DType: "bool", Shape: shape, Ints: ints}, nil
	}
	return nil, fmt.Errorf("a %s value of element type %d is not in docs/vectors.md", v.GetONNXType(), v.DataType())
}

type number interface {
	~float32 | ~float64 | ~int32 | ~int64 | ~uint8
}

func convert[To, From number](in []From) []To {
	out := make([]To, len(in))
	for i, x := range in {
		out[i] = To(x)
	}
	return out
}
