package main

import (
	"fmt"
	"math"
	"slices"
)

// shown is how many differing elements a failing output prints.
const shown = 5

// Result is what one output measured; Problem is empty when it passes.
type Result struct {
	Output      string
	MaxAbs      float64  // NaN when not measured (dtype or shape mismatch)
	WorstCosine *float64 // nil when the tolerance has no min_cosine
	Problem     string
	Diff        []string
}

// Compare applies the rules of docs/vectors.md, as exportable/parity.py does: equal shapes;
// exact outputs equal element by element; others within atol + rtol*|expected| (NaN never is)
// and, with min_cosine, every row's cosine (last axis; rank 1: whole tensor) >= min_cosine,
// two all-zero rows counting as 1.
func Compare(output string, actual, expected *Tensor, tol Tolerance) Result {
	r := Result{Output: output, MaxAbs: math.NaN()}
	if family(actual.DType) != family(expected.DType) {
		r.Problem = fmt.Sprintf("dtype %s != expected %s", actual.DType, expected.DType)
		return r
	}
	if !slices.Equal(actual.Shape, expected.Shape) {
		r.Problem = fmt.Sprintf("shape %v != expected %v", actual.Shape, expected.Shape)
		return r
	}
	floats := expected.Floats != nil
	r.MaxAbs = 0
	bad, first := 0, -1
	for i := 0; i < expected.Len(); i++ {
		var ok bool
		gap := ""
		switch {
		case expected.Strings != nil:
			ok = actual.Strings[i] == expected.Strings[i]
		case !floats:
			ok = actual.Ints[i] == expected.Ints[i]
			r.MaxAbs = math.Max(r.MaxAbs, math.Abs(float64(actual.Ints[i])-float64(expected.Ints[i])))
		default:
			a, e := actual.Floats[i], expected.Floats[i]
			d := math.Abs(a - e)
			r.MaxAbs = math.Max(r.MaxAbs, d) // NaN stays NaN
			if tol.Exact {
				ok = a == e
			} else {
				ok = d <= tol.Atol+tol.Rtol*math.Abs(e) // false for NaN
			}
			gap = fmt.Sprintf("  |diff| %.3g", d)
		}
		if ok {
			continue
		}
		if bad == 0 {
			first = i
		}
		bad++
		if len(r.Diff) < shown {
			r.Diff = append(r.Diff, fmt.Sprintf("%s  expected %s  actual %s%s",
				index(expected.Shape, i), expected.show(i), actual.show(i), gap))
		}
	}
	if floats && tol.MinCosine != nil && expected.Len() > 0 {
		c := worstCosine(actual, expected)
		r.WorstCosine = &c
	}
	switch {
	case bad > 0:
		rule := "differ"
		if floats && !tol.Exact {
			rule = fmt.Sprintf("exceed atol %.3g + rtol %.3g", tol.Atol, tol.Rtol)
		}
		r.Problem = fmt.Sprintf("%d/%d elements %s, first at %s", bad, expected.Len(), rule, index(expected.Shape, first))
	case r.WorstCosine != nil && !(*r.WorstCosine >= *tol.MinCosine):
		r.Problem = fmt.Sprintf("worst row cosine %.9f < min_cosine %g", *r.WorstCosine, *tol.MinCosine)
	}
	return r
}

func worstCosine(actual, expected *Tensor) float64 {
	n := expected.Len()
	row := n
	if len(expected.Shape) > 1 {
		row = int(expected.Shape[len(expected.Shape)-1])
	}
	worst := 1.0
	if row == 0 {
		return worst
	}
	for start := 0; start < n; start += row {
		var dot, na, ne float64
		for i := start; i < start+row; i++ {
			a, e := actual.Floats[i], expected.Floats[i]
			dot, na, ne = dot+a*e, na+a*a, ne+e*e
		}
		cos := 0.0
		switch {
		case na == 0 && ne == 0:
			cos = 1
		case na != 0 && ne != 0:
			cos = dot / (math.Sqrt(na) * math.Sqrt(ne))
		}
		if math.IsNaN(cos) {
			return cos
		}
		worst = math.Min(worst, cos)
	}
	return worst
}
