"""What each madrec stage costs as the catalogue grows (issue #33): one synthetic catalogue
(make_catalogue.py), then per shipped experiment prepare-data, ingest-sids, train and evaluate,
each a child process whose wall time and peak RSS are measured.

    OMP_NUM_THREADS=1 nice -n 10 python bench/scale/bench_scale.py --items 100000 \
        [--experiments tiny,small,tiger_cpu,sasrec_cpu] [--steps 40] [--out bench/scale]

Per stage: wall seconds and peak RSS (os.wait4's rusage of that one child), or why it stopped
(exit code and the last error line, --timeout, --max-rss-gb). prepare-data and ingest-sids do not
depend on the experiment: they run once per catalogue and every row repeats them. Training runs
--warmup + --steps optimiser steps with one thread and no time budget; RUN/metrics.csv, which
`madrec train` rewrites after every logged step (trainer.log_every_n_steps=1), is polled, so
"first step s" is spawn -> the first step's row and "s/step" is the time between the rows of step
--warmup and the last step. evaluate decodes the first --eval-users test users (a copy of the
prepared folder holding only them: `madrec evaluate` has no user limit), without the sweep and
the unconstrained comparison; "users/s" is its metrics.json test/users_per_s. Rows are appended
to OUT/results.jsonl (everything) and OUT/results.md (a table, with commit, machine and load).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))
CPU_EXPERIMENTS = ("tiny", "small", "tiger_cpu", "sasrec_cpu")
POLL_S = 0.02


# --- one child process, measured --------------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    """Current resident set of a process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _last_error(log: Path) -> str:
    """The last non-empty line of a child's log that looks like the reason it failed."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line or "Killed" in line:
            return line[-300:]
    return lines[-1][-300:] if lines else "no output"


def run_stage(argv: list[str], log: Path, timeout_s: float, max_rss: int, watch=None) -> dict:
    """Run argv as a child in its own session; its wall time, peak RSS and status.

    `watch(elapsed_s)` is called at every poll (training's step clock). A child over `timeout_s`
    or `max_rss` bytes is killed with its process group and recorded as stopped, with the reason.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO / "src"))}
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        stopped, peak_seen = None, 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            elapsed = time.perf_counter() - start
            if pid:
                break
            peak_seen = max(peak_seen, _rss_bytes(proc.pid))
            if watch is not None:
                watch(elapsed)
            if stopped is None and elapsed > timeout_s:
                stopped = f"stopped: over the {timeout_s:g} s timeout"
            elif stopped is None and peak_seen > max_rss:
                stopped = f"stopped: RSS {peak_seen / 2**30:.1f} GiB over the {max_rss / 2**30:g} GiB limit"
            if stopped:
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(POLL_S)
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {
        "status": "ok" if proc.returncode == 0 and not stopped else "stopped" if stopped else "failed",
        "wall_s": round(elapsed, 3),
        "peak_rss_mib": round(max(usage.ru_maxrss * 1024, peak_seen) / 2**20, 1),
        "rc": proc.returncode,
        "log": str(log),
    }
    if result["status"] != "ok":
        result["reason"] = stopped or f"exit code {proc.returncode}: {_last_error(log)}"
    return result


def madrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "madrec.cli", *args]


# --- training's step clock ----------------------------------------------------------------------


class StepClock:
    """Watches RUN/metrics.csv: (seconds since spawn, training steps logged) whenever it changes."""

    def __init__(self, path: Path):
        self.path, self.mtime, self.seen = path, None, []

    def __call__(self, elapsed: float) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self.mtime:
            return
        self.mtime = mtime
        try:
            with self.path.open(newline="") as fh:
                steps = sum(1 for row in csv.DictReader(fh) if row.get("train/loss"))
        except OSError:
            return
        if steps and (not self.seen or steps > self.seen[-1][1]):
            self.seen.append((round(elapsed, 3), steps))

    def timings(self, warmup: int) -> dict:
        """First step seconds (from spawn) and seconds per step after `warmup` steps."""
        if not self.seen:
            return {}
        out = {"first_step_s": self.seen[0][0], "steps_observed": self.seen[-1][1]}
        after = [(t, s) for t, s in self.seen if s >= max(warmup, 1)]
        if len(after) >= 2 and after[-1][1] > after[0][1]:
            (t0, s0), (t1, s1) = after[0], after[-1]
            out.update(s_per_step=round((t1 - t0) / (s1 - s0), 4), timed_steps=s1 - s0)
        return out


# --- the stages --------------------------------------------------------------------------------


def train_argv(args, experiment: str, data: Path, sids: Path, run_dir: Path) -> list[str]:
    steps = args.warmup + args.steps
    return madrec(
        "train",
        f"experiment={experiment}",
        f"data_dir={data}",
        f"sid_data_path={sids}",
        f"output_dir={run_dir}",
        f"trainer.max_steps={steps}",
        "trainer.max_minutes=0",
        f"trainer.val_every_n_steps={steps}",
        f"trainer.checkpoint_every_n_steps={steps}",
        "trainer.early_stopping_patience=0",
        "trainer.log_every_n_steps=1",
        "trainer.progress_bar=false",
        "trainer.num_threads=1",
        f"eval.val_max_users={args.val_users}",
        "test=false",
    )


def train_stage(args, experiment: str, data: Path, sids: Path, work: Path) -> dict:
    """madrec train for warmup + steps steps: the stage, the step clock and summary.json facts."""
    run_dir = work / "runs" / experiment
    shutil.rmtree(run_dir, ignore_errors=True)
    clock = StepClock(run_dir / "metrics.csv")
    result = run_stage(
        train_argv(args, experiment, data, sids, run_dir), work / f"train_{experiment}.log", *_limits(args), clock
    )
    clock(result["wall_s"])  # the last rewrite, should it have come after the last poll
    result.update(clock.timings(args.warmup))
    summary = run_dir / "summary.json"
    if summary.is_file():
        facts = json.loads(summary.read_text())
        keys = ("global_step", "num_parameters", "train_rows", "max_len", "train_seconds", "val/recall@10")
        result.update({k: facts[k] for k in keys if k in facts})
        if facts.get("global_step"):
            result["madrec_s_per_step"] = round(facts["train_seconds"] / facts["global_step"], 4)
    if result["status"] == "ok" and "s_per_step" not in result:
        result.update(status="failed", reason="no step timings: metrics.csv never showed two timed steps")
    return result


def eval_subset(data: Path, out: Path, users: int) -> Path:
    """A copy of the prepared folder whose testing split holds only its first `users` users."""
    from madrec.data.tfrecord import read_records, write_records

    shutil.rmtree(out, ignore_errors=True)
    (out / "testing").mkdir(parents=True)
    shutil.copy(data / "dataset.json", out / "dataset.json")
    (out / "items").symlink_to((data / "items").resolve(), target_is_directory=True)
    records = []
    for shard in sorted((data / "testing").glob("*.tfrecord.gz")):
        records += list(read_records(shard))[: users - len(records)]
        if len(records) >= users:
            break
    write_records(out / "testing" / "part-00000-of-00001.tfrecord.gz", records)
    return out


def evaluate_stage(args, experiment: str, eval_data: Path, work: Path) -> dict:
    """madrec evaluate of the run's last checkpoint on the small test split."""
    run_dir = work / "runs" / experiment
    config = (run_dir / "config.yaml").read_text()
    beam = next((ln.split(":")[1].strip() for ln in config.splitlines() if ln.strip().startswith("beam_size:")), "10")
    argv = madrec(
        "evaluate",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"data_dir={eval_data}",
        "split=test",
        f"output_dir={run_dir / 'eval'}",
        f"beam_size={beam}",
        "sweep=false",
        "compare_unconstrained=false",
        "device=cpu",
    )
    result = run_stage(argv, work / f"evaluate_{experiment}.log", *_limits(args))
    metrics = run_dir / "eval" / "metrics.json"
    if result["status"] == "ok" and metrics.is_file():
        m = json.loads(metrics.read_text())
        result.update(
            users=int(m["test/num_users"]),
            users_per_s=round(m["test/users_per_s"], 2),
            beam_size=int(beam),
            recall_at_10=m.get("test/recall@10"),
            most_popular_recall_at_10=m.get("test/most_popular/recall@10"),
        )
    return result


def _limits(args) -> tuple[float, int]:
    return args.timeout, int(args.max_rss_gb * 2**30)


def _skipped(why: str) -> dict:
    return {"status": "skipped", "reason": why}


def shared_stages(args, work: Path) -> tuple[dict, dict]:
    """generate (or reuse) the catalogue, prepare-data, ingest-sids: (stages, paths)."""
    cat = Path(args.catalogue) if args.catalogue else work / "catalogue"
    stages = {}
    if args.catalogue:
        stages["generate"] = {"status": "reused", "path": str(cat)}
    else:
        gen = [sys.executable, str(HERE / "make_catalogue.py"), "--items", str(args.items), "--out", str(cat)]
        gen += ["--seed", str(args.seed)] + (["--users", str(args.users)] if args.users else [])
        stages["generate"] = run_stage(gen, work / "generate.log", *_limits(args))
    paths = {"catalogue": cat, "data": work / "data", "sids": work / "sids"}
    if stages["generate"]["status"] not in ("ok", "reused"):
        return {**stages, "prepare": _skipped("no catalogue"), "ingest": _skipped("no catalogue")}, paths
    prepare = madrec("prepare-data", "--dataset", "sequences", "--source", str(cat / "sequences.txt"))
    prepare += ["--items", str(cat / "items.jsonl"), "--min-item-count", "1", "--out", str(paths["data"])]
    stages["prepare"] = run_stage(prepare, work / "prepare.log", *_limits(args))
    if stages["prepare"]["status"] != "ok":
        return {**stages, "ingest": _skipped("prepare-data did not finish")}, paths
    ingest = madrec("ingest-sids", "--source", str(cat / "sids.pt"), "--data", str(paths["data"]))
    stages["ingest"] = run_stage(ingest + ["--out", str(paths["sids"])], work / "ingest.log", *_limits(args))
    return stages, paths


def experiment_stages(args, experiment: str, paths: dict, shared: dict, work: Path) -> dict:
    """train then evaluate one experiment (skipped when an earlier stage did not finish)."""
    if shared["ingest"].get("status") != "ok":
        why = "prepare-data / ingest-sids did not finish"
        return {"train": _skipped(why), "evaluate": _skipped(why)}
    train = train_stage(args, experiment, paths["data"], paths["sids"] / "sids.pt", work)
    if not (work / "runs" / experiment / "checkpoints" / "last.ckpt").is_file():
        return {"train": train, "evaluate": _skipped("training wrote no checkpoint")}
    return {"train": train, "evaluate": evaluate_stage(args, experiment, paths["eval"], work)}


# --- the record: machine, commit, table -----------------------------------------------------------


def machine() -> dict:
    """CPU model, cores and RAM of this machine."""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        "unknown",
    )
    mem_kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in ln)
    cores = len(os.sched_getaffinity(0))
    return {"cpu": model, "cores": cores, "ram_gib": round(mem_kb / 2**20, 1), "python": sys.version.split()[0]}


def git_commit() -> str:
    """HEAD's short hash, '+dirty' when tracked files outside bench/scale's results differ."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    status = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    )
    dirty = [ln for ln in status.stdout.splitlines() if not ln.endswith(("results.md", "results.jsonl"))]
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _num(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "–"


def _cell(stage: dict, key: str, fmt: str) -> str:
    return _num(stage.get(key), fmt) if stage.get("status") == "ok" else "–"


def table_row(row: dict) -> str:
    """One markdown row: the numbers of each stage, then what did not finish and why."""
    s = row["stages"]
    prep, ing, tr, ev = s["prepare"], s["ingest"], s["train"], s["evaluate"]
    cells = [
        f"{row['items']:,}",
        row["experiment"],
        _cell(prep, "wall_s", ".1f"),
        _cell(prep, "peak_rss_mib", ".0f"),
        _cell(ing, "wall_s", ".1f"),
        _cell(ing, "peak_rss_mib", ".0f"),
        _num(tr.get("first_step_s"), ".1f"),
        _num(tr.get("s_per_step"), ".3f"),
        _num(tr.get("peak_rss_mib"), ".0f") if "wall_s" in tr else "–",
        _cell(ev, "users_per_s", ".1f"),
        _cell(ev, "wall_s", ".1f"),
        _cell(ev, "peak_rss_mib", ".0f"),
    ]
    problems = [f"{name}: {st['reason']}" for name, st in s.items() if st.get("status") not in ("ok", "reused")]
    return "| " + " | ".join(cells + ["; ".join(problems) or "ok"]) + " |"


HEADER = (
    "| items | experiment | prepare s | prepare MiB | ingest s | ingest MiB | first step s | s/step | train MiB "
    "| decode users/s | evaluate s | evaluate MiB | status |\n" + "|---" * 13 + "|"
)

INTRO = """# Scale benchmark: every madrec stage against catalogue size

Written by `bench/scale/bench_scale.py` (how it measures: its docstring); catalogues from
`bench/scale/make_catalogue.py`. One section per run of the script, one row per experiment;
raw rows in `results.jsonl`. "–": the stage did not finish (status says why). prepare-data and
ingest-sids run once per catalogue: every row of a section repeats them.
"""


def write_results(out: Path, rows: list[dict], meta: dict) -> None:
    """Append the rows to OUT/results.jsonl and a section with their table to OUT/results.md."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.jsonl").open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
    md = out / "results.md"
    m, cat = meta["machine"], meta["catalogue"]
    lines = [
        "" if md.is_file() else INTRO,
        f"## {meta['items']:,} items — {meta['date']} — commit {meta['commit']}",
        "",
        f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Python {m['python']}; "
        f"load average (1 min) before {meta['load_before']:.2f}, after {meta['load_after']:.2f}",
        f"catalogue: {_num(cat.get('num_items'), ',')} items, {_num(cat.get('num_users'), ',')} users, "
        f"{_num(cat.get('num_interactions'), ',')} interactions, seed {meta['seed']}; "
        f"training: {meta['warmup']} + {meta['steps']} steps, validation on {meta['val_users']} users; "
        f"evaluate on {meta['eval_users']} test users",
        "",
        HEADER,
        *[table_row(r) for r in rows],
        "",
    ]
    with md.open("a") as fh:
        fh.write("\n".join(lines))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, required=True, help="catalogue size N")
    p.add_argument("--users", type=int, default=None, help="default: N (make_catalogue.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--experiments", default=",".join(CPU_EXPERIMENTS), help=f"comma list of {', '.join(EXPERIMENTS)}")
    p.add_argument("--steps", type=int, default=40, help="timed training steps")
    p.add_argument("--warmup", type=int, default=5, help="training steps before the timed ones")
    p.add_argument("--val-users", type=int, default=100, help="eval.val_max_users of the training runs")
    p.add_argument("--eval-users", type=int, default=600, help="test users madrec evaluate decodes")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per stage before it is stopped")
    p.add_argument("--max-rss-gb", type=float, default=12.0, help="a stage over this RSS is stopped")
    p.add_argument("--catalogue", default=None, help="reuse a make_catalogue.py folder instead of generating")
    p.add_argument("--work", default=None, help="folder for catalogue, data and runs (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    p.add_argument("--out", type=Path, default=HERE, help="where results.md and results.jsonl are appended")
    args = p.parse_args(argv)
    unknown = sorted(set(args.experiments.split(",")) - set(EXPERIMENTS))
    if unknown:
        p.error(f"unknown experiment(s) {unknown}; shipped: {', '.join(EXPERIMENTS)}")
    return args


def bench(args: argparse.Namespace, work: Path) -> tuple[list[dict], dict]:
    """All stages for every experiment: (rows, section facts)."""
    meta = {"items": args.items, "commit": git_commit(), "machine": machine(), "load_before": os.getloadavg()[0]}
    meta["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta.update({k: getattr(args, k) for k in ("seed", "steps", "warmup", "val_users", "eval_users")})
    shared, paths = shared_stages(args, work)
    info = paths["catalogue"] / "catalogue.json"
    meta["catalogue"] = json.loads(info.read_text()) if info.is_file() else {}
    if shared["ingest"].get("status") == "ok":
        paths["eval"] = eval_subset(paths["data"], work / "eval_data", args.eval_users)
    rows = []
    for experiment in args.experiments.split(","):
        load = os.getloadavg()[0]
        stages = {**shared, **experiment_stages(args, experiment, paths, shared, work)}
        rows.append(
            {**{k: v for k, v in meta.items() if k != "load_before"}, "experiment": experiment, "stages": stages}
        )
        rows[-1].update(load_before=load, load_after=os.getloadavg()[0])
        print(table_row(rows[-1]), flush=True)
    meta["load_after"] = os.getloadavg()[0]
    return rows, meta


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix=f"madrec_scale_{args.items}_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {work}; results into {args.out}", flush=True)
    try:
        rows, meta = bench(args, work)
        write_results(args.out, rows, meta)
    finally:
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
