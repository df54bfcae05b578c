"""Pretrained files the curation loads (the Qwen2.5-VL scorer).

Data only: :mod:`fvr_bench.weights` discovers every ``weights_declared`` module and
reads its ``WEIGHTS``; lookup, messages and checksums live there.
"""

from __future__ import annotations

from fvr_bench.weights import WeightFile

WEIGHTS = (
    WeightFile("qwen25_vl_7b_instruct", "Qwen2.5-VL-7B-Instruct",
               "https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct (a folder: config.json, model-*.safetensors, "
               "tokenizer, preprocessor and chat-template files)", "Apache-2.0", ("data curate",), directory=True),
)
