"""The Label Studio round trip: push a dataset's frames (pre-captions as predictions), pull reviewed captions.

push: finds the project by title or creates it with the captioning config; uploads the frames not yet in it
(known by their SHA-256) and creates one task each, in the dataset's order (Label Studio serves tasks in that
order, so a file from `label order` is labelled least-confident first); a frame already in the project gets
the new pre-caption as another prediction when its model version is new. pull: see tasks.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_jsonl
from ..errors import DataError, LabelStudioError
from ..train.data import read_jsonl
from .studio import LabelStudio
from .tasks import (
    LABEL_CONFIG,
    Frame,
    PullReport,
    config_fits,
    file_sha256,
    frame_prediction,
    frame_task,
    pulled_rows,
    task_frame_key,
)

DESCRIPTION = "Image captions for blip-lora: correct each machine caption (or write one), or Skip the frame."


@dataclass
class PushReport:
    project: int
    created: bool
    url: str
    new_tasks: int = 0
    predictions_added: int = 0
    already_there: int = 0
    repeated_in_dataset: int = 0
    with_precaption: int = 0

    def summary(self) -> str:
        verb = "created" if self.created else "updated"
        return (f"{verb} project {self.project}: {self.new_tasks} new tasks ({self.with_precaption} with a "
                f"pre-caption), {self.predictions_added} new predictions on tasks already there, "
                f"{self.already_there} frames already there unchanged, {self.repeated_in_dataset} repeated frames "
                f"left out; label at {self.url}")


def read_frames(dataset: str | Path) -> list[Frame]:
    """The dataset's rows as frames to label (captions may be empty); a bad line or a missing or unreadable
    image is one DataError line naming the first and the count."""
    samples, bad = read_jsonl(dataset, skip_bad=True, require_text=False)
    if bad:
        more = f" (and {len(bad) - 1} more bad lines)" if len(bad) > 1 else ""
        raise DataError(f"{bad[0]}{more}")
    return [Frame(s, file_sha256(s.image)) for s in samples]


def push(client: LabelStudio, title: str, frames: list[Frame]) -> PushReport:
    """Create or update the project ``title`` with the frames; see the module docstring."""
    client.check()
    project, created = _project(client, title)
    pid = int(project["id"])
    report = PushReport(pid, created, f"{client.url}/projects/{pid}/data")
    first: dict[str, Frame] = {}
    for frame in frames:
        first.setdefault(frame.sha256, frame)
    unique = list(first.values())  # a frame listed twice is pushed once, at its first line
    report.repeated_in_dataset = len(frames) - len(unique)
    existing = {} if created else {task_frame_key(t): t["id"] for t in client.export_tasks(pid)}
    new = [f for f in unique if f.sha256 not in existing]
    urls = client.upload_images(pid, [f.sample.image for f in new])
    client.import_tasks(pid, [frame_task(f, url) for f, url in zip(new, urls, strict=True)])
    report.new_tasks, report.with_precaption = len(new), sum(1 for f in new if f.caption)
    old = [f for f in unique if f.sha256 in existing]
    versions = {} if not old else _versions_by_task(client, pid)
    for frame in old:
        prediction = frame_prediction(frame)
        task = existing[frame.sha256]
        if prediction is None or prediction["model_version"] in versions.get(task, set()):
            report.already_there += 1
            continue
        client.add_prediction(task, prediction)
        report.predictions_added += 1
    pushed_versions = {f.model_version for f in unique if f.caption}
    if len(pushed_versions) == 1 and (report.new_tasks or report.predictions_added):
        client.update_project(pid, {"model_version": pushed_versions.pop()})  # the pre-captions annotators see
    return report


def _project(client: LabelStudio, title: str) -> tuple[dict, bool]:
    """(the project titled ``title``, whether it was created now); an existing one must fit the config."""
    project = client.find_project(title)
    if project is None:
        return client.create_project({"title": title, "label_config": LABEL_CONFIG, "description": DESCRIPTION,
                                      "show_collab_predictions": True}), True
    if not config_fits(project.get("label_config", "")):
        if project.get("task_number"):
            raise LabelStudioError(f"project {title!r} (id {project['id']}) has tasks and a labeling config "
                                   f"without an Image \"image\" ($image) and a TextArea \"caption\" on it: push "
                                   f"into another --project")
        project = client.update_project(int(project["id"]), {"label_config": LABEL_CONFIG})
    return project, False


def _versions_by_task(client: LabelStudio, project: int) -> dict[int, set[str]]:
    versions: dict[int, set[str]] = {}
    for prediction in client.predictions(project):
        versions.setdefault(prediction.get("task"), set()).add(prediction.get("model_version"))
    return versions


def pull(tasks: list[dict], out: str | Path, project: int | None = None) -> PullReport:
    """Write the reviewed captions of ``tasks`` (a JSON export's task list, see tasks.check_export) as a dataset
    JSONL at ``out`` (atomically)."""
    out = Path(out)
    rows, report = pulled_rows(tasks, out, project)
    if not rows:
        raise DataError(f"no reviewed captions to write to {out}: {report.summary()}")
    write_jsonl(out, rows)
    return report


def pull_project(client: LabelStudio, title: str, out: str | Path) -> PullReport:
    """pull() on the live export of the project titled ``title``."""
    client.check()
    project = client.find_project(title)
    if project is None:
        raise LabelStudioError(f"no Label Studio project titled {title!r} at {client.url}")
    return pull(client.export_tasks(int(project["id"])), out, int(project["id"]))
