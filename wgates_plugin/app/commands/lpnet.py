"""``wgates lpnet collect | table | train | eval``: measure latencies on this device, fit an LPNet or
tabulate every layer, score them.

Example::

    wgates lpnet collect --model resnet18 --input-size 64 --batch 8 --threads 1 --samples 300 --out r18.jsonl
    wgates lpnet train --samples r18.jsonl --kind network --out r18.lpnet.safetensors
    wgates prune --model resnet18 --lpnet r18.lpnet.safetensors --latency-target 0.6 ...

    wgates lpnet collect --model resnet50 --input-size 64 --samples 200 --blocks --out r50.jsonl
    wgates lpnet train --samples r50.jsonl --kind block --out bottleneck.lpnet.safetensors
    wgates lpnet collect --model resnet101 --input-size 64 --samples 30 --blocks --out r101.jsonl
    wgates lpnet eval --lpnet bottleneck.lpnet.safetensors --samples r101.jsonl

    wgates lpnet table --model resnet18 --input-size 64 --batch 8 --threads 1 --out r18.table.json
    wgates lpnet eval --table r18.table.json --samples r18.jsonl
    wgates prune --model resnet18 --latency-table r18.table.json --latency-target 0.6 ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ...config import BudgetMode, LayerBounds, WGatesConfig
from ...efficiency.latency import LatencyModel, LatencyPredictor, MeasuredLatency
from ...efficiency.lpnet import WEIGHT_DECAY_GRID, FitConfig, LatencyErrors
from ...efficiency.table import LatencyTable
from ...efficiency.timing import STATISTICS, Timing
from ...errors import ConfigError, MissingFileError
from ...files import check_writable, write_text
from ...profiling.lpnet_fit import evaluate_predictor, evaluate_table, train_predictor
from ...profiling.profiler import collect_latency
from ...profiling.samples import load_samples
from ...profiling.tables import collect_table
from ...utils import check_number
from ..models import model_from_spec

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("lpnet", help="latency samples, latency prediction networks (LPNet) and per-layer "
                                   "latency tables",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="lpnet_command", required=True)
    _collect_parser(sub)
    _table_parser(sub)
    _train_parser(sub)
    _eval_parser(sub)


def _measurement_arguments(p: argparse.ArgumentParser) -> None:
    """The model and the measurement setting, shared by ``collect`` and ``table``."""
    p.add_argument("--model", required=True,
                   help="a torchvision classification model (resnet18, torchvision:resnet18), a timm model "
                        "(timm:convnext_atto; the timm extra), or your builder module:function (imported from "
                        "the current folder or an installed package; called with num_classes= if it takes it)")
    p.add_argument("--num-classes", type=int, default=10, help="classifier width (default 10)")
    p.add_argument("--input-size", type=int, default=64, help="input height and width (default 64)")
    p.add_argument("--batch", type=int, default=8, help="batch size of the timed forward (default 8)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads while measuring (default 1)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: real latency; cpu: CPU time of the forward, stable on a busy shared machine "
                        "(needs --threads 1) (default wall)")
    p.add_argument("--runtime", choices=("pytorch", "onnxruntime"), default="pytorch",
                   help="pytorch: time eager PyTorch; onnxruntime: export each network (or layer) to ONNX and "
                        "time it in onnxruntime on the CPU, the deployment's latency (the onnx extra) "
                        "(default pytorch)")
    p.add_argument("--warmup", type=int, default=3, help="untimed forwards per measurement (default 3)")
    p.add_argument("--repeats", type=int, default=15, help="timed forwards per measurement (default 15)")
    p.add_argument("--statistic", choices=STATISTICS, default="median",
                   help="how the repeats become one latency: median, min (the least disturbed forward) or iqm "
                        "(the mean of the middle half) (default median)")
    p.add_argument("--prune-shortcuts", action="store_true", help="also vary residual-coupled groups")


def _collect_parser(sub: Any) -> None:
    p = sub.add_parser("collect", help="measure the latency of pruned candidates of a model on this device")
    _measurement_arguments(p)
    p.add_argument("--samples", type=int, required=True, help="number of pruned candidates to measure")
    p.add_argument("--out", required=True, help="samples file (JSON lines); an existing one is resumed")
    p.add_argument("--blocks", action="store_true", help="also time every residual block (for --kind block)")
    p.add_argument("--seed", type=int, default=0, help="candidate sampler seed (default 0)")
    p.add_argument("--spread", type=float, default=0.5, help="per-group spread around a common ratio (0.5)")
    p.add_argument("--reference-every", type=int, default=100,
                   help="re-measure the unpruned model before every N candidates; the reference latency is "
                        "the median (default 100)")
    p.add_argument("--min-keep", type=float, default=0.0, help="smallest kept fraction per group (default 0)")
    p.add_argument("--paired", action="store_true",
                   help="time every candidate in turns with the unpruned model and record its latency ratio to it "
                        "(a drifting machine moves both alike; twice the timing work; not with --blocks)")
    p.set_defaults(func=_collect)


def _table_parser(sub: Any) -> None:
    p = sub.add_parser("table", help="time every layer a gate moves over a grid of channel counts (a per-layer "
                                     "latency lookup table, the alternative to an LPNet)")
    _measurement_arguments(p)
    p.add_argument("--points", type=int, default=6,
                   help="grid points per varying channel axis, kept fractions 0..1 (default 6)")
    p.add_argument("--round-to", type=round_to_arg, default=1, metavar="N|auto",
                   help="grid channel counts are multiples of it, as pruning with --round-to; 'auto': the "
                        "multiple this device's kernels want, measured first (prune with --round-to auto) "
                        "(default 1)")
    p.add_argument("--out", required=True, help="latency table file to write (JSON)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.set_defaults(func=_table)


def _train_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="fit an LPNet on latency samples; report held-out errors")
    p.add_argument("--samples", required=True, help="samples file from 'wgates lpnet collect'")
    p.add_argument("--kind", choices=("network", "block"), default="network",
                   help="network: one LPNet on the whole encoding; block: one per block type (default network)")
    p.add_argument("--out", required=True, help="LPNet file to write (safetensors with JSON metadata)")
    p.add_argument("--epochs", type=int, default=300, help="training epochs (default 300)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    p.add_argument("--hidden", type=int, nargs=2, default=(128, 128), help="hidden widths (default 128 128)")
    p.add_argument("--mse", action="store_true", help="MSE on milliseconds instead of on log-latency")
    decay = p.add_mutually_exclusive_group()
    decay.add_argument("--weight-decay", type=float,
                       help="Adam's L2 weight decay, fixed (default: chosen by cross-validation)")
    decay.add_argument("--select-weight-decay", type=float, nargs="+", metavar="WD",
                       help="the weight decays tried by 4-fold cross-validation on the training candidates, the "
                            f"default way of choosing it (default {' '.join(map(str, WEIGHT_DECAY_GRID))})")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out share of candidates (0.2)")
    p.add_argument("--seed", type=int, default=0, help="split and initialization seed (default 0)")
    p.add_argument("--report", help="also write the held-out report to this JSON file")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out / --report")
    p.set_defaults(func=_train)


def _eval_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="score an LPNet or a latency table on a samples file (e.g. another model of "
                                    "the same blocks)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--lpnet", help="LPNet file from 'wgates lpnet train'")
    which.add_argument("--table", help="latency table from 'wgates lpnet table' (scored on samples of its model)")
    p.add_argument("--samples", required=True, help="samples file measured in the same context")
    p.add_argument("--report", help="also write the report to this JSON file")
    p.add_argument("--force", action="store_true", help="overwrite an existing --report")
    p.set_defaults(func=_eval)


def _measured_model(args: argparse.Namespace) -> tuple[Any, tuple[int, ...], Timing]:
    shape = (2, 3, args.input_size, args.input_size)
    model = model_from_spec(args.model, args.num_classes, shape)[0].eval()
    return model, shape, Timing(args.warmup, args.repeats, args.threads, args.clock, args.runtime, args.statistic)


def _collect(args: argparse.Namespace) -> int:
    if Path(args.out).is_dir():
        raise ConfigError(f"--out '{args.out}' is a folder; name the samples file to write (or to resume)")
    check_writable(Path(args.out).parent, "the folder of --out")
    model, shape, timing = _measured_model(args)
    config = WGatesConfig(mode=BudgetMode.NONE, prune_shortcuts=args.prune_shortcuts, bounds=LayerBounds(args.min_keep))
    samples = collect_latency(
        model, torch.zeros(shape), args.out, args.samples, device=args.device, batch=args.batch,
        timing=timing, seed=args.seed, spread=args.spread,
        reference_every=args.reference_every, config=config, blocks=args.blocks, model_name=args.model,
        paired=args.paired)
    ctx, reference = samples.context, samples.reference or {}
    print(f"{len(samples)} candidates + reference ({reference['ms']:.3f} ms) of {ctx['model']} on "
          f"'{ctx['device']}', input {ctx['input_shape']}, batch {ctx['batch']}, {ctx['threads']} threads "
          f"-> {args.out}")
    return 0


def _table(args: argparse.Namespace) -> int:
    _check_outputs(args, "out")
    model, shape, timing = _measured_model(args)
    config = WGatesConfig(mode=BudgetMode.NONE, prune_shortcuts=args.prune_shortcuts)
    table = collect_table(model, torch.zeros(shape), config=config, device=args.device, batch=args.batch,
                          timing=timing, points=args.points, round_to=args.round_to, model_name=args.model)
    table.save(args.out)
    info, ctx = table.info, table.context
    print(f"latency table of {ctx['model']} on '{ctx['device']}', input {ctx['input_shape']}, batch {ctx['batch']}: "
          f"{info['layers']} varying layers in {info['tables']} tables, {info['measurements']} measurements in "
          f"{info['seconds']:.1f} s; unpruned {table.reference['ms']:.3f} ms -> {args.out}")
    return 0


def _check_outputs(args: argparse.Namespace, *flags: str) -> None:
    """Before any work: every output flag given names a writable place, and no existing file unless --force."""
    for flag in flags:
        path = getattr(args, flag)
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"--{flag} '{path}' is a folder; name the file to write")
        if path.exists() and not args.force:
            raise ConfigError(f"--{flag} '{path}' exists; pass --force to overwrite it, or choose another name")
        check_writable(path.parent, f"the folder of --{flag}")


#: the default cross-validation of the weight decay is skipped below this many candidates (its folds
#: would score one or two networks each); an explicit --select-weight-decay still tries
MIN_CV_CANDIDATES = 10


def _train(args: argparse.Namespace) -> int:
    _check_outputs(args, "out", "report")
    fit = FitConfig(tuple(args.hidden), not args.mse, args.epochs, args.lr, weight_decay=args.weight_decay or 0.0,
                    seed=args.seed)
    samples = load_samples(args.samples)
    grid = None if args.weight_decay is not None else (args.select_weight_decay or WEIGHT_DECAY_GRID)
    if grid is not None and not args.select_weight_decay and len(samples.records) < MIN_CV_CANDIDATES:
        print(f"{len(samples.records)} candidates are too few to cross-validate the weight decay "
              f"(>= {MIN_CV_CANDIDATES}); weight decay 0 used")
        grid = None
    predictor, report = train_predictor(samples, args.kind, fit, args.test_fraction,
                                        args.seed, progress=True, weight_decays=grid)
    predictor.save(args.out)
    for t, c in report.get("weight_decay", {}).items():
        scores = ", ".join(f"{k}: {v:.2f} %" for k, v in c["cv_mape"].items())
        print(f"{t}: weight decay {c['chosen']} chosen by cross-validation on the training candidates ({scores})")
    _print_report(report, f"{args.kind} LPNet, held-out {report['n_test']} of "
                          f"{report['n_test'] + report['n_train']} candidates")
    _write(args.report, report)
    print(f"saved {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    _check_outputs(args, "report")
    if args.table:
        table = LatencyTable.load(args.table)
        report = evaluate_table(table, load_samples(args.samples))
        _print_report(report, f"latency table ({table.context['model']}) on {report['n_test']} candidates")
    else:
        predictor = LatencyPredictor.load(args.lpnet)
        samples = load_samples(args.samples)
        report = evaluate_predictor(predictor, samples)
        _print_report(report, f"{predictor.kind} LPNet ({predictor.context['model']}) on "
                              f"{report['n_test']} candidates of {samples.context['model']}")
    _write(args.report, report)
    return 0


def _print_report(report: dict[str, Any], title: str) -> None:
    print(title)
    print(f"  network latency: {LatencyErrors(**report['network'])}")
    for block_type, errors in report.get("blocks", {}).items():
        print(f"  {block_type.rsplit('.', 1)[-1]} blocks: {LatencyErrors(**errors)}")


def _write(path: str | None, report: dict[str, Any]) -> None:
    if path:
        write_text(path, json.dumps(report, indent=2))


# ---------------------------------------------------------------------------- latency mode of `wgates prune`
def add_latency_arguments(parser: argparse.ArgumentParser) -> None:
    """``--lpnet`` or ``--latency-table``, and ``--latency-target``: prune to a measured-latency budget."""
    parser.add_argument("--lpnet", type=Path, default=None,
                        help="LPNet file from 'wgates lpnet train': prune to a latency budget instead of FLOPs")
    parser.add_argument("--latency-table", type=Path, default=None,
                        help="per-layer latency table from 'wgates lpnet table': prune to a latency budget it "
                             "predicts (instead of an LPNet)")
    parser.add_argument("--latency-target", type=float, default=None, metavar="FRACTION",
                        help="latency budget as a fraction of the original model's measured latency, in (0, 1] "
                             "(needs --lpnet or --latency-table; replaces --flops-target)")


def round_to_arg(text: str) -> int | str:
    """``--round-to``: a positive integer, or ``'auto'``."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer or 'auto'")
    return value


def resolved_round_to(args: argparse.Namespace) -> int:
    """``--round-to`` for pruning: the number given, or with ``auto`` the multiple ``--latency-table`` measured.

    Raises:
        ConfigError: ``auto`` without a latency table (only a table collected on the device knows it).
    """
    if args.round_to != "auto":
        return int(args.round_to)
    table = getattr(args, "latency_table", None)
    if table is None:
        raise ConfigError("--round-to auto takes the channel multiple a latency table measured on the device "
                          "('wgates lpnet table --round-to auto'): pass --latency-table, or a number")
    return LatencyTable.load(table).round_to


def latency_efficiency(args: argparse.Namespace, model: Any, example_inputs: Any) -> Any:
    """The efficiency factory for ``WGates`` when ``--lpnet`` or ``--latency-table`` is given, else None.

    Raises:
        ConfigError: both cost models, or a cost model without ``--latency-target`` (or the reverse), or a
            target outside (0, 1].
        MissingFileError: the cost model's file does not exist.
    """

    lpnet, table = getattr(args, "lpnet", None), getattr(args, "latency_table", None)
    target = getattr(args, "latency_target", None)
    if lpnet is not None and table is not None:
        raise ConfigError(f"--lpnet ({lpnet}) and --latency-table ({table}) are two latency models; pass one")
    source, flag = (lpnet, "--lpnet") if table is None else (table, "--latency-table")
    if (source is None) != (target is None):
        raise ConfigError("--latency-target goes with --lpnet or --latency-table: the latency model predicts "
                          f"latency, the target sets the budget (got {flag}={source}, --latency-target={target})")
    if source is None or target is None:
        return None
    check_number("--latency-target", target, "(0, 1]", what="", type_error=ConfigError)
    if not Path(source).is_file():
        raise MissingFileError(f"{flag} file '{source}' does not exist")
    loaded = LatencyPredictor.load(source) if table is None else LatencyTable.load(source)
    return loaded.efficiency(model, example_inputs)


def latency_report(wg: Any, pruned: Any) -> dict[str, Any]:
    """``{'latency': predicted vs measured latency of the exported model}`` in latency mode, else ``{}``."""

    if not isinstance(wg.efficiency, MeasuredLatency):
        return {}
    model = "LPNet" if isinstance(wg.efficiency, LatencyModel) else "latency table"
    return {"latency": wg.efficiency.compare(pruned, wg.counts()) | {"cost_ratio": wg.cost_ratio(),
                                                                     "cost_model": model}}


def format_latency(report: dict[str, Any]) -> str | None:
    """One line for the prune table: the latency model's prediction against the measurement."""
    lat = report.get("latency")
    if not lat:
        return None
    line = (f"latency ({lat['cost_model']} device and batch): predicted {lat['predicted_ms']:.3f} ms, measured "
            f"{lat['measured_ms']:.3f} ms ({lat['error_pct']:+.1f}%), original {lat['reference_ms']:.3f} ms; "
            f"predicted {lat['cost_ratio']:.4f} of the original (target {report['target']})")
    landing = report.get("latency_landing")
    if landing:
        line += (f"\nlanded on the measured latency in {len(landing['rounds'])} round(s): "
                 f"{landing['measured_ratio']:.4f} of the original ({landing['gap_pct']:+.1f}% from the target; "
                 f"{'within' if landing['within'] else 'NOT within'} ±{100 * landing['tolerance']:g}%)")
    return line
