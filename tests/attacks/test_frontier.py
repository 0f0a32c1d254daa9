"""The leakage-vs-cost frontier: leakage per attack from suite headlines, merging of several suite
results, GPT2-XL prices, mask randomness, dominance, and the `p3eft attack frontier` command."""

import json

import pytest

from p3eft.attacks import frontier as fr
from p3eft.cli.main import main
from p3eft.errors import P3eftError

LOGITS_512 = fr.Workload("logits-512", 512, 1.0)


def _headline(masks="kron", defence="mix:4+fill", **over):
    """A suite headline with every attack run and nothing leaking; ``over`` changes figures."""
    h = {
        "mode": "strict",
        "masks": masks,
        "defence": defence,
        "token_recovery": 0.01,
        "unigram_baseline": 0.05,
        "bag_recall": 0.20,
        "bag_unigram_baseline": 0.30,
        "weight_rho": 0.001,
        "loss_span_accuracy": 0.80,
        "loss_span_baseline": 0.95,
        "static_rows_available": 1536,
        "static_rows_needed": None,
        "known_rows_available": 1344,
        "known_rows_needed": None,
        "subspace_informative_calls": 0,
    }
    h.update(over)
    return h


def _result(*headlines):
    return {"results": [{"headline": h} for h in headlines]}


def test_leakage_is_the_excess_over_each_baseline_clipped_at_zero():
    leak = fr.leakage_of(_headline(token_recovery=0.15, loss_span_accuracy=1.0, weight_rho=-0.2))
    assert leak["tokens"] == pytest.approx(0.10)
    assert leak["bag"] == 0.0  # below its prior
    assert leak["weights"] == 0.0  # a negative rho learned nothing
    assert leak["loss_span"] == pytest.approx(0.05)
    assert leak["static_mask"] == 0.0
    assert leak["tokens_known_plaintext"] == 0.0  # no call gave an equation


def test_a_recovered_static_mask_and_the_subspace_read_count_as_leaks():
    leak = fr.leakage_of(
        _headline(
            static_rows_needed=1442,
            subspace_informative_calls=12,
            subspace_bag_recall=0.297,
            subspace_bag_baseline=0.161,
        )
    )
    assert leak["static_mask"] == 1.0
    assert leak["tokens_known_plaintext"] == pytest.approx(0.136)
    # the subspace attack ran but gave no reading: unknown, not zero
    assert fr.leakage_of(_headline(subspace_informative_calls=3))["tokens_known_plaintext"] is None


def test_merging_fills_in_what_an_earlier_file_did_not_run():
    grid = _result(_headline(defence="mix:4", subspace_informative_calls=None))
    sub = _result(
        {
            "mode": "strict",
            "masks": "kron",
            "defence": "mix:4",
            "subspace_informative_calls": 12,
            "subspace_bag_recall": 0.30,
            "subspace_bag_baseline": 0.16,
            "token_recovery": None,  # not run there: must not erase the grid's figure
        }
    )
    merged = fr.merge_headlines([("grid", grid), ("sub", sub)])
    h = merged[("strict", "kron", "mix:4")]
    assert h["token_recovery"] == 0.01 and h["subspace_bag_recall"] == 0.30
    assert h["_sources"] == ["grid", "sub"]
    with pytest.raises(P3eftError, match="not an attack-suite result"):
        fr.merge_headlines([("x", {"model": "m"})])


def test_prices_follow_the_accounting():
    wl = [LOGITS_512, fr.Workload("logits-2048", 2048, 1.0), fr.Workload("train", 512, 0.1)]
    fill = fr.price("strict", "kron", "mix:4+fill", wl)
    plain = fr.price("strict", "kron", "none", wl)
    # span filling costs more on shorter calls; without a defence the call size does not matter
    assert fill["logits-2048"] < fill["logits-512"]
    assert plain["logits-2048"] == pytest.approx(plain["logits-512"])
    assert fill["train"] < fill["logits-512"]  # the head at a tenth of the positions
    assert plain["logits-512"] < fill["logits-512"]
    # a smaller Kronecker factor bound is cheaper (1600 = 10x10x16 against 5x5x8x8)
    assert fr.price("strict", "kron:12", "none", wl)["logits-512"] < plain["logits-512"]


def test_randomness_of_one_gpt2_xl_wide_mask():
    # 1600 = 10 x 10 x 16 under the default factor bound: 45 + 45 + 120 rotations' parameters
    assert fr.randomness("kron") == (210, True)
    assert fr.randomness("kron:12") == (2 * 10 + 2 * 28, True)  # 5 x 5 x 8 x 8
    assert fr.randomness("blockperm:32") == (50 * 32 * 31 // 2, False)
    assert fr.randomness("orthogonal") == (1600 * 1599 // 2, True)


def _point(masks, leak, cost, dof, dense=True, complete=True):
    leakage = {k: leak for k in fr._LEAKS}
    if not complete:
        leakage["tokens_known_plaintext"] = None
    return fr.FrontierPoint("strict", masks, "d", leakage, {"r": cost}, dof, dense)


def test_the_frontier_keeps_only_undominated_classified_points():
    safe = _point("safe", 0.0, 0.10, 200)
    cheaper_safe = _point("cheaper_safe", 0.0, 0.09, 80)  # cheaper, less random: both stay
    dominated = _point("dominated", 0.0, 0.11, 150)  # costlier and less random than `safe`
    leaky_cheap = _point("leaky_cheap", 1.0, 0.05, 200)  # cheapest, leaks: stays
    leaky_costly = _point("leaky_costly", 1.0, 0.12, 200)  # dominated by both
    sparse = _point("sparse", 0.0, 0.10, 200, dense=False)  # `safe` with sparse support
    unknown = _point("unknown", 0.0, 0.01, 10**6, complete=False)  # nothing leaked, one attack not run
    leaky_partial = _point("leaky_partial", 0.5, 0.01, 10, complete=False)  # classified by what ran
    pts = fr.mark_frontier(
        [safe, cheaper_safe, dominated, leaky_cheap, leaky_costly, sparse, unknown, leaky_partial], "r"
    )
    on = {p.masks for p in pts if p.on_frontier}
    assert on == {"safe", "cheaper_safe", "leaky_cheap", "leaky_partial"}
    assert unknown.leak_ok is None and not unknown.classified
    assert leaky_partial.leak_ok is False and safe.leak_ok is True


def _write(path, *headlines):
    path.write_text(json.dumps(_result(*headlines)))
    return path


def test_frontier_command_writes_the_table_plot_and_json(tmp_path, capsys):
    a = _write(tmp_path / "a.json", _headline(), _headline(masks="kron", defence="none", token_recovery=1.0))
    b = _write(tmp_path / "b.json", _headline(masks="kron:12"))
    out = tmp_path / "report"
    code = main(
        [
            "attack",
            "frontier",
            str(a),
            str(b),
            "--workloads",
            "logits-512:512:1,train-512:512:0.2",
            "--json",
            str(tmp_path / "f.json"),
            "--report",
            str(out),
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "f.json").read_text())
    by = {p["label"]: p for p in data["points"]}
    assert by["strict/kron/none"]["leak_ok"] is False
    assert by["strict/kron/mix:4+fill"]["on_frontier"] and by["strict/kron:12/mix:4+fill"]["on_frontier"]
    assert (
        by["strict/kron:12/mix:4+fill"]["cost"]["logits-512"]
        < by["strict/kron/mix:4+fill"]["cost"]["logits-512"]
    )
    assert "**(default)**" in (out / "frontier.md").read_text()
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workloads", "a:512"], "NAME:ROWS:HEAD_SHARE"),
        (["--workloads", "a:x:1"], "NAME:ROWS:HEAD_SHARE"),
        (["--workloads", "a:512:1.5"], "head share"),
        (["--workloads", "a:0:1"], "rows >= 1"),
        (["--mode", "paper"], "no configuration"),
        (["--workloads", "a:512:1,a:2048:1"], "workload names must differ"),
    ],
)
def test_frontier_command_refuses_bad_input_in_one_line(tmp_path, capsys, argv, message):
    a = _write(tmp_path / "a.json", _headline())
    assert main(["attack", "frontier", str(a), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "cannot read attack results"),
        ("[]", "not an attack-suite result"),
        ('{"results": {}}', "not an attack-suite result"),
        ('{"results": [{"x": 1}]}', "without a headline"),
        ('{"results": [{"headline": {"mode": "strict", "masks": "kron"}}]}', "without a headline"),
        (
            '{"results": [{"headline": {"mode": "strict", "masks": "bogus", "defence": "none"}}]}',
            "unknown mask",
        ),
        (
            '{"results": [{"headline": {"mode": "strict", "masks": "kron", "defence": "none",'
            ' "token_recovery": "lots", "unigram_baseline": 0.1}}]}',
            "not a number",
        ),
    ],
)
def test_frontier_command_refuses_a_file_that_is_not_a_suite_result(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main(["attack", "frontier", str(bad)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert main(["attack", "frontier", str(tmp_path / "missing.json")]) == 2
