"""Train an AERO variant from scratch on the code corpus.

    python -m models.train --arch aero --preset small --steps 300

AdamW (no weight decay on gains, biases, norms, temperatures, thresholds), linear warmup then linear
decay to zero, gradient clipping, the entropy regularizer for EReg variants, evaluation perplexity,
resumable checkpoints. A run whose loss turns non-finite stops with status "diverged" (exit 3):
softmax-only models without FFN scaling are expected to do that.

`--batch-size` is the sequences per optimizer step; `--grad-accum K` splits them into K
micro-batches (same gradients, less memory), so a token budget means the same thing on any machine.
`--device auto` trains on an accelerator when torch sees one. Every evaluation also records the
per-layer attention entropy (a fraction of log T) in the checkpoint's `history`, so a run shows
when its attention leaves the uniform start (about 0.80 log T under the causal mask).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from models.checkpoint import (
    Checkpoint,
    CheckpointError,
    git_revision,
    load_checkpoint,
    save_checkpoint,
)
from models.cli import add_config_args, config_from_args, run_main
from models.data import PreparedData, prepare_data
from models.entropy import head_entropies
from models.errors import UserError
from models.gpt import GPT

EXIT_DIVERGED = 3
NO_DECAY_TAGS = ("inv_temperature", "entropy_reg", "residual_gain", "ffn_gain", "original0")


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_batches: int = 20
    seed: int = 1337
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size must divide evenly)


def build_optimizer(model: GPT, settings: TrainSettings) -> torch.optim.AdamW:
    """Decay only weight matrices; gains, biases, norms, temperatures and thresholds are exempt."""
    decay, exempt = [], []
    for name, param in model.named_parameters():
        is_matrix = param.dim() >= 2 and not any(tag in name for tag in NO_DECAY_TAGS)
        (decay if is_matrix else exempt).append(param)
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": exempt, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.95))


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warmup over warmup_frac of the steps, then linear decay to zero."""
    warmup = max(1, round(settings.warmup_frac * settings.steps))
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    return settings.lr * max(0.0, (settings.steps - step) / max(1, settings.steps - warmup))


@torch.no_grad()
def evaluate(model: GPT, data: PreparedData, settings: TrainSettings, length: int) -> float:
    """Mean validation cross-entropy (nats/token) over fixed windows (same every call)."""
    return evaluate_with_entropy(model, data, settings, length)[0]


@torch.no_grad()
def evaluate_with_entropy(
    model: GPT, data: PreparedData, settings: TrainSettings, length: int
) -> tuple[float, list[float]]:
    """(validation CE, per-layer mean head entropy / log T) over the same fixed windows."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(settings.seed + 1)
    losses, entropy = [], torch.zeros(model.config.n_layer)
    for _ in range(settings.eval_batches):
        x, y = (t.to(device) for t in data.batch("val", settings.batch_size, length, generator))
        attention: list[torch.Tensor] = []
        logits = model(x, attention)
        losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).item())
        entropy += head_entropies(attention).float().mean(dim=1).cpu()
    model.train()
    fraction = entropy / settings.eval_batches / math.log(length)
    return sum(losses) / len(losses), [round(v, 4) for v in fraction.tolist()]


def training_loss(model: GPT, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Cross-entropy plus lambda * entropy penalty (EReg variants); returns (loss, CE value)."""
    return micro_batch_loss(model, x, y, 1.0)


def micro_batch_loss(
    model: GPT, x: torch.Tensor, y: torch.Tensor, share: float
) -> tuple[torch.Tensor, float]:
    """This micro-batch's part of the step loss, so that the parts add up to the whole batch's
    (`share`: its fraction of the step's sequences, over every micro-batch and device).

    The cross-entropy is a mean: it is weighted by the share. The entropy penalty with the
    paper's "sum" reduction is a sum over sequences: it adds up as is, unless the config asks
    for the released trainer's average over micro-batches and devices (then it is weighted too:
    the share is 1 / (K x devices)).
    """
    reg = model.entropy_reg
    attention = [] if reg is not None else None
    logits = model(x, attention)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
    loss = ce * share
    if reg is not None:
        penalty = reg([a.float() for a in attention])
        loss = loss + (penalty if reg.adds_up() else penalty * share)
    return loss, ce.item()


def accumulate_gradients(model: GPT, x, y, settings: TrainSettings, precision: str) -> float:
    """Forward and backward over grad_accum micro-batches; returns the batch CE, NaN if any part
    of the loss is non-finite (then nothing is stepped)."""
    ce_total = 0.0
    device_type = next(model.parameters()).device.type
    autocast = torch.autocast(device_type, torch.bfloat16, enabled=precision == "bf16")
    for xs, ys in zip(x.chunk(settings.grad_accum), y.chunk(settings.grad_accum), strict=True):
        share = len(xs) / len(x)
        with autocast:
            loss, ce = micro_batch_loss(model, xs, ys, share)
        if not math.isfinite(loss.item()):
            return math.nan
        loss.backward()
        ce_total += ce * share
    return ce_total


def train(model, optimizer, data, settings, length, meta, out: Path, precision="fp32") -> dict:
    """Run (or continue) training up to settings.steps; returns the updated metadata."""
    generator = torch.Generator().manual_seed(settings.seed + meta["step"])
    device = next(model.parameters()).device
    model.train()
    bar = tqdm(
        range(meta["step"], settings.steps),
        initial=meta["step"],
        total=settings.steps,
        desc=model.config.arch,
        dynamic_ncols=True,
        disable=None,
    )
    start, tokens_this_run = time.perf_counter(), 0
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        x, y = (t.to(device) for t in data.batch("train", settings.batch_size, length, generator))
        optimizer.zero_grad(set_to_none=True)
        ce = accumulate_gradients(model, x, y, settings, precision)
        if not math.isfinite(ce):
            meta.update(status="diverged", diverged_at_step=step, step=step)
            break
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        tokens_this_run += x.numel()
        meta.update(step=step + 1, tokens_seen=meta["tokens_seen"] + x.numel(), train_loss=ce)
        rate = tokens_this_run / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{ce:.3f}", tok_s=f"{rate:.0f}")
        if (step + 1) % settings.eval_interval == 0 or step + 1 == settings.steps:
            meta["eval_loss"], entropy = evaluate_with_entropy(model, data, settings, length)
            meta["eval_ppl"] = math.exp(meta["eval_loss"])
            point = {"step": step + 1, "tokens": meta["tokens_seen"], "train_loss": ce}
            point |= {"eval_loss": meta["eval_loss"], "entropy_fraction_by_layer": entropy}
            meta["history"] = [*meta.get("history", []), point]
            bar.write(
                f"step {step + 1}: eval loss {meta['eval_loss']:.4f} ppl {meta['eval_ppl']:.3f}"
                f" attention entropy/log T by layer {entropy}"
            )
            save(out, model, optimizer, data, meta)
    bar.close()
    meta["train_seconds"] = meta.get("train_seconds", 0.0) + time.perf_counter() - start
    meta["tokens_per_second"] = tokens_this_run / max(1e-9, time.perf_counter() - start)
    if meta["status"] == "running":
        meta["status"] = "finished"
    save(out, model, optimizer, data, meta)
    return meta


def save(out: Path, model: GPT, optimizer, data: PreparedData, meta: dict) -> None:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    save_checkpoint(
        out,
        Checkpoint(model.config, state, data.tokenizer_json, dict(meta), optimizer.state_dict()),
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m models.train", description=__doc__.split("\n")[0]
    )
    add_config_args(parser)
    defaults = TrainSettings()
    for name, value in asdict(defaults).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--seq-len", type=int, help="training window (default: the context)")
    parser.add_argument("--out", help="checkpoint path (default runs/ARCH-PRESET.pt)")
    parser.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    parser.add_argument("--data-dir", default="data", help="cache for tokenized corpora")
    parser.add_argument("--corpus", help="folder of files or .jsonl(.gz); default: Python stdlib")
    parser.add_argument("--text-field", default="content", help="JSONL text field")
    parser.add_argument("--max-files", type=int, help="use only the first N documents")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda, cuda:N, mps, or auto (an accelerator if seen)"
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16 autocasts forward passes (accelerators); the weights stay fp32",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = TrainSettings(**{k: getattr(args, k) for k in asdict(TrainSettings())})
    if settings.grad_accum < 1 or settings.batch_size % settings.grad_accum:
        raise UserError(
            f"--grad-accum {settings.grad_accum} must be >= 1 and divide --batch-size "
            f"{settings.batch_size}"
        )
    device = training_device(args.device)
    cfg = config_from_args(args)
    out = Path(args.out or f"runs/{cfg.arch}-{args.preset}.pt".replace("(", "_").replace(")", "_"))
    data = prepare_data(args.data_dir, cfg.vocab_size, args.corpus, args.text_field, args.max_files)
    cfg = cfg.replace(vocab_size=data.vocab_size)
    length = args.seq_len or cfg.block_size
    if length > cfg.block_size:
        raise UserError(f"--seq-len {length} exceeds the context {cfg.block_size}")
    torch.manual_seed(settings.seed)
    model = GPT(cfg).to(device)
    optimizer = build_optimizer(model, settings)
    meta = {
        "status": "running",
        "step": 0,
        "tokens_seen": 0,
        "git_revision": git_revision(),
        "train_settings": asdict(settings),
        "seq_len": length,
        "preset": args.preset,
        "device": str(device),
        "precision": args.precision,
        "data": {k: v for k, v in data.manifest.items() if k != "files"},
    }
    if args.resume and out.exists():
        meta = resume_into(out, model, optimizer, cfg, meta)
    print(
        f"{cfg.arch} ({args.preset}): {model.num_params():,} parameters, "
        f"{data.manifest['train_tokens']:,} training tokens, vocab {cfg.vocab_size}, "
        f"{device} {args.precision} -> {out}"
    )
    meta = train(model, optimizer, data, settings, length, meta, out, args.precision)
    status = meta["status"]
    if status == "diverged":
        print(
            f"{cfg.arch}: diverged at step {meta['diverged_at_step']} (non-finite loss); "
            f"checkpoint with status 'diverged' at {out}",
            file=sys.stderr,
        )
        return EXIT_DIVERGED
    print(
        f"{cfg.arch}: {status} after {meta['step']} steps, eval loss {meta['eval_loss']:.4f}, "
        f"ppl {meta['eval_ppl']:.3f}, {meta['tokens_per_second']:.0f} tokens/s"
    )
    return 0


def training_device(name: str) -> torch.device:
    """The device named, checked to exist; 'auto' picks CUDA, then MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"unknown --device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: torch sees no CUDA device here (use cpu or auto)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: torch sees no MPS device here (use cpu or auto)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name}: only cpu, cuda and mps are supported")
    return device


def resume_into(out: Path, model: GPT, optimizer, cfg, fresh_meta: dict) -> dict:
    checkpoint = load_checkpoint(out)
    if checkpoint.config != cfg:
        raise CheckpointError(f"{out} was trained with a different config; use another --out")
    model.load_state_dict(checkpoint.model_state)
    if checkpoint.optimizer_state:
        optimizer.load_state_dict(checkpoint.optimizer_state)
    meta = {**fresh_meta, **checkpoint.meta, "status": "running"}
    print(f"resuming {out} at step {meta['step']}")
    return meta


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
