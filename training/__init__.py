"""The offline command line `blip-lora`; installed as the package `blip_lora_training`."""
