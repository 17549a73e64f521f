"""Translate the face in each photo to every target expression (default: all the model knows).

    python jobs/translate.py photo.jpg                                   # champion model, all expressions
    python jobs/translate.py photos/ --targets happiness,neutral --paste-back
    python jobs/translate.py photo.jpg --model models:/palsygan-stargan/3 --output /tmp/out
    python jobs/translate.py photo.jpg --model output/checkpoints/ckpt-00200000.pt
    python jobs/translate.py photo.jpg --tracking-uri http://127.0.0.1:5000

For each photo, into OUTPUT/<photo name>/: aligned.png (the face as the model sees it, aligned by the
ETL's code), <target>.png per target, grid.png (input + targets under their names) and, with
--paste-back, pasted/<target>.png (the translated face blended back into the original photo).
Labels, image size and normalisation come from the model. Exit status: 0 when at least one photo was
translated, 1 when none could be (each failure is named), 2 on a usage error (unknown target, model
or photo not found).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
OUTPUT = REPO / "output"
log = logging.getLogger("palsygan.translate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the translate job."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", nargs="+", type=Path, help="photo files and/or folders of photos")
    p.add_argument("--model", default="models:/palsygan-stargan@champion",
                   help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/generator or a checkpoint file "
                        "(default: %(default)s)")
    p.add_argument("--targets", help="comma-separated target expressions (default: every label of the model)")
    p.add_argument("--output", type=Path, default=OUTPUT / "translations", help="default: %(default)s")
    p.add_argument("--paste-back", action="store_true", help="also blend each translation back into the photo")
    p.add_argument("--feather", type=float, default=0.08, help="paste-back mask feather, share of the face size")
    p.add_argument("--tracking-uri", default=f"sqlite:///{OUTPUT / 'mlflow.db'}",
                   help="MLflow store holding the registered model (sqlite:///path or http://host:port)")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    """The frozen TranslateConfig of this run."""
    from training.translate import TranslateConfig

    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip()) if args.targets else ()
    return TranslateConfig(targets=targets, paste_back=args.paste_back, feather=args.feather)


def _folder_names(photos: list[Path]) -> list[str]:
    """One output folder name per photo: its stem, made unique with a counter."""
    seen: dict[str, int] = {}
    names = []
    for photo in photos:
        stem = photo.stem or "photo"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def main(argv: list[str] | None = None) -> int:
    """Translate every photo; 0 if any was translated, 1 if none, 2 on a usage error."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    args = parse_args(argv)
    from etl.decode import ImageRejected, decode_image
    from etl.face import FaceRejected
    from training.registry import ModelNotFound, use_tracking_uri
    from training.translate import (UnknownTarget, load_translator, photo_files, save_translation,
                                    translate_photo)

    config = build_config(args)
    try:
        photos = photo_files(args.photos)
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return 2
    if args.tracking_uri.startswith("sqlite:///") and args.model.startswith(("models:/", "runs:/")) \
            and not Path(args.tracking_uri.removeprefix("sqlite:///")).is_file():
        log.error("no MLflow store at %s: train a model first (jobs/train.py) or pass --tracking-uri / --model",
                  args.tracking_uri)
        return 2
    use_tracking_uri(args.tracking_uri)
    try:
        translator = load_translator(args.model)
        targets = translator.check_targets(config.targets)
    except ModelNotFound as exc:
        log.error("model not found: %s", exc)
        return 2
    except UnknownTarget as exc:
        log.error("%s", exc)
        return 2
    if translator.multi_label:
        log.warning("%s is a multi-label model: each target sets that one attribute alone", args.model)

    done = 0
    for photo, name in zip(photos, _folder_names(photos)):
        try:
            rgb = decode_image(photo.read_bytes())
            result = translate_photo(translator, rgb, config)
        except ImageRejected as exc:
            log.error("%s: not a usable image (%s)", photo, exc)
            continue
        except FaceRejected as exc:
            log.error("%s: no usable face (%s)", photo, exc)
            continue
        except OSError as exc:
            log.error("%s: cannot read it (%s)", photo, exc)
            continue
        written = save_translation(result, args.output / name)
        done += 1
        log.info("%s: %d target%s (%s) -> %s (%d files)", photo, len(targets), "" if len(targets) == 1 else "s",
                 ", ".join(targets), args.output / name, len(written))
    if not photos:
        log.error("no photos found in %s", ", ".join(map(str, args.photos)))
    log.info("translated %d of %d photos", done, len(photos))
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
