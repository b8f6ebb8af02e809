#!/usr/bin/env python3
"""Writes hf_config_esm2_t6_8M.json: an ESM-2 8M config.json as transformers itself writes it.

Run with the project venv: `$TURBOESM_PY tests/io/data/make_config_fixture.py`. The values are the
published facebook/esm2_t6_8M_UR50D hyper-parameters.
"""
import os
import tempfile

from transformers import EsmConfig


def main():
    cfg = EsmConfig(vocab_size=33, hidden_size=320, num_hidden_layers=6, num_attention_heads=20,
                    intermediate_size=1280, max_position_embeddings=1026, layer_norm_eps=1e-5,
                    position_embedding_type="rotary", token_dropout=True, emb_layer_norm_before=False,
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1,
                    mask_token_id=32, architectures=["EsmForMaskedLM"])
    here = os.path.dirname(os.path.abspath(__file__))
    cfg.to_json_file(os.path.join(here, "hf_config_esm2_t6_8M.json"))


if __name__ == "__main__":
    main()
