"""Gender bias: find the career nouns' he/she sense, turn its weight down, measure the bias ratio.

    python -m analyses.gender_bias [--sense L] [--factors 0,0.1,...,1] [--twin DIR]
        [--single-token-only] [--careers FILE] [--json] [--model DIR]

The paper's experiment. Prompts fill templates such as "The{} said that" with career nouns
(analyses/data/careers.json: careers, training and held-out templates). The bias ratio over a
set of prompts is mean(max(p(he)/p(she), p(she)/p(he))) for the next word (1 = unbiased).

1. the sense index l whose sense vectors of the career nouns project most onto E_he - E_she
   (mean |(E_he - E_she) . C(career)_l|), unless --sense is given;
2. the factor on that sense's contextualization weight at the career token(s) minimising the
   bias ratio on the training prompts (a grid, --factors);
3. the bias ratio on the held-out prompts before and after, and the baseline: projecting the
   he-she direction out of the career tokens' input embedding (which feeds the contextualizer
   and the sense network), in this model and, with --twin, in its Transformer twin;
4. how much of the mean held-out gap logit(he) - logit(she) the career token's senses carry
   (exact attribution, per sense): the most any edit of the career's senses can remove.
A career the vocabulary splits into pieces is edited on every piece, unless --single-token-only.
JSON output: {"sense", "sense_scores", "sense_chosen_by", "factor", "fit": [{"factor",
"bias_ratio"}], "train": {"before", "after"}, "heldout": {"before", "after",
"projection_baseline", ("twin_before", "twin_projection_baseline")}, "gap": {"mean", "career",
"career_by_sense"}, "careers", "skipped_careers", "prompts": {"train", "heldout"},
"per_career": [{"career", "tokens", "gap_before", "gap_after", "bias_ratio_before",
"bias_ratio_after"}]}.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from analyses import _cli

CAREERS_FILE = Path(__file__).resolve().parent / "data" / "careers.json"




def build_parser():
    p = _cli.parser("python -m analyses.gender_bias", __doc__.strip().splitlines()[0])
    p.add_argument("--careers", default=str(CAREERS_FILE),
                   help="careers and templates (JSON; default analyses/data/careers.json)")
    p.add_argument("--sense", type=int, default=None,
                   help="the sense index to turn down (default: the one separating he/she best)")
    p.add_argument("--factors", default=None,
                   help="comma-separated factors to try (default 0,0.05,0.1,0.2,...,1)")
    p.add_argument("--twin", default=None, metavar="DIR",
                   help="a Transformer twin (same tokenizer) for the embedding-projection baseline")
    p.add_argument("--single-token-only", action="store_true",
                   help="use only careers that are one token in the vocabulary")
    p.add_argument("--plot", default=None, metavar="FILE.html",
                   help="also write a Plotly figure: the fit curve and the per-career gaps")
    p.add_argument("--show", type=int, default=10, help="careers to list in the table (default 10)")
    _cli.add_threads(p)
    return p


def read_careers(path: str) -> dict:
    data = _cli.read_json(path, "careers")
    templates = data.get("templates") or {}
    if not data.get("careers") or not templates.get("train") or not templates.get("heldout"):
        raise ValueError(f"the careers file {path!r} needs \"careers\" and \"templates\" with "
                         "\"train\" and \"heldout\" lists")
    pronouns = data.get("pronouns", [" he", " she"])
    if not (isinstance(pronouns, list) and len(pronouns) == 2 and all(isinstance(w, str) for w in pronouns)):
        raise ValueError(f"\"pronouns\" in {path!r} must be two words, e.g. [\" he\", \" she\"]")
    return data


def parse_factors(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        factors = [float(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise ValueError(f"--factors takes comma-separated numbers, got {text!r}") from None
    if not factors or any(not f >= 0 for f in factors):
        raise ValueError(f"--factors must be numbers >= 0, got {text!r}")
    return factors


def render(data: dict, show: int) -> str:
    h, t = data["heldout"], data["train"]
    scores = "  ".join(f"{l}:{s:.3g}" for l, s in enumerate(data["sense_scores"]))
    lines = [f"{len(data['careers'])} careers; {data['prompts']['train']} training and "
             f"{data['prompts']['heldout']} held-out prompts",
             f"he/she separation per sense (mean |(E_he - E_she) . C(career)_l|): {scores}",
             f"sense {data['sense']} ({data['sense_chosen_by']}); factor fit on training prompts: "
             f"{data['factor']:g} (bias ratio {t['before']:.3f} -> {t['after']:.3f})", "",
             "bias ratio on held-out prompts, mean max(p(he)/p(she), p(she)/p(he)):",
             *(f"  {label:<43}{value:.3f}" for label, value in (
                 ("unedited", h["before"]),
                 (f"sense {data['sense']} weight x{data['factor']:g} on the career", h["after"]),
                 ("he-she projected out of career embeddings", h["projection_baseline"]),
                 ("twin, unedited", h.get("twin_before")),
                 ("twin, he-she projected out", h.get("twin_projection_baseline")))
               if value is not None)]
    g = data["gap"]
    top = sorted(enumerate(g["career_by_sense"]), key=lambda x: -abs(x[1]))[:5]
    lines += ["", f"held-out mean gap logit(he) - logit(she): {g['mean']:+.3f}, of which the career "
                  f"token's senses contribute {g['career']:+.3f} (largest: "
                  + ", ".join(f"sense {l} {v:+.3f}" for l, v in top) + "); the rest comes from the "
                  "other words of the prompt"]
    if data["skipped_careers"]:
        lines.append(f"skipped (several tokens): {', '.join(c['career'] for c in data['skipped_careers'])}")
    rows = sorted(data["per_career"], key=lambda r: -abs(r["gap_before"]))[:show]
    lines += ["", f"most biased careers (held-out; gap = logit he - logit she), {len(rows)} of "
                  f"{len(data['per_career'])}:",
              f"{'career':<14}{'gap before':>11}{'gap after':>11}{'ratio before':>14}{'ratio after':>13}"]
    for r in rows:
        lines.append(f"{r['career']:<14}{r['gap_before']:>+11.3f}{r['gap_after']:>+11.3f}"
                     f"{r['bias_ratio_before']:>14.3f}{r['bias_ratio_after']:>13.3f}")
    return "\n".join(lines)


def write_plot(data: dict, path: str) -> None:
    """Left: bias ratio on the training prompts against the factor. Right: per career, the mean
    held-out logit gap (he - she) before and after."""
    if Path(path).suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--plot {path!r}: write an .html file (static images need kaleido)")
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        raise ValueError("--plot needs plotly: pip install plotly") from None
    rows = sorted(data["per_career"], key=lambda r: r["gap_before"])
    fig = make_subplots(rows=1, cols=2, column_widths=[0.35, 0.65], subplot_titles=(
        f"bias ratio on training prompts, sense {data['sense']} weight x factor",
        "held-out logit(he) - logit(she) per career"))
    fig.add_trace(go.Scatter(x=[r["factor"] for r in data["fit"]],
                             y=[r["bias_ratio"] for r in data["fit"]], mode="lines+markers",
                             name="bias ratio (train)"), 1, 1)
    fig.add_trace(go.Scatter(x=[data["factor"]], y=[data["train"]["after"]], mode="markers",
                             marker={"size": 12, "symbol": "star"}, name="chosen factor"), 1, 1)
    names = [r["career"] for r in rows]
    fig.add_trace(go.Bar(x=names, y=[r["gap_before"] for r in rows], name="unedited"), 1, 2)
    fig.add_trace(go.Bar(x=names, y=[r["gap_after"] for r in rows],
                         name=f"sense {data['sense']} x{data['factor']:g}"), 1, 2)
    fig.update_xaxes(title_text="factor", row=1, col=1)
    h = data["heldout"]
    fig.update_layout(barmode="group", height=480, width=1300, title=(
        f"Gender bias: held-out bias ratio {h['before']:.3f} unedited, {h['after']:.3f} after, "
        f"{h['projection_baseline']:.3f} with he-she projected out of the career embeddings"))
    fig.write_html(path, include_plotlyjs="cdn")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = read_careers(args.careers)
    if args.plot and Path(args.plot).suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--plot {args.plot!r}: write an .html file (static images need kaleido)")
    factors = parse_factors(args.factors)
    from backpack_core.common.progress import set_threads

    set_threads(args.threads)
    model, tokenizer = _cli.load(args)
    if not model.config.is_backpack:
        raise ValueError("this model is a Transformer twin: it has no senses; give the Backpack "
                         "as --model and the twin as --twin")
    twin = None
    if args.twin:
        from backpack_core.model.loading import load_backpack

        twin, twin_tokenizer = load_backpack(args.twin, device=args.device, dtype=args.dtype)
        if twin_tokenizer.backend.get_vocab() != tokenizer.backend.get_vocab():
            raise ValueError("--twin has a different tokenizer than --model; the baseline compares "
                             "the same prompts, so both must share one")
    from backpack_core.experiments.gender_bias import DEFAULT_FACTORS, gender_bias

    pronouns = tuple(spec.get("pronouns", (" he", " she")))
    result = gender_bias(model, tokenizer, spec["careers"], spec["templates"]["train"],
                         spec["templates"]["heldout"], sense=args.sense,
                         factors=factors or DEFAULT_FACTORS, pronouns=pronouns, twin=twin,
                         single_token_only=args.single_token_only)
    data = result.to_dict()
    return _cli.emit(args, data, lambda d: render(d, args.show), write_plot)


if __name__ == "__main__":
    sys.exit(_cli.run(main, prog="gender_bias"))
