"""BLIP models: loading (with the vision attention as an option), every reach into transformers' BLIP
internals (blip_internals), image preprocessing, labels, captioning and its settings, the static-cache
decoder, caption confidence and int8 quantization."""
