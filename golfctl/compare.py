"""`golfctl compare`: does a result beat a reference by the challenge's margin?

A new record must lower the score by 0.005 nats (per token, val_loss) at p < 0.01. The test is
Welch's t-test, one-sided: H0 "improvement ≤ margin" against "improvement > margin", with
improvement = mean(reference) − mean(ours), t = (improvement − margin) / √(s²ₒ/nₒ + s²ᵣ/nᵣ),
degrees of freedom by Welch–Satterthwaite, p = P(T > t). Results given as files compare in
nats (val_loss). A reference given as numbers (`--reference-bpb X --reference-std S
--reference-n N`, as records publish them) compares in BPB, with the margin converted by our
own results' tokens per byte: 0.005 nats/token = 0.005 / ln 2 × tokens / bytes bits per byte.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from golfctl.errors import UserError

COMPARE_FORMAT = "golfctl-compare"
MARGIN_NATS = 0.005
P_REQUIRED = 0.01


@dataclass(frozen=True)
class Result:
    label: str
    val_loss: float  # nats per token
    val_bpb: float
    tokens_per_byte: float | None  # None where the file does not say (a submission.json)


@dataclass(frozen=True)
class Welch:
    improvement: float
    margin: float
    t: float
    df: float
    p: float


def load_results(path: Path) -> list[Result]:
    """Per-seed results of an eval.json, a run folder holding one, or a submission folder."""
    path = Path(path)
    if path.is_dir():
        for name in ("eval.json", "submission.json"):
            if (path / name).is_file():
                return load_results(path / name)
        raise UserError(f"{path} holds neither eval.json nor submission.json; pass a run or submission folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} ({exc}); pass an eval.json, a run folder or a submission folder") from None
    if "seed_results" in data:
        return [Result(f"{path.parent.name} seed {seed}", r["val_loss"], r["val_bpb"], None)
                for seed, r in data["seed_results"].items() if "val_loss" in r]
    results = data.get("results", {})
    entry = results.get("phased") or results.get("ttt") or results.get("sliding")  # the final score first
    if entry is None:
        raise UserError(f"{path} has no sliding or TTT result")
    return [Result(str(path.parent.name or path), entry["val_loss"], entry["val_bpb"], entry["tokens"] / entry["bytes"])]


def welch(ours: list[float], reference_mean: float, reference_std: float, reference_n: int, margin: float) -> Welch:
    """One-sided Welch test that mean(reference) − mean(ours) > margin (lower is better)."""
    from scipy import stats  # only this command needs scipy

    n = len(ours)
    if n < 2 or reference_n < 2:
        raise UserError(f"a t-test needs at least 2 results on each side (have {n} and {reference_n}); run more seeds")
    var_ours, var_ref = statistics.variance(ours) / n, reference_std ** 2 / reference_n
    improvement = reference_mean - statistics.fmean(ours)
    se = math.sqrt(var_ours + var_ref)
    if se == 0:
        raise UserError("every result is identical on both sides: no variance to test against")
    df = (var_ours + var_ref) ** 2 / (var_ours ** 2 / (n - 1) + var_ref ** 2 / (reference_n - 1))
    t = (improvement - margin) / se
    return Welch(improvement, margin, t, df, float(stats.t.sf(t, df)))


@dataclass(frozen=True)
class Comparison:
    ours: list[Result]
    reference: list[Result] | None  # None: the reference was given as numbers
    unit: str  # "nats" (val_loss) or "BPB"
    values: list[float]  # ours, in `unit`
    reference_mean: float
    reference_std: float
    reference_n: int
    test: Welch

    @property
    def beats(self) -> bool:
        return self.test.p < P_REQUIRED and self.test.improvement > self.test.margin

    def lines(self) -> list[str]:
        """The printed comparison: per-seed values, means, improvement, Welch p and the verdict."""
        test, unit = self.test, self.unit
        lines = [f"  {r.label:<32} val_loss {r.val_loss:.5f}  val_bpb {r.val_bpb:.5f}" for r in self.ours]
        lines += [f"  reference {r.label:<22} val_loss {r.val_loss:.5f}  val_bpb {r.val_bpb:.5f}"
                  for r in self.reference or []]
        return lines + [
            f"  ours       mean {statistics.fmean(self.values):.5f} {unit}, std {sample_std(self.values):.5f}, "
            f"n {len(self.values)}",
            f"  reference  mean {self.reference_mean:.5f} {unit}, std {self.reference_std:.5f}, n {self.reference_n}",
            f"  improvement {test.improvement:+.5f} {unit} (required "
            + (f"{MARGIN_NATS} nats)" if unit == "nats" else f"{test.margin:.5f} {unit} = {MARGIN_NATS} nats)"),
            f"  Welch t = {test.t:.3f}, df = {test.df:.2f}, one-sided p = {test.p:.4g}",
            f"verdict: {'beats' if self.beats else 'does not beat'} the reference by the required {MARGIN_NATS} nats "
            f"at p = {test.p:.4g} ({'<' if test.p < P_REQUIRED else '≥'} {P_REQUIRED})",
        ]

    def as_dict(self) -> dict:
        """compare.json: everything `lines` prints, as numbers (what `golfctl plot` draws compare.png from)."""
        return {"format": COMPARE_FORMAT, "version": 1, "unit": self.unit,
                "ours": [dataclasses.asdict(r) | {"value": v} for r, v in zip(self.ours, self.values)],
                "reference": {"mean": self.reference_mean, "std": self.reference_std, "n": self.reference_n,
                              "results": [dataclasses.asdict(r) for r in self.reference or []]},
                "welch": dataclasses.asdict(self.test), "p_required": P_REQUIRED, "beats": self.beats}


def compare(ours: list[Result], reference: list[Result] | None, reference_bpb: tuple[float, float, int] | None
            ) -> Comparison:
    """Our results against reference results (in nats) or a published mean/std/n (in BPB)."""
    if reference is not None:
        unit, values = "nats", [r.val_loss for r in ours]
        ref_values = [r.val_loss for r in reference]
        ref_mean, ref_std, ref_n = statistics.fmean(ref_values), sample_std(ref_values), len(ref_values)
        margin = MARGIN_NATS
    else:
        ratios = [r.tokens_per_byte for r in ours if r.tokens_per_byte]
        if not ratios:
            raise UserError("--reference-bpb needs results that record tokens and bytes (eval.json files)")
        unit, values = "BPB", [r.val_bpb for r in ours]
        ref_mean, ref_std, ref_n = reference_bpb
        if not (math.isfinite(ref_mean) and math.isfinite(ref_std) and ref_std >= 0):
            raise UserError(f"--reference-bpb and --reference-std must be finite (the std >= 0), got {ref_mean}, "
                            f"{ref_std}")
        margin = MARGIN_NATS / math.log(2) * statistics.fmean(ratios)
    return Comparison(ours, reference, unit, values, ref_mean, ref_std, ref_n,
                      welch(values, ref_mean, ref_std, ref_n, margin))


def sample_std(values: list[float]) -> float:
    """The sample standard deviation; 0 for a single value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0
