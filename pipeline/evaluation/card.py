"""The model card of a registered version: what the model is, what it was trained and chosen on,
how well it does (with intervals, calibration and slices) and where it should not be trusted.

Sections after Mitchell et al. 2019, "Model Cards for Model Reporting": model details, intended
use, factors, metrics, training and evaluation data, quantitative analyses, ethical
considerations, caveats and recommendations. ``evaluate`` renders it from what the pipeline
measured (:func:`render` takes plain values: no MLflow, no torch) and writes it as the
version's description, which the MLflow UI shows on the model page, and as ``model_card.md``.
"""
from __future__ import annotations



def split_words(method: str, group_by: str) -> str:
    """``split.method`` and ``split.group_by`` in words, for the card."""
    if method == "official":
        return "split as CelebA's own partition (`split.method: official`, list_eval_partition.txt)"
    return ("split by person, stratified (`split.method: stratified`, `split.group_by: identity`)"
            if group_by == "identity" else "split by image, stratified (`split.method: stratified`)")

def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _interval(ci) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def render(info: dict) -> str:
    """Markdown for ``info``: ``model`` (name, version, variant, strategy, lr, weights, image_size,
    epochs, batch_size, dtype, run_id), ``data`` (source, root, method, group_by, limit, splits:
    {split: {images, male, digest}}), ``choice`` (candidates: [{variant, best_val_acc, ci95}],
    runner_up, runner_up_p, alpha, decision (words)), ``test`` (:func:`pipeline.evaluation.scores.summary`),
    ``slices`` (worst: [description], gap: description or None, min_slice, skipped: reason or None)."""
    m, d, c, t, s = (info[k] for k in ("model", "data", "choice", "test", "slices"))
    lines = [f"# Model card: {m['name']} v{m['version']}", "",
             "## Model details", "",
             f"- VGG-16, its last layer replaced by `Linear(4096, 1)` (one logit: male), transfer-learned with "
             f"strategy `{m['strategy']}` (variant `{m['variant']}`, Adam, lr {m['lr']:g}, BCEWithLogitsLoss, "
             f"{m['epochs']} epochs, batch {m['batch_size']}); frozen base: `{m['weights']}`.",
             f"- Input: any image Pillow reads, resized to {m['image_size']}x{m['image_size']} and "
             "ImageNet-normalised inside the model. Output: `label` (1 = male, 0 = female) and `p_male`.",
             f"- Stored self-contained in {m['dtype']}; trained in MLflow run `{m['run_id']}`.", "",
             "## Intended use", "",
             "- Research and teaching: a reproducible, tracked transfer-learning experiment on CelebA.",
             "- Not for deciding anything about a person: it predicts an annotator's binary `Male` label on "
             "celebrity photos, not anyone's gender.", "",
             "## Factors", "",
             "- The slices below are CelebA's own attributes (eyeglasses, hats, make-up, age, skin "
             "paleness ...), present or absent: the attribute file's labels, not demographic ground truth.",
             "", "## Metrics", "",
             "- Accuracy at P(male) > 0.5 with its 95 % Wilson interval; ROC AUC and average precision "
             "(ranking); log loss and Brier score (probabilities); expected calibration error "
             "(15 equal-width bins of the predicted class's probability, Guo et al. 2017).", "",
             "## Training and evaluation data", "",
             f"- Source `{d['source']}` ({d['root']}), {split_words(d['method'], d['group_by'])}"
             + (f", a seeded subset of {d['limit']} images" if d.get("limit") else "") + ":", "",
             "| split | images | male | digest |", "|---|---|---|---|"]
    lines += [f"| {name} | {v['images']} | {v['male']} | `{v['digest']}` |" for name, v in d["splits"].items()]
    lines += ["", "## How this variant was chosen", "",
              "Highest validation accuracy of the candidates (95 % Wilson intervals):", "",
              "| variant | val acc | 95 % CI |", "|---|---|---|"]
    lines += [f"| {x['variant']} | {_pct(x['best_val_acc'])} | {_interval(x['ci95'])} |" for x in c["candidates"]]
    if c.get("runner_up"):
        noise = "within noise" if c["runner_up_p"] >= c["alpha"] else "a real difference"
        lines += ["", f"Against the runner-up `{c['runner_up']}`: exact McNemar p = {c['runner_up_p']:.3g} "
                      f"on the validation images where they disagree ({noise} at {c['alpha']:g})."]
    lines += ["", f"Registry: {c['decision']}.", "",
              "## Quantitative analyses", "",
              f"Test split, {t['n']} images:", "",
              "| metric | value |", "|---|---|",
              f"| accuracy | {_pct(t['accuracy'])} {_interval(t['ci95'])} |",
              f"| ROC AUC | {_num(t['roc_auc'])} |", f"| average precision | {_num(t['average_precision'])} |",
              f"| log loss | {_num(t['log_loss'])} |", f"| Brier score | {_num(t['brier'])} |",
              f"| ECE (15 bins) | {_num(t['ece'])} |", ""]
    if s.get("skipped"):
        lines += [f"Slices: none ({s['skipped']}).", ""]
    else:
        lines += [f"Worst slices of at least {s['min_slice']} test images (accuracy, 95 % interval, n):", ""]
        lines += [f"- {w}" for w in s["worst"]] or ["- none that large"]
        lines += ["", f"Largest gap between the two sides of one attribute: {s['gap'] or 'none (no attribute has both sides that large)'}.", ""]
    lines += ["## Ethical considerations", "",
              "- CelebA's `Male` attribute is binary and was assigned by annotators from appearance; it "
              "erases non-binary people and can disagree with how people identify. Annotators also "
              "disagree with each other on many of CelebA's attributes.",
              "- Gender classifiers have been measured far less accurate on some groups (Gender Shades: up "
              "to 34.7 % error for darker-skinned women against 0.8 % for lighter-skinned men); CelebA has "
              "no skin-tone or ethnicity labels, so such slices cannot be checked here.", "",
              "## Caveats and recommendations", "",
              "- Celebrity photos (aligned, mostly frontal, often professional): expect lower accuracy on "
              "everyday photos, other crops and other populations.",
              "- A test split of a few hundred images leaves intervals of several points: compare models on "
              "the same images and look at the intervals before reading a difference.",
              "- Calibration was measured, not corrected: read `p_male` as a score unless the ECE is small.", ""]
    return "\n".join(lines)
