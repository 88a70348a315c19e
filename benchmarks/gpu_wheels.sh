#!/usr/bin/env bash
# Wheels that the lent NVIDIA H200's image lacks (or holds in versions our code does not run with), for
# benchmarks/gpu.sh, which installs whatever lies in .whl/ into /tmp/site before it starts:
#
#     bash benchmarks/gpu_wheels.sh          # here, with PyPI: about 6 MB into .whl/ (ignored by git; carry it)
#
# That image has jax 0.11.2 (CUDA 13), torch 2.11.0+cu130 and transformers 5.17.0 (the device notes' KINDS.md) but not
# ml-collections; flax 0.12.8, our pin, needs jax 0.10, so flax 0.12.12 (jax >= 0.11.1) goes along with the optax and
# orbax-checkpoint it was first run with there (benchmarks/README.md, the GPU section); array-record and tensorboardX
# for the pretraining binary. Python 3.12, x86-64, no dependencies (the image has them).
set -eu
cd "$(dirname "$0")/.."
dest=${1:-.whl}
mkdir -p "$dest"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" \
  flax==0.12.12 optax==0.2.8 orbax-checkpoint==0.12.8 ml-collections==1.1.0 array-record==0.8.6 tensorboardX==2.6.5
ls -la "$dest"
