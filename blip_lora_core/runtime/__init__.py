"""What the ROS 2 node needs and nothing more: image-message decoding, the caption pipeline, diagnostics.

Imports neither ``blip_lora_core.train`` nor ``blip_lora_core.bags``.
"""
