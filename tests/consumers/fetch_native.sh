#!/usr/bin/env bash
# Extracts the ONNX Runtime and onnxruntime-extensions shared libraries for the Go consumer into
# tests/consumers/native/<platform>/, from the very Maven jars the Java consumer runs on (their
# versions are pinned once, in java/pom.xml), so both consumers replay on the same native code.
# Maven Central is the only registry that ships a standalone libortextensions: the PyPI wheel's
# library needs the Python interpreter's symbols and cannot be loaded from Go.
# Usage: tests/consumers/fetch_native.sh        (MVN_FLAGS=-o to stay offline once ~/.m2 has the jars)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) platform=linux-x64 ;;
  Linux-aarch64) platform=linux-aarch64 ;; # ONNX Runtime only: the extensions jar has no aarch64 build
  *) echo "fetch_native.sh: unsupported platform $(uname -s)-$(uname -m)" >&2; exit 2 ;;
esac
out="$here/native/$platform"
jars="$here/native/jars"
mkdir -p "$out" "$jars"

mvn -q -B -Dstyle.color=never ${MVN_FLAGS:-} -f "$here/java/pom.xml" dependency:copy-dependencies \
  -DincludeArtifactIds=onnxruntime,onnxruntime-extensions -DoutputDirectory="$jars"

ort_jar=$(ls "$jars"/onnxruntime-[0-9]*.jar)
ortx_jar=$(ls "$jars"/onnxruntime-extensions-[0-9]*.jar)
ort_version=$(basename "$ort_jar" .jar); ort_version=${ort_version#onnxruntime-}
ortx_version=$(basename "$ortx_jar" .jar); ortx_version=${ortx_version#onnxruntime-extensions-}

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && jar xf "$ort_jar" "ai/onnxruntime/native/$platform/libonnxruntime.so")
cp "$tmp/ai/onnxruntime/native/$platform/libonnxruntime.so" "$out/libonnxruntime.so"
# The extensions' JNI library doubles as the custom-op library: it exports RegisterCustomOps and
# needs no JVM (what OrtxPackage.getLibraryPath() hands to Java's registerCustomOpLibrary).
if (cd "$tmp" && jar xf "$ortx_jar" "ai/onnxruntime/extensions/native/$platform/libonnxruntime_extensions4j_jni.so") \
   && [ -f "$tmp/ai/onnxruntime/extensions/native/$platform/libonnxruntime_extensions4j_jni.so" ]; then
  cp "$tmp/ai/onnxruntime/extensions/native/$platform/libonnxruntime_extensions4j_jni.so" "$out/libortextensions.so"
else
  echo "fetch_native.sh: onnxruntime-extensions $ortx_version has no $platform build; custom-op artifacts will fail" >&2
fi
printf 'onnxruntime %s maven:com.microsoft.onnxruntime:onnxruntime\nonnxruntime-extensions %s maven:com.microsoft.onnxruntime:onnxruntime-extensions\n' \
  "$ort_version" "$ortx_version" > "$out/versions.txt"
echo "$out: onnxruntime $ort_version, onnxruntime-extensions $ortx_version"
