"""The one ``marvit`` command. Thin: it parses arguments, loads configs and calls into a subpackage.

Each subcommand's implementation is imported only when that subcommand runs, so ``marvit --help`` and
``marvit info`` stay fast and do not import DALI, Triton or transformers.

A bad input (a missing file, a wrong key or value, a corrupt checkpoint or shard) raises
:class:`marvit.errors.InputError` somewhere below; here it becomes one line on stderr, naming the input, and
exit status 2, without a traceback (``--debug`` or ``MARVIT_DEBUG=1`` shows it); so does an OSError of the
machine (no space, permission, read-only file system), naming the path and the errno. A diverged run exits
3 and a run stopped by a signal 75 (docs/faults.md). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from marvit.errors import InputError


def _classes_arg(text: str) -> int | list[str]:
    """``--classes``: a count, or comma-separated class names (checked by the synth command)."""
    try:
        return int(text)
    except ValueError:
        return [n.strip() for n in text.split(",") if n.strip()]


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's help shows each option's default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def _call(target: str, **kwargs: Any) -> int:
    module, _, fn = target.partition(":")
    rc = getattr(importlib.import_module(module), fn)(**kwargs)
    return int(rc or 0)


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", dest="as_json", action="store_true", help="print one JSON object instead of a table"
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="vit_b", help="model preset: vit_s, vit_b, vit_l or vit_h")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--size", type=int, default=224, help="frame size (pixels)")
    p.add_argument("--mask-ratio", type=float, default=0.5, help="masked fraction of the tokens")
    p.add_argument("--decoder-keep", type=float, default=1.0, help="share of masked tokens reconstructed")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="marvit", description="Masked Action Recognition for video ViTs")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a bad-input error too")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("info", help="versions, device, and which attention and kernel paths are active")
    _add_json(p)

    p = sub.add_parser("doctor", help="each fast path once against its plain twin, on this machine")
    p.add_argument("--out", default="doctor_out", help="directory for doctor.json")
    p.add_argument("--only", nargs="+", default=None, help="run only these checks (names as in the table)")
    _add_json(p)

    # ---- data -------------------------------------------------------------------------------------
    p = sub.add_parser("synth", help="make a synthetic action data set encoded to H.264 mp4")
    p.add_argument("out", help="output directory (videos/, train.csv, val.csv, classes.txt, ...)")
    p.add_argument("--classes", type=_classes_arg, default=6,
                   help="motion classes: the first N (1-12), or comma-separated names (move_right,move_left,...)")  # fmt: skip
    p.add_argument("--per-class", type=int, default=24, help="videos per class")
    p.add_argument("--frames", type=int, default=32, help="frames per video")
    p.add_argument("--size", type=int, default=64, help="frame side (pixels, even)")
    p.add_argument("--seed", type=int, default=0, help="the data set's seed")
    p.add_argument("--val-fraction", type=float, default=0.25, help="share of each class in val.csv")
    p.add_argument("--style", choices=["textures", "dots"], default="textures",
                   help="smooth moving textures (redundant, like natural video) or random dots (not)")  # fmt: skip
    p.add_argument("--background", choices=["moving", "static"], default="moving",
                   help="the whole scene moves, or textured objects move over a still background")  # fmt: skip

    from marvit.pipeline import encoding as E  # defaults only: no PyAV or numpy import

    p = sub.add_parser("convert", help="convert a data set to WebDataset shards with DALI index files")
    p.add_argument("src", help="the data set's video directory")
    p.add_argument("out", help="output directory (shards, DALI indexes, manifest.json)")
    p.add_argument("--format", dest="fmt", choices=["folder", "kinetics", "ssv2", "list"], required=True,
                   help="source layout: class folders, Kinetics CSV, SSv2 JSON, or 'path label' lines")  # fmt: skip
    p.add_argument("--annotations", default=None,
                   help="CSV / JSON / list file (kinetics, ssv2, list)")  # fmt: skip
    p.add_argument("--labels", default=None,
                   help="class list: ssv2 labels JSON (found beside --annotations if omitted), or the full "
                        "list of names for the other formats")  # fmt: skip
    p.add_argument("--split", default="train", help="split name, in shard names and keys")
    p.add_argument("--short-side", type=int, default=E.DEFAULT_SHORT_SIDE,
                   help="re-encode at this short side, never upscaled")  # fmt: skip
    p.add_argument("--gop", type=int, default=E.DEFAULT_GOP,
                   help="closed GOP length in frames; shorter = less decoding, bigger shards, see "
                        "docs/encoding.md")  # fmt: skip
    p.add_argument("--all-intra", action="store_true",
                   help="every frame a keyframe (--gop 1): least decoding, largest shards")  # fmt: skip
    p.add_argument("--fastdecode", action=argparse.BooleanOptionalAction, default=E.DEFAULT_FASTDECODE,
                   help="x264's fastdecode tune (CAVLC, no deblocking): about half the decode CPU for ~1.1x "
                        "the bytes")  # fmt: skip
    p.add_argument("--crf", type=int, default=E.DEFAULT_CRF,
                   help="x264 constant rate factor, lower = better and bigger")  # fmt: skip
    p.add_argument("--copy", action="store_true",
                   help="keep the original bytes where already H.264 yuv420p mp4")  # fmt: skip
    p.add_argument("--shard-size", type=int, default=E.DEFAULT_SHARD_SIZE,
                   help="samples per shard")  # fmt: skip
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the shuffled order samples are written in")  # fmt: skip
    p.add_argument("--min-frames", type=int, default=E.DEFAULT_MIN_FRAMES,
                   help="a clip with fewer frames is flagged as short")  # fmt: skip
    p.add_argument("--short", choices=["keep", "skip"], default="keep",
                   help="what to do with short clips; both list them in the manifest")  # fmt: skip
    p.add_argument("--workers", type=int, default=2, help="encoding processes")
    p.add_argument("--part", default="0/1",
                   help="I/N: convert part I (from 0) of N, e.g. a Slurm array task; then `marvit manifest "
                        "merge OUT` (docs/cluster.md)")  # fmt: skip

    p = sub.add_parser("manifest", help="a conversion's manifest: merge the parts of a split")
    msub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    m = msub.add_parser("merge", help="check that every part of a split finished; write the one manifest")
    m.add_argument("out", help="the `marvit convert` output directory the parts wrote to")
    m.add_argument("--split", default="train", help="the split whose parts to merge")

    p = sub.add_parser("verify", help="check every shard against the manifest")
    p.add_argument("out", help="a `marvit convert` output directory")
    p.add_argument("--json", dest="as_json", action="store_true",
                   help="print one JSON object instead of a table")  # fmt: skip

    # ---- training ---------------------------------------------------------------------------------
    for name, help_ in [("train", "train a model (MAR, standard or VideoMAE pretraining)"),
                        ("eval", "multi-view evaluation of a checkpoint"),
                        ("profile", "torch.profiler over a few steps of each scheme")]:  # fmt: skip
        p = sub.add_parser(name, help=help_)
        p.add_argument("config", help="a YAML config (configs/*.yaml)")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides, before or after the options")
        if name == "eval":
            p.add_argument("--checkpoint", required=True,
                           help="a checkpoint directory, or a run directory (its best checkpoint)")  # fmt: skip
            p.add_argument("--views", default=None,
                           help="CLIPSxCROPS, e.g. 5x3 (default: data.test_clips x data.test_crops)")  # fmt: skip
            p.add_argument("--no-mask", action="store_true", help="evaluate without the evaluation mask")
            p.add_argument("--out", default="eval_out",
                           help="directory for eval.json (written after the result is printed)")  # fmt: skip
        if name == "profile":
            p.add_argument("--steps", type=int, default=4, help="profiled training steps per scheme")
            p.add_argument("--out", default="profile_out", help="output directory")
            p.add_argument(
                "--compile", action="store_true", help="compile the transformer blocks (train.compile)"
            )

    p = sub.add_parser(
        "recipe", help="the recipe a run would train on N GPUs, beside the official run, and its cost"
    )
    p.add_argument("config", help="a YAML config (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, before or after the options")
    p.add_argument("--gpus", type=int, required=True, help="the number of GPUs (processes) of the run")
    p.add_argument("--json", dest="as_json", action="store_true", help="one JSON object instead of a table")
    p.add_argument("--gpu", default="v100", help="the GPU the cost is estimated for (v100, a100, h100)")
    p.add_argument("--mfu", type=float, default=0.3, help="model FLOPs utilization of the estimate")
    p.add_argument("--train-videos", type=int, default=None,
                   help="videos in the training split (default: data.root's manifest, else the paper's)")  # fmt: skip

    p = sub.add_parser("demo", help="the whole system on the packaged demo (marvit/configs/demo.yaml)")
    p.add_argument("--out", default="demo_out", help="directory for the data, runs, report and plots")
    p.add_argument("--quick", action="store_true", help="a reduced run (seconds), as the tests use")
    p.add_argument("--static", action="store_true",
                   help="instead: standard, MAR and MAR + static-tubelet dropping on a static-background set (OUT/static)")  # fmt: skip
    p.add_argument("--epochs", type=int, default=None,
                   help="with --static: fine-tuning epochs per run (default: the demo config's train.epochs)")  # fmt: skip

    p = sub.add_parser("visualize", help="masks and reconstructions of a clip")
    p.add_argument("--out", default="visualize_out")
    p.add_argument("--video", default=None, help="a video file; a synthetic clip when omitted")
    p.add_argument("--checkpoint", default=None, help="a marvit checkpoint with a decoder")
    p.add_argument("--config", default=None)
    p.add_argument("--ratio", type=float, default=0.5)

    # ---- benchmarks -------------------------------------------------------------------------------
    bench = sub.add_parser("bench", help="FLOPs, kernels, data pipeline and step benchmarks")
    bsub = bench.add_subparsers(dest="bench", required=True)

    p = bsub.add_parser("flops", help="FLOPs and parameters of a model (fvcore counting)")
    _add_model_args(p)
    p.add_argument("--mask", default="cell_running", help="mask strategy")
    from marvit.config import HEADS  # the config's list; "none" (pretraining) has no head to count

    p.add_argument("--head", choices=[h for h in HEADS if h != "none"], default="bridging",
                   help="classification head")  # fmt: skip
    p.add_argument("--classes", type=int, default=400, help="number of classes")
    p.add_argument("--train", action="store_true", help="add the reconstruction decoder")
    _add_json(p)

    p = bsub.add_parser("kernels", help="fused masked patch embedding vs reference vs Conv3d-then-gather")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per case")
    p.add_argument("--out", default=None, help="directory for kernels.json")
    _add_json(p)

    p = bsub.add_parser("pipeline", help="data loader clips/s vs a naive baseline")
    p.add_argument("--shards", required=True, help="a convert output directory or a shard pattern")
    p.add_argument("--backend", choices=["dali", "pyav"], default="dali")
    p.add_argument("--split", default="train")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--clips", type=int, default=64, help="clips to time per loader")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--pipelines", default="1,2,4,7", help="DALI pipelines per rank to sweep (dali only)")
    p.add_argument("--out", default=None, help="directory for pipeline.json")
    _add_json(p)

    p = bsub.add_parser("encoding", help="shard size against decode work for GOP / all-intra / fastdecode")
    p.add_argument("--clips", type=int, default=3, help="synthetic 10 s source clips")
    p.add_argument(
        "--draws", type=int, default=8, help="sampled clips per source, setting and rule per round"
    )
    p.add_argument("--rounds", type=int, default=2, help="interleaved measurement rounds")
    p.add_argument("--out", default=None, help="directory for encoding.json")
    _add_json(p)

    p = bsub.add_parser("tokens", help="kept-token fraction per clip when static tubelets are dropped")
    p.add_argument("--shards", required=True, help="a convert output directory or a shard pattern")
    p.add_argument("--split", default="val")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--size", type=int, default=224, help="center crop side (pixels)")
    p.add_argument("--sampling-rate", type=int, default=4, help="frame stride")
    p.add_argument("--clips", type=int, default=64, help="clips to measure")
    p.add_argument(
        "--thresholds", default="0.05,0.1,0.2", help="mask.static_threshold values, comma-separated"
    )
    p.add_argument("--backend", choices=["pyav", "dali"], default="pyav")
    p.add_argument("--out", default=None, help="directory for tokens.json and tokens.md")
    _add_json(p)

    p = bsub.add_parser("step", help="training and inference step time, standard vs MAR")
    _add_model_args(p)
    p.add_argument("--standard-preset", default=None, help="the standard scheme's preset (default: --preset)")
    p.add_argument("--batch", type=int, default=2, help="clips per step")
    p.add_argument("--iters", type=int, default=5, help="timed iterations (the median is reported)")
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed iterations first (at least 2 with --compile)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--checkpoint-heads", action="store_true", help="activation checkpointing of MAR's heads")
    p.add_argument(
        "--variants",
        action="store_true",
        help="also time MAR with --decoder-keep (0.5 if not given), with checkpointed heads, and both",
    )
    p.add_argument("--sweep", action="store_true", help="mask ratios 0, 25, 50, 75%% and a PNG")
    p.add_argument("--compile", action="store_true",
                   help="also time every job with its blocks compiled (train.compile), eager beside compiled")  # fmt: skip
    p.add_argument("--shards", default=None,
                   help="time on a batch of real clips from this convert output; with --variants adds MAR + static")  # fmt: skip
    p.add_argument(
        "--static-threshold", type=float, default=0.1, help="mask.static_threshold of MAR + static"
    )
    p.add_argument("--out", default="bench_step", help="directory for step.json and the PNG")
    _add_json(p)
    return parser


CONFIG_COMMANDS = {"train": "marvit.train.loop:train", "eval": "marvit.train.evaluate:main",
                   "profile": "marvit.bench.profile:main", "recipe": "marvit.bench.recipe:main"}  # fmt: skip
COMMANDS = {
    "info": "marvit.bench.info:main",
    "doctor": "marvit.bench.doctor:main",
    "synth": "marvit.pipeline.synth:main",
    "convert": "marvit.pipeline.convert:convert",
    "verify": "marvit.pipeline.convert:verify",
    "manifest": "marvit.pipeline.parts:{action}",
    "demo": "marvit.demo:main",
    "visualize": "marvit.bench.visualize:main",
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    args = dict(vars(ns))
    cmd = args.pop("command")
    debug = args.pop("debug") or os.environ.get("MARVIT_DEBUG", "") not in ("", "0")
    if cmd in CONFIG_COMMANDS:  # key=value overrides may also follow the options
        args["overrides"] = [*args["overrides"], *(x for x in extra if "=" in x and not x.startswith("-"))]
        extra = [x for x in extra if not ("=" in x and not x.startswith("-"))]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if cmd == "bench":
            return _call(f"marvit.bench.{args.pop('bench')}:main", **args)
        if cmd in CONFIG_COMMANDS:
            from marvit.config import load_config

            # the config's own checks, then those that need the data or the device, before any work
            cfg = load_config(args.pop("config"), args.pop("overrides"))
            return _call(CONFIG_COMMANDS[cmd], cfg=cfg, **args)
        if cmd == "demo" and args.pop("static"):  # standard, MAR and MAR + static dropping, in OUT/static
            return _call("marvit.demo_static:main", **{**args, "out": os.path.join(args["out"], "static")})
        if cmd == "manifest":
            return _call(COMMANDS[cmd].format(action=args.pop("action")), **args)
        return _call(COMMANDS[cmd], **args)
    except InputError as e:
        if debug:
            raise
        name = f"{cmd} {ns.bench}" if cmd == "bench" else cmd
        print(f"marvit {name}: {e}", file=sys.stderr)
        return getattr(e, "status", 2)  # a diverged run: 3 (marvit/train/guard.py)
    except OSError as e:  # the machine's, not marvit's: a full disk, a permission, a read-only mount
        from marvit.train.fsio import ENVIRONMENT_ERRNOS, describe

        if debug or e.errno not in ENVIRONMENT_ERRNOS:
            raise
        name = f"{cmd} {ns.bench}" if cmd == "bench" else cmd
        print(f"marvit {name}: {describe(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"marvit {cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
