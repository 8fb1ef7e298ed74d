"""Deploy without torch: caption with an exported ONNX folder on ONNX Runtime.

``folder.py`` (the folder's files and manifest), ``providers.py`` (which execution providers run each graph),
``captioner.py`` (OrtCaptioner). Imports neither torch nor transformers (tested); the export that writes
the folder is ``blip_lora_core.export``.
"""
