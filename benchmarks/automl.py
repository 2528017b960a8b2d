"""AutoML: trial throughput and search quality. Prints one JSON document.

1. Throughput, side by side: the same number of trials of a trivial training notebook (about 10 ms
   of work, one parameter, `stratolab.record`) run
   - by ours: an AutoML job (controller, executor with kernels started ahead, one papermill run per
     trial, `--parallel` trials at once), timed from the job's creation to its end;
   - by the baseline a user would write: one process looping `optuna` ask/tell around
     `papermill.execute_notebook` (a fresh kernel per trial).
   Goal: ours >= 3x trials per minute.
2. Search quality: best validation accuracy after `--quality-trials` trials on scikit-learn's digits
   (an MLP's hidden size, L2 penalty and learning rate), TPE versus random search, median over 3
   seeds, both through our AutoML jobs. TPE should not lose.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from jobs_support import in_process_automl, notebook  # noqa: E402

TRIVIAL = notebook(
    "import time, stratolab\nt = time.perf_counter()\nwhile time.perf_counter() - t < 0.01:\n    pass\n"
    "stratolab.record('score', -(x - 0.3) ** 2)",
    parameters="x = 0.5")
DIGITS = notebook(
    "import stratolab, warnings\nwarnings.filterwarnings('ignore')\n"
    "from sklearn.datasets import load_digits\nfrom sklearn.model_selection import train_test_split\n"
    "from sklearn.neural_network import MLPClassifier\nX, y = load_digits(return_X_y=True)\n"
    "Xtr, Xva, ytr, yva = train_test_split(X / 16.0, y, test_size=0.3, random_state=0)\n"
    "clf = MLPClassifier((hidden,), alpha=alpha, learning_rate_init=lr, max_iter=30, random_state=0).fit(Xtr, ytr)\n"
    "stratolab.record('val_accuracy', clf.score(Xva, yva))",
    parameters="hidden = 32\nalpha = 1e-4\nlr = 1e-3")
DIGITS_SPACE = {"hidden": {"type": "int", "low": 4, "high": 128, "log": True},
                "alpha": {"type": "float", "low": 1e-6, "high": 1.0, "log": True},
                "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}}


async def run_job(svc, body, timeout=1800):
    job = await svc.create("bench", body)
    t0 = time.perf_counter()
    await svc.controller.start()
    try:
        while time.perf_counter() - t0 < timeout:
            await asyncio.sleep(0.1)
            view = svc.get("bench", job["id"])
            if view["state"] not in ("queued", "running"):
                return view, time.perf_counter() - t0
        raise RuntimeError("the job did not end")
    finally:
        await svc.controller.close()
        await svc.controller.executor.close()


def ours_throughput(tmp: Path, trials: int, parallel: int) -> dict:
    svc = in_process_automl(f"sqlite:///{tmp / 'ours.sqlite'}", tmp / "jobs")
    view, seconds = asyncio.run(run_job(svc, {
        "notebook": "trivial.ipynb", "content": TRIVIAL, "metric": "score", "trials": trials, "parallel": parallel,
        "seed": 0, "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}}))
    assert view["counts"].get("complete") == trials, view
    return {"seconds": round(seconds, 2), "trials_per_minute": round(trials / seconds * 60, 1)}


def read_score(path: Path) -> float:
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            scrap = out.get("data", {}).get("application/scrapbook.scrap.json+json")
            if scrap and scrap["name"] == "score":
                return scrap["data"]
    raise RuntimeError("no score recorded")


def baseline(tmp: Path, trials: int) -> dict:
    """optuna ask/tell around papermill.execute_notebook, in one process (what a user writes)."""
    import papermill

    (tmp / "trivial.ipynb").write_text(json.dumps(TRIVIAL))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    t0 = time.perf_counter()
    for i in range(trials):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        out = tmp / f"baseline-{i}.ipynb"
        papermill.execute_notebook(str(tmp / "trivial.ipynb"), str(out), parameters={"x": x}, progress_bar=False)
        study.tell(trial, read_score(out))
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 2), "trials_per_minute": round(trials / seconds * 60, 1)}


def quality(tmp: Path, trials: int, parallel: int) -> dict:
    results: dict[str, list[float]] = {"tpe": [], "random": []}
    for seed in (1, 2, 3):
        for algorithm in ("tpe", "random"):
            svc = in_process_automl(f"sqlite:///{tmp / f'q-{algorithm}-{seed}.sqlite'}", tmp / f"jobs-q-{algorithm}-{seed}")
            view, _ = asyncio.run(run_job(svc, {
                "notebook": "digits.ipynb", "content": DIGITS, "metric": "val_accuracy", "trials": trials,
                "parallel": parallel, "algorithm": algorithm, "seed": seed, "space": DIGITS_SPACE}))
            results[algorithm].append(view["best"]["value"])
    tpe, rnd = statistics.median(results["tpe"]), statistics.median(results["random"])
    return {"trials": trials, "tpe_best_median": round(tpe, 4), "random_best_median": round(rnd, 4),
            "tpe_runs": results["tpe"], "random_runs": results["random"], "tpe_not_worse": tpe >= rnd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--quality-trials", type=int, default=20)
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stratolab-bench-automl-") as tmp:
        tmp = Path(tmp)
        ours = ours_throughput(tmp, args.trials, args.parallel)
        base = baseline(tmp, args.trials)
        out = {
            "benchmark": "automl",
            "throughput": {"trials": args.trials, "parallel": args.parallel, "ours": ours, "papermill_optuna_loop": base,
                           "ratio": round(ours["trials_per_minute"] / base["trials_per_minute"], 2), "goal": ">= 3x"},
        }
        if not args.skip_quality:
            out["search_quality"] = quality(tmp, args.quality_trials, args.parallel)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
