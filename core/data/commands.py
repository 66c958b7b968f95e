"""CLI commands of the data layer: import (CSV, JSONL, Parquet, Hugging Face folders), export, datasets,
delete-dataset, build-openclipart."""
from __future__ import annotations

import json
from pathlib import Path

from core.cli import add_workspace_argument
from core.errors import WorkbenchError


def register(subparsers) -> None:
    p = subparsers.add_parser("import", help="import notes (+ pairs, images) as a dataset; all-or-nothing unless --skip-bad")
    p.add_argument("--name", required=True, help="dataset name")
    p.add_argument("--notes", required=True, help="notes.csv or notes.jsonl (note_id,title,content,image[,topics][,category]),"
                                                  " notes.parquet, or a Hugging Face save_to_disk folder")
    p.add_argument("--pairs", help="pairs.csv, .jsonl or .parquet (note_id_1,note_id_2), or a save_to_disk folder")
    p.add_argument("--images", help="folder or .zip of images (default: the notes file's folder and its images/)")
    p.add_argument("--skip-bad", action="store_true", help="import the good rows and report the bad ones")
    p.add_argument("--report", help="write every skipped row (kind,file,row,reason) to this CSV file")
    p.add_argument("--column", action="append", metavar="TABLE_COLUMN=COLUMN",
                   help="Parquet / Hugging Face notes only: read a column as a notes column (caption=content), or "
                        "leave it out (label=-); repeatable")
    p.add_argument("--split", help="Hugging Face DatasetDict folders: the split to import (default train)")
    add_workspace_argument(p)
    p.set_defaults(func=cmd_import)

    p = subparsers.add_parser("export", help="write a dataset (notes with images, pairs) and its cached vectors, "
                                             "neighbours, maps and metrics as Parquet and CSV")
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True, help="a new or empty folder")
    p.add_argument("--format", choices=("parquet", "csv", "both"), default="both",
                   help="both (default): Parquet tables plus CSV tables and an images/ folder")
    p.add_argument("--neighbours", type=int, default=10, metavar="K",
                   help="nearest neighbours per note from each cached vector set (0: none)")
    add_workspace_argument(p)
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("datasets", help="list the workspace's datasets with counts")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    add_workspace_argument(p)
    p.set_defaults(func=cmd_datasets)

    p = subparsers.add_parser("delete-dataset", help="delete a dataset (and images no other dataset uses)")
    p.add_argument("name")
    add_workspace_argument(p)
    p.set_defaults(func=cmd_delete)

    p = subparsers.add_parser("build-openclipart", help="build the real openclipart dataset from Debian's packages")
    p.add_argument("--out", help="output folder in the upload format (default WORKSPACE/openclipart)")
    p.add_argument("--root", default="/usr/share/openclipart", help="where openclipart-png/-svg are installed")
    p.add_argument("--cap", type=int, default=150, help="at most this many notes per category (seeded sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs-per-note", type=int, default=5, help="at most this many related pairs per note")
    p.add_argument("--image-size", type=int, default=512, help="longest side of the images written")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the images written")
    p.add_argument("--max-categories", type=int, default=None, help="keep only this many categories (seeded, varied)")
    p.add_argument("--import-as", help="then import the result as this dataset")
    add_workspace_argument(p)
    p.set_defaults(func=cmd_build_openclipart)


def _import_progress():
    """Progress of an import on stderr: a bar on a terminal, a plain line every few seconds in a log file.
    Only checking images takes long; the other stages are quick."""
    from core.progress import ProgressCallback

    progress = ProgressCallback(stages=("checking images",), leave=False)
    return progress, progress.close


def cmd_import(args) -> int:
    from core.data.store import Store

    from core.data.bridges import import_table, table_format

    store = Store(args.workspace)
    progress, close = _import_progress()
    try:
        if table_format(args.notes) is not None:
            report = import_table(store, args.name, args.notes, args.pairs, args.images, args.column, args.split,
                                  skip_bad=args.skip_bad, progress=progress)
        elif args.column or args.split:
            raise WorkbenchError("--column and --split apply to Parquet files and Hugging Face folders")
        else:
            report = store.import_dataset(args.name, args.notes, args.pairs, args.images, skip_bad=args.skip_bad,
                                          progress=progress)
    finally:
        close()
    print(report.summary())
    for file, row, reason in (report.skipped + report.pairs_skipped + report.ignored)[:20]:
        print(f"  skipped {file}{f' line {row}' if row else ''}: {reason}")
    if args.report:
        report.write(args.report)
        print(f"report written to {args.report}")
    return 0


def cmd_export(args) -> int:
    from core.data.export import export_dataset
    from core.progress import ProgressCallback

    with ProgressCallback(stages=("exporting notes",), unit="note") as progress:
        manifest = export_dataset(args.workspace, args.dataset, args.out, args.format, args.neighbours, progress)
    print(f"exported '{args.dataset}' to {args.out}: {len(manifest['written'])} files "
          f"({', '.join(manifest['written'][:8])}{', ...' if len(manifest['written']) > 8 else ''})")
    for reason in manifest["left_out"]:
        print(f"  left out: {reason}")
    return 0


def cmd_datasets(args) -> int:
    from core.data.store import Store

    datasets = Store(args.workspace).list_datasets()
    for info in datasets:
        print(json.dumps(info.__dict__) if args.json else info.line())
    if not datasets and not args.json:
        print("no datasets yet (python -m core import ..., or build-openclipart --import-as NAME)")
    return 0


def cmd_delete(args) -> int:
    from core.service import delete_dataset

    delete_dataset(args.workspace, args.name)
    print(f"deleted dataset '{args.name}' and its cached vectors")
    return 0


def cmd_build_openclipart(args) -> int:
    from core.data.openclipart import build_openclipart
    from core.workspace import Workspace

    workspace = Workspace.open(args.workspace)
    out = Path(args.out) if args.out else workspace.root / "openclipart"
    for name in ("cap", "pairs_per_note", "image_size", "quality"):
        if getattr(args, name) < 1:
            raise WorkbenchError(f"--{name.replace('_', '-')} must be positive")
    stats = build_openclipart(out, root=args.root, cap=args.cap, seed=args.seed, pairs_per_note=args.pairs_per_note,
                              image_size=args.image_size, quality=args.quality, max_categories=args.max_categories)
    print(f"built {out}: {stats.summary()}")
    if args.import_as:
        from core.data.store import Store

        report = Store(workspace).import_dataset(args.import_as, out / "notes.csv", out / "pairs.csv", out / "images",
                                                 source=f"openclipart (cap {args.cap}, seed {args.seed})")
        print(report.summary())
    return 0
