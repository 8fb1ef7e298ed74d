"""Dataset rows <-> Label Studio tasks: the captioning labeling config, tasks with pre-captions as predictions,
and reviewed captions out of an export (pure functions, no network).

A pushed task's data holds the image's URL on the server and, under ``blip_lora``, where the frame lives on
the machine that pushed it (``path``), its SHA-256 and the rest of its dataset row, so that pulling writes
rows that point at the local frames and keep their provenance (stamps, topic, bag, pre-caption).

Which annotation of a task counts (documented in the README, "Label your frames"):
1. cancelled annotations (a labeller pressed Skip) do not count; a task with only those is "skipped";
2. of the others, a ground-truth annotation wins over the rest; among equals the most recently updated one
   (then the highest id) wins: a reviewer's later correction replaces an earlier caption;
3. its text lines are joined with a space; an empty caption leaves the task out ("empty").
Tasks whose counted annotations say different things are counted as disagreements.
"""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError, LabelStudioError
from ..train.data import Sample, sample_to_row

IMAGE, CAPTION, KEY = "image", "caption", "blip_lora"
LABEL_CONFIG = """<View>
  <Header value="Correct the machine caption (or write one): the sentence the robot should say"/>
  <Image name="image" value="$image" zoom="true"/>
  <TextArea name="caption" toName="image" editable="true" maxSubmissions="1" rows="2"
            placeholder="A blue cube on top of a green cube"/>
</View>"""


@dataclass(frozen=True)
class Frame:
    """One dataset row to label: the image (absolute path), its row, the pre-caption (may be empty) and, when
    the row has one, its confidence and the model version that wrote it."""

    sample: Sample
    sha256: str

    @property
    def caption(self) -> str:
        return self.sample.text.strip()

    @property
    def precaption(self) -> dict:
        meta = self.sample.extras.get("precaption")
        return meta if isinstance(meta, dict) else {}

    @property
    def confidence(self) -> float | None:
        value = self.precaption.get("confidence")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def model_version(self) -> str:
        """The adapter's file name, else the model's name, else "blip-lora"."""
        adapter, model = self.precaption.get("adapter"), self.precaption.get("model")
        return Path(adapter).name if adapter else str(model or "blip-lora")


def file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as error:
        raise DataError(f"{path}: cannot read frame: {error.strerror or error}") from None


def frame_task(frame: Frame, image_url: str) -> dict:
    """A task for the frame: the image URL, the frame's provenance, and its pre-caption as a prediction."""
    row = sample_to_row(frame.sample)
    kept = {k: v for k, v in row.items() if k not in ("image", "text")}
    data = {IMAGE: image_url, KEY: {"path": str(frame.sample.image), "sha256": frame.sha256, "row": kept,
                                    "caption": frame.caption, "dataset": str(frame.sample.source),
                                    "line": frame.sample.line}}
    task: dict[str, Any] = {"data": data}
    prediction = frame_prediction(frame)
    if prediction:
        task["predictions"] = [prediction]
    return task


def frame_prediction(frame: Frame) -> dict | None:
    """The pre-caption as a Label Studio prediction (model version, score = confidence), None without one."""
    if not frame.caption:
        return None
    prediction: dict[str, Any] = {"model_version": frame.model_version, "result": [text_result(frame.caption)]}
    if frame.confidence is not None:
        prediction["score"] = frame.confidence
    return prediction


def text_result(text: str) -> dict:
    """A TextArea result of the captioning config."""
    return {"from_name": CAPTION, "to_name": IMAGE, "type": "textarea", "value": {"text": [text]}}


def task_frame_key(task: dict) -> str | None:
    """The SHA-256 of the frame a task was pushed for (None: a task blip-lora did not push)."""
    meta = (task.get("data") or {}).get(KEY)
    return meta.get("sha256") if isinstance(meta, dict) else None


def config_fits(config: str) -> bool:
    """Whether a labeling config has an Image "image" on $image and a TextArea "caption" on it."""
    try:
        root = ET.fromstring(config or "<View/>")
    except ET.ParseError:
        return False
    images = [e for e in root.iter("Image") if e.get("name") == IMAGE and e.get("value") == f"${IMAGE}"]
    areas = [e for e in root.iter("TextArea") if e.get("name") == CAPTION and e.get("toName") == IMAGE]
    return bool(images and areas)


# ---------------------------------------------------------------------------------------------- pull


@dataclass
class PullReport:
    """How many tasks gave a row and why the others did not."""

    tasks: int = 0
    counts: Counter = field(default_factory=Counter)  # labelled / skipped / unlabelled / empty / foreign
    disagreements: int = 0
    origin: Counter = field(default_factory=Counter)  # labelled tasks: accepted / corrected / written

    def summary(self) -> str:
        c, o = self.counts, self.origin
        return (f"{c['labelled']} reviewed captions of {self.tasks} tasks ({o['accepted']} accepted as "
                f"pre-captioned, {o['corrected']} corrected, {o['written']} written from scratch); left out: "
                f"{c['skipped']} skipped or cancelled, {c['unlabelled']} not labelled yet, {c['empty']} empty, "
                f"{c['foreign']} not pushed by blip-lora; {self.disagreements} with disagreeing annotations "
                f"(the ground truth, else the latest, taken)")


def chosen_annotation(task: dict) -> tuple[dict | None, str, bool]:
    """(the annotation that counts or None, the task's status, whether its counted annotations disagree)."""
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
    counted = [a for a in annotations if not a.get("was_cancelled")]
    if not counted:
        return None, "skipped" if annotations else "unlabelled", False
    best = max(counted, key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at") or ""),
                                       int(a.get("id") or 0)))
    disagree = len({annotation_text(a) for a in counted}) > 1
    return (best, "labelled", disagree) if annotation_text(best) else (None, "empty", disagree)


def annotation_text(annotation: dict) -> str:
    """The caption of an annotation: the "caption" TextArea's lines joined with a space, whitespace collapsed."""
    lines: list[str] = []
    for result in annotation.get("result") or []:
        if isinstance(result, dict) and result.get("from_name") == CAPTION:
            text = (result.get("value") or {}).get("text") or []
            lines.extend([text] if isinstance(text, str) else [str(t) for t in text])
    return " ".join(" ".join(lines).split())


def pulled_rows(tasks: list[dict], out: Path, project: int | None) -> tuple[list[dict], PullReport]:
    """Rows of the reviewed tasks, in task order, images relative to ``out``'s folder; missing or changed
    frames are one DataError naming the first and the count."""
    report = PullReport(tasks=len(tasks))
    rows: list[dict] = []
    problems: list[str] = []
    for task in tasks:
        meta = (task.get("data") or {}).get(KEY)
        annotation, status, disagree = chosen_annotation(task)
        if not isinstance(meta, dict) or "path" not in meta:
            status = "foreign" if status == "labelled" else status
        report.counts[status] += 1
        report.disagreements += disagree
        if status != "labelled":
            continue
        problem = _frame_problem(task, meta)
        if problem:
            problems.append(problem)
            continue
        row, origin = _row(task, meta, annotation, out, project)
        report.origin[origin] += 1
        rows.append(row)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"{problems[0]}{more}: pull where the pushed frames are")
    return rows, report


def _frame_problem(task: dict, meta: dict) -> str | None:
    path = Path(meta["path"])
    if not path.is_file():
        return f"task {task.get('id')}: frame {path} is not on this machine"
    if meta.get("sha256") and file_sha256(path) != meta["sha256"]:
        return f"task {task.get('id')}: frame {path} changed since it was pushed (SHA-256 differs)"
    return None


def _row(task: dict, meta: dict, annotation: dict, out: Path, project: int | None) -> tuple[dict, str]:
    """(the dataset row of a labelled task, how its caption came about: accepted / corrected / written)."""
    text = annotation_text(annotation)
    image = Path(os.path.relpath(meta["path"], out.absolute().parent)).as_posix()
    row = {"image": image, "text": text, **(meta.get("row") or {}), "reviewed": True}
    annotator = annotation.get("completed_by")
    row["label_studio"] = {"project": project if project is not None else task.get("project"),
                           "task": task.get("id"), "annotation": annotation.get("id"),
                           "annotator": annotator.get("email") if isinstance(annotator, dict) else annotator,
                           "updated_at": annotation.get("updated_at")}
    shown = annotation.get("prediction")  # the prediction the labeller started from, when the export has it
    precaption = annotation_text(shown) if isinstance(shown, dict) else str(meta.get("caption") or "")
    return row, "written" if not precaption else "accepted" if precaption == text else "corrected"


def check_export(tasks: Any, source: str) -> list[dict]:
    """A Label Studio JSON export (a list of task objects), or LabelStudioError naming the source."""
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and "data" in t for t in tasks):
        raise LabelStudioError(f"{source}: not a Label Studio JSON export (a list of tasks with \"data\"); "
                               f"export the project as JSON")
    return tasks
