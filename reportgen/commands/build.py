"""The build: resolve the spec, compute every section, then render one HTML file.

Gather, then render: sections compute (or come from the cache) first; the page
is filled from one context at the end and written atomically, so a failure at
any point leaves a previous report untouched.
"""
from __future__ import annotations

import contextlib
import html
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from reportgen import __version__
from reportgen.cache import SectionCache, digest_of, file_digest, to_plain
from reportgen.commands import planning
from reportgen.commands.baseline import diff_findings, load_baseline
from reportgen.engine import budget as bud
from reportgen.engine.throughput import cpu_threads
from reportgen.errors import NotApplicable, ReportgenError, SpecError
from reportgen.paths import public_path, public_text
from reportgen.progress import Progress
from reportgen.report import Outcome, build_report, write_pair
from reportgen.sections.base import BuildContext, Finding
from reportgen.sections.dataset_pass import gather
from reportgen.sections.registry import registry
from reportgen.spec import Spec, load_spec
from reportgen.spec.resolve import Resolved, resolve

SIZE_WARNING_BYTES = 10 * 1024 * 1024   # a site of a hundred such reports is a gigabyte


@dataclass(repr=False)
class Report:
    """What `reportgen.build` returns."""

    path: Path
    json_path: Path
    results: Dict[str, Any]
    data: Dict[str, Any]
    findings: List[Dict[str, Any]] = field(default_factory=list)   # each with its "state"
    resolved: List[Dict[str, Any]] = field(default_factory=list)   # baseline findings now gone

    def _repr_html_(self) -> str:
        """The report inline in Jupyter: a sandboxed iframe whose ``srcdoc`` holds the whole page.

        The notebook file then carries the report (it survives nbviewer, a download, a
        review); the sandbox gives it an opaque origin, so it cannot reach the notebook.
        """
        doc = self.path.read_text(encoding="utf-8")
        title = html.escape(self._title(), quote=True)
        return (f'<iframe title="{title}" sandbox="allow-scripts" srcdoc="{html.escape(doc, quote=True)}" '
                'style="width:100%;height:80vh;min-height:480px;border:1px solid #d1d9e0;border-radius:4px">'
                '</iframe>')

    def __repr__(self) -> str:
        """One line for a console (the dataclass default would print every result array)."""
        from reportgen.commands.publish import counts_text

        found = counts_text(self.findings) or "no findings"
        return f"<reportgen {self.data.get('kind', 'build')} {self._title()!r}: {found}; {self.path}>"

    def _title(self) -> str:
        from reportgen.commands.publish import title_of

        return title_of(self.data)


def _out_dir(spec: Spec, out_dir: Optional[Union[str, Path]]) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    if spec["output"]["dir"]:
        return spec.path(spec["output"]["dir"])
    return spec.base_dir / "site"


def cache_inputs_key(res: Resolved) -> str:
    """Everything a section's numbers depend on, hashed (versions and device too): the cache key's base."""
    spec = res.spec
    model_src: Dict[str, Any] = dict(spec["model"])
    if model_src.get("torchscript"):
        model_src["torchscript_digest"] = res.file_digest(spec.path(model_src["torchscript"]))
    if model_src.get("factory"):
        import importlib.util
        module = model_src["factory"].split(":")[0]
        found = importlib.util.find_spec(module)
        if found is not None and found.origin and os.path.isfile(found.origin):
            model_src["factory_digest"] = file_digest(Path(found.origin))
        from reportgen.model.loading import user_module_digests

        model_src["factory_modules"] = user_module_digests(module, spec.base_dir)
    if model_src.get("timm"):
        import timm

        model_src["timm_version"] = timm.__version__
    parts = {
        "version": __version__, "torch": torch.__version__, "device": res.device.type,
        "model": model_src, "seed": spec["seed"], "preprocess": spec["preprocess"],
        "checkpoints": [(c.label, res.file_digest(c.path)) for c in res.checkpoints],
        "checkpoint_weights": spec["checkpoint_weights"],
        "audit": res.audit_index,
        "probes": [(p.name, res.file_digest(p.path), p.target) for p in res.probes],
        "classes": res.classes,
        "dataset": [(str(p), c, os.path.getsize(p), os.stat(p).st_mtime_ns) for p, c in res.dataset],
        "metrics": _path_digest(res.metrics_path),
        "findings": spec["findings"],
    }
    return digest_of(parts)


def audit_inputs_digest(res: Resolved) -> str:
    """report.json's ``inputs_digest``: what the audited model is (SPEC.md, "Trust").

    The spec, the audited weights, the probe bytes, the dataset listing and the
    preprocessing; not reportgen's or torch's version nor the device, so the same
    model on another machine keeps its ID on a published site, and a new model
    trained from an unchanged spec gets its own.
    """
    spec = res.spec
    audit = res.checkpoints[res.audit_index] if res.audit_index is not None else None
    weights = res.file_digest(audit.path) if audit is not None else None
    if spec["model"].get("torchscript"):
        weights = [weights, res.file_digest(spec.path(spec["model"]["torchscript"]))]
    return digest_of({
        "spec": spec.digest, "weights": weights, "checkpoint_weights": spec["checkpoint_weights"],
        "probes": [(p.name, res.file_digest(p.path), p.target) for p in res.probes],
        "dataset": [(public_path(p, spec.base_dir), c) for p, c in res.dataset],
        "preprocess": spec["preprocess"], "input_size": list(res.input_size),
    })


def _path_digest(path: Optional[Path]) -> Optional[str]:
    """A file's digest, or a folder's (TensorBoard logs): every file under it, in order."""
    if path is None:
        return None
    if path.is_file():
        return file_digest(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return digest_of([(str(p.relative_to(path)), file_digest(p)) for p in files])


def make_context(res: Resolved) -> BuildContext:
    ctx = BuildContext(model=res.model, device=res.device, input_size=res.input_size,
                       probes=res.probes, classes=res.classes, checkpoints=res.checkpoints,
                       spec=res.spec, output_key=res.output_key, load_checkpoint=res.model_at,
                       dataset=res.dataset, seed=res.spec["seed"], metrics_path=res.metrics_path)
    return ctx


def selected_sections(spec: Spec, only: Optional[Sequence[str]]) -> List[str]:
    sections = registry()
    if only:
        unknown = [n for n in only if n not in sections]
        if unknown:
            from reportgen.errors import suggest

            raise SpecError(f"unknown section {unknown[0]!r}{suggest(unknown[0], sections)}; "
                            f"sections: {', '.join(sections)}", spec.file, "--only")
    names = []
    for name in sections:
        if only and name not in only:
            continue
        if spec["sections"].get(name, {}) is False:
            continue
        names.append(name)
    return names


def _plugin_code(cls: type) -> Optional[str]:
    """A plugin section's module, hashed: reportgen's version in the key covers only built-ins."""
    if cls.__module__.split(".")[0] == "reportgen":
        return None
    path = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return file_digest(Path(path)) if path and os.path.isfile(path) else None


def _budget_key(name: str, ctx: BuildContext) -> Optional[Dict[str, Any]]:
    """What the build plan decided for a section (its choices, its page share): part of its cache key."""
    sp = ctx.plan.sections.get(name) if ctx.plan is not None else None
    choices = sp.choices if sp is not None else {}
    share = ctx.page_share(name)
    if not choices and share is None:
        return None
    return {"choices": choices, "page_share": share}


def _run_section(name: str, ctx: BuildContext, options: Dict[str, Any], cache: SectionCache,
                 base_key: str, progress: Progress) -> Outcome:
    cls = registry()[name]
    section = cls(options)
    options = section.options
    parts = {"base": base_key, "section": name, "options": options, "code": _plugin_code(cls)}
    planned = _budget_key(name, ctx)
    if planned is not None:
        parts["budget"] = planned
    key = digest_of(parts)
    started = time.perf_counter()

    def outcome(summary: Dict[str, Any], findings: List[Dict[str, Any]], cached: bool = False,
                **rest: Any) -> Outcome:
        return Outcome(summary=summary, findings=findings, seconds=time.perf_counter() - started, cached=cached,
                       title=cls.title or name, partial=cls.partial, template_dir=cls.template_dir, **rest)

    hit = cache.get(key)
    if hit is not None:
        results, view, summary, findings = hit
        if view is None:                # a cached "does not apply": its reason and hint
            return outcome(summary, findings, cached=True, skipped=summary["skipped"], hint=results.get("hint"))
        return outcome(summary, findings, cached=True, results=results, view=view)
    torch.manual_seed(ctx.seed)
    try:
        section.check_applicable(ctx)
        result = section.analyze(ctx, options)
        view = section.view(result, ctx)
        summary = to_plain(section.summary(result))
        findings = [f.to_json() for f in section.findings(result, ctx)]
    except ReportgenError:
        raise
    except NotApplicable as e:
        summary = {"skipped": e.reason}
        cache.put(key, {"hint": e.hint}, None, summary, [])
        return outcome(summary, [], skipped=e.reason, hint=e.hint)
    except Exception as e:  # a bug or an unsupported model: report it, keep the rest
        raw = "".join(traceback.format_exception_only(type(e), e)).strip()
        progress.log(f"reportgen: section {name!r} failed: {raw}")   # this machine's log: paths in full
        detail = public_text(raw, ctx.spec.base_dir)     # the report may be published: public paths
        finding = Finding(id=f"section-failed-{name}", severity="error",
                          title=f"Section {section.title or name} could not be computed",
                          evidence=detail, section=name).to_json()
        return outcome({"error": detail}, [finding], error=detail)
    plain = to_plain(result)
    cache.put(key, plain, view, summary, findings)
    return outcome(summary, findings, results=plain, view=view)


def build(spec: Union[str, Path, Dict[str, Any], Spec], out_dir: Optional[Union[str, Path]] = None,
          only: Optional[Sequence[str]] = None, device: Optional[str] = None, use_cache: bool = True,
          quiet: bool = True, cache_dir: Optional[Path] = None,
          baseline: Optional[Union[str, Path]] = None,
          budget: Union[None, float, str] = None, audit_pass: Optional[Union[str, Path]] = None,
          topk: Optional[Union[str, Path]] = None) -> Report:
    """Build the report for ``spec``; raises SpecError/InputError on bad input.

    Seeds torch for reproducible results, inside a forked random state: the
    caller's random streams (a notebook's) continue as if no build had run.
    ``baseline``: a previous report.json (or its folder); every finding then
    gets a state (new, updated, unchanged) and gone ones are listed as resolved.
    ``budget``: seconds for the whole build (or "auto"), overriding the spec's ``budget:``.
    ``audit_pass``: the audit sections' dataset pass saved by ``reportgen.distributed audit``
    (checked against this spec's inputs; a stale one is an InputError). ``topk``: the top-k section's
    dataset pass saved by ``reportgen.distributed topk``, checked the same way.
    """
    with own_random_state():
        return _build(spec, out_dir, only, device, use_cache, quiet, cache_dir, baseline, budget, audit_pass,
                      topk)


@contextlib.contextmanager
def own_random_state() -> Iterator[None]:
    numpy_state = np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(numpy_state)


def _build(spec: Union[str, Path, Dict[str, Any], Spec], out_dir: Optional[Union[str, Path]],
           only: Optional[Sequence[str]], device: Optional[str], use_cache: bool, quiet: bool,
           cache_dir: Optional[Path], baseline: Optional[Union[str, Path]] = None,
           budget: Union[None, float, str] = None, audit_pass: Optional[Union[str, Path]] = None,
           topk: Optional[Union[str, Path]] = None) -> Report:
    started = time.perf_counter()
    progress = Progress(quiet)
    spec = load_spec(spec)
    previous = load_baseline(baseline) if baseline is not None else None   # bad input fails first
    progress.log(f"reportgen: checking {spec.file}")
    res = resolve(spec, device)
    if audit_pass is not None:
        from reportgen.sections.audit import use_audit_pass

        use_audit_pass(res.model, load_checked_audit_pass(audit_pass, res))
    if topk is not None:
        from reportgen.sections.topk import use_topk_pass

        use_topk_pass(res.model, load_checked_topk_pass(topk, res))
    target_dir = _out_dir(spec, out_dir)
    computed = compute_sections(res, selected_sections(spec, only), use_cache, cache_dir, progress, budget)
    outcomes = computed.outcomes
    from reportgen.render.page import page_size, public_notes, render_page

    findings, resolved = diff_findings([f for o in outcomes.values() for f in o.findings],
                                       previous["findings"] if previous else None)
    page = render_page(res, outcomes, findings, resolved, previous)
    size = page_size(page, list(outcomes))
    warn_if_heavy(size)
    data = build_report(spec_digest=spec.digest, title=spec["title"], model=model_entry(res),
                        notes=public_notes(res), outcomes=outcomes, findings=findings, resolved=resolved,
                        baseline=previous,
                        budget=computed.budget_entry(time.perf_counter() - started, size["bytes"]),
                        size=size, inputs_digest=audit_inputs_digest(res))
    index, json_path = write_pair(target_dir, page, data)
    progress.log(f"reportgen: wrote {index}")
    results = {n: o.results for n, o in outcomes.items()}
    return Report(path=index, json_path=json_path, results=results, data=data, findings=findings,
                  resolved=resolved)


def model_entry(res: Resolved) -> Dict[str, Any]:
    """report.json's ``model``: where the model came from, its classes, checkpoints and preprocessing."""
    from reportgen.model.loading import parameter_count
    from reportgen.render.page import model_source

    spec = res.spec
    audit = res.checkpoints[res.audit_index] if res.audit_index is not None else None
    return {
        "source": model_source(spec),
        "parameters": parameter_count(res.model),
        "input_size": list(res.input_size),
        "num_classes": res.num_classes,
        "classes": res.classes,
        "output": res.output_key if res.output_key is not None else "auto",
        "device": res.device.type,
        "audit_checkpoint": audit.label if audit else None,
        "checkpoints": [{"label": c.label, "path": public_path(c.path, spec.base_dir), "metrics": c.metrics,
                         "weights": c.weights, "other_weights": list(c.other_weights)}
                        for c in res.checkpoints],
        "checkpoint_weights": spec["checkpoint_weights"],
        "preprocess": {key: spec["preprocess"][key] for key in sorted(spec["preprocess"])},
        "preprocess_source": res.preprocess_source,
    }


def warn_if_heavy(size: Dict[str, Any]) -> None:
    """On stderr, even under --quiet (it is not progress): a report over SIZE_WARNING_BYTES,
    naming its heaviest sections. Not a finding: it must not trip --fail-on."""
    if size["bytes"] <= SIZE_WARNING_BYTES:
        return
    heavy = sorted(size["sections"].items(), key=lambda kv: -kv[1])[:3]
    names = ", ".join(f"{n} {b / 2**20:.1f} MB" for n, b in heavy)
    planning.warn(f"reportgen: warning: index.html is {size['bytes'] / 2**20:.1f} MB, over "
                  f"{SIZE_WARNING_BYTES // 2**20} MB (a site of many such reports gets slow to load and to "
                  f"clone); heaviest sections: {names}. To shrink it see docs/publishing.md, \"Keeping reports small\" "
                  "(--only, fewer probes, smaller section options).")


@dataclass
class Computed:
    """The sections' outcomes and the budget plan they ran under."""

    outcomes: Dict[str, Outcome]
    ctx: BuildContext
    planned: Dict[str, Any]

    def budget_entry(self, actual_s: float, page_size: Optional[int]) -> Dict[str, Any]:
        """The top-level ``budget`` of report.json, once the page is rendered."""
        entry = planning.build_entry(self.ctx.plan, self.planned["source"], self.planned["measure_s"], actual_s,
                                     page_size, self.planned["page_bytes"], self.ctx.page_shares)
        entry["threads"] = self.planned["threads"] or torch.get_num_threads()
        if self.planned.get("shared"):
            entry["shared"] = True
        if self.planned.get("overshoot"):
            entry["overshoot"] = self.planned["overshoot"]
        return entry


def plan_sections(res: Resolved, names: Sequence[str], use_cache: bool, cache_dir: Optional[Path],
                  progress: Progress, budget: Union[None, float, str] = None) -> Dict[str, Any]:
    """A plan for ``res``'s sections to share (``compute_sections(..., shared=)``): a compare of two
    models of one architecture plans once, so both sides run the same settings."""
    ctx = make_context(res)
    ctx.progress = progress
    planned = _plan(ctx, res.spec, names, budget, SectionCache(cache_dir, enabled=use_cache), progress)
    return dict(planned, plan=ctx.plan, page_shares=ctx.page_shares, shared=True)


def compute_sections(res: Resolved, names: Sequence[str], use_cache: bool, cache_dir: Optional[Path],
                     progress: Progress, budget: Union[None, float, str] = None,
                     shared: Optional[Dict[str, Any]] = None) -> Computed:
    """Every named section's outcome (computed or from the cache), with what the page needs of it.

    Shared by ``build`` and ``compare``: both plan the settings left on auto
    against the same budget, so a compare after both builds finds each
    model's sections in the cache. ``shared``: a plan from :func:`plan_sections`
    to use instead of planning here.
    """
    ctx = make_context(res)
    ctx.progress = progress
    # one pass over the dataset for every section that reads it: gathered before the plan prices it
    gather({name: registry()[name](res.spec["sections"].get(name) or {}) for name in names}, ctx)
    cache = SectionCache(cache_dir, enabled=use_cache)
    base_key = cache_inputs_key(res)
    if shared is not None:
        ctx.plan, ctx.page_shares = shared["plan"], shared["page_shares"]
        planned = {k: v for k, v in shared.items() if k not in ("plan", "page_shares")}
    else:
        planned = _plan(ctx, res.spec, names, budget, cache, progress)
    outcomes: Dict[str, Outcome] = {}
    with cpu_threads(planned["threads"]):
        for name in progress(names, desc="sections"):
            options = res.spec["sections"].get(name) or {}
            outcome = _run_section(name, ctx, options, cache, base_key, progress)
            progress.log(f"reportgen: {name} done in {outcome.seconds:.1f}s"
                         + (" (cached)" if outcome.cached else ""))
            outcomes[name] = outcome
    planning.annotate(outcomes, ctx)
    planned["overshoot"] = over = planning.overshoot(ctx.plan, outcomes)
    if over is not None:    # the next build measures again rather than trust the stored figure
        dropped = planning.forget(ctx, cache.root if cache.enabled else None)
        planning.warn(planning.overshoot_line(over, dropped))
    return Computed(outcomes, ctx, planned)


def _plan(ctx: BuildContext, spec: Spec, names: Sequence[str], budget: Union[None, float, str],
          cache: SectionCache, progress: Progress) -> Dict[str, Any]:
    """Measure the model, plan every setting left on auto and the page shares; fills ``ctx``."""
    seconds, source = planning.budget_seconds(spec, budget, ctx.device)
    sections = {name: registry()[name](spec["sections"].get(name) or {}) for name in names}
    needs = planning.section_needs(sections, ctx)
    knobs = any(n.knobs for n in needs.values())
    macs = planning.forward_macs(ctx) if knobs else None   # nothing to plan: not even a MAC count
    if knobs:
        rate, measure_s = planning.throughput(ctx, seconds, cache.root if cache.enabled else None, macs)
    else:   # nothing to choose (e.g. --only summary): no pass is spent on timing
        rate, measure_s = bud.Throughput(0.0, 0.0, 0, ctx.device.type, "not measured"), 0.0
    ctx.plan = bud.plan(needs, rate, seconds)
    page_bytes = int(spec["output"]["page_budget_mb"] * 1e6)
    ctx.page_shares = planning.page_shares(sections, ctx, page_bytes)
    for line in ctx.plan.long:
        planning.warn(line)
    if ctx.plan.over:
        planning.warn(f"reportgen: even the lowest automatic settings take about {bud.duration(ctx.plan.planned_s)}, "
                      f"over the {bud.duration(seconds)} budget less its reserve: expect a longer build, or raise "
                      "--budget, build fewer probes or sections (--only), or use --device cuda")
    how = {"reference": "priced from its MACs (a small model)", "stored": "as measured before",
           "not measured": "not measured (no setting to plan)"}.get(rate.source, "measured")
    progress.log(f"reportgen: budget {bud.duration(seconds)} ({source}); {rate.forward_s:.3g} s forward, "
                 f"{rate.backward_s:.3g} s forward+backward per image, {how}; planned "
                 f"{bud.duration(ctx.plan.planned_s)} of section work")
    return {"source": source, "measure_s": measure_s, "page_bytes": page_bytes,
            "threads": planning.section_threads(ctx, macs)}


# --------------------------------------------------------------------------- a sharded audit pass, read back

def audit_plan(ctx: BuildContext) -> Dict[str, Any]:
    """What the sharded pass computes for this spec: the robustness section's options at their best
    (no budget: sharding is how a build affords them), the mistakes kept and the calibration bins."""
    from reportgen.analyses.calibration import BINS
    from reportgen.sections.audit import MISTAKES_KEPT
    from reportgen.sections.robustness import JUDGED_SEVERITY, RobustnessSection

    section = RobustnessSection(ctx.spec["sections"].get("robustness") or {})
    best = section._ladder(ctx, section.options)[0]
    return {"corruptions": list(section.options["corruptions"]),
            "severities": sorted(set(int(s) for s in best["severities"])), "images": int(best["images"]),
            "example_severity": JUDGED_SEVERITY, "keep": MISTAKES_KEPT, "bins": BINS}


def audit_pass_header(res: Any, ctx: BuildContext) -> Dict[str, str]:
    """What a saved audit pass was computed on: the model's inputs (weights, images, preprocessing,
    device, versions) and the plan."""
    from reportgen import __version__

    return {"kind": "audit-pass", "version": __version__, "inputs": cache_inputs_key(res),
            "plan": json.dumps(audit_plan(ctx), sort_keys=True)}


def load_checked_audit_pass(path: Any, res: Any) -> Any:
    """A saved audit pass, refused (exit 2) unless it was computed on exactly this model, inputs and plan."""
    from reportgen.analyses.audit_pass import load_audit_pass
    from reportgen.report import validate_audit_pass_header

    return _load_checked(path, load_audit_pass, validate_audit_pass_header,
                         audit_pass_header(res, make_context(res)), "the robustness options", "audit", "--audit-pass")


def topk_plan(ctx: BuildContext, options: Dict[str, Any]) -> Dict[str, Any]:
    """What the top-k section streams for these options: its layers (auto: the last stages), how
    each holds its map, k per channel, and the channels it shows (as the section chooses them)."""
    from reportgen.model.layers import layer_layouts
    from reportgen.options import AUTO
    from reportgen.sections.topk import choose_layers

    auto = options["layers"] == AUTO
    names = choose_layers(ctx, options["layers"])
    layouts = layer_layouts(ctx.model, ctx.example(), names, AUTO if auto else options["layout"], ctx.output_key)
    return {"layers": names, "layouts": layouts, "k": int(options["k"]), "channels": options["channels"]}


def topk_pass_header(res: Any, plan: Dict[str, Any]) -> Dict[str, str]:
    """What a saved top-k pass was computed on: the model's inputs (weights, dataset listing,
    preprocessing, device, versions) and the plan (layers, their layouts, k, channels)."""
    shown = {"layers": list(plan["layers"]), "layouts": {n: lay.kind for n, lay in plan["layouts"].items()},
             "k": plan["k"], "channels": plan["channels"]}
    return {"kind": "topk-pass", "version": __version__, "inputs": cache_inputs_key(res),
            "plan": json.dumps(shown, sort_keys=True)}


def load_checked_topk_pass(path: Any, res: Any) -> Any:
    """A saved top-k stream state, refused (exit 2) unless it was computed on exactly this model,
    inputs and top-k options; its layouts are this build's (the same, being checked)."""
    from reportgen.analyses.topk_distributed import load_topk_pass
    from reportgen.report import validate_topk_pass_header
    from reportgen.sections.topk import TopKSection

    ctx = make_context(res)
    plan = topk_plan(ctx, TopKSection(res.spec["sections"].get("topk") or {}).options)
    state = _load_checked(path, load_topk_pass, validate_topk_pass_header, topk_pass_header(res, plan),
                          "the top-k options: layers, layouts, k, channels", "topk", "--topk")
    return replace(state, layouts=dict(plan["layouts"]))


def _load_checked(path: Any, load: Any, validate: Any, want: Dict[str, str], plan_words: str, command: str,
                  flag: str) -> Any:
    """A saved pass from ``load(path)``, its header validated and compared with ``want``: another
    model, inputs, version or plan is an InputError (exit 2) naming the file and what changed."""
    from reportgen.errors import InputError

    try:
        result, header = load(path)
    except ValueError as e:
        raise InputError(str(e).replace(f"{path} ", "", 1), path) from None
    validate(header, path)
    stale = [what for key, what in (("inputs", "the model or its inputs: weights, images, preprocessing, device"),
                                    ("version", "reportgen's version"), ("plan", plan_words))
             if header.get(key) != want[key]]
    if stale:
        raise InputError(f"the {command} pass was computed on other inputs ({'; '.join(stale)} changed since); "
                         f"rerun `torchrun ... -m reportgen.distributed {command}` or drop {flag}", path)
    return result
