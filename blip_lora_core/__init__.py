"""blip-lora core."""
