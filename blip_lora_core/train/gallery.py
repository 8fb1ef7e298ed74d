"""A self-contained HTML page showing each image with its reference and predicted caption."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write_text
from ..models.images import load_image
from .metrics import normalise


@dataclass(frozen=True)
class GalleryRow:
    image: Path
    references: Sequence[str]
    predictions: dict[str, str]  # column title -> caption, e.g. {"before": ..., "after": ...}


def _thumbnail(path: Path, size: int = 160) -> str:
    image = load_image(path)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode()


def write_gallery(path: str | Path, rows: Sequence[GalleryRow], title: str = "blip-lora captions") -> Path:
    """Write one HTML file (thumbnails embedded); a prediction is green when it matches a reference."""
    columns = list(rows[0].predictions) if rows else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["image", "reference", *columns])
    body = []
    for row in rows:
        refs = {normalise(r) for r in row.references}
        title = html.escape(str(row.image))
        cells = [f'<td><img src="data:image/jpeg;base64,{_thumbnail(row.image)}" title="{title}"></td>',
                 f"<td>{html.escape(' | '.join(row.references))}</td>"]
        for column in columns:
            text = row.predictions[column]
            ok = "ok" if normalise(text) in refs else "bad"
            cells.append(f'<td class="{ok}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif}td{padding:4px;vertical-align:middle}.ok{color:#080}.bad{color:#b00}"
            f"</style></head><body><h1>{html.escape(title)}</h1><table><tr>{head}</tr>{''.join(body)}</table>"
            "</body></html>\n")
    return atomic_write_text(path, page)
