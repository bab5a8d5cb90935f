package main

import (
	"math"
	"strings"
	"testing"
)

func floats(shape []int64, v ...float64) *Tensor {
	return &Tensor{DType: "float32", Shape: shape, Floats: v}
}
func ints(dtype string, shape []int64, v ...int64) *Tensor {
	return &Tensor{DType: dtype, Shape: shape, Ints: v}
}

func TestCompare(t *testing.T) {
	cos := 0.999
	loose := Tolerance{Atol: 1e-5, Rtol: 1e-3, MinCosine: &cos}
	cases := []struct {
		name             string
		actual, expected *Tensor
		tol              Tolerance
		problem          string // substring; "" passes
	}{
		{"within atol+rtol", floats([]int64{2}, 1.0009, 2), floats([]int64{2}, 1, 2), loose, ""},
		{"beyond atol+rtol", floats([]int64{2}, 1.002, 2), floats([]int64{2}, 1, 2), loose, "1/2 elements exceed"},
		{"NaN never passes", floats([]int64{1}, math.NaN()), floats([]int64{1}, math.NaN()), loose, "exceed"},
		{"zero rows have cosine 1", floats([]int64{2, 2}, 0, 0, 1, 1), floats([]int64{2, 2}, 0, 0, 1, 1), loose, ""},
		{"one zero row has cosine 0", floats([]int64{1, 2}, 0, 0), floats([]int64{1, 2}, 1e-6, 0), loose, "cosine 0.0"},
		{"shape", floats([]int64{1, 2}, 1, 2), floats([]int64{2, 1}, 1, 2), loose, "shape [1 2] != expected [2 1]"},
		{"empty batch", floats([]int64{0, 4}), floats([]int64{0, 4}), loose, ""},
		{"ints exact across widths", ints("int32", []int64{2}, 1, 2), ints("int64", []int64{2}, 1, 2), DefaultTolerance, ""},
		{"ints differ", ints("int64", []int64{2}, 1, 3), ints("int64", []int64{2}, 1, 2), DefaultTolerance, "first at [1]"},
		{"bool is not int", ints("bool", []int64{1}, 1), ints("int64", []int64{1}, 1), DefaultTolerance, "dtype bool"},
		{"strings", &Tensor{DType: "string", Shape: []int64{1}, Strings: []string{"a"}},
			&Tensor{DType: "string", Shape: []int64{1}, Strings: []string{"b"}}, Tolerance{Exact: true}, `expected "b"  actual "a"`},
	}
	for _, c := range cases {
		r := Compare("out", c.actual, c.expected, c.tol)
		got := r.Problem + " " + strings.Join(r.Diff, " ")
		if (c.problem == "") != (r.Problem == "") || !strings.Contains(got, c.problem) {
			t.Errorf("%s: problem %q, want %q", c.name, got, c.problem)
		}
	}
}

func TestIndex(t *testing.T) {
	if got := index([]int64{2, 4}, 7); got != "[1, 3]" {
		t.Errorf("index = %s", got)
	}
}
