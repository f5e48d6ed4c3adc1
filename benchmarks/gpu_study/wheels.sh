#!/usr/bin/env bash
# Run HERE (a machine with PyPI), from the repository root: the wheels the GPU machine's image
# lacks, into .whl/ (git-ignored), to copy to the GPU machine. A bare image is assumed to have torch, transformers,
# accelerate, tokenizers, safetensors, einops, jaxtyping, numpy, pandas, pyarrow, scipy, tqdm
# (as a PyTorch image does); these are sinkprobe's other imports and transformer-lens's.
# PYVER picks the interpreter the wheels are for (default 3.12).
set -euo pipefail
PYVER=${PYVER:-3.12}
DEST=${DEST:-.whl}
mkdir -p "$DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DEST" \
  transformer-lens==4.3.0 beartype==0.23.1 fancy-einsum==0.0.3 typeguard==4.6.1 \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
  nltk==3.10.4 plotly==7.1.0
# rouge-score ships as a source distribution only: build its (pure-Python) wheel here.
python3 -m pip wheel -q --no-deps -w "$DEST" rouge-score==0.1.2
ls -1 "$DEST"
du -sh "$DEST"
