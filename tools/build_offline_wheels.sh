#!/usr/bin/env bash
# Build the wheels `fastforec bench --what gpu-check` needs on an offline GPU node.
#
#   tools/build_offline_wheels.sh [OUT]        # default OUT: build/offline_wheels (git-ignored)
#
# Run it on a machine that can reach the package registry, in the project's environment (it
# needs torch to build DeepSpeed without its ops). The node is assumed to have Python 3.12,
# PyTorch, Triton, timm and numpy; it gets:
#   - DeepSpeed built with DS_BUILD_OPS=0: a pure py3-none-any wheel (~2 MB; ZeRO 1/2 with
#     torch's SGD needs no compiled op);
#   - DeepSpeed's dependencies such a node may lack: hjson, pydantic with pydantic-core for
#     cp312 manylinux, annotated-types, typing-inspection, typing-extensions, and the small
#     ones it may have (py-cpuinfo, psutil, msgpack, ninja, tqdm, einops, packaging);
#   - webdataset (+ braceexpand) and rich (+ markdown-it-py, mdurl, pygments) for fastforec;
#   - fastforec's own wheel (pure Python), for its kernels' import name `fastforec_kernels`.
# gpu-check unpacks them into a temporary prefix placed after the node's own packages on
# sys.path, only when an import fails. Nothing is installed on the node itself.
set -euo pipefail

OUT=${1:-build/offline_wheels}
PYTHON=${PYTHON:-python}
TARGET_PY=${TARGET_PY:-3.12}
PLATFORM=${PLATFORM:-manylinux2014_x86_64}
DEEPSPEED=${DEEPSPEED:-deepspeed==0.19.8}
mkdir -p "$OUT"

# DeepSpeed as a pure wheel: no CUDA op is compiled (DS_BUILD_OPS=0), torch comes from here.
DS_BUILD_OPS=0 "$PYTHON" -m pip wheel --no-deps --no-build-isolation -w "$OUT" "$DEEPSPEED"

# The versions of this environment, for the node's Python and platform (binary wheels only).
pins=$("$PYTHON" - <<'PY'
import importlib.metadata as m
names = ["hjson", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions",
         "py-cpuinfo", "psutil", "msgpack", "ninja", "tqdm", "einops", "packaging",
         "webdataset", "braceexpand", "rich", "markdown-it-py", "mdurl", "pygments"]
print(" ".join(f"{n}=={m.version(n)}" for n in names))
PY
)
# shellcheck disable=SC2086
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version "$TARGET_PY" --implementation cp \
    --platform "$PLATFORM" -d "$OUT" $pins

# fastforec itself, from this tree: the folder kernels/ installs as `fastforec_kernels`, which an
# uninstalled tree (the check runs from the repository root) cannot import otherwise.
"$PYTHON" -m pip wheel --no-deps --no-build-isolation -w "$OUT" "$(dirname "$0")/.."

ls -l "$OUT"
du -sh "$OUT"
