#!/usr/bin/env bash
# All set-up for a fresh machine, idempotent: Debian packages, the Python package and its
# test extras, the oracle's compiled twin, and ggml's C reference library built from the
# llama-cpp-python sdist (cached).
# Every step skips itself when already done, so running it before each command costs seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# --- Debian packages -------------------------------------------------------------------
APT_PACKAGES=(
  cmake                        # ggml C reference build
  g++                          # llama.cpp build (harness/ggml/llamacpp.py)
  qemu-user                    # aarch64 programs under qemu-aarch64 -cpu cortex-a76
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu
  dropbear-bin openssh-client  # board-in-a-box SSH server, ssh-keygen
  busybox-static               # board-in-a-box userland
  libnss-wrapper               # board-in-a-box login user without touching /etc/passwd
  gcc binutils                 # host x86-64 objects for elf-check's wrong-machine tests
  chromium                     # renders report.html headless in the tests
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python ----------------------------------------------------------------------------
PY=${PYTHON:-python3}
if ! "$PY" -c "import oracle, harness, kernels_ref, refmodel, sentencepiece, google.protobuf, numpy, gguf, jpype, elftools, paramiko, pytest, xdist, hypothesis, rich, matplotlib" 2>/dev/null \
   || ! "$PY" -m pip show skainet-oracle 2>/dev/null | grep -q "Editable project location: $(pwd)$"; then
  echo "setup: installing the Python package and test extras"
  "$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
fi

# --- the oracle's compiled twin (oracle/csrc, checked bit for bit against the NumPy) ------
"$PY" -m oracle.native build

# --- ggml's C reference (quantize_row_*_ref, dequantize_row_*, CPU vec_dot) -----------------
"$PY" -m harness.ggml.cref build

# --- llama.cpp (libllama + ggml, AVX2 build) for the llama-ref decode and its tests ---------
"$PY" -m harness.ggml.llamacpp build
