"""PNG plots made from a saved bench.json (``se-kernels plot DIR/bench.json``).

    bench_bandwidth.png  op level: effective bandwidth against the bytes floor, per shape, per
                         implementation, with the measured copy bandwidth as the ceiling line
    bench_model.png      model level: SE-ResNet-50's overhead over ResNet-50, reference SE vs
                         fused SE, each with its 95% interval (hollow bars: within noise),
                         beside the paper's figures

At most these two files, written next to the JSON unless ``--output`` says otherwise.
"""

from __future__ import annotations

from pathlib import Path

from se_kernels.bench.report import fmt_time_us, model_overhead, read_json, shape_label

BANDWIDTH_PNG = "bench_bandwidth.png"
MODEL_PNG = "bench_model.png"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _pick(rows: list[dict], key: str, prefer=None):
    values = list(dict.fromkeys(r[key] for r in rows))
    if prefer is not None and prefer in values:
        return prefer
    return values[0]


def plot_bandwidth(data: dict, path: Path) -> Path | None:
    rows = data.get("op", [])
    if not rows:
        return None
    # one dtype, no residual if measured without; a row of panels per (pass, layout, threads),
    # only the most threads if that makes more than 6 rows: the rest is in the JSON
    dtype = _pick(rows, "dtype")
    res = _pick(rows, "residual", prefer=False)
    rows = [r for r in rows if r["dtype"] == dtype and r["residual"] == res]
    if len({(r["mode"], r["layout"], r["threads"]) for r in rows}) > 6:
        most = max((r["threads"] or 0) for r in rows)
        rows = [r for r in rows if (r["threads"] or 0) == most]
    shapes = list(dict.fromkeys((r["family"], r["shape"]) for r in rows))
    panels = list(dict.fromkeys((r["mode"], r["layout"], r["threads"]) for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    bw = data["provenance"]["copy_bandwidth_gbs"]
    plt = _plt()
    fig, axes = plt.subplots(len(panels), len(shapes), squeeze=False, sharey="row",
                             figsize=(max(7.0, 3.2 * len(shapes) + 1), 2.8 * len(panels) + 1.2))
    colors = plt.get_cmap("tab10")
    for i, (mode, layout, threads) in enumerate(panels):
        ceiling = bw.get(str(threads)) or bw.get("device")
        thr = f", {threads} thr" if threads else ""
        for j, (family, shape) in enumerate(shapes):
            ax = axes[i][j]
            sub = [r for r in rows if r["mode"] == mode and r["layout"] == layout
                   and r["threads"] == threads and r["shape"] == shape and r["family"] == family]
            ns = sorted({r["n"] for r in sub})
            width = 0.8 / max(1, len(impls))
            for k, impl in enumerate(impls):
                xs, ys = [], []
                for xi, n in enumerate(ns):
                    hit = [r for r in sub if r["impl"] == impl and r["n"] == n]
                    if hit:
                        xs.append(xi + (k - (len(impls) - 1) / 2) * width)
                        ys.append(hit[0]["gbps"])
                ax.bar(xs, ys, width, label=impl, color=colors(k % 10))
            if ceiling:
                ax.axhline(ceiling, color="k", ls="--", lw=1,
                           label="copy bandwidth" if (i, j) == (0, 0) else None)
            ax.set_xticks(range(len(ns)), [f"N={n}" for n in ns])
            if sub:
                r = sub[0]
                ax.set_title(f"{shape_label(r)}\n{mode}, {layout}{thr}", fontsize=9)
            if j == 0:
                ax.set_ylabel("GB/s (floor / median)")
            ax.grid(axis="y", alpha=0.3)
    prov = data["provenance"]
    fig.suptitle(f"SE block: effective bandwidth against the bytes floor (dashed: copy "
                 f"bandwidth)\n{prov['device']}, {dtype}{', residual' if res else ''}",
                 fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.06 / len(panels) ** 0.5, 1, 1 - 0.1 / len(panels) ** 0.5))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_model(data: dict, path: Path) -> Path | None:
    rows = [r for r in data.get("model", []) if model_overhead(r) is not None]
    if not rows:
        return None
    plt = _plt()
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    variants = list(dict.fromkeys(r["se"] for r in rows)) + ["paper"]
    fig, ax = plt.subplots(figsize=(2.2 + 2.2 * len(modes), 3.8))
    width = 0.8 / len(variants)
    colors = plt.get_cmap("tab10")
    for k, v in enumerate(variants):
        xs, ys, los, his, labels, noisy = [], [], [], [], [], []
        for i, mode in enumerate(modes):
            if v == "paper":
                pct = (next(r["paper_ratio"] for r in rows if r["mode"] == mode) - 1) * 100
                lo = hi = None
                note = ""
            else:
                hit = [r for r in rows if r["mode"] == mode and r["se"] == v]
                if not hit:
                    continue
                pct, lo, hi = model_overhead(hit[0])
                note = f"\n{fmt_time_us(hit[0]['median_ms'] * 1e3)}"
            xs.append(i + (k - (len(variants) - 1) / 2) * width)
            ys.append(pct)
            los.append(pct if lo is None else lo)
            his.append(pct if hi is None else hi)
            within = lo is not None and lo <= 0 <= hi
            noisy.append(within)
            if lo is None:
                labels.append(f"{pct:+.1f}%{note}" + ("" if v == "paper" else "\n(no CI)"))
            else:
                labels.append(f"{pct:+.1f}%\n[{lo:+.1f}, {hi:+.1f}]"
                              + ("\nwithin noise" if within else "") + note)
        if not xs:
            continue
        color = "lightgray" if v == "paper" else colors(k % 10)
        bars = ax.bar(xs, ys, width, label="paper (Hu et al.)" if v == "paper" else f"SE {v}",
                      color=color, hatch="//" if v == "paper" else None, edgecolor="k", lw=0.5,
                      alpha=1.0 if v == "paper" else 0.85)
        for bar, within in zip(bars, noisy):
            if within:  # a result the run cannot tell from 0: drawn hollow
                bar.set_facecolor("none")
                bar.set_edgecolor(color)
                bar.set_hatch("..")
        if v != "paper":
            ax.errorbar(xs, ys, yerr=[[y - lo for y, lo in zip(ys, los)],
                                      [hi - y for y, hi in zip(ys, his)]],
                        fmt="none", ecolor="k", elinewidth=1, capsize=3)
        for x, hi, lo, label in zip(xs, his, los, labels):
            top = max(hi, lo, 0)
            ax.annotate(label, (x, top), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=6)
    r0 = rows[0]
    ax.axhline(0, color="k", lw=0.8)
    plain = {r["mode"]: r for r in data["model"] if r["se"] == "none"}
    ax.set_xticks(range(len(modes)), [
        f"{m}, N={next(r['n'] for r in rows if r['mode'] == m)}"
        + (f"\nResNet-50: {fmt_time_us(plain[m]['median_ms'] * 1e3)}" if m in plain else "")
        for m in modes])
    ax.set_ylabel("SE-ResNet-50 step time over ResNet-50 (%)")
    thr = f", {r0['threads']} threads" if r0["threads"] else ""
    ax.set_title(f"SE overhead, 95% CI (hollow: within noise) — "
                 f"{data['provenance']['device']}, {r0['dtype']}{thr}", fontsize=8)
    ax.legend(fontsize=7)
    ax.margins(y=0.35)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(json_path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Writes the plots of a bench.json; returns the paths written."""
    json_path = Path(json_path)
    data = read_json(json_path)
    out = Path(out_dir) if out_dir is not None else json_path.parent
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_bandwidth(data, out / BANDWIDTH_PNG), plot_model(data, out / MODEL_PNG)]
    return [p for p in written if p is not None]
