"""OUT_DIR/eval/results.json across several evaluations: nothing computed is ever lost.

Each task's section comes with a record under "computed" (the checkpoint path, sha256 and
iteration, the evaluation settings, the resources it read, the time). A new evaluation of some
tasks (--tasks) replaces those tasks and keeps the others. A file whose tasks were computed from
another checkpoint (or that records no checkpoint per task, or is not JSON) is
never mixed with the new results: it is moved aside to results.iterN-SHA.json (and its report.md
beside it), and the new results start a fresh file.
"""
import datetime
import json
import os
import sys
from pathlib import Path

from backpacks.atomic import atomic_write_text
from backpacks.cli import fail
from backpacks.eval.report import json_safe, render_report

NOT_REQUESTED = {"skipped": "not requested (--tasks)"}


def task_settings(settings):
    """The evaluation settings as one task records them, in JSON types (tuples as lists). The task
    list is left out: it says which tasks ran together, not how each was computed."""
    return json.loads(json.dumps({k: v for k, v in settings.items() if k != "tasks"}))


def task_record(checkpoint, checkpoint_sha256, iter_num, settings, resources):
    """What one task was computed with."""
    return {"checkpoint": str(checkpoint), "checkpoint_sha256": checkpoint_sha256, "iter_num": iter_num,
            "settings": task_settings(settings), "resources": resources,
            "computed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def read_existing(path):
    """The results.json at path as a dict, None if there is none, or the reason it cannot be merged."""
    if not path.is_file():
        return None
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: also UnicodeDecodeError
        return f"it is not readable JSON ({e})"
    return existing if isinstance(existing, dict) else "it is not a JSON object"


def foreign(existing, checkpoint_sha256):
    """Why existing results may not be merged with results of the checkpoint of that sha256 (None: they may)."""
    if isinstance(existing, str):
        return existing
    computed = existing.get("computed")
    if not isinstance(computed, dict) or not all(isinstance(r, dict) for r in computed.values()):
        return "it records no checkpoint per task"
    others = {r.get("checkpoint_sha256") for r in computed.values()} - {checkpoint_sha256}
    if others:
        iters = sorted({str(r.get("iter_num")) for r in computed.values() if r.get("checkpoint_sha256") in others})
        return f"it was computed from another checkpoint (iter {', '.join(iters)})"
    return None


def set_aside(eval_dir, existing, reason):
    """Move results.json (and report.md) to a name of their own; return the new results path."""
    run = existing.get("run", {}) if isinstance(existing, dict) else {}
    run = run if isinstance(run, dict) else {}
    sha = str(run.get("checkpoint_sha256") or "unrecorded")[:12]
    stem = f"results.iter{run.get('iter_num', 'unknown')}-{sha}"
    number = 1
    while (eval_dir / f"{stem}.json").exists() or (eval_dir / f"{stem}.report.md").exists():
        number += 1
        stem = f"results.iter{run.get('iter_num', 'unknown')}-{sha}-{number}"
    aside = eval_dir / f"{stem}.json"
    os.replace(eval_dir / "results.json", aside)
    if (eval_dir / "report.md").is_file():
        os.replace(eval_dir / "report.md", eval_dir / f"{stem}.report.md")
    print(f"note: {eval_dir / 'results.json'} was not merged into, since {reason}: moved to {aside}", file=sys.stderr)
    return aside


def merge(existing, new, records, task_names):
    """The union of existing and new results, task by task: a task computed now replaces the
    earlier one, except that a task skipped now keeps an earlier result (its record says when it was
    computed); a task not requested now keeps what existing had."""
    merged, computed = {}, dict(existing.get("computed", {}))
    for task in task_names:
        earlier, now = existing.get(task), new.get(task)
        keep_earlier = task in computed and isinstance(earlier, dict) and "skipped" not in earlier and (
            now is None or "skipped" in now)
        if keep_earlier:
            merged[task] = earlier
            if now is not None:
                print(f"[{task}] skipped now ({now['skipped']}); keeping the result computed at "
                      f"{computed[task].get('computed_at')}", file=sys.stderr)
        else:
            merged[task] = now if now is not None else (earlier if isinstance(earlier, dict) else NOT_REQUESTED)
            if task in records:
                computed[task] = records[task]
    merged["run"], merged["computed"] = new["run"], computed
    return merged


def write_merged(eval_dir, new, records, task_names, checkpoint_sha256):
    """Merge the new results (tasks computed now, and "run") into eval_dir/results.json, rewrite
    report.md from the merged results, and return them. Both files are written atomically."""
    eval_dir = Path(eval_dir)
    existing = read_existing(eval_dir / "results.json")
    reason = foreign(existing, checkpoint_sha256) if existing is not None else None
    try:
        if reason:
            set_aside(eval_dir, existing, reason)
        merged = json_safe(merge({} if reason or existing is None else existing, new, records, task_names))
        atomic_write_text(eval_dir / "results.json", json.dumps(merged, indent=2, ensure_ascii=False))
        atomic_write_text(eval_dir / "report.md", render_report(merged))
    except OSError as e:  # a full disk, a read-only out_dir: atomic writes leave the old files whole
        fail(f"cannot write the results into {eval_dir}: {e.strerror or e}")
    return merged
