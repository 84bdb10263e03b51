"""Train an AERO variant from scratch on the code corpus.

    python -m models.train --arch aero --preset small --steps 300

AdamW (no weight decay on gains, biases, norms, temperatures, thresholds), linear warmup then linear
decay to zero, gradient clipping, the entropy regularizer for EReg variants, evaluation perplexity,
resumable checkpoints. A run whose loss turns non-finite stops with status "diverged" (exit 3):
softmax-only models without FFN scaling are expected to do that.

`--batch-size` is the sequences per optimizer step; `--grad-accum K` splits them into K
micro-batches (same gradients, less memory), so a token budget means the same thing on any machine.
`--device auto` trains on an accelerator when torch sees one. Under torchrun the step's sequences
are split over the processes too, the same step (`models.distributed`):

    torchrun --standalone --nproc_per_node 4 -m models.train --arch aero --device cuda ...

Every evaluation also records the per-layer attention entropy (a fraction of log T) in the
checkpoint's `history`, so a run shows when its attention leaves the uniform start (about
0.80 log T under the causal mask).
"""

from __future__ import annotations

import argparse
import contextlib
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
from models.distributed import SINGLE, Group, check_split, device_of, start
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
    model: GPT, data: PreparedData, settings: TrainSettings, length: int, group: Group = SINGLE
) -> tuple[float, torch.Tensor]:
    """(validation CE, (L, H) head entropy / log T) over the same fixed windows (each process
    takes its slice of every window batch; the equal slices' means are averaged)."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(settings.seed + 1)
    loss, entropy = 0.0, torch.zeros(model.config.n_layer, model.config.n_head)
    for _ in range(settings.eval_batches):
        x, y = data.batch("val", settings.batch_size, length, generator)
        x, y = group.rows(x).to(device), group.rows(y).to(device)
        attention: list[torch.Tensor] = []
        logits = model(x, attention)
        loss += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
        entropy += head_entropies(attention).float().cpu()
    model.train()
    total = group.sum([loss, *entropy.flatten().tolist()], device)
    loss = total[0] / group.world_size
    entropy = torch.tensor(total[1:]).view_as(entropy) / group.world_size
    return loss / settings.eval_batches, entropy / settings.eval_batches / math.log(length)


def perplexity(loss: float) -> float:
    """exp(loss); inf past float range (a blown-up model's eval loss can exceed 709 nats)."""
    return math.inf if loss >= 709.0 else math.exp(loss)  # NaN stays NaN


def _rounded(values: torch.Tensor) -> list:
    return (
        [round(v, 4) for v in values.tolist()]
        if values.dim() == 1
        else [_rounded(row) for row in values]
    )


def training_loss(model: GPT, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Cross-entropy plus lambda * entropy penalty (EReg variants); returns (loss, CE value)."""
    return micro_batch_loss(model, x, y, 1.0)


def micro_batch_loss(
    model: GPT, x: torch.Tensor, y: torch.Tensor, share: float, forward=None
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
    logits = (forward or model)(x, attention)  # forward: the DDP wrapper when distributed
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
    loss = ce * share
    if reg is not None:
        penalty = reg([a.float() for a in attention])
        loss = loss + (penalty if reg.adds_up() else penalty * share)
    return loss, ce.item()


def accumulate_gradients(
    model: GPT, x, y, settings: TrainSettings, precision: str, group: Group = SINGLE, net=None
) -> float:
    """Forward and backward over grad_accum micro-batches of this process's rows `x`, `y` (the
    whole batch on one process; `net`: the DDP wrapper of `model` on several); returns the
    global batch's CE, NaN if any part of the loss is non-finite on any process (then nothing
    is stepped)."""
    ce_total, net = 0.0, net or model
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")
    parts = list(zip(x.chunk(settings.grad_accum), y.chunk(settings.grad_accum), strict=True))
    for index, (xs, ys) in enumerate(parts):
        share = len(xs) / (len(x) * group.world_size)  # of the global batch
        with autocast:
            loss, ce = micro_batch_loss(model, xs, ys, share, net)
        if not all(math.isfinite(v) for v in group.sum([loss.item()], device)):
            return math.nan
        last = index == len(parts) - 1  # DDP averages gradients over ranks on the last backward
        with contextlib.nullcontext() if last or net is model else net.no_sync():
            (loss * group.world_size).backward()
        ce_total += ce * share
    return group.sum([ce_total], device)[0]


def train(
    model, optimizer, data, settings, length, meta, out: Path, precision="fp32", group=SINGLE
) -> dict:
    """Run (or continue) training up to settings.steps; returns the updated metadata. On several
    processes every one runs this; rank 0 alone shows progress and writes checkpoints."""
    generator = torch.Generator().manual_seed(settings.seed + meta["step"])
    device = next(model.parameters()).device
    model.train()
    net = group.wrap(model, device)
    bar = tqdm(  # elapsed and remaining time; quiet when stderr is not a terminal
        range(meta["step"], settings.steps),
        initial=meta["step"],
        total=settings.steps,
        desc=model.config.arch,
        dynamic_ncols=True,
        disable=None if group.is_main else True,
    )
    start, tokens_this_run = time.perf_counter(), 0
    for step in bar:
        for param_group in optimizer.param_groups:
            param_group["lr"] = learning_rate(step, settings)
        x, y = data.batch("train", settings.batch_size, length, generator)  # the global batch
        x, y = group.rows(x).to(device), group.rows(y).to(device)
        optimizer.zero_grad(set_to_none=True)
        ce = accumulate_gradients(model, x, y, settings, precision, group, net)
        if not math.isfinite(ce):
            meta.update(status="diverged", diverged_at_step=step, step=step)
            break
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        tokens = settings.batch_size * length
        tokens_this_run += tokens
        meta.update(step=step + 1, tokens_seen=meta["tokens_seen"] + tokens, train_loss=ce)
        rate = tokens_this_run / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{ce:.3f}", tok_s=f"{rate:.0f}")
        if (step + 1) % settings.eval_interval == 0 or step + 1 == settings.steps:
            meta["eval_loss"], heads = evaluate_with_entropy(model, data, settings, length, group)
            meta["eval_ppl"] = perplexity(meta["eval_loss"])
            entropy = _rounded(heads.mean(dim=1))
            point = {"step": step + 1, "tokens": meta["tokens_seen"], "train_loss": ce}
            point |= {"eval_loss": meta["eval_loss"], "entropy_fraction_by_layer": entropy}
            point["entropy_fraction_by_head"] = _rounded(heads)  # (L, H), for the head bins
            meta["history"] = [*meta.get("history", []), point]
            if group.is_main:
                bar.write(
                    f"step {step + 1}: eval loss {meta['eval_loss']:.4f} ppl"
                    f" {meta['eval_ppl']:.3f} attention entropy/log T by layer {entropy}"
                )
                save(out, model, optimizer, data, meta)
    bar.close()
    meta["train_seconds"] = meta.get("train_seconds", 0.0) + time.perf_counter() - start
    meta["tokens_per_second"] = tokens_this_run / max(1e-9, time.perf_counter() - start)
    if meta["status"] == "running":
        meta["status"] = "finished"
    if group.is_main:
        save(out, model, optimizer, data, meta)
    group.barrier()  # every rank returns after the checkpoint exists
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
    group = start(args.device)  # one process unless torchrun started several
    try:
        check_split(group, settings.batch_size, settings.grad_accum)
        return run_training(args, settings, group)
    finally:
        group.finish()


def run_training(args: argparse.Namespace, settings: TrainSettings, group: Group) -> int:
    device = device_of(group, training_device(args.device))
    cfg = config_from_args(args)
    out = Path(args.out or f"runs/{cfg.arch}-{args.preset}.pt".replace("(", "_").replace(")", "_"))
    if not group.is_main:
        group.barrier()  # rank 0 tokenizes and caches the corpus first
    data = prepare_data(args.data_dir, cfg.vocab_size, args.corpus, args.text_field, args.max_files)
    if group.is_main:
        group.barrier()
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
        "processes": group.world_size,
        "precision": args.precision,
        "data": {k: v for k, v in data.manifest.items() if k != "files"},
    }
    if args.resume and out.exists():
        meta = resume_into(out, model, optimizer, cfg, meta)
    say = print if group.is_main else lambda *a, **k: None
    say(
        f"{cfg.arch} ({args.preset}): {model.num_params():,} parameters, "
        f"{data.manifest['train_tokens']:,} training tokens, vocab {cfg.vocab_size}, "
        f"{device} {args.precision} x {group.world_size} process(es) -> {out}"
    )
    meta = train(model, optimizer, data, settings, length, meta, out, args.precision, group)
    status = meta["status"]
    if status == "diverged":
        say(
            f"{cfg.arch}: diverged at step {meta['diverged_at_step']} (non-finite loss); "
            f"checkpoint with status 'diverged' at {out}",
            file=sys.stderr,
        )
        return EXIT_DIVERGED
    say(
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
