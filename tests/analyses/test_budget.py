"""The budget planner: pure, deterministic given throughput numbers, never above the old defaults."""
from __future__ import annotations

import pytest

from reportgen.analyses.occlusion import window_starts
from reportgen.engine import budget as bud

FAST = bud.Throughput(forward_s=0.001, backward_s=0.003)
SLOW = bud.Throughput(forward_s=0.1, backward_s=0.3)


def ig_knob(given="auto", n=6):
    return bud.knob("steps", "steps", given, bud.IG_STEPS, lambda v: bud.Cost(backward=n * int(v)))


def occlusion_knob(h=224, w=224, n=6, window="auto", stride="auto"):
    values = bud.occlusion_ladder(h, w, window, stride)
    costs = [bud.occlusion_cost(h, w, bud.pair(v["window"]), bud.pair(v["stride"]), n) for v in values]
    auto = tuple(k for k, v in (("window", window), ("stride", stride)) if v == "auto")
    return bud.Knob("window/stride", tuple(values), tuple(costs), auto=auto, label="occlusion",
                    scope=f"on {n} probes")


def needs():
    return {"gradients": bud.Needs(fixed=bud.Cost(backward=12), knobs=(ig_knob(),)),
            "occlusion": bud.Needs(fixed=bud.Cost(forward=6), knobs=(occlusion_knob(),))}


def test_everything_fits_gives_the_old_defaults():
    p = bud.plan(needs(), FAST, budget_s=90)
    assert p.sections["gradients"].choices == {"steps": 32}
    assert p.sections["occlusion"].choices == {"window": 16, "stride": 8}
    assert not p.over and not p.sections["occlusion"].scaled
    assert p.sections["occlusion"].auto == ("window", "stride")


def test_plan_is_a_pure_function_of_the_throughput():
    a, b = bud.plan(needs(), SLOW, budget_s=90), bud.plan(needs(), SLOW, budget_s=90)
    assert a == b
    assert a.sections["occlusion"].choices != {"window": 16, "stride": 8}   # it had to give way


def test_the_costliest_setting_gives_way_first_and_nothing_exceeds_the_defaults():
    p = bud.plan(needs(), SLOW, budget_s=90)
    occ, grad = p.sections["occlusion"], p.sections["gradients"]
    assert occ.scaled == ("window", "stride")
    assert occ.choices["window"] > 16 and occ.choices["stride"] > 8
    assert grad.choices["steps"] <= 32
    assert p.planned_s <= p.available_s or p.over
    # a tighter budget never picks more than a looser one
    tight = bud.plan(needs(), SLOW, budget_s=30)
    assert tight.sections["occlusion"].choices["window"] >= occ.choices["window"]
    assert tight.sections["gradients"].choices["steps"] <= grad.choices["steps"]


def test_over_budget_stops_at_the_last_rung():
    p = bud.plan(needs(), bud.Throughput(10.0, 30.0), budget_s=10)
    assert p.over
    assert p.sections["gradients"].choices == {"steps": bud.IG_STEPS[-1]}
    assert p.sections["occlusion"].choices == bud.occlusion_ladder(224, 224)[-1]


def test_a_written_value_is_honoured_and_announced_when_long():
    written = {"occlusion": bud.Needs(knobs=(occlusion_knob(64, 64, window=8, stride=4),))}
    p = bud.plan(written, bud.Throughput(0.9, 2.7), budget_s=90)
    assert p.sections["occlusion"].choices == {"window": 8, "stride": 4}
    assert p.sections["occlusion"].auto == ()
    assert len(p.long) == 1
    # 6 probes x (1 + 15 x 15 positions) passes at 0.9 s
    assert p.long[0].startswith("reportgen: occlusion with window 8, stride 4 on 6 probes: about 20 min at the "
                                "measured 0.9 s/pass")
    # the same setting on a fast machine says nothing
    assert bud.plan(written, FAST, budget_s=90).long == []


def test_a_written_value_takes_its_time_from_the_others():
    both = {"gradients": bud.Needs(knobs=(ig_knob(),)),
            "occlusion": bud.Needs(knobs=(occlusion_knob(64, 64, window=8, stride=4),))}
    p = bud.plan(both, SLOW, budget_s=90)
    assert p.sections["gradients"].choices["steps"] == bud.IG_STEPS[-1]
    assert p.over


def test_stable_keeps_a_close_earlier_measurement():
    stored = bud.Throughput(0.10, 0.30, source="stored")
    assert bud.stable(bud.Throughput(0.12, 0.25, source="measured"), stored).forward_s == 0.10
    assert bud.stable(bud.Throughput(0.12, 0.25, source="measured"), stored).source == "stored"
    far = bud.stable(bud.Throughput(0.5, 0.3, source="measured"), stored)
    assert far.forward_s == 0.5 and far.source == "measured"
    assert bud.stable(bud.Throughput(0.12, 0.25), None).forward_s == 0.12


@pytest.mark.parametrize("size,window,stride", [(224, 16, 8), (224, 48, 24), (64, 8, 4), (16, 16, 8),
                                                (20, 7, 3), (13, 5, 9)])
def test_occlusion_positions_match_the_analysis(size, window, stride):
    n = len(window_starts(size, window, stride))
    assert bud.occlusion_positions(size, size, (window, window), (stride, stride)) == n * n


def test_occlusion_ladder():
    assert bud.occlusion_ladder(224, 224) == [{"window": 16, "stride": 8}, {"window": 24, "stride": 12},
                                              {"window": 32, "stride": 16}, {"window": 48, "stride": 24},
                                              {"window": 64, "stride": 32}]   # 6 x 6 positions; 96/48: 4
    # a small input: the default shrinks to fit, as before budgets, and nothing coarser
    assert bud.occlusion_ladder(8, 8) == [{"window": 8, "stride": 8}]
    assert bud.occlusion_ladder(12, 16)[0] == {"window": [12, 16], "stride": 8}
    # one option written: it stays, the other moves
    assert all(v["window"] == 32 for v in bud.occlusion_ladder(224, 224, window=32))
    assert [v["stride"] for v in bud.occlusion_ladder(224, 224, window=32)][:3] == [8, 12, 16]
    assert bud.occlusion_ladder(224, 224, window=8, stride=4) == [{"window": 8, "stride": 4}]
    big = bud.occlusion_ladder(512, 512)
    assert big[0] == {"window": 16, "stride": 8} and big[-1] == {"window": 192, "stride": 96}   # 5 x 5


def test_costs_in_passes():
    assert bud.occlusion_cost(224, 224, (16, 16), (8, 8), 6) == bud.Cost(forward=6 * (1 + 27 * 27))
    assert bud.faithfulness_cost(6, 3, 8) == bud.Cost(forward=6 * 3 * 2 * 9)
    assert SLOW.seconds(bud.Cost(forward=10, backward=2)) == pytest.approx(1.6)


def test_channels_per_layer_keeps_small_layers_whole():
    full = {"relu": 4_000_000.0, "layer1": 1_000_000.0, "layer3": 60_000.0, "layer4": 15_000.0}
    shown = bud.channels_per_layer(full, 32, 1_500_000)
    assert shown["layer3"] == shown["layer4"] == 32
    assert shown["relu"] < shown["layer1"] <= 32
    assert sum(full[k] * shown[k] / 32 for k in full) <= 1_500_000
    assert bud.channels_per_layer(full, 32, 10_000_000) == {k: 32 for k in full}
    assert bud.channels_per_layer(full, 32, 10)["relu"] == bud.ACTIVATION_CHANNELS[-1]


def test_page_shares_let_the_heaviest_give_way():
    assert bud.page_shares({"a": 3000.0, "b": 1000.0}, 4000) == {"a": 3000, "b": 1000}
    # b needs less than half: it keeps it, a takes the rest
    assert bud.page_shares({"a": 5000.0, "b": 1000.0}, 4000) == {"a": 3000, "b": 1000}
    assert bud.page_shares({"a": 5000.0, "b": 3000.0, "c": 500.0}, 4000) == {"a": 1750, "b": 1750, "c": 500}


def test_duration_words():
    assert bud.duration(45) == "45 s"
    assert bud.duration(14 * 60) == "14 min"
    assert bud.duration(2 * 3600) == "2.0 h"


def test_reference_prices_a_small_model_from_its_macs():
    t = bud.reference(2e7, "cpu")
    rate, overhead = bud.REFERENCE_SPEED["cpu"]
    assert t.forward_s == pytest.approx(overhead + 2e7 / rate)
    assert t.backward_s == pytest.approx(bud.BACKWARD_RATIO * t.forward_s)
    assert t.source == "reference" and bud.reference(2e7, "cpu") == t


def test_an_overshoot_is_over_the_factor_and_the_floor():
    assert bud.overshot(10.0, 16.0) and not bud.overshot(10.0, 14.0)
    assert not bud.overshot(0.1, 2.0)              # 20x, but under OVERSHOOT_MIN_S more: overhead, no news
    assert bud.overshot(64.0, 150.0)               # the int8 compare


def test_halvings():
    assert bud.halvings(6) == [6, 3, 1] and bud.halvings(200, 50) == [200, 100, 50]
    assert bud.halvings(150, 50) == [150, 75, 50] and bud.halvings(10, 16) == [10] and bud.halvings(0) == [0]
