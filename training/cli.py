"""Entry point of the `blip-lora` command line."""


def main(argv: list[str] | None = None) -> int:
    raise SystemExit("not built yet")
