"""The `reportgen` command: build, compare, validate, demo, publish, summary (SPEC.md, "Command line").

Exit codes: 0 ok, 1 a bug (traceback shown, it is ours), 2 bad spec or input
(one clear message, no traceback), 3 a --fail-on gate tripped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from reportgen import __version__
from reportgen.commands.baseline import FAIL_ON, gate_tripped
from reportgen.errors import EXIT_BAD_INPUT, EXIT_BUG, EXIT_FAIL_ON, EXIT_OK, ReportgenError
from reportgen.report import worst_finding


def _run_options(p: argparse.ArgumentParser, out: str, fail_on: str) -> None:
    """The options build and compare share: output folder, sections, device, cache, progress, gate."""
    p.add_argument("-o", "--out", dest="out_dir", metavar="OUT_DIR", help=out)
    p.add_argument("--only", nargs="+", metavar="SECTION", help="only these sections")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="override the spec's device")
    p.add_argument("--no-cache", action="store_true", help="recompute everything; ignore the cache")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--fail-on", choices=FAIL_ON, help=fail_on)
    p.add_argument("--budget", type=_budget, metavar="SECONDS",
                   help="seconds each model's sections should take, or auto (overrides the spec's budget:; "
                        "auto: 90 on CPU, 60 on CUDA)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reportgen", description="Build one self-contained HTML report of "
                                "what a trained CNN has learned.")
    p.add_argument("--version", action="version", version=f"reportgen {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    b = sub.add_parser("build", help="compute every section and write OUT_DIR/index.html + report.json",
                       description="Compute every section of SPEC and write OUT_DIR/index.html and "
                       "OUT_DIR/report.json atomically.")
    b.add_argument("spec", metavar="SPEC.yaml")
    _run_options(b, out="output folder (default: output.dir from the spec, else ./site next to it)",
                 fail_on="exit 3 when a finding of this severity or worse exists; new-warning/new-error: "
                         "only findings new since --baseline (the report is written)")
    b.add_argument("--audit-pass", dest="audit_pass", metavar="AUDIT.npz",
                   help="the errors/calibration/robustness dataset pass saved by `torchrun ... -m "
                        "reportgen.distributed audit`, used instead of running it (refused, exit 2, when it "
                        "was made on other weights, images, preprocessing or options)")
    b.add_argument("--topk", metavar="TOPK.npz",
                   help="the top-k section's dataset pass saved by `torchrun ... -m reportgen.distributed topk`, "
                        "used instead of streaming the dataset (refused, exit 2, when it was made on other "
                        "weights, images, preprocessing or top-k options)")
    b.add_argument("--baseline", metavar="PREVIOUS",
                   help="a previous report.json (or its folder): every finding gets a state "
                        "(new, updated, unchanged) and gone ones are listed as resolved")

    c = sub.add_parser("compare", help="two models on the same inputs: what changed, and is anything worse",
                       description="Run BASE and NEW on NEW's probes and dataset and write one report of "
                       "what changed: verdict, predictions, representations (CKA), weights, explanations, "
                       "findings. Writes OUT_DIR/index.html and OUT_DIR/report.json.")
    c.add_argument("base", metavar="BASE.yaml")
    c.add_argument("new", metavar="NEW.yaml")
    _run_options(c, out="output folder (default: ./compare next to NEW.yaml)",
                 fail_on="exit 3 when NEW has a finding of this severity or worse; new-warning/new-error: "
                         "only findings BASE did not have")
    c.add_argument("--pass", dest="pass_file", metavar="PASS.npz",
                   help="use the dataset pass (CKA, predictions, units) that `torchrun --nproc_per_node N "
                        "-m reportgen.distributed compare --base BASE.yaml --new NEW.yaml --out PASS.npz` "
                        "computed on the same specs and inputs, instead of running it here")

    v = sub.add_parser("validate", help="check the spec, its files, model, layers and checkpoints",
                       description="Parse SPEC and check every path, the model, layers and checkpoints. "
                       "Builds nothing. Exit 0 or 2.")
    v.add_argument("spec", metavar="SPEC.yaml")
    v.add_argument("--quiet", action="store_true", help="print nothing on success")

    d = sub.add_parser("demo", help="train a small CNN on a generated shapes task and build its report",
                       description="Generate a shapes task with known answers, train a small CNN on the "
                       "CPU, save checkpoints, probes and a spec to OUT_DIR, then build its report "
                       "(OUT_DIR/site), a compare with its mid-training checkpoint (OUT_DIR/compare) and "
                       "publish both to a site (OUT_DIR/public, whose index.html path is printed last). "
                       "A second run reuses what the first made.")
    d.add_argument("-o", "--out", dest="out_dir", default="reportgen-demo", metavar="OUT_DIR",
                   help="folder for the demo's data, checkpoints, spec, reports and site (default: ./reportgen-demo)")
    d.add_argument("--quiet", action="store_true", help="no progress on stderr")
    d.add_argument("--no-cache", action="store_true", help="recompute every section")

    pub = sub.add_parser("publish", help="add reports to a static site (GitHub Pages): SITE/reports/<ID>/, "
                         "manifest.json, index.html",
                         description="Copy each REPORT_DIR's index.html and report.json to "
                         "SITE_DIR/reports/<ID>/ and rewrite SITE_DIR/manifest.json and SITE_DIR/index.html "
                         "(a sortable, filterable list of every published report). Other files are left "
                         "byte-identical; publishing an existing ID replaces it.")
    pub.add_argument("report_dirs", nargs="+", metavar="REPORT_DIR",
                     help="a folder `reportgen build` or `reportgen compare` wrote")
    pub.add_argument("--site", required=True, metavar="SITE_DIR", help="the site's folder (created if need be)")
    pub.add_argument("--id", dest="report_id", metavar="ID",
                     help="the report's ID (one REPORT_DIR only; default: a slug of the title plus the first "
                          "8 hex digits of its spec digest)")
    pub.add_argument("--keep", type=int, metavar="N",
                     help="keep the N newest builds and N newest compares, and every build a kept compare "
                          "links to; drop the rest")
    pub.add_argument("--force", action="store_true",
                     help="adopt a non-empty SITE_DIR that has no manifest.json (it is refused otherwise: "
                          "its index.html would be overwritten)")

    s = sub.add_parser("summary", help="GitHub-flavoured Markdown of a report, for a PR comment or "
                       "$GITHUB_STEP_SUMMARY",
                       description="Print a report's verdict, findings with their states, key numbers and "
                       "(for a compare) largest changes as GitHub-flavoured Markdown, under 65,536 "
                       "characters, starting with a <!-- reportgen:ID --> marker line.")
    s.add_argument("report", metavar="REPORT", help="a report folder or its report.json")
    s.add_argument("-o", "--out", dest="out_file", metavar="FILE", help="write to FILE instead of stdout")
    s.add_argument("--link", metavar="URL", help="link the full (published) report")
    s.add_argument("--id", dest="report_id", metavar="ID",
                   help="the marker's ID: lower-case letters, digits, '.', '_', '-' (default: the report's "
                        "publish ID); a fixed one such as pr-review lets a workflow update one comment across pushes")
    return p


def _budget(text: str):
    from reportgen.commands.planning import parse_budget

    try:
        return parse_budget(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (a number > 0) or auto, got {text!r}") from None


def cmd_build(args) -> int:
    from reportgen.commands.build import build

    report = build(args.spec, out_dir=args.out_dir, only=args.only, device=args.device,
                   use_cache=not args.no_cache, quiet=args.quiet, baseline=args.baseline, budget=args.budget,
                   audit_pass=args.audit_pass, topk=args.topk)
    print(report.path)
    return _gate(report.findings, args.fail_on)


def _gate(findings, level: Optional[str]) -> int:
    """Exit 3 when ``--fail-on`` trips, naming what tripped it on stderr."""
    tripped = gate_tripped(findings, level)
    if not tripped:
        return EXIT_OK
    worst = worst_finding(tripped)
    print(f"reportgen: --fail-on {level}: {len(tripped)} finding(s), worst {worst['severity']}: "
          f"{worst['title']}", file=sys.stderr)
    return EXIT_FAIL_ON


def cmd_compare(args) -> int:
    from reportgen.commands.compare import compare

    report = compare(args.base, args.new, out_dir=args.out_dir, only=args.only, device=args.device,
                     use_cache=not args.no_cache, quiet=args.quiet, budget=args.budget,
                     pass_file=args.pass_file)
    print(report.path)
    return _gate(report.findings, args.fail_on)


def cmd_validate(args) -> int:
    from reportgen.spec import load_spec
    from reportgen.spec.resolve import resolve

    spec = load_spec(args.spec)
    res = resolve(spec)
    if not args.quiet:
        print(f"{args.spec}: ok ({len(res.checkpoints)} checkpoint(s), {len(res.probes)} probe(s), "
              f"{res.num_classes} classes, input {list(res.input_size)})")
    return EXIT_OK


def cmd_demo(args) -> int:
    from reportgen.commands.build import build
    from reportgen.commands.compare import compare
    from reportgen.commands.publish import publish
    from reportgen.demo import COMPARE_SECTIONS, mid_training_spec, prepare_demo

    out = Path(args.out_dir)
    spec_path = prepare_demo(out, quiet=args.quiet)
    report = build(spec_path, out_dir=out / "site", use_cache=not args.no_cache, quiet=args.quiet)
    print(report.path)
    review = compare(mid_training_spec(spec_path), spec_path, out_dir=out / "compare",
                     only=list(COMPARE_SECTIONS), use_cache=not args.no_cache, quiet=args.quiet)
    print(review.path)
    site = publish([report.path.parent, review.path.parent], out / "public")
    print(site.index)
    return EXIT_OK


def cmd_publish(args) -> int:
    from reportgen.commands.publish import publish

    done = publish(args.report_dirs, args.site, report_id=args.report_id, keep=args.keep, force=args.force)
    for rid in done.written:
        print(f"reportgen: published {rid}", file=sys.stderr)
    for rid in done.dropped:
        print(f"reportgen: dropped {rid} (--keep {args.keep})", file=sys.stderr)
    print(done.index)
    return EXIT_OK


def cmd_summary(args) -> int:
    from reportgen.commands.pr_comment import summary_markdown
    from reportgen.report import read_report

    data = read_report(args.report, "report")
    text = summary_markdown(data, report_id=args.report_id, link=args.link)     # it checks the ID
    if args.out_file:
        from reportgen.atomic import atomic_write
        from reportgen.errors import InputError

        out = Path(args.out_file)
        if not out.parent.is_dir():
            raise InputError("-o: its folder does not exist", out)
        atomic_write(out, text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    handler = {"build": cmd_build, "compare": cmd_compare, "validate": cmd_validate,
               "demo": cmd_demo, "publish": cmd_publish, "summary": cmd_summary}[args.command]
    try:
        return handler(args)
    except ReportgenError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; no report was written", file=sys.stderr)
        return 130
    except Exception:
        import traceback
        traceback.print_exc()
        print("reportgen: internal error (a bug in reportgen); please report it with the traceback above",
              file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
