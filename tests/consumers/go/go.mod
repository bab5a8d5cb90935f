module exportable/consumers/go

go 1.23

require github.com/yalue/onnxruntime_go v1.36.0
