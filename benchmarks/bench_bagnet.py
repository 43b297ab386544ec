"""BagNet benchmark: one-pass patch logits vs per-patch evaluation, and blackout.

Part 1 times ``patch_logits`` (one forward pass over the whole image) against
evaluating the same network on every q x q patch of the stride-8 grid
separately, in batches (what the reference heat-map utility does, there at
stride 1). Both give the same numbers; the script checks that.

Part 2 trains a small BagNet on a subset of CIFAR-10 (JPEG copy) and repeats
the seed's test-time experiment: accuracy and log loss with no blackout, with
every other patch dropped, and with a random 25/50/75% of patches dropped
(several repeats, mean and standard deviation).

Run ``python benchmarks/bench_bagnet.py`` (full) or ``--quick`` (about a
minute). Heavy runs go through ``flock /tmp/skpatch_heavy.lock``.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import log_loss

from skpatch.extraction import extract_patches
from skpatch.nn.bagnet import bagnet9, bagnet17, bagnet33

CIFAR_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-jpeg.tar.gz"
CONSTRUCTORS = {9: bagnet9, 17: bagnet17, 33: bagnet33}


def _best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def _per_patch_logits(model, images, stride, batch_size):
    """Reference-style evaluation: cut the q x q patches, run each through the net."""
    q = model.receptive_field
    nhwc = images.permute(0, 2, 3, 1).numpy()
    patches = extract_patches(nhwc, q, stride=stride)  # (n, gh, gw, q, q, C) view
    n, gh, gw = patches.shape[:3]
    flat = patches.reshape(-1, q, q, nhwc.shape[-1])  # a copy only for stride < q
    out = torch.cat([
        model(torch.from_numpy(np.ascontiguousarray(flat[i : i + batch_size])).permute(0, 3, 1, 2))
        for i in range(0, len(flat), batch_size)
    ])
    return out.reshape(n, gh, gw, -1).permute(0, 3, 1, 2)


def _one_pass_logits(model, images, stride):
    """patch_logits; a finer stride takes one pass per offset of the 8-pixel grid."""
    if stride == model.stride:
        return model.patch_logits(images)
    q, step = model.receptive_field, model.stride
    height, width = images.shape[-2:]
    out = None
    for top in range(0, step, stride):
        for left in range(0, step, stride):
            evidence = model.patch_logits(images[:, :, top:, left:])
            if out is None:
                out = evidence.new_empty(evidence.shape[:2] + (
                    (height - q) // stride + 1, (width - q) // stride + 1))
            out[:, :, top // stride :: step // stride, left // stride :: step // stride] = evidence
    return out


def bench_speed(cases, repeats, batch_size=256):
    rows = []
    torch.manual_seed(0)
    for label, patch_size, width, layers, n_images, size, stride in cases:
        model = CONSTRUCTORS[patch_size](n_classes=10, width=width, layers=layers).eval()
        images = torch.rand(n_images, 3, size, size)
        with torch.inference_mode():
            model.patch_logits(images[:1])  # warm-up
            t_one, one = _best_time(lambda: _one_pass_logits(model, images, stride), repeats)
            t_per, per = _best_time(
                lambda: _per_patch_logits(model, images, stride, batch_size), repeats
            )
        max_diff = float((one - per).abs().max())
        gh, gw = one.shape[2:]
        rows.append(
            (label, size, stride, n_images, gh * gw, t_one, t_per, t_per / t_one, max_diff)
        )
    print("\n== patch_logits: whole-image passes vs every patch separately ==")
    print("(stride 8: one pass; stride 1: one pass per offset of the 8-pixel grid, 64 in all;")
    print(" per patch: every q x q window through the network in batches of "
          f"{batch_size}; best of {repeats})")
    print(f"{'model':<28}{'image':>7}{'stride':>7}{'n':>4}{'patches':>9}{'passes s':>10}"
          f"{'per patch s':>13}{'speedup':>9}{'max |diff|':>12}")
    for label, size, stride, n, p, t1, tp, sp, diff in rows:
        print(f"{label:<28}{size:>5}px{stride:>7}{n:>4}{p:>9}{t1:>10.3f}{tp:>13.3f}"
              f"{sp:>8.1f}x{diff:>12.2e}")
    return rows


def bench_blackout(quick, seed=0):
    from skpatch.classifiers import BagNetClassifier
    from skpatch.datasets import load_cifar10
    from skpatch.inspection import blackout_scores

    n_train, n_test, epochs, repeats = (1000, 500, 1, 3) if quick else (20000, 2000, 6, 10)
    X_train, y_train = load_cifar10(CIFAR_ARCHIVE, subset="train", return_X_y=True)
    X_test, y_test = load_cifar10(CIFAR_ARCHIVE, subset="test", return_X_y=True)
    rng = np.random.default_rng(seed)
    train = rng.choice(len(X_train), n_train, replace=False)
    test = rng.choice(len(X_test), n_test, replace=False)
    clf = BagNetClassifier(
        9, width=32, layers=(1, 1, 1, 1), max_epochs=epochs, batch_size=64, lr=0.05,
        device="cpu", random_state=seed, verbose=1,
    )
    start = time.perf_counter()
    clf.fit(X_train[train], y_train[train])
    fit_time = time.perf_counter() - start
    train_proba = clf.predict_proba(X_train[train])
    grid = clf.patch_logits(X_test[:1]).shape[2:]
    print(f"\n== blackout: BagNet-9 (width 32, layers (1,1,1,1)), CIFAR-10 (JPEG copy), "
          f"{n_train} train / {n_test} test images, {epochs} epochs, fit {fit_time:.0f} s ==")
    print(f"patch grid {grid[0]}x{grid[1]} = {grid[0] * grid[1]} patches of 9x9 per image")
    train_acc = np.mean(clf.classes_[train_proba.argmax(1)] == y_train[train])
    print(f"train acc {train_acc:.4f} "
          f"loss {log_loss(y_train[train], train_proba, labels=clf.classes_):.4f}")
    scores = blackout_scores(
        clf, X_test[test], y_test[test], fractions=(0, 0.25, 0.5, 0.75), alternate=True,
        n_repeats=repeats, random_state=seed,
    )
    print(f"{'blackout':<22}{'dropped':>8}{'repeats':>8}{'accuracy':>20}{'log loss':>20}")
    results = {}
    for mode, fraction, acc, acc_std, loss, loss_std in zip(
        scores["mode"], scores["fraction"], scores["accuracy"], scores["accuracy_std"],
        scores["log_loss"], scores["log_loss_std"],
    ):
        label = "alternate" if mode == "alternate" else f"random {fraction:.0%}"
        if mode == "random" and fraction == 0:
            label = "none"
        n_rep = repeats if mode == "random" and fraction > 0 else 1
        print(f"{label:<22}{fraction:>8.2f}{n_rep:>8}{acc:>12.4f} +- {acc_std:.4f}"
              f"{loss:>12.4f} +- {loss_std:.4f}")
        results[label] = acc
    assert np.isclose(results["none"], clf.score(X_test[test], y_test[test]))
    return {
        "acc": results["none"],
        "acc_alternate": results["alternate"],
        "acc_drop25": results["random 25%"],
        "acc_drop50": results["random 50%"],
        "acc_drop75": results["random 75%"],
        "fit_s": fit_time,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about a minute")
    parser.add_argument("--skip-train", action="store_true", help="speed part only")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: the shared cores are oversubscribed)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), device cpu")
    if args.quick:
        cases = [
            ("BagNet-9 w16 (1,1,1,1)", 9, 16, (1, 1, 1, 1), 16, 32, 8),
            ("BagNet-33 w16 (1,1,1,1)", 33, 16, (1, 1, 1, 1), 1, 224, 8),
        ]
        repeats = 2
    else:
        cases = [
            ("BagNet-9 w16 (1,1,1,1)", 9, 16, (1, 1, 1, 1), 64, 32, 8),
            ("BagNet-9 w16 (1,1,1,1)", 9, 16, (1, 1, 1, 1), 64, 32, 1),
            ("BagNet-9 full (official)", 9, 64, (3, 4, 6, 3), 16, 32, 8),
            ("BagNet-33 w16 (1,1,1,1)", 33, 16, (1, 1, 1, 1), 2, 224, 8),
            ("BagNet-33 w16 (1,1,1,1)", 33, 16, (1, 1, 1, 1), 1, 224, 1),
            ("BagNet-33 full (official)", 33, 64, (3, 4, 6, 3), 1, 224, 8),
        ]
        repeats = 3
    rows = bench_speed(cases, repeats)
    # the figures of the RESULT line: stride-8 grid, the last (largest) model per size
    speedup_32 = [r[7] for r in rows if r[1] == 32 and r[2] == 8][-1]
    speedup_224 = [r[7] for r in rows if r[1] == 224 and r[2] == 8][-1]
    result = {"speedup_224": speedup_224, "speedup_32": speedup_32}
    if not args.skip_train:
        result.update(bench_blackout(args.quick))
    print("RESULT " + " ".join(f"{k}={v:.4g}" for k, v in result.items()))


if __name__ == "__main__":
    main()
