#!/usr/bin/env python3
"""Run the whole benchmark suite and write OUT/results.md plus PNG charts.

Runs, each as a subprocess:

* ``tests/bench/bench_mount.py`` — local disk vs nexusfs vs JuiceFS through
  real mounts (sequential write/read, create/stat/unlink, tar -xf);
* ``tests/bench/bench_workloads.py`` — real workloads on nexusfs / JuiceFS / local disk
  (append+fsync, SQLite, git, ``ls -l``, small files, fio), bytes stored after each
  (``--workloads-quick`` for a smoke run, ``--skip-workloads`` to leave it out);
* ``tests/bench/bench_api.py`` — the engine's Python API, if that script exists;
* ``tests/bench/bench_search.py`` — grep, semantic search and glob on copies of CPython's
  ``Lib/`` beside rg and grep: ``--search-copies`` copies (default 5, ~9.5k files, with the
  unique-content variant), or ``--full`` for the 100k-file run of FACTS.md (53 copies, ~1 h).

Then writes to ``--out`` (default ``bench-results/`` at the repo root):

* ``results.md`` — machine info, markdown tables with units, nexusfs vs JuiceFS
  ratios against the goals, the API benchmark's output, notes;
* ``throughput.png`` (MiB/s), ``metadata.png`` (operations/s, log scale) and
  ``extract.png`` (tar -xf files/s): grouped bars per target, whiskers = min–max;
* ``mount.json`` / ``mount.txt``, ``workloads/workloads.json`` / ``.md`` and the raw
  output of every script.

``./run.sh bench`` calls this script. Options other than those below are passed
to bench_mount.py unchanged (e.g. ``--profile DIR``, ``--tmp DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import bench_mount as bm  # noqa: E402

COLORS = {"local": "#9e9e9e", "nexusfs": "#1f77b4", "juicefs": "#ff7f0e"}
#: nexusfs must reach this multiple of JuiceFS
# no goal for "stat right after create": the kernel's attribute cache answers it on every mount
GOALS = {"write_mibs": 1.0, "fio_write_mibs": 1.0, "read_mibs": 1.0, "fio_read_mibs": 1.0, "create_ops": 2.0, "stat_cold_ops": 2.0, "unlink_ops": 2.0}
SHORT = {"write_mibs": "write", "fio_write_mibs": "write\n(fio)", "read_mibs": "read\n(cold cache)",
         "fio_read_mibs": "read, cold\n(fio)", "create_ops": "create",
         "stat_ops": "stat\n(after create)", "stat_cold_ops": "stat\n(cold dcache)", "unlink_ops": "unlink",
         "tar_files_s": "tar -xf\nstdlib sources"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_script(cmd: list[str], out_path: str) -> tuple[int, str, float]:
    """Run ``cmd``, echo its output live, keep stdout in ``out_path``; (status, stdout, seconds)."""
    log("$ " + " ".join(cmd))
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line)
    rc = proc.wait()
    text = "".join(lines)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(text)
    return rc, text, time.monotonic() - t0


def script_options(script: str) -> str:
    """The script's --help text (to pass only options it understands)."""
    try:
        return subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                              timeout=60, cwd=REPO).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def shared_options(passthrough: list[str], help_text: str) -> list[str]:
    """The sizing options given for bench_mount.py that the other script also understands."""
    out: list[str] = []
    for opt in ("--size-mib", "--files", "--tmp"):
        if opt not in help_text:
            continue
        for i, arg in enumerate(passthrough):
            if arg == opt and i + 1 < len(passthrough):
                out += [opt, passthrough[i + 1]]
            elif arg.startswith(opt + "="):
                out.append(arg)
    return out


def bench_cmd(script: str, options: list[str], repeat: int | None, passthrough: list[str]) -> list[str]:
    """The command running ``script`` with ``options``, --repeat if given and the --tmp passed through."""
    cmd = [sys.executable, script, *options]
    if repeat:
        cmd += ["--repeat", str(repeat)]
    return cmd + shared_options(passthrough, "--tmp")


# --------------------------------------------------------------------- charts
def _stats(data: dict, target: str, key: str) -> tuple[float, float, float] | None:
    samples = data["results"].get(target, {}).get(key)
    return bm.summarise(samples) if samples else None


def grouped_bars(data: dict, keys: list[str], title: str, ylabel: str, path: str, *, log_scale: bool = False,
                 goals: bool = True) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(_stats(data, t, k) for t in data["targets"])]
    targets = [t for t in data["targets"] if any(_stats(data, t, k) for k in keys)]
    if not keys or not targets:
        return False
    width = 0.8 / len(targets)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(keys) + 2), 4.8), dpi=120)
    for i, t in enumerate(targets):
        xs, meds, lo, hi, tops = [], [], [], [], []
        for j, k in enumerate(keys):
            s = _stats(data, t, k)
            if not s:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            meds.append(s[0])
            lo.append(s[0] - s[1])
            hi.append(s[2] - s[0])
            tops.append(s[2])
        bars = ax.bar(xs, meds, width * 0.92, yerr=[lo, hi], capsize=3, color=COLORS.get(t),
                      label=data["labels"].get(t, t), error_kw={"elinewidth": 1, "ecolor": "#333333"})
        for b, m, top in zip(bars, meds, tops, strict=True):
            # the median's value, written above the whisker
            ax.annotate(bm.fmt_num(m), (b.get_x() + b.get_width() / 2, top), xytext=(0, 3),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7.5, rotation=0)
    if goals and "juicefs" in targets and "nexusfs" in targets:
        labelled = False
        ni = targets.index("nexusfs")
        for j, k in enumerate(keys):
            s = _stats(data, "juicefs", k)
            if s and k in GOALS:
                g = GOALS[k] * s[0]
                x = j - 0.4 + width * (ni + 0.5)
                ax.hlines(g, x - width * 0.6, x + width * 0.6, colors="#d62728", linestyles="dashed",
                          linewidth=1.5, label=None if labelled else "nexusfs goal (1× / 2× JuiceFS)")
                labelled = True
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([SHORT.get(k, k) for k in keys])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log_scale:
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(1.0, ax.get_ylim()[0]))
        top = ax.get_ylim()[1]
        ax.set_ylim(top=top * 3)
    else:
        ax.set_ylim(top=ax.get_ylim()[1] * 1.12)
    ax.grid(axis="y", alpha=0.3, which="major")
    ax.set_axisbelow(True)
    # below the plot, so it never hides a bar or a label
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=4, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def make_charts(data: dict, out: str) -> list[tuple[str, str]]:
    p = data["params"]
    made = []
    sub = f"\nmedian of {p['repeat']} runs, whiskers min–max"
    if grouped_bars(data, list(bm.THROUGHPUT), f"Sequential I/O, {p['size_mib']} MiB in 1 MiB blocks{sub}",
                    "MiB/s", os.path.join(out, "throughput.png")):
        made.append(("throughput.png", "Sequential throughput (MiB/s)"))
    if grouped_bars(data, list(bm.METADATA), f"Metadata, {p['files']} empty files in one directory{sub}",
                    "operations/s (log scale)", os.path.join(out, "metadata.png"), log_scale=True):
        made.append(("metadata.png", "Metadata operations per second"))
    if grouped_bars(data, ["tar_files_s"], f"tar -xf of {p['tar_files']} files{sub}", "files/s (log scale)",
                    os.path.join(out, "extract.png"), log_scale=True, goals=False):
        made.append(("extract.png", "tar -xf files per second"))
    return made


# --------------------------------------------------------------------- report
def machine_table(machine: dict[str, str]) -> str:
    rows = ["| | |", "|---|---|"]
    rows += [f"| {k} | {v} |" for k, v in machine.items()]
    return "\n".join(rows)


def facts_table() -> str:
    return "\n".join([
        "| | JuiceFS (FACTS.md) | nexusfs goal |",
        "|---|---:|---:|",
        "| sequential write | 410–614 MiB/s | ≥ JuiceFS |",
        "| sequential read (cold) | 420–501 MiB/s | ≥ JuiceFS |",
        "| create / stat / unlink | ~850 / ~4k / ~750 per s | ≥ 2× JuiceFS |",
    ])


def embed_output(text: str) -> str:
    """Script output as markdown: tables stay tables, everything else goes in a code block."""
    if any(line.lstrip().startswith("|") for line in text.splitlines()):
        return text.strip()
    return "```\n" + text.strip() + "\n```"


def write_report(out: str, data: dict | None, mount_rc: int, mount_secs: float, api: tuple[int, str, float] | None,
                 charts: list[tuple[str, str]], extra_versions: dict[str, str],
                 search: tuple[int, str, float] | None = None,
                 workloads: tuple[int, str, float] | None = None) -> str:
    lines = ["# nexusfs benchmark results", ""]
    machine = dict(data["machine"]) if data else {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cores": str(os.cpu_count()),
        "kernel": platform.release(), "python": platform.python_version()}
    machine.update(extra_versions)
    lines += ["## Machine", "", machine_table(machine), ""]
    if data:
        if mount_rc != 0:
            lines += [f"**bench_mount.py exited with status {mount_rc}: the figures below may be partial "
                      "(see mount-output.txt).**", ""]
        p = data["params"]
        targets = data["targets"]
        res = data["results"]
        lines += [
            "## Mounted filesystems: local disk vs nexusfs vs JuiceFS",
            "",
            f"`tests/bench/bench_mount.py`{f', {mount_secs:.1f} s' if mount_secs else ''}. Every cell is the median of {p['repeat']} runs "
            "with the min–max in parentheses. Each target runs each workload in its own turn, alone (no other "
            "benchmark mount is up, so no other store's indexing or deletion runs beside it) on a fresh store; "
            "each repeat starts with the next target, and every timed phase starts after `sync`, 2 s, and a "
            "wait for an idle CPU (the idle seen is in the notes). The fio rows run fio in the same turn on "
            "the same mount. nexusfs runs with "
            "default settings; JuiceFS uses sqlite3 metadata and a local `file` bucket with `--cache-dir` "
            "on the same disk.",
            "",
        ]
        if p.get("profiled"):
            lines += ["**These figures come from a profiled run (py-spy attached to the nexusfs mount): "
                      "do not quote them.**", ""]
        if bm.has_any(data, bm.THROUGHPUT):
            lines += [
                f"### Sequential I/O ({p['size_mib']} MiB file, 1 MiB blocks)",
                "",
                "Write: from a buffer in memory, incompressible, unique blocks, fsync and close included. "
                "Read: FUSE targets unmounted and mounted again after the write, then `sync; echo 3 > "
                "/proc/sys/vm/drop_caches`.",
                "",
                bm.table(res, targets, bm.THROUGHPUT),
                "",
            ]
        if bm.has_any(data, bm.METADATA):
            lines += [
                f"### Metadata ({p['files']} empty files in one directory)",
                "",
                "Each phase timed on its own: create (open O_CREAT|O_EXCL + close), stat right after the "
                "creates, stat again after dropping the kernel's dentry/inode caches (every stat reaches the "
                "filesystem), unlink.",
                "",
                bm.table(res, targets, bm.METADATA),
                "",
            ]
        if bm.has_any(data, bm.TAR):
            lines += [
                f"### Extract (`tar -xf`, {p['tar_files']} files, {p['tar_mib']:.1f} MiB: CPython "
                f"{p['python']} `Lib/`)",
                "",
                bm.table(res, targets, bm.TAR),
                "",
            ]
        ratios = bm.ratio_table(res, targets)
        if ratios:
            lines += ["### nexusfs relative to JuiceFS (medians of this run)", "", ratios, "",
                      "Reference figures measured earlier on this kind of machine:", "", facts_table(), ""]
        if data.get("notes"):
            lines += ["Notes:", ""] + [f"- {n}" for n in data["notes"]] + [""]
        for fname, caption in charts:
            lines += [f"![{caption}]({fname})", ""]
    elif mount_rc == 0:
        lines += ["## Mounted filesystems", "", "Not run this time.", ""]
    else:
        lines += ["## Mounted filesystems", "", f"bench_mount.py failed (exit status {mount_rc}); "
                  "see mount-output.txt.", ""]
    lines += workloads_section(out, workloads)
    lines += ["## Engine API (`tests/bench/bench_api.py`)", ""]
    if api is None:
        present = os.path.exists(os.path.join(HERE, "bench_api.py"))
        lines += ["Not run this time." if present else "bench_api.py is not present: skipped.", ""]
    else:
        rc, text, secs = api
        status = "" if rc == 0 else f" — **exit status {rc}**"
        if secs:
            lines += [f"Ran in {secs:.0f} s{status}.", ""]
        elif status:
            lines += [status.strip(" —") + ".", ""]
        api_dir = os.path.join(out, "api")
        api_md = os.path.join(api_dir, "bench_api.md")
        if rc == 0 and os.path.exists(api_md):
            with open(api_md, encoding="utf-8") as f:
                # its own headings go one level down, under this section
                text = "\n".join("#" + ln if ln.startswith("#") else ln for ln in f.read().splitlines())
        lines += [embed_output(text) if text.strip() else "(no output)", ""]
        if os.path.isdir(api_dir):
            for fname in sorted(os.listdir(api_dir)):
                if fname == "bench_api.md":
                    continue
                rel = f"api/{fname}"
                if fname.endswith(".png"):
                    lines += [f"![{fname}]({rel})", ""]
                else:
                    lines += [f"- [{rel}]({rel})"]
            lines.append("")
    lines += search_section(out, search)
    report = "\n".join(lines)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(report)
    return report


def workloads_section(out: str, workloads: tuple[int, str, float] | None) -> list[str]:
    """The real-workload table (bench_workloads.py), or why it is missing."""
    lines = ["## Real workloads (`tests/bench/bench_workloads.py`)", ""]
    if workloads is None:
        present = os.path.exists(os.path.join(HERE, "bench_workloads.py"))
        return lines + ["Not run this time." if present else "bench_workloads.py is not present: skipped.", ""]
    rc, text, secs = workloads
    md = os.path.join(out, "workloads", "workloads.md")
    body = text
    if os.path.exists(md):
        with open(md, encoding="utf-8") as f:
            body = f.read()
    if secs or rc:
        lines += [(f"Ran in {secs / 60:.1f} min" if secs else "Exit status") +
                  ("." if rc == 0 else f" — **exit status {rc}** (some turns failed: see the notes)."), ""]
    lines += [embed_output(body) if body.strip() else "(no output)", "",
              "- [workloads/workloads.json](workloads/workloads.json) (every sample, the CPU idle before "
              "each timed phase); [workloads-output.txt](workloads-output.txt)", ""]
    return lines


def search_section(out: str, search: tuple[int, str, float] | None) -> list[str]:
    """The search benchmark's tables (its own ``## Search`` heading included), or why they are missing."""
    if search is None:
        present = os.path.exists(os.path.join(HERE, "bench_search.py"))
        return ["## Search (`tests/bench/bench_search.py`)", "",
                "Not run this time." if present else "bench_search.py is not present: skipped.", ""]
    rc, text, secs = search
    md = os.path.join(out, "search", "bench_search.md")
    body = text
    if rc == 0 and os.path.exists(md):
        with open(md, encoding="utf-8") as f:
            body = f.read()
    head, _, rest = body.strip().partition("\n")
    if not head.startswith("## "):
        head, rest = "## Search (`tests/bench/bench_search.py`)", body
    lines = [head, ""]
    if secs:
        lines += [f"Ran in {secs / 60:.1f} min" + ("." if rc == 0 else f" — **exit status {rc}**."), ""]
    elif rc != 0:
        lines += [f"Exit status {rc}.", ""]
    lines += [embed_output(rest) if rest.strip() else "(no output)", "",
              "- [search/bench_search.json](search/bench_search.json) (every sample); "
              "[search-output.txt](search-output.txt)", ""]
    return lines


def _versions() -> dict[str, str]:
    v = {"matplotlib": bm._module_version("matplotlib")}
    try:
        import apsw

        v["SQLite (apsw)"] = apsw.sqlite_lib_version()
    except ImportError:
        pass
    return v


# --------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the nexusfs benchmark suite.", allow_abbrev=False,
                                 epilog="Unknown options are passed to bench_mount.py.")
    ap.add_argument("--out", default=os.path.join(REPO, "bench-results"),
                    help="output directory (default: bench-results/ at the repo root)")
    ap.add_argument("--repeat", type=int, default=None, help="runs of each measurement (default: each script's)")
    ap.add_argument("--skip-mount", action="store_true", help="do not run bench_mount.py")
    ap.add_argument("--skip-api", action="store_true", help="do not run bench_api.py")
    ap.add_argument("--skip-workloads", action="store_true", help="do not run bench_workloads.py")
    ap.add_argument("--workloads-quick", action="store_true",
                    help="bench_workloads.py --quick: small sizes, one repeat (a smoke run)")
    ap.add_argument("--skip-search", action="store_true", help="do not run bench_search.py")
    ap.add_argument("--search-copies", type=int, default=5,
                    help="copies of CPython's Lib/ in the search corpus (default 5: ~9.5k files)")
    ap.add_argument("--full", action="store_true",
                    help="search benchmark at full size: 53 copies (~100k files, ~1 h, several GB of scratch)")
    ap.add_argument("--charts-only", action="store_true",
                    help="rebuild results.md and the charts from OUT/mount.json without running anything")
    args, passthrough = ap.parse_known_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    mount_rc, mount_secs, data = 0, 0.0, None
    json_path = os.path.join(out, "mount.json")
    if not args.skip_mount and not args.charts_only:
        if os.path.exists(json_path):
            os.unlink(json_path)
        cmd = [sys.executable, os.path.join(HERE, "bench_mount.py"), "--out", out, *passthrough]
        if args.repeat:
            cmd += ["--repeat", str(args.repeat)]
        mount_rc, _, mount_secs = run_script(cmd, os.path.join(out, "mount-output.txt"))
    if os.path.exists(json_path) and not args.skip_mount:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)

    workloads = None
    wl_script = os.path.join(HERE, "bench_workloads.py")
    wl_dir = os.path.join(out, "workloads")
    if os.path.exists(wl_script) and not args.skip_workloads and not args.charts_only:
        cmd = bench_cmd(wl_script, ["--out", wl_dir] + (["--quick"] if args.workloads_quick else []),
                        args.repeat, passthrough)
        workloads = run_script(cmd, os.path.join(out, "workloads-output.txt"))
    elif args.charts_only and os.path.exists(os.path.join(wl_dir, "workloads.md")):
        workloads = (0, "", 0.0)

    api = None
    api_script = os.path.join(HERE, "bench_api.py")
    if os.path.exists(api_script) and not args.skip_api and not args.charts_only:
        help_text = script_options(api_script)
        cmd = [sys.executable, api_script]
        if "--out" in help_text:
            cmd += ["--out", os.path.join(out, "api")]
        if args.repeat and "--repeat" in help_text:
            cmd += ["--repeat", str(args.repeat)]
        cmd += shared_options(passthrough, help_text)
        api = run_script(cmd, os.path.join(out, "api-output.txt"))
    elif args.charts_only and os.path.exists(os.path.join(out, "api-output.txt")):
        with open(os.path.join(out, "api-output.txt"), encoding="utf-8") as f:
            api = (0, f.read(), 0.0)

    search = None
    search_script = os.path.join(HERE, "bench_search.py")
    search_dir = os.path.join(out, "search")
    if os.path.exists(search_script) and not args.skip_search and not args.charts_only:
        sizing = ["--copies", "53"] if args.full else ["--copies", str(args.search_copies),
                                                        "--unique-semantic-copies", "1"]
        cmd = bench_cmd(search_script, ["--out", search_dir, "--unique", *sizing], args.repeat, passthrough)
        search = run_script(cmd, os.path.join(out, "search-output.txt"))
    elif args.charts_only and os.path.exists(os.path.join(search_dir, "bench_search.md")):
        search = (0, "", 0.0)

    charts: list[tuple[str, str]] = []
    if data:
        try:
            charts = make_charts(data, out)
        except ImportError:
            log("matplotlib is not installed (pip install matplotlib): no charts")
    write_report(out, data, mount_rc, mount_secs, api, charts, _versions(), search, workloads)
    log(f"\nwrote {os.path.join(out, 'results.md')}" + "".join(f", {c[0]}" for c in charts))
    failed = mount_rc != 0 or any(r is not None and r[0] != 0 for r in (api, search, workloads))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
