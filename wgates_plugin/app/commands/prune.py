"""``wgates prune``: prune any torchvision classification model to a FLOPs budget and save it.

Example:
    wgates prune --model resnet18 --data digits --flops-target 0.5 --train-steps 150 --out pruned/
    wgates prune --model mobilenet_v2 --data path/to/images --weights baseline.safetensors --out pruned/
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, FileFormatError, MissingFileError
from ...files import check_writable, read_json, read_tensors, save_tensors, write_text
from ...pruner import WGates
from ...utils import check_number
from ..data import folder_splits, load_digits, loaders
from ..models import Architecture, model_from_spec, parse_model_spec
from ..onnx_runtime import format_deployment, require_onnx
from ..serialization import RECIPE_FILE, WEIGHTS_FILE, load_pruned, load_weights, read_recipe, save_pruned
from ..summary import PLOT_FILE, SUMMARY_FILE, write_summary
from ..training import WEIGHT_SCHEDULES, Recipe, Stage, finetune_phase, fit, prune_phase
from .export_onnx import DEPLOYMENT_FILE, add_deployment_arguments, deploy, timing_of
from .lpnet import (
    add_latency_arguments,
    format_latency,
    latency_efficiency,
    latency_report,
    resolved_round_to,
    round_to_arg,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "prune", help="prune a torchvision model to a FLOPs budget with W-Gates",
        description="Train W-Gates on a torchvision classification model under a FLOPs budget, remove the "
                    "closed channels, fine-tune, and save the pruned model with a JSON report.")
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every ``wgates prune`` option (``wgates demo`` takes its defaults from here too)."""
    add_model_arguments(parser)
    add_recipe_arguments(parser)
    add_latency_arguments(parser)
    add_run_arguments(parser, default_out=None)
    parser.add_argument("--onnx", action="store_true",
                        help="also export the pruned model to ONNX (model.onnx), check its outputs in onnxruntime and "
                             "time the unpruned and pruned model in PyTorch and onnxruntime (the onnx extra)")
    add_deployment_arguments(parser)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a torchvision classification model (resnet18, torchvision:resnet18), a timm model "
                             "(timm:convnext_atto; the timm extra), or your builder module:function (imported from "
                             "the current folder or an installed package; called with num_classes= if it takes it)")
    parser.add_argument("--data", default="digits",
                        help="'digits' (bundled, default) or an image directory: <dir>/<class>/<img>, or "
                             "<dir>/train and <dir>/val")
    parser.add_argument("--size", type=int, default=32, help="input height and width (default 32)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="baseline state dict: .safetensors, or a torch.save file read with weights_only=True")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="train the baseline this many steps before pruning (default 0: use --weights as is)")
    parser.add_argument("--train-lr", type=float, default=0.05, help="baseline SGD learning rate (default 0.05)")


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    r = Recipe()
    parser.add_argument("--flops-target", type=float, default=0.5,
                        help="FLOPs budget as a fraction of the original model's, in (0, 1] (default 0.5)")
    parser.add_argument("--steps", type=int, default=r.gate_steps,
                        help=f"joint gate + weight training steps (default {r.gate_steps})")
    parser.add_argument("--finetune-steps", type=int, default=r.finetune_steps,
                        help=f"fine-tuning steps of the pruned model (default {r.finetune_steps})")
    parser.add_argument("--gate-lr", type=float, default=r.gate_lr, help=f"Adam lr of the gates (default {r.gate_lr})")
    parser.add_argument("--round-to", type=round_to_arg, default=1, metavar="N|auto",
                        help="kept channel counts a multiple of N (or all of a layer's): 8 or 16 keep onnxruntime's "
                             "and SIMD kernels fast; 'auto': the multiple the --latency-table measured on the "
                             "device (default 1: any count)")
    parser.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                        help="start with every gate open (the paper) instead of at the target's magnitude ranking")
    parser.add_argument("--weight-lr", type=float, default=r.weight_lr,
                        help=f"SGD lr of the weights while gates train (default {r.weight_lr})")
    parser.add_argument("--weight-schedule", choices=WEIGHT_SCHEDULES, default=r.weight_schedule,
                        help="the weights' lr over the gate steps: constant, or cosine to 0 (better right after "
                             f"pruning, not after fine-tuning; default {r.weight_schedule})")
    parser.add_argument("--weight-anneal", type=float, default=r.weight_anneal, metavar="SHARE",
                        help="with --weight-schedule cosine, the share of the gate steps, at their end, that the "
                             f"decay runs over, in (0, 1] (default {r.weight_anneal:g}: all of them)")
    parser.add_argument("--settle", type=float, default=r.settle, metavar="SHARE",
                        help="share of --steps spent after the freeze training the exported network at its widths "
                             f"(cosine lr from --weight-lr to 0), in [0, 1) (default {r.settle:g})")
    parser.add_argument("--freeze-votes", type=float, default=r.freeze_votes, metavar="SHARE",
                        help="share of the gate steps, at their end, whose keep masks are tallied: the freeze keeps "
                             "the channels open most often over them, at their mean count, in [0, 1] "
                             f"(default {r.freeze_votes:g}: the last step's mask)")
    parser.add_argument("--finetune-lr", type=float, default=r.finetune_lr,
                        help=f"initial SGD lr of fine-tuning, cosine decay (default {r.finetune_lr})")
    parser.add_argument("--distill", type=float, default=r.distill, metavar="WEIGHT",
                        help="share of knowledge distillation from the unpruned model in the loss of gate training "
                             "and settling (and fine-tuning with --distill-finetune), in [0, 1] "
                             f"(default {r.distill:g}; 0: none)")
    parser.add_argument("--distill-finetune", action=argparse.BooleanOptionalAction, default=r.distill_finetune,
                        help="whether fine-tuning distils too (default: no, --distill applies to the pruning phase "
                             "only)")
    parser.add_argument("--temperature", type=float, default=r.temperature,
                        help=f"distillation temperature (default {r.temperature:g})")
    parser.add_argument("--bn-batches", type=int, default=r.bn_batches,
                        help=f"batches for BN re-calibration after pruning (default {r.bn_batches})")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")


def add_run_arguments(parser: argparse.ArgumentParser, default_out: str | None) -> None:
    parser.add_argument("--out", type=Path, required=default_out is None, default=default_out,
                        help="output directory for the pruned model and report.json"
                             + (f" (default {default_out})" if default_out else ""))
    parser.add_argument("--seed", type=int, default=0, help="seed of initialization, data split and order (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the latency measurement (default 1)")
    parser.add_argument("--latency-batch", type=int, default=32,
                        help="batch size of the latency measurement (default 32; at batch 1 on small inputs "
                             "per-layer overhead, not FLOPs, dominates CPU latency)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    parser.add_argument("--force", action="store_true", help="overwrite a result (or interrupted run) in --out")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --out from its last checkpoint (same arguments)")


def build_wgates(args: argparse.Namespace, model: nn.Module, example_inputs: torch.Tensor) -> Any:
    """The W-Gates instance for this run: FLOPs target mode at ``args.flops_target``, or latency target
    mode at ``args.latency_target`` with the LPNet of ``args.lpnet``."""

    latency = latency_efficiency(args, model, example_inputs)
    round_to = resolved_round_to(args)
    if latency is not None:
        return WGates(model, example_inputs, target=args.latency_target, efficiency=latency,
                      warm_start=args.warm_start, round_to=round_to)
    return WGates(model, example_inputs, target=args.flops_target, warm_start=args.warm_start, round_to=round_to)


def build_recipe(args: argparse.Namespace) -> Any:
    return Recipe(gate_steps=args.steps, finetune_steps=args.finetune_steps, gate_lr=args.gate_lr,
                  weight_lr=args.weight_lr, weight_schedule=args.weight_schedule,
                  weight_anneal=args.weight_anneal, settle=args.settle, freeze_votes=args.freeze_votes,
                  finetune_lr=args.finetune_lr,
                  bn_batches=args.bn_batches,
                  distill=args.distill, temperature=args.temperature, distill_finetune=args.distill_finetune)


def load_data(args: argparse.Namespace) -> tuple[Any, Any, list[str]]:
    """``(train, test, class names)`` for ``--data``."""

    if args.data == "digits":
        train, test = load_digits(size=args.size, seed=args.seed)
        return train, test, [str(i) for i in range(10)]
    return folder_splits(args.data, size=args.size, seed=args.seed)


def make_model(args: argparse.Namespace, num_classes: int) -> tuple[nn.Module, Any]:
    """A freshly initialized model and its :class:`~wgates_plugin.app.models.Architecture`."""

    torch.manual_seed(args.seed)
    model, arch = model_from_spec(args.model, num_classes, (1, 3, args.size, args.size))
    check_input_size(model, arch)
    if args.weights is not None:
        load_baseline_weights(model, args.weights, f"'{args.model}' (num_classes={num_classes})")
    return model, arch


def check_input_size(model: nn.Module, arch: Any) -> None:
    """Raise :class:`ConfigError` if ``model`` cannot run on ``arch.input_shape`` (e.g. too small)."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((2, *arch.input_shape[1:])))
    except Exception as exc:  # torchvision raises ValueError / RuntimeError / AssertionError here
        raise ConfigError(f"{arch.name} cannot run on {arch.input_shape[-2]}x{arch.input_shape[-1]} inputs "
                          f"({type(exc).__name__}: {exc}). HINT: pick another --size") from None
    finally:
        model.train()


def load_baseline_weights(model: nn.Module, path: Path, what: str) -> None:
    """Load a state dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``)."""

    if not path.is_file():
        raise MissingFileError(f"--weights file '{path}' does not exist")
    if path.suffix == ".safetensors":
        state, _ = read_tensors(path, "--weights state dict")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle.UnpicklingError (refused globals), RuntimeError (not a torch file), ...
            raise FileFormatError(f"--weights file '{path}' is not a state dict torch.load(weights_only=True) can "
                                  f"read: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"--weights file '{path}' holds a {type(state).__name__}, not a state dict")
    load_weights(model, state, what)


def _check_args(args: argparse.Namespace) -> None:
    parse_model_spec(args.model)
    if args.onnx:  # a missing extra or a bad number fails before any training
        require_onnx()
        timing_of(args)
    check_number("--flops-target", args.flops_target, "(0, 1]", what="", type_error=ConfigError)
    for name in ("train_steps", "threads", "latency_batch"):
        check_number(f"--{name.replace('_', '-')}", getattr(args, name), ">= 0" if name == "train_steps" else ">= 1",
                     integer=True, what="", type_error=ConfigError)


def execute(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole pipeline for parsed ``args``; save the model and ``report.json``; return the report.

    Three phases — baseline training, pruning (gates, freeze, export, BN re-calibration), fine-tuning —
    each seeded on its own (``seed``, ``seed + 1``, ``seed + 2``: data order and every random draw), and
    after each of the first two the state is saved under ``<out>/.checkpoint``. ``--resume`` continues
    an interrupted run from there, with the result an uninterrupted run gives.
    """
    _check_args(args)
    out = Path(args.out)
    ckpt = Checkpoint(out / CHECKPOINT, run_arguments(args))
    check_out_folder(out, args.force, args.resume)  # before any training: a result that cannot be saved is never made
    if args.force:  # start over: no earlier result or checkpoint survives to be mistaken for this run's
        ckpt.clear()
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
    done = ckpt.stage() if args.resume else None
    train, test, classes = load_data(args)
    model, arch = make_model(args, len(classes))
    if args.train_steps and done is not None:
        load_weights(model, ckpt.baseline(), f"the checkpointed baseline of '{args.model}'")
    elif args.train_steps:
        train_loader, _ = _phase(args, train, test, 0)
        fit(model, train_loader, args.train_steps, lr=args.train_lr, progress=args.progress, desc="baseline")
        ckpt.save_baseline(model)
    unpruned = copy.deepcopy(model).eval() if args.onnx else None  # the baseline, hook-free
    example = arch.example_input()
    timed = torch.randn((args.latency_batch, *arch.input_shape[1:]), generator=torch.Generator().manual_seed(0))
    recipe = build_recipe(args)
    if done == "pruned":
        stage = ckpt.load_stage(arch)
        stage.teacher = copy.deepcopy(model).eval() if recipe.finetune_distils else None  # the baseline, as it was
    else:
        train_loader, test_loader = _phase(args, train, test, 1)
        wg = build_wgates(args, model, example)
        stage = prune_phase(model, example, train_loader, test_loader, recipe=recipe, wgates=wg, latency_input=timed,
                            threads=args.threads, progress=args.progress)
        stage.report.update(latency_report(wg, stage.model))
        ckpt.save_stage(stage, arch)
    train_loader, test_loader = _phase(args, train, test, 2)
    result = finetune_phase(stage, example, train_loader, test_loader, recipe, timed, args.threads, args.progress)
    save_pruned(out, stage.model, stage.history, arch)
    deployment = deploy(out, stage.model, unpruned, arch.input_shape, args) if unpruned is not None else None
    report = {"model": args.model, "data": str(args.data), "input_shape": list(arch.input_shape),
              "baseline_train_steps": args.train_steps, "seed": args.seed, "threads": args.threads,
              "latency_batch": args.latency_batch, "resumed_from": done, **result,
              **({"deployment": deployment} if deployment else {})}
    write_text(out / "report.json", json.dumps(report, indent=1))
    write_summary(out, report, format_latency(report))
    ckpt.clear()
    return report


def _phase(args: argparse.Namespace, train: Any, test: Any, phase: int) -> tuple[Any, Any]:
    """Seed phase ``phase`` (every random draw and the data order) on its own: loaders seeded ``seed + phase``."""
    torch.manual_seed(args.seed + phase)
    return loaders(train, test, batch_size=args.batch_size, seed=args.seed + phase)


CHECKPOINT = ".checkpoint"
_NOT_RUN_ARGUMENTS = ("func", "command", "progress", "force", "resume", "out")


def run_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments that decide a run's result (a resumed run must repeat them)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
            if k not in _NOT_RUN_ARGUMENTS}


class Checkpoint:
    """``<out>/.checkpoint``: the baseline after its training, the pruned stage after export, and the
    arguments that produced them; every file written atomically, the folder removed once the run ends."""

    def __init__(self, folder: Path, arguments: dict[str, Any]) -> None:
        self.folder = folder
        self.arguments = arguments

    def stage(self) -> str:
        """The last phase saved: ``'baseline'`` or ``'pruned'``.

        Raises:
            ConfigError: no checkpoint, or one written with other arguments.
        """
        if not (self.folder / "state.json").is_file():
            raise ConfigError(f"--resume: '{self.folder.parent}' holds no interrupted run to resume (no "
                              f"{CHECKPOINT}/state.json); run without --resume")
        state = read_json(self.folder / "state.json", "checkpoint state")
        saved = state.get("arguments") if isinstance(state, dict) else None
        if not isinstance(saved, dict) or state.get("stage") not in ("baseline", "pruned"):
            raise FileFormatError(f"'{self.folder / 'state.json'}' is not a checkpoint state")
        differ = sorted(k for k in set(saved) | set(self.arguments) if saved.get(k) != self.arguments.get(k))
        if differ:
            then = [saved.get(k) for k in differ[:6]]
            now = [self.arguments.get(k) for k in differ[:6]]
            raise ConfigError(f"--resume: the interrupted run used other arguments ({', '.join(differ[:6])}: {then} "
                              f"then, {now} now); repeat them, or start over with --force")
        return str(state["stage"])

    def _mark(self, stage: str) -> None:
        write_text(self.folder / "state.json", json.dumps({"arguments": self.arguments, "stage": stage}, indent=1))

    def save_baseline(self, model: nn.Module) -> None:
        save_tensors(self.folder / "baseline.safetensors", model.state_dict())
        self._mark("baseline")

    def baseline(self) -> dict[str, torch.Tensor]:
        return read_tensors(self.folder / "baseline.safetensors", "checkpointed baseline")[0]

    def save_stage(self, stage: Stage, arch: Architecture) -> None:
        save_pruned(self.folder / "pruned", stage.model, stage.history, arch)
        write_text(self.folder / "stage.json", json.dumps(stage.report))
        self._mark("pruned")

    def load_stage(self, arch: Architecture) -> Stage:
        _, history = read_recipe(self.folder / "pruned")
        report = read_json(self.folder / "stage.json", "checkpointed stage report")
        return Stage(load_pruned(self.folder / "pruned"), [list(e) for e in history], report)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


OUTPUTS = (WEIGHTS_FILE, RECIPE_FILE, "report.json", SUMMARY_FILE, PLOT_FILE, "model.onnx", DEPLOYMENT_FILE)


def check_out_folder(out: Path, force: bool, resume: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``out`` can take this run's result: a writable folder (or one
    that can be created) holding no earlier result (unless ``force``) and no interrupted run (unless
    ``resume`` continues it or ``force`` starts over)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file, not a folder")
    if force and resume:
        raise ConfigError("--force starts over and --resume continues: pass one of them")
    held = [name for name in OUTPUTS if (out / name).exists()]
    if held and not force and not (resume and (out / CHECKPOINT).exists()):  # resume: interrupted while saving
        raise ConfigError(f"--out '{out}' already holds a result ({', '.join(held)}); pass --force to overwrite "
                          "it, or choose another --out")
    if (out / CHECKPOINT).exists() and not (force or resume):
        raise ConfigError(f"--out '{out}' holds an interrupted run ({CHECKPOINT}); pass --resume to continue it "
                          "or --force to start over")
    check_writable(out, "--out")


def format_table(report: dict[str, Any]) -> str:
    """The before/after table printed at the end of a run."""
    b, a = report["before"], report["after"]
    rows = [("params (M)", b["params"] / 1e6, a["params"] / 1e6, "{:.3f}"),
            ("MACs (M)", b["macs"] / 1e6, a["macs"] / 1e6, "{:.2f}"),
            (f"latency (ms, batch {report.get('latency_batch', '?')})", _ms(b["latency_s"]), _ms(a["latency_s"]),
             "{:.2f}"),
            ("top-1 (%)", _pct(b["top1"]), _pct(a["top1"]), "{:.1f}")]
    lines = [f"{'':24}{'baseline':>12}{'pruned':>12}{'change':>10}"]
    for label, before, after, fmt in rows:
        if before is None or after is None:
            continue
        change = f"{after - before:+.1f}" if label.startswith("top-1") else f"{(after / before - 1) * 100:+.1f}%"
        lines.append(f"{label:24}{fmt.format(before):>12}{fmt.format(after):>12}{change:>10}")
    t = report["top1"]
    if t.get("pruned") is not None:
        lines.append(f"top-1 right after pruning {_pct(t['pruned']):.1f}%, after BN re-calibration "
                     f"{_pct(t['recalibrated']):.1f}%, after fine-tuning {_pct(t['finetuned']):.1f}%")
    budget = " (latency target, see below)" if "latency" in report else f" (target {report['target']})"
    lines.append(f"FLOPs: {report['flops_ratio']:.4f} of the original{budget}")
    lines += [line for line in [format_latency(report)] if line]
    if report.get("deployment"):
        lines.append(format_deployment(report["deployment"]))
    return "\n".join(lines)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else fraction * 100


def run(args: argparse.Namespace, saved: str = "the pruned model, report.json and summary.md") -> int:
    """Entry point of ``wgates prune`` (and ``demo``); a user error reaches :func:`~wgates_plugin.app.cli.main`,
    which prints it as one line with exit status 2."""
    report = execute(args)
    print(format_table(report))
    print(f"saved {saved} to {args.out}")
    return 0
