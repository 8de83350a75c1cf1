"""Flax models for the experiments and their loaders.

- ``bert``: BERT encoder and ``BertForSequenceClassification``; ``load_minilm()`` (all-MiniLM-L6-v2).
- ``llama``: Llama decoder with KV-cached greedy generation; ``load_smollm2()`` (SmolLM2-135M GGUF).
- ``vit``: a small ViT; ``load_pretrained_vit()`` (pretrained here on Fashion-MNIST).
- ``names``: HF / GGUF names <-> flax paths, the reference module order.

Submodules import their optional packages lazily and raise ``deps.MissingPackageError`` (one line
with the install command) when one is missing.
"""
