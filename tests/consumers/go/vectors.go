package main

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// The manifest of docs/vectors.md.
type Manifest struct {
	Format          string               `json:"format"`
	Recipe          string               `json:"recipe"`
	Models          map[string]string    `json:"models"`
	CustomOpDomains *[]string            `json:"custom_op_domains"`
	Tolerances      map[string]Tolerance `json:"tolerances"`
	Cases           []Case               `json:"cases"`
	// Files: every model file the export wrote, with its sha256 and size (exportable/integrity.py).
	Files map[string]struct {
		SHA256 string `json:"sha256"`
		Bytes  int64  `json:"bytes"`
	} `json:"files"`
}

// CheckRecordedHash refuses (exit 2) a model file that differs from the sha256 the export
// recorded, before ONNX Runtime reads it; an artifact made before hashes were recorded has none.
// A model over 2 GB keeps its weights in model.onnx.data beside it (ONNX Runtime finds it by
// itself): when the manifest records that file, it is checked too.
func CheckRecordedHash(m *Manifest, model string) error {
	for _, file := range []string{model, model + ".data"} {
		if err := checkRecordedFile(m, file); err != nil {
			return err
		}
	}
	return nil
}

func checkRecordedFile(m *Manifest, path string) error {
	want, ok := m.Files[filepath.Base(path)]
	if !ok {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return badf("cannot read %s: %v", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return badf("cannot read %s: %v", path, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want.SHA256 {
		return badf("%s does not match its recorded sha256 (manifest %.16s..., file %.16s...); re-export the artifact",
			filepath.Base(path), want.SHA256, got)
	}
	return nil
}

type Case struct {
	Name     string           `json:"name"`
	Inputs   map[string]Entry `json:"inputs"`
	Expected map[string]Entry `json:"expected"`
	// A case may carry ONNX-specific inputs beside the generic ones (exportable/vectors.py).
	InputsByFormat map[string]map[string]Entry `json:"inputs_by_format"`
	// KnownFailures: runtime -> why the exporter knows this runtime cannot reproduce the case.
	KnownFailures map[string]string `json:"known_failures"`
}

type Entry struct {
	DType  string   `json:"dtype"`
	Shape  []int64  `json:"shape"`
	File   string   `json:"file"`
	Values []string `json:"values"`
}

type Tolerance struct {
	Exact     bool     `json:"exact"`
	Atol      float64  `json:"atol"`
	Rtol      float64  `json:"rtol"`
	MinCosine *float64 `json:"min_cosine"`
}

// DefaultTolerance is torch.testing's fp32 default, for an output the manifest does not list.
var DefaultTolerance = Tolerance{Atol: 1e-5, Rtol: 1.3e-6}

// Tensor holds one tensor decoded into exactly one slice: Ints for integers and booleans
// (int64 must not go through float64), Floats for floats, Strings for strings.
type Tensor struct {
	DType   string
	Shape   []int64
	Ints    []int64
	Floats  []float64
	Strings []string
}

// BadInput is a path or vectors that are not what docs/vectors.md describes: exit 2.
type BadInput struct{ msg string }

func (e BadInput) Error() string { return e.msg }

func badf(format string, args ...any) error { return BadInput{fmt.Sprintf(format, args...)} }

// family groups dtypes whose values compare with each other across widths.
func family(dtype string) string {
	switch dtype {
	case "float32", "float64":
		return "float"
	case "int64", "int32", "uint8":
		return "int"
	case "bool", "string":
		return dtype
	}
	return ""
}

func itemSize(dtype string) int {
	switch dtype {
	case "float64", "int64":
		return 8
	case "float32", "int32":
		return 4
	}
	return 1 // uint8, bool
}

func count(shape []int64) int {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return int(n)
}

func (t *Tensor) Len() int {
	switch {
	case t.Strings != nil:
		return len(t.Strings)
	case t.Floats != nil:
		return len(t.Floats)
	}
	return len(t.Ints)
}

// ReadManifest reads and checks dir/vectors/manifest.json.
func ReadManifest(dir string) (*Manifest, error) {
	path := filepath.Join(dir, "vectors", "manifest.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, badf("cannot read %s: %v", path, err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, badf("cannot parse %s: %v", path, err)
	}
	if m.Format != "exportable.vectors/1" {
		return nil, badf("%s has format %q, expected \"exportable.vectors/1\"", path, m.Format)
	}
	if m.Models["onnx"] == "" || m.CustomOpDomains == nil || m.Cases == nil {
		return nil, badf("%s lacks models.onnx, custom_op_domains or cases", path)
	}
	if m.Recipe == "" {
		m.Recipe = filepath.Base(dir)
	}
	return &m, nil
}

// ReadTensor decodes a manifest entry: numbers from a little-endian file, strings inline.
func ReadTensor(vectorsDir, name string, e Entry) (*Tensor, error) {
	if family(e.DType) == "" {
		return nil, badf("%s: unsupported dtype %q (docs/vectors.md allows float32, float64, int64, "+
			"int32, uint8, bool, string)", name, e.DType)
	}
	n := count(e.Shape)
	t := &Tensor{DType: e.DType, Shape: e.Shape}
	if e.DType == "string" {
		if len(e.Values) != n {
			return nil, badf("%s: shape %v needs %d strings in \"values\", found %d", name, e.Shape, n, len(e.Values))
		}
		t.Strings = e.Values
		return t, nil
	}
	path := filepath.Join(vectorsDir, e.File)
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, badf("%s: cannot read %s: %v", name, path, err)
	}
	if len(raw) != n*itemSize(e.DType) {
		return nil, badf("%s has %d bytes, but %s %v needs %d", path, len(raw), e.DType, e.Shape, n*itemSize(e.DType))
	}
	le := binary.LittleEndian
	switch e.DType {
	case "float32", "float64":
		t.Floats = make([]float64, n)
		for i := range t.Floats {
			if e.DType == "float32" {
				t.Floats[i] = float64(math.Float32frombits(le.Uint32(raw[4*i:])))
			} else {
				t.Floats[i] = math.Float64frombits(le.Uint64(raw[8*i:]))
			}
		}
	default:
		t.Ints = make([]int64, n)
		for i := range t.Ints {
			switch e.DType {
			case "int64":
				t.Ints[i] = int64(le.Uint64(raw[8*i:]))
			case "int32":
				t.Ints[i] = int64(int32(le.Uint32(raw[4*i:])))
			default: // uint8, bool
				t.Ints[i] = int64(raw[i])
			}
		}
	}
	return t, nil
}

// FindArtifacts returns path itself when it is an artifact directory, else its subdirectories
// that are.
func FindArtifacts(path string) ([]string, error) {
	isArtifact := func(p string) bool {
		st, err := os.Stat(filepath.Join(p, "vectors", "manifest.json"))
		return err == nil && st.Mode().IsRegular()
	}
	if isArtifact(path) {
		return []string{path}, nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, badf("%s is not a directory", path)
	}
	var found []string
	for _, e := range entries {
		if p := filepath.Join(path, e.Name()); e.IsDir() && isArtifact(p) {
			found = append(found, p)
		}
	}
	if len(found) == 0 {
		return nil, badf("no artifact at %s: expected %s or subdirectories that have one",
			path, filepath.Join(path, "vectors", "manifest.json"))
	}
	return found, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// index turns a row-major flat index into a multi-index, e.g. 7 in [2 4] -> [1, 3].
func index(shape []int64, flat int) string {
	idx := make([]string, len(shape))
	f := int64(flat)
	for d := len(shape) - 1; d >= 0; d-- {
		if shape[d] == 0 {
			idx[d] = "0"
			continue
		}
		idx[d] = fmt.Sprint(f % shape[d])
		f /= shape[d]
	}
	return "[" + strings.Join(idx, ", ") + "]"
}

func (t *Tensor) show(i int) string {
	switch {
	case t.Strings != nil:
		return fmt.Sprintf("%q", t.Strings[i])
	case t.Floats != nil:
		return fmt.Sprintf("%.9g", t.Floats[i])
	case t.DType == "bool":
		return fmt.Sprint(t.Ints[i] != 0)
	}
	return fmt.Sprint(t.Ints[i])
}
