"""blip_captioner: a ROS 2 node that captions camera images with BLIP and a LoRA adapter."""
