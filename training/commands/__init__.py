"""One module per `blip-lora` subcommand: each defines register(subparsers) and run(args)."""
