"""BLIP models: loading, the attention fast path, image preprocessing, labels and captioning."""
