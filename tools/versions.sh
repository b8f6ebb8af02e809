# Pinned versions: the one place they are written. Sourced by tools/setup_env.sh.
# torch must match the GPU machine's (2.11.0); transformers matches it too (5.17.0).
TURBOESM_TORCH_VERSION=2.11.0
TURBOESM_TRANSFORMERS_VERSION=5.17.0
TURBOESM_SAFETENSORS_VERSION=0.8.0
TURBOESM_NUMPY_VERSION=2.4.6
