"""`make bench`: the performance figures, measured against their baselines, as one Markdown table.

    python -m tests.bench [--figures 1,2,3,4,5,6,7,8,9,10] [--quick | --full]

Runs the services as `cicatrix serve` runs them (uvicorn, one process each) on PostgreSQL (a schema of
its own in BENCH_DATABASE_URL / TEST_DATABASE_URL, default postgresql+psycopg://postgres@127.0.0.1:5432/test,
dropped afterwards), drives them from a load generator in a separate process (`tests/bench/load.py`),
and writes bench-results/latest.md (and latest.json; latest-full.* with `--full`), which it also prints; on
stderr it says how long each part took, as it goes.
The peer (fhirstarter) is installed into .bench-venv/ with pip on first use; it never enters the project's
environment.
`--quick` shortens every measurement (for trying the harness, not for figures). `--full` uses the issue's
sizes everywhere (2,000 queued plans, 100,000 care-plan requests for memory): about 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict

from tests.bench import stack
from tests.bench.measure import Figure

PEER_REQUIREMENTS = ("fhirstarter==4.2.0", "uvicorn==0.54.0")
BENCH_VENV = stack.ROOT / ".bench-venv"


def machine() -> dict[str, str]:
    model = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=stack.ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "services"], cwd=stack.ROOT,
                           capture_output=True, text=True).stdout.strip()
    import uvicorn
    from sqlalchemy import create_engine, text

    engine = create_engine(stack.postgres_url())
    with engine.connect() as connection:
        postgres = connection.execute(text("SHOW server_version")).scalar_one()
    engine.dispose()
    http = "httptools" if _importable("httptools") else "h11"
    loop = "uvloop" if _importable("uvloop") else "asyncio"
    return {"cores": str(os.cpu_count()), "cpu": model, "python": platform.python_version(),
            "commit": commit + (" (with uncommitted changes in services/)" if dirty else ""),
            "postgres": postgres,
            "server": f"uvicorn {uvicorn.__version__} ({http}, {loop}), one process per service "
                      "(figure 4 also with two worker processes)",
            "load": load_generators(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def load_generators() -> str:
    from tests.bench.measure import wrk
    program, why = wrk()
    if program is None:
        return f"load from the Python generator (tests/bench/load.py; wrk unavailable: {why})"
    return "GET loads from wrk (one thread), the others from the Python generator (tests/bench/load.py)"


def _importable(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def peer_python() -> tuple[str | None, str]:
    """The bench environment's python with fhirstarter, created with pip on first use; (None, why) if impossible."""
    python = BENCH_VENV / "bin" / "python"
    stamp = BENCH_VENV / ".requirements"
    wanted = "\n".join(PEER_REQUIREMENTS)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return str(python), ""
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(BENCH_VENV)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        *PEER_REQUIREMENTS], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        return None, f"pip could not install {' '.join(PEER_REQUIREMENTS)}: {(exc.stderr or '')[-300:]}"
    stamp.write_text(wanted)
    return str(python), ""


def table(figures: list[Figure], info: dict[str, str], notes: list[str], seconds: float) -> str:
    def ratio(figure: Figure) -> str:
        return "" if figure.ratio is None else f"{figure.ratio:.2f}"

    def met(figure: Figure) -> str:
        return {True: "yes", False: "**no**", None: ""}[figure.met]

    lines = ["| # | Figure | Cicatrix | Baseline | Ratio | Target | Met |", "|---|---|---|---|---|---|---|"]
    for f in figures:
        lines.append(f"| {f.number} | {f.name} | {f.cicatrix} | {f.baseline} | {ratio(f)} | {f.target} | {met(f)} |")
    out = ["# Cicatrix benchmark", "",
           f"Machine: {info['cores']} cores, {info['cpu']}; Python {info['python']}; PostgreSQL {info['postgres']}; "
           f"{info['server']}; {info['load']}.",
           f"Commit {info['commit']}, {info['date']}; the whole run took {seconds / 60:.1f} min.",
           "", *lines, ""]
    if notes:
        out += ["Notes:", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--figures", default="1,2,3,4,5,6,7,8,9,10", help="which figures, comma-separated")
    parser.add_argument("--quick", action="store_true", help="short measurements, for trying the harness")
    parser.add_argument("--full", action="store_true", help="the issue's sizes everywhere (about 15 minutes)")
    args = parser.parse_args(argv)
    wanted = set(args.figures.split(","))
    started = time.monotonic()
    stack.RESULTS.mkdir(exist_ok=True)
    info = machine()
    figures: list[Figure] = []
    notes: list[str] = []
    from tests.bench import runs
    runs.run_all(wanted, quick=args.quick, full=args.full, figures=figures, notes=notes, peer=peer_python)
    elapsed = time.monotonic() - started
    report = table(figures, info, notes, elapsed)
    name = "latest-full" if args.full else "latest"  # a full run does not replace the table of `make bench`
    (stack.RESULTS / f"{name}.md").write_text(report)
    (stack.RESULTS / f"{name}.json").write_text(json.dumps(
        {"machine": info, "seconds": elapsed, "figures": [asdict(f) for f in figures], "notes": notes}, indent=1))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
