"""Export a BLIP model (its adapter merged) for deployment: ``onnx_export.py`` writes the folder that
``blip_lora_core.ort`` captions with, from the graphs of ``onnx_graphs.py``. Needs torch and onnx."""
