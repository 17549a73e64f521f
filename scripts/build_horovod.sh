#!/usr/bin/env bash
# Build horovod 0.28.1 (PyTorch + Gloo, no MPI/TF/MXNet) into a wheel cache, once per machine.
#
#   scripts/build_horovod.sh PYTHON WHEEL_DIR
#
# horovod's last release predates torch 2.x, whose headers need C++17: the PyPI source release is
# patched (CMAKE_CXX_STANDARD 14 -> 17 in two CMakeLists.txt) and built against the torch already
# installed in PYTHON's environment (--no-build-isolation). The system cmake 3.x is used; with the
# cmake 4 wheel, gloo's old cmake_minimum_required needs CMAKE_POLICY_VERSION_MINIMUM=3.5 (set too).
# About 10 minutes on 2 cores, hence the cache: an existing wheel is reused and nothing is built.
set -euo pipefail

python=${1:?usage: build_horovod.sh PYTHON WHEEL_DIR}
wheel_dir=${2:?usage: build_horovod.sh PYTHON WHEEL_DIR}
version=0.28.1
torch_version=$("$python" -c 'import torch; print(torch.__version__.split("+")[0])')
# The wheel links against torch's C++ ABI: one cached wheel per torch version.
wheel_dir="$wheel_dir/torch-$torch_version"
mkdir -p "$wheel_dir"

if ls "$wheel_dir"/horovod-"$version"-*.whl >/dev/null 2>&1; then
    echo "horovod $version wheel cached in $wheel_dir"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building horovod $version for torch $torch_version (about 10 minutes on 2 cores)"
"$python" -m pip download --no-deps --no-binary :all: --no-build-isolation -d "$work" "horovod==$version"
tar -xzf "$work/horovod-$version.tar.gz" -C "$work"
src="$work/horovod-$version"
sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt"

# The system cmake (3.25) first: a cmake 4 wheel in the environment refuses gloo's CMakeLists.
export PATH="/usr/bin:$PATH"
export CMAKE_POLICY_VERSION_MINIMUM=3.5
export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1
export HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
export MAKEFLAGS="-j$(nproc)"
export HOROVOD_BUILD_PARALLELISM="$(nproc)"
"$python" -m pip wheel --no-deps --no-build-isolation -w "$work/dist" "$src"
# Move into place last, so an interrupted build never leaves a half-written wheel in the cache.
mv "$work"/dist/horovod-"$version"-*.whl "$wheel_dir/"
echo "horovod $version wheel written to $wheel_dir"
