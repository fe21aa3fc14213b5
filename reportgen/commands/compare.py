"""``reportgen compare BASE NEW``: two models on the same inputs, and what changed between them.

A review asks "what changed since the last model, and is anything worse?".
Both models run on NEW's probes and dataset (BASE's are ignored, and the
report says so). Each model's sections come from the same cache a ``build``
fills, so a compare after both builds computes only what crosses models: one
dataset pass that feeds the per-layer CKA, the prediction comparison and the
units that changed most (``analyses.compare_pass``, ``analyses.units``; sharded
by ``reportgen.distributed compare`` and read back with ``--pass``), the weight
change (same architecture only), the rank similarity of the two models'
explanations, both models' training curves, and the findings diff.

(The module is ``comparison``, not ``compare``: ``reportgen.compare`` is the
function, and a submodule of that name would shadow it once imported.)
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from reportgen import __version__
from reportgen.commands.baseline import diff_findings
from reportgen.commands.build import (
    Progress,
    Report,
    audit_inputs_digest,
    compute_sections,
    own_random_state,
    plan_sections,
    selected_sections,
    warn_if_heavy,
)
from reportgen.commands.compare_audit import audit_json, audit_sentences
from reportgen.errors import SpecError
from reportgen.paths import public_path
from reportgen.report import Outcome, compare_report, results_of, worst_finding, write_pair
from reportgen.spec import Spec, load_spec
from reportgen.spec.resolve import Resolved, resolve

# The compare page's parts, by their <section> ids: report.json's "size" counts each.
COMPARE_PARTS = ("verdict", "predictions", "audit", "representations", "units", "weights", "explanations", "training",
                 "findings")

SpecSource = Union[str, Path, Dict[str, Any], Spec]
ATTRIBUTION_SECTIONS = ("cam", "gradients", "occlusion")
# CKA features: each channel pooled to the finest grid (up to CKA_GRID x CKA_GRID) that keeps a
# layer within CKA_MAX_FEATURES. Coarse pooling (2x2) makes every early linear layer look alike
# (a pooled convolution is a linear map of the pooled image, whatever its filters), so a
# re-initialized conv1 would still score ~1; an 8x8 grid on a 16-channel conv1 sees the change.
CKA_GRID = 16
CKA_MAX_FEATURES = 2048
KEPT_CKA = 0.95          # a layer whose CKA is at least this kept its representation
SAME_FUNCTION_CKA = 0.99


# --------------------------------------------------------------------------- inputs

def _absolute(spec: Spec, value: str) -> str:
    return str(spec.path(value))


def base_on_new_inputs(base: Spec, new: Spec) -> Spec:
    """BASE's spec with NEW's probes and dataset (paths made absolute, so they resolve from anywhere)."""
    data = copy.deepcopy(base.data)
    probes = copy.deepcopy(new.data["probes"])
    if probes is not None:
        probes["images"] = [_absolute(new, p) for p in probes["images"]]
    dataset = copy.deepcopy(new.data["dataset"])
    if dataset is not None:
        dataset["root"] = _absolute(new, dataset["root"])
    data["probes"], data["dataset"] = probes, dataset
    return Spec(data, base.file, base.base_dir, base.lines, base.digest, base.given_paths)


def check_compatible(base: Resolved, new: Resolved) -> None:
    """Class counts and input channels must match: exit 2 naming both specs' keys."""
    if base.num_classes != new.num_classes:
        raise SpecError(f"BASE gives {base.num_classes} classes ({base.spec.file}: model), NEW gives "
                        f"{new.num_classes} ({new.spec.file}: model): a compare needs the same classes",
                        new.spec.file, "model")
    if base.input_size[0] != new.input_size[0]:
        raise SpecError(f"BASE takes {base.input_size[0]} input channel(s) ({base.spec.file}: "
                        f"model.input_size), NEW takes {new.input_size[0]} ({new.spec.file}: "
                        "model.input_size): a compare feeds both the same images",
                        new.spec.file, "model.input_size")


def _out_dir(new: Spec, out_dir: Optional[Union[str, Path]]) -> Path:
    return Path(out_dir) if out_dir is not None else new.base_dir / "compare"


# --------------------------------------------------------------------------- the dataset pass

def cka_layers(res: Resolved) -> List[str]:
    """The first convolution, the last layer of each resolution stage, and the classifier."""
    from reportgen.analyses.activations import stage_layers
    from reportgen.model.layers import first_conv

    names: List[str] = []
    for pick in (lambda: [first_conv(res.model)], lambda: stage_layers(res.model, res.example()),
                 lambda: [_classifier(res.model)]):
        try:
            names += [n for n in pick() if n]
        except (ValueError, RuntimeError):
            continue
    order = execution_order(res)
    rank = {n: i for i, n in enumerate(order)}
    return sorted(dict.fromkeys(names), key=lambda n: rank.get(n, len(rank)))


def execution_order(res: Resolved) -> List[str]:
    """Module names in the order their calls finish (a container after its children), first call each."""
    from reportgen.model.hooks import record_calls

    try:
        calls = record_calls(res.model, res.example()).calls
    except Exception:  # noqa: BLE001 - TorchScript and the like: definition order instead
        return [n for n, _ in res.model.named_modules()]
    return list(dict.fromkeys(c.name for c in calls if c.name))


def _classifier(model: torch.nn.Module) -> str:
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return linear[-1] if linear else ""


def compare_dataset(new: Resolved) -> Tuple[Any, np.ndarray, Dict[str, Any]]:
    """NEW's probes then its dataset as one dataset, true labels (or -1) and how they were read."""
    from reportgen.analyses.agreement import UNKNOWN, folder_labels
    from reportgen.analyses.topk import ImageDataset

    pre = new.spec["preprocess"]
    items = [(p.path, None) for p in new.probes] + [(p, c) for p, c in new.dataset]
    data = ImageDataset(items, new.input_size, pre["resize"], pre["center_crop"], pre["mean"], pre["std"],
                        pre.get("interpolation", "bilinear"))
    probe_labels = [UNKNOWN if p.target is None else int(p.target) for p in new.probes]
    found = folder_labels([c for _, c in new.dataset], new.classes)
    labels = np.concatenate([np.asarray(probe_labels, dtype=np.int64), np.asarray(found.labels, dtype=np.int64)])
    return data, labels, {"rule": found.rule, "note": found.note, "probes": len(new.probes),
                          "dataset": len(new.dataset)}


def units_plan(base: Resolved, new: Resolved, layers: Sequence[str]) -> Optional[Any]:
    """Which CKA layers the units track: those whose output is a plain (N, C, H, W) map in both."""
    from reportgen.analyses.units import UnitsPlan
    from reportgen.model.layers import layer_layouts

    def layouts(res: Resolved) -> Dict[str, Any]:
        try:
            found = layer_layouts(res.model, res.example(), layers, output_key=res.output_key, strict=False)
        except (ValueError, RuntimeError):
            return {}
        return {n: lay for n, lay in found.items() if lay.kind == "nchw"}

    lb, ln = layouts(base), layouts(new)
    names = tuple(n for n in layers if n in lb and n in ln)
    return UnitsPlan(names, lb, ln) if names else None


def dataset_pass(base: Resolved, new: Resolved, same: bool, progress: Any = None,
                 distributed: bool = False, dataset: Optional[Tuple[Any, np.ndarray, Dict[str, Any]]] = None) -> Any:
    """The one pass of both models over NEW's probes + dataset: CKA, predictions, units.

    Shared by ``reportgen compare`` and its sharded form (``reportgen.distributed compare``);
    ``dataset``: ``compare_dataset(new)`` when the caller has it already.
    """
    from reportgen.analyses.compare_pass import compare_pass

    data, labels, _ = dataset if dataset is not None else compare_dataset(new)
    new_layers = cka_layers(new)
    base_layers = new_layers if same else cka_layers(base)
    labelled = labels if (labels >= 0).any() else None
    return compare_pass(base.model, new.model, data, base_layers, new.classes,
                        new_layers=new_layers, mode="pairs" if same else "matrix", labels=labelled,
                        output_keys=(base.output_key, new.output_key),
                        batch_size=new.dataset_batch(),
                        device=new.device, progress=progress, grid=CKA_GRID, max_features=CKA_MAX_FEATURES,
                        units=units_plan(base, new, new_layers) if same else None,
                        distributed=distributed)


# --------------------------------------------------------------------------- training curves

def training_table(res: Resolved) -> Optional[Any]:
    """One model's training curves: the spec's metrics file, else metrics stored in >= 2 checkpoints."""
    from reportgen.analyses import metrics as mt

    if res.metrics_path is not None:
        return mt.read_metrics(res.metrics_path)
    return mt.stored_curves([c.metrics for c in res.checkpoints])


def audit_step(res: Resolved, table: Optional[Any]) -> Optional[float]:
    """Where on ``table``'s x axis the audited checkpoint was taken (its stored epoch/step), if known."""
    if table is None or res.audit_index is None:
        return None
    value = res.checkpoints[res.audit_index].metrics.get(table.x_label)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- explanations

def explanation_similarity(base_out: Dict[str, Outcome], new_out: Dict[str, Outcome]) -> Dict[str, Dict[str, Any]]:
    """Per attribution section and method: Spearman rank similarity of the two models' maps per probe."""
    from reportgen.analyses.faithfulness import spearman

    out: Dict[str, Dict[str, Any]] = {}
    for section in ATTRIBUTION_SECTIONS:
        b, n = results_of(base_out, section), results_of(new_out, section)
        if not b or not n:
            continue
        methods: Dict[str, Any] = {}
        for name, m_new in n["methods"].items():
            m_base = b["methods"].get(name)
            if m_base is None or m_base.get("maps") is None or m_new.get("maps") is None:
                continue
            mb, mn = np.asarray(m_base["maps"]), np.asarray(m_new["maps"])
            if mb.shape != mn.shape:
                continue
            rho = [spearman(mb[i], mn[i]) for i in range(len(mn))]
            methods[name] = {"spearman": [round(float(r), 4) for r in rho],
                             "mean_spearman": round(float(np.mean(rho)), 4),
                             "maps": (mb, mn),
                             "sanity": (_passed(m_base), _passed(m_new)),
                             "deletion_auc": (_mean(m_base, "deletion_auc"), _mean(m_new, "deletion_auc")),
                             "insertion_auc": (_mean(m_base, "insertion_auc"), _mean(m_new, "insertion_auc"))}
        if methods:
            out[section] = methods
    return out


def _passed(m: Dict[str, Any]) -> Optional[bool]:
    sanity = m.get("sanity")
    return None if not isinstance(sanity, dict) or "passed" not in sanity else bool(sanity["passed"])


def _mean(m: Dict[str, Any], key: str) -> Optional[float]:
    values = m.get(key)
    return None if values is None else round(float(np.mean(values)), 6)


def sanity_regressions(similarity: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """A method whose randomization sanity check passed in BASE and fails in NEW: a finding."""
    out = []
    for section, methods in similarity.items():
        for name, m in methods.items():
            before, after = m["sanity"]
            if before is True and after is False:
                out.append({"id": f"sanity-regressed-{name}", "severity": "warning", "section": section,
                            "title": f"{name} passes the model-randomization check in BASE but fails it in NEW",
                            "evidence": "NEW's maps stay similar when its weights are re-initialized: they show "
                                        "the image's structure more than what NEW learned (Adebayo et al. "
                                        "2018); BASE's did not"})
    return out


# --------------------------------------------------------------------------- verdict

def verdict(comparison: Dict[str, Any], findings: Sequence[Dict[str, Any]], resolved: Sequence[Dict[str, Any]],
            flips_by_class: Dict[str, int]) -> List[str]:
    """A few sentences drawn from the numbers, most important first."""
    preds, layers = comparison["predictions"], comparison["layers"]
    ckas = {k: v["cka"] for k, v in layers.items() if v["cka"] is not None}
    changes = {k: v["weight_change"] for k, v in layers.items() if v["weight_change"] is not None}
    out: List[str] = []
    moved = max(changes.items(), key=lambda kv: kv[1]) if changes else None
    same_function = (preds["n"] > 0 and preds["agreement"] == 1.0 and ckas
                     and min(ckas.values()) >= SAME_FUNCTION_CKA)
    if same_function:
        tail = (f", although the weights moved (largest: {moved[0]} {moved[1]:.0%})"
                if moved and moved[1] > 1e-6 else "")
        out.append(f"The function did not change: all {preds['n']} predictions agree and every compared "
                   f"layer keeps its representation (CKA ≥ {min(ckas.values()):.3f}){tail}.")
    elif preds["n"]:
        out.append(f"Predictions agree on {preds['agreement']:.1%} of {preds['n']} image(s).")
    if moved and not same_function:
        out.append(f"Largest weight change: {moved[0]} moved {moved[1]:.0%}"
                   + (f" (median over layers {np.median(list(changes.values())):.0%})." if len(changes) > 1 else "."))
    elif not changes and comparison["same_architecture"] is False:
        out.append("Different architectures: weights are not compared; representations are compared "
                   "layer by layer (CKA map).")
    if ckas and not same_function:
        worst = min(ckas.items(), key=lambda kv: kv[1])
        if worst[1] < KEPT_CKA:   # ckas follow the model's order: where the change starts
            first = next(k for k, v in ckas.items() if v < KEPT_CKA)
            kept = [k for k in ckas if k == first or ckas[k] >= KEPT_CKA]
            kept = kept[:kept.index(first)]
            out.append(f"Representations change from {first} on (CKA {ckas[first]:.2f}, the first compared "
                       f"layer below {KEPT_CKA}); lowest: {worst[0]} (CKA {worst[1]:.2f})"
                       + (f"; {_span(kept)} kept." if kept else "."))
        else:
            out.append(f"Every compared layer keeps its representation (CKA ≥ {worst[1]:.2f}).")
    if preds["negative_flips"] is not None:
        neg, pos = preds["negative_flips"], preds["positive_flips"]
        top = max(flips_by_class.items(), key=lambda kv: kv[1]) if flips_by_class else None
        where = f", {top[1]} in class {top[0]}" if top and neg and top[1] * 2 >= neg else ""
        out.append(f"{neg} negative flip(s) (right in BASE, wrong in NEW){where}; {pos} positive flip(s).")
    if "audit" in comparison:
        out.extend(audit_sentences(comparison["audit"]))
    new = [f for f in findings if f.get("state") == "new"]
    if new or resolved:
        worst = worst_finding(new)
        out.append(f"{len(new)} new finding(s)" + (f", worst: {worst['title']}" if worst else "")
                   + (f"; {len(resolved)} resolved." if resolved else "."))
    return out


def _span(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} … {names[-1]}" if len(names) > 3 else ", ".join(names)


# --------------------------------------------------------------------------- the command

@dataclass
class CompareParts:
    """What the page needs besides report.json."""

    base: Resolved
    new: Resolved
    base_outcomes: Dict[str, Outcome]
    new_outcomes: Dict[str, Outcome]
    similarity: Dict[str, Dict[str, Any]]
    filters: Any = None
    cka: Any = None
    agreement: Any = None
    dataset: Any = None           # the images compared (probes, then dataset), for flip thumbnails
    timings: Dict[str, float] = field(default_factory=dict)
    labels_note: Optional[str] = None
    units: Any = None             # analyses.units.UnitsResult, same architecture only
    curves: Tuple[Any, Any] = (None, None)   # (BASE, NEW) analyses.metrics.MetricsTable or None
    curve_marks: Tuple[Optional[float], Optional[float]] = (None, None)   # audited checkpoints' x


def compare(base: SpecSource, new: SpecSource, out_dir: Optional[Union[str, Path]] = None,
            only: Optional[Sequence[str]] = None, device: Optional[str] = None, use_cache: bool = True,
            quiet: bool = True, cache_dir: Optional[Path] = None,
            budget: Union[None, float, str] = None, pass_file: Optional[Union[str, Path]] = None) -> Report:
    """Both models on NEW's inputs; writes OUT_DIR/index.html and report.json ("kind": "compare").

    ``budget`` plans each model's sections as its own build would (so a compare
    after both builds reuses their cached sections; two models of one architecture share one
    plan, NEW's); the cross-model passes come on top.
    ``pass_file``: the dataset pass precomputed by ``torchrun ... -m reportgen.distributed compare``
    on the same specs and inputs (checked), used instead of running it here.
    """
    with own_random_state():
        return _compare(base, new, out_dir, only, device, use_cache, quiet, cache_dir, budget, pass_file)


def resolve_pair(base_src: SpecSource, new_src: SpecSource, device: Optional[str],
                 progress: Optional[Progress] = None) -> Tuple[Spec, Spec, Resolved, Resolved]:
    """(BASE spec, NEW spec, BASE resolved on NEW's inputs, NEW resolved), checked compatible."""
    new_spec, base_spec = load_spec(new_src), load_spec(base_src)
    if progress is not None:
        progress.log(f"reportgen: checking {new_spec.file} and {base_spec.file}")
    new = resolve(new_spec, device)
    base = resolve(base_on_new_inputs(base_spec, new_spec), device or new.device.type)
    check_compatible(base, new)
    return base_spec, new_spec, base, new


def one_plan(base: Resolved, new: Resolved) -> bool:
    """Both sides run one plan: the same architecture on the same input size and device."""
    from reportgen.commands.planning import architecture

    return (base.input_size == new.input_size and base.device == new.device
            and architecture(base.model) == architecture(new.model))


def pass_header(base: Resolved, new: Resolved) -> Dict[str, Any]:
    """What a saved dataset pass was computed on: both models' inputs (weights, images, preprocessing)."""
    from reportgen.commands.build import cache_inputs_key

    return {"kind": "compare-pass", "version": __version__, "base_inputs": cache_inputs_key(base),
            "new_inputs": cache_inputs_key(new), "base_spec": str(base.spec.file), "new_spec": str(new.spec.file)}


def load_checked_pass(path: Union[str, Path], base: Resolved, new: Resolved) -> Any:
    """A saved pass, refused (exit 2) unless it was computed on exactly these models and inputs."""
    from reportgen.analyses.compare_pass import load_pass
    from reportgen.errors import InputError
    from reportgen.report import validate_pass_header

    try:
        result, header = load_pass(path)
    except ValueError as e:
        raise InputError(str(e).replace(f"{path} ", "", 1), path) from None
    validate_pass_header(header, path)
    want = pass_header(base, new)
    stale = [side for side in ("base", "new") if header.get(f"{side}_inputs") != want[f"{side}_inputs"]]
    if stale or header.get("version") != want["version"]:
        what = " and ".join(s.upper() for s in stale) or "reportgen's version"
        raise InputError(f"the pass was computed on other inputs ({what} changed since: weights, images, "
                         "preprocessing, device or version); rerun `torchrun ... -m reportgen.distributed "
                         "compare` or drop --pass", path)
    return result


def _compare(base_src: SpecSource, new_src: SpecSource, out_dir, only, device, use_cache, quiet,
             cache_dir, budget=None, pass_file=None) -> Report:
    progress = Progress(quiet)
    base_spec, new_spec, base, new = resolve_pair(base_src, new_src, device, progress)
    precomputed = load_checked_pass(pass_file, base, new) if pass_file is not None else None
    target = _out_dir(new_spec, out_dir)
    names = [n for n in selected_sections(new_spec, only) if base.spec["sections"].get(n) is not False]
    timings: Dict[str, float] = {}
    started = time.perf_counter()
    # One architecture: one plan (NEW's budget, one measurement), so both sides' maps share their settings
    shared = plan_sections(new, names, use_cache, cache_dir, progress, budget) if one_plan(base, new) else None
    progress.log("reportgen: BASE sections")
    base_computed = compute_sections(base, names, use_cache, cache_dir, progress, budget, shared)
    progress.log("reportgen: NEW sections")
    new_computed = compute_sections(new, names, use_cache, cache_dir, progress, budget, shared)
    base_out, new_out = base_computed.outcomes, new_computed.outcomes
    timings["sections"] = time.perf_counter() - started

    parts, comparison = _cross(base, new, base_out, new_out, timings, progress, precomputed)
    comparison["inputs"]["pass_file"] = (public_path(Path(pass_file).resolve(), new_spec.base_dir)
                                         if pass_file is not None else None)     # --pass: from the cwd
    base_findings = [f for o in base_out.values() for f in o.findings]
    new_findings = [f for o in new_out.values() for f in o.findings] + sanity_regressions(parts.similarity)
    findings, resolved = diff_findings(new_findings, base_findings)
    flips_by_class = _negative_flips_by_class(parts.agreement)
    comparison["audit"] = audit_json(base_out, new_out)
    sentences = verdict(comparison, findings, resolved, flips_by_class)
    data = compare_report(base=_side(base_spec, base), new=_side(new_spec, new), comparison=comparison,
                          verdict=sentences, base_outcomes=base_out, new_outcomes=new_out, findings=findings,
                          resolved=resolved, flips_by_class=flips_by_class, timings=timings)
    data["budget"] = {side: computed.budget_entry(sum(o.seconds for o in computed.outcomes.values()), None)
                      for side, computed in (("base", base_computed), ("new", new_computed))}
    from reportgen.render.compare import render_compare_page
    from reportgen.render.page import page_size

    page = render_compare_page(parts, data, sentences)
    data["size"] = page_size(page, COMPARE_PARTS)
    _add_inputs_digests(data, base, new)
    warn_if_heavy(data["size"])
    index, json_path = write_pair(target, page, data)
    progress.log(f"reportgen: wrote {index}")
    results = {"base": {n: o.results for n, o in base_out.items()},
               "new": {n: o.results for n, o in new_out.items()}}
    return Report(path=index, json_path=json_path, results=results, data=data, findings=findings,
                  resolved=resolved)


def _cross(base: Resolved, new: Resolved, base_out, new_out, timings: Dict[str, float],
           progress: Progress, precomputed: Any = None) -> Tuple[CompareParts, Dict[str, Any]]:
    from reportgen.analyses.compare_pass import comparison_layers
    from reportgen.analyses.weight_diff import architecture_mismatch, filter_difference, weight_change

    t = time.perf_counter()
    mismatch = architecture_mismatch(base.model, new.model)
    same = not mismatch
    weights = weight_change(base.model, new.model) if same else None
    filters = None
    if same:
        try:
            filters = filter_difference(base.model, new.model)
        except ValueError:   # no convolution
            filters = None
    timings["weights"] = time.perf_counter() - t

    t = time.perf_counter()
    dataset = compare_dataset(new)
    data, _, label_info = dataset
    result = precomputed if precomputed is not None else dataset_pass(base, new, same, progress, dataset=dataset)
    timings["dataset_pass"] = time.perf_counter() - t
    order = execution_order(new)
    order += [n for n, _ in new.model.named_modules() if n not in set(order)]
    comparison = {
        "same_architecture": same,
        "architecture_differences": mismatch[:10],
        "inputs": {"probes": label_info["probes"], "dataset": label_info["dataset"],
                   "labels": label_info["rule"], "labels_note": label_info["note"]},
        "predictions": result.predictions.predictions_json(),
        "layers": comparison_layers(result.cka, weights, order=order),
        "cka": result.cka.meta(),
    }
    t = time.perf_counter()
    units = _units(base, new, result, comparison["layers"], data, same)
    comparison["units"] = units_json(units, same, result)
    timings["units"] = time.perf_counter() - t
    curves = (training_table(base), training_table(new))
    comparison["training"] = {side: None if table is None else
                              {"source": table.source, "x": table.x_label, "metrics": sorted(table.series),
                               "audited_at": audit_step(res, table)}
                              for side, table, res in zip(("base", "new"), curves, (base, new))}
    if not same:
        comparison["cka"]["matrix"] = {"base_layers": list(result.cka.base_layers),
                                       "new_layers": list(result.cka.new_layers),
                                       "values": [[None if not np.isfinite(v) else round(float(v), 4) for v in row]
                                                  for row in result.cka.cka]}
    similarity = explanation_similarity(base_out, new_out)
    comparison["explanations"] = {s: {m: {k: v for k, v in d.items() if k != "maps"} for m, d in ms.items()}
                                  for s, ms in similarity.items()}
    parts = CompareParts(base, new, base_out, new_out, similarity, filters, result.cka, result.predictions,
                         data, timings, label_info["note"], units, curves,
                         (audit_step(base, curves[0]), audit_step(new, curves[1])))
    return parts, comparison


def _units(base: Resolved, new: Resolved, result: Any, layers: Dict[str, Dict[str, Any]], data: Any,
           same: bool) -> Any:
    """The most-changed channels of the lowest-CKA layer, with both models' top-k patches."""
    from reportgen.analyses.units import finish_units

    if not same or result.units is None:
        return None
    cka = {n: v["cka"] for n, v in layers.items()}
    return finish_units(base.model, new.model, data, result.units, cka, new.device, new.input_size,
                        batch_size=new.dataset_batch())


def units_json(units: Any, same: bool, result: Any) -> Dict[str, Any]:
    """report.json's ``comparison.units`` (an extension of the contract)."""
    from reportgen.analyses.units import CHANNEL_RULE

    if units is None:
        why = ("the architectures differ: a channel has no counterpart in the other model" if not same
               else "no image was compared (the spec has no probes and no dataset)" if result.cka.n == 0
               else "no compared layer has a (N, C, H, W) map in both models" if result.units is None
               or not result.units.layers else "no layer with a defined CKA")
        return {"layer": None, "channels": [], "skipped": why}
    corr = units.correlation
    return {"layer": units.layer, "cka": round(units.cka, 4), "rule": CHANNEL_RULE,
            "n": units.n_images, "k": units.k, "candidates": list(result.units.layers),
            "channels": units.channels_json(),
            "correlation_per_channel": [None if not np.isfinite(v) else round(float(v), 4) for v in corr]}


def _add_inputs_digests(data: Dict[str, Any], base: Resolved, new: Resolved) -> None:
    """Each side's audited inputs (SPEC.md, "Trust"), and the pair's: a new model compared from
    unchanged specs is a new entry on a published site."""
    from reportgen.cache import digest_of

    sides = {"base": audit_inputs_digest(base), "new": audit_inputs_digest(new)}
    for side, digest in sides.items():
        data[side]["inputs_digest"] = digest
    data["inputs_digest"] = digest_of(sides)


def _negative_flips_by_class(agreement) -> Dict[str, int]:
    if agreement is None or agreement.negative_flips is None:
        return {}
    names = list(agreement.class_names)
    counts: Dict[str, int] = {}
    for label in agreement.negative.labels:
        key = names[int(label)] if 0 <= int(label) < len(names) else str(label)
        counts[key] = counts.get(key, 0) + 1
    return counts


def _side(spec: Spec, res: Resolved) -> Dict[str, Any]:
    from reportgen.render.page import model_source

    return {"title": spec["title"], "spec_digest": spec.digest,
            "model": {"source": model_source(spec), "input_size": list(res.input_size),
                      "num_classes": res.num_classes,
                      "audit_checkpoint": (res.checkpoints[res.audit_index].label
                                           if res.audit_index is not None else None)}}

