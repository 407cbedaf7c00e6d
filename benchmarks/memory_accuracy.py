"""How close are memory estimates to published measurements?

Runs ftspec's estimator, an accelerate-style estimate (`accelerate estimate-memory`: 4x the weights
in their dtype, "training using Adam", no activations, LoRA or sharding) and DeepSpeed's model-states
formula (`estimate_zero2/3_model_states_mem_needs`: every parameter counted as trained, no
activations) on the rows of compiler/data/memory-calibration.csv that publish a complete
configuration, and prints per-row results, the share within 25%, the mean absolute percentage
error, the mean signed error (negative: the estimate leans toward "fits"), the counts of over- and
under-predictions (by more than 2%) and the worst rows. Fit boundaries and published OOMs are checked
as verdicts; rows whose peak batch length was never published (unpacked data) are checked as bounds:
the estimate's high end at the truncation length must be at or above the measurement (no
tolerance), the estimate at the shortest certain batch must not be above it by more than 25%. Rows
known to miss say why (`exception` / `bound_miss` in compiler/check/calibration.py).

Goals (issue 14) on the scored rows: mean signed error within +-3%, MAPE <= 8%, at most one row
outside 25%; every published OOM called; every upper-bound row at or above its measurement. Exits 1
when one is missed.

    python benchmarks/memory_accuracy.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from ftspec.compiler.catalog.arch_shapes import Shapes
from ftspec.compiler.check.calibration import (
    bound_miss,
    exception,
    floor_gib,
    full_length_gib,
    lower_bound_rows,
    predicted_gib,
    scored_rows,
    upper_bound_rows,
    verdict_checks,
)
from ftspec.compiler.check.memory import GIB

TOLERANCE = 0.25
SIGNIFICANT = 0.02  # an over- or under-prediction counts when off by more than this
GOALS = {"mean_signed_error": 0.03, "mape": 0.08, "outside_25pct": 1}


def accelerate_style(reading: dict) -> float:
    shapes, setup = Shapes.from_arch(reading["arch"]), reading["setup"]
    method, precision = setup.get("method", "lora"), setup.get("precision", "bf16")
    if method == "qlora":
        per_param = 1.0 if setup.get("quant_bits", 4) == 8 else 0.5
    else:
        per_param = 4.0 if precision == "fp32" else 2.0
    return 4 * shapes.total_params * per_param / GIB


def deepspeed_formula(reading: dict) -> float:
    shapes, setup = Shapes.from_arch(reading["arch"]), reading["setup"]
    params, gpus = shapes.total_params, max(int(setup.get("world", 1)), 1)
    offload = setup.get("offload", "none") != "none"
    sharded = setup.get("strategy") == "fsdp" or setup.get("zero_stage") == 3
    if sharded:
        largest_layer = 4 * shapes.largest_module_params
        return (largest_layer + (0 if offload else 18 * params / gpus)) / GIB
    return (4 * params + (0 if offload else 16 * params / gpus)) / GIB


def summarise(errors: list[float]) -> dict:
    within = sum(abs(e) <= TOLERANCE for e in errors)
    return {
        "rows": len(errors),
        "within_25pct": within,
        "share_within_25pct": round(within / len(errors), 3) if errors else None,
        "mape": round(sum(abs(e) for e in errors) / len(errors), 3) if errors else None,
        "mean_signed_error": round(sum(errors) / len(errors), 3) if errors else None,
        "over_predicted": sum(e > SIGNIFICANT for e in errors),
        "under_predicted": sum(e < -SIGNIFICANT for e in errors),
        "outside_25pct": len(errors) - within,
    }


def run() -> dict:
    rows = scored_rows()
    results, errs = [], {"ftspec": [], "accelerate_style": [], "deepspeed_formula": []}
    for row in rows:
        measured = row.measured_gib
        preds = {
            "ftspec": predicted_gib(row),
            "accelerate_style": accelerate_style(row.reading),
            "deepspeed_formula": deepspeed_formula(row.reading),
        }
        for name, value in preds.items():
            errs[name].append((value - measured) / measured)
        results.append(
            {
                "id": row.id,
                "model": row.data["model"],
                "method": row.data["method"],
                "metric": row.reading["metric"],
                "measured_gib": round(measured, 2),
                **{f"{k}_gib": round(v, 2) for k, v in preds.items()},
                "error": round((preds["ftspec"] - measured) / measured, 3),
                "reading": row.reading.get("reading"),
                "exception": exception(row),
                "source": row.source,
            }
        )
    verdicts = []
    for vid, v, est in verdict_checks():
        ok = est.fits if v["expect"] == "fits" else est.fits is False
        verdicts.append(
            {
                "id": vid,
                "expect": v["expect"],
                "device_gib": round(est.device_gib, 2),
                "capacity_gib": round(v["capacity_gib"], 2),
                "ok": bool(ok),
            }
        )
    bounds = []
    for row in upper_bound_rows():
        full = full_length_gib(row)
        bounds.append(
            {
                "id": row.id,
                "measured_gib": round(row.measured_gib, 2),
                "estimate_gib": round(predicted_gib(row), 2),
                "full_length_estimate_gib": round(full, 2),
                "ok": row.measured_gib <= full,  # no tolerance
                "exception": exception(row) or bound_miss(row),
            }
        )
    floors = []
    for row in lower_bound_rows():
        low = floor_gib(row)
        floors.append(
            {
                "id": row.id,
                "kind": row.reading["kind"],
                "measured_gib": round(row.measured_gib, 2),
                "floor_estimate_gib": round(low, 2),
                "ok": low <= row.measured_gib * (1 + TOLERANCE),
                "reading": row.reading.get("reading"),
                "exception": exception(row),
            }
        )
    worst = sorted(results, key=lambda r: abs(r["error"]), reverse=True)[:5]
    summary = {name: summarise(e) for name, e in errs.items()}
    mine = summary["ftspec"]
    goals = {
        "mean_signed_error_within_3pct": abs(mine["mean_signed_error"]) <= GOALS["mean_signed_error"],
        "mape<=8pct": mine["mape"] <= GOALS["mape"],
        "at_most_one_outside_25pct": mine["outside_25pct"] <= GOALS["outside_25pct"],
        "every_published_oom_called": all(v["ok"] for v in verdicts if v["expect"] == "oom"),
        "every_upper_bound_at_or_above": all(b["ok"] for b in bounds),
    }
    return {
        "summary": summary,
        "goals": goals,
        "rows": results,
        "worst": [{"id": r["id"], "error": r["error"]} for r in worst],
        "verdicts": verdicts,
        "upper_bounds": bounds,
        "lower_bounds": floors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    report = run()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if all(report["goals"].values()) else 1
    print(
        f"{'row':6} {'model':16} {'method':8} {'metric':9} {'measured':>9} {'ftspec':>8} {'error':>7} "
        f"{'accel':>8} {'ds':>8}"
    )
    for r in report["rows"]:
        print(
            f"{r['id']:6} {r['model'][:16]:16} {r['method'][:8]:8} {r['metric']:9} {r['measured_gib']:9.1f} "
            f"{r['ftspec_gib']:8.1f} {r['error']:+7.0%} {r['accelerate_style_gib']:8.1f} "
            f"{r['deepspeed_formula_gib']:8.1f}{'  (exception)' if r['exception'] else ''}"
        )
    print(
        "\nGiB per GPU. Within 25% / mean absolute percentage error / mean signed error / over, under (>2%):"
    )
    for name, s in report["summary"].items():
        print(
            f"  {name:18} {s['within_25pct']:>2}/{s['rows']} ({s['share_within_25pct']:.0%})  MAPE {s['mape']:.1%}"
            f"  signed {s['mean_signed_error']:+.1%}  over {s['over_predicted']}, under {s['under_predicted']}"
        )
    print("  worst ftspec rows: " + ", ".join(f"{w['id']} {w['error']:+.0%}" for w in report["worst"]))
    print("\nVerdicts (published fit boundaries and OOMs):")
    for v in report["verdicts"]:
        print(
            f"  {v['id']:10} expect {v['expect']:4}  estimate {v['device_gib']:6.1f} / {v['capacity_gib']:.1f} GiB"
            f"  {'ok' if v['ok'] else 'WRONG'}"
        )
    print(
        "\nUpper bounds (unpacked data; the full-length estimate's high end, shape cache included, must be"
        " at or above the measurement):"
    )
    for b in report["upper_bounds"]:
        print(
            f"  {b['id']:6} measured {b['measured_gib']:6.1f}  estimate {b['estimate_gib']:6.1f}  high end"
            f" {b['full_length_estimate_gib']:6.1f}  {'ok' if b['ok'] else 'BELOW'}"
            f"{'  (known: ' + b['exception'][:70] + '...)' if b['exception'] and not b['ok'] else ''}"
        )
    print("\nLower bounds (the estimate for the shortest certain batch should not be above the measurement):")
    for b in report["lower_bounds"]:
        print(
            f"  {b['id']:6} measured {b['measured_gib']:6.1f}  floor estimate {b['floor_estimate_gib']:6.1f}"
            f"  {'ok' if b['ok'] else 'ABOVE'}{'  (exception)' if b['exception'] else ''}"
            f"{'  [' + b['kind'] + ']' if b['kind'] == 'lower_bound' else ''}"
        )
    print(
        "\nGoals (issue 14): "
        + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in report["goals"].items())
    )
    return 0 if all(report["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
