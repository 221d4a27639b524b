"""Pictures of retrieval results (matplotlib, PNG files, no display needed).

* ``plot_pr_curves``: precision-recall by Hamming-radius sweep, one curve per run;
* ``plot_precision_at_k``: precision@top-k;
* ``plot_map_vs_bits``: mAP against code length, one line per method;
* ``plot_bit_balance``: ones-rate of every bit (0.5 is balanced);
* ``plot_retrieval_grid``: queries in the first column, their neighbours to the right,
  wrong-label neighbours outlined in red.

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "balance.png")
    >>> plot_bit_balance(np.array([0.5, 0.2, 0.9]), path)
    '...balance.png'
"""

from __future__ import annotations

import os

import numpy as np

from keras_hashing.fileio import atomic_path, check_output_dir

WRONG_COLOR = "#d62728"
RIGHT_COLOR = "#2ca02c"


# One colour and marker per method, the same in every figure; closed-form baselines
# dashed. (matplotlib's 10-colour cycle gave two methods one colour in figures with 12.)
METHOD_STYLES = {
    "ssdh": ("#1f77b4", "o"), "dsh": ("#ff7f0e", "s"), "dpsh": ("#2ca02c", "^"),
    "sdsh": ("#d62728", "D"), "sh-bdnn": ("#9467bd", "v"), "uh-bdnn": ("#8c564b", "<"),
    "dmrh": ("#e377c2", ">"), "dmrh-n1": ("#f7b6d2", "p"), "dmrh-n2": ("#e377c2", ">"),
    "dmrh-n3": ("#7f3f6f", "h"), "classifier-code": ("#17becf", "*"),
    "itq": ("#7f7f7f", "x"), "lsh": ("#bcbd22", "+"), "pcah": ("#393b79", "1"),
    "csq": ("#000000", "P"), "orthohash": ("#b8860b", "X"), "hashnet": ("#006400", "d"),
    "greedyhash": ("#4b0082", "8"),
}
BASELINES = ("itq", "lsh", "pcah")
_SPARE = ("#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#dbdb8d")


def method_style(label: str) -> dict:
    """matplotlib keyword arguments of the curve of ``label`` (a method name, or a
    method name followed by anything, e.g. "ssdh 48b")."""
    method = str(label).split()[0] if str(label).split() else str(label)
    color, marker = METHOD_STYLES.get(method, (None, "."))
    if color is None:  # an unknown label: a stable spare colour from its name
        color = _SPARE[sum(map(ord, method)) % len(_SPARE)]
    return {"color": color, "marker": marker, "markersize": 4,
            "linestyle": "--" if method in BASELINES else "-", "label": label}


def _legend_outside(ax) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> str:
    plt = _pyplot()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_pr_curves(curves: dict, path, title="Precision-recall (Hamming radius sweep)") -> str:
    """``curves``: label -> (precision, recall) arrays over radii 0..K."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, (precision, recall) in curves.items():
        ax.plot(recall, precision, **method_style(label))
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def plot_precision_at_k(curves: dict, path, title="Precision@k") -> str:
    """``curves``: label -> (ks, precision) arrays."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, (ks, precision) in curves.items():
        ax.plot(ks, precision, **method_style(label))
    ax.set(xlabel="k (number of retrieved items)", ylabel="precision@k", ylim=(0, 1.02),
           title=title)
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def plot_map_vs_bits(rows, path, metric="map_all") -> str:
    """``rows``: dicts with ``method``, ``bits`` and ``metric``; one line per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for method in sorted({r["method"] for r in rows}):
        pts = sorted((r["bits"], r[metric]) for r in rows if r["method"] == method)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], **method_style(method))
    ax.set(xlabel="bits", ylabel=metric.replace("_", "@"), ylim=(0, 1.02),
           title=f"{metric} vs code length")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def plot_bit_balance(ones_rate, path, title="Bit balance (fraction of ones per bit)") -> str:
    """Bar per bit; bars far from 0.5 are unbalanced, at 0 or 1 constant (wasted) bits."""
    plt = _pyplot()
    rate = np.asarray(ones_rate, dtype=float)
    fig, ax = plt.subplots(figsize=(max(4, 0.15 * len(rate) + 2), 3))
    colors = [RIGHT_COLOR if 0.3 <= r <= 0.7 else WRONG_COLOR for r in rate]
    ax.bar(np.arange(len(rate)), rate, color=colors)
    ax.axhline(0.5, color="black", lw=0.8, ls="--")
    ax.set(xlabel="bit", ylabel="ones rate", ylim=(0, 1), title=title)
    return _save(fig, path)


def plot_retrieval_grid(query_images, neighbour_images, path, query_labels=None,
                        neighbour_labels=None, class_names=None, distances=None) -> np.ndarray:
    """Query in column 0, its neighbours in columns 1..k; wrong-label neighbours in red.

    Args:
        query_images: (Q, H, W, C) uint8.
        neighbour_images: (Q, k, H, W, C) uint8.
        query_labels, neighbour_labels: (Q,) and (Q, k) class ids (or None: no marking).
        distances: optional (Q, k) Hamming distances written under each neighbour.

    Returns:
        The (Q, k) boolean mask of neighbours drawn as wrong.
    """
    plt = _pyplot()
    q = np.asarray(query_images)
    nb = np.asarray(neighbour_images)
    nq, k = nb.shape[:2]
    wrong = np.zeros((nq, k), bool)
    if query_labels is not None and neighbour_labels is not None:
        wrong = np.asarray(neighbour_labels) != np.asarray(query_labels)[:, None]
    fig, axes = plt.subplots(nq, k + 1, figsize=(1.1 * (k + 1), 1.2 * nq), squeeze=False)

    def show(ax, img, border=None, caption=None):
        img = img[..., 0] if img.shape[-1] == 1 else img
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(border is not None)
            if border is not None:
                spine.set_edgecolor(border)
                spine.set_linewidth(3)
        if caption:
            ax.set_xlabel(caption, fontsize=7)

    def name(label):
        if label is None:
            return None
        return class_names[int(label)] if class_names is not None else str(label)

    for i in range(nq):
        show(axes[i, 0], q[i], border="black",
             caption=f"query {name(query_labels[i]) if query_labels is not None else ''}")
        for j in range(k):
            cap = []
            if neighbour_labels is not None:
                cap.append(name(neighbour_labels[i][j]))
            if distances is not None:
                cap.append(f"d={int(distances[i][j])}")
            show(axes[i, j + 1], nb[i, j], border=WRONG_COLOR if wrong[i, j] else None,
                 caption=" ".join(c for c in cap if c))
    fig.suptitle("query | nearest codes (red: different label)", fontsize=9)
    _save(fig, path)
    return wrong


def plot_run(run, splits, out_dir, num_queries=8, k=10) -> dict:
    """Every picture of one run (``runs.Run``) on its dataset; returns name -> path."""
    from keras_hashing import evaluation
    from keras_hashing.codes import pack_bits
    from keras_hashing.search.index import HammingIndex

    model = run.model
    check_output_dir(out_dir)
    label = f"{model.method_name} {model.bits} bits"
    qb = model.encode(splits.query.x)
    db_bits = model.encode_bits(splits.database.x)
    db = pack_bits(db_bits)
    _, precision, recall = evaluation.precision_recall_curve(qb, db, splits.query.y,
                                                             splits.database.y, model.bits)
    ks = [k_ for k_ in (1, 5, 10, 20, 50, 100, 200, 500, 1000) if k_ <= len(db)]
    pk = evaluation.precision_at_k(qb, db, splits.query.y, splits.database.y, model.bits, ks)
    paths = {
        "pr_curve": plot_pr_curves({label: (precision, recall)},
                                   os.path.join(out_dir, "pr_curve.png")),
        "precision_at_k": plot_precision_at_k({label: (ks, pk)},
                                              os.path.join(out_dir, "precision_at_k.png")),
        "bit_balance": plot_bit_balance(db_bits.mean(axis=0),
                                        os.path.join(out_dir, "bit_balance.png")),
    }
    index = HammingIndex(model.bits)
    index.add(db)
    rows = np.linspace(0, len(qb) - 1, min(num_queries, len(qb))).astype(int)
    dist, ids = index.search(qb[rows], k)
    grid = os.path.join(out_dir, "retrieval_grid.png")
    plot_retrieval_grid(splits.query.x[rows], splits.database.x[ids], grid,
                        splits.query.y[rows] if splits.query.y.ndim == 1 else None,
                        splits.database.y[ids] if splits.database.y.ndim == 1 else None,
                        splits.class_names, dist)
    paths["retrieval_grid"] = grid
    return paths
