"""Dataset passes sharded over processes with ``torch.distributed`` (launched by torchrun).

    torchrun --standalone --nproc_per_node N -m reportgen.distributed topk \\
        --spec spec.yaml --out topk.npz [--layers a b] [--channels 16] [--k 9]
    reportgen build spec.yaml --topk topk.npz
    torchrun --standalone --nproc_per_node N -m reportgen.distributed compare \\
        --base BASE.yaml --new NEW.yaml --out pass.npz
    reportgen compare BASE.yaml NEW.yaml --pass pass.npz
    torchrun --standalone --nproc_per_node N -m reportgen.distributed audit \\
        --spec spec.yaml --out audit.npz
    reportgen build spec.yaml --audit-pass audit.npz

Each rank resolves the spec(s) (the same checks as ``reportgen build`` /
``compare``), streams its shard of the dataset, and rank 0 writes the merged
result, equal to one process (top-k exactly; the compare's CKA up to float64
rounding, its counts and flips exactly). gloo on CPU, nccl when CUDA is
available (``cuda:LOCAL_RANK``). ``reportgen build --topk``, ``--audit-pass``
and ``reportgen compare --pass`` then use the saved pass instead of running
it, after checking it was made on the same models, inputs and options.
The algorithms live in ``reportgen.analyses``; this module is only the entry.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from reportgen.analyses.topk_distributed import distributed_stream_topk, save_topk_pass
from reportgen.engine.batching import dataset_batch


def _device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    root = argparse.ArgumentParser(prog="torchrun ... -m reportgen.distributed",
                                   description="Dataset passes sharded over torchrun processes.")
    sub = root.add_subparsers(dest="command", required=True)
    ap = sub.add_parser("topk", help="top-k dataset patches (sections.topk)")
    ap.add_argument("--spec", required=True, help="the report spec (model, checkpoints, dataset)")
    ap.add_argument("--out", required=True, help="where rank 0 writes the merged pass (.npz), for `reportgen "
                                                 "build --topk`")
    ap.add_argument("--layers", nargs="*", default=None, help="default: the spec's sections.topk.layers")
    ap.add_argument("--channels", type=int, default=None, help="default: the spec's sections.topk.channels")
    ap.add_argument("--k", type=int, default=None, help="default: the spec's sections.topk.k")
    cp = sub.add_parser("compare", help="the dataset pass of `reportgen compare` (CKA, predictions, units)")
    cp.add_argument("--base", required=True, help="BASE's spec (as `reportgen compare BASE NEW`)")
    cp.add_argument("--new", required=True, help="NEW's spec: its probes and dataset are the inputs")
    cp.add_argument("--out", required=True, help="where rank 0 writes the pass (.npz), for `reportgen "
                                                 "compare --pass`")
    au = sub.add_parser("audit", help="the dataset pass of the errors, calibration and robustness sections")
    au.add_argument("--spec", required=True, help="the report spec (model, checkpoints, labelled dataset)")
    au.add_argument("--out", required=True, help="where rank 0 writes the pass (.npz), for `reportgen build "
                                                 "--audit-pass`")
    return root.parse_args(argv)


def _audit(args: argparse.Namespace, device: torch.device) -> int:
    """Each rank streams its shard of the audit pass; rank 0 writes the merged pass."""
    from reportgen.analyses.audit_pass import distributed_audit_pass, save_audit_pass
    from reportgen.commands.build import audit_pass_header, audit_plan, make_context
    from reportgen.sections.audit import dataset_labels
    from reportgen.sections.dataset_pass import dataset_for
    from reportgen.spec import load_spec
    from reportgen.spec.resolve import resolve

    res = resolve(load_spec(args.spec), device.type)
    if not res.dataset:
        print(f"reportgen: {args.spec}: the spec has no dataset: add a `dataset:` to it", file=sys.stderr)
        return 2
    res.model.to(device)
    ctx = make_context(res)
    plan, found, data = audit_plan(ctx), dataset_labels(ctx), res.spec["dataset"]
    result = distributed_audit_pass(
        res.model, dataset_for(ctx), found.labels, list(found.names), plan["corruptions"], plan["severities"],
        plan["images"], dataset_batch(data["batch_size"], device.type), data["workers"], device, res.output_key,
        plan["keep"], res.spec["seed"], plan["example_severity"])
    if result is not None:
        save_audit_pass(Path(args.out), result, audit_pass_header(res, ctx))
        print(f"rank 0 of {dist.get_world_size()}: wrote {args.out}", file=sys.stderr)
    return 0


def _compare(args: argparse.Namespace, device: torch.device) -> int:
    """Each rank streams its shard of the compare pass; rank 0 writes the merged pass."""
    from reportgen.analyses.compare_pass import save_pass
    from reportgen.analyses.weight_diff import architecture_mismatch
    from reportgen.commands.compare import dataset_pass, pass_header, resolve_pair

    _, _, base, new = resolve_pair(args.base, args.new, device.type)
    base.model.to(device), new.model.to(device)
    same = not architecture_mismatch(base.model, new.model)
    result = dataset_pass(base, new, same, distributed=True)
    if dist.get_rank() == 0:
        save_pass(args.out, result, pass_header(base, new))
        print(f"rank 0 of {dist.get_world_size()}: wrote {args.out}", file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """torchrun entry: each rank resolves the spec, streams its shard; rank 0 writes the npz."""
    from reportgen.commands.build import make_context, topk_pass_header, topk_plan
    from reportgen.errors import ReportgenError
    from reportgen.sections.dataset_pass import dataset_for
    from reportgen.sections.topk import TopKSection
    from reportgen.spec import load_spec
    from reportgen.spec.resolve import resolve

    args = _parse(argv)
    device = _device()
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        if args.command in ("compare", "audit"):
            try:
                code = (_compare if args.command == "compare" else _audit)(args, device)
            except ReportgenError as e:
                print(f"reportgen: {e}", file=sys.stderr)
                return 2
            dist.barrier()    # as below: no rank tears gloo down while a peer still uses it
            return code
        try:
            res = resolve(load_spec(args.spec), device.type)
        except ReportgenError as e:
            print(f"reportgen: {e}", file=sys.stderr)
            return 2
        if not res.dataset:
            print(f"reportgen: {args.spec}: the spec has no dataset: add a `dataset:` to it", file=sys.stderr)
            return 2
        ctx = make_context(res)
        options = TopKSection(res.spec["sections"].get("topk") or {}).options
        if args.layers:                 # named on the command line: read as the spec would name them
            options = dict(options, layers=list(args.layers))
        options = dict(options, channels=args.channels or options["channels"], k=args.k or options["k"])
        plan = topk_plan(ctx, options)
        data = res.spec["dataset"]
        state = distributed_stream_topk(res.model.to(device), dataset_for(ctx), plan["layers"], plan["k"],
                                        dataset_batch(data["batch_size"], device.type), data["workers"], device,
                                        layouts=plan["layouts"])
        if dist.get_rank() == 0:
            save_topk_pass(Path(args.out), state, topk_pass_header(res, plan))
            print(f"rank 0 of {dist.get_world_size()}: wrote {args.out}", file=sys.stderr)
        # the other ranks wait for rank 0's second step: tearing gloo down while a peer
        # still holds the group aborts the process ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
