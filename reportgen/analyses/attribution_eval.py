"""Attribution methods run over a batch of probes, and scored: how far to trust each map.

A method is a callable ``method(model, images, targets) -> (maps, raw, extras)``:
``maps`` (N, H, W) is what is drawn and scored, ``raw`` the (N, C, H, W) input
attributions or None, ``extras`` whatever else the method reports. For every
method that produces maps, :func:`evaluate` computes

* deletion and insertion AUC per probe (``faithfulness.deletion_insertion``,
  Petsiuk et al. 2018), next to the same curves for a seeded random pixel
  order: what "no information" scores;
* the share of attribution on the image border (``faithfulness.border_concentration``);
* optionally, the maps for each probe's k most likely classes;
* optionally, Adebayo et al.'s model-parameter randomization check, with one
  seeded randomized copy of the model shared by every method.

A method that does not apply to the model says so by raising
``reportgen.errors.NotApplicable`` (``MethodNotApplicable`` in the methods of
``reportgen.explain``): its result keeps the reason, ``bug`` False. Any other
exception is a bug: kept as well, ``bug`` True. Either way the other methods
still run.

Pure: torch tensors in, frozen dataclasses of numpy arrays out; the caller's
model is only run, in eval mode, never changed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from reportgen.analyses import faithfulness as fa
from reportgen.analyses.gradients import class_scores
from reportgen.errors import NotApplicable
from reportgen.model.hooks import eval_mode
from reportgen.model.outputs import OutputKey

Maps = Tuple[np.ndarray, Optional[np.ndarray], Dict[str, Any]]
Method = Callable[[nn.Module, torch.Tensor, List[int]], Maps]

# Deletion/insertion cost n_probes x (methods + 1 random reference) x 2 curves x (steps + 1)
# forward passes. "auto" steps keep that under FAITHFULNESS_MAC_BUDGET multiply-accumulates
# (~250 ResNet-50 passes at 224 px: ~10 s on an 8-core laptop CPU, ~50 s on 2 busy cores)
# where the floor of 8 steps allows; small models (the demo) get the full 32.
FAITHFULNESS_MAC_BUDGET = 1e12
FAITHFULNESS_STEPS = (8, 32)


@dataclass(frozen=True)
class MethodResult:
    """One method's maps and scores over all probes (numpy only)."""

    name: str
    maps: Optional[np.ndarray] = None          # (N, H, W): what is drawn and scored
    raw: Optional[np.ndarray] = None           # (N, C, H, W) input attributions (gradient methods)
    error: Optional[str] = None                # why the method produced no maps
    bug: bool = False                          # True: an unexpected failure, not "does not apply"
    deletion_auc: Optional[np.ndarray] = None  # (N,)
    insertion_auc: Optional[np.ndarray] = None
    deletion_curves: Optional[np.ndarray] = None   # (N, steps + 1)
    insertion_curves: Optional[np.ndarray] = None
    border_share: Optional[np.ndarray] = None  # (N,)
    sanity: Optional[fa.SanityResult] = None
    sanity_error: Optional[str] = None
    topk: Optional[np.ndarray] = None          # (N, K, H, W), maps for the top-K classes
    extras: Dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.maps is not None


@dataclass(frozen=True)
class AttributionResult:
    """Every method's result for one set of probes, and what they are compared against."""

    section: str
    probe_names: List[str]
    image_size: Tuple[int, int]
    targets: np.ndarray                        # (N,) class explained per probe
    target_from_spec: List[bool]
    probs: np.ndarray                          # (N, classes) softmax of the clean probes
    methods: Dict[str, MethodResult]
    steps: int
    steps_auto: bool
    deletion_baseline: str
    insertion_baseline: str
    random_deletion_auc: np.ndarray            # (N,) the random-order reference
    random_insertion_auc: np.ndarray
    border_frac: float
    border_area_share: float
    layer: Optional[str] = None
    layer_auto: bool = False
    topk_classes: Optional[np.ndarray] = None  # (N, K)
    sanity_threshold: Optional[float] = None
    sanity_randomized: Optional[str] = None
    sanity_error: Optional[str] = None
    extras: Dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- probes

@torch.no_grad()
def probabilities(model: nn.Module, images: torch.Tensor, output_key: OutputKey = None) -> np.ndarray:
    """(N, classes) float64 softmax of the model's class scores."""
    with eval_mode(model):
        scores = class_scores(model, images, output_key)
    return torch.softmax(scores.double(), dim=1).cpu().numpy()


def choose_targets(given: Sequence[Optional[int]], probs: np.ndarray) -> Tuple[np.ndarray, List[bool]]:
    """The given class where there is one, else the predicted class; and which were given."""
    targets = [int(t) if t is not None else int(probs[i].argmax()) for i, t in enumerate(given)]
    return np.asarray(targets, dtype=np.int64), [t is not None for t in given]


def auto_steps(model: nn.Module, example: torch.Tensor, n_probes: int, n_maps: int,
               output_key: OutputKey = None) -> int:
    """Steps per deletion/insertion curve from the model's cost (deterministic: MACs, not timings).

    ``n_maps`` counts the maps scored per probe, the random reference included.
    """
    from reportgen.analyses.summary import summarize

    lo, hi = FAITHFULNESS_STEPS
    try:
        macs = summarize(model, example, output_key).total_macs
    except Exception:  # noqa: BLE001 - a model the summary cannot hook: fall back on the size
        macs = 0
    if macs <= 0:
        h, w = example.shape[-2:]
        return hi if h * w <= 128 * 128 else 16
    curves = max(1, n_probes) * max(1, n_maps) * 2       # deletion + insertion per map
    passes = FAITHFULNESS_MAC_BUDGET / macs / curves
    return int(min(hi, max(lo, math.floor(passes) - 1)))


# --------------------------------------------------------------------------- one method

def run_method(name: str, method: Method, model: nn.Module, images: torch.Tensor,
               targets: Sequence[int]) -> MethodResult:
    """One method over all probes; NotApplicable is a note, anything else a bug, neither raises."""
    try:
        maps, raw, extras = method(model, images, [int(t) for t in targets])
    except NotApplicable as e:       # the method says it does not apply to this model, and why
        return MethodResult(name, error=str(e))
    except Exception as e:  # noqa: BLE001 - a bug: report it, keep the other methods
        return MethodResult(name, error=f"{type(e).__name__}: {e}", bug=True)
    return MethodResult(name, maps=maps, raw=raw, extras=extras)


def deletion_insertion_per_probe(model: nn.Module, images: torch.Tensor, maps: np.ndarray,
                                 targets: Sequence[int], steps: int, output_key: OutputKey = None) -> Dict[str, Any]:
    """Deletion and insertion of every probe by its own map: (N,) AUCs, (N, steps + 1) curves."""
    rows = [fa.deletion_insertion(model, images[i:i + 1], maps[i], int(targets[i]), steps=steps,
                                  output_key=output_key) for i in range(len(targets))]
    return {"deletion_auc": np.array([r["deletion_auc"] for r in rows]),
            "insertion_auc": np.array([r["insertion_auc"] for r in rows]),
            "deletion_curves": np.stack([r["deletion_curve"] for r in rows]),
            "insertion_curves": np.stack([r["insertion_curve"] for r in rows]),
            "deletion_baseline": rows[0]["deletion_baseline"],
            "insertion_baseline": rows[0]["insertion_baseline"]}


def random_maps(n: int, shape: Tuple[int, int], seed: int) -> np.ndarray:
    """(N, H, W) random pixel orders, probe i's seeded with ``seed + i``: the reference to beat."""
    return np.stack([fa.random_saliency(shape, seed + i) for i in range(n)])


def score(result: MethodResult, model: nn.Module, images: torch.Tensor, targets: Sequence[int],
          steps: int, border_frac: float, output_key: OutputKey = None, scored: Optional[int] = None) -> MethodResult:
    """``result`` with its deletion/insertion scores (of the first ``scored`` probes; None: all) and
    border share (every probe), as a new, frozen result."""
    n = len(targets) if scored is None else int(scored)
    di = deletion_insertion_per_probe(model, images[:n], result.maps[:n], targets[:n], steps, output_key)
    return replace(result, deletion_auc=di["deletion_auc"], insertion_auc=di["insertion_auc"],
                   deletion_curves=di["deletion_curves"], insertion_curves=di["insertion_curves"],
                   border_share=np.asarray(fa.border_concentration(result.maps, border_frac), dtype=np.float64))


def top_class_maps(result: MethodResult, method: Method, model: nn.Module, images: torch.Tensor,
                   top: np.ndarray) -> MethodResult:
    """``result`` with maps for each probe's classes ``top`` (N, K) as ``topk`` (N, K, H, W).

    The main maps worked, so a failure here only leaves ``extras["topk_error"]``.
    """
    try:
        per_rank = [method(model, images, top[:, r].tolist())[0] for r in range(top.shape[1])]
        return replace(result, topk=np.stack(per_rank, axis=1))
    except Exception as e:  # noqa: BLE001 - the main maps worked; keep them
        return replace(result, extras=dict(result.extras, topk_error=f"{type(e).__name__}: {e}"))


# --------------------------------------------------------------------------- sanity check

@dataclass(frozen=True)
class SanityRun:
    """The randomization check over every method, or why no randomized copy could be made."""

    threshold: float
    randomized: Optional[str] = None              # how the copy was made; None when it could not be
    error: Optional[str] = None                   # why no randomized copy could be made
    results: Dict[str, fa.SanityResult] = field(default_factory=dict)
    errors: Dict[str, str] = field(default_factory=dict)   # a method whose check failed: why


def sanity_check(model: nn.Module, images: torch.Tensor, methods: Mapping[str, Method],
                 originals: Mapping[str, np.ndarray], targets: Sequence[int], *, seed: int,
                 threshold: float) -> SanityRun:
    """Adebayo et al.: one randomized copy (seeded), each method's maps compared with ``originals``."""
    try:
        randomized = fa.randomize_weights(model, seed=seed)
    except ValueError as e:
        return SanityRun(threshold=threshold, error=str(e))
    targets = [int(t) for t in targets]
    results: Dict[str, fa.SanityResult] = {}
    errors: Dict[str, str] = {}
    for name, original in originals.items():
        def maps_of(m: nn.Module, x: torch.Tensor, t: List[int], _method: Method = methods[name]) -> np.ndarray:
            return _method(m, x, t)[0]
        try:
            results[name] = fa.sanity_randomization(model, images, maps_of, targets, randomized=randomized,
                                                    original=original, threshold=threshold, name=name)
        except Exception as e:  # noqa: BLE001 - e.g. a head the random weights break
            errors[name] = f"{type(e).__name__}: {e}"
    del randomized
    return SanityRun(threshold=threshold, randomized=f"all parameters re-initialized (seed {seed})",
                     results=results, errors=errors)


# --------------------------------------------------------------------------- everything

def evaluate(model: nn.Module, images: torch.Tensor, methods: Mapping[str, Method], *,
             targets: Sequence[Optional[int]], steps: Union[int, str, None] = "auto",
             border_frac: float = fa.BORDER_FRAC, top_classes: int = 1,
             sanity_threshold: Optional[float] = None, seed: int = 0, output_key: OutputKey = None,
             section: str = "", probe_names: Optional[Sequence[str]] = None, layer: Optional[str] = None,
             layer_auto: bool = False, extras: Optional[Dict[str, Any]] = None,
             scored: Optional[int] = None) -> AttributionResult:
    """Every method over the probes ``images`` (N, C, H, W), scored.

    ``targets``: one class per probe, None for the predicted one. ``steps``: per
    deletion/insertion curve, "auto" (or None) for :func:`auto_steps`.
    ``scored``: deletion/insertion and the sanity check score only the first
    this many probes (None: all); they dominate a big model's attribution cost.
    ``top_classes`` > 1 adds maps for each probe's k most likely classes.
    ``sanity_threshold`` not None runs the randomization check (seeded with
    ``seed``; so is the random reference). ``section``, ``probe_names``, ``layer``,
    ``layer_auto`` and ``extras`` are labels, copied into the result.
    """
    probs = probabilities(model, images, output_key)
    chosen, given = choose_targets(targets, probs)
    results = {name: run_method(name, fn, model, images, chosen) for name, fn in methods.items()}
    n_ok = sum(m.ok for m in results.values())
    auto = steps in (None, "auto")
    n_scored = len(chosen) if scored is None else max(1, min(int(scored), len(chosen)))
    n_steps = auto_steps(model, images[:1], n_scored, n_ok + 1, output_key) if auto else int(steps)
    h, w = (int(s) for s in images.shape[-2:])
    rand = deletion_insertion_per_probe(model, images[:n_scored], random_maps(n_scored, (h, w), seed),
                                        chosen[:n_scored], n_steps, output_key)
    results = {name: score(m, model, images, chosen, n_steps, border_frac, output_key, n_scored) if m.ok else m
               for name, m in results.items()}
    probs = probs.astype(np.float32)
    top = None
    if int(top_classes or 1) > 1:
        k = min(int(top_classes), probs.shape[1])
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        results = {name: top_class_maps(m, methods[name], model, images, top) if m.ok else m
                   for name, m in results.items()}
    sanity = None
    if sanity_threshold is not None and n_ok:
        sanity = sanity_check(model, images[:n_scored], methods,
                              {n: m.maps[:n_scored] for n, m in results.items() if m.ok},
                              chosen[:n_scored], seed=seed, threshold=float(sanity_threshold))
        results = {name: replace(m, sanity=sanity.results.get(name), sanity_error=sanity.errors.get(name))
                   for name, m in results.items()}
    names = [str(i) for i in range(len(chosen))] if probe_names is None else list(probe_names)
    return AttributionResult(
        section=section, probe_names=names, image_size=(h, w), targets=chosen, target_from_spec=given, probs=probs,
        methods=results, steps=n_steps, steps_auto=auto, deletion_baseline=rand["deletion_baseline"],
        insertion_baseline=rand["insertion_baseline"], random_deletion_auc=rand["deletion_auc"],
        random_insertion_auc=rand["insertion_auc"], border_frac=border_frac,
        border_area_share=fa.border_area_share(h, w, border_frac), layer=layer, layer_auto=layer_auto,
        topk_classes=top, sanity_threshold=None if sanity is None else sanity.threshold,
        sanity_randomized=None if sanity is None else sanity.randomized,
        sanity_error=None if sanity is None else sanity.error, extras=dict(extras or {}))
