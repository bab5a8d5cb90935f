// Using an artifact from Go: texts in, every output printed.
//
//	ORT_LIB=.../libonnxruntime.so ORTX_LIB=.../libortextensions.so go run ./example ARTIFACT_DIR "some text" ...
//
// for an artifact whose single input is a string tensor [batch] (the text recipes).
package main

import (
	"fmt"
	"os"

	ort "github.com/yalue/onnxruntime_go"
)

func main() {
	model, texts := os.Args[1]+"/model.onnx", os.Args[2:]
	ort.SetSharedLibraryPath(os.Getenv("ORT_LIB"))
	check(ort.InitializeEnvironment())
	defer ort.DestroyEnvironment()
	options, err := ort.NewSessionOptions()
	check(err)
	// Text artifacts tokenize inside the graph with onnxruntime-extensions ops.
	check(options.RegisterCustomOpsLibrary(os.Getenv("ORTX_LIB")))
	inputs, outputs, err := ort.GetInputOutputInfoWithOptions(model, options)
	check(err)
	var names []string
	for _, o := range outputs {
		names = append(names, o.Name)
	}
	session, err := ort.NewDynamicAdvancedSession(model, []string{inputs[0].Name}, names, options)
	check(err)
	text, err := ort.NewStringTensor(ort.NewShape(int64(len(texts))))
	check(err)
	check(text.SetContents(texts))
	results := make([]ort.Value, len(names)) // nil: allocated by Run, typed by the model
	check(session.Run([]ort.Value{text}, results))
	for i, r := range results {
		switch v := r.(type) {
		case *ort.Tensor[float32]:
			fmt.Println(names[i], v.GetShape(), v.GetData())
		case *ort.Tensor[int64]:
			fmt.Println(names[i], v.GetShape(), v.GetData())
		case *ort.StringTensor:
			s, err := v.GetContents()
			check(err)
			fmt.Printf("%s %v %q\n", names[i], v.GetShape(), s)
		default:
			fmt.Println(names[i], v.GetShape(), "element type", v.DataType())
		}
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
