"""`blip-lora train`: fine-tune with LoRA (or fully) from a YAML config plus command-line overrides."""

from __future__ import annotations

import argparse

from blip_lora_core.train.augment import AugmentConfig
from blip_lora_core.train.config import FINETUNE_MODES, PRECISIONS, load_config

# flag -> (TrainConfig field, type, help)
_OPTIONS = [
    ("--model", "model", str, "hub id or local folder of the base BLIP model"),
    ("--revision", "revision", str, "hub revision (branch, tag or commit) to pin the base model to"),
    ("--train", "train_file", str, "training JSONL ({\"image\": ..., \"text\": ...} per line)"),
    ("--val", "val_file", str, "validation JSONL"),
    ("--val-fraction", "val_fraction", float, "hold out the last fraction of each scene for validation"),
    ("--out", "output_dir", str, "output folder: adapters, logs, checkpoints"),
    ("--prompt", "prompt", str, "text prompt trained in front of every caption (masked from the loss)"),
    ("--finetune", "finetune", str, f"what to train: {' or '.join(FINETUNE_MODES)}"),
    ("--r", "lora.r", int, "LoRA rank"),
    ("--alpha", "lora.alpha", float, "LoRA alpha (scaling = alpha / r)"),
    ("--dropout", "lora.dropout", float, "dropout on the LoRA branch"),
    ("--epochs", "epochs", int, "number of epochs"),
    ("--max-steps", "max_steps", int, "optimizer steps (overrides epochs when > 0)"),
    ("--batch-size", "batch_size", int, "images per micro-batch (per GPU)"),
    ("--grad-accum", "grad_accum", int, "micro-batches per optimizer step"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay"),
    ("--warmup-steps", "warmup_steps", int, "linear warm-up steps before cosine decay"),
    ("--precision", "precision", str, f"{', '.join(PRECISIONS)} (fp16 falls back to fp32 on the CPU)"),
    ("--seed", "seed", int, "random seed"),
    ("--device", "device", str, "cpu, cuda, cuda:1 ... (default: cuda when present)"),
    ("--workers", "num_workers", int, "DataLoader worker processes"),
    ("--eval-every", "eval_every", int, "validate every N steps (default: every epoch)"),
    ("--checkpoint-every", "checkpoint_every", int, "write a resumable checkpoint every N steps"),
    ("--max-new-tokens", "max_new_tokens", int, "caption length limit during validation"),
]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="fine-tune a BLIP model on a JSONL dataset",
        description="Fine-tune BLIP captioning with LoRA adapters. Settings come from --config (YAML), "
                    "then from the flags below.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="YAML file of training settings (see config/train.yaml)")
    for flag, dest, kind, text in _OPTIONS:
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    parser.add_argument("--targets", dest="lora.targets", nargs="+", default=None, metavar="REGEX",
                        help="module-name patterns of the nn.Linear layers to adapt")
    parser.add_argument("--rslora", dest="lora.rslora", action="store_true", default=None,
                        help="scale by alpha / sqrt(r)")
    parser.add_argument("--skip-bad", dest="skip_bad", action="store_true", default=None,
                        help="skip and report bad dataset lines instead of stopping")
    parser.add_argument("--group-references", dest="group_references", action="store_true", default=None,
                        help="score each image against every phrasing of its scene (file-name prefix)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="no progress bar")
    parser.add_argument("--no-augment", dest="augment", action="store_const", const=AugmentConfig.off(),
                        default=None, help="train on the images as they are (default: the config's augment "
                                           "section, else AugmentConfig's camera-robust defaults)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from blip_lora_core.train.loop import train  # the [train] extra

    names = [dest for _, dest, _, _ in _OPTIONS] + ["lora.targets", "lora.rslora", "skip_bad", "group_references",
                                                    "progress", "augment"]
    config = load_config(args.config, {name: getattr(args, name) for name in names})
    result = train(config, resume=args.resume)
    if result.adapter:
        print(f"adapter: {result.adapter}")
    if result.model_dir:
        print(f"model: {result.model_dir}")
    if result.best:
        print(f"best validation: exact match {result.best['exact_match']:.3f}, BLEU-4 {result.best['bleu4']:.3f}, "
              f"CIDEr {result.best['cider']:.3f} (step {result.best['step']})")
    return 0
